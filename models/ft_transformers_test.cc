// fast-transformers encoder / decoder stacks: parameter names, the post-norm
// layer against a direct double-precision evaluation of transformers.py's
// formulas, every parameter and input (and memory) gradient against central
// differences, dropout masks regenerated in Backward, recurrent steps against
// the batch model under a causal mask, and bad inputs.
#include "models/ft_transformers.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "attention/builtin.h"
#include "gtest/gtest.h"
#include "tests/util/gradcheck.h"
#include "tests/util/random.h"
#include "tests/util/tolerance.h"

namespace ftx {
namespace {

using ::ftx::testing::AllNear;
using ::ftx::testing::RandomUniformVector;

FtTransformerConfig TinyConfig() {
  FtTransformerConfig config;
  config.n_layers = 2;
  config.n_heads = 2;
  config.d_keys = 3;
  config.d_values = 4;
  config.d_model = 8;
  config.d_ff = 6;
  config.dropout = 0.0f;
  config.seed = 5;
  config.attention_options["attention_dropout"] = 0.0;
  return config;
}

class FtTransformersTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ctx_ = Context::Create({.num_threads = 1}).value();
    ASSERT_TRUE(RegisterBuiltinAttentions(registry_).ok());
  }

  std::unique_ptr<ParamStore> MakeStore(const std::vector<ParamShape>& shapes) {
    auto store = ParamStore::Create(shapes);
    EXPECT_TRUE(store.ok()) << store.status();
    return std::make_unique<ParamStore>(std::move(store).value());
  }

  // Gradient of loss = <w, f()> for every parameter entry and every entry of
  // `inputs` against float central differences (step h); analytic gradients
  // of the inputs come in `input_grads` (same order), parameter gradients
  // from the store after `backward`.
  void CheckGradients(
      ParamStore& store, const std::function<std::vector<float>()>& forward,
      const std::function<void(const std::vector<float>&)>& backward,
      const std::vector<std::vector<float>*>& inputs,
      const std::vector<const std::vector<float>*>& input_grads) {
    const std::vector<float> out = forward();
    const std::vector<double> w = RandomUniformVector<double>(out.size(), 91);
    auto loss = [&]() {
      const std::vector<float> y = forward();
      double sum = 0;
      for (size_t i = 0; i < y.size(); ++i) sum += w[i] * y[i];
      return sum;
    };
    store.ZeroGrads();
    backward(std::vector<float>(w.begin(), w.end()));
    // Snapshot the analytic gradients before finite differences reuse
    // buffers.
    std::vector<double> analytic;
    std::vector<float*> entries;
    store.ForEachParam([&](ParamSlot slot) {
      for (int64_t i = 0; i < slot.value.NumElements(); ++i) {
        analytic.push_back(slot.grad.data()[i]);
        entries.push_back(slot.value.data() + i);
      }
    });
    for (size_t k = 0; k < inputs.size(); ++k) {
      for (size_t i = 0; i < inputs[k]->size(); ++i) {
        analytic.push_back((*input_grads[k])[i]);
        entries.push_back(inputs[k]->data() + i);
      }
    }
    std::vector<double> point(entries.size());
    for (size_t i = 0; i < entries.size(); ++i) point[i] = *entries[i];
    auto scalar = [&](const std::vector<double>& x) {
      for (size_t i = 0; i < entries.size(); ++i) {
        *entries[i] = static_cast<float>(x[i]);
      }
      return loss();
    };
    EXPECT_TRUE(testing::GradientMatches(scalar, point, analytic,
                                         {.abs = 2e-3, .rel = 2e-2},
                                         /*h=*/1e-2));
    scalar(point);
  }

  // Dropout on (and, with hidden_dropout, inside) the feed-forward: seeded,
  // and the gradients of the sampled network match central differences.
  void CheckDropout(bool hidden_dropout);

  std::unique_ptr<Context> ctx_;
  AttentionRegistry registry_;
};

TEST_F(FtTransformersTest, ParameterNamesAreFastTransformersStateDictKeys) {
  FtTransformerConfig config = TinyConfig();
  auto encoder = FtTransformerEncoder::Create(config, registry_);
  ASSERT_TRUE(encoder.ok()) << encoder.status();
  const std::vector<ParamShape> shapes = (*encoder)->ParamShapes();
  std::vector<std::string> names;
  for (const ParamShape& shape : shapes) names.push_back(shape.name);
  const std::vector<std::string> layer0 = {
      "layers.0.attention.query_projection.weight",
      "layers.0.attention.query_projection.bias",
      "layers.0.attention.key_projection.weight",
      "layers.0.attention.key_projection.bias",
      "layers.0.attention.value_projection.weight",
      "layers.0.attention.value_projection.bias",
      "layers.0.attention.out_projection.weight",
      "layers.0.attention.out_projection.bias",
      "layers.0.linear1.weight",
      "layers.0.linear1.bias",
      "layers.0.linear2.weight",
      "layers.0.linear2.bias",
      "layers.0.norm1.weight",
      "layers.0.norm1.bias",
      "layers.0.norm2.weight",
      "layers.0.norm2.bias"};
  ASSERT_EQ(names.size(), 2 * layer0.size() + 2);
  for (size_t i = 0; i < layer0.size(); ++i) EXPECT_EQ(names[i], layer0[i]);
  EXPECT_EQ(names.back(), "norm.bias");
  EXPECT_EQ(shapes[0].shape, Shape({6, 8}));  // H * E x C
  EXPECT_EQ(shapes[6].shape, Shape({8, 8}));  // C x H * D
  EXPECT_EQ(shapes[8].shape, Shape({6, 8}));  // F x C

  config.memory_dim = 5;
  config.cross_n_heads = 3;
  auto decoder = FtTransformerDecoder::Create(config, registry_);
  ASSERT_TRUE(decoder.ok()) << decoder.status();
  auto store = MakeStore((*decoder)->ParamShapes());
  for (const char* name : {"layers.1.self_attention.query_projection.weight",
                           "layers.1.cross_attention.key_projection.bias",
                           "layers.1.norm3.weight", "norm.weight"}) {
    EXPECT_TRUE(store->Contains(name)) << name;
  }
  EXPECT_EQ(
      store->Value("layers.0.cross_attention.key_projection.weight")->shape(),
      Shape({9, 5}));
}

// Double-precision evaluation of one post-norm encoder layer with full
// attention (transformers.py), straight from the formulas; LayerNorm eps
// `eps`.
std::vector<double> ReferenceEncoderLayer(ParamStore& store,
                                          const std::string& p,
                                          const std::vector<double>& x,
                                          int64_t N, int64_t L, int64_t C,
                                          int64_t H, int64_t E, int64_t D,
                                          int64_t F, bool gelu, double eps) {
  auto value = [&](const std::string& name) {
    TensorView<float> v = store.Value(p + name).value();
    return std::vector<double>(v.data(), v.data() + v.NumElements());
  };
  auto linear = [](const std::vector<double>& in, int64_t rows, int64_t in_dim,
                   const std::vector<double>& w, const std::vector<double>& b,
                   int64_t out_dim) {
    std::vector<double> out(rows * out_dim);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t o = 0; o < out_dim; ++o) {
        double sum = b[o];
        for (int64_t i = 0; i < in_dim; ++i) {
          sum += in[r * in_dim + i] * w[o * in_dim + i];
        }
        out[r * out_dim + o] = sum;
      }
    }
    return out;
  };
  auto norm = [&](std::vector<double> in, const std::string& name) {
    const std::vector<double> g = value(name + ".weight"),
                              b = value(name + ".bias");
    for (int64_t r = 0; r < N * L; ++r) {
      double mean = 0, var = 0;
      for (int64_t c = 0; c < C; ++c) mean += in[r * C + c] / C;
      for (int64_t c = 0; c < C; ++c) {
        var += (in[r * C + c] - mean) * (in[r * C + c] - mean) / C;
      }
      for (int64_t c = 0; c < C; ++c) {
        in[r * C + c] =
            (in[r * C + c] - mean) / std::sqrt(var + eps) * g[c] + b[c];
      }
    }
    return in;
  };
  const int64_t R = N * L;
  const std::vector<double> q =
      linear(x, R, C, value("attention.query_projection.weight"),
             value("attention.query_projection.bias"), H * E);
  const std::vector<double> k =
      linear(x, R, C, value("attention.key_projection.weight"),
             value("attention.key_projection.bias"), H * E);
  const std::vector<double> v =
      linear(x, R, C, value("attention.value_projection.weight"),
             value("attention.value_projection.bias"), H * D);
  std::vector<double> attended(R * H * D, 0.0);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t l = 0; l < L; ++l) {
        std::vector<double> scores(L);
        double max_score = -1e300;
        for (int64_t s = 0; s < L; ++s) {
          double dot = 0;
          for (int64_t e = 0; e < E; ++e) {
            dot += q[((n * L + l) * H + h) * E + e] *
                   k[((n * L + s) * H + h) * E + e];
          }
          scores[s] = dot / std::sqrt(static_cast<double>(E));
          max_score = std::max(max_score, scores[s]);
        }
        double total = 0;
        for (double& s : scores) total += (s = std::exp(s - max_score));
        for (int64_t s = 0; s < L; ++s) {
          for (int64_t d = 0; d < D; ++d) {
            attended[((n * L + l) * H + h) * D + d] +=
                scores[s] / total * v[((n * L + s) * H + h) * D + d];
          }
        }
      }
    }
  }
  std::vector<double> out =
      linear(attended, R, H * D, value("attention.out_projection.weight"),
             value("attention.out_projection.bias"), C);
  for (int64_t i = 0; i < R * C; ++i) out[i] += x[i];
  const std::vector<double> x1 = norm(out, "norm1");
  std::vector<double> hidden =
      linear(x1, R, C, value("linear1.weight"), value("linear1.bias"), F);
  for (double& h : hidden) {
    h = gelu ? 0.5 * h * (1 + std::erf(h / std::sqrt(2.0))) : std::max(h, 0.0);
  }
  std::vector<double> y =
      linear(hidden, R, F, value("linear2.weight"), value("linear2.bias"), C);
  for (int64_t i = 0; i < R * C; ++i) y[i] += x1[i];
  return norm(y, "norm2");
}

TEST_F(FtTransformersTest, EncoderMatchesDoubleReferenceOfTransformersPy) {
  for (bool gelu : {false, true}) {
    FtTransformerConfig config = TinyConfig();
    config.n_layers = 1;
    config.final_normalization = false;
    config.activation = gelu ? Activation::kGelu : Activation::kRelu;
    // The default eps, and one large enough to change the outputs.
    config.layer_norm_eps = gelu ? 0.25f : 1e-5f;
    auto encoder = FtTransformerEncoder::Create(config, registry_).value();
    auto store = MakeStore(encoder->ParamShapes());
    ASSERT_TRUE(encoder->InitParams(*ctx_, *store).ok());
    // Non-trivial norms.
    store->ForEachParam([&](ParamSlot slot) {
      if (slot.name.find("norm") == std::string::npos) return;
      const std::vector<float> r =
          RandomUniformVector(slot.value.NumElements(), slot.name.size());
      for (int64_t i = 0; i < slot.value.NumElements(); ++i) {
        slot.value.data()[i] += 0.3f * r[i];
      }
    });
    const int64_t N = 2, L = 5, C = 8;
    std::vector<float> x = RandomUniformVector(N * L * C, 4);
    std::vector<float> y(x.size());
    ASSERT_TRUE(encoder
                    ->Forward(*ctx_, *store,
                              TensorView<const float>(x.data(), {N, L, C}), {},
                              TensorView<float>(y.data(), {N, L, C}), false)
                    .ok());
    const std::vector<double> expected = ReferenceEncoderLayer(
        *store, "layers.0.", std::vector<double>(x.begin(), x.end()), N, L, C,
        2, 3, 4, 6, gelu, config.layer_norm_eps);
    EXPECT_TRUE(AllNear(y, expected, {.abs = 2e-5, .rel = 1e-4}))
        << "gelu " << gelu;
  }
}

TEST_F(FtTransformersTest, EncoderGradientsWithLengthsAndCausalMask) {
  for (const char* type : {"full", "linear", "causal-linear"}) {
    FtTransformerConfig config = TinyConfig();
    config.attention_type = type;
    config.activation = Activation::kGelu;
    auto encoder = FtTransformerEncoder::Create(config, registry_).value();
    auto store = MakeStore(encoder->ParamShapes());
    ASSERT_TRUE(encoder->InitParams(*ctx_, *store).ok());
    const int64_t N = 2, L = 4, C = 8;
    std::vector<float> x = RandomUniformVector(N * L * C, 7);
    FtEncoderInputs inputs;
    if (std::string(type) == "causal-linear") {
      inputs.attn_mask = AttnMask::Causal();
    } else {
      inputs.lengths.lengths = {4, 3};
    }
    std::vector<float> d_x(x.size());
    auto forward = [&]() {
      std::vector<float> y(x.size());
      EXPECT_TRUE(encoder
                      ->Forward(*ctx_, *store,
                                TensorView<const float>(x.data(), {N, L, C}),
                                inputs, TensorView<float>(y.data(), {N, L, C}),
                                true)
                      .ok());
      return y;
    };
    auto backward = [&](const std::vector<float>& d_y) {
      forward();
      const absl::Status status = encoder->Backward(
          *ctx_, *store, TensorView<const float>(d_y.data(), {N, L, C}),
          TensorView<float>(d_x.data(), {N, L, C}));
      EXPECT_TRUE(status.ok()) << status;
    };
    SCOPED_TRACE(type);
    CheckGradients(*store, forward, backward, {&x}, {&d_x});
  }
}

TEST_F(FtTransformersTest, DecoderGradientsIncludingMemory) {
  FtTransformerConfig config = TinyConfig();
  config.n_layers = 1;
  config.memory_dim = 5;
  config.cross_n_heads = 3;
  config.cross_d_keys = 2;
  config.cross_d_values = 3;
  config.activation = Activation::kGelu;  // smooth for finite differences
  auto decoder = FtTransformerDecoder::Create(config, registry_).value();
  auto store = MakeStore(decoder->ParamShapes());
  ASSERT_TRUE(decoder->InitParams(*ctx_, *store).ok());
  const int64_t N = 2, L = 3, S = 4, C = 8, M = 5;
  std::vector<float> x = RandomUniformVector(N * L * C, 8);
  std::vector<float> memory = RandomUniformVector(N * S * M, 9);
  FtDecoderInputs inputs;
  inputs.x_mask = AttnMask::Causal();
  inputs.memory_lengths.lengths = {4, 2};
  std::vector<float> d_x(x.size()), d_memory(memory.size());
  auto forward = [&]() {
    std::vector<float> y(x.size());
    EXPECT_TRUE(decoder
                    ->Forward(*ctx_, *store,
                              TensorView<const float>(x.data(), {N, L, C}),
                              TensorView<const float>(memory.data(), {N, S, M}),
                              inputs, TensorView<float>(y.data(), {N, L, C}),
                              true)
                    .ok());
    return y;
  };
  auto backward = [&](const std::vector<float>& d_y) {
    forward();
    const absl::Status status = decoder->Backward(
        *ctx_, *store, TensorView<const float>(d_y.data(), {N, L, C}),
        TensorView<float>(d_x.data(), {N, L, C}),
        TensorView<float>(d_memory.data(), {N, S, M}));
    EXPECT_TRUE(status.ok()) << status;
  };
  CheckGradients(*store, forward, backward, {&x, &memory}, {&d_x, &d_memory});
}

TEST_F(FtTransformersTest, DropoutIsSeededAndRegeneratedInBackward) {
  for (bool hidden_dropout : {true, false}) {
    SCOPED_TRACE(hidden_dropout);
    CheckDropout(hidden_dropout);
  }
}

void FtTransformersTest::CheckDropout(bool hidden_dropout) {
  FtTransformerConfig config = TinyConfig();
  config.n_layers = 1;
  config.dropout = 0.3f;
  config.feed_forward_hidden_dropout = hidden_dropout;
  config.activation = Activation::kGelu;  // smooth for finite differences
  auto encoder = FtTransformerEncoder::Create(config, registry_).value();
  auto store = MakeStore(encoder->ParamShapes());
  ASSERT_TRUE(encoder->InitParams(*ctx_, *store).ok());
  const int64_t N = 2, L = 3, C = 8;
  std::vector<float> x = RandomUniformVector(N * L * C, 10);
  FtEncoderInputs inputs{.training = true, .seed = 42};
  std::vector<float> d_x(x.size());
  auto run = [&](const FtEncoderInputs& in) {
    std::vector<float> y(x.size());
    EXPECT_TRUE(encoder
                    ->Forward(*ctx_, *store,
                              TensorView<const float>(x.data(), {N, L, C}), in,
                              TensorView<float>(y.data(), {N, L, C}), true)
                    .ok());
    return y;
  };
  const std::vector<float> eval = run({});
  const std::vector<float> train = run(inputs);
  EXPECT_EQ(train, run(inputs));
  EXPECT_NE(train, eval);
  auto forward = [&]() { return run(inputs); };
  auto backward = [&](const std::vector<float>& d_y) {
    forward();
    ASSERT_TRUE(encoder
                    ->Backward(*ctx_, *store,
                               TensorView<const float>(d_y.data(), {N, L, C}),
                               TensorView<float>(d_x.data(), {N, L, C}))
                    .ok());
  };
  CheckGradients(*store, forward, backward, {&x}, {&d_x});
}

// Copies every parameter of `from` into `to` (same names).
void CopyParams(ParamStore& from, ParamStore& to) {
  from.ForEachParam([&](ParamSlot slot) {
    TensorView<float> target = to.Value(slot.name).value();
    std::copy(slot.value.data(), slot.value.data() + slot.value.NumElements(),
              target.data());
  });
}

TEST_F(FtTransformersTest, RecurrentEncoderStepsEqualCausalBatchEncoder) {
  for (const auto& [batch_type, step_type] :
       std::vector<std::pair<const char*, const char*>>{
           {"full", "full"},
           {"causal-linear", "linear"},
           {"causal-linear", "causal-linear"}}) {
    FtTransformerConfig config = TinyConfig();
    config.attention_type = batch_type;
    auto batch = FtTransformerEncoder::Create(config, registry_).value();
    config.attention_type = step_type;
    auto recurrent = FtRecurrentEncoder::Create(config, registry_);
    ASSERT_TRUE(recurrent.ok()) << recurrent.status();
    auto store = MakeStore(batch->ParamShapes());
    ASSERT_TRUE(batch->InitParams(*ctx_, *store).ok());
    auto step_store = MakeStore((*recurrent)->ParamShapes());
    CopyParams(*store, *step_store);
    const int64_t N = 2, L = 6, C = 8;
    const std::vector<float> x = RandomUniformVector(N * L * C, 12);
    std::vector<float> y(x.size());
    ASSERT_TRUE(batch
                    ->Forward(*ctx_, *store,
                              TensorView<const float>(x.data(), {N, L, C}),
                              {.attn_mask = AttnMask::Causal()},
                              TensorView<float>(y.data(), {N, L, C}), false)
                    .ok());
    FtRecurrentState state = (*recurrent)->NewState();
    for (int64_t t = 0; t < L; ++t) {
      std::vector<float> x_t(N * C), y_t(N * C);
      for (int64_t n = 0; n < N; ++n) {
        std::copy_n(x.data() + (n * L + t) * C, C, x_t.data() + n * C);
      }
      const absl::Status status =
          (*recurrent)
              ->Step(*ctx_, *step_store,
                     TensorView<const float>(x_t.data(), {N, C}), state,
                     TensorView<float>(y_t.data(), {N, C}));
      ASSERT_TRUE(status.ok()) << status;
      for (int64_t n = 0; n < N; ++n) {
        EXPECT_TRUE(AllNear(y_t.data() + n * C, y.data() + (n * L + t) * C, C,
                            {.abs = 1e-5, .rel = 1e-4}))
            << step_type << " position " << t << " batch " << n;
      }
    }
    EXPECT_EQ(state.steps(), L);
  }
}

TEST_F(FtTransformersTest, RecurrentDecoderStepsEqualCausalBatchDecoder) {
  for (const char* cross : {"full", "linear"}) {
    FtTransformerConfig config = TinyConfig();
    config.attention_type = "causal-linear";
    config.cross_attention_type = cross;
    config.memory_dim = 5;
    auto batch = FtTransformerDecoder::Create(config, registry_).value();
    config.attention_type = "linear";
    auto recurrent = FtRecurrentDecoder::Create(config, registry_);
    ASSERT_TRUE(recurrent.ok()) << recurrent.status();
    auto store = MakeStore(batch->ParamShapes());
    ASSERT_TRUE(batch->InitParams(*ctx_, *store).ok());
    const int64_t N = 2, L = 5, S = 4, C = 8, M = 5;
    const std::vector<float> x = RandomUniformVector(N * L * C, 13);
    const std::vector<float> memory = RandomUniformVector(N * S * M, 14);
    FtDecoderInputs inputs;
    inputs.x_mask = AttnMask::Causal();
    inputs.memory_lengths.lengths = {3, 4};
    std::vector<float> y(x.size());
    ASSERT_TRUE(batch
                    ->Forward(*ctx_, *store,
                              TensorView<const float>(x.data(), {N, L, C}),
                              TensorView<const float>(memory.data(), {N, S, M}),
                              inputs, TensorView<float>(y.data(), {N, L, C}),
                              false)
                    .ok());
    FtRecurrentState state = (*recurrent)->NewState();
    for (int64_t t = 0; t < L; ++t) {
      std::vector<float> x_t(N * C), y_t(N * C);
      for (int64_t n = 0; n < N; ++n) {
        std::copy_n(x.data() + (n * L + t) * C, C, x_t.data() + n * C);
      }
      const absl::Status status =
          (*recurrent)
              ->Step(*ctx_, *store, TensorView<const float>(x_t.data(), {N, C}),
                     TensorView<const float>(memory.data(), {N, S, M}),
                     inputs.memory_lengths, state,
                     TensorView<float>(y_t.data(), {N, C}));
      ASSERT_TRUE(status.ok()) << status;
      for (int64_t n = 0; n < N; ++n) {
        EXPECT_TRUE(AllNear(y_t.data() + n * C, y.data() + (n * L + t) * C, C,
                            {.abs = 1e-5, .rel = 1e-4}))
            << cross << " position " << t << " batch " << n;
      }
    }
  }
}

TEST_F(FtTransformersTest, BadConfigsAndInputsAreInvalidArgument) {
  const std::vector<
      std::pair<std::string, std::function<void(FtTransformerConfig&)>>>
      cases = {
          {"n_layers", [](FtTransformerConfig& c) { c.n_layers = 0; }},
          {"n_heads", [](FtTransformerConfig& c) { c.n_heads = 0; }},
          {"d_ff", [](FtTransformerConfig& c) { c.d_ff = 0; }},
          {"dropout", [](FtTransformerConfig& c) { c.dropout = 1.0f; }},
          {"activation",
           [](FtTransformerConfig& c) { c.activation = Activation::kSilu; }},
          {"layer_norm_eps",
           [](FtTransformerConfig& c) { c.layer_norm_eps = -1e-5f; }},
          {"attention_type",
           [](FtTransformerConfig& c) { c.attention_type = "nope"; }},
          {"attention_type",
           [](FtTransformerConfig& c) { c.attention_type = "full:nope"; }},
      };
  for (const auto& [field, mutate] : cases) {
    FtTransformerConfig config = TinyConfig();
    mutate(config);
    auto encoder = FtTransformerEncoder::Create(config, registry_);
    ASSERT_FALSE(encoder.ok()) << field;
    EXPECT_EQ(encoder.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(encoder.status().message().find(field), std::string::npos)
        << encoder.status();
  }
  FtTransformerConfig config = TinyConfig();
  config.attention_type = "reformer";
  auto no_step = FtRecurrentEncoder::Create(config, registry_);
  EXPECT_EQ(no_step.status().code(), absl::StatusCode::kInvalidArgument);

  auto encoder = FtTransformerEncoder::Create(TinyConfig(), registry_).value();
  auto store = MakeStore(encoder->ParamShapes());
  std::vector<float> x(2 * 3 * 7), y(2 * 3 * 7);
  absl::Status status = encoder->Forward(
      *ctx_, *store, TensorView<const float>(x.data(), {2, 3, 7}), {},
      TensorView<float>(y.data(), {2, 3, 7}), false);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("x must be"), std::string::npos) << status;
  std::vector<float> d(2 * 3 * 8);
  status = encoder->Backward(*ctx_, *store,
                             TensorView<const float>(d.data(), {2, 3, 8}),
                             TensorView<float>(d.data(), {2, 3, 8}));
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);

  FtTransformerConfig dec = TinyConfig();
  auto decoder = FtTransformerDecoder::Create(dec, registry_).value();
  auto dec_store = MakeStore(decoder->ParamShapes());
  std::vector<float> xd(2 * 3 * 8), yd(2 * 3 * 8), memory(2 * 4 * 5);
  status = decoder->Forward(*ctx_, *dec_store,
                            TensorView<const float>(xd.data(), {2, 3, 8}),
                            TensorView<const float>(memory.data(), {2, 4, 5}),
                            {}, TensorView<float>(yd.data(), {2, 3, 8}), false);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("memory"), std::string::npos) << status;

  auto recurrent = FtRecurrentEncoder::Create(TinyConfig(), registry_).value();
  auto step_store = MakeStore(recurrent->ParamShapes());
  FtRecurrentState state = recurrent->NewState();
  std::vector<float> x1(2 * 8), y1(2 * 8), x3(3 * 8), y3(3 * 8);
  ASSERT_TRUE(recurrent
                  ->Step(*ctx_, *step_store,
                         TensorView<const float>(x1.data(), {2, 8}), state,
                         TensorView<float>(y1.data(), {2, 8}))
                  .ok());
  status = recurrent->Step(*ctx_, *step_store,
                           TensorView<const float>(x3.data(), {3, 8}), state,
                           TensorView<float>(y3.data(), {3, 8}));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("batch"), std::string::npos) << status;
}

}  // namespace
}  // namespace ftx
