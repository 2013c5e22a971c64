// RMSNorm against its formula in double; x and g gradients by central
// differences; the eps clamp on an all-zero row; bad shapes.
#include "layers/rmsnorm.h"

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

constexpr int64_t kRows = 5, kDim = 7;

std::vector<double> Reference(const std::vector<double>& x,
                              const std::vector<double>& g, double eps) {
  std::vector<double> y(x.size());
  for (int64_t r = 0; r < kRows; ++r) {
    double sum = 0;
    for (int64_t c = 0; c < kDim; ++c) sum += x[r * kDim + c] * x[r * kDim + c];
    const double denominator =
        std::max(std::sqrt(sum) / std::sqrt(double(kDim)), eps);
    for (int64_t c = 0; c < kDim; ++c)
      y[r * kDim + c] = x[r * kDim + c] / denominator * g[c];
  }
  return y;
}

TEST(RMSNormTest, ForwardAndBackwardMatchReference) {
  auto ctx = Context::Create({.num_threads = 2}).value();
  RMSNorm norm({.dim = kDim});
  std::vector<float> x = RandomUniformVector(kRows * kDim, 1, -2, 2);
  std::fill(x.begin() + kDim, x.begin() + 2 * kDim, 0.0f);  // clamped row
  std::vector<float> g(kDim);
  RMSNorm::InitParams(TensorView<float>(g.data(), {kDim}));
  EXPECT_EQ(g[3], 1.0f);
  g = RandomUniformVector(kDim, 2, 0.5, 1.5);
  std::vector<float> y(x.size());
  const TensorView<const float> x_view(x.data(), {kRows, kDim});
  const TensorView<const float> g_view(g.data(), {kDim});
  ASSERT_TRUE(norm.Forward(*ctx, g_view, x_view,
                           TensorView<float>(y.data(), {kRows, kDim}))
                  .ok());
  const auto xd = testing::Cast<double>(x), gd = testing::Cast<double>(g);
  EXPECT_TRUE(AllNear(y, Reference(xd, gd, 1e-8), {1e-6, 1e-6}));

  const std::vector<float> d_y = RandomUniformVector(y.size(), 3);
  std::vector<float> d_x(x.size()), d_g(kDim, 0.5f);
  ASSERT_TRUE(norm.Backward(*ctx, g_view, x_view,
                            TensorView<const float>(d_y.data(), {kRows, kDim}),
                            TensorView<float>(d_x.data(), {kRows, kDim}),
                            TensorView<float>(d_g.data(), {kDim}))
                  .ok());
  const std::vector<double> w(d_y.begin(), d_y.end());
  // The clamped row is linear in x there: its gradient is g * d_y / eps.
  std::vector<double> x_for_check = xd;
  for (int64_t c = 0; c < kDim; ++c) x_for_check[kDim + c] = 0.0;
  auto loss_x = [&](const std::vector<double>& v) {
    return testing::Dot(w, Reference(v, gd, 1e-8));
  };
  std::vector<double> analytic_x = testing::Cast<double>(d_x);
  // Central differences cannot step inside the eps = 1e-8 clamp: check that row
  // by formula.
  for (int64_t c = 0; c < kDim; ++c) {
    EXPECT_NEAR(analytic_x[kDim + c], g[c] * d_y[kDim + c] / 1e-8,
                1e-6 * std::abs(g[c] * d_y[kDim + c] / 1e-8));
  }
  std::vector<double> other_rows, other_analytic;
  for (int64_t i = 0; i < kRows * kDim; ++i) {
    if (i / kDim == 1) continue;
    other_analytic.push_back(analytic_x[i]);
  }
  auto loss_other = [&](const std::vector<double>& v) {
    std::vector<double> full = x_for_check;
    int64_t k = 0;
    for (int64_t i = 0; i < kRows * kDim; ++i) {
      if (i / kDim != 1) full[i] = v[k++];
    }
    return loss_x(full);
  };
  for (int64_t i = 0; i < kRows * kDim; ++i) {
    if (i / kDim != 1) other_rows.push_back(xd[i]);
  }
  EXPECT_TRUE(testing::GradientMatches(loss_other, other_rows, other_analytic,
                                       {1e-5, 1e-4}));
  std::vector<double> analytic_g = testing::Cast<double>(d_g);
  for (double& v : analytic_g) v -= 0.5;
  auto loss_g = [&](const std::vector<double>& v) {
    return testing::Dot(w, Reference(x_for_check, v, 1e-8));
  };
  // The clamped row contributes d_y * 0 / eps = 0 to d_g.
  EXPECT_TRUE(testing::GradientMatches(loss_g, gd, analytic_g, {1e-5, 1e-4}));
}

TEST(RMSNormTest, BadShapesAreErrors) {
  auto ctx = Context::Create({.num_threads = 1}).value();
  RMSNorm norm({.dim = 4});
  std::vector<float> buffer(16);
  EXPECT_EQ(norm.Forward(*ctx, TensorView<const float>(buffer.data(), {3}),
                         TensorView<const float>(buffer.data(), {2, 4}),
                         TensorView<float>(buffer.data() + 8, {2, 4}))
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(norm.Forward(*ctx, TensorView<const float>(buffer.data(), {4}),
                         TensorView<const float>(buffer.data(), {2, 4}),
                         TensorView<float>(buffer.data() + 8, {4, 2}))
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ftx
