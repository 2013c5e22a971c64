// Parity of the x-transformers 0.26.6 stack options dynamic_pos_bias and
// cross_residual_attn (fixtures from tools/fixtures/make_x_stack_extra.py):
// a TransformerWrapper with an Encoder / Decoder whose self-attention adds the
// dynamic position bias MLP's scores (one case with log distances, LayerNorm
// and an MLP of depth 3), and a cross-attending Decoder whose cross-attention
// layers add their predecessor's pre-softmax scores. Weights enter through
// the models/x_state_dict.h map; the logits must match to 1e-4, every
// parameter gradient of sum(logits * d_output) and the context gradient to
// 1e-3 (relative to the tensor's scale). The fixtures use no padding, so
// 0.26.6's -finfo.max mask fill cannot differ from ftx's -inf.
//
// The dynamic bias MLP's output bias (rel_pos.mlp.<depth>.bias) adds one
// constant per head to every score of that head, which the softmax ignores:
// its gradient is exactly 0 in both libraries, and the fixture holds float
// round-off of order 1e-7 there. Relative errors of round-off are
// meaningless, so for that tensor both sides must be below 1e-5 in absolute
// value instead (every other gradient is O(1e-2) or larger).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "attention/builtin.h"
#include "attention/registry.h"
#include "gtest/gtest.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor.h"
#include "models/param_store.h"
#include "models/transformer.h"
#include "models/x_state_dict.h"
#include "tests/parity/fixture.h"

namespace ftx::parity {
namespace {

constexpr char kDirectory[] = "tests/data/parity/x_transformers/";

// The bound on the analytically zero gradient of the dynamic bias MLP's
// output bias (see the top of this file).
constexpr double kZeroGradientBound = 1e-5;

float MaxAbs(TensorView<const float> values) {
  float largest = 0.0f;
  for (int64_t i = 0; i < values.NumElements(); ++i) {
    largest = std::max(largest, std::abs(values.data()[i]));
  }
  return largest;
}

class XStackExtraParityTest : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    ctx_ = Context::Create({.num_threads = 2}).value();
    ASSERT_TRUE(RegisterBuiltinAttentions(registry_).ok());
  }
  std::unique_ptr<Context> ctx_;
  AttentionRegistry registry_;
};

TEST_P(XStackExtraParityTest, LogitsAndGradientsMatch) {
  absl::StatusOr<Fixture> fixture = Fixture::Open(
      absl::StrCat(kDirectory, "x_stack_extra_", GetParam(), ".safetensors"));
  ASSERT_TRUE(fixture.ok()) << fixture.status();
  absl::StatusOr<TransformerConfig> config =
      TransformerConfigFromJson(fixture->Meta("ftx_config"));
  ASSERT_TRUE(config.ok()) << config.status();
  absl::StatusOr<std::unique_ptr<TransformerWrapper>> model =
      TransformerWrapper::Create(*config, registry_);
  ASSERT_TRUE(model.ok()) << model.status();
  absl::StatusOr<ParamStore> store =
      ParamStore::Create((*model)->ParamShapes());
  ASSERT_TRUE(store.ok()) << store.status();
  absl::StatusOr<StateDictMap> map = XTransformersStateDictMap(*config);
  ASSERT_TRUE(map.ok()) << map.status();
  const absl::Status loaded = LoadFixtureParams(*fixture, *map, *store);
  ASSERT_TRUE(loaded.ok()) << loaded;

  const Tensor expected = fixture->Float("output.logits");  // [B, T, V]
  const Shape& shape = expected.shape();
  const std::vector<int64_t> wide_tokens = fixture->Int("input.tokens");
  const std::vector<int32_t> tokens(wide_tokens.begin(), wide_tokens.end());
  ASSERT_EQ(static_cast<int64_t>(tokens.size()), shape.dim(0) * shape.dim(1));
  TransformerInputs inputs;
  inputs.tokens =
      TensorView<const int32_t>(tokens.data(), {shape.dim(0), shape.dim(1)});
  Tensor context;
  if (config->cross_attend) {
    context = fixture->Float("input.context");  // [B, S, C]
    inputs.context = context.view<float>();
  }
  Tensor logits = Tensor::Create(DType::kF32, shape).value();
  const absl::Status forward =
      (*model)->Forward(*ctx_, *store, inputs, logits.view<float>(),
                        /*save_for_backward=*/true);
  ASSERT_TRUE(forward.ok()) << forward;
  ExpectParity(logits.view<float>(), expected.view<float>(), kForwardTolerance,
               "logits");
  RecordProperty("logits_relative_error",
                 absl::StrCat(RelativeError(logits.view<float>(),
                                            expected.view<float>())));

  const Tensor d_output = fixture->Float("d_output");
  Tensor d_context;
  if (config->cross_attend) {
    d_context = Tensor::Create(DType::kF32, context.shape()).value();
  }
  const absl::Status backward = (*model)->Backward(
      *ctx_, *store, d_output.view<float>(),
      config->cross_attend ? d_context.view<float>() : TensorView<float>());
  ASSERT_TRUE(backward.ok()) << backward;
  if (config->cross_attend) {
    ExpectParity(d_context.view<float>(),
                 fixture->Float("grad.input.context").view<float>(),
                 kGradientTolerance, "d context");
  }
  int64_t compared = 0;
  for (const StateDictRule& rule : map->rules) {
    const std::string name = absl::StrCat("grad.param.", rule.reference);
    if (!fixture->Has(name)) continue;
    absl::StatusOr<TensorView<float>> grad = store->Grad(rule.ftx);
    ASSERT_TRUE(grad.ok()) << grad.status();
    ++compared;
    if (config->dynamic_pos_bias &&
        rule.ftx == absl::StrCat("attn_layers.rel_pos.mlp.",
                                 config->dynamic_pos_bias_mlp_depth, ".bias")) {
      EXPECT_LE(MaxAbs(*grad), kZeroGradientBound) << rule.ftx;
      EXPECT_LE(MaxAbs(fixture->Float(name).view<float>()), kZeroGradientBound)
          << name;
      continue;
    }
    ExpectParity(*grad, fixture->Float(name).view<float>(), kGradientTolerance,
                 absl::StrCat("d ", rule.reference));
  }
  EXPECT_EQ(compared, static_cast<int64_t>(
                          fixture->NamesWithPrefix("grad.param.").size()))
      << "fixture gradients without a rule";
}

INSTANTIATE_TEST_SUITE_P(XTransformers0266, XStackExtraParityTest,
                         ::testing::Values("dynamic_encoder", "dynamic_decoder",
                                           "cross_residual"),
                         [](const ::testing::TestParamInfo<const char*>& info) {
                           return std::string(info.param);
                         });

}  // namespace
}  // namespace ftx::parity
