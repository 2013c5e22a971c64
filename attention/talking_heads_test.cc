// "talking-heads" against the double reference
// (kernels/reference/topk_aft_ref.h): Conv2d-style initialisation and parameter
// names; identity mixings equal "full"; forward over masks, key lengths,
// temperatures, sparse_topk and entmax-1.5; input and mixing-weight gradients
// (accumulated) against central differences; dropout's backward; the registry
// spec; bad inputs.
#include "attention/talking_heads.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <optional>
#include <utility>
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
using ::ftx::testing::GradientMatches;
using ::ftx::testing::RandomUniformVector;

constexpr float kInf = std::numeric_limits<float>::infinity();

reference::AdditiveMaskFn MaskFunction(const AttnMask& mask) {
  return [mask](int64_t l, int64_t s) {
    return static_cast<double>(mask.At(l, s));
  };
}

std::vector<double> Values(const Tensor& tensor) {
  const float* data = tensor.data<float>();
  return std::vector<double>(data, data + tensor.NumElements());
}

// The double reference with mixing weights pre, post ([H, H] row-major).
std::vector<double> Reference(
    const AttentionCase& c, const TalkingHeadsAttentionOptions& options,
    const std::vector<double>& q, const std::vector<double>& k,
    const std::vector<double>& v, const std::vector<double>& pre,
    const std::vector<double>& post, const AttnMask& mask,
    const std::vector<int64_t>& key_lengths,
    const double* probability_scale = nullptr) {
  const reference::TalkingHeadsConfig config{
      options.softmax_temp.has_value() ? *options.softmax_temp
                                       : 1.0 / std::sqrt(c.e),
      options.sparse_topk,
      options.use_entmax15 ? reference::RowNormalizer::kEntmax15
                           : reference::RowNormalizer::kSoftmax};
  std::vector<double> out(c.n * c.l * c.h * c.d);
  reference::TalkingHeadsAttention<double>(
      {c.n, c.l, c.s, c.h, c.e, c.d}, q.data(), k.data(), v.data(), pre.data(),
      post.data(), config, MaskFunction(mask), key_lengths, probability_scale,
      out.data());
  return out;
}

std::unique_ptr<TalkingHeadsAttention> Make(
    const TalkingHeadsAttentionOptions& options) {
  absl::StatusOr<std::unique_ptr<TalkingHeadsAttention>> attention =
      TalkingHeadsAttention::Create(options);
  EXPECT_TRUE(attention.ok()) << attention.status();
  return std::move(attention).value();
}

void SetWeight(Tensor& weight, const std::vector<float>& values) {
  ASSERT_EQ(static_cast<int64_t>(values.size()), weight.NumElements());
  std::copy(values.begin(), values.end(), weight.data<float>());
}

std::vector<float> Identity(int64_t heads) {
  std::vector<float> identity(heads * heads, 0.0f);
  for (int64_t h = 0; h < heads; ++h) identity[h * heads + h] = 1.0f;
  return identity;
}

class TalkingHeadsAttentionTest : public ::testing::Test {
 protected:
  void SetUp() override { ctx_ = Context::Create({.num_threads = 2}).value(); }
  std::unique_ptr<Context> ctx_;
};

TEST_F(TalkingHeadsAttentionTest,
       ParametersAreConv2dWeightsInitialisedFromTheSeed) {
  const int64_t heads = 4;
  auto attention = Make({.heads = heads, .seed = 7});
  std::vector<ParamRef> params = attention->Parameters();
  ASSERT_EQ(params.size(), 2u);
  EXPECT_EQ(params[0].name, "pre_softmax_talking_heads.weight");
  EXPECT_EQ(params[1].name, "post_softmax_talking_heads.weight");
  const double bound = 1.0 / std::sqrt(static_cast<double>(heads));
  for (const ParamRef& param : params) {
    EXPECT_EQ(param.value->shape(), (Shape{heads, heads, 1, 1}));
    EXPECT_EQ(param.grad->shape(), (Shape{heads, heads, 1, 1}));
    double sum_squares = 0;
    for (double value : Values(*param.value)) {
      EXPECT_LE(std::fabs(value), bound);
      sum_squares += value * value;
    }
    // U(-b, b) has variance b^2 / 3; 16 draws land well within a factor of 2.
    const double variance = sum_squares / (heads * heads);
    EXPECT_GT(variance, bound * bound / 6);
    EXPECT_LT(variance, bound * bound * 2 / 3);
    for (double grad : Values(*param.grad)) EXPECT_EQ(grad, 0.0);
  }
  EXPECT_NE(Values(*params[0].value), Values(*params[1].value));
  auto same = Make({.heads = heads, .seed = 7});
  auto other = Make({.heads = heads, .seed = 8});
  EXPECT_EQ(Values(*same->Parameters()[0].value), Values(*params[0].value));
  EXPECT_NE(Values(*other->Parameters()[0].value), Values(*params[0].value));
}

TEST_F(TalkingHeadsAttentionTest, IdentityMixingEqualsFullAttention) {
  const AttentionCase c{2, 5, 7, 3, 4, 6};
  const AttentionData qkv(c, 11, 3, -2, 2);
  std::vector<float> additive = RandomUniformVector(c.l * c.s, 5, -1, 1);
  additive[3] = -kInf;
  const AttnMask masks[] = {
      AttnMask::All(), AttnMask::Causal(),
      AttnMask::Additive(TensorView<const float>(additive.data(), {c.l, c.s}))};
  for (const AttnMask& mask : masks) {
    for (std::optional<float> temp :
         {std::optional<float>(), std::optional<float>(0.4f)}) {
      AttentionInputs inputs = qkv.Inputs();
      inputs.attn_mask = mask;
      inputs.key_lengths.lengths = {7, 4};
      auto talking = Make({.heads = c.h, .softmax_temp = temp});
      SetWeight(*talking->Parameters()[0].value, Identity(c.h));
      SetWeight(*talking->Parameters()[1].value, Identity(c.h));
      FullAttention full({.softmax_temp = temp});
      std::vector<float> a(qkv.OutSize()), b(qkv.OutSize());
      ASSERT_TRUE(talking
                      ->Forward(*ctx_, inputs,
                                TensorView<float>(a.data(), qkv.OutShape()),
                                nullptr)
                      .ok());
      ASSERT_TRUE(full.Forward(*ctx_, inputs,
                               TensorView<float>(b.data(), qkv.OutShape()),
                               nullptr)
                      .ok());
      EXPECT_TRUE(AllNear(a, b, {1e-6, 1e-5}))
          << "mask " << static_cast<int>(mask.kind());
    }
  }
}

TEST_F(TalkingHeadsAttentionTest, ForwardMatchesReference) {
  const AttentionCase cases[] = {{1, 1, 1, 1, 1, 1},
                                 {2, 5, 7, 3, 4, 6},
                                 {2, 9, 9, 2, 17, 5},
                                 {1, 3, 33, 4, 8, 8}};
  for (const AttentionCase& c : cases) {
    const AttentionData qkv(c, 13, 2, -2, 2);
    std::vector<float> additive = RandomUniformVector(c.l * c.s, 6, -1, 1);
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
        for (int64_t sparse_topk : {0, 2}) {
          for (bool entmax : {false, true}) {
            for (std::optional<float> temp :
                 {std::optional<float>(), std::optional<float>(0.3f)}) {
              const TalkingHeadsAttentionOptions options{
                  .heads = c.h,
                  .softmax_temp = temp,
                  .sparse_topk = sparse_topk,
                  .use_entmax15 = entmax,
                  .seed = 3};
              auto attention = Make(options);
              std::vector<float> out(qkv.OutSize(), NAN);
              ASSERT_TRUE(
                  attention
                      ->Forward(*ctx_, inputs,
                                TensorView<float>(out.data(), qkv.OutShape()),
                                nullptr)
                      .ok());
              const std::vector<double> expected =
                  Reference(c, options, q, k, v,
                            Values(*attention->Parameters()[0].value),
                            Values(*attention->Parameters()[1].value), mask,
                            inputs.key_lengths.lengths);
              EXPECT_TRUE(AllNear(out, expected, {2e-6, 2e-5}))
                  << "case " << c.n << "x" << c.l << "x" << c.s << "x" << c.h
                  << " mask " << static_cast<int>(mask.kind()) << " padded "
                  << padded << " sparse_topk " << sparse_topk << " entmax "
                  << entmax;
            }
          }
        }
      }
    }
  }
}

// Forward + Backward with a random d_out; every input and mixing-weight
// gradient against central differences of the reference; a second Backward
// doubles the (accumulated) weight gradients and rewrites the input gradients.
void ExpectAllGradientsMatch(const Context& ctx,
                             TalkingHeadsAttention& attention,
                             const AttentionData& data,
                             const AttentionInputs& inputs,
                             const TalkingHeadsAttentionOptions& options,
                             const double* probability_scale = nullptr) {
  const AttentionCase& c = data.shape();
  std::vector<double> pre = Values(*attention.Parameters()[0].value);
  std::vector<double> post = Values(*attention.Parameters()[1].value);
  const std::vector<double> q = AttentionData::Dense(inputs.queries);
  const std::vector<double> k = AttentionData::Dense(inputs.keys);
  const std::vector<double> v = AttentionData::Dense(inputs.values);
  auto reference =
      [&](const std::vector<double>& q_in, const std::vector<double>& k_in,
          const std::vector<double>& v_in, const std::vector<double>& pre_in,
          const std::vector<double>& post_in) {
        return Reference(c, options, q_in, k_in, v_in, pre_in, post_in,
                         inputs.attn_mask, inputs.key_lengths.lengths,
                         probability_scale);
      };

  AttentionCache cache;
  std::vector<float> out(data.OutSize());
  ASSERT_TRUE(attention
                  .Forward(ctx, inputs,
                           TensorView<float>(out.data(), data.OutShape()),
                           &cache)
                  .ok());
  const std::vector<float> d_out = RandomUniformVector(out.size(), 77);
  std::vector<float> d_q(q.size()), d_k(k.size()), d_v(v.size());
  const AttentionGrads grads{
      TensorView<float>(d_q.data(), {c.n, c.l, c.h, c.e}),
      TensorView<float>(d_k.data(), {c.n, c.s, c.h, c.e}),
      TensorView<float>(d_v.data(), {c.n, c.s, c.h, c.d})};
  ASSERT_TRUE(
      attention
          .Backward(ctx, inputs, cache,
                    TensorView<const float>(d_out.data(), data.OutShape()),
                    grads)
          .ok());
  const std::vector<double> w(d_out.begin(), d_out.end());
  const testing::Tolerance tolerance{2e-5, 1e-4};
  EXPECT_TRUE(GradientMatches(
      [&](const auto& x) {
        return testing::Dot(w, reference(x, k, v, pre, post));
      },
      q, testing::Cast<double>(d_q), tolerance))
      << "d_queries";
  EXPECT_TRUE(GradientMatches(
      [&](const auto& x) {
        return testing::Dot(w, reference(q, x, v, pre, post));
      },
      k, testing::Cast<double>(d_k), tolerance))
      << "d_keys";
  EXPECT_TRUE(GradientMatches(
      [&](const auto& x) {
        return testing::Dot(w, reference(q, k, x, pre, post));
      },
      v, testing::Cast<double>(d_v), tolerance))
      << "d_values";
  const std::vector<double> d_pre = Values(*attention.Parameters()[0].grad);
  const std::vector<double> d_post = Values(*attention.Parameters()[1].grad);
  EXPECT_TRUE(GradientMatches(
      [&](const auto& x) {
        return testing::Dot(w, reference(q, k, v, x, post));
      },
      pre, d_pre, tolerance))
      << "pre_softmax_talking_heads.weight";
  EXPECT_TRUE(GradientMatches(
      [&](const auto& x) {
        return testing::Dot(w, reference(q, k, v, pre, x));
      },
      post, d_post, tolerance))
      << "post_softmax_talking_heads.weight";

  const std::vector<float> first_d_q = d_q;
  ASSERT_TRUE(
      attention
          .Backward(ctx, inputs, cache,
                    TensorView<const float>(d_out.data(), data.OutShape()),
                    grads)
          .ok());
  EXPECT_EQ(d_q, first_d_q) << "input gradients are written, not accumulated";
  std::vector<double> twice = d_pre;
  for (double& value : twice) value *= 2;
  EXPECT_TRUE(
      AllNear(Values(*attention.Parameters()[0].grad), twice, {1e-6, 1e-6}));
  twice = d_post;
  for (double& value : twice) value *= 2;
  EXPECT_TRUE(
      AllNear(Values(*attention.Parameters()[1].grad), twice, {1e-6, 1e-6}));
}

TEST_F(TalkingHeadsAttentionTest,
       BackwardMatchesCentralDifferencesOfReference) {
  const AttentionCase c{2, 4, 6, 3, 3, 5};
  const AttentionData data(c, 21, 2, -2, 2);
  std::vector<float> additive = RandomUniformVector(c.l * c.s, 9, -1, 1);
  additive[2] = -kInf;
  const AttnMask masks[] = {
      AttnMask::All(), AttnMask::Causal(),
      AttnMask::Additive(TensorView<const float>(additive.data(), {c.l, c.s}))};
  for (const AttnMask& mask : masks) {
    for (int64_t sparse_topk : {0, 3}) {
      for (bool entmax : {false, true}) {
        SCOPED_TRACE(::testing::Message()
                     << "mask " << static_cast<int>(mask.kind())
                     << " sparse_topk " << sparse_topk << " entmax " << entmax);
        const TalkingHeadsAttentionOptions options{.heads = c.h,
                                                   .softmax_temp = 0.9f,
                                                   .sparse_topk = sparse_topk,
                                                   .use_entmax15 = entmax,
                                                   .seed = 4};
        auto attention = Make(options);
        AttentionInputs inputs = data.Inputs();
        inputs.attn_mask = mask;
        inputs.key_lengths.lengths = {6, 4};
        ExpectAllGradientsMatch(*ctx_, *attention, data, inputs, options);
      }
    }
  }
}

TEST_F(TalkingHeadsAttentionTest,
       DropoutIsSeededAndItsBackwardMatchesReference) {
  const AttentionCase c{2, 4, 5, 2, 3, 4};
  const AttentionData data(c, 31, 1, -2, 2);
  const float p = 0.25f;
  const TalkingHeadsAttentionOptions options{
      .heads = c.h, .attention_dropout = p, .seed = 9};
  auto attention = Make(options);
  AttentionInputs inputs = data.Inputs();
  std::vector<float> eval(data.OutSize()), a(eval.size()), b(eval.size()),
      other(eval.size());
  ASSERT_TRUE(attention
                  ->Forward(*ctx_, inputs,
                            TensorView<float>(eval.data(), data.OutShape()),
                            nullptr)
                  .ok());
  inputs.training = true;
  inputs.seed = 3;
  AttentionCache cache;
  ASSERT_TRUE(attention
                  ->Forward(*ctx_, inputs,
                            TensorView<float>(a.data(), data.OutShape()),
                            &cache)
                  .ok());
  ASSERT_TRUE(attention
                  ->Forward(*ctx_, inputs,
                            TensorView<float>(b.data(), data.OutShape()),
                            nullptr)
                  .ok());
  inputs.seed = 4;
  ASSERT_TRUE(attention
                  ->Forward(*ctx_, inputs,
                            TensorView<float>(other.data(), data.OutShape()),
                            nullptr)
                  .ok());
  inputs.seed = 3;
  EXPECT_EQ(a, b);
  EXPECT_NE(a, other);
  EXPECT_NE(a, eval);

  // The dropout mask, read off the cache (P: saved[1]; dropped P: saved[3]).
  ASSERT_EQ(cache.saved.size(), 4u);
  const float* probabilities = cache.saved[1].data<float>();
  const float* dropped = cache.saved[3].data<float>();
  std::vector<double> scale(cache.saved[1].NumElements());
  int64_t kept = 0;
  for (size_t i = 0; i < scale.size(); ++i) {
    ASSERT_GT(probabilities[i], 0.0f);
    if (dropped[i] != 0.0f) {
      ++kept;
      scale[i] = 1.0 / (1.0 - p);
    }
  }
  EXPECT_GT(kept, 0);
  EXPECT_LT(kept, static_cast<int64_t>(scale.size()));
  ExpectAllGradientsMatch(*ctx_, *attention, data, inputs, options,
                          scale.data());
}

TEST_F(TalkingHeadsAttentionTest, SpecRequiresHeadCount) {
  const AttentionSpec spec = TalkingHeadsAttentionSpec();
  EXPECT_EQ(spec.name, "talking-heads");
  AttentionOptions options;
  for (const OptionSpec& option : spec.options) {
    if (option.name == "n_heads") EXPECT_TRUE(option.required);
    if (option.default_value.has_value())
      options.Set(option.name, *option.default_value);
  }
  EXPECT_EQ(options.Float("attention_dropout"), 0.0);
  EXPECT_EQ(options.Int("sparse_topk"), 0);
  absl::StatusOr<std::unique_ptr<Attention>> built = spec.factory(options, {});
  EXPECT_EQ(built.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(built.status().message().find("n_heads"), std::string::npos)
      << built.status();

  options.Set("n_heads", int64_t{5});
  options.Set("sparse_topk", int64_t{8});
  options.Set("use_entmax15", true);
  built = spec.factory(options, {});
  ASSERT_TRUE(built.ok()) << built.status();
  auto* attention = dynamic_cast<TalkingHeadsAttention*>(built->get());
  ASSERT_NE(attention, nullptr);
  EXPECT_EQ(attention->options().heads, 5);
  EXPECT_EQ(attention->options().sparse_topk, 8);
  EXPECT_TRUE(attention->options().use_entmax15);
  EXPECT_EQ(attention->Parameters()[0].value->shape(), (Shape{5, 5, 1, 1}));
}

TEST_F(TalkingHeadsAttentionTest, BadInputsAreErrors) {
  EXPECT_EQ(TalkingHeadsAttention::Create({.heads = 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(TalkingHeadsAttention::Create({.heads = 2, .sparse_topk = -1})
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      TalkingHeadsAttention::Create({.heads = 2, .attention_dropout = 1.0f})
          .status()
          .code(),
      absl::StatusCode::kInvalidArgument);

  std::vector<float> buffer(1000);
  TensorView<const float> q(buffer.data(), {1, 4, 2, 3});
  TensorView<const float> k(buffer.data(), {1, 5, 2, 3});
  TensorView<const float> v(buffer.data(), {1, 5, 2, 6});
  TensorView<float> out(buffer.data() + 500, {1, 4, 2, 6});
  AttentionInputs inputs{.queries = q, .keys = k, .values = v};
  auto three_heads = Make({.heads = 3});
  absl::Status status = three_heads->Forward(*ctx_, inputs, out, nullptr);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("n_heads = 3"), std::string::npos) << status;

  auto two_heads = Make({.heads = 2});
  AttentionInputs wrong_keys = inputs;
  wrong_keys.keys = TensorView<const float>(buffer.data(), {1, 5, 2, 4});
  status = two_heads->Forward(*ctx_, wrong_keys, out, nullptr);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("keys"), std::string::npos) << status;

  AttentionCache empty;
  std::vector<float> grad(1000);
  status = two_heads->Backward(*ctx_, inputs, empty, out,
                               {TensorView<float>(grad.data(), {1, 4, 2, 3}),
                                TensorView<float>(grad.data(), {1, 5, 2, 3}),
                                TensorView<float>(grad.data(), {1, 5, 2, 6})});
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace ftx
