// ResiDual: a two-layer post-norm stack with branches f_l(x) = tanh(x W_l)
// run through Begin / Accumulate / Finish equals a double reference of
// x-transformers' resi_dual forward; the backward (FinishBackward,
// AddOuterGradient, the stack's own post-norm backward) matches central
// differences for x_0 and the final-norm weight; bad arguments.
#include "layers/resi_dual.h"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "tests/util/gradcheck.h"
#include "tests/util/random.h"
#include "tests/util/tolerance.h"

namespace ftx {
namespace {

constexpr int64_t kB = 2, kT = 3, kC = 5, kLayers = 2;
constexpr double kScale = 0.5;

std::vector<double> LayerNorm(const std::vector<double>& x,
                              const std::vector<double>& weight,
                              const std::vector<double>& bias) {
  std::vector<double> y(x.size());
  for (size_t r = 0; r < x.size() / kC; ++r) {
    double mean = 0, var = 0;
    for (int64_t c = 0; c < kC; ++c) mean += x[r * kC + c] / kC;
    for (int64_t c = 0; c < kC; ++c)
      var += std::pow(x[r * kC + c] - mean, 2) / kC;
    for (int64_t c = 0; c < kC; ++c) {
      y[r * kC + c] =
          (x[r * kC + c] - mean) / std::sqrt(var + 1e-5) * weight[c] + bias[c];
    }
  }
  return y;
}

std::vector<double> Branch(const std::vector<double>& x,
                           const std::vector<double>& w) {
  std::vector<double> y(x.size());
  for (size_t r = 0; r < x.size() / kC; ++r) {
    for (int64_t c = 0; c < kC; ++c) {
      double sum = 0;
      for (int64_t k = 0; k < kC; ++k) sum += x[r * kC + k] * w[k * kC + c];
      y[r * kC + c] = std::tanh(sum);
    }
  }
  return y;
}

struct Weights {
  std::vector<std::vector<double>> branch;  // [C, C] per layer
  std::vector<double> final_weight, final_bias;
};

std::vector<double> Reference(const Weights& w, std::vector<double> x) {
  const std::vector<double> ones(kC, 1.0), zeros(kC, 0.0);
  std::vector<double> outer(x.size());
  for (size_t i = 0; i < x.size(); ++i) outer[i] = kScale * x[i];
  for (int64_t l = 0; l < kLayers; ++l) {
    const std::vector<double> out = Branch(x, w.branch[l]);
    for (size_t i = 0; i < x.size(); ++i) {
      outer[i] += kScale * out[i];
      x[i] += out[i];
    }
    x = LayerNorm(x, ones, zeros);
  }
  const std::vector<double> final_norm =
      LayerNorm(outer, w.final_weight, w.final_bias);
  for (size_t i = 0; i < x.size(); ++i) x[i] += final_norm[i];
  return x;
}

TEST(ResiDualTest, StackForwardBackward) {
  auto ctx = Context::Create({.num_threads = 1}).value();
  auto resi =
      ResiDual::Create({.dim = kC, .scale = static_cast<float>(kScale)});
  ASSERT_TRUE(resi.ok());
  auto post_norm = LayerNormLayer::Create({.dim = kC});
  ASSERT_TRUE(post_norm.ok());
  Weights w;
  for (int64_t l = 0; l < kLayers; ++l) {
    w.branch.push_back(
        testing::RandomNormalVector<double>(kC * kC, 10 + l, 0, 0.5));
  }
  w.final_weight = testing::RandomUniformVector<double>(kC, 20, 0.5, 1.5);
  w.final_bias = testing::RandomUniformVector<double>(kC, 21);
  const std::vector<float> ones(kC, 1.0f), zeros(kC, 0.0f);
  const std::vector<float> final_weight = testing::Cast<float>(w.final_weight);
  const std::vector<float> final_bias = testing::Cast<float>(w.final_bias);
  const Shape shape{kB, kT, kC};
  const int64_t size = kB * kT * kC;

  const std::vector<float> x0 = testing::RandomNormalVector(size, 1);
  std::vector<std::vector<float>> inputs = {x0}, branches, sums;
  std::vector<LayerNormCache> caches(kLayers);
  std::vector<float> outer(size);
  ASSERT_TRUE(resi->Begin(*ctx, TensorView<const float>(x0.data(), shape),
                          TensorView<float>(outer.data(), shape))
                  .ok());
  for (int64_t l = 0; l < kLayers; ++l) {
    branches.push_back(testing::Cast<float>(
        Branch(testing::Cast<double>(inputs[l]), w.branch[l])));
    ASSERT_TRUE(
        resi->Accumulate(*ctx,
                         TensorView<const float>(branches[l].data(), shape),
                         TensorView<float>(outer.data(), shape))
            .ok());
    sums.push_back(inputs[l]);
    for (int64_t i = 0; i < size; ++i) sums[l][i] += branches[l][i];
    std::vector<float> next(size);
    ASSERT_TRUE(post_norm
                    ->Forward(*ctx, TensorView<const float>(ones.data(), {kC}),
                              TensorView<const float>(zeros.data(), {kC}),
                              TensorView<const float>(sums[l].data(), shape),
                              TensorView<float>(next.data(), shape), &caches[l])
                    .ok());
    inputs.push_back(next);
  }
  std::vector<float> y(size);
  LayerNormCache final_cache;
  ASSERT_TRUE(
      resi->Finish(*ctx, TensorView<const float>(final_weight.data(), {kC}),
                   TensorView<const float>(final_bias.data(), {kC}),
                   TensorView<const float>(inputs[kLayers].data(), shape),
                   TensorView<const float>(outer.data(), shape),
                   TensorView<float>(y.data(), shape), &final_cache)
          .ok());
  const auto x64 = testing::Cast<double>(x0);
  EXPECT_TRUE(testing::AllNear(y, Reference(w, x64), {1e-5, 1e-5}));

  // Backward, the forward read in reverse.
  const std::vector<float> d_y = testing::RandomUniformVector(size, 2);
  std::vector<float> d_outer(size), d_final_weight(kC, 0.0f),
      d_final_bias(kC, 0.0f);
  std::vector<float> d_x = d_y;  // x_L's gradient is d_y
  ASSERT_TRUE(resi->FinishBackward(
                      *ctx, TensorView<const float>(final_weight.data(), {kC}),
                      final_cache, TensorView<const float>(outer.data(), shape),
                      TensorView<const float>(d_y.data(), shape),
                      TensorView<float>(d_outer.data(), shape),
                      TensorView<float>(d_final_weight.data(), {kC}),
                      TensorView<float>(d_final_bias.data(), {kC}))
                  .ok());
  std::vector<float> unused_weight(kC), unused_bias(kC);
  for (int64_t l = kLayers - 1; l >= 0; --l) {
    std::vector<float> d_sum(size);
    ASSERT_TRUE(post_norm
                    ->Backward(*ctx, TensorView<const float>(ones.data(), {kC}),
                               caches[l],
                               TensorView<const float>(sums[l].data(), shape),
                               TensorView<const float>(d_x.data(), shape),
                               TensorView<float>(d_sum.data(), shape),
                               TensorView<float>(unused_weight.data(), {kC}),
                               TensorView<float>(unused_bias.data(), {kC}))
                    .ok());
    std::vector<float> d_branch = d_sum;
    ASSERT_TRUE(resi->AddOuterGradient(
                        *ctx, TensorView<const float>(d_outer.data(), shape),
                        TensorView<float>(d_branch.data(), shape))
                    .ok());
    d_x = d_sum;
    for (int64_t r = 0; r < kB * kT; ++r) {
      for (int64_t c = 0; c < kC; ++c) {
        const double b = branches[l][r * kC + c];
        const double d_pre = d_branch[r * kC + c] * (1 - b * b);
        for (int64_t k = 0; k < kC; ++k) {
          d_x[r * kC + k] +=
              static_cast<float>(d_pre * w.branch[l][k * kC + c]);
        }
      }
    }
  }
  ASSERT_TRUE(resi->AddOuterGradient(
                      *ctx, TensorView<const float>(d_outer.data(), shape),
                      TensorView<float>(d_x.data(), shape))
                  .ok());
  const auto dy64 = testing::Cast<double>(d_y);
  EXPECT_TRUE(testing::GradientMatches(
      [&](const auto& v) { return testing::Dot(dy64, Reference(w, v)); }, x64,
      testing::Cast<double>(d_x), {1e-5, 1e-4}));
  EXPECT_TRUE(testing::GradientMatches(
      [&](const auto& v) {
        Weights varied = w;
        varied.final_weight = v;
        return testing::Dot(dy64, Reference(varied, x64));
      },
      w.final_weight, testing::Cast<double>(d_final_weight), {1e-5, 1e-4}));
}

TEST(ResiDualTest, BadArgumentsAreInvalidArgument) {
  EXPECT_EQ(ResiDual::Create({.dim = 4, .scale = 0.0f}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ResiDual::Create({.dim = 4, .scale = 1.5f}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ResiDual::Create({.dim = 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto ctx = Context::Create({.num_threads = 1}).value();
  auto resi = ResiDual::Create({.dim = 4});
  std::vector<float> buffer(64);
  const auto status =
      resi->Begin(*ctx, TensorView<const float>(buffer.data(), {1, 2, 4}),
                  TensorView<float>(buffer.data() + 32, {1, 3, 4}));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("outer"), std::string::npos);
  EXPECT_EQ(
      resi->Accumulate(*ctx, TensorView<const float>(buffer.data(), {1, 2, 5}),
                       TensorView<float>(buffer.data() + 32, {1, 2, 5}))
          .code(),
      absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ftx
