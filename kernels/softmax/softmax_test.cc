// kernels/softmax: every Highway target against the scalar reference (run in
// double) over odd sizes, strided rows, scales and broadcast masks; large
// logits, -inf masks and fully masked rows; reference backward against central
// differences; bad input.
#include "kernels/softmax/softmax.h"

#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/reference/softmax_ref.h"
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

constexpr float kInf = std::numeric_limits<float>::infinity();

// Float kernels against the double reference: exp is within a few ulp, sums
// run in float lanes over at most a few hundred terms.
constexpr Tolerance kProbabilityTolerance{1e-8, 2e-6};
constexpr Tolerance kLogProbabilityTolerance{2e-6, 1e-6};
constexpr Tolerance kGradientTolerance{2e-7, 1e-5};

enum class Kind { kSoftmax, kLogSoftmax };
const Kind kKinds[] = {Kind::kSoftmax, Kind::kLogSoftmax};

struct Size {
  int64_t rows, cols, mask_rows;
};
const Size kSizes[] = {{1, 1, 1},  {3, 7, 1},  {2, 15, 2}, {6, 16, 3},
                       {4, 17, 2}, {7, 33, 7}, {6, 257, 3}};

absl::Status Forward(Kind kind, const Context& ctx, TensorView<const float> x,
                     TensorView<float> y, const SoftmaxOptions& options) {
  return kind == Kind::kSoftmax ? Softmax(ctx, x, y, options)
                                : LogSoftmax(ctx, x, y, options);
}

absl::Status Backward(Kind kind, const Context& ctx, TensorView<const float> y,
                      TensorView<const float> d_y, TensorView<float> d_x,
                      const SoftmaxOptions& options) {
  return kind == Kind::kSoftmax ? SoftmaxBackward(ctx, y, d_y, d_x, options)
                                : LogSoftmaxBackward(ctx, y, d_y, d_x, options);
}

// The reference forward on dense rows; mask may be null.
template <typename T>
std::vector<T> ReferenceForward(Kind kind, int64_t rows, int64_t cols,
                                const std::vector<T>& x, T scale, const T* mask,
                                int64_t mask_rows) {
  std::vector<T> y(rows * cols);
  if (kind == Kind::kSoftmax) {
    reference::Softmax(rows, cols, x.data(), cols, scale, mask, mask_rows, cols,
                       y.data(), cols);
  } else {
    reference::LogSoftmax(rows, cols, x.data(), cols, scale, mask, mask_rows,
                          cols, y.data(), cols);
  }
  return y;
}

template <typename T>
std::vector<T> ReferenceBackward(Kind kind, int64_t rows, int64_t cols,
                                 const std::vector<T>& y,
                                 const std::vector<T>& d_y, T scale) {
  std::vector<T> d_x(rows * cols);
  if (kind == Kind::kSoftmax) {
    reference::SoftmaxBackward(rows, cols, y.data(), cols, d_y.data(), cols,
                               scale, d_x.data(), cols);
  } else {
    reference::LogSoftmaxBackward(rows, cols, y.data(), cols, d_y.data(), cols,
                                  scale, d_x.data(), cols);
  }
  return d_x;
}

SoftmaxOptions MakeOptions(float scale,
                           TensorView<const float> additive_mask = {}) {
  SoftmaxOptions options;
  options.scale = scale;
  options.additive_mask = additive_mask;
  return options;
}

Tolerance ForwardTolerance(Kind kind) {
  return kind == Kind::kSoftmax ? kProbabilityTolerance
                                : kLogProbabilityTolerance;
}

// A mask in [-2, 1) with -inf at (3r + c) % 4 == 1; rows of two or more
// columns always keep a finite entry.
StridedMatrix MakeMask(int64_t rows, int64_t cols, uint64_t seed) {
  StridedMatrix mask(rows, cols, 5, seed, -2.0, 1.0);
  if (cols < 2) return mask;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      if ((3 * r + c) % 4 == 1) mask.at(r, c) = -kInf;
    }
  }
  return mask;
}

// Sums of each row of probabilities, compared with 1.
::testing::AssertionResult RowsSumToOne(const std::vector<float>& y,
                                        int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    double sum = 0;
    for (int64_t c = 0; c < cols; ++c) sum += y[r * cols + c];
    if (!(std::fabs(sum - 1.0) <= 1e-5)) {
      return ::testing::AssertionFailure() << "row " << r << " sums to " << sum;
    }
  }
  return ::testing::AssertionSuccess();
}

class SoftmaxTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto ctx = Context::Create({.num_threads = 2});
    ASSERT_TRUE(ctx.ok());
    ctx_ = std::move(ctx).value();
  }
  std::unique_ptr<Context> ctx_;
};

TEST_F(SoftmaxTest, ForwardMatchesReferenceWithScaleAndMask) {
  ForEachHighwayTarget([&] {
    for (const Size& size : kSizes) {
      for (Kind kind : kKinds) {
        for (bool masked : {false, true}) {
          SCOPED_TRACE(::testing::Message()
                       << size.rows << "x" << size.cols << " log="
                       << (kind == Kind::kLogSoftmax) << " masked=" << masked);
          const float scale = masked ? 0.37f : 1.0f;
          StridedMatrix x(size.rows, size.cols, 3, 1, -3.0, 3.0);
          StridedMatrix y(size.rows, size.cols, 2, 2);
          StridedMatrix mask = MakeMask(size.mask_rows, size.cols, 3);
          const SoftmaxOptions options = MakeOptions(
              scale, masked ? mask.const_view() : TensorView<const float>());
          ASSERT_TRUE(
              Forward(kind, *ctx_, x.const_view(), y.view(), options).ok());

          const std::vector<double> mask_values = Cast<double>(mask.Dense());
          const std::vector<double> expected = ReferenceForward<double>(
              kind, size.rows, size.cols, Cast<double>(x.Dense()), scale,
              masked ? mask_values.data() : nullptr, size.mask_rows);
          EXPECT_TRUE(AllNear(y.Dense(), expected, ForwardTolerance(kind)));
          if (kind == Kind::kSoftmax) {
            EXPECT_TRUE(RowsSumToOne(y.Dense(), size.rows, size.cols));
          }
          EXPECT_TRUE(y.PaddingIntact());
        }
      }
    }
  });
}

TEST_F(SoftmaxTest, InPlaceMatchesReference) {
  ForEachHighwayTarget([&] {
    for (const Size& size : kSizes) {
      for (Kind kind : kKinds) {
        StridedMatrix x(size.rows, size.cols, 1, 4, -3.0, 3.0);
        StridedMatrix mask = MakeMask(size.mask_rows, size.cols, 5);
        const std::vector<double> mask_values = Cast<double>(mask.Dense());
        const std::vector<double> expected = ReferenceForward<double>(
            kind, size.rows, size.cols, Cast<double>(x.Dense()), 1.5,
            mask_values.data(), size.mask_rows);
        ASSERT_TRUE(Forward(kind, *ctx_, x.const_view(), x.view(),
                            MakeOptions(1.5f, mask.const_view()))
                        .ok());
        EXPECT_TRUE(AllNear(x.Dense(), expected, ForwardTolerance(kind)));
        EXPECT_TRUE(x.PaddingIntact());
      }
    }
  });
}

TEST_F(SoftmaxTest, LargeLogitsStayFinite) {
  constexpr int64_t kRows = 5, kCols = 131;
  // Logits spread over [-1e4, 1e4], and logits bunched around 1e4.
  for (auto [low, high] : {std::pair<double, double>{-1e4, 1e4}, {9990, 1e4}}) {
    ForEachHighwayTarget([&] {
      for (Kind kind : kKinds) {
        StridedMatrix x(kRows, kCols, 2, 6, low, high);
        StridedMatrix y(kRows, kCols, 3, 7);
        ASSERT_TRUE(Forward(kind, *ctx_, x.const_view(), y.view(), {}).ok());
        const std::vector<float> result = y.Dense();
        for (float value : result) ASSERT_TRUE(std::isfinite(value)) << value;
        const std::vector<double> expected = ReferenceForward<double>(
            kind, kRows, kCols, Cast<double>(x.Dense()), 1.0, nullptr, 1);
        EXPECT_TRUE(AllNear(result, expected, ForwardTolerance(kind)));
        if (kind == Kind::kSoftmax) {
          EXPECT_TRUE(RowsSumToOne(result, kRows, kCols));
        }
      }
    });
  }
}

TEST_F(SoftmaxTest, FullyMaskedRowsGiveZerosAndNoGradient) {
  constexpr int64_t kRows = 4, kCols = 19;
  // Mask row 1 (so rows 1 and 3 of x) excludes every key.
  std::vector<float> mask(2 * kCols, 0.0f);
  for (int64_t c = 0; c < kCols; ++c) mask[kCols + c] = -kInf;
  const SoftmaxOptions options =
      MakeOptions(1.0f, TensorView<const float>(mask.data(), {2, kCols}));
  ForEachHighwayTarget([&] {
    StridedMatrix x(kRows, kCols, 1, 8, -5.0, 5.0);
    StridedMatrix probabilities(kRows, kCols, 1, 9);
    StridedMatrix log_probabilities(kRows, kCols, 1, 10);
    ASSERT_TRUE(
        Softmax(*ctx_, x.const_view(), probabilities.view(), options).ok());
    ASSERT_TRUE(
        LogSoftmax(*ctx_, x.const_view(), log_probabilities.view(), options)
            .ok());
    StridedMatrix d_y(kRows, kCols, 2, 11);
    StridedMatrix d_x(kRows, kCols, 2, 12);
    ASSERT_TRUE(SoftmaxBackward(*ctx_, probabilities.const_view(),
                                d_y.const_view(), d_x.view(), options)
                    .ok());
    for (int64_t r = 0; r < kRows; ++r) {
      double sum = 0;
      for (int64_t c = 0; c < kCols; ++c) {
        sum += probabilities.at(r, c);
        if (r % 2 == 1) {
          EXPECT_EQ(probabilities.at(r, c), 0.0f) << r << "," << c;
          EXPECT_EQ(log_probabilities.at(r, c), -kInf) << r << "," << c;
          EXPECT_EQ(d_x.at(r, c), 0.0f) << r << "," << c;
        } else {
          EXPECT_GT(probabilities.at(r, c), 0.0f) << r << "," << c;
          EXPECT_TRUE(std::isfinite(log_probabilities.at(r, c)));
        }
      }
      EXPECT_NEAR(sum, r % 2 == 1 ? 0.0 : 1.0, 1e-5) << "row " << r;
    }
  });
}

// An [L, S] mask applies to every (n, h) slice of [N, H, L, S] scores.
TEST_F(SoftmaxTest, MaskBroadcastsOverBatchAndHeads) {
  constexpr int64_t N = 2, H = 3, L = 4, S = 9;
  const std::vector<float> scores =
      testing::RandomUniformVector(N * H * L * S, 13, -2, 2);
  StridedMatrix mask = MakeMask(L, S, 14);
  std::vector<float> probabilities(N * H * L * S);
  ASSERT_TRUE(Softmax(*ctx_,
                      TensorView<const float>(scores.data(), {N, H, L, S}),
                      TensorView<float>(probabilities.data(), {N, H, L, S}),
                      MakeOptions(0.5f, mask.const_view()))
                  .ok());
  const std::vector<double> mask_values = Cast<double>(mask.Dense());
  for (int64_t slice = 0; slice < N * H; ++slice) {
    const std::vector<double> slice_scores(
        scores.begin() + slice * L * S, scores.begin() + (slice + 1) * L * S);
    const std::vector<double> expected = ReferenceForward<double>(
        Kind::kSoftmax, L, S, slice_scores, 0.5, mask_values.data(), L);
    EXPECT_TRUE(AllNear(probabilities.data() + slice * L * S, expected.data(),
                        L * S, kProbabilityTolerance))
        << "slice " << slice;
  }
}

TEST_F(SoftmaxTest, BackwardMatchesReference) {
  ForEachHighwayTarget([&] {
    for (const Size& size : kSizes) {
      for (Kind kind : kKinds) {
        for (float scale : {1.0f, 0.37f}) {
          SCOPED_TRACE(::testing::Message()
                       << size.rows << "x" << size.cols << " log="
                       << (kind == Kind::kLogSoftmax) << " scale=" << scale);
          // y is a true (log-)softmax output, from the reference in float.
          const std::vector<float> logits =
              testing::RandomUniformVector(size.rows * size.cols, 15, -3, 3);
          const std::vector<float> y_values = ReferenceForward<float>(
              kind, size.rows, size.cols, logits, 1.0f, nullptr, 1);
          StridedMatrix y(size.rows, size.cols, 2, 0);
          for (int64_t r = 0; r < size.rows; ++r) {
            for (int64_t c = 0; c < size.cols; ++c) {
              y.at(r, c) = y_values[r * size.cols + c];
            }
          }
          StridedMatrix d_y(size.rows, size.cols, 3, 16);
          StridedMatrix d_x(size.rows, size.cols, 1, 17);
          const std::vector<double> expected = ReferenceBackward<double>(
              kind, size.rows, size.cols, Cast<double>(y_values),
              Cast<double>(d_y.Dense()), scale);

          ASSERT_TRUE(Backward(kind, *ctx_, y.const_view(), d_y.const_view(),
                               d_x.view(), MakeOptions(scale))
                          .ok());
          EXPECT_TRUE(AllNear(d_x.Dense(), expected, kGradientTolerance));
          // d_x may overwrite d_y.
          ASSERT_TRUE(Backward(kind, *ctx_, y.const_view(), d_y.const_view(),
                               d_y.view(), MakeOptions(scale))
                          .ok());
          EXPECT_TRUE(AllNear(d_y.Dense(), expected, kGradientTolerance));
          EXPECT_TRUE(d_x.PaddingIntact() && d_y.PaddingIntact());
        }
      }
    }
  });
}

// The reference VJPs are the oracle above; here they meet central differences
// of the reference forward, with a scale and a broadcast mask.
TEST(SoftmaxReferenceGradientTest, MatchesCentralDifferences) {
  constexpr int64_t kRows = 4, kCols = 5, kMaskRows = 2;
  constexpr double kScale = 0.7;
  const std::vector<double> x0 =
      testing::RandomUniformVector<double>(kRows * kCols, 20, -2, 2);
  const std::vector<double> w =
      testing::RandomUniformVector<double>(kRows * kCols, 21);
  std::vector<double> mask =
      testing::RandomUniformVector<double>(kMaskRows * kCols, 22);
  for (Kind kind : kKinds) {
    SCOPED_TRACE(kind == Kind::kSoftmax ? "softmax" : "log-softmax");
    // -inf keys only for softmax: log-softmax is -inf there, so would be the
    // loss.
    mask[1] = kind == Kind::kSoftmax ? -kInf : 0.3;
    mask[kCols + 4] = kind == Kind::kSoftmax ? -kInf : -0.8;
    auto loss = [&](const std::vector<double>& x) {
      return testing::Dot(
          w, ReferenceForward<double>(kind, kRows, kCols, x, kScale,
                                      mask.data(), kMaskRows));
    };
    const std::vector<double> y = ReferenceForward<double>(
        kind, kRows, kCols, x0, kScale, mask.data(), kMaskRows);
    const std::vector<double> d_x =
        ReferenceBackward<double>(kind, kRows, kCols, y, w, kScale);
    EXPECT_TRUE(testing::GradientMatches(loss, x0, d_x));
  }
}

TEST_F(SoftmaxTest, BadInputIsAnErrorNamingTheProblem) {
  std::vector<float> a(12), b(12), c(10);
  TensorView<const float> x(a.data(), {3, 4});
  TensorView<float> y(b.data(), {3, 4});
  auto expect_error = [](const absl::Status& status, const char* needle) {
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_NE(status.message().find(needle), std::string::npos) << status;
  };

  expect_error(Softmax(*ctx_, x, TensorView<float>(c.data(), {2, 5})),
               "[2, 5]");
  expect_error(LogSoftmax(*ctx_, TensorView<const float>(nullptr, {3, 4}), y),
               "null");
  expect_error(
      Softmax(*ctx_, TensorView<const float>(a.data(), {3, 4}, Device::Cuda()),
              y),
      "is on cuda");
  expect_error(
      LogSoftmax(*ctx_, TensorView<const float>(a.data(), {3, 2}, {4, 2, 0, 0}),
                 TensorView<float>(b.data(), {3, 2})),
      "unit stride");
  expect_error(Softmax(*ctx_, x, y, MakeOptions(std::nanf(""))), "scale");

  // Masks: wrong column count, a row count that does not divide the rows of x,
  // the wrong device.
  expect_error(
      Softmax(*ctx_, x, y,
              MakeOptions(1.0f, TensorView<const float>(c.data(), {2, 5}))),
      "columns");
  expect_error(
      LogSoftmax(*ctx_, x, y,
                 MakeOptions(1.0f, TensorView<const float>(c.data(), {2, 4}))),
      "must divide");
  expect_error(
      Softmax(*ctx_, x, y,
              MakeOptions(1.0f, TensorView<const float>(c.data(), {1, 4},
                                                        Device::Cuda()))),
      "additive_mask is on cuda");

  expect_error(
      SoftmaxBackward(*ctx_, x, x, TensorView<float>(c.data(), {2, 5})), "d_x");
  expect_error(LogSoftmaxBackward(
                   *ctx_, TensorView<const float>(c.data(), {5, 2}), x, y),
               "y has shape [5, 2]");
  expect_error(
      SoftmaxBackward(*ctx_, x, TensorView<const float>(nullptr, {3, 4}), y),
      "null");
  expect_error(LogSoftmaxBackward(*ctx_, x, x, y, MakeOptions(kInf)), "scale");
}

}  // namespace
}  // namespace ftx
