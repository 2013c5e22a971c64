// Sinusoidal positions against the formula in double (bases 1e4 and 1e5, odd
// and even half widths, offsets), PyTorch's float32 angle rounding at large
// positions, the in-place add on strided inputs, bad inputs.
#include "layers/sinusoidal_positions.h"

#include <cmath>
#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "tests/util/random.h"
#include "tests/util/tolerance.h"

namespace ftx {
namespace {

using ::ftx::testing::AllNear;
using ::ftx::testing::RandomUniformVector;

// [sin(p θ_i) | cos(p θ_i)], θ_i = base^(-2i / C), in double.
std::vector<double> ReferenceTable(int64_t dim, double base, int64_t offset,
                                   int64_t length) {
  std::vector<double> table(length * dim);
  for (int64_t t = 0; t < length; ++t) {
    for (int64_t i = 0; i < dim / 2; ++i) {
      const double angle =
          double(offset + t) * std::pow(base, -2.0 * double(i) / double(dim));
      table[t * dim + i] = std::sin(angle);
      table[t * dim + dim / 2 + i] = std::cos(angle);
    }
  }
  return table;
}

class SinusoidalPositionsTest : public ::testing::Test {
 protected:
  void SetUp() override { ctx_ = Context::Create({.num_threads = 2}).value(); }
  std::unique_ptr<Context> ctx_;
};

TEST_F(SinusoidalPositionsTest, TableMatchesFormula) {
  for (double base : {10000.0, 100000.0}) {
    for (int64_t dim : {2, 6, 16, 34}) {
      for (int64_t offset : {0, 41}) {
        const int64_t length = 37;
        const SinusoidalPositions positions({.dim = dim, .base = base});
        std::vector<float> table(length * dim, NAN);
        ASSERT_TRUE(positions
                        .Table(*ctx_, offset,
                               TensorView<float>(table.data(), {length, dim}))
                        .ok());
        // The angle is rounded to float32 as in PyTorch: |error| <= p θ 2^-23.
        EXPECT_TRUE(AllNear(table, ReferenceTable(dim, base, offset, length),
                            {2e-5, 0}))
            << "base " << base << " dim " << dim << " offset " << offset;
      }
    }
  }
}

TEST_F(SinusoidalPositionsTest, KnownValues) {
  const SinusoidalPositions positions({.dim = 4});
  EXPECT_FLOAT_EQ(positions.Frequency(0), 1.0f);
  EXPECT_FLOAT_EQ(positions.Frequency(1), 0.01f);  // 10000^(-2/4)
  const SinusoidalPositions linformer({.dim = 4, .base = 100000.0});
  EXPECT_FLOAT_EQ(linformer.Frequency(1),
                  static_cast<float>(1 / std::sqrt(1e5)));
  std::vector<float> table(2 * 4);
  ASSERT_TRUE(
      positions.Table(*ctx_, 0, TensorView<float>(table.data(), {2, 4})).ok());
  // Position 0: [sin 0, sin 0 | cos 0, cos 0]; position 1: [sin 1, sin .01 |
  // cos 1, cos .01].
  const std::vector<double> expected = {
      0, 0, 1, 1, std::sin(1.0), std::sin(0.01), std::cos(1.0), std::cos(0.01)};
  EXPECT_TRUE(AllNear(table, expected, {1e-7, 1e-7}));
}

TEST_F(SinusoidalPositionsTest, LargePositionsRoundTheAngleLikePyTorch) {
  // At p ~ 1e4 the float32 angle differs from the exact one by up to ~5e-4;
  // PyTorch computes float(p) * θ_i in float32 and so does ftx.
  const int64_t dim = 8, offset = 12345, length = 3;
  const SinusoidalPositions positions({.dim = dim});
  std::vector<float> table(length * dim);
  ASSERT_TRUE(
      positions
          .Table(*ctx_, offset, TensorView<float>(table.data(), {length, dim}))
          .ok());
  std::vector<double> expected(length * dim);
  for (int64_t t = 0; t < length; ++t) {
    for (int64_t i = 0; i < dim / 2; ++i) {
      const float exponent = float(2 * i) / float(dim);
      const float theta = 1.0f / float(std::pow(10000.0, double(exponent)));
      const float angle = float(offset + t) * theta;
      expected[t * dim + i] = std::sin(double(angle));
      expected[t * dim + dim / 2 + i] = std::cos(double(angle));
    }
  }
  EXPECT_TRUE(AllNear(table, expected, {1e-7, 0}));
  EXPECT_TRUE(
      AllNear(table, ReferenceTable(dim, 10000.0, offset, length), {2e-3, 0}));
}

TEST_F(SinusoidalPositionsTest, ForwardAddsToStridedInput) {
  const int64_t batch = 3, length = 5, dim = 6, pad = 2, offset = 7;
  const SinusoidalPositions positions({.dim = dim, .max_seq_len = 12});
  std::vector<float> storage =
      RandomUniformVector(batch * length * (dim + pad), 1);
  const std::vector<float> original = storage;
  ASSERT_TRUE(
      positions
          .Forward(*ctx_, offset,
                   TensorView<float>(storage.data(), {batch, length, dim},
                                     {length * (dim + pad), dim + pad, 1}))
          .ok());
  const std::vector<double> table =
      ReferenceTable(dim, 10000.0, offset, length);
  std::vector<double> expected(storage.size());
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t < length; ++t)
      for (int64_t c = 0; c < dim + pad; ++c) {
        const int64_t i = (b * length + t) * (dim + pad) + c;
        expected[i] = original[i] + (c < dim ? table[t * dim + c] : 0.0);
      }
  EXPECT_TRUE(AllNear(storage, expected, {1e-5, 1e-6}));
}

TEST_F(SinusoidalPositionsTest, BadInputsAreErrors) {
  std::vector<float> buffer(256);
  auto expect_error = [](const absl::Status& status, const char* text) {
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_NE(status.message().find(text), std::string::npos) << status;
  };
  const SinusoidalPositions odd({.dim = 5});
  expect_error(
      odd.Forward(*ctx_, 0, TensorView<float>(buffer.data(), {1, 2, 5})),
      "dim must be even");
  // performer-pytorch's table stops at max_seq_len.
  const SinusoidalPositions performer({.dim = 4, .max_seq_len = 8});
  expect_error(
      performer.Forward(*ctx_, 0, TensorView<float>(buffer.data(), {2, 9, 4})),
      "do not fit max_seq_len = 8");
  expect_error(
      performer.Forward(*ctx_, 6, TensorView<float>(buffer.data(), {2, 3, 4})),
      "[6, 9)");
  expect_error(
      performer.Forward(*ctx_, -1, TensorView<float>(buffer.data(), {2, 3, 4})),
      "do not fit");
  expect_error(
      performer.Forward(*ctx_, 0, TensorView<float>(buffer.data(), {2, 3, 6})),
      "x must be a CPU [B, T, C = 4]");
  expect_error(
      performer.Forward(*ctx_, 0, TensorView<float>(nullptr, {2, 3, 4})),
      "x must be");
  expect_error(performer.Table(
                   *ctx_, 0, TensorView<float>(buffer.data(), {3, 4}, {8, 2})),
               "unit stride");
  expect_error(SinusoidalPositions({.dim = 4, .base = 0.0})
                   .Table(*ctx_, 0, TensorView<float>(buffer.data(), {3, 4})),
               "base must be > 0");
}

}  // namespace
}  // namespace ftx
