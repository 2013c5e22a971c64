// XTransformer: shapes and finiteness, prefixed parameter names; gradients of
// a scalar loss for encoder and decoder parameters against central
// differences of the float forward (encoder gradients must be non-zero: they
// only arrive through the decoder's cross-attention); the logits depend on the
// valid source tokens and not on padded ones; GenerateWithSource against a
// greedy loop over Forward; config and input errors.
#include "models/xtransformer.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "attention/builtin.h"
#include "gtest/gtest.h"
#include "tests/util/random.h"

namespace ftx {
namespace {

using ::ftx::testing::RandomUniformVector;

XTransformerConfig TinyConfig() {
  XTransformerConfig config;
  TransformerConfig& encoder = config.encoder;
  encoder.dim = 8;
  encoder.depth = 1;
  encoder.heads = 2;
  encoder.dim_head = 4;
  encoder.num_tokens = 9;
  encoder.max_seq_len = 6;
  encoder.seed = 5;
  encoder.attention_options["attention_dropout"] = 0.0;
  TransformerConfig& decoder = config.decoder;
  decoder.dim = 6;
  decoder.depth = 1;
  decoder.heads = 2;
  decoder.dim_head = 3;
  decoder.num_tokens = 7;
  decoder.max_seq_len = 8;
  decoder.seed = 6;
  decoder.attention_options["attention_dropout"] = 0.0;
  return config;
}

// [2, 4] sources (row 1 has 2 valid tokens) and [2, 3] targets.
const std::vector<int32_t> kSrc = {1, 8, 0, 3, 4, 2, 7, 7};
const std::vector<int32_t> kTgt = {0, 5, 2, 6, 1, 1};

class XTransformerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ctx_ = Context::Create({.num_threads = 1}).value();
    ASSERT_TRUE(RegisterBuiltinAttentions(registry_).ok());
  }

  void Build(const XTransformerConfig& config) {
    auto model = XTransformer::Create(config, registry_);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(model).value();
    auto store = model_->CreateStore();
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::make_unique<XTransformerStore>(std::move(store).value());
    ASSERT_TRUE(model_->InitParams(*ctx_, *store_).ok());
  }

  std::vector<float> Run(const std::vector<int32_t>& src,
                         const LengthMask& src_lengths,
                         const std::vector<int32_t>& tgt, int64_t batch,
                         bool save_for_backward = false) {
    const int64_t S = static_cast<int64_t>(src.size()) / batch;
    const int64_t T = static_cast<int64_t>(tgt.size()) / batch;
    const int64_t V = model_->decoder_config().num_tokens;
    std::vector<float> logits(batch * T * V);
    XTransformerInputs inputs;
    inputs.src = TensorView<const int32_t>(src.data(), {batch, S});
    inputs.src_lengths = src_lengths;
    inputs.tgt = TensorView<const int32_t>(tgt.data(), {batch, T});
    const absl::Status status = model_->Forward(
        *ctx_, *store_, inputs, TensorView<float>(logits.data(), {batch, T, V}),
        save_for_backward);
    EXPECT_TRUE(status.ok()) << status;
    return logits;
  }

  std::unique_ptr<Context> ctx_;
  AttentionRegistry registry_;
  std::unique_ptr<XTransformer> model_;
  std::unique_ptr<XTransformerStore> store_;
};

LengthMask Lengths(std::vector<int64_t> lengths) {
  LengthMask mask;
  mask.lengths = std::move(lengths);
  return mask;
}

TEST_F(XTransformerTest, ForwardShapesFinitenessAndParameterNames) {
  Build(TinyConfig());
  const std::vector<float> logits = Run(kSrc, Lengths({4, 2}), kTgt, 2);
  ASSERT_EQ(logits.size(), 2u * 3 * 7);
  for (float v : logits) ASSERT_TRUE(std::isfinite(v));

  EXPECT_TRUE(model_->decoder_config().causal);
  EXPECT_TRUE(model_->decoder_config().cross_attend);
  EXPECT_EQ(model_->decoder_config().context_dim, 8);
  const std::vector<ParamShape> shapes = model_->ParamShapes();
  std::vector<std::string> names;
  int64_t total = 0;
  for (const ParamShape& shape : shapes) {
    names.push_back(shape.name);
    total += shape.shape.NumElements();
  }
  EXPECT_EQ(total, store_->NumParams());
  for (const char* name :
       {"encoder.token_emb.weight",
        "encoder.attn_layers.layers.0.attn."
        "query_projection.weight",
        "decoder.token_emb.weight",
        "decoder.attn_layers.layers.1.cross_attn.key_projection.weight",
        "decoder.to_logits.weight"}) {
    EXPECT_NE(std::find(names.begin(), names.end(), name), names.end()) << name;
  }
  // ForEachParam presents the same names in the same order.
  size_t index = 0;
  store_->ForEachParam([&](ParamSlot slot) {
    ASSERT_LT(index, names.size());
    EXPECT_EQ(slot.name, names[index]);
    EXPECT_EQ(slot.value.NumElements(), shapes[index].shape.NumElements());
    ++index;
  });
  EXPECT_EQ(index, names.size());
}

// loss = sum(w * logits); every third entry of every parameter of both halves
// against central differences of the float forward (as transformer_test).
TEST_F(XTransformerTest, GradientsOfEncoderAndDecoderParameters) {
  // With encoder memory tokens (x-transformers enc_num_memory_tokens), whose
  // gradient is checked with the rest.
  XTransformerConfig config = TinyConfig();
  config.encoder.num_memory_tokens = 2;
  Build(config);
  ASSERT_TRUE(store_->encoder.Contains("memory_tokens"));
  const LengthMask src_lengths = Lengths({4, 2});
  const std::vector<float> logits = Run(kSrc, src_lengths, kTgt, 2);
  const std::vector<double> w = RandomUniformVector<double>(logits.size(), 41);
  auto loss = [&]() {
    const std::vector<float> out = Run(kSrc, src_lengths, kTgt, 2);
    double sum = 0;
    for (size_t i = 0; i < out.size(); ++i) sum += w[i] * out[i];
    return sum;
  };
  store_->ZeroGrads();
  Run(kSrc, src_lengths, kTgt, 2, /*save_for_backward=*/true);
  const std::vector<float> d_logits(w.begin(), w.end());
  const absl::Status status = model_->Backward(
      *ctx_, *store_, TensorView<const float>(d_logits.data(), {2, 3, 7}));
  ASSERT_TRUE(status.ok()) << status;

  const double h = 1e-2, abs_tol = 2e-3, rel_tol = 2e-2;
  double worst = 0;
  std::string worst_name;
  int64_t checked = 0;
  double encoder_grad_norm = 0;
  int64_t encoder_nonzero_checked = 0;
  store_->ForEachParam([&](ParamSlot slot) {
    const bool in_encoder = slot.name.rfind("encoder.", 0) == 0;
    for (int64_t i = 0; i < slot.value.NumElements(); ++i) {
      const double analytic = slot.grad.data()[i];
      if (in_encoder) encoder_grad_norm += analytic * analytic;
      if (i % 3 != 0) continue;
      float* value = slot.value.data() + i;
      const float saved = *value;
      *value = saved + static_cast<float>(h);
      const double plus = loss();
      *value = saved - static_cast<float>(h);
      const double minus = loss();
      *value = saved;
      const double numeric = (plus - minus) / (2 * h);
      const double ratio =
          std::abs(analytic - numeric) /
          (abs_tol + rel_tol * std::max(std::abs(analytic), std::abs(numeric)));
      ++checked;
      if (in_encoder && std::abs(numeric) > 1e-2) ++encoder_nonzero_checked;
      if (ratio > worst) {
        worst = ratio;
        worst_name = slot.name + "[" + std::to_string(i) + "] analytic " +
                     std::to_string(analytic) + " numeric " +
                     std::to_string(numeric);
      }
    }
  });
  std::printf("checked %lld entries; worst ratio %.3f at %s\n",
              static_cast<long long>(checked), worst, worst_name.c_str());
  EXPECT_LT(worst, 1.0) << worst_name;
  EXPECT_GT(encoder_grad_norm, 1e-4);
  // Central differences confirm that many encoder entries matter.
  EXPECT_GT(encoder_nonzero_checked, 20);
}

TEST_F(XTransformerTest, LogitsDependOnValidSourceTokensOnly) {
  Build(TinyConfig());
  const LengthMask src_lengths = Lengths({4, 2});
  const std::vector<float> base = Run(kSrc, src_lengths, kTgt, 2);

  std::vector<int32_t> changed_valid = kSrc;
  changed_valid[5] = 6;  // row 1, position 1 (valid)
  const std::vector<float> valid = Run(changed_valid, src_lengths, kTgt, 2);
  double row1_change = 0;
  for (size_t i = 21; i < 42; ++i) {
    row1_change = std::max<double>(row1_change, std::abs(valid[i] - base[i]));
  }
  EXPECT_GT(row1_change, 1e-4);
  // Row 0's logits do not see row 1's source.
  for (size_t i = 0; i < 21; ++i) EXPECT_NEAR(valid[i], base[i], 1e-6) << i;

  std::vector<int32_t> changed_padding = kSrc;
  changed_padding[6] = 0;  // row 1, positions 2 and 3 (padding)
  changed_padding[7] = 1;
  const std::vector<float> padded = Run(changed_padding, src_lengths, kTgt, 2);
  for (size_t i = 0; i < base.size(); ++i) {
    EXPECT_NEAR(padded[i], base[i], 1e-6) << i;
  }
  // Shortening the valid source changes the logits.
  const std::vector<float> shorter = Run(kSrc, Lengths({4, 1}), kTgt, 2);
  double shorter_change = 0;
  for (size_t i = 21; i < 42; ++i) {
    shorter_change =
        std::max<double>(shorter_change, std::abs(shorter[i] - base[i]));
  }
  EXPECT_GT(shorter_change, 1e-4);
}

TEST_F(XTransformerTest, GenerateWithSourceEqualsAGreedyLoopOverForward) {
  Build(TinyConfig());
  // Sharpen the decoder head so that predictions are far from ties.
  TensorView<float> head = store_->decoder.Value("to_logits.weight").value();
  for (int64_t i = 0; i < head.NumElements(); ++i) head.data()[i] *= 8.0f;
  const std::vector<int64_t> src_lengths = {4, 2};
  const std::vector<int32_t> prompts = {3, 0, 5, 1};  // [2, 2]; row 1: 1 token
  const std::vector<int64_t> prompt_lengths = {2, 1};
  GenerateOptions options;
  options.max_new_tokens = 5;
  options.sampling.greedy = true;
  for (DecodeMode mode : {DecodeMode::kAuto, DecodeMode::kRerun}) {
    options.decode = mode;
    auto generated = GenerateWithSource(
        *ctx_, *model_, *store_, TensorView<const int32_t>(kSrc.data(), {2, 4}),
        Lengths(src_lengths), TensorView<const int32_t>(prompts.data(), {2, 2}),
        Lengths(prompt_lengths), options);
    ASSERT_TRUE(generated.ok()) << generated.status();
    ASSERT_EQ(generated->size(), 2u);
    for (int64_t b = 0; b < 2; ++b) {
      const std::vector<int32_t> src(kSrc.begin() + 4 * b,
                                     kSrc.begin() + 4 * b + 4);
      std::vector<int32_t> sequence(
          prompts.begin() + 2 * b, prompts.begin() + 2 * b + prompt_lengths[b]);
      std::vector<int32_t> expected;
      for (int step = 0; step < 5; ++step) {
        const std::vector<float> logits =
            Run(src, Lengths({src_lengths[b]}), sequence, 1);
        const float* last = logits.data() + logits.size() - 7;
        const int32_t token =
            static_cast<int32_t>(std::max_element(last, last + 7) - last);
        expected.push_back(token);
        sequence.push_back(token);
      }
      EXPECT_EQ((*generated)[b], expected) << "row " << b;
    }
  }
}

TEST_F(XTransformerTest, ConfigErrorsNameTheField) {
  auto expect_error = [&](const XTransformerConfig& config,
                          absl::StatusCode code, const char* needle) {
    const auto model = XTransformer::Create(config, registry_);
    ASSERT_FALSE(model.ok()) << needle;
    EXPECT_EQ(model.status().code(), code) << model.status();
    EXPECT_NE(model.status().message().find(needle), std::string::npos)
        << model.status();
  };
  XTransformerConfig config = TinyConfig();
  config.tie_token_emb = true;
  expect_error(config, absl::StatusCode::kUnimplemented, "tie_token_emb");
  config = TinyConfig();
  config.encoder.causal = true;
  expect_error(config, absl::StatusCode::kInvalidArgument, "encoder.causal");
  config = TinyConfig();
  config.encoder.cross_attend = true;
  expect_error(config, absl::StatusCode::kInvalidArgument,
               "encoder.cross_attend");
  config = TinyConfig();
  config.encoder.heads = 0;
  expect_error(config, absl::StatusCode::kInvalidArgument,
               "XTransformerConfig.encoder: TransformerConfig.heads");
  config = TinyConfig();
  config.decoder.num_tokens = 0;
  expect_error(config, absl::StatusCode::kInvalidArgument,
               "XTransformerConfig.decoder: TransformerConfig.num_tokens");
  config = TinyConfig();
  config.decoder.context_dim = 5;
  expect_error(config, absl::StatusCode::kInvalidArgument,
               "decoder.context_dim");
  // Forced fields are not errors.
  config = TinyConfig();
  config.decoder.causal = false;
  config.decoder.context_dim = 8;
  EXPECT_TRUE(XTransformer::Create(config, registry_).ok());
}

TEST_F(XTransformerTest, InputErrors) {
  Build(TinyConfig());
  std::vector<float> logits(2 * 3 * 7);
  XTransformerInputs inputs;
  inputs.src = TensorView<const int32_t>(kSrc.data(), {1, 8});
  inputs.tgt = TensorView<const int32_t>(kTgt.data(), {2, 3});
  absl::Status status =
      model_->Forward(*ctx_, *store_, inputs,
                      TensorView<float>(logits.data(), {2, 3, 7}), true);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("batch"), std::string::npos) << status;
  // The failed Forward saved nothing.
  status = model_->Backward(*ctx_, *store_,
                            TensorView<const float>(logits.data(), {2, 3, 7}));
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;

  // A source longer than the encoder's max_seq_len.
  const std::vector<int32_t> long_src(2 * 7, 1);
  inputs.src = TensorView<const int32_t>(long_src.data(), {2, 7});
  status = model_->Forward(*ctx_, *store_, inputs,
                           TensorView<float>(logits.data(), {2, 3, 7}), true);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("max_seq_len"), std::string::npos) << status;
  // Source lengths beyond S.
  inputs.src = TensorView<const int32_t>(kSrc.data(), {2, 4});
  inputs.src_lengths = Lengths({5, 1});
  status = model_->Forward(*ctx_, *store_, inputs,
                           TensorView<float>(logits.data(), {2, 3, 7}), true);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;

  // Step-wise decoding has no cross-attention.
  const std::vector<int32_t> prompts = {1, 2};
  GenerateOptions options;
  options.decode = DecodeMode::kStep;
  auto generated = GenerateWithSource(
      *ctx_, *model_, *store_, TensorView<const int32_t>(kSrc.data(), {2, 4}),
      LengthMask(), TensorView<const int32_t>(prompts.data(), {2, 1}),
      LengthMask(), options);
  ASSERT_FALSE(generated.ok());
  EXPECT_EQ(generated.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(generated.status().message().find("kStep"), std::string::npos)
      << generated.status();
  // Source and prompt batches differ.
  options.decode = DecodeMode::kAuto;
  generated = GenerateWithSource(
      *ctx_, *model_, *store_, TensorView<const int32_t>(kSrc.data(), {1, 4}),
      LengthMask(), TensorView<const int32_t>(prompts.data(), {2, 1}),
      LengthMask(), options);
  ASSERT_FALSE(generated.ok());
  EXPECT_EQ(generated.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(XTransformerConfigFromJsonTest, ReadsPrefixedKeys) {
  const absl::StatusOr<XTransformerConfig> config = XTransformerConfigFromJson(
      R"({"dim": 32, "enc_num_tokens": 11, "enc_depth": 2, "enc_heads": 4,
          "enc_max_seq_len": 20, "dec_num_tokens": 13, "dec_depth": 3,
          "dec_heads": 2, "dec_max_seq_len": 24, "dec_ff_glu": true,
          "tie_token_emb": false, "seed": 7, "dec_seed": 3})");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->encoder.dim, 32);
  EXPECT_EQ(config->decoder.dim, 32);
  EXPECT_EQ(config->encoder.num_tokens, 11);
  EXPECT_EQ(config->encoder.depth, 2);
  EXPECT_EQ(config->encoder.heads, 4);
  EXPECT_EQ(config->encoder.max_seq_len, 20);
  EXPECT_EQ(config->decoder.num_tokens, 13);
  EXPECT_EQ(config->decoder.depth, 3);
  EXPECT_EQ(config->decoder.heads, 2);
  EXPECT_EQ(config->decoder.max_seq_len, 24);
  EXPECT_TRUE(config->decoder.ff_glu);
  EXPECT_FALSE(config->encoder.ff_glu);
  EXPECT_FALSE(config->tie_token_emb);
  EXPECT_EQ(config->encoder.seed, 7u);
  EXPECT_EQ(config->decoder.seed, 3u);
  EXPECT_TRUE(ValidateXTransformerConfig(*config).ok());

  const absl::StatusOr<XTransformerConfig> widths =
      XTransformerConfigFromJson(R"({"dim": 32, "enc_dim": 16, "seed": 2})");
  ASSERT_TRUE(widths.ok()) << widths.status();
  EXPECT_EQ(widths->encoder.dim, 16);
  EXPECT_EQ(widths->decoder.dim, 32);
  EXPECT_EQ(widths->encoder.seed, 2u);
  EXPECT_EQ(widths->decoder.seed, 3u);
}

TEST(XTransformerConfigFromJsonTest, BadJsonNamesTheKey) {
  const struct {
    const char* json;
    const char* named;
  } kCases[] = {
      {"[1, 2]", "JSON object"},
      {"{\"dim\": ", "JSON object"},
      {R"({"dim": 1.5})", "\"dim\""},
      {R"({"tie_token_emb": 1})", "\"tie_token_emb\""},
      {R"({"seed": -1})", "\"seed\""},
      {R"({"depth": 2})", "\"depth\""},
      {R"({"enc_": 2})", "\"enc_\""},
      {R"({"ignore_index": 0})", "\"ignore_index\""},
      {R"({"enc_depth": "two"})", "\"enc_depth\""},
      {R"({"dec_no_such_option": 1})", "\"dec_no_such_option\""},
  };
  for (const auto& c : kCases) {
    const absl::StatusOr<XTransformerConfig> config =
        XTransformerConfigFromJson(c.json);
    ASSERT_FALSE(config.ok()) << c.json;
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument)
        << c.json;
    EXPECT_NE(config.status().message().find(c.named), std::string::npos)
        << c.json << ": " << config.status();
  }
}

// The stack options reach either half through the enc_ / dec_ prefixes; the
// decoder's cross_residual_attn and dynamic_pos_bias validate and build.
TEST(XTransformerConfigFromJsonTest, ReadsThePrefixedStackOptions) {
  const absl::StatusOr<XTransformerConfig> config = XTransformerConfigFromJson(
      R"({"dim": 8, "enc_num_tokens": 11, "enc_depth": 1, "enc_heads": 2,
          "enc_dim_head": 4, "enc_max_seq_len": 9, "enc_weight_tie_layers":
          true, "dec_num_tokens": 13, "dec_depth": 2, "dec_heads": 2,
          "dec_dim_head": 4, "dec_max_seq_len": 9, "dec_cross_residual_attn":
          true, "dec_dynamic_pos_bias": true,
          "dec_dynamic_pos_bias_log_distance": true, "dec_mask_prob": 0.25})");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_TRUE(config->encoder.weight_tie_layers);
  EXPECT_FALSE(config->encoder.cross_residual_attn);
  EXPECT_TRUE(config->decoder.cross_residual_attn);
  EXPECT_TRUE(config->decoder.dynamic_pos_bias);
  EXPECT_TRUE(config->decoder.dynamic_pos_bias_log_distance);
  EXPECT_EQ(config->decoder.mask_prob, 0.25);
  AttentionRegistry registry;
  ASSERT_TRUE(RegisterBuiltinAttentions(registry).ok());
  const auto model = XTransformer::Create(*config, registry);
  EXPECT_TRUE(model.ok()) << model.status();
}

}  // namespace
}  // namespace ftx
