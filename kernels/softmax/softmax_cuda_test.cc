// kernels/softmax on a CUDA device against the scalar reference in double
// (skips without a device): scales, broadcast and -inf masks, fully masked
// rows, large logits, in place, both backward passes.
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/base/tensor.h"
#include "kernels/reference/softmax_ref.h"
#include "kernels/softmax/softmax.h"
#include "tests/util/random.h"
#include "tests/util/tolerance.h"

namespace ftx {
namespace {

using ::ftx::testing::AllNear;
using ::ftx::testing::Cast;
using ::ftx::testing::Tolerance;

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr Tolerance kProbabilityTolerance{1e-8, 1e-5};
constexpr Tolerance kLogProbabilityTolerance{1e-5, 1e-6};
constexpr Tolerance kGradientTolerance{1e-6, 1e-5};

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

SoftmaxOptions MakeOptions(float scale,
                           TensorView<const float> additive_mask = {}) {
  SoftmaxOptions options;
  options.scale = scale;
  options.additive_mask = additive_mask;
  return options;
}

struct Case {
  int64_t rows, cols, mask_rows;
};

TEST(SoftmaxCudaTest, ForwardAndBackwardMatchReference) {
  if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  auto ctx = Context::Create({.device = Device::Cuda()}).value();
  for (const Case& size :
       {Case{1, 1, 1}, Case{7, 33, 7}, Case{129, 1000, 3}, Case{12, 4097, 4}}) {
    SCOPED_TRACE(::testing::Message() << size.rows << "x" << size.cols);
    const int64_t n = size.rows * size.cols;
    const Shape shape{size.rows, size.cols};
    const float scale = 0.37f;
    const std::vector<float> x = testing::RandomUniformVector(n, 1, -4, 4);
    std::vector<float> mask =
        testing::RandomUniformVector(size.mask_rows * size.cols, 2, -2, 1);
    // -inf keys, but every row keeps at least one finite logit; mask row 0
    // excludes every key when there are at least two mask rows.
    for (int64_t i = 1; i < static_cast<int64_t>(mask.size()); i += 3) {
      mask[i] = -kInf;
    }
    if (size.mask_rows >= 2) {
      for (int64_t c = 0; c < size.cols; ++c) mask[c] = -kInf;
    }
    const Tensor device_x = ToDevice(x, shape);
    const Tensor device_mask = ToDevice(mask, {size.mask_rows, size.cols});
    const SoftmaxOptions options =
        MakeOptions(scale, device_mask.view<float>());
    Tensor y = Tensor::Create(DType::kF32, shape, Device::Cuda()).value();

    const std::vector<double> mask_values = Cast<double>(mask);
    std::vector<double> expected(n);
    reference::Softmax<double>(size.rows, size.cols, Cast<double>(x).data(),
                               size.cols, scale, mask_values.data(),
                               size.mask_rows, size.cols, expected.data(),
                               size.cols);
    ASSERT_TRUE(
        Softmax(*ctx, device_x.view<float>(), y.view<float>(), options).ok());
    const std::vector<float> probabilities = ToHost(y);
    EXPECT_TRUE(AllNear(probabilities, expected, kProbabilityTolerance));

    reference::LogSoftmax<double>(size.rows, size.cols, Cast<double>(x).data(),
                                  size.cols, scale, mask_values.data(),
                                  size.mask_rows, size.cols, expected.data(),
                                  size.cols);
    ASSERT_TRUE(
        LogSoftmax(*ctx, device_x.view<float>(), y.view<float>(), options)
            .ok());
    const std::vector<float> log_probabilities = ToHost(y);
    EXPECT_TRUE(AllNear(log_probabilities, expected, kLogProbabilityTolerance));

    // Backward from the device's outputs; d_x overwrites d_y.
    const std::vector<float> d_y = testing::RandomUniformVector(n, 3);
    std::vector<double> expected_d_x(n);
    reference::SoftmaxBackward<double>(
        size.rows, size.cols, Cast<double>(probabilities).data(), size.cols,
        Cast<double>(d_y).data(), size.cols, scale, expected_d_x.data(),
        size.cols);
    const Tensor device_probabilities = ToDevice(probabilities, shape);
    Tensor gradient = ToDevice(d_y, shape);
    ASSERT_TRUE(SoftmaxBackward(*ctx, device_probabilities.view<float>(),
                                gradient.view<float>(), gradient.view<float>(),
                                MakeOptions(scale))
                    .ok());
    EXPECT_TRUE(AllNear(ToHost(gradient), expected_d_x, kGradientTolerance));

    reference::LogSoftmaxBackward<double>(
        size.rows, size.cols, Cast<double>(log_probabilities).data(), size.cols,
        Cast<double>(d_y).data(), size.cols, scale, expected_d_x.data(),
        size.cols);
    const Tensor device_log_probabilities = ToDevice(log_probabilities, shape);
    gradient = ToDevice(d_y, shape);
    ASSERT_TRUE(LogSoftmaxBackward(*ctx, device_log_probabilities.view<float>(),
                                   gradient.view<float>(),
                                   gradient.view<float>(), MakeOptions(scale))
                    .ok());
    EXPECT_TRUE(AllNear(ToHost(gradient), expected_d_x, kGradientTolerance));
  }
}

TEST(SoftmaxCudaTest, LargeLogitsInPlace) {
  if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  auto ctx = Context::Create({.device = Device::Cuda()}).value();
  constexpr int64_t kRows = 9, kCols = 777;
  const std::vector<float> x =
      testing::RandomUniformVector(kRows * kCols, 4, -1e4, 1e4);
  std::vector<double> expected(kRows * kCols);
  reference::Softmax<double>(kRows, kCols, Cast<double>(x).data(), kCols, 1.0,
                             nullptr, 1, kCols, expected.data(), kCols);
  Tensor y = ToDevice(x, {kRows, kCols});
  ASSERT_TRUE(Softmax(*ctx, y.view<float>(), y.view<float>()).ok());
  const std::vector<float> result = ToHost(y);
  EXPECT_TRUE(AllNear(result, expected, kProbabilityTolerance));
  for (int64_t r = 0; r < kRows; ++r) {
    double sum = 0;
    for (int64_t c = 0; c < kCols; ++c) sum += result[r * kCols + c];
    EXPECT_NEAR(sum, 1.0, 1e-5) << "row " << r;
  }
}

}  // namespace
}  // namespace ftx
