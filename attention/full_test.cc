// "full" attention against the scalar reference
// (kernels/reference/attention_ref.h) in double: forward over masks, key
// lengths, cross-attention shapes and strided inputs; backward against central
// differences of the reference; dropout determinism; the per-head score bias
// (forward, gradients of Q, K, V and of the bias itself, bad bias inputs).
#include "attention/full.h"

#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/reference/attention_ref.h"
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

reference::AdditiveMaskFn MaskFunction(const AttnMask& mask) {
  return [mask](int64_t l, int64_t s) {
    return static_cast<double>(mask.At(l, s));
  };
}

// Full attention with a per-head bias [H, L, S] (dense, double), built from
// the per-head reference: head h attends with the additive mask
// mask(l, s) + bias[h, l, s]. q, k, v, out: dense [N, T, H, *].
std::vector<double> BiasedReference(const AttentionCase& c,
                                    const std::vector<double>& q,
                                    const std::vector<double>& k,
                                    const std::vector<double>& v,
                                    const std::vector<double>& bias,
                                    double temp, const AttnMask& mask,
                                    const std::vector<int64_t>& key_lengths) {
  // Copies head h of a dense [N, T, H, W] tensor into [N, T, 1, W].
  auto head_slice = [&](const std::vector<double>& x, int64_t steps,
                        int64_t width, int64_t h) {
    std::vector<double> slice;
    for (int64_t n = 0; n < c.n; ++n)
      for (int64_t t = 0; t < steps; ++t)
        for (int64_t w = 0; w < width; ++w)
          slice.push_back(x[((n * steps + t) * c.h + h) * width + w]);
    return slice;
  };
  std::vector<double> out(c.n * c.l * c.h * c.d);
  for (int64_t h = 0; h < c.h; ++h) {
    const std::vector<double> q_h = head_slice(q, c.l, c.e, h);
    const std::vector<double> k_h = head_slice(k, c.s, c.e, h);
    const std::vector<double> v_h = head_slice(v, c.s, c.d, h);
    std::vector<double> out_h(c.n * c.l * c.d);
    reference::FullAttention<double>(
        {c.n, c.l, c.s, 1, c.e, c.d}, q_h.data(), k_h.data(), v_h.data(), temp,
        [&](int64_t l, int64_t s) {
          return static_cast<double>(mask.At(l, s)) +
                 bias[(h * c.l + l) * c.s + s];
        },
        key_lengths, out_h.data());
    for (int64_t n = 0; n < c.n; ++n)
      for (int64_t l = 0; l < c.l; ++l)
        for (int64_t d = 0; d < c.d; ++d)
          out[((n * c.l + l) * c.h + h) * c.d + d] =
              out_h[(n * c.l + l) * c.d + d];
  }
  return out;
}

// A mechanism that keeps the default AttentionSupport: it must refuse a bias.
class NoBiasAttention : public Attention {
 public:
  const char* name() const override { return "no-bias"; }
  absl::Status Forward(const Context& ctx, const AttentionInputs& inputs,
                       TensorView<float> out, AttentionCache* cache) override {
    return ValidateAttentionForward("NoBiasAttention", ctx, inputs, out)
        .status();
  }
  absl::Status Backward(const Context& ctx, const AttentionInputs& inputs,
                        const AttentionCache& cache,
                        TensorView<const float> d_out,
                        const AttentionGrads& grads) override {
    return ValidateAttentionBackward("NoBiasAttentionBackward", ctx, inputs,
                                     d_out, grads)
        .status();
  }
};

class FullAttentionTest : public ::testing::Test {
 protected:
  void SetUp() override { ctx_ = Context::Create({.num_threads = 2}).value(); }
  std::unique_ptr<Context> ctx_;
};

TEST_F(FullAttentionTest, ForwardMatchesReference) {
  const AttentionCase cases[] = {{1, 1, 1, 1, 1, 1},
                                 {2, 5, 7, 3, 4, 6},
                                 {2, 9, 9, 2, 17, 5},
                                 {1, 3, 33, 4, 8, 8}};
  std::vector<float> additive_storage;
  for (const AttentionCase& c : cases) {
    AttentionData qkv(c, 11, 3, -2, 2);
    additive_storage = RandomUniformVector(c.l * c.s, 5, -1, 1);
    additive_storage[0] = -std::numeric_limits<float>::infinity();
    const AttnMask masks[] = {AttnMask::All(), AttnMask::Causal(),
                              AttnMask::Additive(TensorView<const float>(
                                  additive_storage.data(), {c.l, c.s}))};
    for (const AttnMask& mask : masks) {
      for (bool padded : {false, true}) {
        AttentionInputs inputs{.queries = qkv.queries(),
                               .keys = qkv.keys(),
                               .values = qkv.values(),
                               .attn_mask = mask};
        if (padded) {
          inputs.key_lengths.lengths.assign(c.n, c.s);
          inputs.key_lengths.lengths[0] =
              c.s > 1 ? c.s - 1 : 0;  // may mask a row
        }
        for (std::optional<float> temp :
             {std::optional<float>(), std::optional<float>(0.3f)}) {
          FullAttention attention({.softmax_temp = temp});
          std::vector<float> out(c.n * c.l * c.h * c.d, NAN);
          ASSERT_TRUE(
              attention
                  .Forward(*ctx_, inputs,
                           TensorView<float>(out.data(), {c.n, c.l, c.h, c.d}),
                           nullptr)
                  .ok());
          std::vector<double> expected(out.size());
          const double t =
              temp.has_value() ? *temp : 1.0 / std::sqrt(double(c.e));
          reference::FullAttention<double>(
              {c.n, c.l, c.s, c.h, c.e, c.d},
              AttentionData::Dense(qkv.queries()).data(),
              AttentionData::Dense(qkv.keys()).data(),
              AttentionData::Dense(qkv.values()).data(), t, MaskFunction(mask),
              inputs.key_lengths.lengths, expected.data());
          EXPECT_TRUE(AllNear(out, expected, {2e-6, 2e-5}))
              << "case " << c.n << "x" << c.l << "x" << c.s << " mask "
              << static_cast<int>(mask.kind()) << " padded " << padded;
        }
      }
    }
  }
}

TEST_F(FullAttentionTest, BackwardMatchesCentralDifferencesOfReference) {
  const AttentionCase c{2, 4, 6, 2, 3, 5};
  const AttentionData data(c, 21, 2, -2, 2);
  for (const AttnMask& mask : {AttnMask::All(), AttnMask::Causal()}) {
    AttentionInputs inputs = data.Inputs();
    inputs.attn_mask = mask;
    inputs.key_lengths.lengths = {6, 4};
    FullAttention attention;
    testing::ExpectGradientsMatch(
        *ctx_, attention, data, inputs,
        [&](const std::vector<double>& q, const std::vector<double>& k,
            const std::vector<double>& v) {
          std::vector<double> out(data.OutSize());
          reference::FullAttention<double>(
              {c.n, c.l, c.s, c.h, c.e, c.d}, q.data(), k.data(), v.data(),
              1.0 / std::sqrt(3.0), MaskFunction(mask),
              inputs.key_lengths.lengths, out.data());
          return out;
        });
  }
}

TEST_F(FullAttentionTest, DropoutIsSeededAndOnlyInTraining) {
  const AttentionCase c{1, 16, 16, 2, 4, 4};
  const AttentionData data(c, 31, 0);
  AttentionInputs inputs = data.Inputs();
  FullAttention attention({.attention_dropout = 0.5f});
  const Shape out_shape{c.n, c.l, c.h, c.d};
  std::vector<float> eval(c.n * c.l * c.h * c.d), a(eval.size()),
      b(eval.size()), other(eval.size());
  ASSERT_TRUE(attention
                  .Forward(*ctx_, inputs,
                           TensorView<float>(eval.data(), out_shape), nullptr)
                  .ok());
  inputs.training = true;
  inputs.seed = 7;
  AttentionCache cache;
  ASSERT_TRUE(attention
                  .Forward(*ctx_, inputs,
                           TensorView<float>(a.data(), out_shape), &cache)
                  .ok());
  ASSERT_TRUE(attention
                  .Forward(*ctx_, inputs,
                           TensorView<float>(b.data(), out_shape), nullptr)
                  .ok());
  inputs.seed = 8;
  ASSERT_TRUE(attention
                  .Forward(*ctx_, inputs,
                           TensorView<float>(other.data(), out_shape), nullptr)
                  .ok());
  EXPECT_EQ(a, b);
  EXPECT_NE(a, other);
  EXPECT_NE(a, eval);
  // About half of the probabilities are dropped, the rest doubled.
  ASSERT_EQ(cache.saved.size(), 2u);
  const float* p = cache.saved[0].data<float>();
  const float* dropped = cache.saved[1].data<float>();
  int64_t zeros = 0;
  for (int64_t i = 0; i < cache.saved[0].NumElements(); ++i) {
    if (dropped[i] == 0.0f) {
      ++zeros;
    } else {
      EXPECT_FLOAT_EQ(dropped[i], 2.0f * p[i]);
    }
  }
  EXPECT_NEAR(static_cast<double>(zeros) / cache.saved[0].NumElements(), 0.5,
              0.06);
}

TEST_F(FullAttentionTest, BadInputsAreErrors) {
  std::vector<float> buffer(1000);
  TensorView<const float> q(buffer.data(), {1, 4, 2, 3});
  TensorView<const float> k(buffer.data(), {1, 5, 2, 3});
  TensorView<const float> v(buffer.data(), {1, 5, 2, 6});
  TensorView<float> out(buffer.data() + 500, {1, 4, 2, 6});
  FullAttention attention;
  AttentionInputs wrong_keys{
      .queries = q,
      .keys = TensorView<const float>(buffer.data(), {1, 5, 2, 4}),
      .values = v};
  absl::Status status = attention.Forward(*ctx_, wrong_keys, out, nullptr);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("keys"), std::string::npos) << status;

  AttentionInputs bad_lengths{.queries = q, .keys = k, .values = v};
  bad_lengths.key_lengths.lengths = {6};
  status = attention.Forward(*ctx_, bad_lengths, out, nullptr);
  EXPECT_NE(status.message().find("key_lengths[0] = 6"), std::string::npos)
      << status;

  std::vector<float> mask(12);
  AttentionInputs bad_mask{.queries = q,
                           .keys = k,
                           .values = v,
                           .attn_mask = AttnMask::Additive(
                               TensorView<const float>(mask.data(), {4, 3}))};
  status = attention.Forward(*ctx_, bad_mask, out, nullptr);
  EXPECT_NE(status.message().find("attn_mask"), std::string::npos) << status;

  AttentionCache empty;
  std::vector<float> grad(1000);
  AttentionInputs ok{.queries = q, .keys = k, .values = v};
  status = attention.Backward(*ctx_, ok, empty, out,
                              {TensorView<float>(grad.data(), {1, 4, 2, 3}),
                               TensorView<float>(grad.data(), {1, 5, 2, 3}),
                               TensorView<float>(grad.data(), {1, 5, 2, 6})});
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(FullAttentionTest, HeadBiasForwardMatchesReference) {
  const AttentionCase cases[] = {
      {1, 1, 1, 1, 1, 1}, {2, 5, 7, 3, 4, 6}, {2, 9, 9, 2, 17, 5}};
  for (const AttentionCase& c : cases) {
    const AttentionData qkv(c, 41, 3, -2, 2);
    // The bias is a strided view: rows of S keys padded to S + 3.
    const int64_t row = c.s + 3;
    const std::vector<float> bias_storage =
        RandomUniformVector(c.h * c.l * row, 43, -3, 3);
    const TensorView<const float> bias(bias_storage.data(), {c.h, c.l, c.s},
                                       {c.l * row, row, 1});
    std::vector<double> dense_bias;
    for (int64_t h = 0; h < c.h; ++h)
      for (int64_t l = 0; l < c.l; ++l)
        for (int64_t s = 0; s < c.s; ++s)
          dense_bias.push_back(bias.at(h, l, s));
    for (const AttnMask& mask : {AttnMask::All(), AttnMask::Causal()}) {
      AttentionInputs inputs = qkv.Inputs();
      inputs.attn_mask = mask;
      inputs.head_bias = bias;
      inputs.key_lengths.lengths.assign(c.n, c.s);
      inputs.key_lengths.lengths.back() = (c.s + 1) / 2;
      FullAttention attention({.softmax_temp = 0.7f});
      std::vector<float> out(c.n * c.l * c.h * c.d, NAN);
      ASSERT_TRUE(attention
                      .Forward(*ctx_, inputs,
                               TensorView<float>(out.data(), qkv.OutShape()),
                               nullptr)
                      .ok());
      const std::vector<double> expected = BiasedReference(
          c, AttentionData::Dense(qkv.queries()),
          AttentionData::Dense(qkv.keys()), AttentionData::Dense(qkv.values()),
          dense_bias, 0.7, mask, inputs.key_lengths.lengths);
      EXPECT_TRUE(AllNear(out, expected, {2e-6, 2e-5}))
          << "case " << c.n << "x" << c.l << "x" << c.s << " mask "
          << static_cast<int>(mask.kind());
    }
  }
}

TEST_F(FullAttentionTest, HeadBiasChangesTheOutput) {
  // A bias that favours key 0 for head 0 only: head 0 moves toward v_0, head 1
  // is unchanged.
  const AttentionCase c{1, 3, 4, 2, 2, 2};
  const AttentionData qkv(c, 51, 0);
  std::vector<float> bias(c.h * c.l * c.s, 0.0f);
  for (int64_t l = 0; l < c.l; ++l) bias[l * c.s] = 30.0f;
  AttentionInputs inputs = qkv.Inputs();
  std::vector<float> plain(qkv.OutSize()), biased(qkv.OutSize());
  FullAttention attention;
  ASSERT_TRUE(attention
                  .Forward(*ctx_, inputs,
                           TensorView<float>(plain.data(), qkv.OutShape()),
                           nullptr)
                  .ok());
  inputs.head_bias = TensorView<const float>(bias.data(), {c.h, c.l, c.s});
  ASSERT_TRUE(attention
                  .Forward(*ctx_, inputs,
                           TensorView<float>(biased.data(), qkv.OutShape()),
                           nullptr)
                  .ok());
  for (int64_t l = 0; l < c.l; ++l) {
    for (int64_t d = 0; d < c.d; ++d) {
      EXPECT_NEAR(biased[(l * c.h + 0) * c.d + d], qkv.values().at(0, 0, 0, d),
                  1e-6);
      EXPECT_FLOAT_EQ(biased[(l * c.h + 1) * c.d + d],
                      plain[(l * c.h + 1) * c.d + d]);
    }
  }
}

TEST_F(FullAttentionTest, HeadBiasBackwardMatchesCentralDifferences) {
  const AttentionCase c{2, 4, 6, 2, 3, 5};
  const AttentionData data(c, 61, 2, -2, 2);
  const std::vector<float> bias =
      RandomUniformVector(c.h * c.l * c.s, 63, -2, 2);
  const std::vector<double> bias_d = testing::Cast<double>(bias);
  const double temp = 1.0 / std::sqrt(3.0);
  for (const AttnMask& mask : {AttnMask::All(), AttnMask::Causal()}) {
    AttentionInputs inputs = data.Inputs();
    inputs.attn_mask = mask;
    inputs.key_lengths.lengths = {6, 4};
    inputs.head_bias = TensorView<const float>(bias.data(), {c.h, c.l, c.s});
    FullAttention attention;
    testing::ExpectGradientsMatch(
        *ctx_, attention, data, inputs,
        [&](const std::vector<double>& q, const std::vector<double>& k,
            const std::vector<double>& v) {
          return BiasedReference(c, q, k, v, bias_d, temp, mask,
                                 inputs.key_lengths.lengths);
        });

    // The bias gradient, accumulated onto 0.25.
    AttentionCache cache;
    std::vector<float> out(data.OutSize());
    ASSERT_TRUE(attention
                    .Forward(*ctx_, inputs,
                             TensorView<float>(out.data(), data.OutShape()),
                             &cache)
                    .ok());
    const std::vector<float> d_out = RandomUniformVector(out.size(), 65);
    std::vector<float> d_q(c.n * c.l * c.h * c.e), d_k(c.n * c.s * c.h * c.e),
        d_v(c.n * c.s * c.h * c.d), d_bias(bias.size(), 0.25f);
    const AttentionGrads grads{
        TensorView<float>(d_q.data(), {c.n, c.l, c.h, c.e}),
        TensorView<float>(d_k.data(), {c.n, c.s, c.h, c.e}),
        TensorView<float>(d_v.data(), {c.n, c.s, c.h, c.d}),
        TensorView<float>(d_bias.data(), {c.h, c.l, c.s})};
    const absl::Status status = attention.Backward(
        *ctx_, inputs, cache,
        TensorView<const float>(d_out.data(), data.OutShape()), grads);
    ASSERT_TRUE(status.ok()) << status;
    std::vector<double> analytic = testing::Cast<double>(d_bias);
    for (double& g : analytic) g -= 0.25;
    const std::vector<double> w(d_out.begin(), d_out.end());
    const std::vector<double> q = AttentionData::Dense(inputs.queries);
    const std::vector<double> k = AttentionData::Dense(inputs.keys);
    const std::vector<double> v = AttentionData::Dense(inputs.values);
    EXPECT_TRUE(testing::GradientMatches(
        [&](const std::vector<double>& b) {
          return testing::Dot(w, BiasedReference(c, q, k, v, b, temp, mask,
                                                 inputs.key_lengths.lengths));
        },
        bias_d, analytic, {2e-5, 1e-4}))
        << "d_head_bias, mask " << static_cast<int>(mask.kind());
  }
}

TEST_F(FullAttentionTest, BadHeadBiasInputsAreErrors) {
  const AttentionCase c{1, 4, 5, 2, 3, 6};
  const AttentionData data(c, 71);
  std::vector<float> buffer(1000), grad(1000);
  const TensorView<float> out(buffer.data() + 500, data.OutShape());
  FullAttention attention;

  AttentionInputs wrong_shape = data.Inputs();
  wrong_shape.head_bias =
      TensorView<const float>(buffer.data(), {c.h, c.s, c.l});
  absl::Status status = attention.Forward(*ctx_, wrong_shape, out, nullptr);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("head_bias has shape"), std::string::npos)
      << status;

  AttentionInputs strided_last = data.Inputs();
  strided_last.head_bias = TensorView<const float>(
      buffer.data(), {c.h, c.l, c.s}, {c.l * c.s * 2, c.s * 2, 2});
  status = attention.Forward(*ctx_, strided_last, out, nullptr);
  EXPECT_NE(status.message().find("unit stride"), std::string::npos) << status;

  AttentionInputs null_bias = data.Inputs();
  null_bias.head_bias = TensorView<const float>(nullptr, {c.h, c.l, c.s});
  status = attention.Forward(*ctx_, null_bias, out, nullptr);
  EXPECT_NE(status.message().find("head_bias has null data"), std::string::npos)
      << status;

  // A mechanism with the default AttentionSupport refuses a bias.
  NoBiasAttention no_bias;
  EXPECT_FALSE(no_bias.SupportsHeadBias());
  EXPECT_TRUE(attention.SupportsHeadBias());
  AttentionInputs biased = data.Inputs();
  biased.head_bias = TensorView<const float>(buffer.data(), {c.h, c.l, c.s});
  EXPECT_TRUE(no_bias.Forward(*ctx_, data.Inputs(), out, nullptr).ok());
  status = no_bias.Forward(*ctx_, biased, out, nullptr);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("does not support a head_bias"),
            std::string::npos)
      << status;

  // d_head_bias without a head_bias, and with the wrong shape.
  AttentionCache cache;
  ASSERT_TRUE(attention.Forward(*ctx_, data.Inputs(), out, &cache).ok());
  AttentionGrads grads{
      TensorView<float>(grad.data(), {c.n, c.l, c.h, c.e}),
      TensorView<float>(grad.data() + 100, {c.n, c.s, c.h, c.e}),
      TensorView<float>(grad.data() + 200, {c.n, c.s, c.h, c.d}),
      TensorView<float>(grad.data() + 400, {c.h, c.l, c.s})};
  status = attention.Backward(*ctx_, data.Inputs(), cache, out, grads);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("no head_bias"), std::string::npos) << status;
  ASSERT_TRUE(attention.Forward(*ctx_, biased, out, &cache).ok());
  grads.d_head_bias = TensorView<float>(grad.data() + 400, {c.h, c.l});
  status = attention.Backward(*ctx_, biased, cache, out, grads);
  EXPECT_NE(status.message().find("d_head_bias has shape"), std::string::npos)
      << status;
}

}  // namespace
}  // namespace ftx
