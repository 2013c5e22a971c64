// Rotary embedding: both layouts against the formula in double, partial rotary
// leaves the tail alone, relative-position property, backward = transpose
// (central differences), bad options.
#include "attention/rotary.h"

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

constexpr int64_t kN = 2, kT = 5, kH = 3, kE = 8;

// Direct formula: pair (i, i + R/2) or (2i, 2i + 1) rotated by p *
// base^(-2i/R).
std::vector<double> Expected(const std::vector<double>& x, int64_t rotary_dim,
                             RotaryLayout layout, int64_t offset) {
  std::vector<double> y = x;
  for (int64_t n = 0; n < kN; ++n)
    for (int64_t t = 0; t < kT; ++t)
      for (int64_t h = 0; h < kH; ++h) {
        const int64_t row = ((n * kT + t) * kH + h) * kE;
        for (int64_t i = 0; i < rotary_dim / 2; ++i) {
          const double angle =
              (offset + t) * std::pow(10000.0, -2.0 * i / rotary_dim);
          const int64_t ia = layout == RotaryLayout::kInterleaved ? 2 * i : i;
          const int64_t ib = layout == RotaryLayout::kInterleaved
                                 ? 2 * i + 1
                                 : i + rotary_dim / 2;
          y[row + ia] =
              x[row + ia] * std::cos(angle) - x[row + ib] * std::sin(angle);
          y[row + ib] =
              x[row + ib] * std::cos(angle) + x[row + ia] * std::sin(angle);
        }
      }
  return y;
}

class RotaryTest : public ::testing::Test {
 protected:
  void SetUp() override { ctx_ = Context::Create({.num_threads = 2}).value(); }
  std::unique_ptr<Context> ctx_;
};

TEST_F(RotaryTest, MatchesFormulaForBothLayoutsAndPartialWidth) {
  for (RotaryLayout layout :
       {RotaryLayout::kHalfSplit, RotaryLayout::kInterleaved}) {
    for (int64_t rotary_dim : {2, 4, 8}) {
      auto rotary = RotaryEmbedding::Create({rotary_dim, layout});
      ASSERT_TRUE(rotary.ok());
      std::vector<float> x = RandomUniformVector(kN * kT * kH * kE, 1);
      const std::vector<double> expected =
          Expected(testing::Cast<double>(x), rotary_dim, layout, 3);
      ASSERT_TRUE(
          rotary
              ->Forward(*ctx_, TensorView<float>(x.data(), {kN, kT, kH, kE}), 3)
              .ok());
      EXPECT_TRUE(AllNear(x, expected, {1e-6, 1e-6})) << rotary_dim;
    }
  }
}

TEST_F(RotaryTest, DotProductDependsOnRelativePositionOnly) {
  auto rotary = RotaryEmbedding::Create({kE, RotaryLayout::kHalfSplit}).value();
  const std::vector<float> q0 = RandomUniformVector(kE, 2),
                           k0 = RandomUniformVector(kE, 3);
  auto rotated_dot = [&](int64_t p, int64_t s) {
    std::vector<float> q = q0, k = k0;
    EXPECT_TRUE(
        rotary.Forward(*ctx_, TensorView<float>(q.data(), {1, 1, 1, kE}), p)
            .ok());
    EXPECT_TRUE(
        rotary.Forward(*ctx_, TensorView<float>(k.data(), {1, 1, 1, kE}), s)
            .ok());
    double dot = 0;
    for (int64_t e = 0; e < kE; ++e) dot += q[e] * k[e];
    return dot;
  };
  EXPECT_NEAR(rotated_dot(7, 3), rotated_dot(14, 10), 1e-5);
  EXPECT_NEAR(rotated_dot(0, 0), rotated_dot(20, 20), 1e-5);
}

TEST_F(RotaryTest, BackwardIsTransposeOfForward) {
  auto rotary =
      RotaryEmbedding::Create({6, RotaryLayout::kInterleaved}).value();
  const int64_t size = kN * kT * kH * kE;
  const std::vector<double> w = RandomUniformVector<double>(size, 4);
  std::vector<float> d = testing::Cast<float>(w);
  ASSERT_TRUE(
      rotary.Backward(*ctx_, TensorView<float>(d.data(), {kN, kT, kH, kE}), 2)
          .ok());
  auto loss = [&](const std::vector<double>& x) {
    return testing::Dot(w, Expected(x, 6, RotaryLayout::kInterleaved, 2));
  };
  EXPECT_TRUE(testing::GradientMatches(loss,
                                       RandomUniformVector<double>(size, 5),
                                       testing::Cast<double>(d), {1e-6, 1e-5}));
}

TEST_F(RotaryTest, RejectsBadOptionsAndShapes) {
  EXPECT_EQ(RotaryEmbedding::Create({3}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RotaryEmbedding::Create({0}).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto rotary = RotaryEmbedding::Create({16}).value();
  std::vector<float> x(kE);
  EXPECT_EQ(rotary.Forward(*ctx_, TensorView<float>(x.data(), {1, 1, 1, kE}), 0)
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RotaryEmbedding::XTransformersRotaryDim(64, 0), 32);
  EXPECT_EQ(RotaryEmbedding::XTransformersRotaryDim(128, 0), 64);
}

}  // namespace
}  // namespace ftx
