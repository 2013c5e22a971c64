// Learned absolute positions against their formula in double (x-transformers'
// dim^-0.5 scale, performer's unscaled table, l2norm_embed), on strided
// inputs with an offset; the embedding gradient by central differences; init
// statistics; bad inputs.
#include "layers/absolute_positions.h"

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

constexpr int64_t kBatch = 2, kLength = 5, kDim = 7, kMaxLen = 9, kPad = 3;

// pos[t] for positions offset .. offset + T - 1, from the formula.
std::vector<double> ReferenceTable(const std::vector<double>& weight,
                                   const AbsolutePositionsConfig& config,
                                   int64_t offset, int64_t length) {
  const int64_t dim = config.dim;
  std::vector<double> table(length * dim);
  for (int64_t t = 0; t < length; ++t) {
    const double* e = weight.data() + (offset + t) * dim;
    double factor =
        config.scale.has_value() ? *config.scale : 1.0 / std::sqrt(double(dim));
    if (config.l2norm_embed) {
      double sum = 0;
      for (int64_t c = 0; c < dim; ++c) sum += e[c] * e[c];
      factor = 1.0 / std::max(std::sqrt(sum), 1e-12);
    }
    for (int64_t c = 0; c < dim; ++c) table[t * dim + c] = e[c] * factor;
  }
  return table;
}

// [B, T, C] view over rows of C + kPad floats.
TensorView<float> PaddedView(std::vector<float>& storage) {
  const int64_t row = kDim + kPad;
  return TensorView<float>(storage.data(), {kBatch, kLength, kDim},
                           {kLength * row, row, 1});
}

std::vector<AbsolutePositionsConfig> Configs() {
  AbsolutePositionsConfig x_transformers{.max_seq_len = kMaxLen, .dim = kDim};
  AbsolutePositionsConfig performer = x_transformers;
  performer.scale = 1.0f;
  AbsolutePositionsConfig l2norm = x_transformers;
  l2norm.l2norm_embed = true;
  return {x_transformers, performer, l2norm};
}

class AbsolutePositionsTest : public ::testing::Test {
 protected:
  void SetUp() override { ctx_ = Context::Create({.num_threads = 2}).value(); }
  std::unique_ptr<Context> ctx_;
};

TEST_F(AbsolutePositionsTest, ScaleFollowsTheReferences) {
  EXPECT_FLOAT_EQ(AbsolutePositions(Configs()[0]).Scale(),
                  static_cast<float>(1.0 / std::sqrt(double(kDim))));
  EXPECT_EQ(AbsolutePositions(Configs()[1]).Scale(), 1.0f);
  EXPECT_EQ(AbsolutePositions(Configs()[2]).Scale(), 1.0f);
}

TEST_F(AbsolutePositionsTest, ForwardAndTableMatchReference) {
  const std::vector<float> weight =
      RandomUniformVector(kMaxLen * kDim, 1, -2, 2);
  const TensorView<const float> weight_view(weight.data(), {kMaxLen, kDim});
  const std::vector<double> weight_d = testing::Cast<double>(weight);
  for (const AbsolutePositionsConfig& config : Configs()) {
    const AbsolutePositions positions(config);
    for (int64_t offset : {0, 4}) {
      const std::vector<double> table =
          ReferenceTable(weight_d, config, offset, kLength);
      std::vector<float> storage =
          RandomUniformVector(kBatch * kLength * (kDim + kPad), 2);
      const std::vector<float> original = storage;
      const TensorView<float> x = PaddedView(storage);
      ASSERT_TRUE(positions.Forward(*ctx_, weight_view, offset, x).ok());
      std::vector<float> actual;
      std::vector<double> expected;
      for (int64_t b = 0; b < kBatch; ++b) {
        for (int64_t t = 0; t < kLength; ++t) {
          for (int64_t c = 0; c < kDim + kPad; ++c) {
            const int64_t i = (b * kLength + t) * (kDim + kPad) + c;
            actual.push_back(storage[i]);
            // Padding stays untouched.
            expected.push_back(c < kDim ? original[i] + table[t * kDim + c]
                                        : original[i]);
          }
        }
      }
      EXPECT_TRUE(AllNear(actual, expected, {1e-6, 1e-6}))
          << "l2norm " << config.l2norm_embed << " offset " << offset;

      std::vector<float> table_out(kLength * kDim, NAN);
      ASSERT_TRUE(
          positions
              .Table(*ctx_, weight_view, offset,
                     TensorView<float>(table_out.data(), {kLength, kDim}))
              .ok());
      EXPECT_TRUE(AllNear(table_out, table, {1e-6, 1e-6}));
    }
  }
}

TEST_F(AbsolutePositionsTest, BackwardMatchesCentralDifferences) {
  const std::vector<float> weight =
      RandomUniformVector(kMaxLen * kDim, 3, -2, 2);
  const TensorView<const float> weight_view(weight.data(), {kMaxLen, kDim});
  const std::vector<double> weight_d = testing::Cast<double>(weight);
  const int64_t offset = 2;
  for (const AbsolutePositionsConfig& config : Configs()) {
    const AbsolutePositions positions(config);
    std::vector<float> d_y_storage =
        RandomUniformVector(kBatch * kLength * (kDim + kPad), 4);
    const TensorView<const float> d_y = PaddedView(d_y_storage);
    std::vector<float> d_weight(weight.size(), 0.5f);
    ASSERT_TRUE(
        positions
            .Backward(*ctx_, weight_view, offset, d_y,
                      TensorView<float>(d_weight.data(), {kMaxLen, kDim}))
            .ok());
    // loss = sum_{b,t,c} d_y[b,t,c] pos[t,c]: the x part has no weight
    // dependence.
    auto loss = [&](const std::vector<double>& w) {
      const std::vector<double> table =
          ReferenceTable(w, config, offset, kLength);
      double sum = 0;
      for (int64_t b = 0; b < kBatch; ++b)
        for (int64_t t = 0; t < kLength; ++t)
          for (int64_t c = 0; c < kDim; ++c)
            sum += d_y.at(b, t, c) * table[t * kDim + c];
      return sum;
    };
    std::vector<double> analytic = testing::Cast<double>(d_weight);
    for (double& g : analytic) g -= 0.5;  // accumulated onto 0.5
    EXPECT_TRUE(
        testing::GradientMatches(loss, weight_d, analytic, {1e-5, 1e-5}))
        << "l2norm " << config.l2norm_embed;

    // Table's gradient: [T, C] without a batch.
    std::vector<float> d_table = RandomUniformVector(kLength * kDim, 5);
    std::vector<float> d_weight_table(weight.size(), 0.0f);
    ASSERT_TRUE(
        positions
            .Backward(*ctx_, weight_view, offset,
                      TensorView<const float>(d_table.data(), {kLength, kDim}),
                      TensorView<float>(d_weight_table.data(), {kMaxLen, kDim}))
            .ok());
    const std::vector<double> w = testing::Cast<double>(d_table);
    EXPECT_TRUE(testing::GradientMatches(
        [&](const std::vector<double>& v) {
          return testing::Dot(w, ReferenceTable(v, config, offset, kLength));
        },
        weight_d, testing::Cast<double>(d_weight_table), {1e-5, 1e-5}));
  }
}

TEST_F(AbsolutePositionsTest, InitStatistics) {
  for (bool l2norm : {false, true}) {
    AbsolutePositionsConfig config{.max_seq_len = 512, .dim = 64};
    config.l2norm_embed = l2norm;
    const AbsolutePositions positions(config);
    ASSERT_EQ(positions.ParamShapes().size(), 1u);
    EXPECT_EQ(positions.ParamShapes()[0].name, "emb.weight");
    EXPECT_EQ(positions.ParamShapes()[0].shape, (Shape{512, 64}));
    std::vector<float> weight(512 * 64);
    ASSERT_TRUE(
        positions
            .InitParams(*ctx_, TensorView<float>(weight.data(), {512, 64}), 7)
            .ok());
    double sum = 0, sum_sq = 0;
    for (float v : weight) {
      sum += v;
      sum_sq += double(v) * v;
    }
    const double mean = sum / weight.size();
    const double std = std::sqrt(sum_sq / weight.size() - mean * mean);
    const double expected_std = l2norm ? 1e-5 : 1.0;
    EXPECT_NEAR(mean, 0.0, 0.03 * expected_std);
    EXPECT_NEAR(std, expected_std, 0.03 * expected_std);
  }
}

TEST_F(AbsolutePositionsTest, BadInputsAreErrors) {
  const AbsolutePositions positions(Configs()[0]);
  std::vector<float> weight(kMaxLen * kDim), buffer(200);
  const TensorView<const float> weight_view(weight.data(), {kMaxLen, kDim});
  auto expect_error = [](const absl::Status& status, const char* text) {
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_NE(status.message().find(text), std::string::npos) << status;
  };
  // T longer than max_seq_len, and an offset that runs past it.
  expect_error(positions.Forward(
                   *ctx_, weight_view, 0,
                   TensorView<float>(buffer.data(), {1, kMaxLen + 1, kDim})),
               "do not fit max_seq_len = 9");
  expect_error(
      positions.Forward(*ctx_, weight_view, 5,
                        TensorView<float>(buffer.data(), {1, 5, kDim})),
      "[5, 10)");
  expect_error(
      positions.Forward(*ctx_, weight_view, -1,
                        TensorView<float>(buffer.data(), {1, 2, kDim})),
      "do not fit");
  expect_error(positions.Forward(*ctx_, weight_view, 0,
                                 TensorView<float>(buffer.data(), {1, 2, 6})),
               "x must be [B, T, C = 7]");
  expect_error(positions.Forward(
                   *ctx_, TensorView<const float>(weight.data(), {kMaxLen, 6}),
                   0, TensorView<float>(buffer.data(), {1, 2, kDim})),
               "emb.weight must be");
  expect_error(positions.Forward(*ctx_, weight_view, 0,
                                 TensorView<float>(nullptr, {1, 2, kDim})),
               "null data");
  expect_error(
      positions.Forward(*ctx_, weight_view, 0,
                        TensorView<float>(buffer.data(), {1, 2, kDim},
                                          {2 * kDim * 2, kDim * 2, 2})),
      "unit stride");
  expect_error(positions.Forward(*ctx_, weight_view, 0,
                                 TensorView<float>(buffer.data(), {1, 2, kDim},
                                                   Device::Cuda())),
               "must be on the CPU");
  expect_error(positions.Table(*ctx_, weight_view, 0,
                               TensorView<float>(buffer.data(), {kDim})),
               "table must be [T, C]");
  expect_error(
      positions.Backward(*ctx_, weight_view, 0,
                         TensorView<const float>(buffer.data(), {1, 2, kDim}),
                         TensorView<float>(buffer.data(), {kMaxLen - 1, kDim})),
      "d_weight must be");
  const AbsolutePositions empty({.max_seq_len = 0, .dim = kDim});
  expect_error(empty.Forward(*ctx_, weight_view, 0,
                             TensorView<float>(buffer.data(), {1, 1, kDim})),
               "max_seq_len and dim must be >= 1");
}

}  // namespace
}  // namespace ftx
