// "full" attention against the scalar reference
// (kernels/reference/attention_ref.h) in double: forward over masks, key
// lengths, cross-attention shapes and strided inputs; backward against central
// differences of the reference; dropout determinism.
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

}  // namespace
}  // namespace ftx
