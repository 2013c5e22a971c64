// ftx's Hugging Face BertModel (models/bert.h): parameter names and HF-style
// init, every parameter gradient against central differences (pooler, padded
// attention mask, token types, with and without dropout), key-only masking,
// the padding row's missing gradient, config JSON, the "hf-bert" state-dict
// map and bad inputs. Parity with transformers itself is
// tests/parity/bert_test.cc.
#include "models/bert.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "models/bert_state_dict.h"
#include "tests/util/gradcheck.h"
#include "tests/util/random.h"
#include "tests/util/tolerance.h"

namespace ftx {
namespace {

using ::ftx::testing::RandomUniformVector;

BertConfig TinyConfig() {
  BertConfig config;
  config.vocab_size = 7;
  config.hidden_size = 6;
  config.num_hidden_layers = 2;
  config.num_attention_heads = 2;
  config.intermediate_size = 5;
  config.max_position_embeddings = 6;
  config.type_vocab_size = 2;
  config.hidden_dropout_prob = 0.0f;
  config.attention_probs_dropout_prob = 0.0f;
  config.initializer_range = 0.5f;
  config.seed = 3;
  return config;
}

class BertTest : public ::testing::Test {
 protected:
  void SetUp() override { ctx_ = Context::Create({.num_threads = 1}).value(); }

  // A model of `config` with HF-initialised weights and non-trivial norms.
  void Build(const BertConfig& config) {
    auto model = BertModel::Create(config);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(model).value();
    auto store = ParamStore::Create(model_->ParamShapes());
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::make_unique<ParamStore>(std::move(store).value());
    ASSERT_TRUE(model_->InitParams(*ctx_, *store_).ok());
    store_->ForEachParam([&](ParamSlot slot) {
      const bool norm = slot.name.find("LayerNorm") != std::string::npos ||
                        slot.name.find(".norm") != std::string::npos;
      const bool bias = slot.name.find("bias") != std::string::npos;
      if (!norm && !bias) return;
      const std::vector<float> r =
          RandomUniformVector(slot.value.NumElements(), slot.name.size());
      for (int64_t i = 0; i < slot.value.NumElements(); ++i) {
        slot.value.data()[i] += 0.3f * r[i];
      }
    });
  }

  // last_hidden_state followed by pooler_output.
  std::vector<float> Run(const BertInputs& inputs, bool pooled = true) {
    const int64_t N = inputs.input_ids.dim(0), L = inputs.input_ids.dim(1);
    const int64_t C = model_->config().hidden_size;
    std::vector<float> out(N * L * C + (pooled ? N * C : 0));
    const absl::Status status = model_->Forward(
        *ctx_, *store_, inputs, TensorView<float>(out.data(), {N, L, C}),
        pooled ? TensorView<float>(out.data() + N * L * C, {N, C})
               : TensorView<float>(),
        /*save_for_backward=*/true);
    EXPECT_TRUE(status.ok()) << status;
    return out;
  }

  // Every parameter gradient of <w, Run(inputs)> against central
  // differences, except the word embedding's padding row, which HF (and
  // ftx) leave without gradient by design.
  void CheckGradients(const BertInputs& inputs) {
    const int64_t N = inputs.input_ids.dim(0), L = inputs.input_ids.dim(1);
    const int64_t C = model_->config().hidden_size;
    const int64_t pad = model_->config().pad_token_id;
    const std::vector<float> out = Run(inputs);
    const std::vector<double> w = RandomUniformVector<double>(out.size(), 19);
    const std::vector<float> w_float(w.begin(), w.end());
    store_->ZeroGrads();
    Run(inputs);
    const absl::Status status = model_->Backward(
        *ctx_, *store_, TensorView<const float>(w_float.data(), {N, L, C}),
        TensorView<const float>(w_float.data() + N * L * C, {N, C}));
    ASSERT_TRUE(status.ok()) << status;
    std::vector<double> analytic, point;
    std::vector<float*> entries;
    store_->ForEachParam([&](ParamSlot slot) {
      const bool word = slot.name == "embeddings.word_embeddings.weight";
      for (int64_t i = 0; i < slot.value.NumElements(); ++i) {
        if (word && i / C == pad) continue;
        analytic.push_back(slot.grad.data()[i]);
        entries.push_back(slot.value.data() + i);
        point.push_back(slot.value.data()[i]);
      }
    });
    auto loss = [&](const std::vector<double>& x) {
      for (size_t i = 0; i < entries.size(); ++i) {
        *entries[i] = static_cast<float>(x[i]);
      }
      const std::vector<float> y = Run(inputs);
      double sum = 0;
      for (size_t i = 0; i < y.size(); ++i) sum += w[i] * y[i];
      return sum;
    };
    EXPECT_TRUE(testing::GradientMatches(loss, point, analytic,
                                         {.abs = 2e-3, .rel = 2e-2},
                                         /*h=*/1e-2));
    loss(point);
  }

  std::unique_ptr<Context> ctx_;
  std::unique_ptr<BertModel> model_;
  std::unique_ptr<ParamStore> store_;
};

TEST_F(BertTest, ParameterNamesAndHuggingFaceInit) {
  BertConfig config = TinyConfig();
  config.initializer_range = 0.02f;
  Build(config);
  std::vector<std::string> names;
  for (const ParamShape& shape : model_->ParamShapes()) {
    names.push_back(shape.name);
  }
  ASSERT_GE(names.size(), 7u);
  EXPECT_EQ(names[0], "embeddings.word_embeddings.weight");
  EXPECT_EQ(names[1], "embeddings.position_embeddings.weight");
  EXPECT_EQ(names[2], "embeddings.token_type_embeddings.weight");
  EXPECT_EQ(names[3], "embeddings.LayerNorm.weight");
  EXPECT_EQ(names[4], "embeddings.LayerNorm.bias");
  EXPECT_EQ(names[names.size() - 2], "pooler.dense.weight");
  EXPECT_EQ(names.back(), "pooler.dense.bias");
  EXPECT_TRUE(store_->Contains("layers.1.attention.query_projection.weight"));
  EXPECT_TRUE(store_->Contains("layers.1.norm2.bias"));
  EXPECT_FALSE(store_->Contains("norm.weight"));  // no final norm

  // Fresh init (Build perturbed norms and biases).
  ASSERT_TRUE(model_->InitParams(*ctx_, *store_).ok());
  TensorView<float> word = store_->Value(names[0]).value();
  for (int64_t c = 0; c < 6; ++c) EXPECT_EQ(word.data()[c], 0.0f);  // pad 0
  double sum_squares = 0;
  for (int64_t i = 6; i < word.NumElements(); ++i) {
    sum_squares += word.data()[i] * word.data()[i];
  }
  EXPECT_NEAR(std::sqrt(sum_squares / (word.NumElements() - 6)), 0.02, 0.008);
  EXPECT_EQ(store_->Value("layers.0.norm1.weight")->data()[0], 1.0f);
  EXPECT_EQ(store_->Value("embeddings.LayerNorm.bias")->data()[0], 0.0f);
  EXPECT_EQ(store_->Value("layers.0.linear1.bias")->data()[0], 0.0f);
  EXPECT_EQ(store_->Value("pooler.dense.bias")->data()[0], 0.0f);

  config.add_pooling_layer = false;
  auto no_pooler = BertModel::Create(config).value();
  EXPECT_EQ(no_pooler->ParamShapes().size(), names.size() - 2);
}

TEST_F(BertTest, GradientsWithPoolerPaddingAndTokenTypes) {
  Build(TinyConfig());
  const int64_t N = 2, L = 5;
  const std::vector<int32_t> ids = {1, 5, 2, 6, 3, 4, 2, 2, 0, 0};
  const std::vector<int32_t> types = {0, 0, 1, 1, 1, 0, 1, 1, 0, 0};
  const std::vector<int32_t> mask = {1, 1, 1, 1, 1, 1, 1, 1, 0, 0};
  BertInputs inputs;
  inputs.input_ids = TensorView<const int32_t>(ids.data(), {N, L});
  inputs.token_type_ids = TensorView<const int32_t>(types.data(), {N, L});
  inputs.attention_mask = TensorView<const int32_t>(mask.data(), {N, L});
  CheckGradients(inputs);
  // The padding row (id 0) gets no gradient although id 0 is read.
  TensorView<float> d_word =
      store_->Grad("embeddings.word_embeddings.weight").value();
  for (int64_t c = 0; c < 6; ++c) EXPECT_EQ(d_word.data()[c], 0.0f);
}

TEST_F(BertTest, GradientsWithDropout) {
  BertConfig config = TinyConfig();
  config.num_hidden_layers = 1;
  config.hidden_dropout_prob = 0.3f;
  config.attention_probs_dropout_prob = 0.2f;
  Build(config);
  const int64_t N = 2, L = 4;
  const std::vector<int32_t> ids = {1, 5, 2, 6, 3, 4, 2, 1};
  BertInputs inputs;
  inputs.input_ids = TensorView<const int32_t>(ids.data(), {N, L});
  inputs.lengths.lengths = {4, 3};
  inputs.training = true;
  inputs.seed = 8;
  const std::vector<float> train = Run(inputs);
  EXPECT_EQ(train, Run(inputs));
  BertInputs eval = inputs;
  eval.training = false;
  EXPECT_NE(train, Run(eval));
  CheckGradients(inputs);
}

TEST_F(BertTest, MaskHidesPaddedKeysOnlyAndEqualsLengths) {
  Build(TinyConfig());
  const int64_t N = 2, L = 5, C = 6;
  std::vector<int32_t> ids = {1, 5, 2, 6, 3, 4, 2, 2, 0, 0};
  const std::vector<int32_t> mask = {1, 1, 1, 1, 1, 1, 1, 1, 0, 0};
  BertInputs with_mask;
  with_mask.input_ids = TensorView<const int32_t>(ids.data(), {N, L});
  with_mask.attention_mask = TensorView<const int32_t>(mask.data(), {N, L});
  const std::vector<float> masked = Run(with_mask);
  BertInputs with_lengths;
  with_lengths.input_ids = with_mask.input_ids;
  with_lengths.lengths.lengths = {5, 3};
  EXPECT_EQ(masked, Run(with_lengths));
  // Other tokens at the padded positions leave the valid rows (and the
  // pooler, which reads row 0) unchanged; the padded rows still get outputs.
  ids[8] = 4;
  ids[9] = 6;
  const std::vector<float> changed = Run(with_mask);
  for (int64_t i = 0; i < static_cast<int64_t>(masked.size()); ++i) {
    const bool padded_row = i < N * L * C && i / C % L >= 3 && i / C >= L;
    if (!padded_row) {
      EXPECT_EQ(masked[i], changed[i]) << i;
    }
  }
  EXPECT_NE(masked[(L + 3) * C], changed[(L + 3) * C]);
}

TEST(BertConfigTest, ReadsHuggingFaceConfigJson) {
  std::ifstream file("models/configs/bert_tiny.json");
  ASSERT_TRUE(file.good());
  std::stringstream text;
  text << file.rdbuf();
  auto config = BertConfigFromJson(text.str());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->vocab_size, 30522);
  EXPECT_EQ(config->hidden_size, 128);
  EXPECT_EQ(config->num_hidden_layers, 2);
  EXPECT_EQ(config->num_attention_heads, 2);
  EXPECT_EQ(config->intermediate_size, 512);
  EXPECT_EQ(config->hidden_act, Activation::kGelu);
  EXPECT_FLOAT_EQ(config->layer_norm_eps, 1e-12f);
  EXPECT_TRUE(ValidateBertConfig(*config).ok());
  const FtTransformerConfig encoder = BertEncoderConfig(*config);
  EXPECT_EQ(encoder.d_keys, 64);
  EXPECT_FALSE(encoder.final_normalization);
  EXPECT_FALSE(encoder.feed_forward_hidden_dropout);
  EXPECT_EQ(BertConfigFromJson(R"({"hidden_act": "relu"})")->hidden_act,
            Activation::kRelu);
}

TEST(BertConfigTest, BadJsonIsInvalidArgumentNamingTheKey) {
  for (const auto& [json, key] :
       std::vector<std::pair<std::string, std::string>>{
           {R"({"hidden_sise": 4})", "hidden_sise"},
           {R"({"hidden_size": "4"})", "hidden_size"},
           {R"({"layer_norm_eps": "x"})", "layer_norm_eps"},
           {R"({"hidden_act": "swish"})", "hidden_act"},
           {R"({"model_type": "roberta"})", "model_type"},
           {R"({"position_embedding_type": "relative_key"})",
            "position_embedding_type"},
           {R"([1])", "JSON object"}}) {
    auto config = BertConfigFromJson(json);
    ASSERT_FALSE(config.ok()) << json;
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(config.status().message().find(key), std::string::npos)
        << config.status();
  }
}

TEST(BertConfigTest, BadConfigsAreInvalidArgumentNamingTheField) {
  const std::vector<std::pair<std::string, std::function<void(BertConfig&)>>>
      cases = {
          {"vocab_size", [](BertConfig& c) { c.vocab_size = 0; }},
          {"num_attention_heads",
           [](BertConfig& c) { c.num_attention_heads = 4; }},
          {"hidden_act",
           [](BertConfig& c) { c.hidden_act = Activation::kSilu; }},
          {"layer_norm_eps", [](BertConfig& c) { c.layer_norm_eps = -1.0f; }},
          {"hidden_dropout_prob",
           [](BertConfig& c) { c.hidden_dropout_prob = 1.0f; }},
          {"pad_token_id", [](BertConfig& c) { c.pad_token_id = 7; }},
      };
  for (const auto& [field, mutate] : cases) {
    BertConfig config = TinyConfig();
    mutate(config);
    auto model = BertModel::Create(config);
    ASSERT_FALSE(model.ok()) << field;
    EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(model.status().message().find(field), std::string::npos)
        << model.status();
  }
}

TEST_F(BertTest, BadInputsAreInvalidArgumentNamingTheArgument) {
  Build(TinyConfig());
  const int64_t C = 6;
  const std::vector<int32_t> ids = {1, 2, 3, 4, 5, 6, 1};
  const std::vector<int32_t> out_of_range = {1, 7, 3};
  const std::vector<int32_t> bad_types = {0, 2, 1};
  const std::vector<int32_t> holes = {1, 0, 1};
  const std::vector<int32_t> empty_row = {0, 0, 0};
  std::vector<float> hidden(7 * C), pooled(C);
  auto run = [&](const BertInputs& inputs, int64_t L,
                 TensorView<float> pooled_view) {
    return model_->Forward(*ctx_, *store_, inputs,
                           TensorView<float>(hidden.data(), {1, L, C}),
                           pooled_view, false);
  };
  struct Case {
    std::string what;
    std::function<absl::Status()> call;
  };
  const std::vector<Case> cases = {
      {"input_ids",
       [&] {
         return run({.input_ids = TensorView<const int32_t>(ids.data(), {3})},
                    3, {});
       }},
      {"max_position_embeddings",
       [&] {
         return run(
             {.input_ids = TensorView<const int32_t>(ids.data(), {1, 7})}, 7,
             {});
       }},
      {"input_ids must be in",
       [&] {
         return run({.input_ids = TensorView<const int32_t>(out_of_range.data(),
                                                            {1, 3})},
                    3, {});
       }},
      {"token_type_ids",
       [&] {
         return run({.input_ids = TensorView<const int32_t>(ids.data(), {1, 3}),
                     .token_type_ids =
                         TensorView<const int32_t>(bad_types.data(), {1, 3})},
                    3, {});
       }},
      {"attention_mask row 0",
       [&] {
         return run({.input_ids = TensorView<const int32_t>(ids.data(), {1, 3}),
                     .attention_mask =
                         TensorView<const int32_t>(holes.data(), {1, 3})},
                    3, {});
       }},
      {"no position to attend",
       [&] {
         return run({.input_ids = TensorView<const int32_t>(ids.data(), {1, 3}),
                     .attention_mask =
                         TensorView<const int32_t>(empty_row.data(), {1, 3})},
                    3, {});
       }},
      {"not both",
       [&] {
         BertInputs inputs{
             .input_ids = TensorView<const int32_t>(ids.data(), {1, 3}),
             .attention_mask = TensorView<const int32_t>(holes.data(), {1, 3})};
         inputs.lengths.lengths = {3};
         return run(inputs, 3, {});
       }},
      {"lengths",
       [&] {
         BertInputs inputs{.input_ids =
                               TensorView<const int32_t>(ids.data(), {1, 3})};
         inputs.lengths.lengths = {4};
         return run(inputs, 3, {});
       }},
      {"hidden",
       [&] {
         return run(
             {.input_ids = TensorView<const int32_t>(ids.data(), {1, 3})}, 2,
             {});
       }},
      {"pooled",
       [&] {
         return run(
             {.input_ids = TensorView<const int32_t>(ids.data(), {1, 3})}, 3,
             TensorView<float>(pooled.data(), {C}));
       }},
  };
  for (const Case& c : cases) {
    const absl::Status status = c.call();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.what;
    EXPECT_NE(status.message().find(c.what), std::string::npos) << status;
  }
  std::vector<float> d_hidden(3 * C);
  EXPECT_EQ(
      model_
          ->Backward(*ctx_, *store_,
                     TensorView<const float>(d_hidden.data(), {1, 3, C}), {})
          .code(),
      absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(model_
                  ->Forward(*ctx_, *store_,
                            {.input_ids =
                                 TensorView<const int32_t>(ids.data(), {1, 3})},
                            TensorView<float>(hidden.data(), {1, 3, C}), {},
                            /*save_for_backward=*/true)
                  .ok());
  const absl::Status bad_d_hidden = model_->Backward(
      *ctx_, *store_, TensorView<const float>(d_hidden.data(), {3, C}), {});
  EXPECT_EQ(bad_d_hidden.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad_d_hidden.message().find("d_hidden"), std::string::npos);
  const absl::Status no_pooled = model_->Backward(
      *ctx_, *store_, TensorView<const float>(d_hidden.data(), {1, 3, C}),
      TensorView<const float>(pooled.data(), {1, C}));
  EXPECT_EQ(no_pooled.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(no_pooled.message().find("d_pooled"), std::string::npos);
}

TEST(BertStateDictTest, MapCoversTheModelAndRegistersOnce) {
  BertConfig config = TinyConfig();
  auto model = BertModel::Create(config).value();
  auto store = ParamStore::Create(model->ParamShapes()).value();
  auto map = BertStateDictMap(config);
  ASSERT_TRUE(map.ok()) << map.status();
  EXPECT_EQ(map->library, "hf-bert");
  EXPECT_EQ(map->rules.size(), model->ParamShapes().size());
  EXPECT_TRUE(ValidateStateDictMap(*map, store).ok());
  const StateDictRule& query = map->rules[5];
  EXPECT_EQ(query.reference, "encoder.layer.0.attention.self.query.weight");
  EXPECT_EQ(query.ftx, "layers.0.attention.query_projection.weight");
  auto shapes = BertReferenceShapes(config);
  ASSERT_TRUE(shapes.ok()) << shapes.status();
  EXPECT_EQ(shapes->at("encoder.layer.1.intermediate.dense.weight"),
            std::vector<int64_t>({5, 6}));
  config.num_attention_heads = 4;
  EXPECT_EQ(BertStateDictMap(config).status().code(),
            absl::StatusCode::kInvalidArgument);

  StateDictConverterRegistry converters;
  ASSERT_TRUE(RegisterBertConverter(converters).ok());
  EXPECT_EQ(RegisterBertConverter(converters).code(),
            absl::StatusCode::kAlreadyExists);
  auto converter = converters.Find("hf-bert");
  ASSERT_TRUE(converter.ok()) << converter.status();
  auto bad = (*converter)->make_map(R"({"num_hidden_layer": 2})");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("num_hidden_layer"), std::string::npos);
}

}  // namespace
}  // namespace ftx
