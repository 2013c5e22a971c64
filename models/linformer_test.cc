// Linformer, LinformerLM and LinformerEncDec (models/linformer.h): parameter
// names per parameter_sharing, input and parameter gradients against central
// differences over options (methods, sharing incl. layerwise,
// k_reduce_by_layer, causal, decoder_mode, ff_intermediate,
// w_o_intermediate_dim, emb_dim projection, checkpoint levels), checkpointing
// equals no checkpointing, seeded dropout, the JSON config, and bad inputs.
#include "models/linformer.h"

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "models/param_store.h"
#include "tests/util/gradcheck.h"
#include "tests/util/random.h"
#include "tests/util/tolerance.h"

namespace ftx {
namespace {

using ::ftx::testing::AllNear;
using ::ftx::testing::GradientMatches;
using ::ftx::testing::RandomUniformVector;

LinformerConfig TinyStack() {
  LinformerConfig config;
  config.input_size = 7;
  config.channels = 6;
  config.dim_k = 3;
  config.dim_ff = 5;
  config.nhead = 2;
  config.depth = 2;
  config.dropout = 0.0f;
  config.dropout_ff = 0.0f;
  config.seed = 3;
  return config;
}

class LinformerModelTest : public ::testing::Test {
 protected:
  void SetUp() override { ctx_ = Context::Create({.num_threads = 2}).value(); }
  std::unique_ptr<Context> ctx_;
};

int CountNamesEndingIn(const std::vector<ParamShape>& shapes,
                       const std::string& suffix) {
  return static_cast<int>(
      std::count_if(shapes.begin(), shapes.end(), [&](const ParamShape& shape) {
        return shape.name.size() >= suffix.size() &&
               shape.name.compare(shape.name.size() - suffix.size(),
                                  suffix.size(), suffix) == 0;
      }));
}

TEST_F(LinformerModelTest, ProjectionCountsPerSharing) {
  // README: 12 layers x 12 heads give 288, 24, 12 and 1 matrices.
  LinformerConfig config = TinyStack();
  config.depth = 12;
  config.nhead = 12;
  config.channels = 24;
  const std::pair<LinformerParameterSharing, int> expected[] = {
      {LinformerParameterSharing::kNone, 288},
      {LinformerParameterSharing::kHeadwise, 24},
      {LinformerParameterSharing::kKeyValue, 12},
      {LinformerParameterSharing::kLayerwise, 1}};
  for (const auto& [sharing, count] : expected) {
    config.parameter_sharing = sharing;
    auto model = Linformer::Create(config);
    ASSERT_TRUE(model.ok()) << model.status();
    const std::vector<ParamShape> shapes = (*model)->ParamShapes();
    EXPECT_EQ(CountNamesEndingIn(shapes, ".E.weight") +
                  CountNamesEndingIn(shapes, ".F.weight"),
              count);
    // Every E / F key of every head exists, as a parameter or an alias.
    EXPECT_EQ(count + static_cast<int>(
                          (*model)->SharedProjectionAliases().size() / 2),
              12 * 12 * 2);
  }
  config.parameter_sharing = LinformerParameterSharing::kLayerwise;
  auto model = Linformer::Create(config).value();
  EXPECT_EQ(model->ParamShapes()[0].name, "seq.0.fn.heads.0.E.weight");
  EXPECT_EQ(model->ParamShapes()[0].shape, (Shape{3, 7}));
  const auto aliases = model->SharedProjectionAliases();
  EXPECT_EQ(aliases[0].first, "seq.0.fn.heads.0.F.weight");
  EXPECT_EQ(aliases[0].second, "seq.0.fn.heads.0.E.weight");
}

TEST_F(LinformerModelTest, ParameterNamesFollowTheStateDict) {
  LinformerConfig config = TinyStack();
  config.parameter_sharing = LinformerParameterSharing::kHeadwise;
  config.ff_intermediate = 4;
  config.w_o_intermediate_dim = 5;
  config.k_reduce_by_layer = 1;
  auto model = Linformer::Create(config).value();
  std::vector<std::string> names;
  for (const ParamShape& shape : model->ParamShapes()) {
    names.push_back(shape.name + shape.shape.ToString());
  }
  const std::vector<std::string> expected = {
      "seq.0.fn.heads.0.E.weight[3, 7]",
      "seq.0.fn.heads.0.E.bias[3]",
      "seq.0.fn.heads.0.F.weight[3, 7]",
      "seq.0.fn.heads.0.F.bias[3]",
      "seq.0.fn.to_q.0.weight[3, 6]",
      "seq.0.fn.to_q.1.weight[3, 6]",
      "seq.0.fn.to_k.0.weight[3, 6]",
      "seq.0.fn.to_k.1.weight[3, 6]",
      "seq.0.fn.to_v.0.weight[3, 6]",
      "seq.0.fn.to_v.1.weight[3, 6]",
      "seq.0.fn.w_o_1.weight[5, 6]",
      "seq.0.fn.w_o_1.bias[5]",
      "seq.0.fn.w_o_2.weight[6, 5]",
      "seq.0.fn.w_o_2.bias[6]",
      "seq.0.norm.weight[6]",
      "seq.0.norm.bias[6]",
      "seq.1.fn.w_1.weight[5, 6]",
      "seq.1.fn.w_1.bias[5]",
      "seq.1.fn.w_2.weight[4, 5]",
      "seq.1.fn.w_2.bias[4]",
      "seq.1.resample.weight[4, 6]",
      "seq.1.resample.bias[4]",
      "seq.1.norm.weight[4]",
      "seq.1.norm.bias[4]",
      "seq.2.fn.heads.0.E.weight[2, 7]",
  };
  ASSERT_GE(names.size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(names[i], expected[i]) << i;
  }
}

// Runs the stack on x (and embeddings in decoder_mode); returns y.
std::vector<float> RunStack(const Context& ctx, Linformer& model,
                            ParamStore& store, const std::vector<float>& x,
                            const std::vector<float>& embeddings, int64_t batch,
                            bool save, const LinformerInputs& extra = {}) {
  const LinformerConfig& c = model.config();
  const Shape shape{batch, c.input_size, c.channels};
  std::vector<float> y(x.size());
  LinformerInputs inputs = extra;
  if (!embeddings.empty()) {
    inputs.embeddings = TensorView<const float>(embeddings.data(), shape);
  }
  const absl::Status status =
      model.Forward(ctx, store, "", TensorView<const float>(x.data(), shape),
                    inputs, TensorView<float>(y.data(), shape), save);
  EXPECT_TRUE(status.ok()) << status;
  return y;
}

// Checks d_x, d_embeddings and up to 5 entries of every parameter gradient
// against central differences of the float model.
void CheckStackGradients(const Context& ctx, const LinformerConfig& config,
                         const LinformerInputs& extra = {}) {
  auto model = Linformer::Create(config);
  ASSERT_TRUE(model.ok()) << model.status();
  auto store = ParamStore::Create((*model)->ParamShapes()).value();
  ASSERT_TRUE((*model)->InitParams(ctx, store, "").ok());
  const int64_t B = 2, n = config.input_size, C = config.channels;
  const Shape shape{B, n, C};
  std::vector<float> x = RandomUniformVector<float>(B * n * C, 11);
  std::vector<float> embeddings;
  if (config.decoder_mode)
    embeddings = RandomUniformVector<float>(x.size(), 12);
  const std::vector<double> w = RandomUniformVector<double>(x.size(), 13);
  auto loss = [&]() {
    const std::vector<float> y =
        RunStack(ctx, **model, store, x, embeddings, B, false, extra);
    double sum = 0;
    for (size_t i = 0; i < y.size(); ++i) sum += w[i] * y[i];
    return sum;
  };
  store.ZeroGrads();
  RunStack(ctx, **model, store, x, embeddings, B, true, extra);
  const std::vector<float> d_y(w.begin(), w.end());
  std::vector<float> d_x(x.size(), 9.0f), d_embeddings(x.size(), 9.0f);
  const absl::Status status = (*model)->Backward(
      ctx, store, "", TensorView<const float>(d_y.data(), shape),
      TensorView<float>(d_x.data(), shape),
      config.decoder_mode ? TensorView<float>(d_embeddings.data(), shape)
                          : TensorView<float>());
  ASSERT_TRUE(status.ok()) << status;

  const double h = 1e-2;
  const testing::Tolerance tolerance{3e-3, 3e-2};
  auto check = [&](std::vector<float*> entries,
                   const std::vector<double>& analytic,
                   const std::string& what) {
    std::vector<double> at(entries.size());
    for (size_t i = 0; i < entries.size(); ++i) at[i] = *entries[i];
    EXPECT_TRUE(GradientMatches(
        [&](const std::vector<double>& values) {
          for (size_t i = 0; i < entries.size(); ++i) {
            *entries[i] = static_cast<float>(values[i]);
          }
          const double result = loss();
          for (size_t i = 0; i < entries.size(); ++i) {
            *entries[i] = static_cast<float>(at[i]);
          }
          return result;
        },
        at, analytic, tolerance, h))
        << what;
  };
  std::vector<float*> entries;
  std::vector<double> analytic;
  for (size_t i = 0; i < x.size(); i += 5) {
    entries.push_back(&x[i]);
    analytic.push_back(d_x[i]);
  }
  check(entries, analytic, "d_x");
  if (config.decoder_mode) {
    entries.clear();
    analytic.clear();
    for (size_t i = 0; i < x.size(); i += 5) {
      entries.push_back(&embeddings[i]);
      analytic.push_back(d_embeddings[i]);
    }
    check(entries, analytic, "d_embeddings");
  }
  store.ForEachParam([&](ParamSlot slot) {
    std::vector<float*> param_entries;
    std::vector<double> param_analytic;
    const int64_t count = slot.value.NumElements();
    for (int64_t i = 0; i < count; i += std::max<int64_t>(1, count / 5)) {
      param_entries.push_back(slot.value.data() + i);
      param_analytic.push_back(slot.grad.data()[i]);
    }
    check(param_entries, param_analytic, slot.name);
  });
}

TEST_F(LinformerModelTest, GradientsLearnableNoneCausalIntermediates) {
  LinformerConfig config = TinyStack();
  config.parameter_sharing = LinformerParameterSharing::kNone;
  config.causal = true;
  config.k_reduce_by_layer = 1;
  config.w_o_intermediate_dim = 4;
  config.ff_intermediate = 4;
  CheckStackGradients(*ctx_, config);
}

TEST_F(LinformerModelTest, GradientsConvolutionLayerwiseCheckpointed) {
  LinformerConfig config = TinyStack();
  config.method = LinformerMethod::kConvolution;
  config.parameter_sharing = LinformerParameterSharing::kLayerwise;
  config.checkpoint_level = LinformerCheckpointLevel::kC1;
  CheckStackGradients(*ctx_, config);
}

TEST_F(LinformerModelTest, GradientsDecoderModeHeadwiseWithMasks) {
  LinformerConfig config = TinyStack();
  config.parameter_sharing = LinformerParameterSharing::kHeadwise;
  config.decoder_mode = true;
  config.causal = true;
  config.depth = 1;
  LinformerInputs masks;
  masks.input_lengths.lengths = {7, 5};
  masks.embeddings_lengths.lengths = {6, 7};
  CheckStackGradients(*ctx_, config, masks);
}

TEST_F(LinformerModelTest, GradientsNoParamsKeyValueReluFullAttention) {
  LinformerConfig config = TinyStack();
  config.method = LinformerMethod::kNoParams;
  config.parameter_sharing = LinformerParameterSharing::kKeyValue;
  config.activation = Activation::kRelu;
  config.include_ff = false;
  CheckStackGradients(*ctx_, config);
  config.method = LinformerMethod::kLearnable;
  config.full_attention = true;
  config.causal = true;
  config.include_ff = true;
  CheckStackGradients(*ctx_, config);
}

TEST_F(LinformerModelTest, CheckpointingMatchesNoCheckpointingWithDropout) {
  LinformerConfig config = TinyStack();
  config.dropout = 0.2f;
  config.dropout_ff = 0.3f;
  config.parameter_sharing = LinformerParameterSharing::kNone;
  std::vector<std::vector<float>> grads, outputs, input_grads;
  for (LinformerCheckpointLevel level :
       {LinformerCheckpointLevel::kC0, LinformerCheckpointLevel::kC1,
        LinformerCheckpointLevel::kC2}) {
    config.checkpoint_level = level;
    auto model = Linformer::Create(config).value();
    auto store = ParamStore::Create(model->ParamShapes()).value();
    ASSERT_TRUE(model->InitParams(*ctx_, store, "").ok());
    const Shape shape{2, 7, 6};
    const std::vector<float> x = RandomUniformVector<float>(84, 4);
    const std::vector<float> d_y = RandomUniformVector<float>(84, 5);
    std::vector<float> d_x(84);
    outputs.push_back(RunStack(*ctx_, *model, store, x, {}, 2, true,
                               {.training = true, .seed = 77}));
    ASSERT_TRUE(model
                    ->Backward(*ctx_, store, "",
                               TensorView<const float>(d_y.data(), shape),
                               TensorView<float>(d_x.data(), shape))
                    .ok());
    input_grads.push_back(d_x);
    const TensorView<float> all = store.grads();
    grads.emplace_back(all.data(), all.data() + all.NumElements());
  }
  for (int i = 1; i < 3; ++i) {
    EXPECT_EQ(outputs[i], outputs[0]);
    EXPECT_EQ(input_grads[i], input_grads[0]);
    EXPECT_EQ(grads[i], grads[0]);
  }
  // Dropout is active: another seed gives another output.
  auto model = Linformer::Create(config).value();
  auto store = ParamStore::Create(model->ParamShapes()).value();
  ASSERT_TRUE(model->InitParams(*ctx_, store, "").ok());
  const std::vector<float> x = RandomUniformVector<float>(84, 4);
  EXPECT_NE(RunStack(*ctx_, *model, store, x, {}, 2, false,
                     {.training = true, .seed = 78}),
            outputs[0]);
}

TEST_F(LinformerModelTest, BadInputsAndConfigs) {
  LinformerConfig config = TinyStack();
  auto model = Linformer::Create(config).value();
  auto store = ParamStore::Create(model->ParamShapes()).value();
  std::vector<float> x(2 * 6 * 6), y(x.size());
  absl::Status status = model->Forward(
      *ctx_, store, "", TensorView<const float>(x.data(), {2, 6, 6}), {},
      TensorView<float>(y.data(), {2, 6, 6}), false);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("input_size is 7"), std::string::npos)
      << status;
  std::vector<float> x7(2 * 7 * 6), y7(x7.size());
  status = model->Forward(
      *ctx_, store, "", TensorView<const float>(x7.data(), {2, 7, 6}),
      {.embeddings = TensorView<const float>(x7.data(), {2, 7, 6})},
      TensorView<float>(y7.data(), {2, 7, 6}), false);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("decoder_mode"), std::string::npos) << status;
  status = model->Backward(*ctx_, store, "",
                           TensorView<const float>(y7.data(), {2, 7, 6}),
                           TensorView<float>(x7.data(), {2, 7, 6}));
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);

  const std::pair<std::function<void(LinformerConfig&)>, std::string> bad[] = {
      {[](LinformerConfig& c) { c.k_reduce_by_layer = 1; },
       "k_reduce_by_layer"},
      {[](LinformerConfig& c) { c.channels = 7; }, "channels"},
      {[](LinformerConfig& c) { c.activation = Activation::kSilu; },
       "activation"},
      {[](LinformerConfig& c) { c.dropout = 1.0f; }, "dropout"},
      {[](LinformerConfig& c) {
         c.parameter_sharing = LinformerParameterSharing::kNone;
         c.ff_intermediate = 4;
         c.decoder_mode = true;
       },
       "ff_intermediate"},
      {[](LinformerConfig& c) {
         c.method = LinformerMethod::kConvolution;
         c.dim_k = 8;
       },
       "dim_k"},
  };
  for (const auto& [mutate, field] : bad) {
    LinformerConfig broken = TinyStack();
    mutate(broken);
    const absl::Status error = Linformer::Create(broken).status();
    EXPECT_EQ(error.code(), absl::StatusCode::kInvalidArgument) << field;
    EXPECT_NE(error.message().find("LinformerConfig." + field),
              std::string::npos)
        << error;
  }
}

LinformerLMConfig TinyLM() {
  LinformerLMConfig config;
  config.num_tokens = 9;
  config.dropout_tokens = 0.0f;
  config.linformer = TinyStack();
  return config;
}

// Loss <w, out> of a LinformerLM forward, gradient check of every parameter
// (sampled).
void CheckLMGradients(const Context& ctx, const LinformerLMConfig& config) {
  auto model = LinformerLM::Create(config);
  ASSERT_TRUE(model.ok()) << model.status();
  auto store = ParamStore::Create((*model)->ParamShapes()).value();
  ASSERT_TRUE((*model)->InitParams(ctx, store).ok());
  const int64_t B = 2, n = config.linformer.input_size;
  std::vector<int32_t> tokens(B * n);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = (i * 5 + 2) % 9;
  const Shape out_shape{B, n, (*model)->output_dim()};
  std::vector<float> out(out_shape.NumElements());
  const std::vector<double> w = RandomUniformVector<double>(out.size(), 21);
  auto run = [&](bool save) {
    const absl::Status status = (*model)->Forward(
        ctx, store,
        {.tokens = TensorView<const int32_t>(tokens.data(), {B, n})},
        TensorView<float>(out.data(), out_shape), save);
    EXPECT_TRUE(status.ok()) << status;
    double sum = 0;
    for (size_t i = 0; i < out.size(); ++i) sum += w[i] * out[i];
    return sum;
  };
  store.ZeroGrads();
  run(true);
  const std::vector<float> d_out(w.begin(), w.end());
  ASSERT_TRUE((*model)
                  ->Backward(ctx, store,
                             TensorView<const float>(d_out.data(), out_shape))
                  .ok());
  store.ForEachParam([&](ParamSlot slot) {
    std::vector<double> at, analytic;
    std::vector<int64_t> indices;
    const int64_t count = slot.value.NumElements();
    for (int64_t i = 0; i < count; i += std::max<int64_t>(1, count / 4)) {
      indices.push_back(i);
      at.push_back(slot.value.data()[i]);
      analytic.push_back(slot.grad.data()[i]);
    }
    EXPECT_TRUE(GradientMatches(
        [&](const std::vector<double>& values) {
          for (size_t i = 0; i < indices.size(); ++i) {
            slot.value.data()[indices[i]] = static_cast<float>(values[i]);
          }
          const double result = run(false);
          for (size_t i = 0; i < indices.size(); ++i) {
            slot.value.data()[indices[i]] = static_cast<float>(at[i]);
          }
          return result;
        },
        at, analytic, {3e-3, 3e-2}, 1e-2))
        << slot.name;
  });
}

TEST_F(LinformerModelTest, LanguageModelGradients) {
  LinformerLMConfig config = TinyLM();
  CheckLMGradients(*ctx_, config);
  config.emb_dim = 4;  // project_in / project_out around the stack
  config.linformer.parameter_sharing = LinformerParameterSharing::kKeyValue;
  CheckLMGradients(*ctx_, config);
  config.return_emb = true;
  CheckLMGradients(*ctx_, config);
}

TEST_F(LinformerModelTest, LanguageModelNamesAndErrors) {
  LinformerLMConfig config = TinyLM();
  config.emb_dim = 4;
  auto model = LinformerLM::Create(config).value();
  const std::vector<ParamShape> shapes = model->ParamShapes();
  EXPECT_EQ(shapes.front().name, "to_token_emb.weight");
  EXPECT_EQ(shapes[1].name, "linformer.fn.seq.0.fn.heads.0.E.weight");
  EXPECT_EQ(shapes.back().name, "to_logits.bias");
  auto store = ParamStore::Create(shapes).value();
  std::vector<int32_t> tokens(2 * 7, 1);
  std::vector<float> out(2 * 7 * 9);
  tokens[3] = 9;
  absl::Status status = model->Forward(
      *ctx_, store,
      {.tokens = TensorView<const int32_t>(tokens.data(), {2, 7})},
      TensorView<float>(out.data(), {2, 7, 9}), false);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("token 9"), std::string::npos) << status;
  status = model->Forward(
      *ctx_, store,
      {.tokens = TensorView<const int32_t>(tokens.data(), {2, 6})},
      TensorView<float>(out.data(), {2, 6, 9}), false);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("input_size is 7"), std::string::npos)
      << status;
  config.emb_dim = 5;
  EXPECT_EQ(LinformerLM::Create(config).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(LinformerModelTest, EncoderDecoderGradients) {
  LinformerEncDecConfig config{TinyLM(), TinyLM()};
  config.decoder.num_tokens = 5;
  config.decoder.linformer.parameter_sharing =
      LinformerParameterSharing::kHeadwise;
  config.decoder.linformer.depth = 1;
  auto model = LinformerEncDec::Create(config);
  ASSERT_TRUE(model.ok()) << model.status();
  auto store = ParamStore::Create((*model)->ParamShapes()).value();
  ASSERT_TRUE((*model)->InitParams(*ctx_, store).ok());
  EXPECT_TRUE(store.Contains("decoder.linformer.seq.2.fn.to_k.0.weight"));
  const std::vector<int32_t> source = {1, 2, 3, 4, 5, 6, 7,
                                       8, 0, 1, 2, 3, 4, 5};
  const std::vector<int32_t> target = {0, 1, 2, 3, 4, 0, 1,
                                       2, 3, 4, 0, 1, 2, 3};
  const Shape shape{2, 7, 5};
  std::vector<float> logits(shape.NumElements());
  const std::vector<double> w = RandomUniformVector<double>(logits.size(), 31);
  auto run = [&](bool save) {
    EXPECT_TRUE((*model)
                    ->Forward(*ctx_, store,
                              TensorView<const int32_t>(source.data(), {2, 7}),
                              TensorView<const int32_t>(target.data(), {2, 7}),
                              TensorView<float>(logits.data(), shape), save)
                    .ok());
    double sum = 0;
    for (size_t i = 0; i < logits.size(); ++i) sum += w[i] * logits[i];
    return sum;
  };
  store.ZeroGrads();
  run(true);
  const std::vector<float> d_logits(w.begin(), w.end());
  ASSERT_TRUE((*model)
                  ->Backward(*ctx_, store,
                             TensorView<const float>(d_logits.data(), shape))
                  .ok());
  for (const char* name : {"encoder.to_token_emb.weight",
                           "encoder.linformer.seq.0.fn.to_q.0.weight",
                           "encoder.linformer.seq.0.fn.heads.0.E.weight",
                           "decoder.linformer.seq.3.fn.w_1.weight",
                           "decoder.linformer.seq.2.fn.to_v.1.weight"}) {
    TensorView<float> value = store.Value(name).value();
    TensorView<float> grad = store.Grad(name).value();
    std::vector<double> at, analytic;
    for (int64_t i = 0; i < value.NumElements(); i += 3) {
      at.push_back(value.data()[i]);
      analytic.push_back(grad.data()[i]);
    }
    EXPECT_TRUE(GradientMatches(
        [&](const std::vector<double>& values) {
          for (size_t i = 0; i < values.size(); ++i) {
            value.data()[3 * i] = static_cast<float>(values[i]);
          }
          const double result = run(false);
          for (size_t i = 0; i < values.size(); ++i) {
            value.data()[3 * i] = static_cast<float>(at[i]);
          }
          return result;
        },
        at, analytic, {3e-3, 3e-2}, 1e-2))
        << name;
  }
  LinformerEncDecConfig mismatched{TinyLM(), TinyLM()};
  mismatched.encoder.emb_dim = 4;
  EXPECT_EQ(LinformerEncDec::Create(mismatched).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(LinformerModelTest, ConfigFileBuildsAndRuns) {
  std::ifstream file("models/configs/linformer_lm.json");
  ASSERT_TRUE(file.good());
  std::stringstream text;
  text << file.rdbuf();
  auto config = LinformerLMConfigFromJson(text.str());
  ASSERT_TRUE(config.ok()) << config.status();
  auto model = LinformerLM::Create(*config);
  ASSERT_TRUE(model.ok()) << model.status();
  auto store = ParamStore::Create((*model)->ParamShapes()).value();
  ASSERT_TRUE((*model)->InitParams(*ctx_, store).ok());
  const int64_t n = config->linformer.input_size, V = config->num_tokens;
  std::vector<int32_t> tokens(n);
  for (int64_t i = 0; i < n; ++i) tokens[i] = static_cast<int32_t>(i % V);
  std::vector<float> logits(n * V);
  ASSERT_TRUE((*model)
                  ->Forward(*ctx_, store,
                            {.tokens = TensorView<const int32_t>(tokens.data(),
                                                                 {1, n})},
                            TensorView<float>(logits.data(), {1, n, V}), false)
                  .ok());
  EXPECT_TRUE(std::all_of(logits.begin(), logits.end(),
                          [](float v) { return std::isfinite(v); }));

  EXPECT_NE(LinformerLMConfigFromJson(R"({"dim_kk": 3})")
                .status()
                .message()
                .find("dim_kk"),
            std::string::npos);
  EXPECT_NE(LinformerLMConfigFromJson(R"({"method": "strided"})")
                .status()
                .message()
                .find("method"),
            std::string::npos);
  auto nulls = LinformerLMConfigFromJson(R"({"dim_d": null, "emb_dim": null})");
  ASSERT_TRUE(nulls.ok());
  EXPECT_EQ(nulls->linformer.dim_d, 0);
}

}  // namespace
}  // namespace ftx
