// Recurrent cross-attention: stepping the queries one at a time against a fixed
// memory equals the parallel "full" / "linear" cross-attention (with key
// lengths) row by row; the memory is read on the first step only.
#include "attention/recurrent_cross.h"

#include <memory>
#include <vector>

#include "attention/full.h"
#include "attention/linear.h"
#include "gtest/gtest.h"
#include "tests/util/attention_data.h"
#include "tests/util/tolerance.h"

namespace ftx {
namespace {

using ::ftx::testing::AllNear;
using ::ftx::testing::AttentionCase;
using ::ftx::testing::AttentionData;

std::vector<float> StepThrough(const Context& ctx,
                               RecurrentCrossAttention& attention,
                               const AttentionData& data,
                               const LengthMask& key_lengths,
                               bool change_memory_after_first_step) {
  const AttentionCase& c = data.shape();
  std::vector<double> q = AttentionData::Dense(data.queries());
  std::vector<float> keys =
      testing::Cast<float>(AttentionData::Dense(data.keys()));
  std::vector<float> values =
      testing::Cast<float>(AttentionData::Dense(data.values()));
  std::vector<float> result(c.n * c.l * c.h * c.d), query(c.n * c.h * c.e),
      out(c.n * c.h * c.d);
  std::unique_ptr<RecurrentState> state = attention.NewState();
  for (int64_t l = 0; l < c.l; ++l) {
    for (int64_t n = 0; n < c.n; ++n) {
      for (int64_t i = 0; i < c.h * c.e; ++i) {
        query[n * c.h * c.e + i] = q[(n * c.l + l) * c.h * c.e + i];
      }
    }
    const absl::Status status = attention.Step(
        ctx, TensorView<const float>(query.data(), {c.n, c.h, c.e}),
        TensorView<const float>(keys.data(), {c.n, c.s, c.h, c.e}),
        TensorView<const float>(values.data(), {c.n, c.s, c.h, c.d}),
        key_lengths, TensorView<float>(out.data(), {c.n, c.h, c.d}), *state);
    EXPECT_TRUE(status.ok()) << status;
    if (change_memory_after_first_step)
      std::fill(values.begin(), values.end(), 1e6f);
    for (int64_t n = 0; n < c.n; ++n) {
      for (int64_t i = 0; i < c.h * c.d; ++i) {
        result[(n * c.l + l) * c.h * c.d + i] = out[n * c.h * c.d + i];
      }
    }
  }
  return result;
}

class RecurrentCrossTest : public ::testing::Test {
 protected:
  void SetUp() override { ctx_ = Context::Create({.num_threads = 2}).value(); }
  std::unique_ptr<Context> ctx_;
};

TEST_F(RecurrentCrossTest, StepsEqualParallelCrossAttention) {
  const AttentionData data({2, 5, 7, 3, 4, 6}, 131, 1, -2, 2);
  AttentionInputs inputs = data.Inputs();
  inputs.key_lengths.lengths = {7, 3};
  for (bool linear : {false, true}) {
    std::unique_ptr<RecurrentCrossAttention> recurrent;
    std::unique_ptr<Attention> parallel;
    if (linear) {
      recurrent = std::make_unique<RecurrentCrossLinearAttention>();
      parallel = std::make_unique<LinearAttention>();
    } else {
      recurrent = std::make_unique<RecurrentCrossFullAttention>();
      parallel = std::make_unique<FullAttention>();
    }
    std::vector<float> expected(data.OutSize());
    ASSERT_TRUE(
        parallel
            ->Forward(*ctx_, inputs,
                      TensorView<float>(expected.data(), data.OutShape()),
                      nullptr)
            .ok());
    const std::vector<float> stepped =
        StepThrough(*ctx_, *recurrent, data, inputs.key_lengths,
                    /*change_memory_after_first_step=*/true);
    EXPECT_TRUE(AllNear(stepped, expected, {1e-5, 1e-4})) << recurrent->name();
  }
}

TEST_F(RecurrentCrossTest, BadShapesAreErrors) {
  RecurrentCrossFullAttention attention;
  std::unique_ptr<RecurrentState> state = attention.NewState();
  std::vector<float> buffer(256);
  const absl::Status status = attention.Step(
      *ctx_, TensorView<const float>(buffer.data(), {2, 3, 4}),
      TensorView<const float>(buffer.data(), {2, 5, 3, 3}),
      TensorView<const float>(buffer.data(), {2, 5, 3, 2}), LengthMask{},
      TensorView<float>(buffer.data(), {2, 3, 2}), *state);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  LengthMask too_long{{6, 1}};
  RecurrentCrossLinearAttention linear;
  std::unique_ptr<RecurrentState> linear_state = linear.NewState();
  const absl::Status length_status = linear.Step(
      *ctx_, TensorView<const float>(buffer.data(), {2, 3, 4}),
      TensorView<const float>(buffer.data(), {2, 5, 3, 4}),
      TensorView<const float>(buffer.data(), {2, 5, 3, 2}), too_long,
      TensorView<float>(buffer.data() + 200, {2, 3, 2}), *linear_state);
  EXPECT_NE(length_status.message().find("key_lengths[0] = 6"),
            std::string::npos)
      << length_status;
}

}  // namespace
}  // namespace ftx
