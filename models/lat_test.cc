// LinearAttentionTransformerLM (models/lat.h): LAT state_dict names, the
// Autopadder (a padded call equals the explicitly padded, masked call on the
// kept positions), seeded training-mode dropout, every parameter (sampled) and
// the context gradient against central differences of the float forward for
// sequential, reversible and Linformer stacks, attend_axially, the context
// Linformer and PKM training mode (batch statistics, running update), the
// example config models/configs/linear_attention_lm.json, the state-dict
// converter, config and input errors; ImageLinearAttention's gradients and
// errors. Parity with the Python library is tests/parity/lat_test.
#include "models/lat.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "models/lat_state_dict.h"
#include "tests/util/random.h"

namespace ftx {
namespace {

using ::ftx::testing::RandomUniformVector;

LatConfig TinyConfig() {
  LatConfig config;
  config.num_tokens = 7;
  config.dim = 8;
  config.depth = 2;
  config.max_seq_len = 16;
  config.heads = 2;
  config.dim_head = 4;
  config.local_attn_window_size = 4;
  config.seed = 3;
  return config;
}

// TinyConfig with a small PKM (LAT's PKM(dim) sizes shrunk) in layer 2.
LatConfig TinyPkmConfig() {
  LatConfig config = TinyConfig();
  config.pkm_layers = {2};
  config.pkm_heads = 2;
  config.pkm_num_keys = 4;
  config.pkm_topk = 2;
  config.pkm_dim_head = 4;
  return config;
}

std::string ReadFile(const std::string& path) {
  std::ifstream file(path);
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

class LatTest : public ::testing::Test {
 protected:
  void SetUp() override { ctx_ = Context::Create({.num_threads = 2}).value(); }

  void Build(const LatConfig& config) {
    auto model = LinearAttentionTransformerLM::Create(config);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(model).value();
    auto store = ParamStore::Create(model_->ParamShapes());
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::make_unique<ParamStore>(std::move(store).value());
    ASSERT_TRUE(model_->InitParams(*ctx_, *store_).ok());
  }

  std::vector<int32_t> Tokens(int64_t count, uint64_t seed) const {
    std::vector<int32_t> tokens(count);
    const std::vector<float> u = RandomUniformVector<float>(count, seed, 0, 1);
    for (int64_t i = 0; i < count; ++i) {
      tokens[i] = std::min<int32_t>(
          static_cast<int32_t>(u[i] * model_->config().num_tokens),
          model_->config().num_tokens - 1);
    }
    return tokens;
  }

  std::vector<float> Run(LatInputs inputs, bool save = false) {
    const int64_t batch = inputs.tokens.dim(0), length = inputs.tokens.dim(1);
    std::vector<float> out(batch * length * model_->OutputDim());
    const absl::Status status = model_->Forward(
        *ctx_, *store_, inputs,
        TensorView<float>(out.data(), {batch, length, model_->OutputDim()}),
        save);
    EXPECT_TRUE(status.ok()) << status;
    return out;
  }

  // Every parameter (up to 6 entries a tensor) and, when given, the context
  // against central differences of loss = <w, out>.
  void CheckGradients(LatInputs inputs, std::vector<float>* context) {
    const std::vector<float> first = Run(inputs);
    const std::vector<double> w = RandomUniformVector<double>(first.size(), 11);
    auto loss = [&]() {
      const std::vector<float> out = Run(inputs);
      double sum = 0;
      for (size_t i = 0; i < out.size(); ++i) sum += w[i] * out[i];
      return sum;
    };
    store_->ZeroGrads();
    Run(inputs, /*save=*/true);
    const std::vector<float> d_out(w.begin(), w.end());
    std::vector<float> d_context(context != nullptr ? context->size() : 0,
                                 7.0f);
    const int64_t batch = inputs.tokens.dim(0), length = inputs.tokens.dim(1);
    const absl::Status status = model_->Backward(
        *ctx_, *store_,
        TensorView<const float>(d_out.data(),
                                {batch, length, model_->OutputDim()}),
        context != nullptr
            ? TensorView<float>(d_context.data(), inputs.context.shape())
            : TensorView<float>());
    ASSERT_TRUE(status.ok()) << status;

    const double h = 1e-2, abs_tol = 3e-3, rel_tol = 3e-2;
    double worst = 0;
    std::string worst_name;
    int64_t checked = 0, skipped = 0;
    auto check = [&](float* value, double analytic, const std::string& name) {
      const float saved = *value;
      *value = saved + static_cast<float>(h);
      const double plus = loss();
      *value = saved - static_cast<float>(h);
      const double minus = loss();
      *value = saved;
      const double numeric = (plus - minus) / (2 * h);
      // A PKM top-k selection that flips inside [-h, h] makes the loss jump:
      // the one-sided differences then disagree and the point is skipped.
      const double center = loss();
      const double right = (plus - center) / h, left = (center - minus) / h;
      if (std::abs(right - left) >
          10 *
              (abs_tol + rel_tol * std::max(std::abs(right), std::abs(left)))) {
        ++skipped;
        return;
      }
      const double ratio =
          std::abs(analytic - numeric) /
          (abs_tol + rel_tol * std::max(std::abs(analytic), std::abs(numeric)));
      ++checked;
      if (ratio > worst) {
        worst = ratio;
        worst_name = name + " analytic " + std::to_string(analytic) +
                     " numeric " + std::to_string(numeric);
      }
    };
    store_->ForEachParam([&](ParamSlot slot) {
      // PKM BatchNorm buffers (running statistics, step counter) get no
      // gradient.
      if (!slot.trainable) return;
      const int64_t n = slot.value.NumElements();
      const int64_t step = std::max<int64_t>(1, n / 6);
      for (int64_t i = 0; i < n; i += step) {
        check(slot.value.data() + i, slot.grad.data()[i],
              slot.name + "[" + std::to_string(i) + "]");
      }
    });
    if (context != nullptr) {
      for (size_t i = 0; i < context->size(); i += 3) {
        check(context->data() + i, d_context[i],
              "context[" + std::to_string(i) + "]");
      }
    }
    std::printf(
        "checked %lld entries, skipped %lld at jumps; worst ratio %.3f at %s\n",
        static_cast<long long>(checked), static_cast<long long>(skipped), worst,
        worst_name.c_str());
    EXPECT_LT(worst, 1.0) << worst_name;
    EXPECT_LE(skipped * 20, checked + skipped) << "too many jumps";
  }

  std::unique_ptr<Context> ctx_;
  std::unique_ptr<LinearAttentionTransformerLM> model_;
  std::unique_ptr<ParamStore> store_;
};

TEST_F(LatTest, StateDictNames) {
  LatConfig config = TinyConfig();
  config.shift_tokens = true;
  config.receives_context = true;
  config.n_local_attn_heads = {1};
  Build(config);
  for (const char* name :
       {"token_emb.weight", "pos_emb.weights.0", "pos_emb.weights.1",
        "transformer.layers.layers.0.0.norm.weight",
        "transformer.layers.layers.0.0.fn.fn.to_q.weight",
        "transformer.layers.layers.0.0.fn.fn.to_out.bias",
        "transformer.layers.layers.0.1.fn.fn.fn.w1.weight",
        "transformer.layers.layers.1.0.fn.to_k.weight",
        "transformer.layers.layers.1.1.fn.fn.w2.bias",
        "transformer.layers.layers.3.1.norm.bias", "norm.weight", "out.weight",
        "out.bias"}) {
    EXPECT_TRUE(store_->Contains(name)) << name;
  }
  EXPECT_EQ(store_->Value("pos_emb.weights.0").value().shape(),
            Shape({1, 4, 1, 8}));
  EXPECT_EQ(store_->Value("pos_emb.weights.1").value().shape(),
            Shape({1, 1, 4, 8}));

  config = TinyConfig();
  config.reversible = true;
  config.emb_dim = 6;
  config.use_rotary_emb = true;
  config.linformer_k = 3;
  Build(config);
  for (const char* name :
       {"transformer.project_in.weight", "transformer.project_out.bias",
        "transformer.fn.layers.blocks.1.f.net.fn.proj_k",
        "transformer.fn.layers.blocks.1.f.net.fn.to_out.weight",
        "transformer.fn.layers.blocks.0.g.net.fn.fn.w1.bias"}) {
    EXPECT_TRUE(store_->Contains(name)) << name;
  }
  EXPECT_FALSE(store_->Contains("pos_emb.emb.weight"));
  EXPECT_EQ(store_->Value("transformer.fn.layers.blocks.1.f.net.fn.proj_v")
                .value()
                .shape(),
            Shape({16, 3}));
}

TEST_F(LatTest, AutopadderMatchesExplicitPadding) {
  LatConfig config = TinyConfig();
  config.causal = true;
  config.blindspot_size = 2;
  config.n_local_attn_heads = {1};
  Build(config);
  ASSERT_EQ(model_->pad_to_multiple(), 4);
  const int64_t batch = 2, length = 7, padded = 8;
  const std::vector<int32_t> tokens = Tokens(batch * length, 1);
  const std::vector<float> out = Run(
      {.tokens = TensorView<const int32_t>(tokens.data(), {batch, length})});
  std::vector<int32_t> padded_tokens(batch * padded, 0);
  for (int64_t b = 0; b < batch; ++b) {
    std::copy(tokens.begin() + b * length, tokens.begin() + (b + 1) * length,
              padded_tokens.begin() + b * padded);
  }
  LatInputs explicit_inputs{.tokens = TensorView<const int32_t>(
                                padded_tokens.data(), {batch, padded}),
                            .lengths = {{length, length}}};
  const std::vector<float> full = Run(explicit_inputs);
  const int64_t v = model_->OutputDim();
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t i = 0; i < length * v; ++i) {
      EXPECT_FLOAT_EQ(out[b * length * v + i], full[b * padded * v + i]);
    }
  }
}

TEST_F(LatTest, CausalOutputsIgnoreTheFuture) {
  LatConfig config = TinyConfig();
  config.causal = true;
  config.n_local_attn_heads = {1};
  config.shift_tokens = true;
  Build(config);
  const int64_t length = 8;
  std::vector<int32_t> tokens = Tokens(length, 2);
  const std::vector<float> before =
      Run({.tokens = TensorView<const int32_t>(tokens.data(), {1, length})});
  tokens[6] = (tokens[6] + 1) % 7;
  const std::vector<float> after =
      Run({.tokens = TensorView<const int32_t>(tokens.data(), {1, length})});
  const int64_t v = model_->OutputDim();
  for (int64_t i = 0; i < 6 * v; ++i) EXPECT_FLOAT_EQ(before[i], after[i]);
  EXPECT_NE(before[6 * v], after[6 * v]);
}

TEST_F(LatTest, GradientsSequentialCausalLocal) {
  LatConfig config = TinyConfig();
  config.causal = true;
  config.blindspot_size = 2;
  config.n_local_attn_heads = {1, 0};
  config.ff_chunks = 2;
  config.shift_tokens = true;
  config.attn_layer_dropout = 0.2f;
  config.attn_dropout = 0.2f;
  Build(config);
  const int64_t batch = 2, length = 7;
  const std::vector<int32_t> tokens = Tokens(batch * length, 3);
  CheckGradients(
      {.tokens = TensorView<const int32_t>(tokens.data(), {batch, length}),
       .lengths = {{7, 5}},
       .training = true,
       .seed = 9},
      nullptr);
}

TEST_F(LatTest, GradientsReversibleContextRotary) {
  LatConfig config = TinyConfig();
  config.reversible = true;
  config.receives_context = true;
  config.use_rotary_emb = true;
  config.emb_dim = 6;
  config.ff_glu = true;
  config.ff_dropout = 0.2f;
  config.n_local_attn_heads = {1};
  Build(config);
  const int64_t batch = 2, length = 8, context_length = 3;
  const std::vector<int32_t> tokens = Tokens(batch * length, 4);
  std::vector<float> context =
      RandomUniformVector<float>(batch * context_length * config.dim, 5);
  CheckGradients(
      {.tokens = TensorView<const int32_t>(tokens.data(), {batch, length}),
       .context = TensorView<const float>(context.data(),
                                          {batch, context_length, config.dim}),
       .context_lengths = {{3, 2}},
       .training = true,
       .seed = 4},
      &context);
}

TEST_F(LatTest, PkmNamesAndEvalModeGradients) {
  LatConfig config = TinyPkmConfig();
  config.shift_tokens = true;
  Build(config);
  std::vector<std::string> names;
  for (const ParamShape& shape : model_->ParamShapes()) {
    names.push_back(shape.name);
  }
  const std::string pkm = "transformer.layers.layers.1.1.fn.fn.";
  for (const std::string& name :
       {pkm + "to_queries.weight", pkm + "norm.fn.weight", pkm + "norm.fn.bias",
        pkm + "keys", pkm + "values.weight",
        std::string("transformer.layers.layers.0.1.fn.fn.fn.w1.weight")}) {
    EXPECT_NE(std::find(names.begin(), names.end(), name), names.end()) << name;
  }
  std::vector<std::string> buffers;
  for (const ParamShape& shape : model_->ParamShapes()) {
    if (!shape.trainable) buffers.push_back(shape.name);
  }
  EXPECT_EQ(buffers,
            (std::vector<std::string>{pkm + "norm.fn.running_mean",
                                      pkm + "norm.fn.running_var",
                                      pkm + "norm.fn.num_batches_tracked"}));
  EXPECT_EQ(store_->Value(pkm + "norm.fn.num_batches_tracked")->data()[0],
            0.0f);
  EXPECT_EQ(std::find(names.begin(), names.end(),
                      "transformer.layers.layers.1.1.fn.fn.fn.w1.weight"),
            names.end());
  const int64_t batch = 2, length = 5;
  const std::vector<int32_t> tokens = Tokens(batch * length, 8);
  CheckGradients(
      {.tokens = TensorView<const int32_t>(tokens.data(), {batch, length}),
       .lengths = {{5, 3}}},
      nullptr);
}

TEST_F(LatTest, PkmReversibleGradients) {
  LatConfig config = TinyPkmConfig();
  config.reversible = true;
  config.pkm_layers = {1, 2};
  Build(config);
  const int64_t batch = 2, length = 4;
  const std::vector<int32_t> tokens = Tokens(batch * length, 14);
  CheckGradients(
      {.tokens = TensorView<const int32_t>(tokens.data(), {batch, length})},
      nullptr);
}

// Training mode: the PKM query BatchNorm1d normalises with the batch
// statistics (gradients through them) and updates its running statistics and
// its step counter; eval mode leaves them alone.
TEST_F(LatTest, PkmTrainingModeGradientsAndRunningUpdate) {
  Build(TinyPkmConfig());
  const std::string norm = "transformer.layers.layers.1.1.fn.norm.fn.";
  auto snapshot = [&]() {
    const TensorView<float> view = store_->Value(norm + "running_mean").value();
    return std::vector<float>(view.data(), view.data() + view.NumElements());
  };
  auto counter = [&]() {
    return store_->Value(norm + "num_batches_tracked").value().data()[0];
  };
  const int64_t batch = 2, length = 4;
  const std::vector<int32_t> tokens = Tokens(batch * length, 12);
  LatInputs inputs{
      .tokens = TensorView<const int32_t>(tokens.data(), {batch, length})};
  const std::vector<float> initial = snapshot();
  const std::vector<float> eval = Run(inputs);
  EXPECT_EQ(snapshot(), initial);
  EXPECT_EQ(counter(), 0.0f);
  inputs.training = true;
  EXPECT_NE(Run(inputs), eval);
  EXPECT_NE(snapshot(), initial);
  EXPECT_EQ(counter(), 1.0f);
  Run(inputs);
  EXPECT_EQ(counter(), 2.0f);
  CheckGradients(inputs, nullptr);
}

// As in LAT's reversible.py, the reconstructing backward re-runs the PKM
// branch in training mode, so its running statistics take a second update
// with the same batch statistics: r2 = 0.9 r1 + 0.1 mean with
// 0.1 mean = r1 - 0.9 r0; num_batches_tracked goes 0 -> 1 -> 2.
TEST_F(LatTest, PkmReversibleTrainingUpdatesRunningStatisticsTwice) {
  LatConfig config = TinyPkmConfig();
  config.reversible = true;
  Build(config);
  const std::string norm = "transformer.layers.blocks.1.g.net.fn.norm.fn.";
  auto snapshot = [&]() {
    const TensorView<float> view = store_->Value(norm + "running_mean").value();
    return std::vector<float>(view.data(), view.data() + view.NumElements());
  };
  auto counter = [&]() {
    return store_->Value(norm + "num_batches_tracked").value().data()[0];
  };
  const int64_t batch = 2, length = 4;
  const std::vector<int32_t> tokens = Tokens(batch * length, 13);
  const std::vector<float> r0 = snapshot();
  const std::vector<float> out =
      Run({.tokens = TensorView<const int32_t>(tokens.data(), {batch, length}),
           .training = true},
          /*save=*/true);
  const std::vector<float> r1 = snapshot();
  EXPECT_EQ(counter(), 1.0f);
  const std::vector<float> d_out(out.size(), 0.1f);
  ASSERT_TRUE(
      model_
          ->Backward(*ctx_, *store_,
                     TensorView<const float>(
                         d_out.data(), {batch, length, model_->OutputDim()}))
          .ok());
  const std::vector<float> r2 = snapshot();
  EXPECT_EQ(counter(), 2.0f);
  for (size_t i = 0; i < r0.size(); ++i) {
    EXPECT_NEAR(r2[i], 0.9 * r1[i] + (r1[i] - 0.9 * r0[i]), 1e-5) << i;
  }
}

TEST_F(LatTest, PkmJsonKeys) {
  const auto parsed = LatConfigFromJson(
      R"({"pkm_layers": 2, "pkm_heads": 2, "pkm_num_keys": 4, "pkm_topk": 2,
          "pkm_dim_head": 6})");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->pkm_layers, std::vector<int64_t>({2}));
  EXPECT_EQ(parsed->pkm_heads, 2);
  EXPECT_EQ(parsed->pkm_num_keys, 4);
  EXPECT_EQ(parsed->pkm_topk, 2);
  EXPECT_EQ(parsed->pkm_dim_head, 6);
  const absl::Status typed = LatConfigFromJson(R"({"pkm_topk": "2"})").status();
  EXPECT_NE(typed.message().find("pkm_topk"), std::string::npos) << typed;
}

// attend_axially: per layer an extra pair FoldAxially(window, SelfAttention)
// and FF; the input mask folds into per-column lengths.
TEST_F(LatTest, AxialNamesAndGradientsCausalMasked) {
  LatConfig config = TinyConfig();
  config.attend_axially = true;
  config.causal = true;
  config.ff_glu = true;
  config.shift_tokens = true;
  Build(config);
  for (const char* name : {"transformer.layers.layers.1.0.fn.fn.to_q.weight",
                           "transformer.layers.layers.1.0.fn.fn.to_out.bias",
                           "transformer.layers.layers.1.1.fn.fn.w1.weight",
                           "transformer.layers.layers.3.0.norm.weight",
                           "transformer.layers.layers.2.0.fn.fn.to_q.weight"}) {
    EXPECT_TRUE(store_->Contains(name)) << name;
  }
  EXPECT_EQ(store_->Value("transformer.layers.layers.1.0.fn.fn.to_q.weight")
                .value()
                .shape(),
            Shape({8, 8}));
  const int64_t batch = 2, length = 8;
  const std::vector<int32_t> tokens = Tokens(batch * length, 21);
  CheckGradients(
      {.tokens = TensorView<const int32_t>(tokens.data(), {batch, length}),
       .lengths = {{8, 6}}},
      nullptr);
}

TEST_F(LatTest, AxialReversibleGradientsAndLengthErrors) {
  LatConfig config = TinyConfig();
  config.attend_axially = true;
  config.reversible = true;
  Build(config);
  const int64_t batch = 2, length = 12;
  const std::vector<int32_t> tokens = Tokens(batch * length, 22);
  CheckGradients(
      {.tokens = TensorView<const int32_t>(tokens.data(), {batch, length})},
      nullptr);
  std::vector<float> out(batch * 6 * model_->OutputDim());
  const absl::Status status = model_->Forward(
      *ctx_, *store_,
      {.tokens = TensorView<const int32_t>(tokens.data(), {batch, 6})},
      TensorView<float>(out.data(), {batch, 6, model_->OutputDim()}), false);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(status.message().find("local_attn_window_size"), std::string::npos)
      << status;
}

// receives_context with LinformerContextSettings(seq_len, k): the context
// keys / values are projected along their length to k.
TEST_F(LatTest, ContextLinformerNamesAndGradients) {
  LatConfig config = TinyConfig();
  config.receives_context = true;
  config.context_linformer_seq_len = 5;
  config.context_linformer_k = 3;
  Build(config);
  EXPECT_EQ(
      store_->Value("transformer.layers.layers.1.0.fn.proj_k").value().shape(),
      Shape({5, 3}));
  EXPECT_TRUE(store_->Contains("transformer.layers.layers.3.0.fn.to_k.weight"));
  const int64_t batch = 2, length = 6, context_length = 4;
  const std::vector<int32_t> tokens = Tokens(batch * length, 23);
  std::vector<float> context =
      RandomUniformVector<float>(batch * context_length * config.dim, 24);
  CheckGradients(
      {.tokens = TensorView<const int32_t>(tokens.data(), {batch, length}),
       .context = TensorView<const float>(context.data(),
                                          {batch, context_length, config.dim})},
      &context);
  std::vector<float> long_context(batch * 6 * config.dim);
  std::vector<float> out(batch * length * model_->OutputDim());
  const absl::Status status = model_->Forward(
      *ctx_, *store_,
      {.tokens = TensorView<const int32_t>(tokens.data(), {batch, length}),
       .context = TensorView<const float>(long_context.data(),
                                          {batch, 6, config.dim})},
      TensorView<float>(out.data(), {batch, length, model_->OutputDim()}),
      false);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(status.message().find("context_linformer_seq_len"),
            std::string::npos)
      << status;

  const auto parsed = LatConfigFromJson(
      R"({"attend_axially": true, "linformer_settings": {"k": 4},
          "context_linformer_settings": {"seq_len": 9, "k": 2}})");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_TRUE(parsed->attend_axially);
  EXPECT_EQ(parsed->linformer_k, 4);
  EXPECT_EQ(parsed->context_linformer_seq_len, 9);
  EXPECT_EQ(parsed->context_linformer_k, 2);
  const absl::Status typed =
      LatConfigFromJson(R"({"context_linformer_settings": {"n": 2}})").status();
  EXPECT_NE(typed.message().find("context_linformer_settings"),
            std::string::npos)
      << typed;
}

TEST_F(LatTest, GradientsLinformerEmbeddings) {
  LatConfig config = TinyConfig();
  config.linformer_k = 3;
  config.use_axial_pos_emb = false;
  config.return_embeddings = true;
  Build(config);
  const int64_t batch = 2, length = 6;
  const std::vector<int32_t> tokens = Tokens(batch * length, 6);
  CheckGradients(
      {.tokens = TensorView<const int32_t>(tokens.data(), {batch, length})},
      nullptr);
}

TEST_F(LatTest, DropoutIsSeeded) {
  LatConfig config = TinyConfig();
  config.attn_layer_dropout = 0.5f;
  Build(config);
  const std::vector<int32_t> tokens = Tokens(8, 7);
  LatInputs inputs{.tokens = TensorView<const int32_t>(tokens.data(), {1, 8}),
                   .training = true,
                   .seed = 1};
  const std::vector<float> first = Run(inputs);
  EXPECT_EQ(Run(inputs), first);
  inputs.seed = 2;
  EXPECT_NE(Run(inputs), first);
  inputs.training = false;
  const std::vector<float> eval = Run(inputs);
  inputs.seed = 1;
  EXPECT_EQ(Run(inputs), eval);
}

TEST_F(LatTest, ExampleConfigRunsOnce) {
  auto config =
      LatConfigFromJson(ReadFile("models/configs/linear_attention_lm.json"));
  ASSERT_TRUE(config.ok()) << config.status();
  Build(*config);
  EXPECT_EQ(model_->pad_to_multiple(), 32);
  const int64_t batch = 2, length = 50;
  const std::vector<int32_t> tokens = Tokens(batch * length, 8);
  const LatInputs inputs{
      .tokens = TensorView<const int32_t>(tokens.data(), {batch, length}),
      .training = true,
      .seed = 1};
  const std::vector<float> logits = Run(inputs, /*save=*/true);
  for (float v : logits) ASSERT_TRUE(std::isfinite(v));
  store_->ZeroGrads();
  const std::vector<float> d_logits(logits.size(), 1e-3f);
  ASSERT_TRUE(
      model_
          ->Backward(*ctx_, *store_,
                     TensorView<const float>(
                         d_logits.data(), {batch, length, model_->OutputDim()}))
          .ok());
  double norm = 0;
  store_->ForEachParam([&](ParamSlot slot) {
    for (int64_t i = 0; i < slot.grad.NumElements(); ++i) {
      norm += slot.grad.data()[i] * slot.grad.data()[i];
    }
  });
  EXPECT_TRUE(std::isfinite(norm));
  EXPECT_GT(norm, 0.0);
}

TEST_F(LatTest, Converter) {
  StateDictConverterRegistry registry;
  ASSERT_TRUE(RegisterLatConverter(registry).ok());
  EXPECT_EQ(RegisterLatConverter(registry).code(),
            absl::StatusCode::kAlreadyExists);
  auto converter = registry.Find(kLatLibrary);
  ASSERT_TRUE(converter.ok());
  const std::string json =
      R"({"num_tokens": 7, "dim": 8, "depth": 1, "max_seq_len": 16,
          "heads": 2, "dim_head": 4, "use_rotary_emb": true})";
  auto map = (*converter)->make_map(json);
  ASSERT_TRUE(map.ok()) << map.status();
  auto shapes = (*converter)->param_shapes(json);
  ASSERT_TRUE(shapes.ok());
  EXPECT_EQ(map->rules.size(), shapes->size());
  EXPECT_TRUE(map->ignored.empty());
  ASSERT_EQ(map->fixed.size(), 2u);
  EXPECT_EQ(map->fixed[0].reference, "pos_emb.emb");
  EXPECT_EQ(map->fixed[0].shape, (std::vector<int64_t>{16, 8}));
  EXPECT_EQ(map->fixed[1].reference, "layer_pos_emb.emb");
  EXPECT_EQ(map->fixed[1].shape, (std::vector<int64_t>{16, 4}));
  auto reference = (*converter)->reference_shapes(json);
  ASSERT_TRUE(reference.ok());
  EXPECT_EQ(reference->at("token_emb.weight"), (std::vector<int64_t>{7, 8}));
  const std::string pkm_json =
      R"({"num_tokens": 7, "dim": 8, "depth": 1, "max_seq_len": 16,
          "heads": 2, "dim_head": 4, "pkm_layers": 1, "pkm_heads": 2,
          "pkm_num_keys": 4, "pkm_topk": 2, "pkm_dim_head": 4})";
  auto pkm_map = (*converter)->make_map(pkm_json);
  ASSERT_TRUE(pkm_map.ok()) << pkm_map.status();
  EXPECT_TRUE(pkm_map->fixed.empty());
  const std::string counter =
      "transformer.layers.layers.0.1.fn.norm.fn.num_batches_tracked";
  int64_t integer_rules = 0;
  for (const StateDictRule& rule : pkm_map->rules) {
    if (rule.int64) {
      ++integer_rules;
      EXPECT_EQ(rule.reference, counter);
    }
  }
  EXPECT_EQ(integer_rules, 1);
  auto pkm_reference = (*converter)->reference_shapes(pkm_json);
  ASSERT_TRUE(pkm_reference.ok());
  EXPECT_EQ(pkm_reference->at(counter), std::vector<int64_t>{});
  EXPECT_EQ((*converter)->make_map(R"({"dim": 8})").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(LatTest, BadConfigs) {
  auto expect = [](LatConfig config, absl::StatusCode code,
                   const std::string& needle) {
    const absl::Status status =
        LinearAttentionTransformerLM::Create(config).status();
    EXPECT_EQ(status.code(), code) << status;
    EXPECT_NE(status.message().find(needle), std::string::npos) << status;
  };
  LatConfig config = TinyConfig();
  config.n_local_attn_heads = {3};
  expect(config, absl::StatusCode::kInvalidArgument, "n_local_attn_heads");
  config = TinyConfig();
  config.n_local_attn_heads = {1, 1, 1};
  expect(config, absl::StatusCode::kInvalidArgument, "n_local_attn_heads");
  config = TinyConfig();
  config.n_local_attn_heads = {1};
  config.max_seq_len = 18;
  expect(config, absl::StatusCode::kInvalidArgument, "max_seq_len");
  config = TinyConfig();
  config.linformer_k = 4;
  config.causal = true;
  expect(config, absl::StatusCode::kInvalidArgument, "linformer_k");
  config = TinyConfig();
  config.emb_dim = 6;
  config.return_embeddings = true;
  expect(config, absl::StatusCode::kInvalidArgument, "return_embeddings");
  config = TinyConfig();
  config.attn_dropout = 1.0f;
  expect(config, absl::StatusCode::kInvalidArgument, "attn_dropout");
  config = TinyConfig();
  config.pkm_layers = {0};
  expect(config, absl::StatusCode::kInvalidArgument, "pkm_layers");
  config.pkm_layers = {3};
  expect(config, absl::StatusCode::kInvalidArgument, "pkm_layers");
  config = TinyPkmConfig();
  config.pkm_heads = 3;
  expect(config, absl::StatusCode::kInvalidArgument, "pkm_heads");
  config = TinyPkmConfig();
  config.pkm_dim_head = 3;
  expect(config, absl::StatusCode::kInvalidArgument, "pkm_dim_head");
  config = TinyPkmConfig();
  config.pkm_num_keys = 0;
  expect(config, absl::StatusCode::kInvalidArgument, "pkm_num_keys");
  config = TinyPkmConfig();
  config.pkm_topk = 5;
  expect(config, absl::StatusCode::kInvalidArgument, "pkm_topk");
  config = TinyConfig();
  config.attend_axially = true;
  config.use_rotary_emb = true;
  expect(config, absl::StatusCode::kInvalidArgument, "use_rotary_emb");
  config = TinyConfig();
  config.heads = 3;
  config.attend_axially = true;
  expect(config, absl::StatusCode::kInvalidArgument, "dim");
  config = TinyConfig();
  config.context_linformer_k = 4;
  expect(config, absl::StatusCode::kInvalidArgument,
         "context_linformer_seq_len");
  config.context_linformer_k = -1;
  expect(config, absl::StatusCode::kInvalidArgument, "context_linformer_k");

  EXPECT_EQ(LatConfigFromJson(R"({"dimension": 8})").status().code(),
            absl::StatusCode::kInvalidArgument);
  const absl::Status typed = LatConfigFromJson(R"({"causal": 1})").status();
  EXPECT_NE(typed.message().find("causal"), std::string::npos) << typed;
  auto list = LatConfigFromJson(R"({"n_local_attn_heads": [1, 0]})");
  ASSERT_TRUE(list.ok());
  EXPECT_EQ(list->n_local_attn_heads, (std::vector<int64_t>{1, 0}));
}

TEST_F(LatTest, BadInputs) {
  LatConfig config = TinyConfig();
  config.receives_context = true;
  Build(config);
  std::vector<int32_t> tokens(2 * 17, 1);
  std::vector<float> context(2 * 3 * 8), out(2 * 17 * 7);
  const TensorView<const float> context_view(context.data(), {2, 3, 8});
  auto forward = [&](int64_t length, TensorView<const float> ctx_view,
                     int64_t out_width) {
    return model_->Forward(
        *ctx_, *store_,
        {.tokens = TensorView<const int32_t>(tokens.data(), {2, length}),
         .context = ctx_view},
        TensorView<float>(out.data(), {2, length, out_width}), false);
  };
  EXPECT_TRUE(forward(5, context_view, 7).ok());
  absl::Status status = forward(17, context_view, 7);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("max_seq_len"), std::string::npos) << status;
  status = forward(5, context_view, 6);
  EXPECT_NE(status.message().find("out"), std::string::npos) << status;
  status = forward(5, {}, 7);
  EXPECT_NE(status.message().find("context"), std::string::npos) << status;
  tokens[3] = 7;
  status = forward(5, context_view, 7);
  EXPECT_NE(status.message().find("tokens"), std::string::npos) << status;
  tokens[3] = 1;
  status = model_->Forward(
      *ctx_, *store_,
      {.tokens = TensorView<const int32_t>(tokens.data(), {2, 5}),
       .lengths = {{5, 6}},
       .context = context_view},
      TensorView<float>(out.data(), {2, 5, 7}), false);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  status = model_->Backward(*ctx_, *store_,
                            TensorView<const float>(out.data(), {2, 5, 7}));
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
}

TEST_F(LatTest, ImageLinearAttentionGradients) {
  auto attention = ImageLinearAttention::Create({.chan = 3,
                                                 .chan_out = 4,
                                                 .key_dim = 2,
                                                 .value_dim = 2,
                                                 .heads = 2,
                                                 .seed = 1});
  ASSERT_TRUE(attention.ok()) << attention.status();
  auto store = ParamStore::Create((*attention)->ParamShapes());
  ASSERT_TRUE(store.ok());
  ASSERT_TRUE((*attention)->InitParams(*ctx_, *store, "").ok());
  std::vector<float> x = RandomUniformVector<float>(2 * 3 * 2 * 3, 2);
  std::vector<float> context = RandomUniformVector<float>(2 * 3 * 4, 3);
  const Shape x_shape({2, 3, 2, 3}), context_shape({2, 3, 4});
  const Shape y_shape({2, 4, 2, 3});
  std::vector<float> y(y_shape.NumElements());
  auto run = [&](bool save) {
    EXPECT_TRUE(
        (*attention)
            ->Forward(*ctx_, *store, "",
                      TensorView<const float>(x.data(), x_shape),
                      TensorView<const float>(context.data(), context_shape),
                      TensorView<float>(y.data(), y_shape), save)
            .ok());
  };
  const std::vector<double> w = RandomUniformVector<double>(y.size(), 4);
  auto loss = [&]() {
    run(false);
    double sum = 0;
    for (size_t i = 0; i < y.size(); ++i) sum += w[i] * y[i];
    return sum;
  };
  store->ZeroGrads();
  run(true);
  const std::vector<float> d_y(w.begin(), w.end());
  std::vector<float> d_x(x.size(), 5.0f), d_context(context.size(), 5.0f);
  ASSERT_TRUE((*attention)
                  ->Backward(*ctx_, *store,
                             TensorView<const float>(d_y.data(), y_shape),
                             TensorView<float>(d_x.data(), x_shape),
                             TensorView<float>(d_context.data(), context_shape))
                  .ok());
  const double h = 1e-2;
  double worst = 0;
  auto check = [&](float* value, double analytic) {
    const float saved = *value;
    *value = saved + static_cast<float>(h);
    const double plus = loss();
    *value = saved - static_cast<float>(h);
    const double minus = loss();
    *value = saved;
    const double numeric = (plus - minus) / (2 * h);
    worst = std::max(worst, std::abs(analytic - numeric) /
                                (2e-3 + 2e-2 * std::abs(numeric)));
  };
  store->ForEachParam([&](ParamSlot slot) {
    for (int64_t i = 0; i < slot.value.NumElements(); ++i) {
      check(slot.value.data() + i, slot.grad.data()[i]);
    }
  });
  for (size_t i = 0; i < x.size(); ++i) check(&x[i], d_x[i]);
  for (size_t i = 0; i < context.size(); ++i) check(&context[i], d_context[i]);
  EXPECT_LT(worst, 1.0);
}

TEST_F(LatTest, ImageLinearAttentionBadInputs) {
  EXPECT_EQ(ImageLinearAttention::Create({.chan = 3, .kernel_size = 3})
                .status()
                .code(),
            absl::StatusCode::kUnimplemented);
  const absl::Status heads =
      ImageLinearAttention::Create({.chan = 3, .heads = 0}).status();
  EXPECT_NE(heads.message().find("heads"), std::string::npos) << heads;
  auto attention = ImageLinearAttention::Create(
      {.chan = 3, .key_dim = 2, .value_dim = 3, .heads = 1});
  ASSERT_TRUE(attention.ok());
  auto store = ParamStore::Create((*attention)->ParamShapes());
  ASSERT_TRUE(store.ok());
  std::vector<float> x(2 * 3 * 4), y(2 * 3 * 4), context(2 * 3 * 2);
  absl::Status status =
      (*attention)
          ->Forward(*ctx_, *store, "",
                    TensorView<const float>(x.data(), {2, 3, 2, 2}),
                    TensorView<const float>(context.data(), {2, 3, 2}),
                    TensorView<float>(y.data(), {2, 3, 2, 2}), false);
  EXPECT_NE(status.message().find("value_dim"), std::string::npos) << status;
  status = (*attention)
               ->Forward(*ctx_, *store, "",
                         TensorView<const float>(x.data(), {2, 4, 3, 1}), {},
                         TensorView<float>(y.data(), {2, 3, 2, 2}), false);
  EXPECT_NE(status.message().find("x must"), std::string::npos) << status;
  status = (*attention)
               ->Backward(*ctx_, *store,
                          TensorView<const float>(y.data(), {2, 3, 2, 2}),
                          TensorView<float>(x.data(), {2, 3, 2, 2}), {});
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace ftx
