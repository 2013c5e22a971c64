// "conditional-full": short inputs run "full" and long ones the wrapped
// mechanism (L or S above length_limit), forward and backward (against the
// branch run on its own and against central differences of the branch's double
// reference); dropout options reach the full branch; the wrapped mechanism's
// parameters appear as "other_attention.*"; the registry spec; bad
// construction.
#include "attention/conditional_full.h"

#include <cmath>
#include <memory>
#include <utility>
#include <vector>

#include "attention/aft.h"
#include "attention/exact_topk.h"
#include "attention/full.h"
#include "gtest/gtest.h"
#include "kernels/reference/attention_ref.h"
#include "kernels/reference/topk_aft_ref.h"
#include "tests/util/attention_data.h"
#include "tests/util/tolerance.h"

namespace ftx {
namespace {

using ::ftx::testing::AllNear;
using ::ftx::testing::AttentionCase;
using ::ftx::testing::AttentionData;
using ::ftx::testing::RandomUniformVector;

constexpr int64_t kLimit = 6;
const ExactTopKAttentionOptions kTopK{.topk = 2, .attention_dropout = 0.0f};

std::unique_ptr<ConditionalFullAttention> Make(
    std::unique_ptr<Attention> other,
    const ConditionalFullAttentionOptions& options) {
  absl::StatusOr<std::unique_ptr<ConditionalFullAttention>> attention =
      ConditionalFullAttention::Create(std::move(other), options);
  EXPECT_TRUE(attention.ok()) << attention.status();
  return std::move(attention).value();
}

struct BranchRun {
  std::vector<float> out, d_q, d_k, d_v;
};

// Forward (with a cache) and Backward with a fixed random d_out.
BranchRun ForwardBackward(const Context& ctx, Attention& attention,
                          const AttentionData& data,
                          const AttentionInputs& inputs) {
  const AttentionCase& c = data.shape();
  BranchRun run{std::vector<float>(data.OutSize()),
                std::vector<float>(c.n * c.l * c.h * c.e),
                std::vector<float>(c.n * c.s * c.h * c.e),
                std::vector<float>(c.n * c.s * c.h * c.d)};
  AttentionCache cache;
  EXPECT_TRUE(attention
                  .Forward(ctx, inputs,
                           TensorView<float>(run.out.data(), data.OutShape()),
                           &cache)
                  .ok());
  const std::vector<float> d_out = RandomUniformVector(run.out.size(), 45);
  const absl::Status status = attention.Backward(
      ctx, inputs, cache,
      TensorView<const float>(d_out.data(), data.OutShape()),
      {TensorView<float>(run.d_q.data(), {c.n, c.l, c.h, c.e}),
       TensorView<float>(run.d_k.data(), {c.n, c.s, c.h, c.e}),
       TensorView<float>(run.d_v.data(), {c.n, c.s, c.h, c.d})});
  EXPECT_TRUE(status.ok()) << status;
  return run;
}

void ExpectSameRun(const BranchRun& a, const BranchRun& b) {
  EXPECT_EQ(a.out, b.out);
  EXPECT_EQ(a.d_q, b.d_q);
  EXPECT_EQ(a.d_k, b.d_k);
  EXPECT_EQ(a.d_v, b.d_v);
}

class ConditionalFullAttentionTest : public ::testing::Test {
 protected:
  void SetUp() override { ctx_ = Context::Create({.num_threads = 2}).value(); }
  std::unique_ptr<Context> ctx_;
};

TEST_F(ConditionalFullAttentionTest, ShortInputsRunFullAttention) {
  const ConditionalFullAttentionOptions options{.length_limit = kLimit,
                                                .softmax_temp = 0.6f};
  // L = S = limit, and cross shapes below it.
  for (const AttentionCase& c : {AttentionCase{2, kLimit, kLimit, 2, 3, 4},
                                 AttentionCase{1, 3, kLimit - 1, 3, 5, 2}}) {
    const AttentionData data(c, 31, 2, -2, 2);
    auto attention = Make(std::make_unique<ExactTopKAttention>(kTopK), options);
    EXPECT_FALSE(attention->UsesOther(c.l, c.s));
    FullAttention full({.softmax_temp = 0.6f});
    for (const AttnMask& mask : {AttnMask::All(), AttnMask::Causal()}) {
      AttentionInputs inputs = data.Inputs();
      inputs.attn_mask = mask;
      inputs.key_lengths.lengths.assign(c.n, c.s - 1);
      ExpectSameRun(ForwardBackward(*ctx_, *attention, data, inputs),
                    ForwardBackward(*ctx_, full, data, inputs));
      testing::ExpectGradientsMatch(
          *ctx_, *attention, data, inputs,
          [&](const std::vector<double>& q, const std::vector<double>& k,
              const std::vector<double>& v) {
            std::vector<double> out(data.OutSize());
            reference::FullAttention<double>(
                {c.n, c.l, c.s, c.h, c.e, c.d}, q.data(), k.data(), v.data(),
                0.6,
                [&](int64_t l, int64_t s) {
                  return static_cast<double>(mask.At(l, s));
                },
                inputs.key_lengths.lengths, out.data());
            return out;
          });
    }
  }
}

TEST_F(ConditionalFullAttentionTest, LongInputsRunTheOtherMechanism) {
  const ConditionalFullAttentionOptions options{.length_limit = kLimit};
  // Too many queries, too many keys, or both.
  for (const AttentionCase& c :
       {AttentionCase{2, kLimit + 1, 4, 2, 3, 4},
        AttentionCase{1, 2, kLimit + 1, 3, 4, 2},
        AttentionCase{1, kLimit + 3, kLimit + 3, 2, 3, 3}}) {
    const AttentionData data(c, 37, 1, -2, 2);
    auto attention = Make(std::make_unique<ExactTopKAttention>(kTopK), options);
    EXPECT_TRUE(attention->UsesOther(c.l, c.s));
    ExactTopKAttention topk(kTopK);
    AttentionInputs inputs = data.Inputs();
    inputs.key_lengths.lengths.assign(c.n, c.s - 1);
    const BranchRun conditional =
        ForwardBackward(*ctx_, *attention, data, inputs);
    ExpectSameRun(conditional, ForwardBackward(*ctx_, topk, data, inputs));
    FullAttention full;
    EXPECT_NE(conditional.out, ForwardBackward(*ctx_, full, data, inputs).out);
    testing::ExpectGradientsMatch(
        *ctx_, *attention, data, inputs,
        [&](const std::vector<double>& q, const std::vector<double>& k,
            const std::vector<double>& v) {
          std::vector<double> out(data.OutSize());
          reference::ExactTopKAttention<double>(
              {c.n, c.l, c.s, c.h, c.e, c.d}, q.data(), k.data(), v.data(),
              {1.0 / std::sqrt(c.e), kTopK.topk, false,
               reference::RowNormalizer::kSoftmax},
              [](int64_t, int64_t) { return 0.0; }, inputs.key_lengths.lengths,
              nullptr, out.data());
          return out;
        });
  }
}

TEST_F(ConditionalFullAttentionTest, DropoutOptionsReachTheFullBranch) {
  const AttentionCase c{1, 5, 5, 2, 3, 3};
  const AttentionData data(c, 41);
  auto attention = Make(std::make_unique<ExactTopKAttention>(kTopK),
                        {.length_limit = kLimit, .attention_dropout = 0.5f});
  FullAttention full({.attention_dropout = 0.5f});
  AttentionInputs inputs = data.Inputs();
  inputs.training = true;
  inputs.seed = 12;
  std::vector<float> a(data.OutSize()), b(data.OutSize()), eval(data.OutSize());
  ASSERT_TRUE(attention
                  ->Forward(*ctx_, inputs,
                            TensorView<float>(a.data(), data.OutShape()),
                            nullptr)
                  .ok());
  ASSERT_TRUE(full.Forward(*ctx_, inputs,
                           TensorView<float>(b.data(), data.OutShape()),
                           nullptr)
                  .ok());
  inputs.training = false;
  ASSERT_TRUE(attention
                  ->Forward(*ctx_, inputs,
                            TensorView<float>(eval.data(), data.OutShape()),
                            nullptr)
                  .ok());
  EXPECT_EQ(a, b);
  EXPECT_NE(a, eval);
}

TEST_F(ConditionalFullAttentionTest,
       OtherParametersArePrefixedAndTrainedOnlyWhenLong) {
  absl::StatusOr<std::unique_ptr<AftFullAttention>> aft =
      AftFullAttention::Create(
          {.max_sequence_length = 16, .aft_parameterization = 4});
  ASSERT_TRUE(aft.ok());
  auto attention = Make(std::move(aft).value(), {.length_limit = kLimit});
  std::vector<ParamRef> params = attention->Parameters();
  ASSERT_EQ(params.size(), 2u);
  EXPECT_EQ(params[0].name, "other_attention.u");
  EXPECT_EQ(params[1].name, "other_attention.v");
  auto grad_norm = [&] {
    double sum = 0;
    for (const ParamRef& param : params) {
      for (int64_t i = 0; i < param.grad->NumElements(); ++i) {
        sum += std::fabs(param.grad->data<float>()[i]);
      }
    }
    return sum;
  };
  const AttentionData short_data({1, 4, 4, 2, 3, 3}, 43);
  ForwardBackward(*ctx_, *attention, short_data, short_data.Inputs());
  EXPECT_EQ(grad_norm(), 0.0);
  const AttentionData long_data({1, 9, 9, 2, 3, 3}, 47);
  ForwardBackward(*ctx_, *attention, long_data, long_data.Inputs());
  EXPECT_GT(grad_norm(), 0.0);
}

TEST_F(ConditionalFullAttentionTest, HeadBiasNeedsBothBranchesToTakeIt) {
  const AttentionCase c{1, 3, 3, 2, 4, 4};
  const AttentionData data(c, 37);
  std::vector<float> bias(c.h * c.l * c.s, 0.25f), out(data.OutSize());
  AttentionInputs inputs = data.Inputs();
  inputs.head_bias = TensorView<const float>(bias.data(), {c.h, c.l, c.s});
  // exact-topk takes no head bias: even the short (full) branch refuses it.
  auto without = Make(std::make_unique<ExactTopKAttention>(kTopK),
                      {.length_limit = kLimit});
  EXPECT_FALSE(without->SupportsHeadBias());
  const absl::Status status = without->Forward(
      *ctx_, inputs, TensorView<float>(out.data(), data.OutShape()), nullptr);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("head_bias"), std::string::npos) << status;
  // With full on both sides the bias is used: a constant bias changes nothing.
  auto with = Make(std::make_unique<FullAttention>(), {.length_limit = kLimit});
  EXPECT_TRUE(with->SupportsHeadBias());
  std::vector<float> plain(data.OutSize());
  ASSERT_TRUE(with->Forward(*ctx_, inputs,
                            TensorView<float>(out.data(), data.OutShape()),
                            nullptr)
                  .ok());
  ASSERT_TRUE(with->Forward(*ctx_, data.Inputs(),
                            TensorView<float>(plain.data(), data.OutShape()),
                            nullptr)
                  .ok());
  EXPECT_TRUE(AllNear(out, plain, {1e-6, 1e-5}));
}

TEST_F(ConditionalFullAttentionTest, SpecIsADecorator) {
  const AttentionSpec spec = ConditionalFullAttentionSpec();
  EXPECT_EQ(spec.name, "conditional-full");
  EXPECT_EQ(spec.inner_count, 1);
  AttentionOptions options;
  for (const OptionSpec& option : spec.options) {
    if (option.default_value.has_value())
      options.Set(option.name, *option.default_value);
  }
  EXPECT_EQ(options.Int("length_limit"), 512);
  EXPECT_EQ(options.Float("attention_dropout"), 0.1);
  EXPECT_FALSE(options.Has("softmax_temp"));
  EXPECT_EQ(spec.factory(options, {}).status().code(),
            absl::StatusCode::kInvalidArgument);

  options.Set("length_limit", int64_t{64});
  std::vector<std::unique_ptr<Attention>> inner;
  inner.push_back(std::make_unique<AftSimpleAttention>());
  absl::StatusOr<std::unique_ptr<Attention>> built =
      spec.factory(options, std::move(inner));
  ASSERT_TRUE(built.ok()) << built.status();
  auto* attention = dynamic_cast<ConditionalFullAttention*>(built->get());
  ASSERT_NE(attention, nullptr);
  EXPECT_EQ(attention->options().length_limit, 64);
  EXPECT_STREQ(attention->other().name(), "aft-simple");
}

TEST_F(ConditionalFullAttentionTest, BadConstructionAndInputsAreErrors) {
  absl::Status status = ConditionalFullAttention::Create(nullptr, {}).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("needs the mechanism"), std::string::npos)
      << status;
  status = ConditionalFullAttention::Create(
               std::make_unique<AftSimpleAttention>(), {.length_limit = -1})
               .status();
  EXPECT_NE(status.message().find("length_limit"), std::string::npos) << status;

  auto attention = Make(std::make_unique<AftSimpleAttention>(), {});
  std::vector<float> buffer(100);
  AttentionInputs rank3{
      .queries = TensorView<const float>(buffer.data(), {4, 2, 3}),
      .keys = TensorView<const float>(buffer.data(), {1, 4, 2, 3}),
      .values = TensorView<const float>(buffer.data(), {1, 4, 2, 3})};
  status = attention->Forward(
      *ctx_, rank3, TensorView<float>(buffer.data(), {1, 4, 2, 3}), nullptr);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("rank 4"), std::string::npos) << status;
}

}  // namespace
}  // namespace ftx
