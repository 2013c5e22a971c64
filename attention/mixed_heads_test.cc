// linear-attention-transformer's mixed local + global heads against the scalar
// references of kernels/reference/local_ref.h in double: forward over head
// splits, windows, causal blind spots, key lengths and strided inputs; the
// blind spot's zero first bucket; backward against central differences of the
// reference; dropout on the local heads only; bad inputs and the registry
// entry.
#include "attention/mixed_heads.h"

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "attention/builder.h"
#include "gtest/gtest.h"
#include "kernels/reference/local_ref.h"
#include "tests/util/attention_data.h"
#include "tests/util/random.h"
#include "tests/util/tolerance.h"

namespace ftx {
namespace {

using ::ftx::testing::AllNear;
using ::ftx::testing::AttentionCase;
using ::ftx::testing::AttentionData;

std::vector<float> RunForward(const Context& ctx, Attention& attention,
                              const AttentionData& data,
                              const AttentionInputs& inputs) {
  std::vector<float> out(data.OutSize(), NAN);
  const absl::Status status = attention.Forward(
      ctx, inputs, TensorView<float>(out.data(), data.OutShape()), nullptr);
  EXPECT_TRUE(status.ok()) << status;
  return out;
}

std::vector<double> Reference(const AttentionCase& c,
                              const std::vector<double>& q,
                              const std::vector<double>& k,
                              const std::vector<double>& v,
                              const MixedLocalLinearOptions& options,
                              const std::vector<int64_t>& key_lengths) {
  std::vector<double> out(c.n * c.l * c.h * c.d);
  reference::MixedLocalLinearAttention<double>(
      {c.n, c.l, c.s, c.h, c.e, c.d}, q.data(), k.data(), v.data(),
      options.n_local_attn_heads, options.local_attn_window_size,
      options.causal, options.blindspot_size, key_lengths, out.data());
  return out;
}

class MixedHeadsTest : public ::testing::Test {
 protected:
  void SetUp() override { ctx_ = Context::Create({.num_threads = 2}).value(); }
  std::unique_ptr<Context> ctx_;
};

TEST_F(MixedHeadsTest, ForwardMatchesReference) {
  const AttentionCase c{2, 8, 8, 3, 5, 4};
  const AttentionData data(c, 101, 2, -2, 2);
  const std::vector<double> q = AttentionData::Dense(data.queries());
  const std::vector<double> k = AttentionData::Dense(data.keys());
  const std::vector<double> v = AttentionData::Dense(data.values());
  for (const int64_t local_heads : {0, 1, 2, 3}) {
    for (const int64_t window : {1, 2, 4, 8}) {
      for (const bool causal : {false, true}) {
        for (const int64_t blindspot : {1, 2, 4, 8}) {
          if (!causal && blindspot > 1) continue;
          for (const bool padded : {false, true}) {
            const MixedLocalLinearOptions options{
                .n_local_attn_heads = local_heads,
                .local_attn_window_size = window,
                .causal = causal,
                .blindspot_size = blindspot};
            AttentionInputs inputs = data.Inputs();
            if (padded) inputs.key_lengths.lengths = {5, 8};
            if (causal && padded) inputs.attn_mask = AttnMask::Causal();
            MixedLocalLinearAttention attention(options);
            EXPECT_TRUE(AllNear(
                RunForward(*ctx_, attention, data, inputs),
                Reference(c, q, k, v, options, inputs.key_lengths.lengths),
                {2e-6, 2e-5}))
                << "local heads " << local_heads << " window " << window
                << " causal " << causal << " blindspot " << blindspot
                << " padded " << padded;
          }
        }
      }
    }
  }
}

TEST_F(MixedHeadsTest, GlobalOnlyCrossAttentionMatchesReference) {
  // LAT's context layers: non-causal global heads over S != L keys with a
  // context mask.
  const AttentionCase c{2, 5, 9, 2, 4, 6};
  const AttentionData data(c, 103, 1, -2, 2);
  AttentionInputs inputs = data.Inputs();
  inputs.key_lengths.lengths = {
      9, 0};  // batch 1 has no context at all: zero output
  MixedLocalLinearAttention attention({});
  std::vector<double> expected(data.OutSize());
  reference::LatLinearAttention<double>(
      {c.n, c.l, c.s, c.h, c.e, c.d},
      AttentionData::Dense(data.queries()).data(),
      AttentionData::Dense(data.keys()).data(),
      AttentionData::Dense(data.values()).data(), inputs.key_lengths.lengths,
      expected.data());
  const std::vector<float> out = RunForward(*ctx_, attention, data, inputs);
  EXPECT_TRUE(AllNear(out, expected, {2e-6, 2e-5}));
  for (int64_t i = c.l * c.h * c.d; i < data.OutSize(); ++i)
    EXPECT_EQ(out[i], 0.0f);
}

TEST_F(MixedHeadsTest, BlindSpotHidesTheQuerysOwnBucket) {
  // With B > 1 the global heads see only earlier buckets: the first bucket's
  // output is 0, and a key changes the outputs of later buckets only, not of
  // its own.
  const AttentionCase c{1, 12, 12, 2, 3, 3};
  const AttentionData data(c, 107, 0);
  MixedLocalLinearAttention attention({.causal = true, .blindspot_size = 4});
  const std::vector<float> out =
      RunForward(*ctx_, attention, data, data.Inputs());
  for (int64_t i = 0; i < 4 * c.h * c.d; ++i) EXPECT_EQ(out[i], 0.0f) << i;
  const std::vector<double> dense = AttentionData::Dense(data.keys());
  std::vector<float> keys(dense.begin(), dense.end());
  keys[(5 * c.h + 0) * c.e + 1] += 1.0f;  // key 5 (bucket 1), head 0
  AttentionInputs changed = data.Inputs();
  changed.keys = TensorView<const float>(keys.data(), {c.n, c.s, c.h, c.e});
  const std::vector<float> after = RunForward(*ctx_, attention, data, changed);
  for (int64_t i = 0; i < c.l; ++i) {
    for (int64_t d = 0; d < c.d; ++d) {
      const int64_t index = (i * c.h + 0) * c.d + d;
      if (i < 8) {
        EXPECT_EQ(out[index], after[index]) << "query " << i;
      } else {
        EXPECT_NE(out[index], after[index]) << "query " << i;
      }
    }
  }
}

TEST_F(MixedHeadsTest, BackwardMatchesCentralDifferencesOfReference) {
  const AttentionCase c{2, 6, 6, 3, 4, 3};
  const AttentionData data(c, 109, 2, -1.5, 1.5);
  const MixedLocalLinearOptions configs[] = {
      {.n_local_attn_heads = 0},
      {.n_local_attn_heads = 1, .local_attn_window_size = 2},
      {.n_local_attn_heads = 2, .local_attn_window_size = 3, .causal = true},
      {.n_local_attn_heads = 1,
       .local_attn_window_size = 2,
       .causal = true,
       .blindspot_size = 2},
      {.n_local_attn_heads = 0, .causal = true, .blindspot_size = 3},
      {.n_local_attn_heads = 3, .local_attn_window_size = 6, .causal = true}};
  for (const MixedLocalLinearOptions& options : configs) {
    for (const bool padded : {false, true}) {
      AttentionInputs inputs = data.Inputs();
      if (padded) inputs.key_lengths.lengths = {6, 4};
      MixedLocalLinearAttention attention(options);
      testing::ExpectGradientsMatch(
          *ctx_, attention, data, inputs,
          [&](const std::vector<double>& q, const std::vector<double>& k,
              const std::vector<double>& v) {
            return Reference(c, q, k, v, options, inputs.key_lengths.lengths);
          });
    }
  }
}

TEST_F(MixedHeadsTest, CausalSweepAcrossChunksMatchesReference) {
  // L = 130 spans several 64-row chunks of the causal sweep: buckets of 1, 2
  // and 5 (several per chunk), 65 (one per chunk) and 130 (a single bucket).
  const AttentionCase c{1, 130, 130, 2, 3, 2};
  const AttentionData data(c, 137, 1, -1.5, 1.5);
  const std::vector<double> q = AttentionData::Dense(data.queries());
  const std::vector<double> k = AttentionData::Dense(data.keys());
  const std::vector<double> v = AttentionData::Dense(data.values());
  for (const int64_t blindspot : {1, 2, 5, 65, 130}) {
    AttentionInputs inputs = data.Inputs();
    inputs.key_lengths.lengths = {101};
    const MixedLocalLinearOptions options{.n_local_attn_heads = 1,
                                          .local_attn_window_size = 10,
                                          .causal = true,
                                          .blindspot_size = blindspot};
    MixedLocalLinearAttention attention(options);
    EXPECT_TRUE(
        AllNear(RunForward(*ctx_, attention, data, inputs),
                Reference(c, q, k, v, options, inputs.key_lengths.lengths),
                {2e-6, 2e-5}))
        << "blindspot " << blindspot;
    if (blindspot == 2 || blindspot == 65) {
      testing::ExpectGradientsMatch(
          *ctx_, attention, data, inputs,
          [&](const std::vector<double>& q, const std::vector<double>& k,
              const std::vector<double>& v) {
            return Reference(c, q, k, v, options, inputs.key_lengths.lengths);
          });
    }
  }
}

TEST_F(MixedHeadsTest, ClampedDenominatorBackward) {
  // Keys around -12: phi(q) . sum exp(k) < 1e-3, so every causal denominator is
  // clamped and passes no gradient (torch's clamp), while the numerator still
  // does.
  const AttentionCase c{1, 6, 6, 2, 3, 2};
  const AttentionData data(c, 131, 1, -13, -11);
  const MixedLocalLinearOptions options{.causal = true};
  MixedLocalLinearAttention attention(options);
  testing::ExpectGradientsMatch(
      *ctx_, attention, data, data.Inputs(),
      [&](const std::vector<double>& q, const std::vector<double>& k,
          const std::vector<double>& v) {
        return Reference(c, q, k, v, options, {});
      });
}

TEST_F(MixedHeadsTest, GlobalOnlyCrossAttentionBackward) {
  const AttentionCase c{2, 4, 7, 2, 3, 5};
  const AttentionData data(c, 113, 1, -1.5, 1.5);
  AttentionInputs inputs = data.Inputs();
  inputs.key_lengths.lengths = {7, 3};
  MixedLocalLinearAttention attention({});
  testing::ExpectGradientsMatch(
      *ctx_, attention, data, inputs,
      [&](const std::vector<double>& q, const std::vector<double>& k,
          const std::vector<double>& v) {
        std::vector<double> out(data.OutSize());
        reference::LatLinearAttention<double>(
            {c.n, c.l, c.s, c.h, c.e, c.d}, q.data(), k.data(), v.data(),
            inputs.key_lengths.lengths, out.data());
        return out;
      });
}

TEST_F(MixedHeadsTest, DropoutReachesOnlyTheLocalHeads) {
  const AttentionCase c{1, 8, 8, 2, 3, 3};
  const AttentionData data(c, 127, 0);
  MixedLocalLinearAttention attention({.n_local_attn_heads = 1,
                                       .local_attn_window_size = 4,
                                       .attention_dropout = 0.5f});
  AttentionInputs inputs = data.Inputs();
  const std::vector<float> eval = RunForward(*ctx_, attention, data, inputs);
  inputs.training = true;
  inputs.seed = 3;
  const std::vector<float> train = RunForward(*ctx_, attention, data, inputs);
  EXPECT_EQ(train, RunForward(*ctx_, attention, data, inputs));
  bool local_changed = false;
  for (int64_t l = 0; l < c.l; ++l) {
    for (int64_t d = 0; d < c.d; ++d) {
      local_changed |=
          train[(l * c.h + 0) * c.d + d] != eval[(l * c.h + 0) * c.d + d];
      EXPECT_EQ(train[(l * c.h + 1) * c.d + d], eval[(l * c.h + 1) * c.d + d]);
    }
  }
  EXPECT_TRUE(local_changed);
}

void ExpectInvalid(const absl::Status& status, const std::string& needle) {
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(status.message().find(needle), std::string::npos) << status;
}

TEST_F(MixedHeadsTest, BadInputsAreErrors) {
  std::vector<float> buffer(2000);
  const TensorView<const float> q(buffer.data(), {1, 4, 2, 3});
  const TensorView<const float> v(buffer.data(), {1, 4, 2, 6});
  const TensorView<float> out(buffer.data() + 1000, {1, 4, 2, 6});
  const AttentionInputs ok{.queries = q, .keys = q, .values = v};
  auto forward = [&](const MixedLocalLinearOptions& options,
                     const AttentionInputs& inputs) {
    MixedLocalLinearAttention attention(options);
    return attention.Forward(*ctx_, inputs, out, nullptr);
  };
  ExpectInvalid(forward({.n_local_attn_heads = 3}, ok),
                "exceeds the number of heads 2");
  ExpectInvalid(forward({.n_local_attn_heads = -1}, ok), "n_local_attn_heads");
  ExpectInvalid(
      forward({.n_local_attn_heads = 1, .local_attn_window_size = 3}, ok),
      "divisible by local_attn_window_size 3");
  ExpectInvalid(forward({.local_attn_window_size = 0}, ok),
                "local_attn_window_size");
  ExpectInvalid(forward({.causal = true, .blindspot_size = 3}, ok),
                "divisible by blindspot_size 3");
  ExpectInvalid(forward({.blindspot_size = 0}, ok), "blindspot_size");
  ExpectInvalid(forward({.attention_dropout = 1.5f}, ok), "attention_dropout");
  AttentionInputs causal_mask = ok;
  causal_mask.attn_mask = AttnMask::Causal();
  ExpectInvalid(forward({}, causal_mask), "causal = true");
  std::vector<float> mask(16);
  AttentionInputs additive = ok;
  additive.attn_mask =
      AttnMask::Additive(TensorView<const float>(mask.data(), {4, 4}));
  ExpectInvalid(forward({.causal = true}, additive), "additive attn_mask");
  AttentionInputs cross = ok;
  cross.keys = TensorView<const float>(buffer.data(), {1, 6, 2, 3});
  cross.values = TensorView<const float>(buffer.data(), {1, 6, 2, 6});
  ExpectInvalid(forward({.causal = true}, cross), "L == S");
  EXPECT_TRUE(forward({}, cross).ok());
  AttentionInputs wrong_values = ok;
  wrong_values.values = TensorView<const float>(buffer.data(), {1, 5, 2, 6});
  ExpectInvalid(forward({}, wrong_values), "values");

  MixedLocalLinearAttention attention(
      {.n_local_attn_heads = 1, .local_attn_window_size = 2});
  std::vector<float> grad(2000);
  AttentionCache empty;
  EXPECT_EQ(attention
                .Backward(*ctx_, ok, empty, out,
                          {TensorView<float>(grad.data(), {1, 4, 2, 3}),
                           TensorView<float>(grad.data() + 100, {1, 4, 2, 3}),
                           TensorView<float>(grad.data() + 200, {1, 4, 2, 6})})
                .code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(MixedHeadsTest, RegistryEntryBuildsAndValidates) {
  AttentionRegistry registry;
  ASSERT_TRUE(registry.Register(MixedLocalLinearAttentionSpec()).ok());
  AttentionBuilder builder(registry);
  absl::StatusOr<std::unique_ptr<Attention>> built =
      builder.Build("mixed-local-linear");
  ASSERT_TRUE(built.ok()) << built.status();
  const MixedLocalLinearOptions defaults =
      static_cast<MixedLocalLinearAttention&>(**built).options();
  EXPECT_EQ(defaults.n_local_attn_heads, 0);
  EXPECT_EQ(defaults.local_attn_window_size, 128);
  EXPECT_FALSE(defaults.causal);
  EXPECT_EQ(defaults.blindspot_size, 1);
  ASSERT_TRUE(builder.Set("n_local_attn_heads", int64_t{2}).ok());
  ASSERT_TRUE(builder.Set("causal", true).ok());
  ASSERT_TRUE(builder.Set("blindspot_size", int64_t{64}).ok());
  built = builder.Build("mixed-local-linear");
  ASSERT_TRUE(built.ok()) << built.status();
  EXPECT_EQ(
      static_cast<MixedLocalLinearAttention&>(**built).options().blindspot_size,
      64);
  ASSERT_TRUE(builder.Set("blindspot_size", int64_t{0}).ok());
  ExpectInvalid(builder.Build("mixed-local-linear").status(), "blindspot_size");
}

}  // namespace
}  // namespace ftx
