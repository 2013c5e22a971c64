// Builds and runs every example config in models/configs/ (issue 4): each file
// is read by its model family's FromJson, created, initialised, run forward
// once on random input and, where the family trains, backward once; outputs
// and parameter gradients must be finite and of the right shape. A config file
// missing from ConfigFamilies() fails the test, so new configs must be
// registered there.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "attention/builtin.h"
#include "gtest/gtest.h"
#include "kernels/base/status_macros.h"
#include "models/bert.h"
#include "models/ft_builders.h"
#include "models/lat.h"
#include "models/linformer.h"
#include "models/performer.h"
#include "models/transformer.h"
#include "models/vit.h"
#include "models/xtransformer.h"
#include "tests/util/random.h"

namespace ftx {
namespace {

using ::ftx::testing::RandomUniformVector;

constexpr char kConfigDir[] = "models/configs";
constexpr int64_t kBatch = 2;
constexpr int64_t kLength = 13;

enum class Family {
  kBert,                // BertConfigFromJson (HF BertModel config.json)
  kTransformer,         // TransformerConfigFromJson, TransformerWrapper
  kFtEncoder,           // TransformerEncoderBuilder
  kFtRecurrentDecoder,  // RecurrentDecoderBuilder (step-wise, no backward)
  kPerformerLM,         // PerformerLMConfigFromJson
  kLatLM,               // LatConfigFromJson
  kLinformerLM,         // LinformerLMConfigFromJson
  kXTransformer,        // XTransformerConfigFromJson
  kViT,                 // ViTConfigFromJson
};

// Every file of models/configs/ and the model family that reads it.
const std::map<std::string, Family>& ConfigFamilies() {
  static const auto* const kFamilies = new std::map<std::string, Family>{
      {"bert_like_encoder.json", Family::kTransformer},
      {"bert_tiny.json", Family::kBert},
      {"enc_dec.json", Family::kXTransformer},
      {"favor_decoder_rezero.json", Family::kTransformer},
      {"ft_encoder.json", Family::kFtEncoder},
      {"ft_recurrent_decoder.json", Family::kFtRecurrentDecoder},
      {"gpt_like_decoder.json", Family::kTransformer},
      {"linear_attention_lm.json", Family::kLatLM},
      {"linear_encoder_rotary.json", Family::kTransformer},
      {"linformer_lm.json", Family::kLinformerLM},
      {"performer_lm.json", Family::kPerformerLM},
      {"tiny_decoder.json", Family::kTransformer},
      {"vit.json", Family::kViT},
  };
  return *kFamilies;
}

std::string ReadFile(const std::string& path) {
  std::ifstream file(path);
  std::stringstream contents;
  contents << file.rdbuf();
  return contents.str();
}

std::vector<int32_t> RandomTokens(int64_t count, int64_t num_tokens,
                                  uint64_t seed) {
  std::vector<int32_t> tokens;
  for (double u : RandomUniformVector<double>(count, seed, 0.0, 1.0)) {
    tokens.push_back(static_cast<int32_t>(std::min<int64_t>(
        num_tokens - 1, static_cast<int64_t>(u * num_tokens))));
  }
  return tokens;
}

void ExpectFinite(const std::vector<float>& values, const std::string& what) {
  int64_t bad = 0;
  for (float v : values) bad += std::isfinite(v) ? 0 : 1;
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << values.size()
                    << " values are not finite";
}

void ExpectFiniteGrads(ParamStore& store, const std::string& what) {
  int64_t bad = 0, params = 0;
  store.ForEachParam([&](ParamSlot slot) {
    ++params;
    const float* grad = slot.grad.data();
    for (int64_t i = 0; i < slot.grad.NumElements(); ++i) {
      bad += std::isfinite(grad[i]) ? 0 : 1;
    }
  });
  EXPECT_GT(params, 0) << what;
  EXPECT_EQ(bad, 0) << what << ": non-finite parameter gradients";
}

// The output [rows..., width] of a forward, and a random upstream gradient of
// the same shape.
struct Buffers {
  std::vector<float> out, d_out;
  explicit Buffers(int64_t size)
      : out(size, NAN), d_out(RandomUniformVector<float>(size, 99)) {}
};

absl::Status RunBert(const Context& ctx, const std::string& json) {
  FTX_ASSIGN_OR_RETURN(BertConfig config, BertConfigFromJson(json));
  FTX_ASSIGN_OR_RETURN(auto model, BertModel::Create(config));
  FTX_ASSIGN_OR_RETURN(ParamStore store,
                       ParamStore::Create(model->ParamShapes()));
  FTX_RETURN_IF_ERROR(model->InitParams(ctx, store));
  const int64_t C = config.hidden_size;
  const Shape shape = {kBatch, kLength, C};
  const std::vector<int32_t> ids =
      RandomTokens(kBatch * kLength, config.vocab_size, 0);
  Buffers buffers(shape.NumElements());
  BertInputs inputs;
  inputs.input_ids = TensorView<const int32_t>(ids.data(), {kBatch, kLength});
  FTX_RETURN_IF_ERROR(model->Forward(
      ctx, store, inputs, TensorView<float>(buffers.out.data(), shape),
      /*pooled=*/{}, true));
  ExpectFinite(buffers.out, "last_hidden_state");
  FTX_RETURN_IF_ERROR(model->Backward(
      ctx, store, TensorView<const float>(buffers.d_out.data(), shape),
      /*d_pooled=*/{}));
  ExpectFiniteGrads(store, "BertModel");
  return absl::OkStatus();
}

absl::Status RunTransformer(const Context& ctx,
                            const AttentionRegistry& registry,
                            const std::string& json) {
  FTX_ASSIGN_OR_RETURN(TransformerConfig config,
                       TransformerConfigFromJson(json));
  FTX_ASSIGN_OR_RETURN(auto model,
                       TransformerWrapper::Create(config, registry));
  FTX_ASSIGN_OR_RETURN(ParamStore store,
                       ParamStore::Create(model->ParamShapes()));
  FTX_RETURN_IF_ERROR(model->InitParams(ctx, store));
  const int64_t V = config.num_tokens;
  const std::vector<int32_t> tokens = RandomTokens(kBatch * kLength, V, 1);
  Buffers buffers(kBatch * kLength * V);
  TransformerInputs inputs;
  inputs.tokens = TensorView<const int32_t>(tokens.data(), {kBatch, kLength});
  FTX_RETURN_IF_ERROR(model->Forward(
      ctx, store, inputs,
      TensorView<float>(buffers.out.data(), {kBatch, kLength, V}), true));
  ExpectFinite(buffers.out, "logits");
  FTX_RETURN_IF_ERROR(model->Backward(
      ctx, store,
      TensorView<const float>(buffers.d_out.data(), {kBatch, kLength, V})));
  ExpectFiniteGrads(store, "TransformerWrapper");
  return absl::OkStatus();
}

absl::Status RunFtEncoder(const Context& ctx, const AttentionRegistry& registry,
                          const std::string& json) {
  TransformerEncoderBuilder builder(registry);
  FTX_RETURN_IF_ERROR(builder.FromDictionary(json));
  FTX_ASSIGN_OR_RETURN(auto model, builder.Get());
  FTX_ASSIGN_OR_RETURN(ParamStore store,
                       ParamStore::Create(model->ParamShapes()));
  FTX_RETURN_IF_ERROR(model->InitParams(ctx, store));
  const int64_t C = builder.model_dimensions();
  const Shape shape = {kBatch, kLength, C};
  const std::vector<float> x =
      RandomUniformVector<float>(kBatch * kLength * C, 2);
  Buffers buffers(kBatch * kLength * C);
  std::vector<float> d_x(x.size(), NAN);
  FTX_RETURN_IF_ERROR(model->Forward(
      ctx, store, TensorView<const float>(x.data(), shape), FtEncoderInputs(),
      TensorView<float>(buffers.out.data(), shape), true));
  ExpectFinite(buffers.out, "encoder output");
  FTX_RETURN_IF_ERROR(model->Backward(
      ctx, store, TensorView<const float>(buffers.d_out.data(), shape),
      TensorView<float>(d_x.data(), shape)));
  ExpectFinite(d_x, "d_x");
  ExpectFiniteGrads(store, "FtTransformerEncoder");
  return absl::OkStatus();
}

// Recurrent models decode step by step in eval mode and have no backward.
absl::Status RunFtRecurrentDecoder(const Context& ctx,
                                   const AttentionRegistry& registry,
                                   const std::string& json) {
  RecurrentDecoderBuilder builder(registry);
  FTX_RETURN_IF_ERROR(builder.FromDictionary(json));
  FTX_ASSIGN_OR_RETURN(auto model, builder.Get());
  FTX_ASSIGN_OR_RETURN(ParamStore store,
                       ParamStore::Create(model->ParamShapes()));
  FTX_RETURN_IF_ERROR(model->InitParams(ctx, store));
  const int64_t C = builder.model_dimensions();
  const int64_t memory_dim = builder.cross_model_dimensions();
  constexpr int64_t kMemory = 5;
  const std::vector<float> memory =
      RandomUniformVector<float>(kBatch * kMemory * memory_dim, 3);
  FtRecurrentState state = model->NewState();
  for (int64_t step = 0; step < 4; ++step) {
    const std::vector<float> x =
        RandomUniformVector<float>(kBatch * C, 10 + step);
    std::vector<float> y(kBatch * C, NAN);
    FTX_RETURN_IF_ERROR(model->Step(
        ctx, store, TensorView<const float>(x.data(), {kBatch, C}),
        TensorView<const float>(memory.data(), {kBatch, kMemory, memory_dim}),
        LengthMask(), state, TensorView<float>(y.data(), {kBatch, C})));
    ExpectFinite(y, absl::StrCat("step ", step));
  }
  return absl::OkStatus();
}

absl::Status RunPerformerLM(const Context& ctx, const std::string& json) {
  FTX_ASSIGN_OR_RETURN(PerformerLMConfig config,
                       PerformerLMConfigFromJson(json));
  FTX_ASSIGN_OR_RETURN(auto model, PerformerLM::Create(config));
  FTX_ASSIGN_OR_RETURN(ParamStore store,
                       ParamStore::Create(model->ParamShapes()));
  FTX_RETURN_IF_ERROR(model->InitParams(ctx, store));
  const int64_t V = config.num_tokens;
  const std::vector<int32_t> tokens = RandomTokens(kBatch * kLength, V, 4);
  Buffers buffers(kBatch * kLength * V);
  PerformerLMInputs inputs;
  inputs.tokens = TensorView<const int32_t>(tokens.data(), {kBatch, kLength});
  FTX_RETURN_IF_ERROR(model->Forward(
      ctx, store, inputs,
      TensorView<float>(buffers.out.data(), {kBatch, kLength, V}), true));
  ExpectFinite(buffers.out, "logits");
  FTX_RETURN_IF_ERROR(model->Backward(
      ctx, store,
      TensorView<const float>(buffers.d_out.data(), {kBatch, kLength, V})));
  ExpectFiniteGrads(store, "PerformerLM");
  return absl::OkStatus();
}

absl::Status RunLatLM(const Context& ctx, const std::string& json) {
  FTX_ASSIGN_OR_RETURN(LatConfig config, LatConfigFromJson(json));
  FTX_ASSIGN_OR_RETURN(auto model,
                       LinearAttentionTransformerLM::Create(config));
  FTX_ASSIGN_OR_RETURN(ParamStore store,
                       ParamStore::Create(model->ParamShapes()));
  FTX_RETURN_IF_ERROR(model->InitParams(ctx, store));
  const int64_t V = model->OutputDim();
  const std::vector<int32_t> tokens =
      RandomTokens(kBatch * kLength, config.num_tokens, 5);
  Buffers buffers(kBatch * kLength * V);
  LatInputs inputs;
  inputs.tokens = TensorView<const int32_t>(tokens.data(), {kBatch, kLength});
  FTX_RETURN_IF_ERROR(model->Forward(
      ctx, store, inputs,
      TensorView<float>(buffers.out.data(), {kBatch, kLength, V}), true));
  ExpectFinite(buffers.out, "logits");
  FTX_RETURN_IF_ERROR(model->Backward(
      ctx, store,
      TensorView<const float>(buffers.d_out.data(), {kBatch, kLength, V})));
  ExpectFiniteGrads(store, "LinearAttentionTransformerLM");
  return absl::OkStatus();
}

absl::Status RunLinformerLM(const Context& ctx, const std::string& json) {
  FTX_ASSIGN_OR_RETURN(LinformerLMConfig config,
                       LinformerLMConfigFromJson(json));
  FTX_ASSIGN_OR_RETURN(auto model, LinformerLM::Create(config));
  FTX_ASSIGN_OR_RETURN(ParamStore store,
                       ParamStore::Create(model->ParamShapes()));
  FTX_RETURN_IF_ERROR(model->InitParams(ctx, store));
  // Linformer's sequence length is fixed: input_size.
  const int64_t n = config.linformer.input_size, V = model->output_dim();
  const std::vector<int32_t> tokens =
      RandomTokens(kBatch * n, config.num_tokens, 6);
  Buffers buffers(kBatch * n * V);
  LinformerLMInputs inputs;
  inputs.tokens = TensorView<const int32_t>(tokens.data(), {kBatch, n});
  FTX_RETURN_IF_ERROR(model->Forward(
      ctx, store, inputs, TensorView<float>(buffers.out.data(), {kBatch, n, V}),
      true));
  ExpectFinite(buffers.out, "logits");
  FTX_RETURN_IF_ERROR(model->Backward(
      ctx, store,
      TensorView<const float>(buffers.d_out.data(), {kBatch, n, V})));
  ExpectFiniteGrads(store, "LinformerLM");
  return absl::OkStatus();
}

absl::Status RunXTransformer(const Context& ctx,
                             const AttentionRegistry& registry,
                             const std::string& json) {
  FTX_ASSIGN_OR_RETURN(XTransformerConfig config,
                       XTransformerConfigFromJson(json));
  FTX_ASSIGN_OR_RETURN(auto model, XTransformer::Create(config, registry));
  FTX_ASSIGN_OR_RETURN(XTransformerStore store, model->CreateStore());
  FTX_RETURN_IF_ERROR(model->InitParams(ctx, store));
  constexpr int64_t kTarget = 9;
  const int64_t V = model->decoder_config().num_tokens;
  const std::vector<int32_t> src =
      RandomTokens(kBatch * kLength, config.encoder.num_tokens, 7);
  const std::vector<int32_t> tgt = RandomTokens(kBatch * kTarget, V, 8);
  Buffers buffers(kBatch * kTarget * V);
  XTransformerInputs inputs;
  inputs.src = TensorView<const int32_t>(src.data(), {kBatch, kLength});
  inputs.tgt = TensorView<const int32_t>(tgt.data(), {kBatch, kTarget});
  FTX_RETURN_IF_ERROR(model->Forward(
      ctx, store, inputs,
      TensorView<float>(buffers.out.data(), {kBatch, kTarget, V}), true));
  ExpectFinite(buffers.out, "logits");
  FTX_RETURN_IF_ERROR(model->Backward(
      ctx, store,
      TensorView<const float>(buffers.d_out.data(), {kBatch, kTarget, V})));
  ExpectFiniteGrads(store.encoder, "XTransformer encoder");
  ExpectFiniteGrads(store.decoder, "XTransformer decoder");
  return absl::OkStatus();
}

absl::Status RunViT(const Context& ctx, const AttentionRegistry& registry,
                    const std::string& json) {
  FTX_ASSIGN_OR_RETURN(ViTConfig config, ViTConfigFromJson(json));
  FTX_ASSIGN_OR_RETURN(auto model,
                       ViTransformerWrapper::Create(config, registry));
  FTX_ASSIGN_OR_RETURN(ParamStore store,
                       ParamStore::Create(model->ParamShapes()));
  FTX_RETURN_IF_ERROR(model->InitParams(ctx, store));
  const Shape image_shape = {kBatch, config.channels, config.image_size,
                             config.image_size};
  const std::vector<float> images =
      RandomUniformVector<float>(image_shape.NumElements(), 9);
  std::vector<float> d_images(images.size(), NAN);
  const int64_t K = config.num_classes;
  Buffers buffers(kBatch * K);
  FTX_RETURN_IF_ERROR(model->Forward(
      ctx, store, TensorView<const float>(images.data(), image_shape),
      TensorView<float>(buffers.out.data(), {kBatch, K}), true));
  ExpectFinite(buffers.out, "logits");
  FTX_RETURN_IF_ERROR(model->Backward(
      ctx, store, TensorView<const float>(buffers.d_out.data(), {kBatch, K}),
      TensorView<float>(d_images.data(), image_shape)));
  ExpectFinite(d_images, "d_images");
  ExpectFiniteGrads(store, "ViTransformerWrapper");
  return absl::OkStatus();
}

absl::Status RunConfig(Family family, const Context& ctx,
                       const AttentionRegistry& registry,
                       const std::string& json) {
  switch (family) {
    case Family::kBert:
      return RunBert(ctx, json);
    case Family::kTransformer:
      return RunTransformer(ctx, registry, json);
    case Family::kFtEncoder:
      return RunFtEncoder(ctx, registry, json);
    case Family::kFtRecurrentDecoder:
      return RunFtRecurrentDecoder(ctx, registry, json);
    case Family::kPerformerLM:
      return RunPerformerLM(ctx, json);
    case Family::kLatLM:
      return RunLatLM(ctx, json);
    case Family::kLinformerLM:
      return RunLinformerLM(ctx, json);
    case Family::kXTransformer:
      return RunXTransformer(ctx, registry, json);
    case Family::kViT:
      return RunViT(ctx, registry, json);
  }
  return absl::InternalError("unhandled model family");
}

std::vector<std::string> ConfigFileNames() {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(kConfigDir)) {
    if (entry.path().extension() == ".json") {
      names.push_back(entry.path().filename().string());
    }
  }
  std::sort(names.begin(), names.end());
  return names;
}

TEST(ConfigsTest, EveryConfigIsRegistered) {
  const std::vector<std::string> names = ConfigFileNames();
  EXPECT_GE(names.size(), ConfigFamilies().size());
  for (const std::string& name : names) {
    EXPECT_TRUE(ConfigFamilies().count(name))
        << kConfigDir << "/" << name
        << " has no model family: add it to ConfigFamilies() in "
           "models/configs_test.cc";
  }
  for (const auto& [name, family] : ConfigFamilies()) {
    EXPECT_TRUE(std::filesystem::exists(absl::StrCat(kConfigDir, "/", name)))
        << "ConfigFamilies() lists " << name << ", missing from " << kConfigDir
        << " (or from the test's data)";
  }
}

TEST(ConfigsTest, EveryConfigBuildsAndRunsForwardAndBackward) {
  auto ctx = Context::Create({.num_threads = 2});
  ASSERT_TRUE(ctx.ok()) << ctx.status();
  AttentionRegistry registry;
  ASSERT_TRUE(RegisterBuiltinAttentions(registry).ok());
  for (const std::string& name : ConfigFileNames()) {
    SCOPED_TRACE(name);
    const auto family = ConfigFamilies().find(name);
    if (family == ConfigFamilies().end()) continue;
    const std::string json = ReadFile(absl::StrCat(kConfigDir, "/", name));
    ASSERT_FALSE(json.empty());
    const absl::Status status =
        RunConfig(family->second, **ctx, registry, json);
    EXPECT_TRUE(status.ok()) << name << ": " << status;
  }
}

}  // namespace
}  // namespace ftx
