// T5 relative bias: bucket tables of the default configurations at distances
// up to and beyond max_distance (hand-derived boundaries), a double reference
// of the bucketing over several configurations, the bias values with a query
// offset, the weight gradient by central differences (alone and through full
// attention's head bias), init statistics, bad inputs.
#include "layers/t5_relative_bias.h"

#include <cmath>
#include <limits>
#include <memory>
#include <utility>
#include <vector>

#include "attention/full.h"
#include "gtest/gtest.h"
#include "kernels/reference/attention_ref.h"
#include "tests/util/attention_data.h"
#include "tests/util/gradcheck.h"
#include "tests/util/random.h"
#include "tests/util/tolerance.h"

namespace ftx {
namespace {

using ::ftx::testing::AllNear;
using ::ftx::testing::RandomUniformVector;

// _relative_position_bucket in double. Exact bucket boundaries (distances
// n = max_exact (max_distance / max_exact)^(k / (nb - max_exact))) land on
// integers that double rounding may put a hair below, so the truncation gets
// 1e-9 of slack: the mathematically exact bucket.
int64_t ReferenceBucket(int64_t relative_position, bool causal,
                        int64_t num_buckets, int64_t max_distance) {
  int64_t n = -relative_position, base = 0;
  if (!causal) {
    num_buckets /= 2;
    if (n < 0) base = num_buckets;
    n = std::abs(n);
  } else {
    n = std::max<int64_t>(n, 0);
  }
  const int64_t max_exact = num_buckets / 2;
  if (n < max_exact) return base + n;
  const double large = std::log(double(n) / max_exact) /
                       std::log(double(max_distance) / max_exact) *
                       (num_buckets - max_exact);
  return base + std::min<int64_t>(max_exact + int64_t(std::floor(large + 1e-9)),
                                  num_buckets - 1);
}

// Buckets of distance n = q - k >= 0 from boundary lists {first n, bucket}.
int64_t FromBoundaries(const std::vector<std::pair<int64_t, int64_t>>& bounds,
                       int64_t n) {
  int64_t bucket = 0;
  for (const auto& [first, value] : bounds) {
    if (n >= first) bucket = value;
  }
  return bucket;
}

class T5RelativeBiasTest : public ::testing::Test {
 protected:
  void SetUp() override { ctx_ = Context::Create({.num_threads = 2}).value(); }
  std::unique_ptr<Context> ctx_;
};

TEST_F(T5RelativeBiasTest, DefaultBucketTables) {
  // Non-causal, 32 buckets, max distance 128: 16 per direction, exact below 8,
  // then 8 + floor(2 log2(n / 8)): boundaries at n = 8 sqrt(2)^k.
  const std::vector<std::pair<int64_t, int64_t>> bidirectional = {
      {0, 0},   {1, 1},   {2, 2},   {3, 3},  {4, 4},   {5, 5},
      {6, 6},   {7, 7},   {8, 8},   {12, 9}, {16, 10}, {23, 11},
      {32, 12}, {46, 13}, {64, 14}, {91, 15}};
  // Causal, 32 buckets: exact below 16, then 16 + floor(16 log_8(n / 16)):
  // boundaries at n = 16 8^(k / 16).
  std::vector<std::pair<int64_t, int64_t>> causal;
  for (int64_t n = 0; n <= 16; ++n) causal.push_back({n, n});
  const int64_t causal_bounds[] = {19, 21, 24, 27, 31, 35, 40, 46,
                                   52, 59, 67, 77, 87, 99, 113};
  for (int64_t k = 0; k < 15; ++k) causal.push_back({causal_bounds[k], 17 + k});

  for (int64_t n = 0; n <= 1000; n += (n < 200 ? 1 : 97)) {
    // A key n positions in the past: relative position -n.
    EXPECT_EQ(T5RelativeBias::Bucket(-n, false, 32, 128),
              FromBoundaries(bidirectional, n))
        << "non-causal past n = " << n;
    // The same distance in the future uses the second half.
    if (n > 0) {
      EXPECT_EQ(T5RelativeBias::Bucket(n, false, 32, 128),
                16 + FromBoundaries(bidirectional, n))
          << "non-causal future n = " << n;
    }
    EXPECT_EQ(T5RelativeBias::Bucket(-n, true, 32, 128),
              FromBoundaries(causal, n))
        << "causal past n = " << n;
    // Causal: every future key shares bucket 0.
    EXPECT_EQ(T5RelativeBias::Bucket(n, true, 32, 128), 0);
  }
  // Far beyond max_distance the last bucket of each half is kept.
  EXPECT_EQ(T5RelativeBias::Bucket(-100000, false, 32, 128), 15);
  EXPECT_EQ(T5RelativeBias::Bucket(100000, false, 32, 128), 31);
  EXPECT_EQ(T5RelativeBias::Bucket(-100000, true, 32, 128), 31);
}

TEST_F(T5RelativeBiasTest, BucketsMatchDoubleReference) {
  struct Setup {
    int64_t buckets, distance;
  };
  for (const Setup& setup : {Setup{32, 128}, Setup{16, 64}, Setup{8, 20},
                             Setup{64, 1000}, Setup{4, 4}, Setup{30, 100}}) {
    for (bool causal : {false, true}) {
      for (int64_t rel = -2000; rel <= 2000; ++rel) {
        ASSERT_EQ(
            T5RelativeBias::Bucket(rel, causal, setup.buckets, setup.distance),
            ReferenceBucket(rel, causal, setup.buckets, setup.distance))
            << "rel " << rel << " causal " << causal << " buckets "
            << setup.buckets << " max_distance " << setup.distance;
      }
    }
  }
}

TEST_F(T5RelativeBiasTest, ForwardMatchesReference) {
  const int64_t heads = 3, num_buckets = 8, max_distance = 20;
  for (bool causal : {false, true}) {
    const T5RelativeBias t5 =
        T5RelativeBias::Create(
            {.heads = heads,
             .causal = causal,
             .num_buckets = num_buckets,
             .max_distance = max_distance,
             .scale = T5RelativeBias::XTransformersScale(16)})
            .value();
    EXPECT_EQ(t5.config().scale, 4.0f);
    const std::vector<float> weight =
        RandomUniformVector(num_buckets * heads, 1, -2, 2);
    for (int64_t offset : {0, 17}) {
      const int64_t queries = 7, keys = 40, row = keys + 3;
      std::vector<float> storage(heads * queries * row, 123.0f);
      ASSERT_TRUE(
          t5.Forward(
                *ctx_,
                TensorView<const float>(weight.data(), {num_buckets, heads}),
                TensorView<float>(storage.data(), {heads, queries, keys},
                                  {queries * row, row, 1}),
                offset)
              .ok());
      std::vector<double> expected(storage.size(), 123.0);
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t l = 0; l < queries; ++l)
          for (int64_t s = 0; s < keys; ++s) {
            const int64_t bucket = ReferenceBucket(s - (offset + l), causal,
                                                   num_buckets, max_distance);
            expected[(h * queries + l) * row + s] =
                4.0 * weight[bucket * heads + h];
          }
      EXPECT_TRUE(AllNear(storage, expected, {0, 1e-7}))
          << "causal " << causal << " offset " << offset;
    }
  }
}

TEST_F(T5RelativeBiasTest, BackwardMatchesCentralDifferences) {
  const int64_t heads = 2, num_buckets = 8, max_distance = 16, queries = 5,
                keys = 30;
  for (bool causal : {false, true}) {
    const T5RelativeBias t5 =
        T5RelativeBias::Create({.heads = heads,
                                .causal = causal,
                                .num_buckets = num_buckets,
                                .max_distance = max_distance,
                                .scale = 1.5f})
            .value();
    const std::vector<float> d_bias =
        RandomUniformVector(heads * queries * keys, 2);
    std::vector<float> d_weight(num_buckets * heads, 0.5f);
    const int64_t offset = 3;
    ASSERT_TRUE(
        t5.Backward(
              *ctx_,
              TensorView<const float>(d_bias.data(), {heads, queries, keys}),
              TensorView<float>(d_weight.data(), {num_buckets, heads}), offset)
            .ok());
    auto loss = [&](const std::vector<double>& w) {
      double sum = 0;
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t l = 0; l < queries; ++l)
          for (int64_t s = 0; s < keys; ++s) {
            const int64_t bucket = ReferenceBucket(s - offset - l, causal,
                                                   num_buckets, max_distance);
            sum += d_bias[(h * queries + l) * keys + s] * 1.5 *
                   w[bucket * heads + h];
          }
      return sum;
    };
    std::vector<double> analytic = testing::Cast<double>(d_weight);
    for (double& g : analytic) g -= 0.5;
    EXPECT_TRUE(testing::GradientMatches(
        loss, RandomUniformVector<double>(num_buckets * heads, 3), analytic,
        {1e-5, 1e-5}))
        << "causal " << causal;
  }
}

TEST_F(T5RelativeBiasTest, GradientFlowsThroughFullAttention) {
  // out = full_attention(Q, K, V, head_bias = T5(W)): d_W from the attention's
  // d_head_bias and T5's backward, against central differences of the double
  // reference in W.
  const testing::AttentionCase c{2, 5, 5, 2, 3, 4};
  const testing::AttentionData data(c, 11);
  const int64_t num_buckets = 6;
  const T5RelativeBias t5 = T5RelativeBias::Create({.heads = c.h,
                                                    .causal = true,
                                                    .num_buckets = num_buckets,
                                                    .max_distance = 8,
                                                    .scale = 0.8f})
                                .value();
  const std::vector<float> weight = RandomUniformVector(num_buckets * c.h, 12);
  const TensorView<const float> weight_view(weight.data(), {num_buckets, c.h});
  std::vector<float> bias(c.h * c.l * c.s), d_bias(bias.size(), 0.0f);
  ASSERT_TRUE(t5.Forward(*ctx_, weight_view,
                         TensorView<float>(bias.data(), {c.h, c.l, c.s}))
                  .ok());
  AttentionInputs inputs = data.Inputs();
  inputs.attn_mask = AttnMask::Causal();
  inputs.head_bias = TensorView<const float>(bias.data(), {c.h, c.l, c.s});
  FullAttention attention;
  AttentionCache cache;
  std::vector<float> out(data.OutSize());
  ASSERT_TRUE(attention
                  .Forward(*ctx_, inputs,
                           TensorView<float>(out.data(), data.OutShape()),
                           &cache)
                  .ok());
  const std::vector<float> d_out = RandomUniformVector(out.size(), 13);
  std::vector<float> d_q(c.n * c.l * c.h * c.e), d_k(c.n * c.s * c.h * c.e),
      d_v(c.n * c.s * c.h * c.d);
  ASSERT_TRUE(
      attention
          .Backward(*ctx_, inputs, cache,
                    TensorView<const float>(d_out.data(), data.OutShape()),
                    {TensorView<float>(d_q.data(), {c.n, c.l, c.h, c.e}),
                     TensorView<float>(d_k.data(), {c.n, c.s, c.h, c.e}),
                     TensorView<float>(d_v.data(), {c.n, c.s, c.h, c.d}),
                     TensorView<float>(d_bias.data(), {c.h, c.l, c.s})})
          .ok());
  std::vector<float> d_weight(weight.size(), 0.0f);
  ASSERT_TRUE(
      t5.Backward(*ctx_,
                  TensorView<const float>(d_bias.data(), {c.h, c.l, c.s}),
                  TensorView<float>(d_weight.data(), {num_buckets, c.h}))
          .ok());

  const std::vector<double> q = testing::AttentionData::Dense(inputs.queries);
  const std::vector<double> k = testing::AttentionData::Dense(inputs.keys);
  const std::vector<double> v = testing::AttentionData::Dense(inputs.values);
  const std::vector<double> w(d_out.begin(), d_out.end());
  auto loss = [&](const std::vector<double>& table) {
    std::vector<double> result(data.OutSize());
    for (int64_t h = 0; h < c.h; ++h) {
      // Head h alone: [N, T, 1, *] slices.
      std::vector<double> q_h, k_h, v_h;
      for (int64_t n = 0; n < c.n; ++n) {
        for (int64_t l = 0; l < c.l; ++l)
          for (int64_t e = 0; e < c.e; ++e)
            q_h.push_back(q[((n * c.l + l) * c.h + h) * c.e + e]);
        for (int64_t s = 0; s < c.s; ++s) {
          for (int64_t e = 0; e < c.e; ++e)
            k_h.push_back(k[((n * c.s + s) * c.h + h) * c.e + e]);
          for (int64_t d = 0; d < c.d; ++d)
            v_h.push_back(v[((n * c.s + s) * c.h + h) * c.d + d]);
        }
      }
      std::vector<double> out_h(c.n * c.l * c.d);
      reference::FullAttention<double>(
          {c.n, c.l, c.s, 1, c.e, c.d}, q_h.data(), k_h.data(), v_h.data(),
          1.0 / std::sqrt(double(c.e)),
          [&](int64_t l, int64_t s) {
            if (s > l) return -std::numeric_limits<double>::infinity();
            return 0.8 *
                   table[ReferenceBucket(s - l, true, num_buckets, 8) * c.h +
                         h];
          },
          {}, out_h.data());
      for (int64_t n = 0; n < c.n; ++n)
        for (int64_t l = 0; l < c.l; ++l)
          for (int64_t d = 0; d < c.d; ++d)
            result[((n * c.l + l) * c.h + h) * c.d + d] =
                out_h[(n * c.l + l) * c.d + d];
    }
    return testing::Dot(w, result);
  };
  EXPECT_TRUE(testing::GradientMatches(loss, testing::Cast<double>(weight),
                                       testing::Cast<double>(d_weight),
                                       {2e-5, 1e-4}));
}

TEST_F(T5RelativeBiasTest, InitStatisticsAndNames) {
  const T5RelativeBias t5 =
      T5RelativeBias::Create(
          {.heads = 64, .num_buckets = 128, .max_distance = 256})
          .value();
  ASSERT_EQ(t5.ParamShapes().size(), 1u);
  EXPECT_EQ(t5.ParamShapes()[0].name, "relative_attention_bias.weight");
  EXPECT_EQ(t5.ParamShapes()[0].shape, (Shape{128, 64}));
  std::vector<float> weight(128 * 64);
  ASSERT_TRUE(
      t5.InitParams(*ctx_, TensorView<float>(weight.data(), {128, 64}), 5)
          .ok());
  double sum = 0, sum_sq = 0;
  for (float v : weight) {
    sum += v;
    sum_sq += double(v) * v;
  }
  const double mean = sum / weight.size();
  EXPECT_NEAR(mean, 0.0, 0.03);
  EXPECT_NEAR(std::sqrt(sum_sq / weight.size() - mean * mean), 1.0, 0.03);
  EXPECT_FLOAT_EQ(T5RelativeBias::XTransformersScale(64), 8.0f);
}

TEST_F(T5RelativeBiasTest, BadInputsAreErrors) {
  auto expect_error = [](const absl::Status& status, const char* text) {
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_NE(status.message().find(text), std::string::npos) << status;
  };
  expect_error(T5RelativeBias::Create(
                   {.heads = 2, .num_buckets = 64, .max_distance = 32})
                   .status(),
               "num_buckets (64) must be <= max_distance (32)");
  expect_error(T5RelativeBias::Create({.heads = 0}).status(),
               "heads must be >= 1");
  expect_error(T5RelativeBias::Create({.heads = 2, .num_buckets = 3}).status(),
               "num_buckets must be >= 4 when non-causal");
  const T5RelativeBias t5 = T5RelativeBias::Create({.heads = 2}).value();
  std::vector<float> weight(32 * 2), buffer(200);
  const TensorView<const float> weight_view(weight.data(), {32, 2});
  expect_error(t5.Forward(*ctx_, weight_view,
                          TensorView<float>(buffer.data(), {3, 4, 5})),
               "the bias must be [H = 2, L, S]");
  expect_error(
      t5.Forward(*ctx_, TensorView<const float>(weight.data(), {2, 32}),
                 TensorView<float>(buffer.data(), {2, 4, 5})),
      "relative_attention_bias.weight must be a contiguous CPU [32, 2]");
  expect_error(
      t5.Forward(*ctx_, weight_view,
                 TensorView<float>(buffer.data(), {2, 4, 5}, {40, 10, 2})),
      "unit stride");
  expect_error(
      t5.Backward(*ctx_, TensorView<const float>(buffer.data(), {2, 4, 5}),
                  TensorView<float>(weight.data(), {31, 2})),
      "d_weight must be a contiguous CPU [32, 2]");
}

}  // namespace
}  // namespace ftx
