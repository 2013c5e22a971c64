// MemoryTokens: randn init statistics; Prepend / Strip against index formulas
// in double on padded (strided) views; PrependBackward and StripBackward
// against central differences; the padded mask; bad inputs.
#include "layers/memory_tokens.h"

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/util/gradcheck.h"
#include "tests/util/matrix.h"
#include "tests/util/random.h"
#include "tests/util/tolerance.h"

namespace ftx {
namespace {

using ::ftx::testing::AllNear;
using ::ftx::testing::Cast;
using ::ftx::testing::GradientMatches;
using ::ftx::testing::RandomUniformVector;
using ::ftx::testing::StridedMatrix;

constexpr int64_t kBatch = 3, kMemory = 4, kLength = 5, kDim = 7;

std::unique_ptr<Context> MakeContext() {
  return Context::Create({.num_threads = 3}).value();
}

// A [B, T, C] view over a StridedMatrix of B * T padded rows.
TensorView<float> Sequence(StridedMatrix& rows, int64_t batch, int64_t length) {
  return TensorView<float>(
      rows.data(), {batch, length, rows.cols()},
      Strides{length * rows.stride(), rows.stride(), 1, 0});
}

// cat(memory repeated over the batch, x) along time, in double.
std::vector<double> ReferencePrepend(const std::vector<double>& memory,
                                     const std::vector<double>& x) {
  std::vector<double> y;
  for (int64_t b = 0; b < kBatch; ++b) {
    y.insert(y.end(), memory.begin(), memory.end());
    y.insert(y.end(), x.begin() + b * kLength * kDim,
             x.begin() + (b + 1) * kLength * kDim);
  }
  return y;
}

// x[:, M:] in double.
std::vector<double> ReferenceStrip(const std::vector<double>& x) {
  std::vector<double> y;
  const int64_t total = kMemory + kLength;
  for (int64_t b = 0; b < kBatch; ++b) {
    y.insert(y.end(), x.begin() + (b * total + kMemory) * kDim,
             x.begin() + (b + 1) * total * kDim);
  }
  return y;
}

MemoryTokens MakeLayer() {
  return MemoryTokens::Create({.num_memory_tokens = kMemory, .dim = kDim})
      .value();
}

TEST(MemoryTokensTest, InitIsStandardNormal) {
  auto ctx = MakeContext();
  const MemoryTokens layer =
      MemoryTokens::Create({.num_memory_tokens = 64, .dim = 48}).value();
  ASSERT_EQ(layer.ParamShapes().size(), 1u);
  EXPECT_EQ(layer.ParamShapes()[0].name, "memory_tokens");
  EXPECT_EQ(layer.ParamShapes()[0].shape, (Shape{64, 48}));
  std::vector<float> tokens(64 * 48), again(64 * 48), other(64 * 48);
  ASSERT_TRUE(
      layer.InitParams(*ctx, TensorView<float>(tokens.data(), {64, 48}), 5)
          .ok());
  ASSERT_TRUE(
      layer.InitParams(*ctx, TensorView<float>(again.data(), {64, 48}), 5)
          .ok());
  ASSERT_TRUE(
      layer.InitParams(*ctx, TensorView<float>(other.data(), {64, 48}), 6)
          .ok());
  EXPECT_EQ(tokens, again);
  EXPECT_NE(tokens, other);
  double sum = 0, sum_squares = 0;
  for (float v : tokens) {
    sum += v;
    sum_squares += static_cast<double>(v) * v;
  }
  const double n = tokens.size();
  const double mean = sum / n, variance = sum_squares / n - mean * mean;
  // 3072 samples: the mean's standard error is 0.018, the variance's 0.026.
  EXPECT_LT(std::abs(mean), 0.08);
  EXPECT_NEAR(variance, 1.0, 0.12);
}

TEST(MemoryTokensTest, PrependAndStripMatchReferenceOnStridedViews) {
  auto ctx = MakeContext();
  const MemoryTokens layer = MakeLayer();
  const std::vector<float> memory = RandomUniformVector(kMemory * kDim, 1);
  StridedMatrix x_rows(kBatch * kLength, kDim, 3, 2);
  StridedMatrix y_rows(kBatch * (kMemory + kLength), kDim, 2, 3);
  const TensorView<const float> memory_view(memory.data(), {kMemory, kDim});
  const TensorView<float> y = Sequence(y_rows, kBatch, kMemory + kLength);
  ASSERT_TRUE(
      layer.Prepend(*ctx, memory_view, Sequence(x_rows, kBatch, kLength), y)
          .ok());
  const std::vector<double> x_dense = Cast<double>(x_rows.Dense());
  const std::vector<double> expected =
      ReferencePrepend(Cast<double>(memory), x_dense);
  EXPECT_TRUE(AllNear(y_rows.Dense(), expected, {0, 0}));
  EXPECT_TRUE(y_rows.PaddingIntact());

  StridedMatrix stripped_rows(kBatch * kLength, kDim, 1, 4);
  ASSERT_TRUE(
      layer.Strip(*ctx, y, Sequence(stripped_rows, kBatch, kLength)).ok());
  EXPECT_TRUE(AllNear(stripped_rows.Dense(), ReferenceStrip(expected), {0, 0}));
  EXPECT_TRUE(
      AllNear(stripped_rows.Dense(), x_dense, {0, 0}));  // Strip undoes Prepend
  EXPECT_TRUE(stripped_rows.PaddingIntact());
}

TEST(MemoryTokensTest, BackwardMatchesCentralDifferences) {
  auto ctx = MakeContext();
  const MemoryTokens layer = MakeLayer();
  const int64_t total = kMemory + kLength;
  const std::vector<float> d_prepended =
      RandomUniformVector(kBatch * total * kDim, 5);
  std::vector<float> d_x(kBatch * kLength * kDim, -9.0f);
  std::vector<float> d_memory(kMemory * kDim, 0.25f);  // accumulated into
  ASSERT_TRUE(layer
                  .PrependBackward(
                      *ctx,
                      TensorView<const float>(d_prepended.data(),
                                              {kBatch, total, kDim}),
                      TensorView<float>(d_x.data(), {kBatch, kLength, kDim}),
                      TensorView<float>(d_memory.data(), {kMemory, kDim}))
                  .ok());
  const std::vector<double> w = Cast<double>(d_prepended);
  const std::vector<double> memory =
      RandomUniformVector<double>(kMemory * kDim, 6);
  const std::vector<double> x =
      RandomUniformVector<double>(kBatch * kLength * kDim, 7);
  EXPECT_TRUE(GradientMatches(
      [&](const std::vector<double>& v) {
        return testing::Dot(w, ReferencePrepend(memory, v));
      },
      x, Cast<double>(d_x)));
  std::vector<double> analytic_memory = Cast<double>(d_memory);
  for (double& v : analytic_memory) v -= 0.25;
  EXPECT_TRUE(GradientMatches(
      [&](const std::vector<double>& v) {
        return testing::Dot(w, ReferencePrepend(v, x));
      },
      memory, analytic_memory));

  const std::vector<float> d_stripped =
      RandomUniformVector(kBatch * kLength * kDim, 8);
  std::vector<float> d_full(kBatch * total * kDim, -9.0f);
  ASSERT_TRUE(layer
                  .StripBackward(
                      *ctx,
                      TensorView<const float>(d_stripped.data(),
                                              {kBatch, kLength, kDim}),
                      TensorView<float>(d_full.data(), {kBatch, total, kDim}))
                  .ok());
  const std::vector<double> w_strip = Cast<double>(d_stripped);
  const std::vector<double> full =
      RandomUniformVector<double>(kBatch * total * kDim, 9);
  EXPECT_TRUE(GradientMatches(
      [&](const std::vector<double>& v) {
        return testing::Dot(w_strip, ReferenceStrip(v));
      },
      full, Cast<double>(d_full)));
}

TEST(MemoryTokensTest, NoMemoryTokensIsACopy) {
  auto ctx = MakeContext();
  const MemoryTokens layer =
      MemoryTokens::Create({.num_memory_tokens = 0, .dim = 2}).value();
  const std::vector<float> x = RandomUniformVector(2 * 3 * 2, 10);
  std::vector<float> y(x.size());
  ASSERT_TRUE(layer
                  .Prepend(*ctx, TensorView<const float>(nullptr, {0, 2}),
                           TensorView<const float>(x.data(), {2, 3, 2}),
                           TensorView<float>(y.data(), {2, 3, 2}))
                  .ok());
  EXPECT_EQ(y, x);
}

TEST(MemoryTokensTest, PadLengthsAddsTheMemory) {
  const MemoryTokens layer = MakeLayer();
  EXPECT_EQ(layer.PadLengths(LengthMask{{2, 5, 0}}).lengths,
            (std::vector<int64_t>{2 + kMemory, 5 + kMemory, kMemory}));
  EXPECT_TRUE(layer.PadLengths(LengthMask{}).full());
}

void ExpectInvalid(const absl::Status& status, const std::string& fragment) {
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(std::string(status.message()).find(fragment), std::string::npos)
      << "message \"" << status.message() << "\" lacks \"" << fragment << "\"";
}

TEST(MemoryTokensTest, BadInputsAreErrors) {
  auto ctx = MakeContext();
  ExpectInvalid(
      MemoryTokens::Create({.num_memory_tokens = 2, .dim = 0}).status(), "dim");
  ExpectInvalid(
      MemoryTokens::Create({.num_memory_tokens = -1, .dim = 4}).status(),
      "num_memory_tokens");
  const MemoryTokens layer = MakeLayer();
  const int64_t total = kMemory + kLength;
  std::vector<float> memory(kMemory * kDim), x(kBatch * kLength * kDim),
      y(kBatch * total * kDim);
  const TensorView<const float> memory_view(memory.data(), {kMemory, kDim});
  const TensorView<const float> x_view(x.data(), {kBatch, kLength, kDim});
  const TensorView<float> y_view(y.data(), {kBatch, total, kDim});
  ExpectInvalid(
      layer.Prepend(*ctx,
                    TensorView<const float>(memory.data(), {kMemory - 1, kDim}),
                    x_view, y_view),
      "memory_tokens must be [4, 7]");
  ExpectInvalid(
      layer.Prepend(*ctx, memory_view, x_view,
                    TensorView<float>(y.data(), {kBatch, kLength, kDim})),
      "y must be [3, 9, 7]");
  ExpectInvalid(
      layer.Prepend(*ctx, memory_view,
                    TensorView<const float>(x.data(), {kBatch * kLength, kDim}),
                    y_view),
      "x must be [B, T, 7]");
  ExpectInvalid(
      layer.Prepend(*ctx, memory_view,
                    TensorView<const float>(x.data(), {kBatch, kLength, kDim},
                                            Device::Cuda()),
                    y_view),
      "x is on cuda");
  ExpectInvalid(
      layer.Prepend(*ctx, memory_view,
                    TensorView<const float>(nullptr, {kBatch, kLength, kDim}),
                    y_view),
      "null data");
  ExpectInvalid(layer.Prepend(*ctx, memory_view,
                              TensorView<const float>(
                                  x.data(), {kBatch, kLength, kDim / 2},
                                  Strides{kLength * kDim, kDim, 2, 0}),
                              y_view),
                "unit stride");
  // y over its own input: the copy would read rows it already wrote.
  ExpectInvalid(layer.Prepend(*ctx, memory_view,
                              TensorView<const float>(y.data() + kMemory * kDim,
                                                      {kBatch, kLength, kDim}),
                              y_view),
                "y overlaps x");
  ExpectInvalid(
      layer.Strip(*ctx,
                  TensorView<const float>(y.data(), {kBatch, total - 1, kDim}),
                  TensorView<float>(x.data(), {kBatch, kLength, kDim})),
      "x must be [3, 9, 7]");
  std::vector<float> d_memory(kMemory * kDim);
  ExpectInvalid(
      layer.PrependBackward(
          *ctx, TensorView<const float>(y.data(), {kBatch, total, kDim}),
          TensorView<float>(x.data(), {kBatch, kLength, kDim}),
          TensorView<float>(d_memory.data(), {kMemory, kDim + 1})),
      "d_memory_tokens must be [4, 7]");
  ExpectInvalid(
      layer.StripBackward(
          *ctx, TensorView<const float>(x.data(), {kBatch, kLength, kDim}),
          TensorView<float>(y.data(), {kBatch + 1, total, kDim})),
      "d_x must be [3, 9, 7]");
  ExpectInvalid(layer.InitParams(
                    *ctx, TensorView<float>(memory.data(), {kDim, kMemory}), 1),
                "memory_tokens must be [4, 7]");
}

}  // namespace
}  // namespace ftx
