// kernels/cross_entropy: every Highway target against the scalar reference
// (run in double) over odd sizes, strided rows, ignored rows and label
// smoothing; huge logits; in place; known values; independence of the thread
// count; the reference backward against central differences; bad input.
#include "kernels/cross_entropy/cross_entropy.h"

#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/reference/cross_entropy_ref.h"
#include "tests/util/gradcheck.h"
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

// Float kernels against the double reference: exp is within a few ulp, sums
// run in float lanes over at most a few hundred terms.
constexpr Tolerance kLossTolerance{2e-6, 2e-6};
constexpr Tolerance kProbabilityTolerance{1e-8, 2e-6};
constexpr Tolerance kGradientTolerance{2e-7, 1e-5};

struct Size {
  int64_t rows, cols;
};
const Size kSizes[] = {{1, 1},  {3, 7},  {2, 15}, {5, 16},
                       {4, 17}, {7, 33}, {6, 257}};
const float kSmoothings[] = {0.0f, 0.1f};

// Targets uniform in [0, vocab), except that every third row (from row 1) is
// ignore_index.
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

CrossEntropyOptions MakeOptions(float label_smoothing,
                                int32_t ignore_index = -100) {
  CrossEntropyOptions options;
  options.ignore_index = ignore_index;
  options.label_smoothing = label_smoothing;
  return options;
}

TensorView<const int32_t> TargetsView(const std::vector<int32_t>& targets) {
  return TensorView<const int32_t>(targets.data(),
                                   {static_cast<int64_t>(targets.size())});
}

struct ReferenceForwardResult {
  std::vector<double> losses, probabilities;
};

ReferenceForwardResult ReferenceForward(const std::vector<float>& logits,
                                        int64_t rows, int64_t cols,
                                        const std::vector<int32_t>& targets,
                                        const CrossEntropyOptions& options) {
  ReferenceForwardResult result{std::vector<double>(rows),
                                std::vector<double>(rows * cols)};
  reference::CrossEntropyForward<double>(
      rows, cols, Cast<double>(logits).data(), cols, targets.data(),
      options.ignore_index, options.label_smoothing, result.losses.data(),
      result.probabilities.data(), cols);
  return result;
}

std::vector<double> ReferenceBackward(const std::vector<float>& logits,
                                      int64_t rows, int64_t cols,
                                      const std::vector<int32_t>& targets,
                                      const std::vector<float>& d_losses,
                                      const CrossEntropyOptions& options) {
  std::vector<double> d_logits(rows * cols);
  reference::CrossEntropyBackward<double>(
      rows, cols, Cast<double>(logits).data(), cols, targets.data(),
      options.ignore_index, options.label_smoothing,
      Cast<double>(d_losses).data(), d_logits.data(), cols);
  return d_logits;
}

class CrossEntropyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto ctx = Context::Create({.num_threads = 2});
    ASSERT_TRUE(ctx.ok());
    ctx_ = std::move(ctx).value();
  }
  std::unique_ptr<Context> ctx_;
};

TEST_F(CrossEntropyTest, ForwardMatchesReference) {
  ForEachHighwayTarget([&] {
    for (const Size& size : kSizes) {
      for (float smoothing : kSmoothings) {
        SCOPED_TRACE(::testing::Message() << size.rows << "x" << size.cols
                                          << " smoothing=" << smoothing);
        const CrossEntropyOptions options = MakeOptions(smoothing);
        StridedMatrix logits(size.rows, size.cols, 3, 1, -4.0, 4.0);
        StridedMatrix probabilities(size.rows, size.cols, 2, 2);
        const std::vector<int32_t> targets =
            MakeTargets(size.rows, size.cols, 3, options.ignore_index);
        std::vector<float> losses(size.rows, -1.0f);
        const ReferenceForwardResult expected = ReferenceForward(
            logits.Dense(), size.rows, size.cols, targets, options);

        ASSERT_TRUE(CrossEntropyForward(
                        *ctx_, logits.const_view(), TargetsView(targets),
                        TensorView<float>(losses.data(), {size.rows}),
                        probabilities.view(), options)
                        .ok());
        EXPECT_TRUE(AllNear(losses, expected.losses, kLossTolerance));
        EXPECT_TRUE(AllNear(probabilities.Dense(), expected.probabilities,
                            kProbabilityTolerance));
        EXPECT_TRUE(probabilities.PaddingIntact());

        // Without probabilities the losses are the same, bit for bit.
        std::vector<float> losses_only(size.rows, -1.0f);
        ASSERT_TRUE(CrossEntropyForward(
                        *ctx_, logits.const_view(), TargetsView(targets),
                        TensorView<float>(losses_only.data(), {size.rows}), {},
                        options)
                        .ok());
        EXPECT_TRUE(AllNear(losses_only, losses, {0, 0}));
      }
    }
  });
}

TEST_F(CrossEntropyTest, BackwardMatchesReferenceAndRunsInPlace) {
  ForEachHighwayTarget([&] {
    for (const Size& size : kSizes) {
      for (float smoothing : kSmoothings) {
        SCOPED_TRACE(::testing::Message() << size.rows << "x" << size.cols
                                          << " smoothing=" << smoothing);
        const CrossEntropyOptions options = MakeOptions(smoothing);
        StridedMatrix logits(size.rows, size.cols, 1, 4, -4.0, 4.0);
        StridedMatrix d_logits(size.rows, size.cols, 3, 5);
        const std::vector<int32_t> targets =
            MakeTargets(size.rows, size.cols, 6, options.ignore_index);
        const std::vector<float> d_losses =
            testing::RandomUniformVector(size.rows, 7, -2.0, 2.0);
        const std::vector<double> expected = ReferenceBackward(
            logits.Dense(), size.rows, size.cols, targets, d_losses, options);

        const TensorView<const float> d_losses_view(d_losses.data(),
                                                    {size.rows});
        ASSERT_TRUE(CrossEntropyBackward(*ctx_, logits.const_view(),
                                         TargetsView(targets), d_losses_view,
                                         d_logits.view(), options)
                        .ok());
        EXPECT_TRUE(AllNear(d_logits.Dense(), expected, kGradientTolerance));
        EXPECT_TRUE(d_logits.PaddingIntact());

        // d_logits may overwrite logits.
        ASSERT_TRUE(CrossEntropyBackward(*ctx_, logits.const_view(),
                                         TargetsView(targets), d_losses_view,
                                         logits.view(), options)
                        .ok());
        EXPECT_TRUE(AllNear(logits.Dense(), expected, kGradientTolerance));
        EXPECT_TRUE(logits.PaddingIntact());
      }
    }
  });
}

TEST_F(CrossEntropyTest, ProbabilitiesMayOverwriteLogits) {
  constexpr int64_t kRows = 5, kCols = 37;
  ForEachHighwayTarget([&] {
    for (float smoothing : kSmoothings) {
      const CrossEntropyOptions options = MakeOptions(smoothing);
      StridedMatrix logits(kRows, kCols, 2, 8, -3.0, 3.0);
      const std::vector<int32_t> targets =
          MakeTargets(kRows, kCols, 9, options.ignore_index);
      const ReferenceForwardResult expected =
          ReferenceForward(logits.Dense(), kRows, kCols, targets, options);
      std::vector<float> losses(kRows);
      ASSERT_TRUE(CrossEntropyForward(*ctx_, logits.const_view(),
                                      TargetsView(targets),
                                      TensorView<float>(losses.data(), {kRows}),
                                      logits.view(), options)
                      .ok());
      EXPECT_TRUE(AllNear(losses, expected.losses, kLossTolerance));
      EXPECT_TRUE(AllNear(logits.Dense(), expected.probabilities,
                          kProbabilityTolerance));
    }
  });
}

TEST_F(CrossEntropyTest, HugeLogitsStayFinite) {
  constexpr int64_t kRows = 6, kCols = 131;
  // Logits spread over [-1e4, 1e4], and logits bunched around 1e4.
  for (auto [low, high] : {std::pair<double, double>{-1e4, 1e4}, {9990, 1e4}}) {
    ForEachHighwayTarget([&] {
      for (float smoothing : kSmoothings) {
        SCOPED_TRACE(::testing::Message()
                     << "logits in [" << low << ", " << high
                     << ") smoothing=" << smoothing);
        const CrossEntropyOptions options = MakeOptions(smoothing);
        StridedMatrix logits(kRows, kCols, 2, 10, low, high);
        const std::vector<int32_t> targets =
            MakeTargets(kRows, kCols, 11, options.ignore_index);
        std::vector<float> losses(kRows);
        ASSERT_TRUE(CrossEntropyForward(
                        *ctx_, logits.const_view(), TargetsView(targets),
                        TensorView<float>(losses.data(), {kRows}), {}, options)
                        .ok());
        for (float loss : losses) ASSERT_TRUE(std::isfinite(loss)) << loss;
        const ReferenceForwardResult expected =
            ReferenceForward(logits.Dense(), kRows, kCols, targets, options);
        // Relative to losses of up to 2e4: float logits carry ~1e-3 of
        // absolute rounding there.
        EXPECT_TRUE(AllNear(losses, expected.losses, {2e-5, 1e-6}));

        const std::vector<float> d_losses(kRows, 1.0f);
        StridedMatrix d_logits(kRows, kCols, 1, 12);
        ASSERT_TRUE(CrossEntropyBackward(
                        *ctx_, logits.const_view(), TargetsView(targets),
                        TensorView<const float>(d_losses.data(), {kRows}),
                        d_logits.view(), options)
                        .ok());
        const std::vector<float> gradient = d_logits.Dense();
        for (float value : gradient) ASSERT_TRUE(std::isfinite(value));
        EXPECT_TRUE(AllNear(gradient,
                            ReferenceBackward(logits.Dense(), kRows, kCols,
                                              targets, d_losses, options),
                            kGradientTolerance));
      }
    });
  }
}

// Values worked out by hand: equal logits give p = 1/V, so loss = log V (with
// or without smoothing) and d_logits = d_loss * (1/V - (1 - eps) [c == t]
// - eps / V).
TEST_F(CrossEntropyTest, EqualLogitsGiveLogVocabulary) {
  constexpr int64_t kCols = 7;
  const std::vector<float> logits(2 * kCols, 3.5f);
  const std::vector<int32_t> targets = {4, 0};
  const std::vector<float> d_losses = {2.0f, 0.5f};
  for (float smoothing : kSmoothings) {
    const CrossEntropyOptions options = MakeOptions(smoothing);
    std::vector<float> losses(2);
    ASSERT_TRUE(CrossEntropyForward(
                    *ctx_, TensorView<const float>(logits.data(), {2, kCols}),
                    TargetsView(targets), TensorView<float>(losses.data(), {2}),
                    {}, options)
                    .ok());
    EXPECT_NEAR(losses[0], std::log(7.0), 1e-6);
    EXPECT_NEAR(losses[1], std::log(7.0), 1e-6);

    std::vector<float> d_logits(2 * kCols);
    ASSERT_TRUE(CrossEntropyBackward(
                    *ctx_, TensorView<const float>(logits.data(), {2, kCols}),
                    TargetsView(targets),
                    TensorView<const float>(d_losses.data(), {2}),
                    TensorView<float>(d_logits.data(), {2, kCols}), options)
                    .ok());
    for (int64_t r = 0; r < 2; ++r) {
      for (int64_t c = 0; c < kCols; ++c) {
        const double expected =
            d_losses[r] * (1.0 / 7 - (c == targets[r] ? 1.0 - smoothing : 0.0) -
                           smoothing / 7.0);
        EXPECT_NEAR(d_logits[r * kCols + c], expected, 1e-6) << r << "," << c;
      }
    }
  }
}

TEST_F(CrossEntropyTest, IgnoredRowsHaveZeroLossAndGradient) {
  constexpr int64_t kRows = 4, kCols = 19;
  // x-transformers' AutoregressiveWrapper ignores token 0; here rows 1 and 3.
  const std::vector<int32_t> targets = {5, 0, 18, 0};
  const CrossEntropyOptions options = MakeOptions(0.2f, 0);
  ForEachHighwayTarget([&] {
    StridedMatrix logits(kRows, kCols, 1, 13, -5.0, 5.0);
    std::vector<float> losses(kRows, -1.0f);
    StridedMatrix probabilities(kRows, kCols, 1, 14);
    ASSERT_TRUE(CrossEntropyForward(*ctx_, logits.const_view(),
                                    TargetsView(targets),
                                    TensorView<float>(losses.data(), {kRows}),
                                    probabilities.view(), options)
                    .ok());
    const std::vector<float> d_losses(kRows, 3.0f);
    StridedMatrix d_logits(kRows, kCols, 1, 15);
    ASSERT_TRUE(
        CrossEntropyBackward(*ctx_, logits.const_view(), TargetsView(targets),
                             TensorView<const float>(d_losses.data(), {kRows}),
                             d_logits.view(), options)
            .ok());
    for (int64_t r = 0; r < kRows; ++r) {
      const bool ignored = r % 2 == 1;
      EXPECT_EQ(losses[r] == 0.0f, ignored) << "row " << r;
      double probability_sum = 0;
      for (int64_t c = 0; c < kCols; ++c) {
        probability_sum += probabilities.at(r, c);
        if (ignored) {
          EXPECT_EQ(d_logits.at(r, c), 0.0f) << r << "," << c;
        }
      }
      // Probabilities are written for ignored rows too.
      EXPECT_NEAR(probability_sum, 1.0, 1e-5) << "row " << r;
    }
  });
}

TEST_F(CrossEntropyTest, MeanLossMatchesReference) {
  constexpr int64_t kRows = 23;
  const std::vector<float> losses =
      testing::RandomUniformVector(kRows, 16, 0.0, 5.0);
  const std::vector<int32_t> targets = MakeTargets(kRows, 11, 17, -100);
  float mean = -1.0f;
  std::vector<float> d_losses(kRows, -1.0f);
  ASSERT_TRUE(MeanLoss(*ctx_, TensorView<const float>(losses.data(), {kRows}),
                       TargetsView(targets), TensorView<float>(&mean, {1}),
                       TensorView<float>(d_losses.data(), {kRows}))
                  .ok());
  std::vector<double> expected_d_losses(kRows);
  const double expected_mean = reference::MeanLoss<double>(
      kRows, Cast<double>(losses).data(), targets.data(), -100,
      expected_d_losses.data());
  EXPECT_NEAR(mean, expected_mean, 1e-6 * expected_mean);
  EXPECT_TRUE(AllNear(d_losses, expected_d_losses, {0, 1e-7}));
  // 23 rows, rows 1, 4, ..., 22 ignored: 15 counted.
  EXPECT_FLOAT_EQ(d_losses[0], 1.0f / 15);
  EXPECT_EQ(d_losses[1], 0.0f);

  // Every row ignored: mean 0 and no gradient.
  const std::vector<int32_t> all_ignored(kRows, -100);
  ASSERT_TRUE(MeanLoss(*ctx_, TensorView<const float>(losses.data(), {kRows}),
                       TargetsView(all_ignored), TensorView<float>(&mean, {1}),
                       TensorView<float>(d_losses.data(), {kRows}))
                  .ok());
  EXPECT_EQ(mean, 0.0f);
  EXPECT_TRUE(AllNear(d_losses, std::vector<float>(kRows, 0.0f), {0, 0}));
}

// Each row is computed by one thread in a fixed order, so any thread count
// gives the same bits.
TEST(CrossEntropyThreadsTest, ResultsDoNotDependOnTheThreadCount) {
  constexpr int64_t kRows = 67, kCols = 301;
  const CrossEntropyOptions options = MakeOptions(0.1f);
  const std::vector<float> logits =
      testing::RandomUniformVector(kRows * kCols, 18, -6.0, 6.0);
  const std::vector<int32_t> targets =
      MakeTargets(kRows, kCols, 19, options.ignore_index);
  const std::vector<float> d_losses =
      testing::RandomUniformVector(kRows, 20, 0.0, 1.0);
  std::vector<float> first_losses, first_probabilities, first_gradient;
  for (int threads : {1, 2, 3, 8}) {
    SCOPED_TRACE(::testing::Message() << threads << " threads");
    auto ctx = Context::Create({.num_threads = threads}).value();
    std::vector<float> losses(kRows), probabilities(kRows * kCols),
        gradient(kRows * kCols);
    const TensorView<const float> logits_view(logits.data(), {kRows, kCols});
    ASSERT_TRUE(CrossEntropyForward(
                    *ctx, logits_view, TargetsView(targets),
                    TensorView<float>(losses.data(), {kRows}),
                    TensorView<float>(probabilities.data(), {kRows, kCols}),
                    options)
                    .ok());
    ASSERT_TRUE(CrossEntropyBackward(
                    *ctx, logits_view, TargetsView(targets),
                    TensorView<const float>(d_losses.data(), {kRows}),
                    TensorView<float>(gradient.data(), {kRows, kCols}), options)
                    .ok());
    if (first_losses.empty()) {
      first_losses = losses;
      first_probabilities = probabilities;
      first_gradient = gradient;
      continue;
    }
    EXPECT_EQ(std::memcmp(losses.data(), first_losses.data(),
                          losses.size() * sizeof(float)),
              0);
    EXPECT_EQ(std::memcmp(probabilities.data(), first_probabilities.data(),
                          probabilities.size() * sizeof(float)),
              0);
    EXPECT_EQ(std::memcmp(gradient.data(), first_gradient.data(),
                          gradient.size() * sizeof(float)),
              0);
  }
}

// The reference VJP is the oracle above; here it meets central differences of
// the reference forward, with label smoothing and an ignored row, and the
// gradient of MeanLoss.
TEST(CrossEntropyReferenceGradientTest, MatchesCentralDifferences) {
  constexpr int64_t kRows = 4, kCols = 6;
  const std::vector<int32_t> targets = {2, -100, 0, 5};
  const std::vector<double> x0 =
      testing::RandomUniformVector<double>(kRows * kCols, 21, -3, 3);
  const std::vector<double> w = testing::RandomUniformVector<double>(kRows, 22);
  for (double smoothing : {0.0, 0.15, 1.0}) {
    SCOPED_TRACE(::testing::Message() << "smoothing " << smoothing);
    auto loss = [&](const std::vector<double>& x) {
      std::vector<double> losses(kRows);
      reference::CrossEntropyForward<double>(kRows, kCols, x.data(), kCols,
                                             targets.data(), -100, smoothing,
                                             losses.data(), nullptr, 0);
      return testing::Dot(w, losses);
    };
    std::vector<double> d_x(kRows * kCols);
    reference::CrossEntropyBackward<double>(kRows, kCols, x0.data(), kCols,
                                            targets.data(), -100, smoothing,
                                            w.data(), d_x.data(), kCols);
    EXPECT_TRUE(testing::GradientMatches(loss, x0, d_x));
  }

  // d_losses from MeanLoss is the gradient of the mean.
  const std::vector<double> losses0 =
      testing::RandomUniformVector<double>(kRows, 23, 0, 4);
  std::vector<double> d_losses(kRows);
  reference::MeanLoss<double>(kRows, losses0.data(), targets.data(), -100,
                              d_losses.data());
  auto mean = [&](const std::vector<double>& losses) {
    std::vector<double> scratch(kRows);
    return reference::MeanLoss<double>(kRows, losses.data(), targets.data(),
                                       -100, scratch.data());
  };
  EXPECT_TRUE(testing::GradientMatches(mean, losses0, d_losses));
}

TEST_F(CrossEntropyTest, BadInputIsAnErrorNamingTheProblem) {
  std::vector<float> a(12), b(12), c(10), losses(3);
  const std::vector<int32_t> targets = {0, 1, 2};
  const TensorView<const float> logits(a.data(), {3, 4});
  const TensorView<float> losses_view(losses.data(), {3});
  auto expect_error = [](const absl::Status& status, const char* needle) {
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_NE(status.message().find(needle), std::string::npos) << status;
  };

  // Targets out of range name the row and the value.
  const std::vector<int32_t> too_large = {0, 4, 1};
  expect_error(CrossEntropyForward(*ctx_, logits, TargetsView(too_large),
                                   losses_view, {}),
               "targets[1] = 4");
  const std::vector<int32_t> negative = {0, 1, -1};
  expect_error(
      CrossEntropyBackward(*ctx_, logits, TargetsView(negative), losses_view,
                           TensorView<float>(b.data(), {3, 4})),
      "targets[2] = -1");
  // -100 is fine by default but not when ignore_index is 0.
  const std::vector<int32_t> default_ignored = {0, -100, 1};
  EXPECT_TRUE(CrossEntropyForward(*ctx_, logits, TargetsView(default_ignored),
                                  losses_view, {})
                  .ok());
  expect_error(CrossEntropyForward(*ctx_, logits, TargetsView(default_ignored),
                                   losses_view, {}, MakeOptions(0.0f, 0)),
               "targets[1] = -100");

  // Shapes, counts, devices, null data, strides, options.
  expect_error(
      CrossEntropyForward(*ctx_, logits,
                          TensorView<const int32_t>(targets.data(), {2}),
                          losses_view, {}),
      "targets must hold 3");
  expect_error(CrossEntropyForward(*ctx_, logits, TargetsView(targets),
                                   TensorView<float>(c.data(), {4}), {}),
               "losses must hold 3");
  expect_error(
      CrossEntropyForward(*ctx_, logits, TargetsView(targets), losses_view,
                          TensorView<float>(c.data(), {2, 5})),
      "[2, 5]");
  expect_error(
      CrossEntropyForward(*ctx_, TensorView<const float>(nullptr, {3, 4}),
                          TargetsView(targets), losses_view, {}),
      "null");
  expect_error(
      CrossEntropyForward(
          *ctx_, TensorView<const float>(a.data(), {3, 4}, Device::Cuda()),
          TargetsView(targets), losses_view, {}),
      "is on cuda");
  expect_error(CrossEntropyForward(*ctx_, logits,
                                   TensorView<const int32_t>(
                                       targets.data(), {3}, Device::Cuda()),
                                   losses_view, {}),
               "targets is on cuda");
  expect_error(
      CrossEntropyForward(
          *ctx_, TensorView<const float>(a.data(), {3, 2}, {4, 2, 0, 0}),
          TargetsView(targets), losses_view, {}),
      "unit stride");
  expect_error(CrossEntropyForward(*ctx_, logits, TargetsView(targets),
                                   losses_view, {}, MakeOptions(1.5f)),
               "label_smoothing");
  expect_error(
      CrossEntropyBackward(*ctx_, logits, TargetsView(targets), losses_view,
                           TensorView<float>(b.data(), {3, 4}),
                           MakeOptions(std::nanf(""))),
      "label_smoothing");
  expect_error(
      CrossEntropyBackward(*ctx_, logits, TargetsView(targets), losses_view,
                           TensorView<float>(c.data(), {2, 5})),
      "d_logits has shape [2, 5]");
  expect_error(CrossEntropyBackward(*ctx_, logits, TargetsView(targets),
                                    TensorView<const float>(nullptr, {3}),
                                    TensorView<float>(b.data(), {3, 4})),
               "d_losses has null data");
  // Strided (non-contiguous) per-row views.
  expect_error(CrossEntropyBackward(
                   *ctx_, logits, TargetsView(targets),
                   TensorView<const float>(c.data(), {3, 1}, {2, 1, 0, 0}),
                   TensorView<float>(b.data(), {3, 4})),
               "d_losses must hold 3 contiguous");

  float mean = 0;
  expect_error(MeanLoss(*ctx_, losses_view, TargetsView(targets),
                        TensorView<float>(c.data(), {2}), losses_view),
               "mean must hold 1");
  expect_error(MeanLoss(*ctx_, losses_view,
                        TensorView<const int32_t>(targets.data(), {2}),
                        TensorView<float>(&mean, {1}), losses_view),
               "targets must hold 3");
  expect_error(MeanLoss(*ctx_, losses_view, TargetsView(targets),
                        TensorView<float>(&mean, {1}),
                        TensorView<float>(c.data(), {3}, Device::Cuda())),
               "d_losses is on cuda");
}

}  // namespace
}  // namespace ftx
