// kernels/layernorm on a CUDA device against the scalar reference in double
// (skips without a device): with and without gamma/beta, rows far from zero,
// in place, backward with accumulated parameter gradients.
#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/base/tensor.h"
#include "kernels/layernorm/layernorm.h"
#include "kernels/reference/layernorm_ref.h"
#include "tests/util/random.h"
#include "tests/util/tolerance.h"

namespace ftx {
namespace {

using ::ftx::testing::AllNear;
using ::ftx::testing::Cast;
using ::ftx::testing::Tolerance;

constexpr Tolerance kOutputTolerance{1e-5, 1e-5};
constexpr Tolerance kStatisticTolerance{1e-6, 1e-5};
// d_gamma and d_beta sum over up to a thousand rows in float.
constexpr Tolerance kGradientTolerance{1e-5, 1e-4};

Tensor ToDevice(const std::vector<float>& values, const Shape& shape) {
  Tensor host = Tensor::Create(DType::kF32, shape).value();
  std::copy(values.begin(), values.end(), host.data<float>());
  return host.To(Device::Cuda()).value();
}

std::vector<float> ToHost(const Tensor& device) {
  Tensor host = device.To(Device::Cpu()).value();
  return std::vector<float>(host.data<float>(),
                            host.data<float>() + host.NumElements());
}

TEST(LayerNormCudaTest, ForwardAndBackwardMatchReference) {
  if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  auto ctx = Context::Create({.device = Device::Cuda()}).value();
  for (auto [rows, cols] :
       {std::pair<int64_t, int64_t>{1, 1}, {7, 33}, {1029, 1000}, {12, 4097}}) {
    for (bool affine : {true, false}) {
      SCOPED_TRACE(::testing::Message()
                   << rows << "x" << cols << " affine=" << affine);
      const int64_t n = rows * cols;
      const Shape shape{rows, cols};
      const std::vector<float> x = testing::RandomUniformVector(n, 1, -2, 3);
      const std::vector<float> gamma =
          testing::RandomUniformVector(cols, 2, 0.5, 1.5);
      const std::vector<float> beta = testing::RandomUniformVector(cols, 3);
      const std::vector<float> d_y = testing::RandomUniformVector(n, 4);
      const std::vector<float> d_gamma_start =
          testing::RandomUniformVector(cols, 5);
      const std::vector<float> d_beta_start =
          testing::RandomUniformVector(cols, 6);
      const std::vector<double> gamma_values = Cast<double>(gamma);
      const std::vector<double> beta_values = Cast<double>(beta);
      const double* reference_gamma = affine ? gamma_values.data() : nullptr;

      const Tensor device_x = ToDevice(x, shape);
      const Tensor device_gamma = ToDevice(gamma, {cols});
      const Tensor device_beta = ToDevice(beta, {cols});
      const TensorView<const float> gamma_view =
          affine ? device_gamma.view<float>() : TensorView<const float>();
      const TensorView<const float> beta_view =
          affine ? device_beta.view<float>() : TensorView<const float>();
      Tensor y = Tensor::Create(DType::kF32, shape, Device::Cuda()).value();
      Tensor mean = Tensor::Create(DType::kF32, {rows}, Device::Cuda()).value();
      Tensor rstd = Tensor::Create(DType::kF32, {rows}, Device::Cuda()).value();
      ASSERT_TRUE(LayerNorm(*ctx, device_x.view<float>(), gamma_view, beta_view,
                            y.view<float>(), mean.view<float>(),
                            rstd.view<float>())
                      .ok());
      std::vector<double> expected_y(n), expected_mean(rows),
          expected_rstd(rows);
      reference::LayerNorm<double>(
          rows, cols, Cast<double>(x).data(), cols, reference_gamma,
          affine ? beta_values.data() : nullptr, 1e-5f, expected_y.data(), cols,
          expected_mean.data(), expected_rstd.data());
      EXPECT_TRUE(AllNear(ToHost(y), expected_y, kOutputTolerance));
      const std::vector<float> saved_mean = ToHost(mean);
      const std::vector<float> saved_rstd = ToHost(rstd);
      EXPECT_TRUE(AllNear(saved_mean, expected_mean, kStatisticTolerance));
      EXPECT_TRUE(AllNear(saved_rstd, expected_rstd, kStatisticTolerance));

      // Backward from the device's saved statistics; d_x overwrites d_y.
      Tensor gradient = ToDevice(d_y, shape);
      Tensor d_gamma = ToDevice(d_gamma_start, {cols});
      Tensor d_beta = ToDevice(d_beta_start, {cols});
      ASSERT_TRUE(LayerNormBackward(*ctx, device_x.view<float>(), gamma_view,
                                    mean.view<float>(), rstd.view<float>(),
                                    gradient.view<float>(),
                                    gradient.view<float>(),
                                    d_gamma.view<float>(), d_beta.view<float>())
                      .ok());
      std::vector<double> expected_d_x(n);
      std::vector<double> expected_d_gamma = Cast<double>(d_gamma_start);
      std::vector<double> expected_d_beta = Cast<double>(d_beta_start);
      reference::LayerNormBackward<double>(
          rows, cols, Cast<double>(x).data(), cols, reference_gamma,
          Cast<double>(saved_mean).data(), Cast<double>(saved_rstd).data(),
          Cast<double>(d_y).data(), cols, expected_d_x.data(), cols,
          expected_d_gamma.data(), expected_d_beta.data());
      EXPECT_TRUE(AllNear(ToHost(gradient), expected_d_x, kGradientTolerance));
      EXPECT_TRUE(
          AllNear(ToHost(d_gamma), expected_d_gamma, kGradientTolerance));
      EXPECT_TRUE(AllNear(ToHost(d_beta), expected_d_beta, kGradientTolerance));
    }
  }
}

TEST(LayerNormCudaTest, RowsFarFromZeroInPlace) {
  if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  auto ctx = Context::Create({.device = Device::Cuda()}).value();
  constexpr int64_t kRows = 5, kCols = 1000;
  const std::vector<float> x =
      testing::RandomUniformVector(kRows * kCols, 7, 1e4 - 1e-2, 1e4 + 1e-2);
  std::vector<double> expected(kRows * kCols);
  reference::LayerNorm<double>(kRows, kCols, Cast<double>(x).data(), kCols,
                               nullptr, nullptr, 1e-5f, expected.data(), kCols,
                               nullptr, nullptr);
  Tensor y = ToDevice(x, {kRows, kCols});
  ASSERT_TRUE(LayerNorm(*ctx, y.view<float>(), TensorView<const float>(),
                        TensorView<const float>(), y.view<float>(),
                        TensorView<float>(), TensorView<float>())
                  .ok());
  EXPECT_TRUE(AllNear(ToHost(y), expected, {1e-4, 1e-4}));
}

}  // namespace
}  // namespace ftx
