// Forgetful causal mask: counts and positions of masked keys, determinism in
// the seed, evaluation mode, the additive matrix, the "full" mechanism under
// the mask against a double reference (forward and central-difference
// gradient of the queries), bad arguments.
#include "attention/forgetful_mask.h"

#include <cmath>
#include <vector>

#include "attention/full.h"
#include "gtest/gtest.h"
#include "tests/util/gradcheck.h"
#include "tests/util/random.h"
#include "tests/util/tolerance.h"

namespace ftx {
namespace {

TEST(ForgetfulMaskTest, CountsPositionsAndSeeds) {
  const ForgetfulMaskConfig config{.mask_prob = 0.3f};
  const int64_t N = 4, n = 13;
  EXPECT_EQ(ForgetfulMaskCount(config, n), 4);  // int(14 * 0.3)
  auto keep = ForgetfulKeyMask(config, N, n, /*training=*/true, 42);
  ASSERT_TRUE(keep.ok());
  for (int64_t b = 0; b < N; ++b) {
    EXPECT_EQ((*keep)[b * n], 1) << "token 0 is never masked";
    int64_t masked = 0;
    for (int64_t j = 0; j < n; ++j) masked += (*keep)[b * n + j] == 0;
    EXPECT_EQ(masked, 4);
  }
  EXPECT_NE(std::vector<uint8_t>(keep->begin(), keep->begin() + n),
            std::vector<uint8_t>(keep->begin() + n, keep->begin() + 2 * n));
  EXPECT_EQ(*ForgetfulKeyMask(config, N, n, true, 42), *keep);
  EXPECT_NE(*ForgetfulKeyMask(config, N, n, true, 43), *keep);
  const auto evaluation = ForgetfulKeyMask(config, N, n, false, 42);
  ASSERT_TRUE(evaluation.ok());
  for (uint8_t v : *evaluation) EXPECT_EQ(v, 1);
  // p close to 1 masks all but token 0 (x-transformers would mask all n).
  EXPECT_EQ(ForgetfulMaskCount({.mask_prob = 0.95f}, 5), 4);
}

TEST(ForgetfulMaskTest, AdditiveMatrix) {
  const std::vector<uint8_t> keep = {1, 0, 1, 0};
  std::vector<float> additive(16);
  ASSERT_TRUE(ForgetfulCausalAdditiveMask(
                  {}, keep, TensorView<float>(additive.data(), {4, 4}))
                  .ok());
  const float inf = INFINITY;
  const std::vector<float> expected = {0, -inf, -inf, -inf,  //
                                       0, -inf, -inf, -inf,  //
                                       0, -inf, 0,    -inf,  //
                                       0, -inf, 0,    -inf};
  EXPECT_EQ(additive, expected);
  ASSERT_TRUE(
      ForgetfulCausalAdditiveMask({.keep_diagonal = true}, keep,
                                  TensorView<float>(additive.data(), {4, 4}))
          .ok());
  EXPECT_EQ(additive[1 * 4 + 1], 0.0f);
  EXPECT_EQ(additive[3 * 4 + 3], 0.0f);
  EXPECT_EQ(additive[3 * 4 + 1], -inf);
}

// softmax over the visible keys j <= i with keep[j], per head.
std::vector<double> Reference(const std::vector<double>& q,
                              const std::vector<double>& k,
                              const std::vector<double>& v,
                              const std::vector<uint8_t>& keep, int64_t n,
                              int64_t H, int64_t E) {
  std::vector<double> out(n * H * E, 0.0);
  const double t = 1 / std::sqrt(static_cast<double>(E));
  for (int64_t h = 0; h < H; ++h) {
    for (int64_t i = 0; i < n; ++i) {
      std::vector<double> p(n, 0.0);
      double max_score = -1e300, total = 0;
      for (int64_t j = 0; j <= i; ++j) {
        if (!keep[j]) continue;
        double dot = 0;
        for (int64_t e = 0; e < E; ++e)
          dot += q[(i * H + h) * E + e] * k[(j * H + h) * E + e];
        p[j] = t * dot;
        max_score = std::max(max_score, p[j]);
      }
      for (int64_t j = 0; j <= i; ++j) {
        if (keep[j]) total += (p[j] = std::exp(p[j] - max_score));
      }
      for (int64_t j = 0; j <= i; ++j) {
        if (!keep[j]) continue;
        for (int64_t e = 0; e < E; ++e) {
          out[(i * H + h) * E + e] += p[j] / total * v[(j * H + h) * E + e];
        }
      }
    }
  }
  return out;
}

TEST(ForgetfulMaskTest, FullAttentionPerBatchItem) {
  auto ctx = Context::Create({.num_threads = 1}).value();
  const int64_t N = 2, n = 9, H = 2, E = 4;
  const ForgetfulMaskConfig config{.mask_prob = 0.4f};
  auto keep = ForgetfulKeyMask(config, N, n, true, 7);
  ASSERT_TRUE(keep.ok());
  const std::vector<float> q = testing::RandomNormalVector(N * n * H * E, 1);
  const std::vector<float> k = testing::RandomNormalVector(N * n * H * E, 2);
  const std::vector<float> v = testing::RandomNormalVector(N * n * H * E, 3);
  const TensorView<const float> q_all(q.data(), {N, n, H, E});
  const TensorView<const float> k_all(k.data(), {N, n, H, E});
  const TensorView<const float> v_all(v.data(), {N, n, H, E});
  FullAttention full({.attention_dropout = 0.0f});
  for (int64_t b = 0; b < N; ++b) {
    const std::vector<uint8_t> row(keep->begin() + b * n,
                                   keep->begin() + (b + 1) * n);
    std::vector<float> additive(n * n);
    ASSERT_TRUE(ForgetfulCausalAdditiveMask(
                    config, row, TensorView<float>(additive.data(), {n, n}))
                    .ok());
    AttentionInputs inputs;
    inputs.queries = q_all.Slice(0, b, b + 1);
    inputs.keys = k_all.Slice(0, b, b + 1);
    inputs.values = v_all.Slice(0, b, b + 1);
    inputs.attn_mask =
        AttnMask::Additive(TensorView<const float>(additive.data(), {n, n}));
    std::vector<float> out(n * H * E);
    AttentionCache cache;
    ASSERT_TRUE(full.Forward(*ctx, inputs,
                             TensorView<float>(out.data(), {1, n, H, E}),
                             &cache)
                    .ok());
    const size_t offset = b * n * H * E;
    auto slice = [&](const std::vector<float>& x) {
      return std::vector<double>(x.begin() + offset,
                                 x.begin() + offset + n * H * E);
    };
    const auto q64 = slice(q), k64 = slice(k), v64 = slice(v);
    EXPECT_TRUE(testing::AllNear(out, Reference(q64, k64, v64, row, n, H, E),
                                 {1e-5, 1e-4}));

    const std::vector<float> d_out =
        testing::RandomUniformVector(out.size(), 4 + b);
    std::vector<float> d_q(out.size()), d_k(out.size()), d_v(out.size());
    ASSERT_TRUE(
        full.Backward(*ctx, inputs, cache,
                      TensorView<const float>(d_out.data(), {1, n, H, E}),
                      {TensorView<float>(d_q.data(), {1, n, H, E}),
                       TensorView<float>(d_k.data(), {1, n, H, E}),
                       TensorView<float>(d_v.data(), {1, n, H, E})})
            .ok());
    const auto w = testing::Cast<double>(d_out);
    EXPECT_TRUE(testing::GradientMatches(
        [&](const auto& x) {
          return testing::Dot(w, Reference(x, k64, v64, row, n, H, E));
        },
        q64, testing::Cast<double>(d_q), {1e-5, 1e-3}));
    // Masked keys receive no gradient.
    for (int64_t j = 0; j < n; ++j) {
      if (row[j]) continue;
      for (int64_t i = 0; i < H * E; ++i) EXPECT_EQ(d_k[j * H * E + i], 0.0f);
    }
  }
}

TEST(ForgetfulMaskTest, BadArgumentsAreInvalidArgument) {
  EXPECT_EQ(
      ForgetfulKeyMask({.mask_prob = 1.0f}, 1, 4, true, 0).status().code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      ForgetfulKeyMask({.mask_prob = -0.1f}, 1, 4, true, 0).status().code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ForgetfulKeyMask({}, 0, 4, true, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<float> additive(9);
  const auto status =
      ForgetfulCausalAdditiveMask({}, std::vector<uint8_t>(4, 1),
                                  TensorView<float>(additive.data(), {3, 3}));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("additive"), std::string::npos);
}

}  // namespace
}  // namespace ftx
