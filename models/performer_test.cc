// PerformerLM / Performer / PerformerEncDec: every parameter gradient (and the
// cross-attention context gradient) against central differences of the float
// forward on tiny configs covering local heads with rotary, shift tokens, GLU,
// ScaleNorm, ReZero, chunked feed-forward, reversible execution, padding
// masks, axial and absolute positions, the generalized kernel,
// no_projection, tied embeddings and cross-attention; the projection redraw
// schedule; causality of causal models; config and input errors; the JSON
// config in models/configs builds and runs. Exact agreement with
// performer-pytorch is tests/parity/performer_test.
#include "models/performer.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "models/performer_state_dict.h"
#include "tests/util/gradcheck.h"
#include "tests/util/random.h"

namespace ftx {
namespace {

using ::ftx::testing::GradientMatches;
using ::ftx::testing::RandomUniformVector;

// Central differences of the float model: a step of 1e-2 and a tolerance of
// 2e-3 absolute + 2e-2 relative, as the other model tests use.
constexpr double kStep = 1e-2;
const ::ftx::testing::Tolerance kGradientTolerance = {2e-3, 2e-2};

// FAVOR+'s softmax kernel subtracts detached maxima (as performer does), and
// the maxima move the 1e-4 eps inside phi, so its gradient is not exactly the
// derivative of its forward; the central-difference checks therefore use the
// generalized kernel with a smooth positive kernel_fn (sigmoid), and the
// softmax kernel's gradients are checked against autograd in
// tests/parity/performer_test.
PerformerLMConfig GradientConfig() {
  PerformerLMConfig config;
  config.num_tokens = 7;
  config.max_seq_len = 12;
  PerformerConfig& s = config.performer;
  s.dim = 8;
  s.depth = 2;
  s.heads = 2;
  s.dim_head = 4;
  s.ff_mult = 2;
  s.nb_features = 5;
  s.generalized_attention = true;
  s.kernel_fn = Activation::kSigmoid;
  s.seed = 5;
  return config;
}

PerformerLMConfig TinyConfig() {
  PerformerLMConfig config;
  config.num_tokens = 7;
  config.max_seq_len = 12;
  PerformerConfig& s = config.performer;
  s.dim = 8;
  s.depth = 2;
  s.heads = 2;
  s.dim_head = 4;
  s.ff_mult = 2;
  s.nb_features = 5;
  s.seed = 5;
  return config;
}

class PerformerTest : public ::testing::Test {
 protected:
  void SetUp() override { ctx_ = Context::Create({.num_threads = 1}).value(); }

  void Build(const PerformerLMConfig& config) {
    auto model = PerformerLM::Create(config);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(model).value();
    auto store = ParamStore::Create(model_->ParamShapes());
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::make_unique<ParamStore>(std::move(store).value());
    ASSERT_TRUE(model_->InitParams(*ctx_, *store_).ok());
    // Move every parameter off its initial value (ReZero's 1e-3, LayerNorm's
    // ones and zeros) so that every path carries gradient.
    int64_t seed = 100;
    store_->ForEachParam([&](ParamSlot slot) {
      if (!slot.trainable) return;  // projections and the redraw counter
      const std::vector<float> noise =
          RandomUniformVector(slot.value.NumElements(), seed++, -0.3, 0.3);
      for (int64_t i = 0; i < slot.value.NumElements(); ++i) {
        slot.value.data()[i] += noise[i];
      }
    });
  }

  std::vector<float> Run(PerformerLMInputs inputs, int64_t batch,
                         bool save = false) {
    const int64_t T = static_cast<int64_t>(tokens_.size()) / batch;
    const int64_t width = inputs.return_encodings
                              ? model_->config().performer.dim
                              : model_->config().num_tokens;
    std::vector<float> out(batch * T * width);
    inputs.tokens = TensorView<const int32_t>(tokens_.data(), {batch, T});
    const absl::Status status =
        model_->Forward(*ctx_, *store_, inputs,
                        TensorView<float>(out.data(), {batch, T, width}), save);
    EXPECT_TRUE(status.ok()) << status;
    return out;
  }

  // loss = sum(w * out) over every parameter (and the context entries when
  // `context` is given), analytic against GradientMatches.
  void CheckGradients(PerformerLMInputs inputs, int64_t batch,
                      std::vector<float>* context = nullptr) {
    if (context) {
      inputs.context = TensorView<const float>(
          context->data(), {batch,
                            static_cast<int64_t>(context->size()) / batch /
                                model_->config().performer.dim,
                            model_->config().performer.dim});
    }
    const std::vector<float> out = Run(inputs, batch);
    const std::vector<double> w = RandomUniformVector<double>(out.size(), 77);
    store_->ZeroGrads();
    Run(inputs, batch, /*save=*/true);
    const std::vector<float> d_out(w.begin(), w.end());
    std::vector<float> d_context(context ? context->size() : 0);
    TensorView<float> d_context_view;
    if (context) {
      d_context_view =
          TensorView<float>(d_context.data(), inputs.context.shape());
    }
    const int64_t T = static_cast<int64_t>(tokens_.size()) / batch;
    const absl::Status status = model_->Backward(
        *ctx_, *store_,
        TensorView<const float>(
            d_out.data(),
            {batch, T, static_cast<int64_t>(out.size()) / (batch * T)}),
        d_context_view);
    ASSERT_TRUE(status.ok()) << status;

    // x = every parameter, then the context.
    std::vector<float*> entries;
    std::vector<double> x, analytic;
    store_->ForEachParam([&](ParamSlot slot) {
      if (!slot.trainable) return;  // the projections get no gradient
      for (int64_t i = 0; i < slot.value.NumElements(); ++i) {
        entries.push_back(slot.value.data() + i);
        x.push_back(slot.value.data()[i]);
        analytic.push_back(slot.grad.data()[i]);
      }
    });
    if (context) {
      for (size_t i = 0; i < context->size(); ++i) {
        entries.push_back(context->data() + i);
        x.push_back((*context)[i]);
        analytic.push_back(d_context[i]);
      }
    }
    auto loss = [&](const std::vector<double>& values) {
      for (size_t i = 0; i < entries.size(); ++i) {
        *entries[i] = static_cast<float>(values[i]);
      }
      const std::vector<float> result = Run(inputs, batch);
      double sum = 0;
      for (size_t i = 0; i < result.size(); ++i) sum += w[i] * result[i];
      return sum;
    };
    EXPECT_TRUE(GradientMatches(loss, x, analytic, kGradientTolerance, kStep));
    for (size_t i = 0; i < entries.size(); ++i) {
      *entries[i] = static_cast<float>(x[i]);
    }
  }

  std::unique_ptr<Context> ctx_;
  std::unique_ptr<PerformerLM> model_;
  std::unique_ptr<ParamStore> store_;
  std::vector<int32_t> tokens_ = {1, 4, 0, 6, 2, 3,
                                  3, 5, 2, 5, 1, 0};  // [2, 6]
};

TEST_F(PerformerTest, ParameterNamesAreStateDictKeys) {
  PerformerLMConfig config = TinyConfig();
  config.performer.shift_tokens = true;
  config.performer.local_attn_heads = {1};
  Build(config);
  for (const char* name :
       {"token_emb.weight", "performer.net.layers.0.0.norm.weight",
        "performer.net.layers.0.0.fn.fn.to_q.weight",
        "performer.net.layers.1.1.fn.fn.fn.w1.weight", "norm.bias",
        "to_out.bias"}) {
    EXPECT_TRUE(store_->Contains(name)) << name;
  }
  EXPECT_FALSE(store_->Contains("performer.net.layers.0.0.fn.fn.to_q.bias"));
  EXPECT_EQ(model_->performer().ProjectionNames()[1],
            "net.layers.1.0.fn.fn.fast_attention.projection_matrix");
  EXPECT_EQ(model_->performer().LocalRotaryNames(),
            (std::vector<std::string>{
                "net.layers.0.0.fn.fn.local_attn.rel_pos.inv_freq",
                "net.layers.1.0.fn.fn.local_attn.rel_pos.inv_freq"}));
  // The projections and the redraw counter are buffers of the store.
  store_->ForEachParam([](const ParamSlot& slot) {
    const bool buffer =
        slot.name.find("projection_matrix") != std::string::npos ||
        slot.name == "performer.proj_updater.calls_since_last_redraw";
    EXPECT_EQ(slot.trainable, !buffer) << slot.name;
  });

  PerformerLMConfig reversible = TinyConfig();
  reversible.performer.reversible = true;
  reversible.performer.use_rezero = true;
  reversible.rotary_position_emb = false;
  Build(reversible);
  for (const char* name :
       {"pos_emb.emb.weight", "performer.net.blocks.0.f.net.g",
        "performer.net.blocks.1.f.net.fn.to_out.weight",
        "performer.net.blocks.1.g.net.fn.fn.w2.bias"}) {
    EXPECT_TRUE(store_->Contains(name)) << name;
  }
}

TEST_F(PerformerTest, GradientsLocalHeadsRotaryShiftGlu) {
  PerformerLMConfig config = GradientConfig();
  config.performer.local_attn_heads = {1, 0};
  config.performer.local_window_size = 4;
  config.performer.shift_tokens = true;
  config.performer.ff_glu = true;
  config.performer.qkv_bias = true;
  config.performer.attn_out_bias = true;
  Build(config);
  CheckGradients({}, 2);
}

TEST_F(PerformerTest, GradientsCausalScaleNormChunksMask) {
  PerformerLMConfig config = GradientConfig();
  config.performer.causal = true;
  config.performer.use_scalenorm = true;
  config.performer.ff_chunks = 3;
  config.performer.local_attn_heads = {1};
  config.performer.local_window_size = 3;
  config.performer.shift_tokens = true;
  Build(config);
  PerformerLMInputs inputs;
  inputs.mask.lengths = {6, 4};
  CheckGradients(inputs, 2);
}

TEST_F(PerformerTest, GradientsReversibleReZeroAxial) {
  PerformerLMConfig config = GradientConfig();
  config.performer.reversible = true;
  config.performer.use_rezero = true;
  config.rotary_position_emb = false;
  config.axial_position_emb = true;
  config.axial_position_shape = {3, 4};
  Build(config);
  PerformerLMInputs inputs;
  inputs.mask.lengths = {5, 6};
  CheckGradients(inputs, 2);
}

TEST_F(PerformerTest, GradientsTiedNoProjectionEncodings) {
  PerformerLMConfig config = TinyConfig();
  config.tie_embed = true;
  config.performer.no_projection = true;
  config.performer.causal = true;
  config.rotary_position_emb = false;
  Build(config);
  CheckGradients({}, 2);
  PerformerLMInputs encodings;
  encodings.return_encodings = true;
  CheckGradients(encodings, 2);
}

TEST_F(PerformerTest, GradientsCrossAttendWithContext) {
  PerformerLMConfig config = GradientConfig();
  config.performer.cross_attend = true;
  config.performer.causal = true;
  config.performer.depth = 1;
  Build(config);
  std::vector<float> context = RandomUniformVector(2 * 5 * 8, 9);
  PerformerLMInputs inputs;
  inputs.context_mask.lengths = {5, 3};
  CheckGradients(inputs, 2, &context);
}

TEST_F(PerformerTest, CausalModelsIgnoreLaterTokens) {
  PerformerLMConfig config = TinyConfig();
  config.performer.causal = true;
  config.performer.local_attn_heads = {1};
  config.performer.local_window_size = 2;
  config.performer.shift_tokens = true;
  // The softmax kernel's key max spans the sequence (performer quirk 1), so
  // only the generalized kernel is exactly causal.
  config.performer.generalized_attention = true;
  Build(config);
  const std::vector<float> before = Run({}, 2);
  tokens_[5] = 0;
  tokens_[11] = 6;
  const std::vector<float> after = Run({}, 2);
  const int64_t V = config.num_tokens;
  for (int64_t b = 0; b < 2; ++b) {
    for (int64_t i = 0; i < 5 * V; ++i) {
      EXPECT_EQ(before[b * 6 * V + i], after[b * 6 * V + i]);
    }
  }
}

TEST_F(PerformerTest, ProjectionsRedrawOnTrainingForwardIntervalPlusOne) {
  PerformerLMConfig config = TinyConfig();
  config.performer.feature_redraw_interval = 2;
  Build(config);
  Performer& stack = model_->performer();
  const TensorView<float> projection =
      store_->Value("performer." + stack.ProjectionNames()[0]).value();
  auto first_entry = [&]() { return projection.data()[0]; };
  const float* calls_since_last_redraw =
      store_->Value("performer.proj_updater.calls_since_last_redraw")
          .value()
          .data();
  const float initial = first_entry();
  PerformerLMInputs training;
  training.training = true;
  Run({}, 2);  // evaluation forwards do not count
  EXPECT_EQ(*calls_since_last_redraw, 0.0f);
  Run(training, 2);
  Run(training, 2);
  EXPECT_EQ(*calls_since_last_redraw, 2.0f);
  EXPECT_EQ(first_entry(), initial);
  Run(training, 2);  // forward number interval + 1 redraws
  EXPECT_EQ(*calls_since_last_redraw, 0.0f);
  EXPECT_NE(first_entry(), initial);
  const float redrawn = first_entry();
  stack.FixProjectionMatrices();
  for (int i = 0; i < 4; ++i) Run(training, 2);
  EXPECT_EQ(first_entry(), redrawn);
}

TEST_F(PerformerTest, DropoutOnlyInTraining) {
  PerformerLMConfig config = TinyConfig();
  config.emb_dropout = 0.2f;
  config.performer.ff_dropout = 0.2f;
  config.performer.attn_dropout = 0.2f;
  config.performer.feature_redraw_interval = 0;
  Build(config);
  const std::vector<float> eval = Run({}, 2);
  EXPECT_EQ(eval, Run({}, 2));
  PerformerLMInputs training;
  training.training = true;
  training.seed = 3;
  const std::vector<float> dropped = Run(training, 2);
  EXPECT_NE(dropped, eval);
  EXPECT_EQ(dropped, Run(training, 2));
}

TEST_F(PerformerTest, EncoderDecoderGradients) {
  PerformerEncDecConfig config;
  config.enc = GradientConfig();
  config.dec = GradientConfig();
  config.dec.num_tokens = 5;
  config.dec.performer.depth = 1;
  config.enc.performer.local_attn_heads = {1};
  config.enc.performer.local_window_size = 3;
  auto model = PerformerEncDec::Create(config);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_TRUE((*model)->dec().config().performer.causal);
  EXPECT_TRUE((*model)->dec().config().performer.cross_attend);
  auto store = ParamStore::Create((*model)->ParamShapes());
  ASSERT_TRUE(store.ok());
  ASSERT_TRUE(store->Contains("enc.token_emb.weight"));
  ASSERT_TRUE(
      store->Contains("dec.net.performer.net.layers.1.0.fn.to_k.weight"));
  ASSERT_TRUE((*model)->InitParams(*ctx_, *store).ok());

  const std::vector<int32_t> seq_in = {1, 2, 3, 4, 5, 6, 0, 1, 2, 3};  // [2, 5]
  const std::vector<int32_t> seq_out = {1, 4, 0, 2, 3, 3, 1, 2};       // [2, 4]
  PerformerEncDecInputs inputs;
  inputs.seq_in = TensorView<const int32_t>(seq_in.data(), {2, 5});
  inputs.seq_out = TensorView<const int32_t>(seq_out.data(), {2, 4});
  inputs.enc_mask.lengths = {5, 3};
  std::vector<float> logits(2 * 4 * 5);
  auto run = [&](bool save) {
    EXPECT_TRUE((*model)
                    ->Forward(*ctx_, *store, inputs,
                              TensorView<float>(logits.data(), {2, 4, 5}), save)
                    .ok());
    return logits;
  };
  const std::vector<double> w = RandomUniformVector<double>(logits.size(), 8);
  store->ZeroGrads();
  run(true);
  const std::vector<float> d_logits(w.begin(), w.end());
  ASSERT_TRUE(
      (*model)
          ->Backward(*ctx_, *store,
                     TensorView<const float>(d_logits.data(), {2, 4, 5}))
          .ok());
  std::vector<float*> entries;
  std::vector<double> x, analytic;
  store->ForEachParam([&](ParamSlot slot) {
    if (!slot.trainable) return;
    for (int64_t i = 0; i < slot.value.NumElements(); ++i) {
      entries.push_back(slot.value.data() + i);
      x.push_back(slot.value.data()[i]);
      analytic.push_back(slot.grad.data()[i]);
    }
  });
  auto loss = [&](const std::vector<double>& values) {
    for (size_t i = 0; i < entries.size(); ++i) {
      *entries[i] = static_cast<float>(values[i]);
    }
    const std::vector<float> out = run(false);
    double sum = 0;
    for (size_t i = 0; i < out.size(); ++i) sum += w[i] * out[i];
    return sum;
  };
  EXPECT_TRUE(GradientMatches(loss, x, analytic, kGradientTolerance, kStep));
}

TEST_F(PerformerTest, ConfigErrorsNameTheField) {
  struct Case {
    const char* field;
    void (*edit)(PerformerLMConfig&);
  };
  const Case cases[] = {
      {"dim", [](PerformerLMConfig& c) { c.performer.dim = 7; }},
      {"depth", [](PerformerLMConfig& c) { c.performer.depth = 0; }},
      {"local_attn_heads",
       [](PerformerLMConfig& c) { c.performer.local_attn_heads = {3}; }},
      {"local_attn_heads",
       [](PerformerLMConfig& c) {
         c.performer.local_attn_heads = {0, 1, 1};
       }},
      {"dim_head",
       [](PerformerLMConfig& c) {
         c.performer.dim_head = 3;
         c.performer.local_attn_heads = {1};
       }},
      {"nb_features",
       [](PerformerLMConfig& c) { c.performer.nb_features = 0; }},
      {"ff_chunks", [](PerformerLMConfig& c) { c.performer.ff_chunks = 0; }},
      {"attn_dropout",
       [](PerformerLMConfig& c) { c.performer.attn_dropout = 1.0f; }},
      {"num_tokens", [](PerformerLMConfig& c) { c.num_tokens = 0; }},
      {"rotary_position_emb",
       [](PerformerLMConfig& c) { c.performer.dim_head = 5; }},
      {"axial_position_shape",
       [](PerformerLMConfig& c) {
         c.rotary_position_emb = false;
         c.axial_position_emb = true;
         c.axial_position_shape = {2, 3};
       }},
  };
  for (const Case& test : cases) {
    PerformerLMConfig config = TinyConfig();
    test.edit(config);
    const auto model = PerformerLM::Create(config);
    ASSERT_FALSE(model.ok()) << test.field;
    EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(model.status().message().find(test.field), std::string::npos)
        << model.status();
  }
}

TEST_F(PerformerTest, InputErrors) {
  PerformerLMConfig config = TinyConfig();
  Build(config);
  std::vector<float> logits(2 * 6 * 7);
  PerformerLMInputs inputs;
  inputs.tokens = TensorView<const int32_t>(tokens_.data(), {2, 6});
  const TensorView<float> out(logits.data(), {2, 6, 7});
  // Backward before a saving Forward.
  EXPECT_EQ(model_->Backward(*ctx_, *store_, out).code(),
            absl::StatusCode::kFailedPrecondition);
  std::vector<int32_t> bad = tokens_;
  bad[3] = 7;
  PerformerLMInputs bad_tokens = inputs;
  bad_tokens.tokens = TensorView<const int32_t>(bad.data(), {2, 6});
  absl::Status status = model_->Forward(*ctx_, *store_, bad_tokens, out, false);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("tokens[3]"), std::string::npos) << status;
  std::vector<int32_t> long_tokens(13, 1);
  std::vector<float> long_logits(13 * 7);
  PerformerLMInputs too_long = inputs;
  too_long.tokens = TensorView<const int32_t>(long_tokens.data(), {1, 13});
  status =
      model_->Forward(*ctx_, *store_, too_long,
                      TensorView<float>(long_logits.data(), {1, 13, 7}), false);
  EXPECT_NE(status.message().find("max_seq_len"), std::string::npos) << status;
  status = model_->Forward(*ctx_, *store_, inputs,
                           TensorView<float>(logits.data(), {2, 6, 8}), false);
  EXPECT_NE(status.message().find("out must be"), std::string::npos) << status;
  PerformerLMInputs bad_mask = inputs;
  bad_mask.mask.lengths = {7, 1};
  status = model_->Forward(*ctx_, *store_, bad_mask, out, false);
  EXPECT_NE(status.message().find("mask"), std::string::npos) << status;
  std::vector<float> context(2 * 3 * 8);
  PerformerLMInputs with_context = inputs;
  with_context.context = TensorView<const float>(context.data(), {2, 3, 8});
  status = model_->Forward(*ctx_, *store_, with_context, out, false);
  EXPECT_NE(status.message().find("cross_attend"), std::string::npos) << status;

  PerformerLMConfig cross = TinyConfig();
  cross.performer.cross_attend = true;
  Build(cross);
  status = model_->Forward(*ctx_, *store_, inputs, out, false);
  EXPECT_NE(status.message().find("context"), std::string::npos) << status;
  ASSERT_TRUE(model_->Forward(*ctx_, *store_, with_context, out, true).ok());
  std::vector<float> d_context(2 * 4 * 8);
  status = model_->Backward(*ctx_, *store_, out,
                            TensorView<float>(d_context.data(), {2, 4, 8}));
  EXPECT_NE(status.message().find("d_context"), std::string::npos) << status;
}

TEST_F(PerformerTest, JsonConfigBuildsAndRuns) {
  std::ifstream file("models/configs/performer_lm.json");
  ASSERT_TRUE(file.good());
  std::stringstream text;
  text << file.rdbuf();
  auto config = PerformerLMConfigFromJson(text.str());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_TRUE(config->performer.causal);
  EXPECT_EQ(config->performer.local_attn_heads, std::vector<int64_t>{1});
  Build(*config);
  tokens_.clear();
  for (int i = 0; i < 2 * 40; ++i) tokens_.push_back((i * 37) % 256);
  const std::vector<float> logits = Run({}, 2);
  ASSERT_EQ(logits.size(), 2u * 40 * 256);
  for (float value : logits) ASSERT_TRUE(std::isfinite(value));

  EXPECT_FALSE(PerformerLMConfigFromJson("{\"dimension\": 3}").ok());
  EXPECT_FALSE(PerformerLMConfigFromJson("{\"dim\": 3.5}").ok());
  EXPECT_FALSE(PerformerLMConfigFromJson("[1]").ok());
  auto parsed = PerformerLMConfigFromJson(
      "{\"local_attn_heads\": [0, 2], \"nb_features\": null, "
      "\"feature_redraw_interval\": null, \"kernel_fn\": \"gelu\", "
      "\"axial_position_shape\": [4, 8]}");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->performer.local_attn_heads, (std::vector<int64_t>{0, 2}));
  EXPECT_FALSE(parsed->performer.nb_features.has_value());
  EXPECT_EQ(parsed->performer.feature_redraw_interval, 0);
  EXPECT_EQ(parsed->performer.kernel_fn, Activation::kGelu);
}

TEST_F(PerformerTest, StateDictConverterRoundTrip) {
  StateDictConverterRegistry registry;
  ASSERT_TRUE(RegisterPerformerConverter(registry).ok());
  EXPECT_EQ(RegisterPerformerConverter(registry).code(),
            absl::StatusCode::kAlreadyExists);
  auto converter = registry.Find(kPerformerLibrary);
  ASSERT_TRUE(converter.ok());
  const std::string json =
      "{\"num_tokens\": 7, \"max_seq_len\": 12, \"dim\": 8, \"depth\": 2, "
      "\"heads\": 2, \"dim_head\": 4, \"use_rezero\": true, "
      "\"local_attn_heads\": [1, 0], \"local_window_size\": 4, "
      "\"seed\": 5}";
  auto map = (*converter)->make_map(json);
  ASSERT_TRUE(map.ok()) << map.status();
  auto shapes = (*converter)->reference_shapes(json);
  ASSERT_TRUE(shapes.ok()) << shapes.status();
  EXPECT_TRUE(shapes->at("performer.net.layers.0.0.g").empty());
  EXPECT_TRUE(map->ignored.empty());
  auto has_fixed = [&](const std::string& name) {
    return std::any_of(map->fixed.begin(), map->fixed.end(),
                       [&](const StateDictFixedTensor& fixed) {
                         return fixed.reference == name;
                       });
  };
  for (const char* name :
       {"pos_emb.emb", "layer_pos_emb.emb",
        "performer.net.layers.0.0.fn.local_attn.rel_pos.inv_freq"}) {
    EXPECT_TRUE(has_fixed(name)) << name;
  }
  auto alias_of = [&](const std::string& name) -> std::string {
    for (const StateDictAlias& alias : map->aliases) {
      if (alias.reference == name) return alias.same_as;
    }
    return "";
  };
  EXPECT_EQ(alias_of("performer.proj_updater.instance.layers.1.0.fn."
                     "fast_attention.projection_matrix"),
            "performer.net.layers.1.0.fn.fast_attention.projection_matrix");
  EXPECT_EQ(
      alias_of("performer.proj_updater.instance.layers.1.1.fn.fn.w2.bias"),
      "performer.net.layers.1.1.fn.fn.w2.bias");
  EXPECT_EQ(alias_of("performer.proj_updater.instance.layers.0.0.fn.local_attn."
                     "rel_pos.inv_freq"),
            "performer.net.layers.0.0.fn.local_attn.rel_pos.inv_freq");

  auto config = PerformerLMConfigFromJson(json);
  ASSERT_TRUE(config.ok());
  Build(*config);
  const std::string path =
      ::testing::TempDir() + "/performer_round_trip.safetensors";
  ASSERT_TRUE(ExportStateDict(*store_, *map, *shapes, path).ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  auto copy = ParamStore::Create(model_->ParamShapes());
  ASSERT_TRUE(copy.ok());
  ASSERT_TRUE(ImportStateDict(*file, *map, *copy).ok());
  EXPECT_EQ(std::vector<float>(copy->values().data(),
                               copy->values().data() + copy->NumParams()),
            std::vector<float>(store_->values().data(),
                               store_->values().data() + store_->NumParams()));
}

}  // namespace
}  // namespace ftx
