// Recurrent attention: stepping through a sequence equals the parallel
// computation with a causal mask at every position ("full" against
// FullAttention, "linear" against the causal linear reference); shape changes
// between steps are errors.
#include "attention/recurrent.h"

#include <memory>
#include <vector>

#include "attention/full.h"
#include "gtest/gtest.h"
#include "kernels/reference/attention_ref.h"
#include "tests/util/attention_data.h"
#include "tests/util/tolerance.h"

namespace ftx {
namespace {

using ::ftx::testing::AllNear;
using ::ftx::testing::AttentionCase;
using ::ftx::testing::AttentionData;
using ::ftx::testing::StepThrough;

class RecurrentTest : public ::testing::Test {
 protected:
  void SetUp() override { ctx_ = Context::Create({.num_threads = 2}).value(); }
  std::unique_ptr<Context> ctx_;
};

TEST_F(RecurrentTest, FullStepsEqualCausalParallelForward) {
  const AttentionData data({2, 9, 9, 3, 5, 4}, 81, 1, -2, 2);
  RecurrentFullAttention recurrent;
  const std::vector<float> stepped = StepThrough(*ctx_, recurrent, data);
  FullAttention parallel;
  AttentionInputs inputs = data.Inputs();
  inputs.attn_mask = AttnMask::Causal();
  std::vector<float> expected(data.OutSize());
  ASSERT_TRUE(parallel
                  .Forward(*ctx_, inputs,
                           TensorView<float>(expected.data(), data.OutShape()),
                           nullptr)
                  .ok());
  EXPECT_TRUE(AllNear(stepped, expected, {1e-6, 1e-5}));
}

TEST_F(RecurrentTest, LinearStepsEqualCausalLinearReference) {
  const AttentionCase c{2, 11, 11, 2, 4, 3};
  const AttentionData data(c, 91, 1, -2, 2);
  RecurrentLinearAttention recurrent;
  const std::vector<float> stepped = StepThrough(*ctx_, recurrent, data);
  std::vector<double> expected(data.OutSize());
  reference::LinearAttention<double>(
      {c.n, c.l, c.s, c.h, c.e, c.d},
      AttentionData::Dense(data.queries()).data(),
      AttentionData::Dense(data.keys()).data(),
      AttentionData::Dense(data.values()).data(),
      /*causal=*/true, 1e-6, {}, expected.data());
  EXPECT_TRUE(AllNear(stepped, expected, {1e-5, 1e-4}));
}

TEST_F(RecurrentTest, ShapeChangeBetweenStepsIsAnError) {
  RecurrentFullAttention full;
  RecurrentLinearAttention linear;
  for (RecurrentAttention* attention :
       {static_cast<RecurrentAttention*>(&full),
        static_cast<RecurrentAttention*>(&linear)}) {
    std::unique_ptr<RecurrentState> state = attention->NewState();
    std::vector<float> buffer(64, 0.5f), out(64);
    ASSERT_TRUE(attention
                    ->Step(*ctx_,
                           TensorView<const float>(buffer.data(), {2, 2, 3}),
                           TensorView<const float>(buffer.data(), {2, 2, 3}),
                           TensorView<const float>(buffer.data(), {2, 2, 4}),
                           TensorView<float>(out.data(), {2, 2, 4}), *state)
                    .ok());
    const absl::Status status = attention->Step(
        *ctx_, TensorView<const float>(buffer.data(), {1, 2, 3}),
        TensorView<const float>(buffer.data(), {1, 2, 3}),
        TensorView<const float>(buffer.data(), {1, 2, 4}),
        TensorView<float>(out.data(), {1, 2, 4}), *state);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(status.message().find("changed"), std::string::npos) << status;
  }
}

}  // namespace
}  // namespace ftx
