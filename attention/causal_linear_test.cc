// "causal-linear" against the scalar reference in double (forward over shapes
// and key lengths, backward by central differences) and its mask requirements.
#include "attention/causal_linear.h"

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
                                     k.data(), v.data(), /*causal=*/true, 1e-6,
                                     key_lengths, out.data());
  return out;
}

class CausalLinearAttentionTest : public ::testing::Test {
 protected:
  void SetUp() override { ctx_ = Context::Create({.num_threads = 2}).value(); }
  std::unique_ptr<Context> ctx_;
};

TEST_F(CausalLinearAttentionTest, ForwardMatchesReference) {
  const AttentionCase cases[] = {{1, 1, 1, 1, 1, 1},
                                 {2, 7, 7, 3, 4, 6},
                                 {2, 33, 33, 2, 17, 5},
                                 {1, 64, 64, 4, 8, 8}};
  for (const AttentionCase& c : cases) {
    const AttentionData data(c, 101, 3, -2, 2);
    for (bool padded : {false, true}) {
      AttentionInputs inputs = data.Inputs();
      inputs.attn_mask = AttnMask::Causal();
      if (padded) {
        inputs.key_lengths.lengths.assign(c.n, c.s);
        inputs.key_lengths.lengths[0] = c.s / 2;
      }
      CausalLinearAttention attention;
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
          << c.l << " padded " << padded;
    }
  }
}

TEST_F(CausalLinearAttentionTest,
       BackwardMatchesCentralDifferencesOfReference) {
  const AttentionCase c{2, 6, 6, 2, 3, 4};
  const AttentionData data(c, 111, 2);
  AttentionInputs inputs = data.Inputs();
  inputs.attn_mask = AttnMask::Causal();
  inputs.key_lengths.lengths = {6, 4};
  CausalLinearAttention attention;
  testing::ExpectGradientsMatch(
      *ctx_, attention, data, inputs,
      [&](const std::vector<double>& q, const std::vector<double>& k,
          const std::vector<double>& v) {
        return Reference(c, q, k, v, inputs.key_lengths.lengths);
      });
}

TEST_F(CausalLinearAttentionTest, RequiresCausalSelfAttention) {
  CausalLinearAttention attention;
  const AttentionData square({1, 3, 3, 1, 2, 2}, 121);
  std::vector<float> out(square.OutSize());
  absl::Status status = attention.Forward(
      *ctx_, square.Inputs(), TensorView<float>(out.data(), square.OutShape()),
      nullptr);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("causal"), std::string::npos) << status;
  const AttentionData cross({1, 3, 4, 1, 2, 2}, 122);
  AttentionInputs inputs = cross.Inputs();
  inputs.attn_mask = AttnMask::Causal();
  status = attention.Forward(
      *ctx_, inputs, TensorView<float>(out.data(), cross.OutShape()), nullptr);
  EXPECT_NE(status.message().find("S = 4"), std::string::npos) << status;
}

}  // namespace
}  // namespace ftx
