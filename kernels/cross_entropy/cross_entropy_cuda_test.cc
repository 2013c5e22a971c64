// kernels/cross_entropy on a CUDA device against the scalar reference in
// double (skips without a device): ignored rows, label smoothing, huge logits,
// probabilities in place, backward in place, MeanLoss, invalid targets.
#include <cmath>
#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/base/tensor.h"
#include "kernels/cross_entropy/cross_entropy.h"
#include "kernels/reference/cross_entropy_ref.h"
#include "tests/util/random.h"
#include "tests/util/tolerance.h"

namespace ftx {
namespace {

using ::ftx::testing::AllNear;
using ::ftx::testing::Cast;
using ::ftx::testing::Tolerance;

constexpr Tolerance kLossTolerance{1e-5, 2e-6};
constexpr Tolerance kProbabilityTolerance{1e-8, 1e-5};
constexpr Tolerance kGradientTolerance{1e-6, 1e-5};

template <typename T>
Tensor ToDevice(const std::vector<T>& values, const Shape& shape) {
  Tensor host = Tensor::Create(DTypeOf<T>(), shape).value();
  std::copy(values.begin(), values.end(), host.data<T>());
  return host.To(Device::Cuda()).value();
}

std::vector<float> ToHost(const Tensor& device) {
  Tensor host = device.To(Device::Cpu()).value();
  return std::vector<float>(host.data<float>(),
                            host.data<float>() + host.NumElements());
}

// Targets uniform in [0, vocab), every third row (from row 1) ignored.
std::vector<int32_t> MakeTargets(int64_t rows, int64_t vocab, uint64_t seed,
                                 int32_t ignore_index) {
  const std::vector<double> uniform =
      testing::RandomUniformVector<double>(rows, seed, 0.0, 1.0);
  std::vector<int32_t> targets(rows);
  for (int64_t r = 0; r < rows; ++r) {
    targets[r] =
        r % 3 == 1 ? ignore_index : static_cast<int32_t>(uniform[r] * vocab);
  }
  return targets;
}

struct Case {
  int64_t rows, cols;
  double low, high;
};

TEST(CrossEntropyCudaTest, ForwardBackwardAndMeanMatchReference) {
  if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  auto ctx = Context::Create({.device = Device::Cuda()}).value();
  for (const Case& size :
       {Case{1, 1, -3, 3}, Case{7, 33, -3, 3}, Case{129, 1000, -8, 8},
        Case{12, 50257, -4, 4}, Case{9, 777, -1e4, 1e4}}) {
    for (float smoothing : {0.0f, 0.1f}) {
      SCOPED_TRACE(::testing::Message() << size.rows << "x" << size.cols
                                        << " smoothing=" << smoothing);
      CrossEntropyOptions options;
      options.label_smoothing = smoothing;
      const int64_t n = size.rows * size.cols;
      const Shape shape{size.rows, size.cols};
      const std::vector<float> logits =
          testing::RandomUniformVector(n, 1, size.low, size.high);
      const std::vector<int32_t> targets =
          MakeTargets(size.rows, size.cols, 2, options.ignore_index);
      const std::vector<double> logits_double = Cast<double>(logits);

      std::vector<double> expected_losses(size.rows), expected_probabilities(n);
      reference::CrossEntropyForward<double>(
          size.rows, size.cols, logits_double.data(), size.cols, targets.data(),
          options.ignore_index, smoothing, expected_losses.data(),
          expected_probabilities.data(), size.cols);

      const Tensor device_logits = ToDevice(logits, shape);
      const Tensor device_targets = ToDevice(targets, {size.rows});
      Tensor losses =
          Tensor::Create(DType::kF32, {size.rows}, Device::Cuda()).value();
      Tensor probabilities =
          Tensor::Create(DType::kF32, shape, Device::Cuda()).value();
      ASSERT_TRUE(CrossEntropyForward(*ctx, device_logits.view<float>(),
                                      device_targets.view<int32_t>(),
                                      losses.view<float>(),
                                      probabilities.view<float>(), options)
                      .ok());
      EXPECT_TRUE(AllNear(ToHost(losses), expected_losses, kLossTolerance));
      EXPECT_TRUE(AllNear(ToHost(probabilities), expected_probabilities,
                          kProbabilityTolerance));

      // Probabilities in place over a copy of the logits.
      Tensor in_place = ToDevice(logits, shape);
      ASSERT_TRUE(CrossEntropyForward(*ctx, in_place.view<float>(),
                                      device_targets.view<int32_t>(),
                                      losses.view<float>(),
                                      in_place.view<float>(), options)
                      .ok());
      EXPECT_TRUE(AllNear(ToHost(losses), expected_losses, kLossTolerance));
      EXPECT_TRUE(AllNear(ToHost(in_place), expected_probabilities,
                          kProbabilityTolerance));

      // MeanLoss's d_losses drive the backward pass.
      Tensor mean = Tensor::Create(DType::kF32, {1}, Device::Cuda()).value();
      Tensor d_losses =
          Tensor::Create(DType::kF32, {size.rows}, Device::Cuda()).value();
      ASSERT_TRUE(MeanLoss(*ctx, losses.view<float>(),
                           device_targets.view<int32_t>(), mean.view<float>(),
                           d_losses.view<float>(), options)
                      .ok());
      std::vector<double> expected_d_losses(size.rows);
      const double expected_mean = reference::MeanLoss<double>(
          size.rows, expected_losses.data(), targets.data(),
          options.ignore_index, expected_d_losses.data());
      EXPECT_NEAR(ToHost(mean)[0], expected_mean,
                  1e-5 * (1 + std::abs(expected_mean)));
      EXPECT_TRUE(AllNear(ToHost(d_losses), expected_d_losses, {0, 1e-7}));

      std::vector<double> expected_d_logits(n);
      reference::CrossEntropyBackward<double>(
          size.rows, size.cols, logits_double.data(), size.cols, targets.data(),
          options.ignore_index, smoothing, expected_d_losses.data(),
          expected_d_logits.data(), size.cols);
      Tensor d_logits = ToDevice(logits, shape);  // in place
      ASSERT_TRUE(CrossEntropyBackward(*ctx, d_logits.view<float>(),
                                       device_targets.view<int32_t>(),
                                       d_losses.view<float>(),
                                       d_logits.view<float>(), options)
                      .ok());
      EXPECT_TRUE(
          AllNear(ToHost(d_logits), expected_d_logits, kGradientTolerance));
    }
  }
}

TEST(CrossEntropyCudaTest, InvalidTargetIsAnError) {
  if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  auto ctx = Context::Create({.device = Device::Cuda()}).value();
  const Tensor logits =
      ToDevice(testing::RandomUniformVector(3 * 5, 3), {3, 5});
  const Tensor targets = ToDevice(std::vector<int32_t>{0, 5, 1}, {3});
  Tensor losses = Tensor::Create(DType::kF32, {3}, Device::Cuda()).value();
  const absl::Status status =
      CrossEntropyForward(*ctx, logits.view<float>(), targets.view<int32_t>(),
                          losses.view<float>(), {});
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("targets[1] = 5"), std::string::npos)
      << status;
}

}  // namespace
}  // namespace ftx
