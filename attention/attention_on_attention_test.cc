// AttentionOnAttention: forward y = a[:C] * sigmoid(a[C:]) against a double
// reference, central-difference gradients of the input and the weight, the
// zero_init_output initialisation and bad arguments.
#include "attention/attention_on_attention.h"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "tests/util/gradcheck.h"
#include "tests/util/random.h"
#include "tests/util/tolerance.h"

namespace ftx {
namespace {

constexpr int64_t kB = 2, kT = 3, kC = 4, kIn = 6;

std::vector<double> Reference(const std::vector<double>& x,
                              const std::vector<double>& w) {
  std::vector<double> y(kB * kT * kC);
  for (int64_t r = 0; r < kB * kT; ++r) {
    for (int64_t c = 0; c < kC; ++c) {
      double value = 0, gate = 0;
      for (int64_t i = 0; i < kIn; ++i) {
        value += x[r * kIn + i] * w[c * kIn + i];
        gate += x[r * kIn + i] * w[(kC + c) * kIn + i];
      }
      y[r * kC + c] = value / (1 + std::exp(-gate));
    }
  }
  return y;
}

TEST(AttentionOnAttentionTest, ForwardBackward) {
  auto ctx = Context::Create({.num_threads = 2}).value();
  auto aoa = AttentionOnAttention::Create({.dim = kC, .in_dim = kIn});
  ASSERT_TRUE(aoa.ok());
  EXPECT_EQ(aoa->ParamShapes()[0].name, "to_out.0.weight");
  std::vector<float> weight(2 * kC * kIn);
  ASSERT_TRUE(
      aoa->InitParams(*ctx, 7, TensorView<float>(weight.data(), {2 * kC, kIn}))
          .ok());
  const float bound = 1 / std::sqrt(static_cast<float>(kIn));
  for (float v : weight) EXPECT_LE(std::fabs(v), bound);
  const std::vector<float> x = testing::RandomNormalVector(kB * kT * kIn, 1);
  std::vector<float> y(kB * kT * kC);
  AttentionOnAttentionCache cache;
  const TensorView<const float> w_view(weight.data(), {2 * kC, kIn});
  const TensorView<const float> x_view(x.data(), {kB, kT, kIn});
  ASSERT_TRUE(aoa->Forward(*ctx, w_view, x_view,
                           TensorView<float>(y.data(), {kB, kT, kC}), &cache)
                  .ok());
  const auto x64 = testing::Cast<double>(x),
             w64 = testing::Cast<double>(weight);
  EXPECT_TRUE(testing::AllNear(y, Reference(x64, w64), {1e-6, 1e-5}));

  const std::vector<float> d_y = testing::RandomUniformVector(y.size(), 2);
  std::vector<float> d_x(x.size()), d_w(weight.size(), 1.0f);
  ASSERT_TRUE(aoa->Backward(*ctx, w_view, cache, x_view,
                            TensorView<const float>(d_y.data(), {kB, kT, kC}),
                            TensorView<float>(d_x.data(), {kB, kT, kIn}),
                            TensorView<float>(d_w.data(), {2 * kC, kIn}))
                  .ok());
  const auto w = testing::Cast<double>(d_y);
  EXPECT_TRUE(testing::GradientMatches(
      [&](const auto& v) { return testing::Dot(w, Reference(v, w64)); }, x64,
      testing::Cast<double>(d_x)));
  std::vector<double> d_w64(d_w.begin(), d_w.end());
  for (double& v : d_w64) v -= 1.0;
  EXPECT_TRUE(testing::GradientMatches(
      [&](const auto& v) { return testing::Dot(w, Reference(x64, v)); }, w64,
      d_w64));
}

TEST(AttentionOnAttentionTest, ZeroInitOutput) {
  auto ctx = Context::Create({.num_threads = 1}).value();
  auto aoa = AttentionOnAttention::Create(
      {.dim = kC, .in_dim = kIn, .zero_init_output = true});
  ASSERT_TRUE(aoa.ok());
  std::vector<float> weight(2 * kC * kIn, 1.0f);
  ASSERT_TRUE(
      aoa->InitParams(*ctx, 7, TensorView<float>(weight.data(), {2 * kC, kIn}))
          .ok());
  for (float v : weight) EXPECT_EQ(v, 0.0f);
}

TEST(AttentionOnAttentionTest, BadArgumentsAreInvalidArgument) {
  EXPECT_EQ(
      AttentionOnAttention::Create({.dim = 0, .in_dim = 2}).status().code(),
      absl::StatusCode::kInvalidArgument);
  auto ctx = Context::Create({.num_threads = 1}).value();
  auto aoa = AttentionOnAttention::Create({.dim = kC, .in_dim = kIn});
  ASSERT_TRUE(aoa.ok());
  std::vector<float> buffer(256);
  const auto status =
      aoa->Forward(*ctx, TensorView<const float>(buffer.data(), {kC, kIn}),
                   TensorView<const float>(buffer.data(), {1, 2, kIn}),
                   TensorView<float>(buffer.data() + 100, {1, 2, kC}), nullptr);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("weight"), std::string::npos);
  EXPECT_EQ(
      aoa->Forward(*ctx, TensorView<const float>(buffer.data(), {2 * kC, kIn}),
                   TensorView<const float>(buffer.data(), {1, 2, kIn + 1}),
                   TensorView<float>(buffer.data() + 100, {1, 2, kC}), nullptr)
          .code(),
      absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ftx
