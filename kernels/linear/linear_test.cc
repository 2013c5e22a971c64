// Linear: forward against a direct double computation, backward against central
// differences (x, weight, bias), accumulation rules and bad shapes.
#include "kernels/linear/linear.h"

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

constexpr int64_t kBatch = 2, kSteps = 3, kIn = 5, kOut = 4;

std::vector<double> Reference(const std::vector<double>& x, const std::vector<double>& w,
                              const std::vector<double>& b) {
  std::vector<double> y(kBatch * kSteps * kOut);
  for (int64_t r = 0; r < kBatch * kSteps; ++r) {
    for (int64_t o = 0; o < kOut; ++o) {
      double sum = b.empty() ? 0.0 : b[o];
      for (int64_t i = 0; i < kIn; ++i) sum += x[r * kIn + i] * w[o * kIn + i];
      y[r * kOut + o] = sum;
    }
  }
  return y;
}

TEST(LinearTest, ForwardAndBackwardMatchReference) {
  auto ctx = Context::Create({.num_threads = 2}).value();
  const auto x = RandomUniformVector(kBatch * kSteps * kIn, 1);
  const auto w = RandomUniformVector(kOut * kIn, 2);
  const auto b = RandomUniformVector(kOut, 3);
  std::vector<float> y(kBatch * kSteps * kOut);
  const TensorView<const float> x_view(x.data(), {kBatch, kSteps, kIn});
  const TensorView<const float> w_view(w.data(), {kOut, kIn});
  ASSERT_TRUE(LinearForward(*ctx, x_view, w_view, TensorView<const float>(b.data(), {kOut}),
                            TensorView<float>(y.data(), {kBatch, kSteps, kOut}))
                  .ok());
  const auto xd = testing::Cast<double>(x), wd = testing::Cast<double>(w),
             bd = testing::Cast<double>(b);
  EXPECT_TRUE(AllNear(y, Reference(xd, wd, bd), {1e-6, 1e-6}));

  const auto d_y = RandomUniformVector(y.size(), 4);
  std::vector<float> d_x(x.size(), 7.0f), d_w(w.size(), 0.5f), d_b(kOut, -1.0f);
  ASSERT_TRUE(LinearBackward(*ctx, x_view, w_view,
                             TensorView<const float>(d_y.data(), {kBatch, kSteps, kOut}),
                             TensorView<float>(d_x.data(), {kBatch, kSteps, kIn}),
                             TensorView<float>(d_w.data(), {kOut, kIn}),
                             TensorView<float>(d_b.data(), {kOut}))
                  .ok());
  const std::vector<double> dy(d_y.begin(), d_y.end());
  auto loss_x = [&](const std::vector<double>& v) { return testing::Dot(dy, Reference(v, wd, bd)); };
  auto loss_w = [&](const std::vector<double>& v) { return testing::Dot(dy, Reference(xd, v, bd)); };
  auto loss_b = [&](const std::vector<double>& v) { return testing::Dot(dy, Reference(xd, wd, v)); };
  // d_x written; d_w and d_b accumulate onto 0.5 and -1.
  EXPECT_TRUE(testing::GradientMatches(loss_x, xd, testing::Cast<double>(d_x), {1e-5, 1e-5}));
  std::vector<double> dw_minus_start(d_w.begin(), d_w.end()), db_minus_start(d_b.begin(), d_b.end());
  for (double& v : dw_minus_start) v -= 0.5;
  for (double& v : db_minus_start) v += 1.0;
  EXPECT_TRUE(testing::GradientMatches(loss_w, wd, dw_minus_start, {1e-5, 1e-5}));
  EXPECT_TRUE(testing::GradientMatches(loss_b, bd, db_minus_start, {1e-5, 1e-5}));
}

TEST(LinearTest, BadWeightShapeIsAnError) {
  auto ctx = Context::Create({.num_threads = 1}).value();
  std::vector<float> buffer(100);
  const absl::Status status = LinearForward(
      *ctx, TensorView<const float>(buffer.data(), {2, 5}),
      TensorView<const float>(buffer.data(), {5, 4}), TensorView<const float>(),
      TensorView<float>(buffer.data() + 50, {2, 4}));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("weight must be [out, in] = [4, 5]"), std::string::npos)
      << status;
}

}  // namespace
}  // namespace ftx
