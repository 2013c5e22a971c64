// "clustered", "improved-clustered" and "causal-improved-clustered" against the
// scalar reference (kernels/reference/clustered_ref.h) in double given the same
// planes and initial centroids: forward over shapes, bits, lengths and strided
// inputs; backward against central differences with the discrete choices
// asserted unchanged; structural properties that hold whatever the hashing (one
// cluster = attention with the mean query, duplicate query groups = exact
// attention, topk >= S = exact full / causal attention, future-only top keys =
// zero output); seeds, dropout, specs, bad inputs.
#include "attention/clustered.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "attention/lsh.h"
#include "gtest/gtest.h"
#include "kernels/reference/attention_ref.h"
#include "kernels/reference/clustered_ref.h"
#include "tests/util/attention_data.h"
#include "tests/util/gradcheck.h"
#include "tests/util/random.h"
#include "tests/util/tolerance.h"

namespace ftx {
namespace {

using ::ftx::testing::AllNear;
using ::ftx::testing::AttentionCase;
using ::ftx::testing::AttentionData;
using ::ftx::testing::RandomNormalVector;
using ::ftx::testing::RandomUniformVector;

constexpr ClusteredVariant kVariants[] = {ClusteredVariant::kClustered,
                                          ClusteredVariant::kImproved,
                                          ClusteredVariant::kCausalImproved};

AttnMask MaskFor(ClusteredVariant variant) {
  return variant == ClusteredVariant::kCausalImproved ? AttnMask::Causal()
                                                      : AttnMask::All();
}

reference::ClusteredKind KindOf(ClusteredVariant variant) {
  switch (variant) {
    case ClusteredVariant::kClustered:
      return reference::ClusteredKind::kClustered;
    case ClusteredVariant::kImproved:
      return reference::ClusteredKind::kImproved;
    case ClusteredVariant::kCausalImproved:
      return reference::ClusteredKind::kCausalImproved;
  }
  return reference::ClusteredKind::kClustered;
}

// Planes and initial centroid positions given to both the mechanism and the
// reference.
struct FixedChoices {
  std::vector<float> planes;       // [bits, E + 1]
  std::vector<int64_t> positions;  // [C]
};

FixedChoices MakeFixedChoices(const ClusteredAttentionOptions& options,
                              int64_t qk_dim, int64_t queries, uint64_t seed) {
  FixedChoices fixed{RandomNormalVector(options.bits * (qk_dim + 1), seed),
                     ChooseCentroidIndices(seed, options.clusters, queries)};
  if (!options.hash_bias) {
    for (int64_t b = 0; b < options.bits; ++b)
      fixed.planes[b * (qk_dim + 1) + qk_dim] = 0;
  }
  return fixed;
}

std::unique_ptr<ClusteredAttention> MakeFixed(
    ClusteredVariant variant, const ClusteredAttentionOptions& options,
    const FixedChoices& fixed, int64_t qk_dim) {
  auto attention = ClusteredAttention::Create(variant, options).value();
  EXPECT_TRUE(attention
                  ->SetPlanes(TensorView<const float>(
                      fixed.planes.data(), {options.bits, qk_dim + 1}))
                  .ok());
  EXPECT_TRUE(attention->SetInitialCentroids(fixed.positions).ok());
  return attention;
}

// The reference on dense double tensors with the mechanism's choices.
std::vector<double> Reference(const AttentionCase& c, ClusteredVariant variant,
                              const ClusteredAttentionOptions& options,
                              const FixedChoices& fixed,
                              const AttentionInputs& inputs,
                              const std::vector<double>& q,
                              const std::vector<double>& k,
                              const std::vector<double>& v,
                              reference::ClusteredChoices* choices = nullptr) {
  reference::ClusteredConfig config;
  config.kind = KindOf(variant);
  config.iterations = options.iterations;
  config.bits = options.bits;
  config.planes = fixed.planes.data();
  config.initial_indices = fixed.positions;
  config.reseed_seed = CombineSeeds(options.seed, inputs.seed);
  config.topk = options.topk;
  config.temp = options.softmax_temp.has_value() ? *options.softmax_temp
                                                 : 1.0 / std::sqrt(double(c.e));
  std::vector<double> out(c.n * c.l * c.h * c.d);
  reference::ClusteredAttention<double>(
      {c.n, c.l, c.s, c.h, c.e, c.d}, q.data(), k.data(), v.data(), config,
      inputs.query_lengths.lengths, inputs.key_lengths.lengths, out.data(),
      choices);
  return out;
}

std::vector<float> RunForward(const Context& ctx, Attention& attention,
                              const AttentionInputs& inputs,
                              const AttentionCase& c,
                              AttentionCache* cache = nullptr) {
  std::vector<float> out(c.n * c.l * c.h * c.d, NAN);
  const absl::Status status = attention.Forward(
      ctx, inputs, TensorView<float>(out.data(), {c.n, c.l, c.h, c.d}), cache);
  EXPECT_TRUE(status.ok()) << status;
  return out;
}

class ClusteredAttentionTest : public ::testing::Test {
 protected:
  void SetUp() override { ctx_ = Context::Create({.num_threads = 3}).value(); }
  std::unique_ptr<Context> ctx_;
};

TEST_F(ClusteredAttentionTest, ForwardMatchesReference) {
  const AttentionCase cases[] = {{1, 1, 1, 1, 1, 1},
                                 {2, 9, 7, 3, 4, 5},
                                 {2, 17, 13, 2, 8, 3},
                                 {1, 33, 40, 2, 5, 7}};
  for (ClusteredVariant variant : kVariants) {
    for (const AttentionCase& c : cases) {
      const AttentionData data(c, 51, 3, -1.5, 1.5);
      const std::vector<double> q = AttentionData::Dense(data.queries());
      const std::vector<double> k = AttentionData::Dense(data.keys());
      const std::vector<double> v = AttentionData::Dense(data.values());
      for (int64_t bits : {63, 7}) {
        for (int64_t topk : {3, 100}) {
          for (bool padded : {false, true}) {
            ClusteredAttentionOptions options;
            options.clusters = std::min<int64_t>(3, c.l);
            options.bits = bits;
            options.hash_bias = bits == 63;
            options.topk = topk;
            options.iterations = topk == 3 ? 10 : 2;
            options.seed = 5;
            AttentionInputs inputs = data.Inputs();
            inputs.attn_mask = MaskFor(variant);
            inputs.seed = 3;
            if (padded) {
              inputs.query_lengths.lengths.assign(c.n, c.l);
              inputs.key_lengths.lengths.assign(c.n, c.s);
              inputs.query_lengths.lengths[c.n - 1] = (c.l + 1) / 2;
              inputs.key_lengths.lengths[0] = std::max<int64_t>(1, c.s - 3);
            }
            const FixedChoices fixed =
                MakeFixedChoices(options, c.e, c.l, 100 + bits);
            auto attention = MakeFixed(variant, options, fixed, c.e);
            const std::vector<float> out =
                RunForward(*ctx_, *attention, inputs, c);
            const std::vector<double> expected =
                Reference(c, variant, options, fixed, inputs, q, k, v);
            EXPECT_TRUE(AllNear(out, expected, {1e-5, 1e-4}))
                << attention->name() << " case " << c.n << "x" << c.l << "x"
                << c.s << " bits " << bits << " topk " << topk << " padded "
                << padded;
          }
        }
      }
    }
  }
}

TEST_F(ClusteredAttentionTest, BackwardMatchesCentralDifferencesOfReference) {
  const AttentionCase c{2, 6, 7, 2, 3, 4};
  const AttentionData data(c, 61, 2, -1.5, 1.5);
  for (ClusteredVariant variant : kVariants) {
    ClusteredAttentionOptions options;
    options.clusters = 2;
    options.bits = 8;
    options.topk = 3;
    AttentionInputs inputs = data.Inputs();
    inputs.attn_mask = MaskFor(variant);
    inputs.query_lengths.lengths = {6, 4};
    inputs.key_lengths.lengths = {7, 5};
    const FixedChoices fixed = MakeFixedChoices(options, c.e, c.l, 17);
    auto attention = MakeFixed(variant, options, fixed, c.e);
    reference::ClusteredChoices base;
    Reference(c, variant, options, fixed, inputs,
              AttentionData::Dense(data.queries()),
              AttentionData::Dense(data.keys()),
              AttentionData::Dense(data.values()), &base);
    int64_t changed = 0;
    testing::ExpectGradientsMatch(
        *ctx_, *attention, data, inputs,
        [&](const std::vector<double>& q, const std::vector<double>& k,
            const std::vector<double>& v) {
          reference::ClusteredChoices choices;
          auto out =
              Reference(c, variant, options, fixed, inputs, q, k, v, &choices);
          if (!(choices == base)) ++changed;
          return out;
        });
    EXPECT_EQ(changed, 0)
        << attention->name()
        << ": a perturbation changed the hashes, clusters or top-k sets";
  }
}

// Dense contiguous inputs that a test can perturb.
struct DenseInputs {
  AttentionCase c;
  std::vector<float> q, k, v;
  AttentionInputs Inputs(const AttentionInputs& like) const {
    AttentionInputs inputs = like;
    inputs.queries = TensorView<const float>(q.data(), {c.n, c.l, c.h, c.e});
    inputs.keys = TensorView<const float>(k.data(), {c.n, c.s, c.h, c.e});
    inputs.values = TensorView<const float>(v.data(), {c.n, c.s, c.h, c.d});
    return inputs;
  }
};

// Tensors of a cache that hold discrete choices (assignment, top keys).
std::vector<int32_t> DiscreteState(const AttentionCache& cache) {
  std::vector<int32_t> state;
  for (const Tensor& tensor : cache.saved) {
    if (tensor.dtype() != DType::kI32 || tensor.raw_data() == nullptr) continue;
    const int32_t* data = tensor.data<int32_t>();
    state.insert(state.end(), data, data + tensor.NumElements());
  }
  return state;
}

TEST_F(ClusteredAttentionTest, DropoutBackwardMatchesDirectionalDifferences) {
  // With dropout the forward is still a fixed function of (Q, K, V) for one
  // seed: <Backward(w), delta> must equal the derivative of <w, Forward> along
  // delta.
  const AttentionCase c{1, 8, 9, 2, 4, 3};
  for (ClusteredVariant variant : kVariants) {
    ClusteredAttentionOptions options;
    options.clusters = 3;
    options.bits = 12;
    options.topk = 4;
    options.attention_dropout = 0.3f;
    const FixedChoices fixed = MakeFixedChoices(options, c.e, c.l, 23);
    auto attention = MakeFixed(variant, options, fixed, c.e);
    DenseInputs dense{c, RandomUniformVector(c.n * c.l * c.h * c.e, 1),
                      RandomUniformVector(c.n * c.s * c.h * c.e, 2),
                      RandomUniformVector(c.n * c.s * c.h * c.d, 3)};
    AttentionInputs like;
    like.attn_mask = MaskFor(variant);
    like.training = true;
    like.seed = 41;
    const std::vector<float> w = RandomUniformVector(c.n * c.l * c.h * c.d, 4);
    AttentionCache cache;
    RunForward(*ctx_, *attention, dense.Inputs(like), c, &cache);
    std::vector<float> d_q(dense.q.size()), d_k(dense.k.size()),
        d_v(dense.v.size());
    ASSERT_TRUE(
        attention
            ->Backward(*ctx_, dense.Inputs(like), cache,
                       TensorView<const float>(w.data(), {c.n, c.l, c.h, c.d}),
                       {TensorView<float>(d_q.data(), {c.n, c.l, c.h, c.e}),
                        TensorView<float>(d_k.data(), {c.n, c.s, c.h, c.e}),
                        TensorView<float>(d_v.data(), {c.n, c.s, c.h, c.d})})
            .ok());
    const std::vector<float> dq_dir = RandomUniformVector(dense.q.size(), 5);
    const std::vector<float> dk_dir = RandomUniformVector(dense.k.size(), 6);
    const std::vector<float> dv_dir = RandomUniformVector(dense.v.size(), 7);
    double analytic = 0;
    for (size_t i = 0; i < d_q.size(); ++i)
      analytic += double(d_q[i]) * dq_dir[i];
    for (size_t i = 0; i < d_k.size(); ++i)
      analytic += double(d_k[i]) * dk_dir[i];
    for (size_t i = 0; i < d_v.size(); ++i)
      analytic += double(d_v[i]) * dv_dir[i];
    const float step = 1e-3f;
    double loss[2];
    for (int side = 0; side < 2; ++side) {
      const float sign = side == 0 ? 1.0f : -1.0f;
      DenseInputs moved = dense;
      for (size_t i = 0; i < moved.q.size(); ++i)
        moved.q[i] += sign * step * dq_dir[i];
      for (size_t i = 0; i < moved.k.size(); ++i)
        moved.k[i] += sign * step * dk_dir[i];
      for (size_t i = 0; i < moved.v.size(); ++i)
        moved.v[i] += sign * step * dv_dir[i];
      AttentionCache moved_cache;
      const std::vector<float> out =
          RunForward(*ctx_, *attention, moved.Inputs(like), c, &moved_cache);
      ASSERT_EQ(DiscreteState(moved_cache), DiscreteState(cache))
          << "the step changed the clusters or top-k sets";
      loss[side] = 0;
      for (size_t i = 0; i < out.size(); ++i)
        loss[side] += double(out[i]) * w[i];
    }
    const double numeric = (loss[0] - loss[1]) / (2 * step);
    EXPECT_NEAR(analytic, numeric, 2e-3 + 1e-2 * std::fabs(numeric))
        << attention->name();
  }
}

TEST_F(ClusteredAttentionTest, OneClusterIsAttentionWithTheMeanQuery) {
  const AttentionCase c{2, 7, 9, 3, 5, 4};
  const AttentionData data(c, 71, 1);
  ClusteredAttentionOptions options;
  options.clusters = 1;
  options.seed = 9;
  auto attention =
      ClusteredAttention::Create(ClusteredVariant::kClustered, options).value();
  AttentionInputs inputs = data.Inputs();
  inputs.query_lengths.lengths = {7, 3};
  inputs.key_lengths.lengths = {9, 6};
  const std::vector<float> out = RunForward(*ctx_, *attention, inputs, c);
  const std::vector<double> q = AttentionData::Dense(data.queries());
  for (int64_t n = 0; n < c.n; ++n) {
    const int64_t valid = inputs.query_lengths.lengths[n];
    // One query per head: the mean of the valid queries.
    std::vector<double> mean(c.h * c.e, 0.0);
    for (int64_t l = 0; l < valid; ++l) {
      for (int64_t i = 0; i < c.h * c.e; ++i)
        mean[i] += q[(n * c.l + l) * c.h * c.e + i] / valid;
    }
    std::vector<double> keys(AttentionData::Dense(data.keys()));
    std::vector<double> values(AttentionData::Dense(data.values()));
    std::vector<double> expected(c.h * c.d);
    reference::FullAttention<double>(
        {1, 1, c.s, c.h, c.e, c.d}, mean.data(),
        keys.data() + n * c.s * c.h * c.e, values.data() + n * c.s * c.h * c.d,
        1.0 / std::sqrt(double(c.e)), [](int64_t, int64_t) { return 0.0; },
        {inputs.key_lengths.lengths[n]}, expected.data());
    for (int64_t l = 0; l < c.l; ++l) {
      const float* row = out.data() + (n * c.l + l) * c.h * c.d;
      if (l < valid) {
        EXPECT_TRUE(AllNear(row, expected.data(), c.h * c.d, {1e-5, 1e-4}))
            << n << " " << l;
      } else {
        for (int64_t i = 0; i < c.h * c.d; ++i) EXPECT_EQ(row[i], 0.0f);
      }
    }
  }
}

TEST_F(ClusteredAttentionTest, DuplicateQueryGroupsGiveExactAttention) {
  // Queries come in 3 groups of identical vectors and the k-means starts at one
  // member of each group: every cluster is one group, so Q_c is each member
  // itself.
  const AttentionCase c{2, 12, 10, 2, 6, 5};
  const AttentionData data(c, 81, 0);
  const std::vector<double> k = AttentionData::Dense(data.keys());
  const std::vector<double> v = AttentionData::Dense(data.values());
  std::vector<float> q(c.n * c.l * c.h * c.e);
  const std::vector<float> prototypes =
      RandomUniformVector(c.n * 3 * c.h * c.e, 82);
  for (int64_t n = 0; n < c.n; ++n) {
    for (int64_t l = 0; l < c.l; ++l) {
      const int64_t group = (l * 5) % 3;
      for (int64_t i = 0; i < c.h * c.e; ++i) {
        q[(n * c.l + l) * c.h * c.e + i] =
            prototypes[(n * 3 + group) * c.h * c.e + i];
      }
    }
  }
  for (ClusteredVariant variant :
       {ClusteredVariant::kClustered, ClusteredVariant::kImproved}) {
    ClusteredAttentionOptions options;
    options.clusters = 3;
    options.topk = 2;
    options.seed = 4;
    auto attention = ClusteredAttention::Create(variant, options).value();
    ASSERT_TRUE(
        attention->SetInitialCentroids({0, 1, 2}).ok());  // groups 0, 2, 1
    AttentionInputs inputs = data.Inputs();
    inputs.queries = TensorView<const float>(q.data(), {c.n, c.l, c.h, c.e});
    inputs.key_lengths.lengths = {10, 7};
    const std::vector<float> out = RunForward(*ctx_, *attention, inputs, c);
    std::vector<double> expected(out.size());
    const std::vector<double> qd(q.begin(), q.end());
    reference::FullAttention<double>(
        {c.n, c.l, c.s, c.h, c.e, c.d}, qd.data(), k.data(), v.data(),
        1.0 / std::sqrt(double(c.e)), [](int64_t, int64_t) { return 0.0; },
        inputs.key_lengths.lengths, expected.data());
    EXPECT_TRUE(AllNear(out, expected, {1e-5, 1e-4})) << attention->name();
  }
}

TEST_F(ClusteredAttentionTest, TopkCoveringAllKeysIsExactAttention) {
  const AttentionCase c{2, 13, 13, 3, 5, 4};
  const AttentionData data(c, 91, 2, -2, 2);
  const std::vector<double> q = AttentionData::Dense(data.queries());
  const std::vector<double> k = AttentionData::Dense(data.keys());
  const std::vector<double> v = AttentionData::Dense(data.values());
  for (ClusteredVariant variant :
       {ClusteredVariant::kImproved, ClusteredVariant::kCausalImproved}) {
    for (int64_t topk : {13, 50}) {
      ClusteredAttentionOptions options;
      options.clusters = 4;
      options.topk = topk;
      options.seed = 12;
      auto attention = ClusteredAttention::Create(variant, options).value();
      AttentionInputs inputs = data.Inputs();
      inputs.attn_mask = MaskFor(variant);
      // Key padding does not disturb improved-clustered;
      // causal-improved-clustered would shrink topk to the shortest key length,
      // so it gets none.
      if (variant == ClusteredVariant::kImproved)
        inputs.key_lengths.lengths = {13, 8};
      const std::vector<float> out = RunForward(*ctx_, *attention, inputs, c);
      std::vector<double> expected(out.size());
      const AttnMask mask = inputs.attn_mask;
      reference::FullAttention<double>(
          {c.n, c.l, c.s, c.h, c.e, c.d}, q.data(), k.data(), v.data(),
          1.0 / std::sqrt(double(c.e)),
          [mask](int64_t l, int64_t s) { return double(mask.At(l, s)); },
          inputs.key_lengths.lengths, expected.data());
      EXPECT_TRUE(AllNear(out, expected, {1e-5, 1e-4}))
          << attention->name() << " topk " << topk;
    }
  }
}

TEST_F(ClusteredAttentionTest, CausalQueriesWhoseTopKeysAreAllFutureGetZero) {
  // One key dominates every centroid's scores: with topk = 1 it is every
  // cluster's only key, in the future of every query but the last.
  const AttentionCase c{1, 6, 6, 1, 4, 3};
  std::vector<float> q = RandomUniformVector(c.l * c.e, 3, 0.5, 1.0);
  std::vector<float> k = RandomUniformVector(c.s * c.e, 4, -0.1, 0.1);
  const std::vector<float> v = RandomUniformVector(c.s * c.d, 5);
  for (int64_t e = 0; e < c.e; ++e) k[(c.s - 1) * c.e + e] = 5.0f;
  ClusteredAttentionOptions options;
  options.clusters = 2;
  options.topk = 1;
  auto attention =
      ClusteredAttention::Create(ClusteredVariant::kCausalImproved, options)
          .value();
  AttentionInputs inputs;
  inputs.queries = TensorView<const float>(q.data(), {1, c.l, 1, c.e});
  inputs.keys = TensorView<const float>(k.data(), {1, c.s, 1, c.e});
  inputs.values = TensorView<const float>(v.data(), {1, c.s, 1, c.d});
  inputs.attn_mask = AttnMask::Causal();
  const std::vector<float> out = RunForward(*ctx_, *attention, inputs, c);
  for (int64_t l = 0; l + 1 < c.l; ++l) {
    for (int64_t d = 0; d < c.d; ++d) EXPECT_EQ(out[l * c.d + d], 0.0f) << l;
  }
  for (int64_t d = 0; d < c.d; ++d) {
    EXPECT_FLOAT_EQ(out[(c.l - 1) * c.d + d], v[(c.s - 1) * c.d + d]);
  }
}

TEST_F(ClusteredAttentionTest, SeedsMakeHashingReproducible) {
  const AttentionCase c{2, 24, 11, 2, 6, 4};
  const AttentionData data(c, 101, 1);
  for (ClusteredVariant variant : kVariants) {
    ClusteredAttentionOptions options;
    options.clusters = 5;
    options.topk = 3;
    options.seed = 1;
    auto first = ClusteredAttention::Create(variant, options).value();
    auto second = ClusteredAttention::Create(variant, options).value();
    options.seed = 2;
    auto other = ClusteredAttention::Create(variant, options).value();
    AttentionInputs inputs = data.Inputs();
    inputs.attn_mask = MaskFor(variant);
    const std::vector<float> a = RunForward(*ctx_, *first, inputs, c);
    EXPECT_EQ(a, RunForward(*ctx_, *second, inputs, c)) << first->name();
    EXPECT_EQ(a, RunForward(*ctx_, *first, inputs, c)) << "repeated call";
    EXPECT_NE(a, RunForward(*ctx_, *other, inputs, c)) << "seed option";
    inputs.seed = 77;
    EXPECT_NE(a, RunForward(*ctx_, *first, inputs, c)) << "call seed";
  }
}

TEST_F(ClusteredAttentionTest, DropoutIsSeededAndOnlyInTraining) {
  const AttentionCase c{1, 16, 16, 2, 4, 4};
  const AttentionData data(c, 111, 0);
  for (ClusteredVariant variant : kVariants) {
    ClusteredAttentionOptions options;
    options.clusters = 4;
    options.topk = 5;
    options.attention_dropout = 0.5f;
    auto attention = ClusteredAttention::Create(variant, options).value();
    AttentionInputs inputs = data.Inputs();
    inputs.attn_mask = MaskFor(variant);
    inputs.seed = 7;
    const std::vector<float> eval = RunForward(*ctx_, *attention, inputs, c);
    inputs.training = true;
    const std::vector<float> a = RunForward(*ctx_, *attention, inputs, c);
    EXPECT_EQ(a, RunForward(*ctx_, *attention, inputs, c)) << attention->name();
    EXPECT_NE(a, eval) << attention->name();
  }
}

TEST_F(ClusteredAttentionTest, SpecsFollowFastTransformersRegistry) {
  const AttentionSpec specs[] = {ClusteredAttentionSpec(),
                                 ImprovedClusteredAttentionSpec(),
                                 CausalImprovedClusteredAttentionSpec()};
  const char* names[] = {"clustered", "improved-clustered",
                         "causal-improved-clustered"};
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(specs[i].name, names[i]);
    std::map<std::string, const OptionSpec*> options;
    for (const OptionSpec& option : specs[i].options)
      options[option.name] = &option;
    ASSERT_TRUE(options.count("clusters"));
    EXPECT_TRUE(options["clusters"]->required);
    EXPECT_EQ(std::get<int64_t>(*options["iterations"]->default_value), 10);
    EXPECT_EQ(std::get<int64_t>(*options["bits"]->default_value), 63);
    EXPECT_TRUE(std::get<bool>(*options["hash_bias"]->default_value));
    EXPECT_FALSE(options["softmax_temp"]->default_value.has_value());
    EXPECT_DOUBLE_EQ(
        std::get<double>(*options["attention_dropout"]->default_value), 0.1);
    EXPECT_EQ(std::get<int64_t>(*options["seed"]->default_value), 0);
    EXPECT_EQ(options.count("topk"), i == 0 ? 0u : 1u);
    if (i > 0) {
      EXPECT_EQ(std::get<int64_t>(*options["topk"]->default_value), 32);
    }

    AttentionOptions values;
    values.Set("clusters", int64_t{7});
    values.Set("bits", int64_t{20});
    values.Set("topk", int64_t{5});
    values.Set("softmax_temp", 0.5);
    auto built = specs[i].factory(values, {});
    ASSERT_TRUE(built.ok()) << built.status();
    EXPECT_STREQ((*built)->name(), names[i]);
    const auto& clustered = static_cast<ClusteredAttention&>(**built);
    EXPECT_EQ(clustered.options().clusters, 7);
    EXPECT_EQ(clustered.options().bits, 20);
    EXPECT_EQ(clustered.options().iterations, 10);
    EXPECT_FLOAT_EQ(*clustered.options().softmax_temp, 0.5f);
    EXPECT_FLOAT_EQ(clustered.options().attention_dropout, 0.1f);

    values.Set("bits", int64_t{64});
    EXPECT_EQ(specs[i].factory(values, {}).status().code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(specs[i].factory(AttentionOptions(), {}).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
}

TEST_F(ClusteredAttentionTest, BadInputsAreErrors) {
  const auto create_error = [](ClusteredAttentionOptions options) {
    return ClusteredAttention::Create(ClusteredVariant::kImproved, options)
        .status();
  };
  ClusteredAttentionOptions options;
  options.clusters = 2;
  EXPECT_TRUE(create_error(options).ok());
  options.bits = 64;
  EXPECT_NE(create_error(options).message().find("bits = 64"),
            std::string::npos);
  options.bits = 0;
  EXPECT_EQ(create_error(options).code(), absl::StatusCode::kInvalidArgument);
  options.bits = 63;
  options.clusters = 0;
  EXPECT_NE(create_error(options).message().find("clusters = 0"),
            std::string::npos);
  options.clusters = 2;
  options.topk = 0;
  EXPECT_NE(create_error(options).message().find("topk = 0"),
            std::string::npos);
  options.topk = 32;
  options.iterations = -1;
  EXPECT_NE(create_error(options).message().find("iterations = -1"),
            std::string::npos);
  options.iterations = 10;
  options.attention_dropout = 1.0f;
  EXPECT_NE(create_error(options).message().find("attention_dropout"),
            std::string::npos);
  options.attention_dropout = 0.1f;

  std::vector<float> buffer(2000);
  const TensorView<const float> q(buffer.data(), {1, 4, 2, 3});
  const TensorView<const float> k(buffer.data(), {1, 5, 2, 3});
  const TensorView<const float> v(buffer.data(), {1, 5, 2, 6});
  const TensorView<float> out(buffer.data() + 1000, {1, 4, 2, 6});
  const auto forward = [&](ClusteredVariant variant,
                           const ClusteredAttentionOptions& o,
                           const AttentionInputs& inputs) {
    auto attention = ClusteredAttention::Create(variant, o).value();
    return attention->Forward(*ctx_, inputs, out, nullptr);
  };
  AttentionInputs inputs{.queries = q, .keys = k, .values = v};
  EXPECT_TRUE(forward(ClusteredVariant::kClustered, options, inputs).ok());

  // More clusters than queries.
  ClusteredAttentionOptions many = options;
  many.clusters = 5;
  absl::Status status = forward(ClusteredVariant::kClustered, many, inputs);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("clusters = 5 exceeds the 4 queries"),
            std::string::npos)
      << status;

  // attn_mask must be all-ones (clustered, improved) or causal
  // (causal-improved).
  std::vector<float> additive(20);
  for (const AttnMask& mask :
       {AttnMask::Causal(),
        AttnMask::Additive(TensorView<const float>(additive.data(), {4, 5}))}) {
    AttentionInputs masked = inputs;
    masked.attn_mask = mask;
    for (ClusteredVariant variant :
         {ClusteredVariant::kClustered, ClusteredVariant::kImproved}) {
      status = forward(variant, options, masked);
      EXPECT_NE(status.message().find("only an all-ones attn_mask"),
                std::string::npos)
          << status;
    }
  }
  status = forward(ClusteredVariant::kCausalImproved, options, inputs);
  EXPECT_NE(status.message().find("only the lower-triangular attn_mask"),
            std::string::npos)
      << status;
  AttentionInputs shifted = inputs;
  shifted.attn_mask = AttnMask::Causal(1);
  EXPECT_EQ(forward(ClusteredVariant::kCausalImproved, options, shifted).code(),
            absl::StatusCode::kInvalidArgument);

  // Fixed planes and positions.
  auto attention =
      ClusteredAttention::Create(ClusteredVariant::kClustered, options).value();
  status =
      attention->SetPlanes(TensorView<const float>(buffer.data(), {62, 4}));
  EXPECT_NE(status.message().find("planes must be [bits, E + 1] = [63, E + 1]"),
            std::string::npos)
      << status;
  ASSERT_TRUE(
      attention->SetPlanes(TensorView<const float>(buffer.data(), {63, 5}))
          .ok());
  status = attention->Forward(*ctx_, inputs, out, nullptr);
  EXPECT_NE(status.message().find("expected [bits, E + 1] = [63, 4]"),
            std::string::npos)
      << status;
  attention =
      ClusteredAttention::Create(ClusteredVariant::kClustered, options).value();
  EXPECT_NE(attention->SetInitialCentroids({0}).message().find(
                "1 positions for clusters = 2"),
            std::string::npos);
  EXPECT_EQ(attention->SetInitialCentroids({0, -1}).code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(attention->SetInitialCentroids({0, 4}).ok());
  status = attention->Forward(*ctx_, inputs, out, nullptr);
  EXPECT_NE(status.message().find("position [1] = 4 is not below L = 4"),
            std::string::npos)
      << status;

  // Shapes, strides, null data (through the shared validation).
  AttentionInputs wrong_keys = inputs;
  wrong_keys.keys = TensorView<const float>(buffer.data(), {1, 5, 2, 4});
  status = forward(ClusteredVariant::kClustered, options, wrong_keys);
  EXPECT_NE(status.message().find("keys"), std::string::npos) << status;
  AttentionInputs strided = inputs;
  strided.queries =
      TensorView<const float>(buffer.data(), {1, 4, 2, 3}, {48, 12, 6, 2});
  status = forward(ClusteredVariant::kImproved, options, strided);
  EXPECT_NE(status.message().find("unit stride"), std::string::npos) << status;
  AttentionInputs null_values = inputs;
  null_values.values = TensorView<const float>(nullptr, {1, 5, 2, 6});
  status = forward(ClusteredVariant::kClustered, options, null_values);
  EXPECT_NE(status.message().find("values has null data"), std::string::npos)
      << status;

  // Backward without a matching cache.
  attention =
      ClusteredAttention::Create(ClusteredVariant::kImproved, options).value();
  std::vector<float> grad(1000);
  status = attention->Backward(*ctx_, inputs, AttentionCache(), out,
                               {TensorView<float>(grad.data(), {1, 4, 2, 3}),
                                TensorView<float>(grad.data(), {1, 5, 2, 3}),
                                TensorView<float>(grad.data(), {1, 5, 2, 6})});
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
}

}  // namespace
}  // namespace ftx
