// fast-transformers builders: defaults, keyword setters and their errors,
// attention options forwarded to the mechanisms, decoder cross sizes,
// FromDictionary errors naming the key, rebuilding after a change, and the
// example configs models/configs/ft_encoder.json and ft_recurrent_decoder.json
// built and run once.
#include "models/ft_builders.h"

#include <cmath>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "attention/builtin.h"
#include "gtest/gtest.h"
#include "tests/util/random.h"

namespace ftx {
namespace {

using ::ftx::testing::RandomUniformVector;

class FtBuildersTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ctx_ = Context::Create({.num_threads = 1}).value();
    ASSERT_TRUE(RegisterBuiltinAttentions(registry_).ok());
  }
  std::unique_ptr<Context> ctx_;
  AttentionRegistry registry_;
};

void ExpectInvalid(const absl::Status& status, const std::string& needle) {
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(status.message().find(needle), std::string::npos) << status;
}

TEST_F(FtBuildersTest, DefaultsAreFastTransformers) {
  TransformerEncoderBuilder builder(registry_);
  EXPECT_EQ(builder.n_layers(), 4);
  EXPECT_EQ(builder.n_heads(), 4);
  EXPECT_EQ(builder.feed_forward_dimensions(), 1024);
  EXPECT_EQ(builder.query_dimensions(), 64);
  EXPECT_EQ(builder.value_dimensions(), 64);
  EXPECT_EQ(builder.model_dimensions(), 256);
  EXPECT_DOUBLE_EQ(builder.dropout(), 0.1);
  EXPECT_EQ(builder.activation(), "relu");
  EXPECT_TRUE(builder.final_normalization());
  EXPECT_EQ(builder.attention_type(), "full");
  const FtTransformerConfig config = builder.Config();
  EXPECT_EQ(config.d_model, 256);
  EXPECT_EQ(config.activation, Activation::kRelu);

  TransformerDecoderBuilder decoder(registry_);
  EXPECT_EQ(decoder.self_attention_type(), "full");
  EXPECT_EQ(decoder.cross_attention_type(), "full");
  ASSERT_TRUE(decoder.SetNHeads(2).ok());
  EXPECT_EQ(decoder.cross_n_heads(), 2);
  EXPECT_EQ(decoder.cross_model_dimensions(), 128);
  ASSERT_TRUE(decoder.SetCrossValueDimensions(8).ok());
  EXPECT_EQ(decoder.cross_model_dimensions(), 16);
  ASSERT_TRUE(decoder.SetCrossModelDimensions(10).ok());
  EXPECT_EQ(decoder.Config().memory_dim, 10);
  EXPECT_EQ(decoder.Config().cross_d_values, 8);
}

TEST_F(FtBuildersTest, SettersRejectBadValuesNamingThem) {
  TransformerEncoderBuilder builder(registry_);
  ExpectInvalid(builder.SetNLayers(0), "n_layers");
  ExpectInvalid(builder.SetNHeads(-1), "n_heads");
  ExpectInvalid(builder.SetFeedForwardDimensions(0), "feed_forward_dimensions");
  ExpectInvalid(builder.SetQueryDimensions(0), "query_dimensions");
  ExpectInvalid(builder.SetValueDimensions(0), "value_dimensions");
  ExpectInvalid(builder.SetModelDimensions(0), "model_dimensions");
  ExpectInvalid(builder.SetDropout(1.0), "dropout");
  ExpectInvalid(builder.SetActivation("tanh"), "activation");
  ExpectInvalid(builder.SetAttentionType("nope"), "attention_type");
  ExpectInvalid(builder.SetAttentionType("conditional-full:nope"), "nope");
  ExpectInvalid(builder.Set("n_layers", std::string("two")), "n_layers");
  ExpectInvalid(builder.Set("final_normalization", int64_t{1}),
                "final_normalization");
  ExpectInvalid(builder.Set("event_dispatcher", int64_t{1}),
                "event_dispatcher");
  ExpectInvalid(builder.Set("no_such_option", 1.0), "no_such_option");
  ExpectInvalid(builder.Set("attention_dropout", std::string("x")),
                "attention_dropout");
  // Decoder keywords are not encoder keywords.
  ExpectInvalid(builder.Set("cross_n_heads", int64_t{2}), "cross_n_heads");
  EXPECT_EQ(builder.n_layers(), 4);

  RecurrentEncoderBuilder recurrent(registry_);
  ExpectInvalid(recurrent.SetAttentionType("reformer"), "recurrent");
  EXPECT_TRUE(recurrent.SetAttentionType("causal-linear").ok());
  RecurrentDecoderBuilder recurrent_decoder(registry_);
  ExpectInvalid(recurrent_decoder.SetCrossAttentionType("causal-linear"),
                "recurrent cross");
  ExpectInvalid(recurrent_decoder.SetCrossNHeads(0), "cross_n_heads");
}

TEST_F(FtBuildersTest, EventDispatcherIsSharedByKeyOrGiven) {
  TransformerEncoderBuilder builder(registry_);
  EXPECT_EQ(builder.event_dispatcher(), FtEventDispatcher::Get(""));
  ASSERT_TRUE(builder
                  .FromDictionary(R"({"n_layers": 1, "n_heads": 2,
      "query_dimensions": 4, "value_dimensions": 4,
      "feed_forward_dimensions": 8, "event_dispatcher": "builders_test"})")
                  .ok());
  EXPECT_EQ(builder.event_dispatcher(),
            FtEventDispatcher::Get("builders_test"));
  auto encoder = builder.Get();
  ASSERT_TRUE(encoder.ok()) << encoder.status();
  EXPECT_EQ((*encoder)->event_dispatcher(),
            FtEventDispatcher::Get("builders_test"));

  auto own = std::make_shared<FtEventDispatcher>();
  RecurrentDecoderBuilder decoder(registry_);
  decoder.SetEventDispatcher(own);
  ASSERT_TRUE(decoder.SetNLayers(1).ok());
  auto recurrent = decoder.Get();
  ASSERT_TRUE(recurrent.ok()) << recurrent.status();
  EXPECT_EQ((*recurrent)->event_dispatcher(), own);
  decoder.SetEventDispatcher(std::shared_ptr<FtEventDispatcher>());
  recurrent = decoder.Get();
  ASSERT_TRUE(recurrent.ok()) << recurrent.status();
  EXPECT_EQ((*recurrent)->event_dispatcher(), nullptr);
}

TEST_F(FtBuildersTest, FromDictionaryNamesBadKeys) {
  TransformerEncoderBuilder builder(registry_);
  ExpectInvalid(builder.FromDictionary("[1, 2]"), "JSON object");
  ExpectInvalid(builder.FromDictionary(R"({"n_layer": 2})"), "n_layer");
  ExpectInvalid(builder.FromDictionary(R"({"n_heads": 2.5})"), "n_heads");
  ExpectInvalid(builder.FromDictionary(R"({"activation": true})"),
                "activation");
  ExpectInvalid(builder.FromDictionary(R"({"softmax_temp": [1]})"),
                "softmax_temp");
  ASSERT_TRUE(builder
                  .FromDictionary(R"({"n_layers": 3, "dropout": 0,
                                      "softmax_temp": 0.5,
                                      "attention_type": "linear"})")
                  .ok());
  EXPECT_EQ(builder.n_layers(), 3);
  EXPECT_DOUBLE_EQ(builder.dropout(), 0.0);
  EXPECT_EQ(builder.attention_type(), "linear");
  ASSERT_EQ(builder.attention_options().count("softmax_temp"), 1u);
  ASSERT_TRUE(builder.FromDictionary(R"({"softmax_temp": null})").ok());
  EXPECT_EQ(builder.attention_options().count("softmax_temp"), 0u);
}

TEST_F(FtBuildersTest, GetBuildsAndRebuildsAfterChanges) {
  TransformerEncoderBuilder builder(registry_);
  ASSERT_TRUE(builder
                  .FromDictionary(R"({"n_layers": 1, "n_heads": 2,
                                      "query_dimensions": 3,
                                      "value_dimensions": 4,
                                      "feed_forward_dimensions": 5})")
                  .ok());
  auto first = builder.Get();
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ((*first)->ParamShapes().size(), 16u + 2u);
  ASSERT_TRUE(builder.SetNLayers(2).ok());
  builder.SetFinalNormalization(false);
  ASSERT_TRUE(builder.SetAttentionType("conditional-full:linear").ok());
  auto second = builder.Get();
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ((*second)->ParamShapes().size(), 32u);
  // A mechanism missing a required option fails at Get, naming it.
  ASSERT_TRUE(builder.SetAttentionType("clustered").ok());
  auto missing = builder.Get();
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(missing.status().message().find("clusters"), std::string::npos)
      << missing.status();
}

std::string ReadFile(const std::string& path) {
  std::ifstream file(path);
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

TEST_F(FtBuildersTest, ExampleConfigsBuildAndRun) {
  TransformerEncoderBuilder encoder_builder(registry_);
  const std::string encoder_json = ReadFile("models/configs/ft_encoder.json");
  ASSERT_FALSE(encoder_json.empty());
  ASSERT_TRUE(encoder_builder.FromDictionary(encoder_json).ok());
  auto encoder = encoder_builder.Get();
  ASSERT_TRUE(encoder.ok()) << encoder.status();
  auto store = ParamStore::Create((*encoder)->ParamShapes()).value();
  ASSERT_TRUE((*encoder)->InitParams(*ctx_, store).ok());
  const int64_t N = 2, L = 7, C = 64;
  std::vector<float> x = RandomUniformVector(N * L * C, 3), y(x.size()),
                     d_x(x.size());
  FtEncoderInputs inputs{.training = true, .seed = 1};
  inputs.lengths.lengths = {7, 5};
  ASSERT_TRUE(
      (*encoder)
          ->Forward(*ctx_, store, TensorView<const float>(x.data(), {N, L, C}),
                    inputs, TensorView<float>(y.data(), {N, L, C}), true)
          .ok());
  ASSERT_TRUE((*encoder)
                  ->Backward(*ctx_, store,
                             TensorView<const float>(y.data(), {N, L, C}),
                             TensorView<float>(d_x.data(), {N, L, C}))
                  .ok());
  for (float v : y) ASSERT_TRUE(std::isfinite(v));
  for (float v : d_x) ASSERT_TRUE(std::isfinite(v));

  RecurrentDecoderBuilder decoder_builder(registry_);
  ASSERT_TRUE(
      decoder_builder
          .FromDictionary(ReadFile("models/configs/ft_recurrent_decoder.json"))
          .ok());
  auto decoder = decoder_builder.Get();
  ASSERT_TRUE(decoder.ok()) << decoder.status();
  auto decoder_store = ParamStore::Create((*decoder)->ParamShapes()).value();
  ASSERT_TRUE((*decoder)->InitParams(*ctx_, decoder_store).ok());
  const int64_t S = 5, M = 48;
  const std::vector<float> memory = RandomUniformVector(N * S * M, 4);
  FtRecurrentState state = (*decoder)->NewState();
  std::vector<float> x_t = RandomUniformVector(N * C, 5), y_t(N * C);
  for (int step = 0; step < 3; ++step) {
    const absl::Status status = (*decoder)->Step(
        *ctx_, decoder_store, TensorView<const float>(x_t.data(), {N, C}),
        TensorView<const float>(memory.data(), {N, S, M}), LengthMask(), state,
        TensorView<float>(y_t.data(), {N, C}));
    ASSERT_TRUE(status.ok()) << status;
    x_t = y_t;
  }
  for (float v : y_t) ASSERT_TRUE(std::isfinite(v));
}

}  // namespace
}  // namespace ftx
