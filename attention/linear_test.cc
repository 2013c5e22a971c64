// "linear" attention against the scalar reference in double: forward over
// shapes, key lengths and a relu feature map; backward against central
// differences; mask errors.
#include "attention/linear.h"

#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/reference/attention_ref.h"
#include "tests/util/attention_data.h"
#include "tests/util/tolerance.h"

namespace ftx {
namespace {

using ::ftx::testing::AllNear;
using ::ftx::testing::AttentionCase;
using ::ftx::testing::AttentionData;

std::vector<double> Reference(const AttentionCase& c,
                              const std::vector<double>& q,
                              const std::vector<double>& k,
                              const std::vector<double>& v,
                              const std::vector<int64_t>& key_lengths) {
  std::vector<double> out(c.n * c.l * c.h * c.d);
  reference::LinearAttention<double>({c.n, c.l, c.s, c.h, c.e, c.d}, q.data(),
                                     k.data(), v.data(), /*causal=*/false, 1e-6,
                                     key_lengths, out.data());
  return out;
}

class LinearAttentionTest : public ::testing::Test {
 protected:
  void SetUp() override { ctx_ = Context::Create({.num_threads = 2}).value(); }
  std::unique_ptr<Context> ctx_;
};

TEST_F(LinearAttentionTest, ForwardMatchesReference) {
  const AttentionCase cases[] = {{1, 1, 1, 1, 1, 1},
                                 {2, 5, 7, 3, 4, 6},
                                 {2, 9, 9, 2, 17, 5},
                                 {1, 33, 3, 4, 8, 8}};
  for (const AttentionCase& c : cases) {
    const AttentionData data(c, 41, 3, -2, 2);
    for (bool padded : {false, true}) {
      AttentionInputs inputs = data.Inputs();
      if (padded) {
        inputs.key_lengths.lengths.assign(c.n, c.s);
        inputs.key_lengths.lengths[0] = c.s / 2;
      }
      LinearAttention attention;
      std::vector<float> out(data.OutSize(), NAN);
      ASSERT_TRUE(attention
                      .Forward(*ctx_, inputs,
                               TensorView<float>(out.data(), data.OutShape()),
                               nullptr)
                      .ok());
      const auto expected = Reference(c, AttentionData::Dense(data.queries()),
                                      AttentionData::Dense(data.keys()),
                                      AttentionData::Dense(data.values()),
                                      inputs.key_lengths.lengths);
      EXPECT_TRUE(AllNear(out, expected, {1e-5, 1e-4}))
          << c.n << "x" << c.l << "x" << c.s << " padded " << padded;
    }
  }
}

TEST_F(LinearAttentionTest, ReluFeatureMapMatchesDirectComputation) {
  // With phi = relu the result is sum_s (relu(q).relu(k_s)) v_s / (sum + eps).
  const AttentionCase c{1, 4, 5, 1, 3, 2};
  const AttentionData data(c, 51, 0, -1, 1);
  LinearAttention attention(
      std::make_unique<ActivationFeatureMap>(Activation::kRelu));
  std::vector<float> out(data.OutSize());
  ASSERT_TRUE(attention
                  .Forward(*ctx_, data.Inputs(),
                           TensorView<float>(out.data(), data.OutShape()),
                           nullptr)
                  .ok());
  const auto q = AttentionData::Dense(data.queries()),
             k = AttentionData::Dense(data.keys()),
             v = AttentionData::Dense(data.values());
  auto relu = [](double x) { return x > 0 ? x : 0.0; };
  for (int64_t l = 0; l < c.l; ++l) {
    double numerator[2] = {0, 0}, denominator = 0;
    for (int64_t s = 0; s < c.s; ++s) {
      double similarity = 0;
      for (int64_t e = 0; e < c.e; ++e)
        similarity += relu(q[l * 3 + e]) * relu(k[s * 3 + e]);
      denominator += similarity;
      for (int64_t d = 0; d < 2; ++d) numerator[d] += similarity * v[s * 2 + d];
    }
    for (int64_t d = 0; d < 2; ++d) {
      EXPECT_NEAR(out[l * 2 + d], numerator[d] / (denominator + 1e-6),
                  1e-5 * (1 + std::abs(numerator[d] / (denominator + 1e-6))));
    }
  }
}

TEST_F(LinearAttentionTest, BackwardMatchesCentralDifferencesOfReference) {
  const AttentionCase c{2, 4, 6, 2, 3, 5};
  const AttentionData data(c, 61, 2);
  AttentionInputs inputs = data.Inputs();
  inputs.key_lengths.lengths = {6, 3};
  LinearAttention attention;
  testing::ExpectGradientsMatch(
      *ctx_, attention, data, inputs,
      [&](const std::vector<double>& q, const std::vector<double>& k,
          const std::vector<double>& v) {
        return Reference(c, q, k, v, inputs.key_lengths.lengths);
      });
}

TEST_F(LinearAttentionTest, RejectsNonAllOnesMask) {
  const AttentionData data({1, 3, 3, 1, 2, 2}, 71);
  AttentionInputs inputs = data.Inputs();
  inputs.attn_mask = AttnMask::Causal();
  LinearAttention attention;
  std::vector<float> out(data.OutSize());
  const absl::Status status = attention.Forward(
      *ctx_, inputs, TensorView<float>(out.data(), data.OutShape()), nullptr);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("causal-linear"), std::string::npos)
      << status;
}

}  // namespace
}  // namespace ftx
