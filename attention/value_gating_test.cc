// ValueGating: x-transformers' initialisation, forward against a double
// reference for the per-channel and per-head gates with sigmoid and SiLU,
// central-difference gradients of x, values, weight and bias, bad arguments.
#include "attention/value_gating.h"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "tests/util/gradcheck.h"
#include "tests/util/random.h"
#include "tests/util/tolerance.h"

namespace ftx {
namespace {

constexpr int64_t kB = 2, kT = 3, kC = 5, kH = 3, kD = 2;

double Act(ValueGateActivation activation, double z) {
  const double s = 1 / (1 + std::exp(-z));
  return activation == ValueGateActivation::kSigmoid ? s : z * s;
}

std::vector<double> Reference(const ValueGatingConfig& config, int64_t G,
                              const std::vector<double>& x,
                              const std::vector<double>& values,
                              const std::vector<double>& weight,
                              const std::vector<double>& bias) {
  const int64_t width = kH * kD;
  std::vector<double> out(values.size());
  for (int64_t r = 0; r < kB * kT; ++r) {
    for (int64_t i = 0; i < width; ++i) {
      const int64_t g = i / (width / G);
      double z = bias[g];
      for (int64_t c = 0; c < kC; ++c) z += x[r * kC + c] * weight[g * kC + c];
      out[r * width + i] = values[r * width + i] * Act(config.activation, z);
    }
  }
  return out;
}

void Check(const ValueGatingConfig& config) {
  auto ctx = Context::Create({.num_threads = 1}).value();
  auto gating = ValueGating::Create(config);
  ASSERT_TRUE(gating.ok());
  const int64_t G = gating->gates();
  const int64_t width = kH * kD;
  const std::vector<float> x = testing::RandomNormalVector(kB * kT * kC, 1);
  const std::vector<float> values =
      testing::RandomNormalVector(kB * kT * width, 2);
  const std::vector<float> weight =
      testing::RandomNormalVector(G * kC, 3, 0, 0.5);
  const std::vector<float> bias = testing::RandomNormalVector(G, 4);
  const ValueGatingParams params{
      TensorView<const float>(weight.data(), {G, kC}),
      TensorView<const float>(bias.data(), {G})};
  std::vector<float> out(values.size());
  ValueGatingCache cache;
  ASSERT_TRUE(
      gating
          ->Forward(*ctx, params,
                    TensorView<const float>(x.data(), {kB, kT, kC}),
                    TensorView<const float>(values.data(), {kB, kT, width}),
                    TensorView<float>(out.data(), {kB, kT, width}), &cache)
          .ok());
  const auto x64 = testing::Cast<double>(x),
             v64 = testing::Cast<double>(values);
  const auto w64 = testing::Cast<double>(weight),
             b64 = testing::Cast<double>(bias);
  EXPECT_TRUE(testing::AllNear(out, Reference(config, G, x64, v64, w64, b64),
                               {1e-6, 1e-5}));

  const std::vector<float> d_out = testing::RandomUniformVector(out.size(), 5);
  std::vector<float> d_x(x.size()), d_values(values.size());
  std::vector<float> d_weight(weight.size(), 1.0f), d_bias(bias.size(), 1.0f);
  ASSERT_TRUE(
      gating
          ->Backward(*ctx, params, cache,
                     TensorView<const float>(x.data(), {kB, kT, kC}),
                     TensorView<const float>(values.data(), {kB, kT, width}),
                     TensorView<const float>(d_out.data(), {kB, kT, width}),
                     TensorView<float>(d_x.data(), {kB, kT, kC}),
                     TensorView<float>(d_values.data(), {kB, kT, width}),
                     {TensorView<float>(d_weight.data(), {G, kC}),
                      TensorView<float>(d_bias.data(), {G})})
          .ok());
  const auto w = testing::Cast<double>(d_out);
  auto loss = [&](const std::vector<double>& xs, const std::vector<double>& vs,
                  const std::vector<double>& ws,
                  const std::vector<double>& bs) {
    return testing::Dot(w, Reference(config, G, xs, vs, ws, bs));
  };
  auto minus_one = [](const std::vector<float>& g) {
    std::vector<double> out(g.begin(), g.end());
    for (double& v : out) v -= 1.0;
    return out;
  };
  EXPECT_TRUE(testing::GradientMatches(
      [&](const auto& v) { return loss(v, v64, w64, b64); }, x64,
      testing::Cast<double>(d_x)));
  EXPECT_TRUE(testing::GradientMatches(
      [&](const auto& v) { return loss(x64, v, w64, b64); }, v64,
      testing::Cast<double>(d_values)));
  EXPECT_TRUE(testing::GradientMatches(
      [&](const auto& v) { return loss(x64, v64, v, b64); }, w64,
      minus_one(d_weight)));
  EXPECT_TRUE(testing::GradientMatches(
      [&](const auto& v) { return loss(x64, v64, w64, v); }, b64,
      minus_one(d_bias)));
}

TEST(ValueGatingTest, PerChannelSigmoid) {
  Check({.dim = kC, .heads = kH, .head_dim = kD});
}

TEST(ValueGatingTest, PerHeadSilu) {
  Check({.dim = kC,
         .heads = kH,
         .head_dim = kD,
         .kind = ValueGateKind::kPerHead,
         .activation = ValueGateActivation::kSilu});
}

TEST(ValueGatingTest, InitialisationAndNames) {
  auto gating = ValueGating::Create({.dim = kC, .heads = kH, .head_dim = kD});
  ASSERT_TRUE(gating.ok());
  EXPECT_EQ(gating->ParamShapes()[0].name, "to_v_gate.weight");
  EXPECT_EQ(gating->ParamShapes()[0].shape, (Shape{kH * kD, kC}));
  std::vector<float> weight(kH * kD * kC, 3.0f), bias(kH * kD);
  ASSERT_TRUE(gating
                  ->InitParams({TensorView<float>(weight.data(), {kH * kD, kC}),
                                TensorView<float>(bias.data(), {kH * kD})})
                  .ok());
  for (float v : weight) EXPECT_EQ(v, 0.0f);
  for (float v : bias) EXPECT_EQ(v, 1.0f);
  auto heads = ValueGating::Create({.dim = kC,
                                    .heads = kH,
                                    .head_dim = kD,
                                    .kind = ValueGateKind::kPerHead});
  ASSERT_TRUE(heads.ok());
  EXPECT_EQ(heads->ParamShapes()[1].name, "to_v_head_gate.bias");
  EXPECT_EQ(heads->ParamShapes()[1].shape, (Shape{kH}));
}

TEST(ValueGatingTest, BadArgumentsAreInvalidArgument) {
  EXPECT_EQ(ValueGating::Create({.dim = 0, .heads = 1, .head_dim = 1})
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  auto ctx = Context::Create({.num_threads = 1}).value();
  auto gating = ValueGating::Create({.dim = kC, .heads = kH, .head_dim = kD});
  ASSERT_TRUE(gating.ok());
  std::vector<float> buffer(256);
  const ValueGatingParams params{
      TensorView<const float>(buffer.data(), {kH * kD, kC}),
      TensorView<const float>(buffer.data(), {kH * kD})};
  const auto status = gating->Forward(
      *ctx, params, TensorView<const float>(buffer.data(), {1, 2, kC}),
      TensorView<const float>(buffer.data(), {1, 3, kH * kD}),
      TensorView<float>(buffer.data() + 100, {1, 2, kH * kD}), nullptr);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("values"), std::string::npos);
  const ValueGatingParams wrong{
      TensorView<const float>(buffer.data(), {kH, kC}),
      TensorView<const float>(buffer.data(), {kH})};
  EXPECT_EQ(
      gating
          ->Forward(
              *ctx, wrong, TensorView<const float>(buffer.data(), {1, 2, kC}),
              TensorView<const float>(buffer.data(), {1, 2, kH * kD}),
              TensorView<float>(buffer.data() + 100, {1, 2, kH * kD}), nullptr)
          .code(),
      absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ftx
