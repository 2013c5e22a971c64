// ReZero: initial gains of both references, forward g * f(x), and the gradients
// of the branch and of g by central differences.
#include "layers/rezero.h"

#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "tests/util/gradcheck.h"
#include "tests/util/random.h"
#include "tests/util/tolerance.h"

namespace ftx {
namespace {

TEST(ReZeroTest, InitForwardBackward) {
  auto ctx = Context::Create({.num_threads = 2}).value();
  float g = -1;
  ReZero().InitParams(TensorView<float>(&g, {1}));
  EXPECT_EQ(g, 0.0f);
  ReZero performer({.initial_gain = 1e-3f});
  performer.InitParams(TensorView<float>(&g, {1}));
  EXPECT_EQ(g, 1e-3f);

  g = 0.7f;
  const std::vector<float> branch = testing::RandomUniformVector(3 * 5, 1);
  std::vector<float> y(branch.size());
  const TensorView<const float> g_view(&g, {1});
  ASSERT_TRUE(performer
                  .Forward(*ctx, g_view,
                           TensorView<const float>(branch.data(), {3, 5}),
                           TensorView<float>(y.data(), {3, 5}))
                  .ok());
  for (size_t i = 0; i < y.size(); ++i) EXPECT_FLOAT_EQ(y[i], 0.7f * branch[i]);

  const std::vector<float> d_y = testing::RandomUniformVector(y.size(), 2);
  std::vector<float> d_branch(y.size());
  float d_g = 1.0f;
  ASSERT_TRUE(performer
                  .Backward(*ctx, g_view,
                            TensorView<const float>(branch.data(), {3, 5}),
                            TensorView<const float>(d_y.data(), {3, 5}),
                            TensorView<float>(d_branch.data(), {3, 5}),
                            TensorView<float>(&d_g, {1}))
                  .ok());
  const std::vector<double> w(d_y.begin(), d_y.end());
  const std::vector<double> b(branch.begin(), branch.end());
  auto loss = [&](double gain, const std::vector<double>& x) {
    double sum = 0;
    for (size_t i = 0; i < x.size(); ++i) sum += w[i] * gain * x[i];
    return sum;
  };
  EXPECT_TRUE(
      testing::GradientMatches([&](const auto& v) { return loss(0.7, v); }, b,
                               testing::Cast<double>(d_branch), {1e-6, 1e-5}));
  EXPECT_TRUE(
      testing::GradientMatches([&](const auto& v) { return loss(v[0], b); },
                               {0.7}, {d_g - 1.0}, {1e-6, 1e-5}));
}

TEST(ReZeroTest, NonScalarGainIsAnError) {
  auto ctx = Context::Create({.num_threads = 1}).value();
  std::vector<float> buffer(8);
  EXPECT_EQ(ReZero()
                .Forward(*ctx, TensorView<const float>(buffer.data(), {2}),
                         TensorView<const float>(buffer.data(), {2, 2}),
                         TensorView<float>(buffer.data() + 4, {2, 2}))
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ftx
