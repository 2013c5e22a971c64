// Parity of ftx's x-transformers-style models with x-transformers 0.26.6
// (fixtures from tools/fixtures/make_x_transformers.py): TransformerWrapper
// with Encoder / Decoder stacks and their options, XTransformer, and
// ViTransformerWrapper. Weights enter through the models/x_state_dict.h maps;
// the logits must match to 1e-4 and every parameter gradient of
// sum(logits * d_output) to 1e-3 (relative to the tensor's scale). The
// Attention / AttentionLayers options covered: talking heads with head scale,
// value gating with attention on attention (and memory kv), the learned-
// temperature qk norm, GRU-gated and scaled residuals, RealFormer residual
// attention (with memory kv; with qk norm and the T5 bias), and the
// Transformer-XL recurrence over three segments (logits and returned memories
// per segment, shift_mem_down, max_mem_len, memory kv).
//
// What is not compared, and why:
//   - ALiBi in 0.26.6 works only with alibi_num_heads = 1: its slopes are
//     padded along the wrong axis (F.pad(..., (0, 0, 0, 0, 0, h - 1)) on
//     [A, 1, 1] slopes gives A + h - 1 rows), which broadcasts against the
//     [B, H, L, S] scores only for A = 1. The fixtures use A = 1 of H = 3.
//   - Masks: 0.26.6 fills masked scores with -finfo.max, so a padded query
//     row is a uniform average there and 0 here; the fixtures use no
//     padding.
//   - Non-causal ALiBi (alibi_encoder) is 0.26.6's learned bidirectional
//     form: tril(|s - l| past) + triu(|s - l| future), positive on both
//     sides.
//   - Transformer-XL memories with padding masks fail in 0.26.6 (the key
//     mask is built for the segment only), and 0.26.6 offsets rotary and the
//     relative biases by the memory length; ftx rejects those combinations,
//     so the fixtures use absolute positions and no padding.
//   - tie_embedding raises AttributeError in 0.26.6 (it reads
//     token_emb.weight, which lives at token_emb.emb.weight), so only ftx's
//     own tests cover it.
#include <algorithm>
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
#include "models/vit.h"
#include "models/x_state_dict.h"
#include "models/xtransformer.h"
#include "tests/parity/fixture.h"

namespace ftx::parity {
namespace {

constexpr char kDirectory[] = "tests/data/parity/x_transformers/";

std::vector<int32_t> Tokens(const Fixture& fixture, absl::string_view name) {
  const std::vector<int64_t> wide = fixture.Int(name);
  return std::vector<int32_t>(wide.begin(), wide.end());
}

// Compares every "grad.param.<reference>" of the fixture with the gradient
// of the ftx parameter the map ties to it; every fixture gradient must be
// covered. Records the largest relative error as the test property
// "max_gradient_relative_error".
void ExpectGradients(const Fixture& fixture, const StateDictMap& map,
                     ParamStore& store) {
  int64_t compared = 0;
  double worst = 0.0;
  for (const StateDictRule& rule : map.rules) {
    const std::string name = absl::StrCat("grad.param.", rule.reference);
    if (!fixture.Has(name)) continue;
    absl::StatusOr<TensorView<float>> grad = store.Grad(rule.ftx);
    ASSERT_TRUE(grad.ok()) << grad.status();
    const Tensor expected = fixture.Float(name);
    ExpectParity(*grad, expected.view<float>(), kGradientTolerance,
                 absl::StrCat("d ", rule.reference));
    worst = std::max(worst, RelativeError(*grad, expected.view<float>()));
    ++compared;
  }
  ::testing::Test::RecordProperty("max_gradient_relative_error",
                                  absl::StrCat(worst));
  EXPECT_EQ(compared,
            static_cast<int64_t>(fixture.NamesWithPrefix("grad.param.").size()))
      << "fixture gradients without a rule";
}

class TransformerWrapperParityTest
    : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    ctx_ = Context::Create({.num_threads = 2}).value();
    ASSERT_TRUE(RegisterBuiltinAttentions(registry_).ok());
  }
  std::unique_ptr<Context> ctx_;
  AttentionRegistry registry_;
};

TEST_P(TransformerWrapperParityTest, LogitsAndGradientsMatch) {
  absl::StatusOr<Fixture> fixture =
      Fixture::Open(absl::StrCat(kDirectory, GetParam(), ".safetensors"));
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
  ASSERT_TRUE(LoadFixtureParams(*fixture, *map, *store).ok())
      << LoadFixtureParams(*fixture, *map, *store);
  ExpectExportMatchesStateDict(*fixture, *map, *store,
                               XTransformersReferenceShapes(*config).value());

  const Tensor expected = fixture->Float("output.logits");  // [B, T, V]
  const Shape& shape = expected.shape();
  const std::vector<int32_t> tokens = Tokens(*fixture, "input.tokens");
  ASSERT_EQ(static_cast<int64_t>(tokens.size()), shape.dim(0) * shape.dim(1));
  Tensor logits = Tensor::Create(DType::kF32, shape).value();
  TransformerInputs inputs;
  inputs.tokens =
      TensorView<const int32_t>(tokens.data(), {shape.dim(0), shape.dim(1)});
  ASSERT_TRUE((*model)
                  ->Forward(*ctx_, *store, inputs, logits.view<float>(),
                            /*save_for_backward=*/true)
                  .ok());
  ExpectParity(logits.view<float>(), expected.view<float>(), kForwardTolerance,
               "logits");
  RecordProperty("logits_relative_error",
                 absl::StrCat(RelativeError(logits.view<float>(),
                                            expected.view<float>())));

  // Introspection: the inputs of the attention layers (return_hiddens) and
  // their post-softmax maps (return_attn).
  const std::vector<TensorView<const float>> hiddens =
      (*model)->attn_layers().Hiddens();
  const std::vector<std::string> hidden_names =
      fixture->NamesWithPrefix("output.hidden.");
  if (!hidden_names.empty()) {
    ASSERT_EQ(hiddens.size(), hidden_names.size());
    for (size_t k = 0; k < hiddens.size(); ++k) {
      const std::string name = absl::StrCat("output.hidden.", k);
      ExpectParity(hiddens[k], fixture->Float(name).view<float>(),
                   kForwardTolerance, name);
    }
  }
  const std::vector<std::string> attn_names =
      fixture->NamesWithPrefix("output.attn.");
  if (!attn_names.empty()) {
    absl::StatusOr<std::vector<Tensor>> maps =
        (*model)->attn_layers().AttentionMaps();
    ASSERT_TRUE(maps.ok()) << maps.status();
    ASSERT_EQ(maps->size(), attn_names.size());
    for (size_t k = 0; k < maps->size(); ++k) {
      const std::string name = absl::StrCat("output.attn.", k);
      ExpectParity((*maps)[k].view<float>(), fixture->Float(name).view<float>(),
                   kForwardTolerance, name);
    }
  }

  const Tensor d_output = fixture->Float("d_output");
  ASSERT_TRUE((*model)->Backward(*ctx_, *store, d_output.view<float>()).ok());
  ExpectGradients(*fixture, *map, *store);
}

INSTANTIATE_TEST_SUITE_P(
    XTransformers0266, TransformerWrapperParityTest,
    ::testing::Values("encoder", "decoder", "rezero", "scalenorm", "rmsnorm",
                      "glu", "mem_kv", "memory_tokens", "t5_encoder",
                      "t5_decoder", "alibi_decoder", "alibi_encoder",
                      "sparse_topk", "shift_tokens", "rotary",
                      "macaron_sandwich", "emb_dim", "talking_heads",
                      "gate_values_on_attn", "qk_norm", "gate_residual",
                      "scale_residual", "residual_attn",
                      "residual_attn_qk_norm"),
    [](const ::testing::TestParamInfo<const char*>& info) {
      return std::string(info.param);
    });

// Transformer-XL recurrence over three segments: the logits and the returned
// memories of every segment, then the parameter gradients of the sum of the
// three segments' losses (the memories are detached, so each segment's
// backward stands alone).
class XlMemoryParityTest : public TransformerWrapperParityTest {};

TEST_P(XlMemoryParityTest, SegmentsMemoriesAndGradientsMatch) {
  absl::StatusOr<Fixture> fixture =
      Fixture::Open(absl::StrCat(kDirectory, GetParam(), ".safetensors"));
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
  ASSERT_TRUE(LoadFixtureParams(*fixture, *map, *store).ok());
  ExpectExportMatchesStateDict(*fixture, *map, *store,
                               XTransformersReferenceShapes(*config).value());

  std::vector<Tensor> mems;
  const int64_t segments = fixture->MetaInt("segments");
  ASSERT_EQ(segments, 3);
  for (int64_t k = 0; k < segments; ++k) {
    SCOPED_TRACE(absl::StrCat("segment ", k));
    const Tensor expected = fixture->Float(absl::StrCat("output.logits.", k));
    const Shape& shape = expected.shape();
    const std::vector<int32_t> tokens =
        Tokens(*fixture, absl::StrCat("input.tokens.", k));
    Tensor logits = Tensor::Create(DType::kF32, shape).value();
    TransformerInputs inputs;
    inputs.tokens =
        TensorView<const int32_t>(tokens.data(), {shape.dim(0), shape.dim(1)});
    for (const Tensor& memory : mems)
      inputs.mems.push_back(memory.view<float>());
    inputs.return_mems = true;
    const absl::Status forward =
        (*model)->Forward(*ctx_, *store, inputs, logits.view<float>(),
                          /*save_for_backward=*/true);
    ASSERT_TRUE(forward.ok()) << forward;
    ExpectParity(logits.view<float>(), expected.view<float>(),
                 kForwardTolerance, absl::StrCat("logits ", k));
    const std::vector<std::string> mem_names =
        fixture->NamesWithPrefix(absl::StrCat("output.mems.", k, "."));
    ASSERT_EQ((*model)->mems().size(), mem_names.size());
    for (size_t l = 0; l < mem_names.size(); ++l) {
      const std::string name = absl::StrCat("output.mems.", k, ".", l);
      ExpectParity((*model)->mems()[l].view<float>(),
                   fixture->Float(name).view<float>(), kForwardTolerance, name);
    }
    const Tensor d_output = fixture->Float(absl::StrCat("d_output.", k));
    ASSERT_TRUE((*model)->Backward(*ctx_, *store, d_output.view<float>()).ok());
    mems.clear();
    for (const Tensor& memory : (*model)->mems()) {
      mems.push_back(Tensor::Create(DType::kF32, memory.shape()).value());
      std::copy(memory.data<float>(),
                memory.data<float>() + memory.NumElements(),
                mems.back().data<float>());
    }
  }
  ExpectGradients(*fixture, *map, *store);
}

INSTANTIATE_TEST_SUITE_P(XTransformers0266, XlMemoryParityTest,
                         ::testing::Values("xl_memory", "xl_memory_encoder"),
                         [](const ::testing::TestParamInfo<const char*>& info) {
                           return std::string(info.param);
                         });

TEST(XTransformerParityTest, LogitsAndGradientsMatch) {
  auto ctx = Context::Create({.num_threads = 2}).value();
  AttentionRegistry registry;
  ASSERT_TRUE(RegisterBuiltinAttentions(registry).ok());
  absl::StatusOr<Fixture> fixture =
      Fixture::Open(absl::StrCat(kDirectory, "xtransformer.safetensors"));
  ASSERT_TRUE(fixture.ok()) << fixture.status();
  // XTransformer(dim = 12, enc_/dec_ depth 1, heads 3, attn_dim_head 5,
  // ff_mult 2, max_seq_len 32; 17 source and 19 target tokens).
  XTransformerConfig config;
  TransformerConfig half;
  half.dim = 12;
  half.depth = 1;
  half.heads = 3;
  half.dim_head = 5;
  half.ff_mult = 2;
  half.max_seq_len = 32;
  config.encoder = half;
  config.encoder.num_tokens = 17;
  config.decoder = half;
  config.decoder.num_tokens = 19;
  absl::StatusOr<std::unique_ptr<XTransformer>> model =
      XTransformer::Create(config, registry);
  ASSERT_TRUE(model.ok()) << model.status();
  absl::StatusOr<XTransformerStore> store = (*model)->CreateStore();
  ASSERT_TRUE(store.ok()) << store.status();
  absl::StatusOr<XTransformerStateDictMaps> maps =
      XTransformerStateDictMapsFor(config);
  ASSERT_TRUE(maps.ok()) << maps.status();
  ASSERT_TRUE(LoadFixtureParams(*fixture, maps->encoder, store->encoder).ok())
      << LoadFixtureParams(*fixture, maps->encoder, store->encoder);
  ASSERT_TRUE(LoadFixtureParams(*fixture, maps->decoder, store->decoder).ok())
      << LoadFixtureParams(*fixture, maps->decoder, store->decoder);

  const Tensor expected = fixture->Float("output.logits");  // [B, T, 19]
  const std::vector<int32_t> src = Tokens(*fixture, "input.src");
  const std::vector<int32_t> tgt = Tokens(*fixture, "input.tgt");
  const int64_t B = expected.shape().dim(0), T = expected.shape().dim(1);
  const int64_t S = static_cast<int64_t>(src.size()) / B;
  Tensor logits = Tensor::Create(DType::kF32, expected.shape()).value();
  XTransformerInputs inputs;
  inputs.src = TensorView<const int32_t>(src.data(), {B, S});
  inputs.tgt = TensorView<const int32_t>(tgt.data(), {B, T});
  ASSERT_TRUE((*model)
                  ->Forward(*ctx, *store, inputs, logits.view<float>(),
                            /*save_for_backward=*/true)
                  .ok());
  ExpectParity(logits.view<float>(), expected.view<float>(), kForwardTolerance,
               "logits");
  const Tensor d_output = fixture->Float("d_output");
  ASSERT_TRUE((*model)->Backward(*ctx, *store, d_output.view<float>()).ok());
  int64_t compared = 0;
  for (const auto& [map, half_store] :
       {std::pair<const StateDictMap*, ParamStore*>{&maps->encoder,
                                                    &store->encoder},
        {&maps->decoder, &store->decoder}}) {
    for (const StateDictRule& rule : map->rules) {
      const std::string name = absl::StrCat("grad.param.", rule.reference);
      if (!fixture->Has(name)) continue;
      absl::StatusOr<TensorView<float>> grad = half_store->Grad(rule.ftx);
      ASSERT_TRUE(grad.ok()) << grad.status();
      ExpectParity(*grad, fixture->Float(name).view<float>(),
                   kGradientTolerance, absl::StrCat("d ", rule.reference));
      ++compared;
    }
  }
  EXPECT_EQ(compared, static_cast<int64_t>(
                          fixture->NamesWithPrefix("grad.param.").size()));
}

TEST(ViTParityTest, LogitsAndGradientsMatch) {
  auto ctx = Context::Create({.num_threads = 2}).value();
  AttentionRegistry registry;
  ASSERT_TRUE(RegisterBuiltinAttentions(registry).ok());
  absl::StatusOr<Fixture> fixture =
      Fixture::Open(absl::StrCat(kDirectory, "vit.safetensors"));
  ASSERT_TRUE(fixture.ok()) << fixture.status();
  // ViTransformerWrapper(image_size 8, patch_size 4, num_classes 5,
  // Encoder(dim 12, depth 1, heads 3, attn_dim_head 5, ff_mult 2)).
  ViTConfig config;
  config.image_size = 8;
  config.patch_size = 4;
  config.num_classes = 5;
  config.attn_layers.dim = 12;
  config.attn_layers.depth = 1;
  config.attn_layers.heads = 3;
  config.attn_layers.dim_head = 5;
  config.attn_layers.ff_mult = 2;
  absl::StatusOr<std::unique_ptr<ViTransformerWrapper>> model =
      ViTransformerWrapper::Create(config, registry);
  ASSERT_TRUE(model.ok()) << model.status();
  absl::StatusOr<ParamStore> store =
      ParamStore::Create((*model)->ParamShapes());
  ASSERT_TRUE(store.ok()) << store.status();
  absl::StatusOr<StateDictMap> map = XTransformersViTStateDictMap(config);
  ASSERT_TRUE(map.ok()) << map.status();
  ASSERT_TRUE(LoadFixtureParams(*fixture, *map, *store).ok())
      << LoadFixtureParams(*fixture, *map, *store);
  ExpectExportMatchesStateDict(*fixture, *map, *store, {});
  const Tensor images = fixture->Float("input.images");     // [B, 3, 8, 8]
  const Tensor expected = fixture->Float("output.logits");  // [B, 5]
  Tensor logits = Tensor::Create(DType::kF32, expected.shape()).value();
  ASSERT_TRUE((*model)
                  ->Forward(*ctx, *store, images.view<float>(),
                            logits.view<float>(), /*save_for_backward=*/true)
                  .ok());
  ExpectParity(logits.view<float>(), expected.view<float>(), kForwardTolerance,
               "logits");
  const Tensor d_output = fixture->Float("d_output");
  const absl::Status backward = (*model)->Backward(
      *ctx, *store, d_output.view<float>(), TensorView<float>());
  ASSERT_TRUE(backward.ok()) << backward;
  ExpectGradients(*fixture, *map, *store);
}

// AttentionLayers.layer_types of x-transformers 0.26.6 for each layer
// sequence option, against XTransformersLayerTypes.
TEST(LayerTypesParityTest, SequencesMatch) {
  absl::StatusOr<Fixture> fixture =
      Fixture::Open(absl::StrCat(kDirectory, "layer_types.safetensors"));
  ASSERT_TRUE(fixture.ok()) << fixture.status();
  struct Case {
    const char* name;
    TransformerConfig config;
  };
  auto make = [](int64_t depth) {
    TransformerConfig c;
    c.dim = 8;
    c.heads = 2;
    c.dim_head = 4;
    c.depth = depth;
    return c;
  };
  std::vector<Case> cases = {
      {"plain", make(3)},     {"cross", make(2)},
      {"macaron", make(2)},   {"sandwich_coef", make(4)},
      {"par_ratio", make(6)}, {"par_ratio_cross", make(4)},
      {"custom", make(2)}};
  cases[1].config.cross_attend = true;
  cases[2].config.macaron = true;
  cases[3].config.sandwich_coef = 2;
  cases[4].config.par_ratio = 4;
  cases[5].config.par_ratio = 3;
  cases[5].config.cross_attend = true;
  cases[6].config.custom_layers = "affaf";
  for (const Case& c : cases) {
    absl::StatusOr<std::string> types = XTransformersLayerTypes(c.config);
    ASSERT_TRUE(types.ok()) << c.name << ": " << types.status();
    EXPECT_EQ(*types, fixture->Meta(absl::StrCat("layer_types.", c.name)))
        << c.name << " (" << fixture->Meta(absl::StrCat("options.", c.name))
        << ")";
  }
}

}  // namespace
}  // namespace ftx::parity
