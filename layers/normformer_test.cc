// HeadScale (NormFormer head scaling): initialisation, forward, gradients of
// the attended values and of gamma by central differences, bad arguments.
#include "layers/normformer.h"

#include <vector>

#include "gtest/gtest.h"
#include "tests/util/gradcheck.h"
#include "tests/util/random.h"
#include "tests/util/tolerance.h"

namespace ftx {
namespace {

constexpr int64_t kN = 2, kL = 3, kH = 3, kD = 4;

std::vector<double> Reference(const std::vector<double>& x,
                              const std::vector<double>& gamma) {
  std::vector<double> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = gamma[(i / kD) % kH] * x[i];
  return y;
}

TEST(HeadScaleTest, InitForwardBackward) {
  auto ctx = Context::Create({.num_threads = 1}).value();
  auto scale = HeadScale::Create({.heads = kH});
  ASSERT_TRUE(scale.ok());
  EXPECT_EQ(scale->ParamShapes()[0].name, "head_scale_params");
  std::vector<float> gamma(kH, 5.0f);
  ASSERT_TRUE(
      scale->InitParams(TensorView<float>(gamma.data(), {1, kH, 1, 1})).ok());
  EXPECT_EQ(gamma, std::vector<float>(kH, 1.0f));
  gamma = {0.5f, -1.5f, 2.0f};
  const std::vector<float> x =
      testing::RandomNormalVector(kN * kL * kH * kD, 1);
  std::vector<float> y(x.size());
  const TensorView<const float> g_view(gamma.data(), {1, kH, 1, 1});
  const TensorView<const float> x_view(x.data(), {kN, kL, kH, kD});
  ASSERT_TRUE(scale
                  ->Forward(*ctx, g_view, x_view,
                            TensorView<float>(y.data(), {kN, kL, kH, kD}))
                  .ok());
  const auto x64 = testing::Cast<double>(x), g64 = testing::Cast<double>(gamma);
  EXPECT_TRUE(testing::AllNear(y, Reference(x64, g64), {0, 1e-7}));

  const std::vector<float> d_y = testing::RandomUniformVector(y.size(), 2);
  std::vector<float> d_x(x.size()), d_gamma(kH, 1.0f);
  ASSERT_TRUE(
      scale
          ->Backward(*ctx, g_view, x_view,
                     TensorView<const float>(d_y.data(), {kN, kL, kH, kD}),
                     TensorView<float>(d_x.data(), {kN, kL, kH, kD}),
                     TensorView<float>(d_gamma.data(), {1, kH, 1, 1}))
          .ok());
  const auto w = testing::Cast<double>(d_y);
  EXPECT_TRUE(testing::GradientMatches(
      [&](const auto& v) { return testing::Dot(w, Reference(v, g64)); }, x64,
      testing::Cast<double>(d_x)));
  std::vector<double> d_g64(d_gamma.begin(), d_gamma.end());
  for (double& v : d_g64) v -= 1.0;
  EXPECT_TRUE(testing::GradientMatches(
      [&](const auto& v) { return testing::Dot(w, Reference(x64, v)); }, g64,
      d_g64));
}

TEST(HeadScaleTest, BadArgumentsAreInvalidArgument) {
  EXPECT_EQ(HeadScale::Create({.heads = 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto ctx = Context::Create({.num_threads = 1}).value();
  auto scale = HeadScale::Create({.heads = kH});
  std::vector<float> buffer(128);
  const auto status = scale->Forward(
      *ctx, TensorView<const float>(buffer.data(), {1, kH, 1, 1}),
      TensorView<const float>(buffer.data(), {1, 2, kH + 1, 2}),
      TensorView<float>(buffer.data() + 64, {1, 2, kH + 1, 2}));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("attended"), std::string::npos);
  EXPECT_EQ(scale
                ->Forward(*ctx, TensorView<const float>(buffer.data(), {kH}),
                          TensorView<const float>(buffer.data(), {1, 2, kH, 2}),
                          TensorView<float>(buffer.data() + 64, {1, 2, kH, 2}))
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ftx
