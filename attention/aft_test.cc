// "aft-full" and "aft-simple" against the double reference
// (kernels/reference/topk_aft_ref.h, fast-transformers' formulas): parameters
// and their initialisation; forward over masks, key lengths (including empty
// ones), cross shapes and strided inputs; the causal aft-simple quirk without
// underflow; input and u/v gradients (accumulated) against central differences;
// the specs; bad inputs.
#include "attention/aft.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <memory>
#include <utility>
#include <vector>

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

std::unique_ptr<AftFullAttention> MakeFull(
    const AftFullAttentionOptions& options) {
  absl::StatusOr<std::unique_ptr<AftFullAttention>> attention =
      AftFullAttention::Create(options);
  EXPECT_TRUE(attention.ok()) << attention.status();
  return std::move(attention).value();
}

// Replaces u and v by U(-1, 1) values, so the position bias matters.
void RandomizeBias(AftFullAttention& attention, uint64_t seed) {
  for (const ParamRef& param : attention.Parameters()) {
    const std::vector<float> values =
        RandomUniformVector(param.value->NumElements(), seed++, -1, 1);
    std::copy(values.begin(), values.end(), param.value->data<float>());
  }
}

// (q, k, v, u, v_param) -> out, dense double.
using AftReference = std::function<std::vector<double>(
    const std::vector<double>&, const std::vector<double>&,
    const std::vector<double>&, const std::vector<double>&,
    const std::vector<double>&)>;

std::vector<double> FullReference(
    const AttentionCase& c, int64_t rank, const std::vector<double>& q,
    const std::vector<double>& k, const std::vector<double>& v,
    const std::vector<double>& u, const std::vector<double>& v_param,
    const AttnMask& mask, const std::vector<int64_t>& key_lengths) {
  std::vector<double> out(c.n * c.l * c.h * c.d);
  reference::AftFullAttention<double>(
      {c.n, c.l, c.s, c.h, c.e, c.d}, q.data(), k.data(), v.data(), u.data(),
      v_param.data(), rank, MaskFunction(mask), key_lengths, out.data());
  return out;
}

std::vector<double> SimpleReference(const AttentionCase& c, bool causal,
                                    const std::vector<double>& q,
                                    const std::vector<double>& k,
                                    const std::vector<double>& v,
                                    const std::vector<int64_t>& key_lengths) {
  std::vector<double> out(c.n * c.l * c.h * c.d);
  reference::AftSimpleAttention<double>({c.n, c.l, c.s, c.h, c.e, c.d},
                                        q.data(), k.data(), v.data(), causal,
                                        key_lengths, out.data());
  return out;
}

// Forward + Backward with a random d_out; input gradients and (for aft-full) u
// and v gradients against central differences of `reference`; a second Backward
// doubles the accumulated parameter gradients.
void ExpectAftGradientsMatch(const Context& ctx, Attention& attention,
                             const AttentionData& data,
                             const AttentionInputs& inputs,
                             const AftReference& reference) {
  const AttentionCase& c = data.shape();
  std::vector<ParamRef> params = attention.Parameters();
  const std::vector<double> u =
      params.empty() ? std::vector<double>() : Values(*params[0].value);
  const std::vector<double> v_param =
      params.empty() ? std::vector<double>() : Values(*params[1].value);
  const std::vector<double> q = AttentionData::Dense(inputs.queries);
  const std::vector<double> k = AttentionData::Dense(inputs.keys);
  const std::vector<double> v = AttentionData::Dense(inputs.values);

  AttentionCache cache;
  std::vector<float> out(data.OutSize());
  ASSERT_TRUE(attention
                  .Forward(ctx, inputs,
                           TensorView<float>(out.data(), data.OutShape()),
                           &cache)
                  .ok());
  const std::vector<float> d_out = RandomUniformVector(out.size(), 71);
  std::vector<float> d_q(q.size(), NAN), d_k(k.size(), NAN), d_v(v.size(), NAN);
  const AttentionGrads grads{
      TensorView<float>(d_q.data(), {c.n, c.l, c.h, c.e}),
      TensorView<float>(d_k.data(), {c.n, c.s, c.h, c.e}),
      TensorView<float>(d_v.data(), {c.n, c.s, c.h, c.d})};
  const TensorView<const float> d_out_view(d_out.data(), data.OutShape());
  ASSERT_TRUE(attention.Backward(ctx, inputs, cache, d_out_view, grads).ok());
  const std::vector<double> w(d_out.begin(), d_out.end());
  const testing::Tolerance tolerance{2e-5, 1e-4};
  auto loss = [&](const auto& q_in, const auto& k_in, const auto& v_in,
                  const auto& u_in, const auto& v_param_in) {
    return testing::Dot(w, reference(q_in, k_in, v_in, u_in, v_param_in));
  };
  EXPECT_TRUE(
      GradientMatches([&](const auto& x) { return loss(x, k, v, u, v_param); },
                      q, testing::Cast<double>(d_q), tolerance))
      << "d_queries";
  EXPECT_TRUE(
      GradientMatches([&](const auto& x) { return loss(q, x, v, u, v_param); },
                      k, testing::Cast<double>(d_k), tolerance))
      << "d_keys";
  EXPECT_TRUE(
      GradientMatches([&](const auto& x) { return loss(q, k, x, u, v_param); },
                      v, testing::Cast<double>(d_v), tolerance))
      << "d_values";
  if (params.empty()) return;
  const std::vector<double> d_u = Values(*params[0].grad);
  const std::vector<double> d_v_param = Values(*params[1].grad);
  EXPECT_TRUE(
      GradientMatches([&](const auto& x) { return loss(q, k, v, x, v_param); },
                      u, d_u, tolerance))
      << "u";
  EXPECT_TRUE(
      GradientMatches([&](const auto& x) { return loss(q, k, v, u, x); },
                      v_param, d_v_param, tolerance))
      << "v";
  ASSERT_TRUE(attention.Backward(ctx, inputs, cache, d_out_view, grads).ok());
  for (auto [param, first] :
       {std::pair{params[0], d_u}, std::pair{params[1], d_v_param}}) {
    for (double& value : first) value *= 2;
    EXPECT_TRUE(AllNear(Values(*param.grad), first, {1e-6, 1e-6}))
        << param.name;
  }
}

class AftTest : public ::testing::Test {
 protected:
  void SetUp() override { ctx_ = Context::Create({.num_threads = 2}).value(); }
  std::unique_ptr<Context> ctx_;
};

TEST_F(AftTest, FullParametersAreSeededSmallGaussians) {
  auto attention = MakeFull(
      {.max_sequence_length = 40, .aft_parameterization = 16, .seed = 5});
  std::vector<ParamRef> params = attention->Parameters();
  ASSERT_EQ(params.size(), 2u);
  EXPECT_EQ(params[0].name, "u");
  EXPECT_EQ(params[1].name, "v");
  for (const ParamRef& param : params) {
    EXPECT_EQ(param.value->shape(), (Shape{40, 16}));
    EXPECT_EQ(param.grad->shape(), (Shape{40, 16}));
    double sum = 0, sum_squares = 0;
    const std::vector<double> values = Values(*param.value);
    for (double value : values) {
      sum += value;
      sum_squares += value * value;
    }
    // 640 draws of 0.01 N(0, 1): mean within 4 standard errors, std within 15%.
    EXPECT_NEAR(sum / values.size(), 0.0, 4 * 0.01 / std::sqrt(640.0));
    EXPECT_NEAR(std::sqrt(sum_squares / values.size()), 0.01, 0.0015);
    for (double grad : Values(*param.grad)) EXPECT_EQ(grad, 0.0);
  }
  EXPECT_NE(Values(*params[0].value), Values(*params[1].value));
  auto same = MakeFull(
      {.max_sequence_length = 40, .aft_parameterization = 16, .seed = 5});
  auto other = MakeFull(
      {.max_sequence_length = 40, .aft_parameterization = 16, .seed = 6});
  EXPECT_EQ(Values(*same->Parameters()[0].value), Values(*params[0].value));
  EXPECT_NE(Values(*other->Parameters()[0].value), Values(*params[0].value));
}

TEST_F(AftTest, FullForwardMatchesReference) {
  const AttentionCase cases[] = {{1, 1, 1, 1, 1, 1},
                                 {2, 5, 7, 3, 4, 4},
                                 {2, 9, 9, 2, 17, 17},
                                 {1, 6, 3, 2, 8, 8}};
  for (const AttentionCase& c : cases) {
    const AttentionData qkv(c, 17, 3, -2, 2);
    std::vector<float> additive = RandomUniformVector(c.l * c.s, 8, -1, 1);
    additive[0] = -kInf;
    const AttnMask masks[] = {AttnMask::All(), AttnMask::Causal(),
                              AttnMask::Additive(TensorView<const float>(
                                  additive.data(), {c.l, c.s}))};
    const std::vector<double> q = AttentionData::Dense(qkv.queries());
    const std::vector<double> k = AttentionData::Dense(qkv.keys());
    const std::vector<double> v = AttentionData::Dense(qkv.values());
    for (bool randomized : {false, true}) {
      const int64_t rank = 5;
      auto attention =
          MakeFull({.max_sequence_length = 12, .aft_parameterization = rank});
      if (randomized) RandomizeBias(*attention, 3);
      const std::vector<double> u = Values(*attention->Parameters()[0].value);
      const std::vector<double> v_param =
          Values(*attention->Parameters()[1].value);
      for (const AttnMask& mask : masks) {
        for (bool padded : {false, true}) {
          AttentionInputs inputs = qkv.Inputs();
          inputs.attn_mask = mask;
          if (padded) {
            inputs.key_lengths.lengths.assign(c.n, c.s);
            inputs.key_lengths.lengths[0] = c.s > 1 ? c.s - 2 : 0;
            inputs.key_lengths.lengths[c.n - 1] =
                0;  // every query of the last item
          }
          std::vector<float> out(qkv.OutSize(), NAN);
          ASSERT_TRUE(
              attention
                  ->Forward(*ctx_, inputs,
                            TensorView<float>(out.data(), qkv.OutShape()),
                            nullptr)
                  .ok());
          EXPECT_TRUE(AllNear(out,
                              FullReference(c, rank, q, k, v, u, v_param, mask,
                                            inputs.key_lengths.lengths),
                              {2e-6, 2e-5}))
              << "case " << c.n << "x" << c.l << "x" << c.s << " mask "
              << static_cast<int>(mask.kind()) << " padded " << padded
              << " randomized " << randomized;
        }
      }
    }
  }
}

TEST_F(AftTest, FullBackwardMatchesCentralDifferencesOfReference) {
  const AttentionCase c{2, 4, 5, 2, 3, 3};
  const AttentionData data(c, 23, 2, -2, 2);
  std::vector<float> additive = RandomUniformVector(c.l * c.s, 10, -1, 1);
  additive[1] = -kInf;
  const AttnMask masks[] = {
      AttnMask::All(), AttnMask::Causal(),
      AttnMask::Additive(TensorView<const float>(additive.data(), {c.l, c.s}))};
  for (const AttnMask& mask : masks) {
    SCOPED_TRACE(::testing::Message()
                 << "mask " << static_cast<int>(mask.kind()));
    const int64_t rank = 3;
    auto attention =
        MakeFull({.max_sequence_length = 6, .aft_parameterization = rank});
    RandomizeBias(*attention, 11);
    AttentionInputs inputs = data.Inputs();
    inputs.attn_mask = mask;
    inputs.key_lengths.lengths = {5, 3};
    ExpectAftGradientsMatch(
        *ctx_, *attention, data, inputs,
        [&](const std::vector<double>& q, const std::vector<double>& k,
            const std::vector<double>& v, const std::vector<double>& u,
            const std::vector<double>& v_param) {
          return FullReference(c, rank, q, k, v, u, v_param, mask,
                               inputs.key_lengths.lengths);
        });
  }
}

TEST_F(AftTest, SimpleForwardMatchesReference) {
  const AttentionCase cases[] = {{1, 1, 1, 1, 1, 1},
                                 {2, 7, 7, 3, 4, 4},
                                 {2, 17, 17, 2, 9, 9},
                                 {1, 6, 3, 2, 8, 8}};
  for (const AttentionCase& c : cases) {
    const AttentionData qkv(c, 19, 3, -2, 2);
    const std::vector<double> q = AttentionData::Dense(qkv.queries());
    const std::vector<double> k = AttentionData::Dense(qkv.keys());
    const std::vector<double> v = AttentionData::Dense(qkv.values());
    for (bool causal : {false, true}) {
      if (causal && c.l != c.s) continue;
      for (bool padded : {false, true}) {
        AttentionInputs inputs = qkv.Inputs();
        inputs.attn_mask = causal ? AttnMask::Causal() : AttnMask::All();
        if (padded) {
          inputs.key_lengths.lengths.assign(c.n, c.s);
          inputs.key_lengths.lengths[0] = c.s > 1 ? c.s - 2 : 0;
          inputs.key_lengths.lengths[c.n - 1] = 0;
        }
        AftSimpleAttention attention;
        std::vector<float> out(qkv.OutSize(), NAN);
        ASSERT_TRUE(attention
                        .Forward(*ctx_, inputs,
                                 TensorView<float>(out.data(), qkv.OutShape()),
                                 nullptr)
                        .ok());
        EXPECT_TRUE(AllNear(
            out,
            SimpleReference(c, causal, q, k, v, inputs.key_lengths.lengths),
            {2e-6, 2e-5}))
            << "case " << c.n << "x" << c.l << "x" << c.s << " causal "
            << causal << " padded " << padded;
      }
    }
  }
}

TEST_F(AftTest, SimpleCausalIsThePrefixQuirkWithoutUnderflow) {
  // Keys 200 apart: fast-transformers' exp(K - max K) underflows in float to
  // 0/0 for the early positions; the running max keeps every weight exact.
  const AttentionCase c{1, 5, 5, 1, 2, 2};
  const std::vector<float> q = {0.5f, -1, 0, 0, 1, 1, -0.5f, 2, 0, 0};
  const std::vector<float> k = {-150, 0, -100, 2, 50, 1, 40, 3, 45, 0};
  const std::vector<float> v = RandomUniformVector(10, 29);
  AttentionInputs inputs{
      .queries = TensorView<const float>(q.data(), {1, 5, 1, 2}),
      .keys = TensorView<const float>(k.data(), {1, 5, 1, 2}),
      .values = TensorView<const float>(v.data(), {1, 5, 1, 2}),
      .attn_mask = AttnMask::Causal()};
  AftSimpleAttention attention;
  std::vector<float> out(10);
  ASSERT_TRUE(attention
                  .Forward(*ctx_, inputs,
                           TensorView<float>(out.data(), {1, 5, 1, 2}), nullptr)
                  .ok());
  const std::vector<double> expected =
      SimpleReference(c, true, testing::Cast<double>(q),
                      testing::Cast<double>(k), testing::Cast<double>(v), {});
  EXPECT_TRUE(AllNear(out, expected, {1e-6, 1e-5}));
  // The quirk: position 0 gets its own value in full (W_0 = 1), and the last
  // position is not the softmax average over all keys (which the non-causal
  // form gives).
  EXPECT_NEAR(out[0], 1.0 / (1.0 + std::exp(-0.5)) * v[0], 1e-6);
  inputs.attn_mask = AttnMask::All();
  std::vector<float> non_causal(10);
  ASSERT_TRUE(attention
                  .Forward(*ctx_, inputs,
                           TensorView<float>(non_causal.data(), {1, 5, 1, 2}),
                           nullptr)
                  .ok());
  EXPECT_GT(std::fabs(non_causal[9] - out[9]), 1e-3);
}

TEST_F(AftTest, SimpleBackwardMatchesCentralDifferencesOfReference) {
  for (bool causal : {false, true}) {
    const AttentionCase c{2, 6, causal ? 6 : 4, 2, 3, 3};
    const AttentionData data(c, 27, 2, -2, 2);
    AttentionInputs inputs = data.Inputs();
    inputs.attn_mask = causal ? AttnMask::Causal() : AttnMask::All();
    inputs.key_lengths.lengths = {c.s, c.s - 2};
    AftSimpleAttention attention;
    SCOPED_TRACE(::testing::Message() << "causal " << causal);
    ExpectAftGradientsMatch(
        *ctx_, attention, data, inputs,
        [&](const std::vector<double>& q, const std::vector<double>& k,
            const std::vector<double>& v, const std::vector<double>&,
            const std::vector<double>&) {
          return SimpleReference(c, causal, q, k, v,
                                 inputs.key_lengths.lengths);
        });
  }
}

TEST_F(AftTest, SpecsAndDefaults) {
  const AttentionSpec full = AftFullAttentionSpec();
  EXPECT_EQ(full.name, "aft-full");
  AttentionOptions options;
  for (const OptionSpec& option : full.options) {
    if (option.default_value.has_value())
      options.Set(option.name, *option.default_value);
  }
  EXPECT_EQ(options.Int("max_sequence_length"), 1024);
  EXPECT_EQ(options.Int("aft_parameterization"), 64);
  absl::StatusOr<std::unique_ptr<Attention>> built = full.factory(options, {});
  ASSERT_TRUE(built.ok()) << built.status();
  EXPECT_STREQ((*built)->name(), "aft-full");
  EXPECT_EQ((*built)->Parameters()[0].value->shape(), (Shape{1024, 64}));
  options.Set("aft_parameterization", int64_t{0});
  EXPECT_EQ(full.factory(options, {}).status().code(),
            absl::StatusCode::kInvalidArgument);

  const AttentionSpec simple = AftSimpleAttentionSpec();
  EXPECT_EQ(simple.name, "aft-simple");
  EXPECT_TRUE(simple.options.empty());
  built = simple.factory(AttentionOptions(), {});
  ASSERT_TRUE(built.ok()) << built.status();
  EXPECT_STREQ((*built)->name(), "aft-simple");
  EXPECT_TRUE((*built)->Parameters().empty());
}

TEST_F(AftTest, BadInputsAreErrors) {
  std::vector<float> buffer(1000);
  TensorView<const float> q(buffer.data(), {1, 4, 2, 3});
  TensorView<const float> k(buffer.data(), {1, 4, 2, 3});
  TensorView<const float> v3(buffer.data(), {1, 4, 2, 3});
  TensorView<const float> v5(buffer.data(), {1, 4, 2, 5});
  TensorView<float> out3(buffer.data() + 500, {1, 4, 2, 3});
  TensorView<float> out5(buffer.data() + 500, {1, 4, 2, 5});
  auto full = MakeFull({.max_sequence_length = 3, .aft_parameterization = 2});
  AftSimpleAttention simple;

  AttentionInputs unequal{.queries = q, .keys = k, .values = v5};
  for (Attention* attention : {static_cast<Attention*>(full.get()),
                               static_cast<Attention*>(&simple)}) {
    const absl::Status status =
        attention->Forward(*ctx_, unequal, out5, nullptr);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(status.message().find("E = 3 and D = 5"), std::string::npos)
        << status;
  }
  AttentionInputs inputs{.queries = q, .keys = k, .values = v3};
  absl::Status status = full->Forward(*ctx_, inputs, out3, nullptr);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("max_sequence_length = 3"), std::string::npos)
      << status;
  EXPECT_EQ(
      AftFullAttention::Create({.max_sequence_length = 0}).status().code(),
      absl::StatusCode::kInvalidArgument);

  std::vector<float> mask(16);
  for (const AttnMask& bad :
       {AttnMask::Additive(TensorView<const float>(mask.data(), {4, 4})),
        AttnMask::Causal(1)}) {
    inputs.attn_mask = bad;
    status = simple.Forward(*ctx_, inputs, out3, nullptr);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(status.message().find("attn_mask must be all-ones or causal"),
              std::string::npos)
        << status;
  }
  AttentionInputs cross{
      .queries = TensorView<const float>(buffer.data(), {1, 3, 2, 3}),
      .keys = k,
      .values = v3,
      .attn_mask = AttnMask::Causal()};
  status = simple.Forward(*ctx_, cross,
                          TensorView<float>(buffer.data() + 500, {1, 3, 2, 3}),
                          nullptr);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("L == S"), std::string::npos) << status;

  AttentionCache empty;
  std::vector<float> grad(1000);
  inputs.attn_mask = AttnMask::All();
  const AttentionGrads grads{TensorView<float>(grad.data(), {1, 4, 2, 3}),
                             TensorView<float>(grad.data(), {1, 4, 2, 3}),
                             TensorView<float>(grad.data(), {1, 4, 2, 3})};
  EXPECT_EQ(simple.Backward(*ctx_, inputs, empty, out3, grads).code(),
            absl::StatusCode::kFailedPrecondition);
  auto big = MakeFull({.max_sequence_length = 8, .aft_parameterization = 2});
  EXPECT_EQ(big->Backward(*ctx_, inputs, empty, out3, grads).code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace ftx
