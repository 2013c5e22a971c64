// Parity of single x-transformers 0.26.6 features and of product-key-memory
// 0.1.10 with fixtures written by tools/fixtures/make_x_features.py:
//  - feature_attention: Attention(dim=12, heads=3, dim_head=4, qk_norm=True,
//    head_scale=True, gate_values=True, on_attn=True), rebuilt from to_q /
//    to_k / to_v (kernels/linear), QkNorm (learned temperature), "full" with
//    softmax_temp = 1, HeadScale, ValueGating and AttentionOnAttention;
//    forward and the gradients of x and of every parameter.
//  - feature_pkm: PKM(dim=8, heads=2, num_keys=6, topk=3, dim_head=8) in eval
//    mode (BatchNorm1d with running statistics) as ProductKeyMemory with
//    kBatchNormRunning and key_dim 4, its weights and buffers (running
//    statistics, num_batches_tracked) in a ParamStore under PKM's state_dict
//    keys, whose export must equal the fixture's state_dict.
// x-transformers >= 1.0 features (qk-norm groups and scales, per-head value
// gates, ResiDual, the forgetful mask) are not in the pinned venv; their unit
// tests compare with double references.
#include <cstdint>
#include <map>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "attention/attention_on_attention.h"
#include "attention/full.h"
#include "attention/qk_norm.h"
#include "attention/value_gating.h"
#include "gtest/gtest.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor.h"
#include "kernels/linear/linear.h"
#include "layers/normformer.h"
#include "layers/product_key_memory.h"
#include "models/param_store.h"
#include "models/state_dict_map.h"
#include "tests/parity/fixture.h"

namespace ftx::parity {
namespace {

constexpr char kAttentionFixture[] =
    "tests/data/parity/x_transformers/feature_attention.safetensors";
constexpr char kPkmFixture[] =
    "tests/data/parity/x_transformers/feature_pkm.safetensors";

Tensor Zeros(const Shape& shape) {
  return Tensor::Create(DType::kF32, shape).value();
}

// ExpectParity, and the relative error as a test property (test.xml).
void Check(const Tensor& actual, const Tensor& expected, double tolerance,
           const std::string& what) {
  ExpectParity(actual.view<const float>(), expected.view<const float>(),
               tolerance, what);
  ::testing::Test::RecordProperty(
      what, absl::StrCat(RelativeError(actual.view<const float>(),
                                       expected.view<const float>())));
}

TEST(XFeaturesParityTest, AttentionWithQkNormHeadScaleGateAndOnAttn) {
  auto fixture = Fixture::Open(kAttentionFixture);
  ASSERT_TRUE(fixture.ok()) << fixture.status();
  auto ctx = Context::Create({.num_threads = 2}).value();
  constexpr int64_t B = 2, T = 7, C = 12, H = 3, E = 4;
  const Tensor x = fixture->Float("input.x");
  ASSERT_EQ(x.shape(), (Shape{B, T, C}));
  const Tensor w_q = fixture->Float("param.to_q.weight");
  const Tensor w_k = fixture->Float("param.to_k.weight");
  const Tensor w_v = fixture->Float("param.to_v.weight");
  const Tensor temperature = fixture->Float("param.scale");
  const Tensor gamma = fixture->Float("param.head_scale_params");
  const Tensor gate_w = fixture->Float("param.to_v_gate.weight");
  const Tensor gate_b = fixture->Float("param.to_v_gate.bias");
  const Tensor w_out = fixture->Float("param.to_out.0.weight");

  auto qk_norm =
      QkNorm::Create({.heads = H,
                      .head_dim = E,
                      .variant = QkNormVariant::kLearnedTemperature});
  auto head_scale = HeadScale::Create({.heads = H});
  auto gating = ValueGating::Create({.dim = C, .heads = H, .head_dim = E});
  auto on_attn = AttentionOnAttention::Create({.dim = C, .in_dim = H * E});
  ASSERT_TRUE(qk_norm.ok() && head_scale.ok() && gating.ok() && on_attn.ok());
  FullAttention full({.softmax_temp = 1.0f, .attention_dropout = 0.0f});
  const QkNormParams qk_params{temperature.view<const float>(), {}, {}};
  const ValueGatingParams gate_params{gate_w.view<const float>(),
                                      gate_b.view<const float>()};

  // Forward, in x-transformers 0.26.6 Attention.forward's order.
  Tensor q = Zeros({B, T, H, E}), k = Zeros({B, T, H, E}),
         v = Zeros({B, T, H, E});
  ASSERT_TRUE(LinearForward(*ctx, x.view<const float>(),
                            w_q.view<const float>(), {},
                            q.view<float>().Reshape({B, T, C}))
                  .ok());
  ASSERT_TRUE(LinearForward(*ctx, x.view<const float>(),
                            w_k.view<const float>(), {},
                            k.view<float>().Reshape({B, T, C}))
                  .ok());
  ASSERT_TRUE(LinearForward(*ctx, x.view<const float>(),
                            w_v.view<const float>(), {},
                            v.view<float>().Reshape({B, T, C}))
                  .ok());
  Tensor q_norm = Zeros({B, T, H, E}), k_norm = Zeros({B, T, H, E});
  ASSERT_TRUE(qk_norm
                  ->Forward(*ctx, qk_params, q.view<const float>(),
                            k.view<const float>(), q_norm.view<float>(),
                            k_norm.view<float>())
                  .ok());
  AttentionInputs inputs;
  inputs.queries = q_norm.view<const float>();
  inputs.keys = k_norm.view<const float>();
  inputs.values = v.view<const float>();
  Tensor attended = Zeros({B, T, H, E});
  AttentionCache attention_cache;
  ASSERT_TRUE(
      full.Forward(*ctx, inputs, attended.view<float>(), &attention_cache)
          .ok());
  Tensor scaled = Zeros({B, T, H, E});
  ASSERT_TRUE(head_scale
                  ->Forward(*ctx, gamma.view<const float>(),
                            attended.view<const float>(), scaled.view<float>())
                  .ok());
  Tensor gated = Zeros({B, T, C});
  ValueGatingCache gate_cache;
  ASSERT_TRUE(gating
                  ->Forward(*ctx, gate_params, x.view<const float>(),
                            scaled.view<const float>().Reshape({B, T, C}),
                            gated.view<float>(), &gate_cache)
                  .ok());
  Tensor y = Zeros({B, T, C});
  AttentionOnAttentionCache on_attn_cache;
  ASSERT_TRUE(on_attn
                  ->Forward(*ctx, w_out.view<const float>(),
                            gated.view<const float>(), y.view<float>(),
                            &on_attn_cache)
                  .ok());
  Check(y, fixture->Float("output.out"), kForwardTolerance, "attention output");

  // Backward, the forward read in reverse.
  const Tensor d_y = fixture->Float("d_output");
  Tensor d_w_out = Zeros(w_out.shape()), d_gated = Zeros({B, T, C});
  ASSERT_TRUE(on_attn
                  ->Backward(*ctx, w_out.view<const float>(), on_attn_cache,
                             gated.view<const float>(), d_y.view<const float>(),
                             d_gated.view<float>(), d_w_out.view<float>())
                  .ok());
  Tensor d_x = Zeros({B, T, C}), d_scaled = Zeros({B, T, H, E});
  Tensor d_gate_w = Zeros(gate_w.shape()), d_gate_b = Zeros(gate_b.shape());
  ASSERT_TRUE(gating
                  ->Backward(*ctx, gate_params, gate_cache,
                             x.view<const float>(),
                             scaled.view<const float>().Reshape({B, T, C}),
                             d_gated.view<const float>(), d_x.view<float>(),
                             d_scaled.view<float>().Reshape({B, T, C}),
                             {d_gate_w.view<float>(), d_gate_b.view<float>()})
                  .ok());
  Tensor d_attended = Zeros({B, T, H, E}), d_gamma = Zeros(gamma.shape());
  ASSERT_TRUE(head_scale
                  ->Backward(*ctx, gamma.view<const float>(),
                             attended.view<const float>(),
                             d_scaled.view<const float>(),
                             d_attended.view<float>(), d_gamma.view<float>())
                  .ok());
  Tensor d_q_norm = Zeros({B, T, H, E}), d_k_norm = Zeros({B, T, H, E});
  Tensor d_v = Zeros({B, T, H, E});
  ASSERT_TRUE(full.Backward(*ctx, inputs, attention_cache,
                            d_attended.view<const float>(),
                            {d_q_norm.view<float>(), d_k_norm.view<float>(),
                             d_v.view<float>()})
                  .ok());
  Tensor d_q = Zeros({B, T, H, E}), d_k = Zeros({B, T, H, E});
  Tensor d_temperature = Zeros(temperature.shape());
  ASSERT_TRUE(
      qk_norm
          ->Backward(*ctx, qk_params, q.view<const float>(),
                     k.view<const float>(), d_q_norm.view<const float>(),
                     d_k_norm.view<const float>(), d_q.view<float>(),
                     d_k.view<float>(), {d_temperature.view<float>(), {}, {}})
          .ok());
  Tensor d_w_q = Zeros(w_q.shape()), d_w_k = Zeros(w_k.shape()),
         d_w_v = Zeros(w_v.shape());
  const LinearGradOptions accumulate{.accumulate_input_grad = true};
  for (auto [d_proj, weight, d_weight] :
       {std::tuple<Tensor*, const Tensor*, Tensor*>{&d_q, &w_q, &d_w_q},
        {&d_k, &w_k, &d_w_k},
        {&d_v, &w_v, &d_w_v}}) {
    ASSERT_TRUE(LinearBackward(
                    *ctx, x.view<const float>(), weight->view<const float>(),
                    d_proj->view<const float>().Reshape({B, T, C}),
                    d_x.view<float>(), d_weight->view<float>(), {}, accumulate)
                    .ok());
  }
  const std::vector<std::pair<std::string, const Tensor*>> grads = {
      {"grad.input.x", &d_x},
      {"grad.param.to_q.weight", &d_w_q},
      {"grad.param.to_k.weight", &d_w_k},
      {"grad.param.to_v.weight", &d_w_v},
      {"grad.param.scale", &d_temperature},
      {"grad.param.head_scale_params", &d_gamma},
      {"grad.param.to_v_gate.weight", &d_gate_w},
      {"grad.param.to_v_gate.bias", &d_gate_b},
      {"grad.param.to_out.0.weight", &d_w_out}};
  for (const auto& [name, grad] : grads) {
    Check(*grad, fixture->Float(name), kGradientTolerance, name);
  }
}

TEST(XFeaturesParityTest, ProductKeyMemoryWithRunningBatchNorm) {
  auto fixture = Fixture::Open(kPkmFixture);
  ASSERT_TRUE(fixture.ok()) << fixture.status();
  auto ctx = Context::Create({.num_threads = 1}).value();
  auto pkm =
      ProductKeyMemory::Create({.dim = 8,
                                .heads = 2,
                                .num_keys = 6,
                                .topk = 3,
                                .key_dim = 4,
                                .query_norm = PkmQueryNorm::kBatchNormRunning});
  ASSERT_TRUE(pkm.ok()) << pkm.status();
  const std::vector<ParamShape> shapes = pkm->ParamShapes();
  auto store = ParamStore::Create(shapes);
  ASSERT_TRUE(store.ok()) << store.status();
  const StateDictMap map = ProductKeyMemoryStateDictMap(shapes);
  const absl::Status loaded = LoadFixtureParams(*fixture, map, *store);
  ASSERT_TRUE(loaded.ok()) << loaded;
  ExpectExportMatchesStateDict(*fixture, map, *store,
                               ProductKeyMemoryReferenceShapes(shapes));

  // Values (and gradients of the trainable ones) in ParamShapes order, the
  // order of ProductKeyMemoryTensors.
  std::vector<TensorView<float>> values, grads;
  for (const ParamShape& shape : shapes) {
    values.push_back(store->Value(shape.name).value());
    grads.push_back(shape.trainable ? store->Grad(shape.name).value()
                                    : values.back());
  }
  ASSERT_EQ(values.size(), 8u);
  const ProductKeyMemoryParams params{values[0], values[1], values[2],
                                      values[3], values[4], values[5],
                                      values[6], values[7]};
  const Tensor x = fixture->Float("input.x");
  Tensor y = Zeros(x.shape());
  ProductKeyMemoryCache cache;
  ASSERT_TRUE(
      pkm->Forward(*ctx, params, x.view<const float>(), y.view<float>(), &cache)
          .ok());
  Check(y, fixture->Float("output.out"), kForwardTolerance, "pkm output");
  store->ZeroGrads();
  Tensor d_x = Zeros(x.shape());
  ASSERT_TRUE(pkm->Backward(*ctx, params, cache, x.view<const float>(),
                            fixture->Float("d_output").view<const float>(),
                            d_x.view<float>(),
                            {grads[0], grads[1], grads[2], grads[3], grads[4],
                             grads[5], grads[6], grads[7]})
                  .ok());
  Check(d_x, fixture->Float("grad.input.x"), kGradientTolerance,
        "pkm grad.input.x");
  for (size_t i = 0; i < shapes.size(); ++i) {
    if (!shapes[i].trainable) continue;
    const std::string name = absl::StrCat("grad.param.", shapes[i].name);
    const Tensor expected = fixture->Float(name);
    ExpectParity(grads[i], expected.view<const float>(), kGradientTolerance,
                 absl::StrCat("pkm ", name));
    ::testing::Test::RecordProperty(
        absl::StrCat("pkm ", name),
        absl::StrCat(RelativeError(grads[i], expected.view<const float>())));
  }
}

}  // namespace
}  // namespace ftx::parity
