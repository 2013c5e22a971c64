// Axial positions against the axial-positional-embedding formula in double
// (summed and concatenated axes, offsets, strided inputs); gradients of both
// axis tables by central differences; performer's default shape; init
// statistics; bad inputs.
#include "layers/axial_positions.h"

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

constexpr int64_t kBatch = 2, kLength = 10, kDim = 5, kPad = 2;
constexpr int64_t kRows = 3, kColumns = 4;

AxialPositionsConfig Summed() {
  return {.dim = kDim, .shape = {kRows, kColumns}};
}
AxialPositionsConfig Concatenated() {
  return {.dim = kDim, .shape = {kRows, kColumns}, .axial_dims = {2, 3}};
}

// The package's table: expand each axis to [R, K, C_i], flatten to [R K, C_i],
// sum or concatenate, keep rows offset .. offset + T - 1.
std::vector<double> ReferenceTable(const AxialPositions& axial,
                                   const std::vector<double>& w0,
                                   const std::vector<double>& w1,
                                   int64_t offset, int64_t length) {
  const int64_t d0 = axial.AxisDim(0), d1 = axial.AxisDim(1);
  std::vector<double> table(length * kDim, 0.0);
  for (int64_t t = 0; t < length; ++t) {
    const int64_t r = (offset + t) / kColumns, k = (offset + t) % kColumns;
    for (int64_t c = 0; c < d0; ++c) table[t * kDim + c] += w0[r * d0 + c];
    const int64_t start = axial.summed() ? 0 : d0;
    for (int64_t c = 0; c < d1; ++c)
      table[t * kDim + start + c] += w1[k * d1 + c];
  }
  return table;
}

class AxialPositionsTest : public ::testing::Test {
 protected:
  void SetUp() override { ctx_ = Context::Create({.num_threads = 3}).value(); }
  std::unique_ptr<Context> ctx_;
};

TEST_F(AxialPositionsTest, ParamShapesFollowThePackage) {
  const AxialPositions summed(Summed());
  ASSERT_EQ(summed.ParamShapes().size(), 2u);
  EXPECT_EQ(summed.ParamShapes()[0].name, "weights_0");
  EXPECT_EQ(summed.ParamShapes()[0].shape, (Shape{1, kRows, 1, kDim}));
  EXPECT_EQ(summed.ParamShapes()[1].name, "weights_1");
  EXPECT_EQ(summed.ParamShapes()[1].shape, (Shape{1, 1, kColumns, kDim}));
  const AxialPositions concatenated(Concatenated());
  EXPECT_EQ(concatenated.ParamShapes()[0].shape, (Shape{1, kRows, 1, 2}));
  EXPECT_EQ(concatenated.ParamShapes()[1].shape, (Shape{1, 1, kColumns, 3}));
  EXPECT_EQ(summed.max_seq_len(), kRows * kColumns);

  // performer-pytorch: (ceil(max_seq_len / 64), 64).
  EXPECT_EQ(AxialPositionsConfig::Performer(8, 1000).shape,
            (std::array<int64_t, 2>{16, 64}));
  EXPECT_EQ(AxialPositionsConfig::Performer(8, 1024).shape,
            (std::array<int64_t, 2>{16, 64}));
  EXPECT_EQ(AxialPositionsConfig::Performer(8, 1025).shape,
            (std::array<int64_t, 2>{17, 64}));
  EXPECT_TRUE(
      AxialPositions(AxialPositionsConfig::Performer(8, 1025)).summed());
}

TEST_F(AxialPositionsTest, ForwardAndTableMatchReference) {
  for (const AxialPositionsConfig& config : {Summed(), Concatenated()}) {
    const AxialPositions axial(config);
    const std::vector<float> w0 =
        RandomUniformVector(kRows * axial.AxisDim(0), 1);
    const std::vector<float> w1 =
        RandomUniformVector(kColumns * axial.AxisDim(1), 2);
    const TensorView<const float> w0_view(w0.data(),
                                          axial.ParamShapes()[0].shape);
    const TensorView<const float> w1_view(w1.data(),
                                          axial.ParamShapes()[1].shape);
    for (int64_t offset : {0, 2}) {
      const std::vector<double> table =
          ReferenceTable(axial, testing::Cast<double>(w0),
                         testing::Cast<double>(w1), offset, kLength);
      std::vector<float> storage =
          RandomUniformVector(kBatch * kLength * (kDim + kPad), 3);
      const std::vector<float> original = storage;
      const int64_t row = kDim + kPad;
      ASSERT_TRUE(axial
                      .Forward(*ctx_, w0_view, w1_view, offset,
                               TensorView<float>(storage.data(),
                                                 {kBatch, kLength, kDim},
                                                 {kLength * row, row, 1}))
                      .ok());
      std::vector<double> expected(storage.size());
      for (int64_t b = 0; b < kBatch; ++b)
        for (int64_t t = 0; t < kLength; ++t)
          for (int64_t c = 0; c < row; ++c) {
            const int64_t i = (b * kLength + t) * row + c;
            expected[i] = original[i] + (c < kDim ? table[t * kDim + c] : 0.0);
          }
      EXPECT_TRUE(AllNear(storage, expected, {1e-6, 1e-6}))
          << "summed " << axial.summed() << " offset " << offset;

      std::vector<float> table_out(kLength * kDim, NAN);
      ASSERT_TRUE(
          axial
              .Table(*ctx_, w0_view, w1_view, offset,
                     TensorView<float>(table_out.data(), {kLength, kDim}))
              .ok());
      EXPECT_TRUE(AllNear(table_out, table, {1e-6, 1e-6}));
    }
  }
}

TEST_F(AxialPositionsTest, BackwardMatchesCentralDifferences) {
  for (const AxialPositionsConfig& config : {Summed(), Concatenated()}) {
    const AxialPositions axial(config);
    const std::vector<double> w0 =
        RandomUniformVector<double>(kRows * axial.AxisDim(0), 4);
    const std::vector<double> w1 =
        RandomUniformVector<double>(kColumns * axial.AxisDim(1), 5);
    for (int64_t offset : {0, 1}) {
      // Up to the last grid position, so every row and column gets a gradient.
      const int64_t length = kRows * kColumns - offset;
      for (bool batched : {true, false}) {
        const int64_t batch = batched ? kBatch : 1;
        const std::vector<float> d_y =
            RandomUniformVector(batch * length * kDim, 6);
        const TensorView<const float> d_y_view =
            batched ? TensorView<const float>(d_y.data(), {batch, length, kDim})
                    : TensorView<const float>(d_y.data(), {length, kDim});
        std::vector<float> d_w0(w0.size(), 0.25f), d_w1(w1.size(), -0.5f);
        ASSERT_TRUE(
            axial
                .Backward(*ctx_, offset, d_y_view,
                          TensorView<float>(d_w0.data(),
                                            axial.ParamShapes()[0].shape),
                          TensorView<float>(d_w1.data(),
                                            axial.ParamShapes()[1].shape))
                .ok());
        // loss = sum_b <d_y[b], table>.
        std::vector<double> w(length * kDim, 0.0);
        for (int64_t b = 0; b < batch; ++b)
          for (int64_t i = 0; i < length * kDim; ++i)
            w[i] += d_y[b * length * kDim + i];
        std::vector<double> analytic_0 = testing::Cast<double>(d_w0);
        for (double& g : analytic_0) g -= 0.25;
        std::vector<double> analytic_1 = testing::Cast<double>(d_w1);
        for (double& g : analytic_1) g += 0.5;
        EXPECT_TRUE(testing::GradientMatches(
            [&](const std::vector<double>& v) {
              return testing::Dot(w,
                                  ReferenceTable(axial, v, w1, offset, length));
            },
            w0, analytic_0, {1e-5, 1e-5}))
            << "weights_0, summed " << axial.summed() << " offset " << offset;
        EXPECT_TRUE(testing::GradientMatches(
            [&](const std::vector<double>& v) {
              return testing::Dot(w,
                                  ReferenceTable(axial, w0, v, offset, length));
            },
            w1, analytic_1, {1e-5, 1e-5}))
            << "weights_1, summed " << axial.summed() << " offset " << offset;
      }
    }
  }
}

TEST_F(AxialPositionsTest, InitStatistics) {
  const AxialPositions axial({.dim = 64, .shape = {32, 64}});
  std::vector<float> w0(32 * 64), w1(64 * 64);
  ASSERT_TRUE(axial
                  .InitParams(*ctx_,
                              TensorView<float>(w0.data(), {1, 32, 1, 64}),
                              TensorView<float>(w1.data(), {1, 1, 64, 64}), 9)
                  .ok());
  std::vector<float> all = w0;
  all.insert(all.end(), w1.begin(), w1.end());
  double sum = 0, sum_sq = 0;
  for (float v : all) {
    sum += v;
    sum_sq += double(v) * v;
  }
  const double mean = sum / all.size();
  EXPECT_NEAR(mean, 0.0, 0.03);
  EXPECT_NEAR(std::sqrt(sum_sq / all.size() - mean * mean), 1.0, 0.03);
  // The two axes are different draws.
  EXPECT_NE(w0[0], w1[0]);
  EXPECT_NE(w0[5], w1[5]);
}

TEST_F(AxialPositionsTest, BadInputsAreErrors) {
  const AxialPositions axial(Summed());
  std::vector<float> w0(kRows * kDim), w1(kColumns * kDim), buffer(400);
  const TensorView<const float> w0_view(w0.data(), {1, kRows, 1, kDim});
  const TensorView<const float> w1_view(w1.data(), {1, 1, kColumns, kDim});
  auto expect_error = [](const absl::Status& status, const char* text) {
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_NE(status.message().find(text), std::string::npos) << status;
  };
  expect_error(axial.Forward(*ctx_, w0_view, w1_view, 0,
                             TensorView<float>(buffer.data(), {1, 13, kDim})),
               "do not fit the axial shape's max_seq_len = 12");
  expect_error(axial.Forward(*ctx_, w0_view, w1_view, 3,
                             TensorView<float>(buffer.data(), {1, 10, kDim})),
               "[3, 13)");
  expect_error(
      axial.Forward(*ctx_, w0_view, w1_view, 0,
                    TensorView<float>(buffer.data(), {1, 4, kDim + 1})),
      "x must be [B, T, C] with C = 5");
  expect_error(
      axial.Forward(*ctx_, TensorView<const float>(w0.data(), {1, kRows, kDim}),
                    w1_view, 0, TensorView<float>(buffer.data(), {1, 4, kDim})),
      "weights_0 must be a contiguous CPU [1, 3, 1, 5]");
  expect_error(
      axial.Backward(*ctx_, 0,
                     TensorView<const float>(buffer.data(), {1, 4, kDim}),
                     TensorView<float>(w0.data(), {1, kRows, 1, kDim}),
                     TensorView<float>(w1.data(), {1, 1, kColumns, 2})),
      "weights_1 must be");
  const AxialPositions bad_dims(
      {.dim = kDim, .shape = {kRows, kColumns}, .axial_dims = {2, 2}});
  expect_error(bad_dims.Forward(*ctx_, w0_view, w1_view, 0,
                                TensorView<float>(buffer.data(), {1, 4, kDim})),
               "must be positive and sum to dim = 5");
  const AxialPositions bad_shape({.dim = kDim, .shape = {0, kColumns}});
  expect_error(
      bad_shape.Forward(*ctx_, w0_view, w1_view, 0,
                        TensorView<float>(buffer.data(), {1, 4, kDim})),
      "must be >= 1");
}

}  // namespace
}  // namespace ftx
