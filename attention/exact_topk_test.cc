// "exact-topk" against the double reference (kernels/reference/topk_aft_ref.h):
// both selections (fast-transformers' exactly-k, x-transformers' ties-kept),
// softmax and entmax-1.5, masks, key lengths, temperatures and strided inputs;
// topk >= S equals "full"; the backward (with and without dropout) against
// central differences of the reference; KeepTopK on hand-made rows; the
// registry spec; bad inputs.
#include "attention/exact_topk.h"

#include <cmath>
#include <limits>
#include <memory>
#include <optional>
#include <vector>

#include "attention/full.h"
#include "gtest/gtest.h"
#include "kernels/reference/topk_aft_ref.h"
#include "tests/util/attention_data.h"
#include "tests/util/gradcheck.h"
#include "tests/util/random.h"
#include "tests/util/tolerance.h"

namespace ftx {
namespace {

using ::ftx::testing::AllNear;
using ::ftx::testing::AttentionCase;
using ::ftx::testing::AttentionData;
using ::ftx::testing::RandomUniformVector;

constexpr float kInf = std::numeric_limits<float>::infinity();

reference::AdditiveMaskFn MaskFunction(const AttnMask& mask) {
  return [mask](int64_t l, int64_t s) {
    return static_cast<double>(mask.At(l, s));
  };
}

reference::ExactTopKConfig Config(const ExactTopKAttentionOptions& options,
                                  int64_t e) {
  return {options.softmax_temp.has_value() ? *options.softmax_temp
                                           : 1.0 / std::sqrt(e),
          options.topk, options.sparse_topk_ties,
          options.use_entmax15 ? reference::RowNormalizer::kEntmax15
                               : reference::RowNormalizer::kSoftmax};
}

std::vector<double> Reference(const AttentionCase& c,
                              const ExactTopKAttentionOptions& options,
                              const std::vector<double>& q,
                              const std::vector<double>& k,
                              const std::vector<double>& v,
                              const AttnMask& mask,
                              const std::vector<int64_t>& key_lengths,
                              const double* probability_scale = nullptr) {
  std::vector<double> out(c.n * c.l * c.h * c.d);
  reference::ExactTopKAttention<double>(
      {c.n, c.l, c.s, c.h, c.e, c.d}, q.data(), k.data(), v.data(),
      Config(options, c.e), MaskFunction(mask), key_lengths, probability_scale,
      out.data());
  return out;
}

class ExactTopKAttentionTest : public ::testing::Test {
 protected:
  void SetUp() override { ctx_ = Context::Create({.num_threads = 2}).value(); }
  std::unique_ptr<Context> ctx_;
};

TEST_F(ExactTopKAttentionTest, KeepTopKOnHandMadeRows) {
  // Three rows of 6 entries, 8 apart (two padding entries of -1 each).
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> rows = {3,     1,   3,     2,     3, 0, -1, -1,  //
                                   -kInf, 5,   -kInf, -kInf, 4, 4, -1, -1,  //
                                   1,     nan, 2,     3,     4, 5, -1, -1};
  struct Case {
    int64_t k;
    TopKSelection selection;
    std::vector<float> row0, row1;
  };
  const Case cases[] = {
      {2,
       TopKSelection::kExactlyK,
       {3, -kInf, 3, -kInf, -kInf, -kInf},
       {-kInf, 5, -kInf, -kInf, 4, -kInf}},
      {2,
       TopKSelection::kKeepTies,
       {3, -kInf, 3, -kInf, 3, -kInf},
       {-kInf, 5, -kInf, -kInf, 4, 4}},
      {4,
       TopKSelection::kExactlyK,
       {3, -kInf, 3, 2, 3, -kInf},
       {-kInf, 5, -kInf, -kInf, 4, 4}},
      {5,
       TopKSelection::kKeepTies,
       {3, 1, 3, 2, 3, -kInf},
       {-kInf, 5, -kInf, -kInf, 4, 4}},
      {6,
       TopKSelection::kExactlyK,
       {3, 1, 3, 2, 3, 0},
       {-kInf, 5, -kInf, -kInf, 4, 4}},
  };
  for (const Case& c : cases) {
    std::vector<float> data = rows;
    ASSERT_TRUE(KeepTopK(*ctx_, TensorView<float>(data.data(), {3, 6}, {8, 1}),
                         c.k, c.selection)
                    .ok());
    EXPECT_EQ(std::vector<float>(data.begin(), data.begin() + 6), c.row0)
        << "k " << c.k;
    EXPECT_EQ(std::vector<float>(data.begin() + 8, data.begin() + 14), c.row1)
        << "k " << c.k;
    for (int i : {6, 7, 14, 15, 22, 23}) EXPECT_EQ(data[i], -1.0f) << "padding";
    EXPECT_EQ(data[16], 1.0f) << "a row holding NaN is left as it is";
    EXPECT_EQ(data[21], 5.0f);
  }
}

TEST_F(ExactTopKAttentionTest, ForwardMatchesReference) {
  const AttentionCase cases[] = {{1, 1, 1, 1, 1, 1},
                                 {2, 5, 7, 3, 4, 6},
                                 {2, 9, 9, 2, 17, 5},
                                 {1, 3, 33, 2, 8, 8}};
  for (const AttentionCase& c : cases) {
    AttentionData qkv(c, 11, 3, -2, 2);
    std::vector<float> additive = RandomUniformVector(c.l * c.s, 5, -1, 1);
    additive[0] = -kInf;
    const AttnMask masks[] = {AttnMask::All(), AttnMask::Causal(),
                              AttnMask::Additive(TensorView<const float>(
                                  additive.data(), {c.l, c.s}))};
    const std::vector<double> q = AttentionData::Dense(qkv.queries());
    const std::vector<double> k = AttentionData::Dense(qkv.keys());
    const std::vector<double> v = AttentionData::Dense(qkv.values());
    for (const AttnMask& mask : masks) {
      for (bool padded : {false, true}) {
        AttentionInputs inputs = qkv.Inputs();
        inputs.attn_mask = mask;
        if (padded) {
          inputs.key_lengths.lengths.assign(c.n, c.s);
          inputs.key_lengths.lengths[0] =
              c.s > 1 ? c.s - 2 : 0;  // may mask a row
        }
        for (int64_t topk : {1, 3, 100}) {
          for (bool ties : {false, true}) {
            for (bool entmax : {false, true}) {
              for (std::optional<float> temp :
                   {std::optional<float>(), std::optional<float>(0.3f)}) {
                const ExactTopKAttentionOptions options{
                    .topk = topk,
                    .softmax_temp = temp,
                    .sparse_topk_ties = ties,
                    .use_entmax15 = entmax};
                ExactTopKAttention attention(options);
                std::vector<float> out(qkv.OutSize(), NAN);
                ASSERT_TRUE(
                    attention
                        .Forward(*ctx_, inputs,
                                 TensorView<float>(out.data(), qkv.OutShape()),
                                 nullptr)
                        .ok());
                EXPECT_TRUE(AllNear(out,
                                    Reference(c, options, q, k, v, mask,
                                              inputs.key_lengths.lengths),
                                    {2e-6, 2e-5}))
                    << "case " << c.n << "x" << c.l << "x" << c.s << " mask "
                    << static_cast<int>(mask.kind()) << " padded " << padded
                    << " topk " << topk << " ties " << ties << " entmax "
                    << entmax;
              }
            }
          }
        }
      }
    }
  }
}

TEST_F(ExactTopKAttentionTest, TopKOfAllKeysEqualsFullAttention) {
  const AttentionCase c{2, 6, 8, 3, 5, 4};
  const AttentionData qkv(c, 41, 2, -2, 2);
  for (const AttnMask& mask : {AttnMask::All(), AttnMask::Causal()}) {
    AttentionInputs inputs = qkv.Inputs();
    inputs.attn_mask = mask;
    inputs.key_lengths.lengths = {8, 5};
    for (bool ties : {false, true}) {
      ExactTopKAttention topk({.topk = c.s, .sparse_topk_ties = ties});
      FullAttention full;
      std::vector<float> a(qkv.OutSize()), b(qkv.OutSize());
      ASSERT_TRUE(topk.Forward(*ctx_, inputs,
                               TensorView<float>(a.data(), qkv.OutShape()),
                               nullptr)
                      .ok());
      ASSERT_TRUE(full.Forward(*ctx_, inputs,
                               TensorView<float>(b.data(), qkv.OutShape()),
                               nullptr)
                      .ok());
      EXPECT_TRUE(AllNear(a, b, {1e-6, 1e-5}));
    }
  }
}

TEST_F(ExactTopKAttentionTest, SelectionsDifferOnTiesAndMaskScaling) {
  // Two keys share one key vector, so their dots tie for every query: with k =
  // 1 fast-transformers' selection keeps one of them, x-transformers' keeps
  // both.
  const AttentionCase c{1, 2, 4, 1, 2, 3};
  std::vector<float> q = {1, 0, 0, 1};
  std::vector<float> k = {2, 2, 2, 2, -1, 0, 0, -1};
  std::vector<float> v = RandomUniformVector(c.s * c.d, 51);
  AttentionInputs inputs{
      .queries = TensorView<const float>(q.data(), {1, 2, 1, 2}),
      .keys = TensorView<const float>(k.data(), {1, 4, 1, 2}),
      .values = TensorView<const float>(v.data(), {1, 4, 1, 3})};
  for (bool ties : {false, true}) {
    ExactTopKAttention attention({.topk = 1, .sparse_topk_ties = ties});
    std::vector<float> out(c.l * c.d);
    AttentionCache cache;
    ASSERT_TRUE(attention
                    .Forward(*ctx_, inputs,
                             TensorView<float>(out.data(), {1, 2, 1, 3}),
                             &cache)
                    .ok());
    const float* p = cache.saved[0].data<float>();  // [H, N, L, S]
    for (int64_t l = 0; l < c.l; ++l) {
      EXPECT_FLOAT_EQ(p[l * c.s + 0], ties ? 0.5f : 1.0f);
      EXPECT_FLOAT_EQ(p[l * c.s + 1], ties ? 0.5f : 0.0f);
      EXPECT_EQ(p[l * c.s + 2], 0.0f);
      EXPECT_EQ(p[l * c.s + 3], 0.0f);
    }
  }
  // A finite additive mask is scaled by t in fast-transformers' form only.
  std::vector<float> bias = {0.0f, 1.0f, 0.0f, 0.0f, 0.0f, 1.0f, 0.0f, 0.0f};
  inputs.attn_mask =
      AttnMask::Additive(TensorView<const float>(bias.data(), {2, 4}));
  for (bool ties : {false, true}) {
    ExactTopKAttention attention(
        {.topk = 2, .softmax_temp = 0.5f, .sparse_topk_ties = ties});
    std::vector<float> out(c.l * c.d);
    AttentionCache cache;
    ASSERT_TRUE(attention
                    .Forward(*ctx_, inputs,
                             TensorView<float>(out.data(), {1, 2, 1, 3}),
                             &cache)
                    .ok());
    // Row 0: dots (2, 2, -1, 0); kept keys 0 and 1 with logits t*2 and t*2 +
    // bias (x-transformers) or t*(2 + bias) (fast-transformers).
    const double gap = ties ? 1.0 : 0.5;
    const float* p = cache.saved[0].data<float>();
    EXPECT_NEAR(p[1], 1.0 / (1.0 + std::exp(-gap)), 1e-6) << "ties " << ties;
  }
}

TEST_F(ExactTopKAttentionTest, BackwardMatchesCentralDifferencesOfReference) {
  const AttentionCase c{2, 4, 7, 2, 3, 5};
  const AttentionData data(c, 21, 2, -2, 2);
  for (const AttnMask& mask : {AttnMask::All(), AttnMask::Causal()}) {
    for (bool ties : {false, true}) {
      for (bool entmax : {false, true}) {
        AttentionInputs inputs = data.Inputs();
        inputs.attn_mask = mask;
        inputs.key_lengths.lengths = {7, 5};
        const ExactTopKAttentionOptions options{.topk = 3,
                                                .softmax_temp = 0.8f,
                                                .sparse_topk_ties = ties,
                                                .use_entmax15 = entmax};
        ExactTopKAttention attention(options);
        SCOPED_TRACE(::testing::Message()
                     << "mask " << static_cast<int>(mask.kind()) << " ties "
                     << ties << " entmax " << entmax);
        testing::ExpectGradientsMatch(
            *ctx_, attention, data, inputs,
            [&](const std::vector<double>& q, const std::vector<double>& k,
                const std::vector<double>& v) {
              return Reference(c, options, q, k, v, mask,
                               inputs.key_lengths.lengths);
            });
      }
    }
  }
}

TEST_F(ExactTopKAttentionTest, DropoutIsSeededAndItsBackwardMatchesReference) {
  const AttentionCase c{2, 5, 6, 2, 3, 4};
  const AttentionData data(c, 61, 1, -2, 2);
  const float p = 0.3f;
  const ExactTopKAttentionOptions options{.topk = 4, .attention_dropout = p};
  ExactTopKAttention attention(options);
  AttentionInputs inputs = data.Inputs();
  inputs.key_lengths.lengths = {6, 4};
  std::vector<float> eval(data.OutSize()), a(eval.size()), b(eval.size()),
      other(eval.size());
  ASSERT_TRUE(attention
                  .Forward(*ctx_, inputs,
                           TensorView<float>(eval.data(), data.OutShape()),
                           nullptr)
                  .ok());
  inputs.training = true;
  inputs.seed = 5;
  AttentionCache cache;
  ASSERT_TRUE(attention
                  .Forward(*ctx_, inputs,
                           TensorView<float>(a.data(), data.OutShape()), &cache)
                  .ok());
  ASSERT_TRUE(attention
                  .Forward(*ctx_, inputs,
                           TensorView<float>(b.data(), data.OutShape()),
                           nullptr)
                  .ok());
  inputs.seed = 6;
  ASSERT_TRUE(attention
                  .Forward(*ctx_, inputs,
                           TensorView<float>(other.data(), data.OutShape()),
                           nullptr)
                  .ok());
  inputs.seed = 5;
  EXPECT_EQ(a, b);
  EXPECT_NE(a, other);
  EXPECT_NE(a, eval);

  // The dropout mask, read off the cache: P_dropped = P * keep / (1 - p).
  ASSERT_EQ(cache.saved.size(), 2u);
  const float* probabilities = cache.saved[0].data<float>();
  const float* dropped = cache.saved[1].data<float>();
  std::vector<double> scale(cache.saved[0].NumElements());
  int64_t kept = 0, selected = 0;
  for (size_t i = 0; i < scale.size(); ++i) {
    if (probabilities[i] == 0.0f) continue;
    ++selected;
    if (dropped[i] != 0.0f) {
      ++kept;
      scale[i] = 1.0 / (1.0 - p);
      EXPECT_FLOAT_EQ(dropped[i], probabilities[i] / (1.0f - p));
    }
  }
  EXPECT_GT(kept, 0);
  EXPECT_LT(kept, selected);
  testing::ExpectGradientsMatch(
      *ctx_, attention, data, inputs,
      [&](const std::vector<double>& q, const std::vector<double>& k,
          const std::vector<double>& v) {
        return Reference(c, options, q, k, v, inputs.attn_mask,
                         inputs.key_lengths.lengths, scale.data());
      });
}

TEST_F(ExactTopKAttentionTest, SpecDefaultsAndFactory) {
  const AttentionSpec spec = ExactTopKAttentionSpec();
  EXPECT_EQ(spec.name, "exact-topk");
  EXPECT_EQ(spec.inner_count, 0);
  AttentionOptions defaults;
  for (const OptionSpec& option : spec.options) {
    if (option.default_value.has_value())
      defaults.Set(option.name, *option.default_value);
  }
  EXPECT_EQ(defaults.Int("topk"), 32);
  EXPECT_EQ(defaults.Float("attention_dropout"), 0.1);
  EXPECT_EQ(defaults.Bool("sparse_topk_ties"), false);
  EXPECT_EQ(defaults.Bool("use_entmax15"), false);
  EXPECT_FALSE(defaults.Has("softmax_temp"));

  AttentionOptions options = defaults;
  options.Set("topk", int64_t{5});
  options.Set("softmax_temp", 0.25);
  options.Set("sparse_topk_ties", true);
  options.Set("use_entmax15", true);
  absl::StatusOr<std::unique_ptr<Attention>> built = spec.factory(options, {});
  ASSERT_TRUE(built.ok()) << built.status();
  auto* attention = dynamic_cast<ExactTopKAttention*>(built->get());
  ASSERT_NE(attention, nullptr);
  EXPECT_STREQ(attention->name(), "exact-topk");
  EXPECT_EQ(attention->options().topk, 5);
  EXPECT_EQ(attention->options().softmax_temp, 0.25f);
  EXPECT_TRUE(attention->options().sparse_topk_ties);
  EXPECT_TRUE(attention->options().use_entmax15);

  options.Set("topk", int64_t{0});
  built = spec.factory(options, {});
  EXPECT_EQ(built.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(built.status().message().find("topk"), std::string::npos)
      << built.status();
}

TEST_F(ExactTopKAttentionTest, BadInputsAreErrors) {
  std::vector<float> buffer(1000);
  TensorView<const float> q(buffer.data(), {1, 4, 2, 3});
  TensorView<const float> k(buffer.data(), {1, 5, 2, 3});
  TensorView<const float> v(buffer.data(), {1, 5, 2, 6});
  TensorView<float> out(buffer.data() + 500, {1, 4, 2, 6});
  ExactTopKAttention attention;
  AttentionInputs wrong_values{
      .queries = q,
      .keys = k,
      .values = TensorView<const float>(buffer.data(), {1, 4, 2, 6})};
  absl::Status status = attention.Forward(*ctx_, wrong_values, out, nullptr);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("values"), std::string::npos) << status;

  AttentionInputs ok{.queries = q, .keys = k, .values = v};
  ExactTopKAttention zero_k({.topk = 0});
  status = zero_k.Forward(*ctx_, ok, out, nullptr);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("topk must be >= 1"), std::string::npos)
      << status;

  std::vector<float> row(8);
  status = KeepTopK(*ctx_, TensorView<float>(row.data(), {2, 4}), 0,
                    TopKSelection::kExactlyK);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  status = KeepTopK(*ctx_, TensorView<float>(row.data(), {2, 2}, {4, 2}), 1,
                    TopKSelection::kKeepTies);
  EXPECT_NE(status.message().find("unit stride"), std::string::npos) << status;

  AttentionCache empty;
  std::vector<float> grad(1000);
  status = attention.Backward(*ctx_, ok, empty, out,
                              {TensorView<float>(grad.data(), {1, 4, 2, 3}),
                               TensorView<float>(grad.data(), {1, 5, 2, 3}),
                               TensorView<float>(grad.data(), {1, 5, 2, 6})});
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  status = attention.Backward(*ctx_, ok, empty, out,
                              {TensorView<float>(grad.data(), {1, 4, 2, 3}),
                               TensorView<float>(grad.data(), {1, 5, 2, 2}),
                               TensorView<float>(grad.data(), {1, 5, 2, 6})});
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("d_keys"), std::string::npos) << status;
}

}  // namespace
}  // namespace ftx
