// kernels/adamw: every Highway target against the scalar reference (run in
// double) over several steps, odd sizes and strided rows; values derived by
// hand from torch.optim.AdamW's documented algorithm; decoupled decay;
// independence of the thread count; bad input.
#include "kernels/adamw/adamw.h"

#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/reference/adamw_ref.h"
#include "tests/util/highway_targets.h"
#include "tests/util/matrix.h"
#include "tests/util/random.h"
#include "tests/util/tolerance.h"

namespace ftx {
namespace {

using ::ftx::testing::AllNear;
using ::ftx::testing::Cast;
using ::ftx::testing::ForEachHighwayTarget;
using ::ftx::testing::StridedMatrix;
using ::ftx::testing::Tolerance;

// Float updates against the double reference, several steps accumulated; the
// moments carry about one float ulp of their inputs (|m| <= 1).
constexpr Tolerance kParamTolerance{1e-6, 1e-5};
constexpr Tolerance kMomentTolerance{5e-8, 1e-5};

struct Size {
  int64_t rows, cols;
};
// Odd widths, and rows longer than the kernel's 8192-element chunks.
const Size kSizes[] = {{1, 1},  {3, 7},  {2, 15},  {5, 16},
                       {4, 17}, {7, 33}, {3, 257}, {2, 20011}};

AdamWOptions MakeOptions(double lr, double weight_decay, int64_t step) {
  AdamWOptions options;
  options.lr = lr;
  options.weight_decay = weight_decay;
  options.step = step;
  return options;
}

class AdamWTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto ctx = Context::Create({.num_threads = 3});
    ASSERT_TRUE(ctx.ok());
    ctx_ = std::move(ctx).value();
  }
  std::unique_ptr<Context> ctx_;
};

TEST_F(AdamWTest, MatchesReferenceOverSeveralSteps) {
  ForEachHighwayTarget([&] {
    for (const Size& size : kSizes) {
      SCOPED_TRACE(::testing::Message() << size.rows << "x" << size.cols);
      const int64_t n = size.rows * size.cols;
      StridedMatrix params(size.rows, size.cols, 3, 1, -2.0, 2.0);
      StridedMatrix first_moment(size.rows, size.cols, 1, 2, -0.1, 0.1);
      StridedMatrix second_moment(size.rows, size.cols, 2, 3, 0.0, 0.01);
      std::vector<double> expected_params = Cast<double>(params.Dense());
      std::vector<double> expected_m = Cast<double>(first_moment.Dense());
      std::vector<double> expected_v = Cast<double>(second_moment.Dense());
      for (int64_t step = 1; step <= 5; ++step) {
        SCOPED_TRACE(::testing::Message() << "step " << step);
        StridedMatrix grads(size.rows, size.cols, 5, 10 + step, -1.0, 1.0);
        const AdamWOptions options = MakeOptions(1e-2, 0.1, step);
        ASSERT_TRUE(AdamWStep(*ctx_, params.view(), grads.const_view(),
                              first_moment.view(), second_moment.view(),
                              options)
                        .ok());
        reference::AdamWStep<double>(
            n, expected_params.data(), Cast<double>(grads.Dense()).data(),
            expected_m.data(), expected_v.data(), options.lr, options.beta1,
            options.beta2, options.eps, options.weight_decay, step);
        ASSERT_TRUE(AllNear(params.Dense(), expected_params, kParamTolerance));
        ASSERT_TRUE(
            AllNear(first_moment.Dense(), expected_m, kMomentTolerance));
        ASSERT_TRUE(
            AllNear(second_moment.Dense(), expected_v, kMomentTolerance));
      }
      EXPECT_TRUE(params.PaddingIntact() && first_moment.PaddingIntact() &&
                  second_moment.PaddingIntact());
    }
  });
}

// p0 = 1, lr = 0.1, weight_decay = 0.01, default betas and eps, gradients 0.5,
// -1, 0.25, following torch.optim.AdamW's documented algorithm by hand (in
// 40-digit decimal arithmetic):
//   t=1: p = 0.999 - 0.1 * 0.05/0.1 / (sqrt(0.00025/0.001) + 1e-8)
//          = 0.899000002, m = 0.05, v = 0.00025
//   t=2: m = -0.055, v = 0.00124975, p = 0.934711354238566
//   t=3: m = -0.0245, v = 0.00131100025, p = 0.947445708982738
TEST_F(AdamWTest, MatchesValuesDerivedByHandFromTorchsAlgorithm) {
  const double expected_p[] = {0.899000002, 0.934711354238566,
                               0.947445708982738};
  const double expected_m[] = {0.05, -0.055, -0.0245};
  const double expected_v[] = {0.00025, 0.00124975, 0.00131100025};
  const float gradients[] = {0.5f, -1.0f, 0.25f};
  ForEachHighwayTarget([&] {
    // Seventeen copies, so that both the vector body and the tail run.
    constexpr int64_t kN = 17;
    std::vector<float> p(kN, 1.0f), m(kN, 0.0f), v(kN, 0.0f), g(kN);
    for (int64_t step = 1; step <= 3; ++step) {
      std::fill(g.begin(), g.end(), gradients[step - 1]);
      ASSERT_TRUE(AdamWStep(*ctx_, TensorView<float>(p.data(), {kN}),
                            TensorView<const float>(g.data(), {kN}),
                            TensorView<float>(m.data(), {kN}),
                            TensorView<float>(v.data(), {kN}),
                            MakeOptions(0.1, 0.01, step))
                      .ok());
      EXPECT_TRUE(AllNear(p, std::vector<double>(kN, expected_p[step - 1]),
                          {1e-6, 1e-6}))
          << "step " << step;
      EXPECT_TRUE(AllNear(m, std::vector<double>(kN, expected_m[step - 1]),
                          {1e-9, 1e-6}))
          << "step " << step;
      EXPECT_TRUE(AllNear(v, std::vector<double>(kN, expected_v[step - 1]),
                          {1e-11, 1e-6}))
          << "step " << step;
    }
  });
}

// With a constant gradient g the bias corrections cancel exactly: m_hat = g
// and v_hat = g^2 at every step, so p_t = p_{t-1} (1 - lr wd) -
// lr g / (|g| + eps). Wrong bias corrections break this.
TEST_F(AdamWTest, ConstantGradientStepsBySignOfGradient) {
  constexpr int64_t kN = 33;
  constexpr double kLr = 0.05, kDecay = 0.2, kEps = 1e-8;
  const std::vector<float> g = testing::RandomUniformVector(kN, 4, -3.0, 3.0);
  std::vector<float> p = testing::RandomUniformVector(kN, 5, -1.0, 1.0);
  std::vector<float> m(kN, 0.0f), v(kN, 0.0f);
  std::vector<double> expected = Cast<double>(p);
  for (int64_t step = 1; step <= 20; ++step) {
    ASSERT_TRUE(AdamWStep(*ctx_, TensorView<float>(p.data(), {kN}),
                          TensorView<const float>(g.data(), {kN}),
                          TensorView<float>(m.data(), {kN}),
                          TensorView<float>(v.data(), {kN}),
                          MakeOptions(kLr, kDecay, step))
                    .ok());
    for (int64_t i = 0; i < kN; ++i) {
      expected[i] = expected[i] * (1 - kLr * kDecay) -
                    kLr * g[i] / (std::fabs(g[i]) + kEps);
    }
  }
  EXPECT_TRUE(AllNear(p, expected, {2e-6, 1e-5}));
}

// Zero gradients and moments leave only the decoupled decay p (1 - lr wd).
TEST_F(AdamWTest, WeightDecayIsDecoupledFromTheGradient) {
  constexpr int64_t kN = 19;
  std::vector<float> p = testing::RandomUniformVector(kN, 6, -4.0, 4.0);
  const std::vector<float> initial = p;
  std::vector<float> g(kN, 0.0f), m(kN, 0.0f), v(kN, 0.0f);
  ASSERT_TRUE(AdamWStep(*ctx_, TensorView<float>(p.data(), {kN}),
                        TensorView<const float>(g.data(), {kN}),
                        TensorView<float>(m.data(), {kN}),
                        TensorView<float>(v.data(), {kN}),
                        MakeOptions(0.5, 0.3, 7))
                  .ok());
  std::vector<double> expected(kN);
  for (int64_t i = 0; i < kN; ++i) expected[i] = initial[i] * (1 - 0.5 * 0.3);
  EXPECT_TRUE(AllNear(p, expected, {0, 2e-7}));
  EXPECT_TRUE(AllNear(m, std::vector<float>(kN, 0.0f), {0, 0}));
  EXPECT_TRUE(AllNear(v, std::vector<float>(kN, 0.0f), {0, 0}));
}

// Elementwise in fixed chunks: any thread count gives the same bits.
TEST(AdamWThreadsTest, ResultsDoNotDependOnTheThreadCount) {
  constexpr int64_t kN = 3 * 8192 + 77;
  const std::vector<float> g = testing::RandomUniformVector(kN, 7);
  std::vector<float> first_p;
  for (int threads : {1, 2, 3, 8}) {
    auto ctx = Context::Create({.num_threads = threads}).value();
    std::vector<float> p = testing::RandomUniformVector(kN, 8);
    std::vector<float> m = testing::RandomUniformVector(kN, 9, -0.1, 0.1);
    std::vector<float> v = testing::RandomUniformVector(kN, 10, 0.0, 0.1);
    for (int64_t step = 1; step <= 3; ++step) {
      ASSERT_TRUE(AdamWStep(*ctx, TensorView<float>(p.data(), {kN}),
                            TensorView<const float>(g.data(), {kN}),
                            TensorView<float>(m.data(), {kN}),
                            TensorView<float>(v.data(), {kN}),
                            MakeOptions(1e-3, 0.01, step))
                      .ok());
    }
    if (first_p.empty()) {
      first_p = p;
      continue;
    }
    EXPECT_EQ(std::memcmp(p.data(), first_p.data(), kN * sizeof(float)), 0)
        << threads << " threads";
  }
}

TEST_F(AdamWTest, BadInputIsAnErrorNamingTheProblem) {
  std::vector<float> a(12), b(12), c(12), d(12), e(10);
  TensorView<float> p(a.data(), {3, 4});
  TensorView<const float> g(b.data(), {3, 4});
  TensorView<float> m(c.data(), {3, 4});
  TensorView<float> v(d.data(), {3, 4});
  auto expect_error = [](const absl::Status& status, const char* needle) {
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_NE(status.message().find(needle), std::string::npos) << status;
  };
  const AdamWOptions ok_options;
  ASSERT_TRUE(AdamWStep(*ctx_, p, g, m, v, ok_options).ok());

  expect_error(AdamWStep(*ctx_, p, g, m, TensorView<float>(e.data(), {2, 5}),
                         ok_options),
               "second_moment has shape [2, 5]");
  expect_error(AdamWStep(*ctx_, p, TensorView<const float>(nullptr, {3, 4}), m,
                         v, ok_options),
               "grads has null data");
  expect_error(
      AdamWStep(*ctx_, TensorView<float>(a.data(), {3, 4}, Device::Cuda()), g,
                m, v, ok_options),
      "params is on cuda");
  expect_error(
      AdamWStep(*ctx_, TensorView<float>(a.data(), {3, 2}, {4, 2, 0, 0}),
                TensorView<const float>(b.data(), {3, 2}),
                TensorView<float>(c.data(), {3, 2}),
                TensorView<float>(d.data(), {3, 2}), ok_options),
      "unit stride");

  AdamWOptions options;
  options.lr = -1e-3;
  expect_error(AdamWStep(*ctx_, p, g, m, v, options), "options.lr");
  options = AdamWOptions();
  options.beta1 = 1.0;
  expect_error(AdamWStep(*ctx_, p, g, m, v, options), "options.beta1");
  options = AdamWOptions();
  options.beta2 = std::nan("");
  expect_error(AdamWStep(*ctx_, p, g, m, v, options), "options.beta2");
  options = AdamWOptions();
  options.eps = -1.0;
  expect_error(AdamWStep(*ctx_, p, g, m, v, options), "options.eps");
  options = AdamWOptions();
  options.weight_decay = INFINITY;
  expect_error(AdamWStep(*ctx_, p, g, m, v, options), "options.weight_decay");
  options = AdamWOptions();
  options.step = 0;
  expect_error(AdamWStep(*ctx_, p, g, m, v, options), "options.step");
}

}  // namespace
}  // namespace ftx
