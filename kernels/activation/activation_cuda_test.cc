// kernels/activation on a CUDA device against the scalar reference in double
// (skips without a device): every activation and its derivative over a value
// sweep with strided rows, in-place backward, and the gated linear units.
#include <algorithm>
#include <memory>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/activation/activation.h"
#include "kernels/base/tensor.h"
#include "kernels/reference/activation_ref.h"
#include "tests/util/random.h"
#include "tests/util/tolerance.h"

namespace ftx {
namespace {

using ::ftx::testing::AllNear;
using ::ftx::testing::Tolerance;

struct Case {
  Activation activation;
  double (*value)(double);
  double (*derivative)(double);
};

const Case kCases[] = {
    {Activation::kIdentity, reference::Identity<double>,
     reference::IdentityDerivative<double>},
    {Activation::kRelu, reference::Relu<double>,
     reference::ReluDerivative<double>},
    {Activation::kGelu, reference::Gelu<double>,
     reference::GeluDerivative<double>},
    {Activation::kGeluTanh, reference::GeluTanh<double>,
     reference::GeluTanhDerivative<double>},
    {Activation::kSilu, reference::Silu<double>,
     reference::SiluDerivative<double>},
    {Activation::kEluPlusOne, reference::EluPlusOne<double>,
     reference::EluPlusOneDerivative<double>},
    {Activation::kReluSquared, reference::ReluSquared<double>,
     reference::ReluSquaredDerivative<double>},
    {Activation::kSigmoid, reference::Sigmoid<double>,
     reference::SigmoidDerivative<double>},
    {Activation::kTanh, reference::Tanh<double>,
     reference::TanhDerivative<double>},
};

// CUDA's expf and tanhf are within 2 ulp and normcdff within 5 ulp (CUDA math
// API); the derivative bound allows 2e-7 absolute next to the zeros of gelu'
// and gelu_tanh', where Φ(x) and x φ(x) cancel.
constexpr Tolerance kValueTolerance = {1e-7, 2e-6};
constexpr Tolerance kDerivativeTolerance = {2e-7, 4e-6};
constexpr float kSentinel = 1.0e30f;

std::vector<float> SweepValues() {
  std::vector<float> values = {0.0f, -0.0f};
  for (double magnitude : {1e-30, 1e-7, 1e-3, 0.5, 1.0, 2.0, 3.0, 5.0, 9.5,
                           12.0, 17.0, 20.0, 80.0, 100.0, 1e4, 1e30}) {
    values.push_back(static_cast<float>(magnitude));
    values.push_back(static_cast<float>(-magnitude));
  }
  for (int i = -2000; i <= 2000; ++i) values.push_back(0.01f * i);
  return values;
}

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

// Rows of `padded` ([rows, padded_cols]) restricted to the first `cols`.
std::vector<float> Unpad(const std::vector<float>& padded, int64_t rows,
                         int64_t cols, int64_t padded_cols) {
  std::vector<float> dense(rows * cols);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      dense[r * cols + c] = padded[r * padded_cols + c];
    }
  }
  return dense;
}

bool PaddingIntact(const std::vector<float>& padded, int64_t rows, int64_t cols,
                   int64_t padded_cols) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = cols; c < padded_cols; ++c) {
      if (padded[r * padded_cols + c] != kSentinel) return false;
    }
  }
  return true;
}

TEST(ActivationCudaTest, MatchesReferenceOnStridedRows) {
  if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  auto ctx = Context::Create({.device = Device::Cuda()}).value();
  std::vector<float> values = SweepValues();
  constexpr int64_t kCols = 61, kPaddedCols = 64;
  const int64_t rows =
      (static_cast<int64_t>(values.size()) + kCols - 1) / kCols;
  values.resize(rows * kCols, 0.25f);
  const std::vector<float> d_y_values =
      testing::RandomUniformVector(rows * kCols, 1);

  Tensor x = ToDevice(values, {rows, kCols});
  Tensor y_padded = ToDevice(std::vector<float>(rows * kPaddedCols, kSentinel),
                             {rows, kPaddedCols});
  TensorView<float> y = y_padded.view<float>().Slice(1, 0, kCols);
  for (const Case& c : kCases) {
    SCOPED_TRACE(ActivationName(c.activation));
    ASSERT_TRUE(Activate(*ctx, c.activation, x.view<float>(), y).ok());
    const std::vector<float> y_host = ToHost(y_padded);
    std::vector<float> expected(values.size());
    for (size_t i = 0; i < values.size(); ++i) {
      expected[i] = static_cast<float>(c.value(values[i]));
    }
    EXPECT_TRUE(AllNear(Unpad(y_host, rows, kCols, kPaddedCols), expected,
                        kValueTolerance));
    EXPECT_TRUE(PaddingIntact(y_host, rows, kCols, kPaddedCols));

    // In place: d_x is d_y.
    Tensor grad = ToDevice(d_y_values, {rows, kCols});
    ASSERT_TRUE(ActivateBackward(*ctx, c.activation, x.view<float>(),
                                 grad.view<float>(), grad.view<float>())
                    .ok());
    const std::vector<double> x_double = testing::Cast<double>(values);
    const std::vector<double> d_y_double = testing::Cast<double>(d_y_values);
    std::vector<double> expected_d_x(values.size());
    reference::ActivateBackward(static_cast<int64_t>(values.size()),
                                c.derivative, x_double.data(),
                                d_y_double.data(), expected_d_x.data());
    EXPECT_TRUE(AllNear(ToHost(grad), testing::Cast<float>(expected_d_x),
                        kDerivativeTolerance));
  }
}

TEST(ActivationCudaTest, GluMatchesReference) {
  if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  auto ctx = Context::Create({.device = Device::Cuda()}).value();
  for (auto [rows, half] :
       {std::pair<int64_t, int64_t>{1, 1}, {7, 33}, {129, 500}}) {
    const std::vector<float> x =
        testing::RandomUniformVector(rows * 2 * half, 2, -5.0, 5.0);
    const std::vector<float> d_y = testing::RandomUniformVector(rows * half, 3);
    const std::vector<double> x_double = testing::Cast<double>(x);
    const std::vector<double> d_y_double = testing::Cast<double>(d_y);
    Tensor device_x = ToDevice(x, {rows, 2 * half});
    Tensor device_d_y = ToDevice(d_y, {rows, half});
    Tensor device_y =
        Tensor::Create(DType::kF32, {rows, half}, Device::Cuda()).value();
    Tensor device_d_x =
        Tensor::Create(DType::kF32, {rows, 2 * half}, Device::Cuda()).value();
    for (Activation activation : {Activation::kGelu, Activation::kSilu,
                                  Activation::kRelu, Activation::kSigmoid}) {
      SCOPED_TRACE(ActivationName(activation));
      const Case& c = kCases[static_cast<int>(activation)];
      ASSERT_EQ(c.activation, activation);
      ASSERT_TRUE(
          Glu(*ctx, activation, device_x.view<float>(), device_y.view<float>())
              .ok());
      std::vector<double> expected_y(rows * half);
      reference::Glu(rows, half, c.value, x_double.data(), expected_y.data());
      EXPECT_TRUE(AllNear(ToHost(device_y), testing::Cast<float>(expected_y),
                          kValueTolerance));

      ASSERT_TRUE(GluBackward(*ctx, activation, device_x.view<float>(),
                              device_d_y.view<float>(),
                              device_d_x.view<float>())
                      .ok());
      std::vector<double> expected_d_x(x.size());
      reference::GluBackward(rows, half, c.value, c.derivative, x_double.data(),
                             d_y_double.data(), expected_d_x.data());
      EXPECT_TRUE(AllNear(ToHost(device_d_x),
                          testing::Cast<float>(expected_d_x),
                          kDerivativeTolerance));
    }
  }
}

}  // namespace
}  // namespace ftx
