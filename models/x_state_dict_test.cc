// The x-transformers 0.26.6 state-dict maps: rule names for the nesting of
// norms and block wrappers, that every ftx parameter is covered, an
// export / import round trip, the converter registration, and errors.
// Numerical parity lives in tests/parity/x_transformers_test.cc.
#include "models/x_state_dict.h"

#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "attention/builtin.h"
#include "attention/registry.h"
#include "gtest/gtest.h"
#include "models/safetensors.h"

namespace ftx {
namespace {

TransformerConfig SmallConfig() {
  TransformerConfig c;
  c.dim = 8;
  c.depth = 2;
  c.heads = 2;
  c.dim_head = 4;
  c.ff_mult = 2;
  c.num_tokens = 11;
  c.max_seq_len = 16;
  return c;
}

std::string FtxNameOf(const StateDictMap& map, const std::string& reference) {
  for (const StateDictRule& rule : map.rules) {
    if (rule.reference == reference) return rule.ftx;
  }
  return "";
}

// Every ftx parameter of the model is named by exactly one rule.
void ExpectCoversModel(const TransformerConfig& config,
                       const StateDictMap& map) {
  AttentionRegistry registry;
  ASSERT_TRUE(RegisterBuiltinAttentions(registry).ok());
  auto model = TransformerWrapper::Create(config, registry);
  ASSERT_TRUE(model.ok()) << model.status();
  auto store = ParamStore::Create((*model)->ParamShapes());
  ASSERT_TRUE(store.ok());
  EXPECT_TRUE(ValidateStateDictMap(map, *store).ok())
      << ValidateStateDictMap(map, *store);
  EXPECT_EQ(map.rules.size(), (*model)->ParamShapes().size());
}

TEST(XStateDictTest, PlainEncoderNames) {
  const TransformerConfig config = SmallConfig();
  auto map = XTransformersStateDictMap(config);
  ASSERT_TRUE(map.ok()) << map.status();
  EXPECT_EQ(FtxNameOf(*map, "token_emb.emb.weight"), "token_emb.weight");
  EXPECT_EQ(FtxNameOf(*map, "attn_layers.layers.0.0.0.weight"),
            "attn_layers.layers.0.norm.weight");
  EXPECT_EQ(FtxNameOf(*map, "attn_layers.layers.2.1.to_out.weight"),
            "attn_layers.layers.2.attn.out_projection.weight");
  EXPECT_EQ(FtxNameOf(*map, "attn_layers.layers.3.1.net.3.bias"),
            "attn_layers.layers.3.ff.net.3.bias");
  ExpectCoversModel(config, *map);
}

TEST(XStateDictTest, WrappersNestTheBlock) {
  TransformerConfig config = SmallConfig();
  config.use_rezero = true;
  config.shift_tokens = 1;
  config.macaron = true;
  auto map = XTransformersStateDictMap(config);
  ASSERT_TRUE(map.ok()) << map.status();
  // Rezero(ShiftTokens(Scale(FeedForward))) for layer 0 ('f' first).
  EXPECT_EQ(FtxNameOf(*map, "attn_layers.layers.0.1.fn.fn.fn.net.0.0.weight"),
            "attn_layers.layers.0.ff.net.0.0.weight");
  EXPECT_EQ(FtxNameOf(*map, "attn_layers.layers.0.1.g"),
            "attn_layers.layers.0.rezero.g");
  // Attention blocks are not scaled: Rezero(ShiftTokens(Attention)).
  EXPECT_EQ(FtxNameOf(*map, "attn_layers.layers.1.1.fn.fn.to_q.weight"),
            "attn_layers.layers.1.attn.query_projection.weight");
  ExpectCoversModel(config, *map);
}

TEST(XStateDictTest, NormSlots) {
  TransformerConfig config = SmallConfig();
  config.sandwich_norm = true;
  config.norm = NormType::kRMSNorm;
  auto sandwich = XTransformersStateDictMap(config);
  ASSERT_TRUE(sandwich.ok()) << sandwich.status();
  EXPECT_EQ(FtxNameOf(*sandwich, "attn_layers.layers.1.0.1.g"),
            "attn_layers.layers.1.post_branch_norm.g");
  ExpectCoversModel(config, *sandwich);

  TransformerConfig post = SmallConfig();
  post.pre_norm = false;
  auto post_map = XTransformersStateDictMap(post);
  ASSERT_TRUE(post_map.ok()) << post_map.status();
  EXPECT_EQ(FtxNameOf(*post_map, "attn_layers.layers.0.0.2.bias"),
            "attn_layers.layers.0.norm.bias");
  // The last sublayer has no post-main norm.
  EXPECT_EQ(FtxNameOf(*post_map, "attn_layers.layers.3.0.2.bias"), "");
  ExpectCoversModel(post, *post_map);
}

TEST(XStateDictTest, WrapperOptionsAndPositionBiases) {
  TransformerConfig config = SmallConfig();
  config.emb_dim = 6;
  config.num_memory_tokens = 2;
  config.alibi_pos_bias = true;  // non-causal: learned, bidirectional
  auto map = XTransformersStateDictMap(config);
  ASSERT_TRUE(map.ok()) << map.status();
  EXPECT_EQ(FtxNameOf(*map, "project_emb.weight"), "project_emb.weight");
  EXPECT_EQ(FtxNameOf(*map, "memory_tokens"), "memory_tokens");
  EXPECT_EQ(FtxNameOf(*map, "attn_layers.rel_pos.learned_logslopes_future"),
            "attn_layers.rel_pos.learned_logslopes_future");
  ExpectCoversModel(config, *map);
  auto shapes = XTransformersReferenceShapes(config);
  ASSERT_TRUE(shapes.ok()) << shapes.status();
  EXPECT_EQ((*shapes)["attn_layers.rel_pos.learned_logslopes"],
            (std::vector<int64_t>{2, 1, 1}));
  EXPECT_EQ((*shapes)["project_emb.weight"], (std::vector<int64_t>{8, 6}));

  TransformerConfig t5 = SmallConfig();
  t5.rel_pos_bias = true;
  t5.rel_pos_num_buckets = 8;
  t5.rel_pos_max_distance = 16;
  t5.tie_embedding = true;
  auto t5_map = XTransformersStateDictMap(t5);
  ASSERT_TRUE(t5_map.ok()) << t5_map.status();
  EXPECT_EQ(FtxNameOf(*t5_map, "pos_emb.emb.weight"), "");  // has_pos_emb
  EXPECT_EQ(FtxNameOf(*t5_map, "to_logits.weight"), "");    // tied
  ExpectCoversModel(t5, *t5_map);

  TransformerConfig rotary = SmallConfig();
  rotary.rotary_pos_emb = true;
  rotary.dim_head = 32;
  auto rotary_map = XTransformersStateDictMap(rotary);
  ASSERT_TRUE(rotary_map.ok()) << rotary_map.status();
  EXPECT_TRUE(rotary_map->ignored.empty());
  ASSERT_EQ(rotary_map->fixed.size(), 1u);
  EXPECT_EQ(rotary_map->fixed[0].reference,
            "attn_layers.rotary_pos_emb.inv_freq");
  // 0.26.6's rotary width max(dim_head / 2, 32) = 32: 16 frequencies.
  EXPECT_EQ(rotary_map->fixed[0].shape, std::vector<int64_t>{16});
}

TEST(XStateDictTest, XTransformerMapsIgnoreTheOtherHalf) {
  XTransformerConfig config;
  config.encoder = SmallConfig();
  config.decoder = SmallConfig();
  auto maps = XTransformerStateDictMapsFor(config);
  ASSERT_TRUE(maps.ok()) << maps.status();
  EXPECT_EQ(FtxNameOf(maps->encoder, "encoder.token_emb.emb.weight"),
            "token_emb.weight");
  EXPECT_EQ(FtxNameOf(maps->decoder,
                      "decoder.net.attn_layers.layers.1.1.to_k.weight"),
            "attn_layers.layers.1.cross_attn.key_projection.weight");
  EXPECT_NE(
      std::find(maps->encoder.ignored.begin(), maps->encoder.ignored.end(),
                "decoder.net.token_emb.emb.weight"),
      maps->encoder.ignored.end());
}

TEST(XStateDictTest, ExportImportRoundTrip) {
  TransformerConfig config = SmallConfig();
  config.alibi_pos_bias = true;
  AttentionRegistry registry;
  ASSERT_TRUE(RegisterBuiltinAttentions(registry).ok());
  auto model = TransformerWrapper::Create(config, registry);
  ASSERT_TRUE(model.ok());
  auto source = ParamStore::Create((*model)->ParamShapes());
  ASSERT_TRUE(source.ok());
  auto ctx = Context::Create({.num_threads = 1}).value();
  ASSERT_TRUE((*model)->InitParams(*ctx, *source).ok());
  auto map = XTransformersStateDictMap(config);
  auto shapes = XTransformersReferenceShapes(config);
  ASSERT_TRUE(map.ok() && shapes.ok());
  const std::string path =
      std::string(::testing::TempDir()) + "/x_state_dict_roundtrip.safetensors";
  ASSERT_TRUE(ExportStateDict(*source, *map, *shapes, path).ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  auto restored = ParamStore::Create((*model)->ParamShapes());
  ASSERT_TRUE(restored.ok());
  ASSERT_TRUE(ImportStateDict(*file, *map, *restored).ok());
  const TensorView<float> a = source->values(), b = restored->values();
  ASSERT_EQ(a.NumElements(), b.NumElements());
  EXPECT_TRUE(std::equal(a.data(), a.data() + a.NumElements(), b.data()));
  std::remove(path.c_str());
}

TEST(XStateDictTest, ConverterRegistersOnce) {
  StateDictConverterRegistry registry;
  ASSERT_TRUE(RegisterXTransformersConverter(registry).ok());
  EXPECT_EQ(RegisterXTransformersConverter(registry).code(),
            absl::StatusCode::kAlreadyExists);
  auto converter = registry.Find(kXTransformersLibrary);
  ASSERT_TRUE(converter.ok());
  const std::string json =
      R"({"dim": 8, "depth": 1, "heads": 2, "dim_head": 4, "num_tokens": 5,
          "max_seq_len": 6})";
  auto shapes = (*converter)->param_shapes(json);
  ASSERT_TRUE(shapes.ok()) << shapes.status();
  auto map = (*converter)->make_map(json);
  ASSERT_TRUE(map.ok()) << map.status();
  EXPECT_EQ(map->rules.size(), shapes->size());
  EXPECT_TRUE((*converter)->reference_shapes(json).ok());
}

TEST(XStateDictTest, BadConfigsAreInvalidArgument) {
  TransformerConfig config = SmallConfig();
  config.heads = 0;
  absl::Status status = XTransformersStateDictMap(config).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("heads"), std::string::npos) << status;
  TransformerConfig wrapper = SmallConfig();
  wrapper.num_tokens = 0;
  EXPECT_EQ(XTransformersStateDictMap(wrapper).status().code(),
            absl::StatusCode::kInvalidArgument);
  ViTConfig vit;
  vit.attn_layers = SmallConfig();
  vit.attn_layers.custom_layers = "axf";
  status = XTransformersViTStateDictMap(vit).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("custom_layers"), std::string::npos)
      << status;
}

TEST(XStateDictTest, AttentionAndResidualOptions) {
  TransformerConfig config = SmallConfig();
  config.attn_talking_heads = true;
  config.attn_head_scale = true;
  config.attn_gate_values = true;
  config.attn_on_attn = true;
  config.use_qk_norm_attn = true;
  config.gate_residual = true;
  config.scale_residual = true;
  auto map = XTransformersStateDictMap(config);
  ASSERT_TRUE(map.ok()) << map.status();
  EXPECT_EQ(FtxNameOf(*map, "attn_layers.layers.0.1.to_out.0.weight"),
            "attn_layers.layers.0.attn.out_projection.weight");
  EXPECT_EQ(FtxNameOf(*map, "attn_layers.layers.0.1.scale"),
            "attn_layers.layers.0.attn.qk_norm_scale");
  EXPECT_EQ(
      FtxNameOf(*map,
                "attn_layers.layers.2.1.pre_softmax_talking_heads.weight"),
      "attn_layers.layers.2.attn.pre_softmax_talking_heads.weight");
  EXPECT_EQ(FtxNameOf(*map, "attn_layers.layers.0.0.1.weight"),
            "attn_layers.layers.0.post_branch_norm.weight");
  EXPECT_EQ(FtxNameOf(*map, "attn_layers.layers.0.0.0.weight"), "");
  EXPECT_EQ(FtxNameOf(*map, "attn_layers.layers.1.0.0.weight"),
            "attn_layers.layers.1.norm.weight");
  EXPECT_EQ(FtxNameOf(*map, "attn_layers.layers.1.2.gru.weight_hh"),
            "attn_layers.layers.1.residual.gru.weight_hh");
  EXPECT_EQ(FtxNameOf(*map, "attn_layers.layers.3.2.residual_scale"),
            "attn_layers.layers.3.residual.residual_scale");
  ExpectCoversModel(config, *map);
}

TEST(XStateDictTest, LaterReleaseOptionsHaveNoMap) {
  TransformerConfig config = SmallConfig();
  config.attn_qk_norm = true;
  auto map = XTransformersStateDictMap(config);
  ASSERT_FALSE(map.ok());
  EXPECT_EQ(map.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(map.status().message().find("attn_qk_norm"), std::string::npos);
}

}  // namespace
}  // namespace ftx
