// ScaleNorm, each reference variant against its formula in double, with x and g
// gradients by central differences; initial g per variant; bad shapes.
#include "layers/scalenorm.h"

#include <cmath>
#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "tests/util/gradcheck.h"
#include "tests/util/random.h"
#include "tests/util/tolerance.h"

namespace ftx {
namespace {

using ::ftx::testing::AllNear;
using ::ftx::testing::RandomUniformVector;

constexpr int64_t kRows = 4, kDim = 6;

std::vector<double> Reference(const std::vector<double>& x, double g,
                              bool sqrt_dim) {
  std::vector<double> y(x.size());
  for (int64_t r = 0; r < kRows; ++r) {
    double sum = 0;
    for (int64_t c = 0; c < kDim; ++c) sum += x[r * kDim + c] * x[r * kDim + c];
    double norm = std::sqrt(sum);
    if (sqrt_dim) norm /= std::sqrt(double(kDim));
    const double denominator = std::max(norm, 1e-5);
    for (int64_t c = 0; c < kDim; ++c)
      y[r * kDim + c] = x[r * kDim + c] / denominator * g;
  }
  return y;
}

class ScaleNormTest : public ::testing::TestWithParam<ScaleNormVariant> {};

TEST_P(ScaleNormTest, ForwardAndBackwardMatchReference) {
  const ScaleNormVariant variant = GetParam();
  const bool sqrt_dim = variant == ScaleNormVariant::kXTransformers026;
  auto ctx = Context::Create({.num_threads = 2}).value();
  ScaleNorm norm({.dim = kDim, .variant = variant});
  float g = 0;
  norm.InitParams(TensorView<float>(&g, {1}));
  EXPECT_FLOAT_EQ(g, variant == ScaleNormVariant::kXTransformers10
                         ? 1 / std::sqrt(6.0f)
                         : 1.0f);
  g = 1.3f;
  const std::vector<float> x = RandomUniformVector(kRows * kDim, 4, -2, 2);
  std::vector<float> y(x.size());
  const TensorView<const float> x_view(x.data(), {kRows, kDim});
  const TensorView<const float> g_view(&g, {1});
  ASSERT_TRUE(norm.Forward(*ctx, g_view, x_view,
                           TensorView<float>(y.data(), {kRows, kDim}))
                  .ok());
  const auto xd = testing::Cast<double>(x);
  EXPECT_TRUE(AllNear(y, Reference(xd, 1.3, sqrt_dim), {1e-6, 1e-6}));

  const std::vector<float> d_y = RandomUniformVector(y.size(), 5);
  std::vector<float> d_x(x.size());
  float d_g = 0.25f;
  ASSERT_TRUE(norm.Backward(*ctx, g_view, x_view,
                            TensorView<const float>(d_y.data(), {kRows, kDim}),
                            TensorView<float>(d_x.data(), {kRows, kDim}),
                            TensorView<float>(&d_g, {1}))
                  .ok());
  const std::vector<double> w(d_y.begin(), d_y.end());
  EXPECT_TRUE(testing::GradientMatches(
      [&](const std::vector<double>& v) {
        return testing::Dot(w, Reference(v, 1.3, sqrt_dim));
      },
      xd, testing::Cast<double>(d_x), {1e-5, 1e-4}));
  EXPECT_TRUE(testing::GradientMatches(
      [&](const std::vector<double>& v) {
        return testing::Dot(w, Reference(xd, v[0], sqrt_dim));
      },
      {1.3}, {d_g - 0.25}, {1e-5, 1e-4}));
}

INSTANTIATE_TEST_SUITE_P(Variants, ScaleNormTest,
                         ::testing::Values(ScaleNormVariant::kXTransformers026,
                                           ScaleNormVariant::kXTransformers10,
                                           ScaleNormVariant::kPerformer));

TEST(ScaleNormErrorsTest, BadShapesAreErrors) {
  auto ctx = Context::Create({.num_threads = 1}).value();
  ScaleNorm norm({.dim = 4});
  std::vector<float> buffer(16);
  EXPECT_EQ(norm.Forward(*ctx, TensorView<const float>(buffer.data(), {2}),
                         TensorView<const float>(buffer.data(), {2, 4}),
                         TensorView<float>(buffer.data() + 8, {2, 4}))
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(norm.Forward(*ctx, TensorView<const float>(buffer.data(), {1}),
                         TensorView<const float>(buffer.data(), {2, 3}),
                         TensorView<float>(buffer.data() + 8, {2, 3}))
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ftx
