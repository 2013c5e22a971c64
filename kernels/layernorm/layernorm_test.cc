// kernels/layernorm: every Highway target against the scalar reference (run
// in double) over odd sizes, strided rows and every gamma/beta combination;
// constant rows and rows far from zero; backward with accumulation; thread
// count independence; reference backward against central differences; bad
// input.
#include "kernels/layernorm/layernorm.h"

#include <cmath>
#include <memory>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/reference/layernorm_ref.h"
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

// Float kernels against the double reference.
constexpr Tolerance kOutputTolerance{1e-6, 2e-6};
constexpr Tolerance kStatisticTolerance{1e-7, 1e-6};
constexpr Tolerance kGradientTolerance{2e-6, 1e-5};

struct Size {
  int64_t rows, cols;
};
const Size kSizes[] = {{1, 1},  {3, 7},  {2, 15}, {5, 16},
                       {4, 17}, {7, 33}, {3, 257}};

// Which of gamma and beta are given.
struct Affine {
  bool gamma, beta;
};
const Affine kAffines[] = {
    {true, true}, {true, false}, {false, true}, {false, false}};

TensorView<const float> VectorView(const std::vector<float>& values) {
  return TensorView<const float>(values.data(),
                                 {static_cast<int64_t>(values.size())});
}
TensorView<float> VectorView(std::vector<float>& values) {
  return TensorView<float>(values.data(),
                           {static_cast<int64_t>(values.size())});
}

// The reference forward on dense rows; gamma, beta may be null.
struct ReferenceResult {
  std::vector<double> y, mean, rstd;
};
ReferenceResult ReferenceForward(int64_t rows, int64_t cols,
                                 const std::vector<double>& x,
                                 const double* gamma, const double* beta,
                                 double eps) {
  ReferenceResult result{std::vector<double>(rows * cols),
                         std::vector<double>(rows), std::vector<double>(rows)};
  reference::LayerNorm(rows, cols, x.data(), cols, gamma, beta, eps,
                       result.y.data(), cols, result.mean.data(),
                       result.rstd.data());
  return result;
}

// A matrix whose rows are the given values (for feeding reference outputs to
// the kernels through strided rows).
StridedMatrix FromValues(int64_t rows, int64_t cols,
                         const std::vector<float>& values) {
  StridedMatrix matrix(rows, cols, 3, 0);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) matrix.at(r, c) = values[r * cols + c];
  }
  return matrix;
}

class LayerNormTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto ctx = Context::Create({.num_threads = 2});
    ASSERT_TRUE(ctx.ok());
    ctx_ = std::move(ctx).value();
  }
  std::unique_ptr<Context> ctx_;
};

TEST_F(LayerNormTest, ForwardMatchesReference) {
  ForEachHighwayTarget([&] {
    for (const Size& size : kSizes) {
      for (const Affine& affine : kAffines) {
        SCOPED_TRACE(::testing::Message()
                     << size.rows << "x" << size.cols
                     << " gamma=" << affine.gamma << " beta=" << affine.beta);
        StridedMatrix x(size.rows, size.cols, 3, 1, -2.0, 3.0);
        StridedMatrix y(size.rows, size.cols, 2, 2);
        const std::vector<float> gamma =
            testing::RandomUniformVector(size.cols, 3, 0.5, 1.5);
        const std::vector<float> beta =
            testing::RandomUniformVector(size.cols, 4);
        std::vector<float> mean(size.rows), rstd(size.rows);
        ASSERT_TRUE(
            LayerNorm(
                *ctx_, x.const_view(),
                affine.gamma ? VectorView(gamma) : TensorView<const float>(),
                affine.beta ? VectorView(beta) : TensorView<const float>(),
                y.view(), VectorView(mean), VectorView(rstd))
                .ok());

        const std::vector<double> gamma_values = Cast<double>(gamma);
        const std::vector<double> beta_values = Cast<double>(beta);
        const ReferenceResult expected =
            ReferenceForward(size.rows, size.cols, Cast<double>(x.Dense()),
                             affine.gamma ? gamma_values.data() : nullptr,
                             affine.beta ? beta_values.data() : nullptr, 1e-5f);
        EXPECT_TRUE(AllNear(y.Dense(), expected.y, kOutputTolerance));
        EXPECT_TRUE(AllNear(mean, expected.mean, kStatisticTolerance));
        EXPECT_TRUE(AllNear(rstd, expected.rstd, kStatisticTolerance));
        EXPECT_TRUE(y.PaddingIntact());
      }
    }
  });
}

TEST_F(LayerNormTest, InPlaceWithoutSavedStatistics) {
  ForEachHighwayTarget([&] {
    for (const Size& size : kSizes) {
      StridedMatrix x(size.rows, size.cols, 1, 5, -1.0, 4.0);
      const std::vector<float> gamma =
          testing::RandomUniformVector(size.cols, 6, 0.5, 1.5);
      const std::vector<float> beta =
          testing::RandomUniformVector(size.cols, 7);
      const std::vector<double> gamma_values = Cast<double>(gamma);
      const std::vector<double> beta_values = Cast<double>(beta);
      const ReferenceResult expected =
          ReferenceForward(size.rows, size.cols, Cast<double>(x.Dense()),
                           gamma_values.data(), beta_values.data(), 1e-3);
      ASSERT_TRUE(LayerNorm(*ctx_, x.const_view(), VectorView(gamma),
                            VectorView(beta), x.view(), TensorView<float>(),
                            TensorView<float>(), {.eps = 1e-3f})
                      .ok());
      EXPECT_TRUE(AllNear(x.Dense(), expected.y, kOutputTolerance));
      EXPECT_TRUE(x.PaddingIntact());
    }
  });
}

// var = 0: y is exactly beta, mean the row's value, rstd 1 / sqrt(eps).
TEST_F(LayerNormTest, ConstantRowsGiveBeta) {
  constexpr int64_t kCols = 37;
  const float values[] = {3.25f, -1.0e4f, 0.0f};
  constexpr int64_t kRows = 3;
  std::vector<float> x(kRows * kCols), y(kRows * kCols);
  for (int64_t r = 0; r < kRows; ++r) {
    for (int64_t c = 0; c < kCols; ++c) x[r * kCols + c] = values[r];
  }
  const std::vector<float> gamma = testing::RandomUniformVector(kCols, 8);
  const std::vector<float> beta = testing::RandomUniformVector(kCols, 9);
  ForEachHighwayTarget([&] {
    std::vector<float> mean(kRows), rstd(kRows);
    ASSERT_TRUE(LayerNorm(*ctx_,
                          TensorView<const float>(x.data(), {kRows, kCols}),
                          VectorView(gamma), VectorView(beta),
                          TensorView<float>(y.data(), {kRows, kCols}),
                          VectorView(mean), VectorView(rstd))
                    .ok());
    for (int64_t r = 0; r < kRows; ++r) {
      EXPECT_EQ(mean[r], values[r]);
      EXPECT_NEAR(rstd[r], 1.0 / std::sqrt(1e-5), 1e-6 / std::sqrt(1e-5));
      for (int64_t c = 0; c < kCols; ++c) {
        EXPECT_EQ(y[r * kCols + c], beta[c]) << r << "," << c;
      }
    }
  });
}

// x = 1e4 + small noise: a float mean loses the noise, so the kernel must
// centre the row before summing.
TEST_F(LayerNormTest, RowsFarFromZeroKeepPrecision) {
  for (auto [cols, centre, spread] :
       {std::tuple<int64_t, double, double>{257, 1e4, 1e-2},
        {1000, -3e4, 0.1},
        {64, 1e4, 1e-3}}) {
    constexpr int64_t kRows = 4;
    ForEachHighwayTarget([&] {
      StridedMatrix x(kRows, cols, 1, 10, centre - spread, centre + spread);
      StridedMatrix y(kRows, cols, 1, 11);
      std::vector<float> mean(kRows), rstd(kRows);
      ASSERT_TRUE(LayerNorm(*ctx_, x.const_view(), TensorView<const float>(),
                            TensorView<const float>(), y.view(),
                            VectorView(mean), VectorView(rstd))
                      .ok());
      const ReferenceResult expected = ReferenceForward(
          kRows, cols, Cast<double>(x.Dense()), nullptr, nullptr, 1e-5f);
      EXPECT_TRUE(AllNear(y.Dense(), expected.y, {1e-5, 1e-5}));
      EXPECT_TRUE(AllNear(mean, expected.mean, {0, 1e-7}));
      EXPECT_TRUE(AllNear(rstd, expected.rstd, {0, 1e-5}));
    });
  }
}

TEST_F(LayerNormTest, BackwardMatchesReference) {
  ForEachHighwayTarget([&] {
    for (const Size& size : kSizes) {
      for (bool has_gamma : {true, false}) {
        for (bool has_parameter_gradients : {true, false}) {
          SCOPED_TRACE(::testing::Message()
                       << size.rows << "x" << size.cols
                       << " gamma=" << has_gamma
                       << " d_gamma,d_beta=" << has_parameter_gradients);
          const int64_t n = size.rows * size.cols;
          StridedMatrix x(size.rows, size.cols, 2, 12, -2.0, 3.0);
          StridedMatrix d_y(size.rows, size.cols, 1, 13);
          StridedMatrix d_x(size.rows, size.cols, 3, 14);
          const std::vector<float> gamma =
              testing::RandomUniformVector(size.cols, 15, 0.5, 1.5);
          const std::vector<double> gamma_values = Cast<double>(gamma);
          const double* reference_gamma =
              has_gamma ? gamma_values.data() : nullptr;
          // Statistics from the reference, rounded to float as saved.
          const ReferenceResult forward =
              ReferenceForward(size.rows, size.cols, Cast<double>(x.Dense()),
                               reference_gamma, nullptr, 1e-5);
          const std::vector<float> mean = Cast<float>(forward.mean);
          const std::vector<float> rstd = Cast<float>(forward.rstd);
          // Parameter gradients accumulate onto these.
          std::vector<float> d_gamma =
              testing::RandomUniformVector(size.cols, 16);
          std::vector<float> d_beta =
              testing::RandomUniformVector(size.cols, 17);

          std::vector<double> expected_d_x(n);
          std::vector<double> expected_d_gamma = Cast<double>(d_gamma);
          std::vector<double> expected_d_beta = Cast<double>(d_beta);
          reference::LayerNormBackward(
              size.rows, size.cols, Cast<double>(x.Dense()).data(), size.cols,
              reference_gamma, Cast<double>(mean).data(),
              Cast<double>(rstd).data(), Cast<double>(d_y.Dense()).data(),
              size.cols, expected_d_x.data(), size.cols,
              expected_d_gamma.data(), expected_d_beta.data());

          const TensorView<const float> gamma_view =
              has_gamma ? VectorView(gamma) : TensorView<const float>();
          const TensorView<float> d_gamma_view = has_parameter_gradients
                                                     ? VectorView(d_gamma)
                                                     : TensorView<float>();
          const TensorView<float> d_beta_view = has_parameter_gradients
                                                    ? VectorView(d_beta)
                                                    : TensorView<float>();
          ASSERT_TRUE(LayerNormBackward(*ctx_, x.const_view(), gamma_view,
                                        VectorView(mean), VectorView(rstd),
                                        d_y.const_view(), d_x.view(),
                                        d_gamma_view, d_beta_view)
                          .ok());
          EXPECT_TRUE(AllNear(d_x.Dense(), expected_d_x, kGradientTolerance));
          if (has_parameter_gradients) {
            EXPECT_TRUE(AllNear(d_gamma, expected_d_gamma, kGradientTolerance));
            EXPECT_TRUE(AllNear(d_beta, expected_d_beta, kGradientTolerance));
          }
          EXPECT_TRUE(d_x.PaddingIntact());

          // d_x may overwrite d_y.
          ASSERT_TRUE(LayerNormBackward(
                          *ctx_, x.const_view(), gamma_view, VectorView(mean),
                          VectorView(rstd), d_y.const_view(), d_y.view(),
                          TensorView<float>(), TensorView<float>())
                          .ok());
          EXPECT_TRUE(AllNear(d_y.Dense(), expected_d_x, kGradientTolerance));
        }
      }
    }
  });
}

// Forward and backward give bitwise equal results on 1, 2 and 3 threads,
// with sizes large enough that the rows and the column blocks of d_gamma and
// d_beta are split among threads.
TEST(LayerNormThreadsTest, ResultsDoNotDependOnThreadCount) {
  constexpr int64_t kRows = 200, kCols = 300;
  StridedMatrix x(kRows, kCols, 1, 20, -1.0, 2.0);
  StridedMatrix d_y(kRows, kCols, 1, 21);
  const std::vector<float> gamma = testing::RandomUniformVector(kCols, 22);
  const std::vector<float> beta = testing::RandomUniformVector(kCols, 23);
  struct Outputs {
    std::vector<float> y, mean, rstd, d_x, d_gamma, d_beta;
  };
  auto run = [&](int threads) {
    auto ctx = Context::Create({.num_threads = threads}).value();
    Outputs out{
        std::vector<float>(kRows * kCols), std::vector<float>(kRows),
        std::vector<float>(kRows),         std::vector<float>(kRows * kCols),
        std::vector<float>(kCols, 0.5f),   std::vector<float>(kCols, 0.5f)};
    EXPECT_TRUE(LayerNorm(*ctx, x.const_view(), VectorView(gamma),
                          VectorView(beta),
                          TensorView<float>(out.y.data(), {kRows, kCols}),
                          VectorView(out.mean), VectorView(out.rstd))
                    .ok());
    EXPECT_TRUE(
        LayerNormBackward(*ctx, x.const_view(), VectorView(gamma),
                          VectorView(out.mean), VectorView(out.rstd),
                          d_y.const_view(),
                          TensorView<float>(out.d_x.data(), {kRows, kCols}),
                          VectorView(out.d_gamma), VectorView(out.d_beta))
            .ok());
    return out;
  };
  ForEachHighwayTarget([&] {
    const Outputs one = run(1);
    for (int threads : {2, 3}) {
      SCOPED_TRACE(::testing::Message() << threads << " threads");
      const Outputs many = run(threads);
      EXPECT_EQ(one.y, many.y);
      EXPECT_EQ(one.mean, many.mean);
      EXPECT_EQ(one.rstd, many.rstd);
      EXPECT_EQ(one.d_x, many.d_x);
      EXPECT_EQ(one.d_gamma, many.d_gamma);
      EXPECT_EQ(one.d_beta, many.d_beta);
    }
  });
}

// The reference VJPs are the oracle above; here they meet central differences
// of the reference forward for x, gamma and beta.
TEST(LayerNormReferenceGradientTest, MatchesCentralDifferences) {
  constexpr int64_t kRows = 3, kCols = 6, kN = kRows * kCols;
  constexpr double kEps = 1e-5;
  const std::vector<double> x0 =
      testing::RandomUniformVector<double>(kN, 30, -2, 2);
  const std::vector<double> gamma0 =
      testing::RandomUniformVector<double>(kCols, 31, 0.5, 1.5);
  const std::vector<double> beta0 =
      testing::RandomUniformVector<double>(kCols, 32);
  const std::vector<double> w = testing::RandomUniformVector<double>(kN, 33);

  for (bool has_gamma : {true, false}) {
    SCOPED_TRACE(has_gamma ? "with gamma" : "without gamma");
    const double* gamma = has_gamma ? gamma0.data() : nullptr;
    const ReferenceResult forward =
        ReferenceForward(kRows, kCols, x0, gamma, beta0.data(), kEps);
    std::vector<double> d_x(kN), d_gamma(kCols, 0.0), d_beta(kCols, 0.0);
    reference::LayerNormBackward(kRows, kCols, x0.data(), kCols, gamma,
                                 forward.mean.data(), forward.rstd.data(),
                                 w.data(), kCols, d_x.data(), kCols,
                                 d_gamma.data(), d_beta.data());

    auto loss_x = [&](const std::vector<double>& x) {
      return testing::Dot(
          w, ReferenceForward(kRows, kCols, x, gamma, beta0.data(), kEps).y);
    };
    EXPECT_TRUE(testing::GradientMatches(loss_x, x0, d_x));
    auto loss_gamma = [&](const std::vector<double>& g) {
      return testing::Dot(
          w,
          ReferenceForward(kRows, kCols, x0, g.data(), beta0.data(), kEps).y);
    };
    EXPECT_TRUE(testing::GradientMatches(loss_gamma, gamma0, d_gamma));
    auto loss_beta = [&](const std::vector<double>& b) {
      return testing::Dot(
          w, ReferenceForward(kRows, kCols, x0, gamma, b.data(), kEps).y);
    };
    EXPECT_TRUE(testing::GradientMatches(loss_beta, beta0, d_beta));
  }
}

TEST_F(LayerNormTest, BadInputIsAnErrorNamingTheProblem) {
  std::vector<float> a(12), b(12), c(10), v3(3), v4(4), v5(5);
  TensorView<const float> x(a.data(), {3, 4});
  TensorView<float> y(b.data(), {3, 4});
  const TensorView<const float> none;
  const TensorView<float> no_output;
  auto expect_error = [](const absl::Status& status, const char* needle) {
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_NE(status.message().find(needle), std::string::npos) << status;
  };

  expect_error(
      LayerNorm(*ctx_, x, none, none, TensorView<float>(c.data(), {2, 5}),
                no_output, no_output),
      "[2, 5]");
  expect_error(LayerNorm(*ctx_, TensorView<const float>(nullptr, {3, 4}), none,
                         none, y, no_output, no_output),
               "null");
  expect_error(
      LayerNorm(*ctx_,
                TensorView<const float>(a.data(), {3, 4}, Device::Cuda()), none,
                none, y, no_output, no_output),
      "is on cuda");
  expect_error(
      LayerNorm(*ctx_, TensorView<const float>(a.data(), {3, 2}, {4, 2, 0, 0}),
                none, none, TensorView<float>(b.data(), {3, 2}), no_output,
                no_output),
      "unit stride");
  expect_error(
      LayerNorm(*ctx_, TensorView<const float>(a.data(), {3, 0}), none, none,
                TensorView<float>(b.data(), {3, 0}), no_output, no_output),
      "non-empty last axis");
  expect_error(
      LayerNorm(*ctx_, x, none, none, y, no_output, no_output, {.eps = -1.0f}),
      "eps");
  expect_error(
      LayerNorm(*ctx_, x, VectorView(v5), none, y, no_output, no_output),
      "gamma must hold 4");
  expect_error(
      LayerNorm(*ctx_, x, none,
                TensorView<const float>(v4.data(), {4}, Device::Cuda()), y,
                no_output, no_output),
      "beta is on cuda");
  expect_error(LayerNorm(*ctx_, x, none, none, y, VectorView(v4), no_output),
               "mean must hold 3");
  expect_error(
      LayerNorm(*ctx_, x, none, none, y, VectorView(v3), VectorView(v5)),
      "rstd must hold 3");

  const TensorView<const float> mean(v3.data(), {3});
  expect_error(LayerNormBackward(*ctx_, x, none, mean, mean, x,
                                 TensorView<float>(c.data(), {2, 5}), no_output,
                                 no_output),
               "d_x");
  expect_error(
      LayerNormBackward(*ctx_, TensorView<const float>(c.data(), {5, 2}), none,
                        mean, mean, x, y, no_output, no_output),
      "x has shape [5, 2]");
  expect_error(
      LayerNormBackward(*ctx_, x, none, none, mean, x, y, no_output, no_output),
      "mean is required");
  expect_error(LayerNormBackward(*ctx_, x, none, mean, VectorView(v4), x, y,
                                 no_output, no_output),
               "rstd must hold 3");
  expect_error(LayerNormBackward(*ctx_, x, VectorView(v3), mean, mean, x, y,
                                 no_output, no_output),
               "gamma must hold 4");
  expect_error(LayerNormBackward(*ctx_, x, none, mean, mean, x, y,
                                 VectorView(v5), no_output),
               "d_gamma must hold 4");
  expect_error(LayerNormBackward(*ctx_, x, none, mean, mean, x, y, no_output,
                                 TensorView<float>(nullptr, {4})),
               "d_beta has null data");
}

}  // namespace
}  // namespace ftx
