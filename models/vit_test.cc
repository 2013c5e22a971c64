// ViTransformerWrapper: patch ordering of ImageToPatches against hand-written
// einops layouts and its inverse; output shapes and finiteness; every
// parameter (sampled) and the image gradient against central differences of
// the float forward; config and input errors.
#include "models/vit.h"

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

ViTConfig TinyConfig() {
  ViTConfig config;
  config.image_size = 4;
  config.patch_size = 2;
  config.channels = 2;
  config.num_classes = 3;
  config.attn_layers.dim = 8;
  config.attn_layers.depth = 1;
  config.attn_layers.heads = 2;
  config.attn_layers.dim_head = 4;
  config.attn_layers.seed = 5;
  config.attn_layers.attention_options["attention_dropout"] = 0.0;
  return config;
}

class ViTTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ctx_ = Context::Create({.num_threads = 2}).value();
    ASSERT_TRUE(RegisterBuiltinAttentions(registry_).ok());
  }

  void Build(const ViTConfig& config) {
    auto model = ViTransformerWrapper::Create(config, registry_);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(model).value();
    auto store = ParamStore::Create(model_->ParamShapes());
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::make_unique<ParamStore>(std::move(store).value());
    ASSERT_TRUE(model_->InitParams(*ctx_, *store_).ok());
  }

  Shape ImageShape(int64_t batch) const {
    const ViTConfig& c = model_->config();
    return Shape({batch, c.channels, c.image_size, c.image_size});
  }

  std::vector<float> Run(const std::vector<float>& images, int64_t batch,
                         bool save_for_backward = false) {
    const int64_t K = model_->config().num_classes;
    std::vector<float> logits(batch * K);
    const absl::Status status = model_->Forward(
        *ctx_, *store_,
        TensorView<const float>(images.data(), ImageShape(batch)),
        TensorView<float>(logits.data(), {batch, K}), save_for_backward);
    EXPECT_TRUE(status.ok()) << status;
    return logits;
  }

  std::unique_ptr<Context> ctx_;
  AttentionRegistry registry_;
  std::unique_ptr<ViTransformerWrapper> model_;
  std::unique_ptr<ParamStore> store_;
};

TEST_F(ViTTest, PatchOrderOneChannel) {
  // 4 x 4 image holding its row-major pixel index; patch 2.
  std::vector<float> image(16);
  for (int i = 0; i < 16; ++i) image[i] = static_cast<float>(i);
  std::vector<float> patches(16, -1.0f);
  ASSERT_TRUE(
      ImageToPatches(*ctx_, TensorView<const float>(image.data(), {1, 1, 4, 4}),
                     2, TensorView<float>(patches.data(), {1, 4, 4}))
          .ok());
  // Patch 0 = pixels (0,0),(0,1),(1,0),(1,1); patch 1 = (0,2),(0,3),(1,2),
  // (1,3); patch 2 = (2,0),(2,1),(3,0),(3,1); patch 3 the bottom right.
  const std::vector<float> expected = {0, 1, 4,  5,  2,  3,  6,  7,
                                       8, 9, 12, 13, 10, 11, 14, 15};
  EXPECT_EQ(patches, expected);
}

TEST_F(ViTTest, PatchOrderChannelsFastest) {
  // 2 channels, 2 x 4 image, patch 2: value = 100 c + 10 row + column.
  std::vector<float> image(16);
  for (int c = 0; c < 2; ++c) {
    for (int r = 0; r < 2; ++r) {
      for (int w = 0; w < 4; ++w)
        image[(c * 2 + r) * 4 + w] = 100 * c + 10 * r + w;
    }
  }
  std::vector<float> patches(16);
  ASSERT_TRUE(
      ImageToPatches(*ctx_, TensorView<const float>(image.data(), {1, 2, 2, 4}),
                     2, TensorView<float>(patches.data(), {1, 2, 8}))
          .ok());
  // (p1 p2 c): (0,0,c0),(0,0,c1),(0,1,c0),(0,1,c1),(1,0,c0),...
  const std::vector<float> expected = {0, 100, 1, 101, 10, 110, 11, 111,
                                       2, 102, 3, 103, 12, 112, 13, 113};
  EXPECT_EQ(patches, expected);
  std::vector<float> back(16, -1.0f);
  ASSERT_TRUE(PatchesToImage(*ctx_,
                             TensorView<const float>(patches.data(), {1, 2, 8}),
                             2, TensorView<float>(back.data(), {1, 2, 2, 4}))
                  .ok());
  EXPECT_EQ(back, image);
}

TEST_F(ViTTest, ShapesAndNames) {
  Build(TinyConfig());
  EXPECT_EQ(model_->num_patches(), 4);
  EXPECT_EQ(model_->patch_dim(), 8);
  ASSERT_TRUE(store_->Contains("cls_token"));
  EXPECT_EQ(store_->Value("pos_embedding").value().shape(), Shape({1, 5, 8}));
  EXPECT_EQ(store_->Value("patch_to_embedding.weight").value().shape(),
            Shape({8, 8}));
  EXPECT_EQ(store_->Value("mlp_head.net.3.weight").value().shape(),
            Shape({3, 32}));
  EXPECT_TRUE(store_->Contains("norm.weight"));
  const std::vector<float> images = RandomUniformVector<float>(3 * 2 * 16, 1);
  const std::vector<float> logits = Run(images, 3);
  ASSERT_EQ(logits.size(), 9u);
  for (float v : logits) EXPECT_TRUE(std::isfinite(v));
  // Rows are independent: the second image alone gives the same logits.
  const std::vector<float> second(images.begin() + 32, images.begin() + 64);
  const std::vector<float> alone = Run(second, 1);
  for (int k = 0; k < 3; ++k) EXPECT_NEAR(alone[k], logits[3 + k], 1e-5);
}

TEST_F(ViTTest, GradientsAgainstCentralDifferences) {
  Build(TinyConfig());
  const int64_t B = 2;
  std::vector<float> images = RandomUniformVector<float>(B * 2 * 16, 2);
  const std::vector<float> logits = Run(images, B);
  const std::vector<double> w = RandomUniformVector<double>(logits.size(), 3);
  auto loss = [&]() {
    const std::vector<float> out = Run(images, B);
    double sum = 0;
    for (size_t i = 0; i < out.size(); ++i) sum += w[i] * out[i];
    return sum;
  };
  store_->ZeroGrads();
  Run(images, B, /*save_for_backward=*/true);
  const std::vector<float> d_logits(w.begin(), w.end());
  std::vector<float> d_images(images.size(), 7.0f);
  const absl::Status status =
      model_->Backward(*ctx_, *store_,
                       TensorView<const float>(
                           d_logits.data(), {B, model_->config().num_classes}),
                       TensorView<float>(d_images.data(), ImageShape(B)));
  ASSERT_TRUE(status.ok()) << status;

  const double h = 1e-2, abs_tol = 2e-3, rel_tol = 2e-2;
  double worst = 0;
  std::string worst_name;
  int64_t checked = 0;
  auto check = [&](float* value, double analytic, const std::string& name) {
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
    if (ratio > worst) {
      worst = ratio;
      worst_name = name + " analytic " + std::to_string(analytic) +
                   " numeric " + std::to_string(numeric);
    }
  };
  // Up to 7 entries per tensor, spread over it.
  store_->ForEachParam([&](ParamSlot slot) {
    const int64_t n = slot.value.NumElements();
    const int64_t step = std::max<int64_t>(1, n / 7);
    for (int64_t i = 0; i < n; i += step) {
      check(slot.value.data() + i, slot.grad.data()[i],
            slot.name + "[" + std::to_string(i) + "]");
    }
  });
  for (size_t i = 0; i < images.size(); i += 3) {
    check(images.data() + i, d_images[i], "images[" + std::to_string(i) + "]");
  }
  std::printf("checked %lld entries; worst ratio %.3f at %s\n",
              static_cast<long long>(checked), worst, worst_name.c_str());
  EXPECT_LT(worst, 1.0) << worst_name;
}

// A default-constructed d_images skips the image gradient; the parameter
// gradients are those of a call that asks for it.
TEST_F(ViTTest, BackwardWithoutImageGradient) {
  Build(TinyConfig());
  const int64_t B = 2;
  const std::vector<float> images = RandomUniformVector<float>(B * 2 * 16, 2);
  const std::vector<float> d_logits =
      RandomUniformVector<float>(B * TinyConfig().num_classes, 3);
  const TensorView<const float> d_view(d_logits.data(),
                                       {B, TinyConfig().num_classes});
  std::vector<float> d_images(images.size());
  store_->ZeroGrads();
  Run(images, B, /*save_for_backward=*/true);
  ASSERT_TRUE(model_
                  ->Backward(*ctx_, *store_, d_view,
                             TensorView<float>(d_images.data(), ImageShape(B)))
                  .ok());
  const TensorView<float> grads = store_->grads();
  const std::vector<float> with_images(grads.data(),
                                       grads.data() + grads.NumElements());
  store_->ZeroGrads();
  Run(images, B, /*save_for_backward=*/true);
  const absl::Status status =
      model_->Backward(*ctx_, *store_, d_view, TensorView<float>());
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_TRUE(std::equal(with_images.begin(), with_images.end(),
                         store_->grads().data()));
}

TEST_F(ViTTest, BadConfigs) {
  ViTConfig config = TinyConfig();
  config.image_size = 5;
  auto model = ViTransformerWrapper::Create(config, registry_);
  ASSERT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(model.status().message().find("divisible by patch_size"),
            std::string::npos)
      << model.status();
  config = TinyConfig();
  config.attn_layers.causal = true;
  model = ViTransformerWrapper::Create(config, registry_);
  ASSERT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(model.status().message().find("Encoder"), std::string::npos);
  config = TinyConfig();
  config.num_classes = -1;
  model = ViTransformerWrapper::Create(config, registry_);
  ASSERT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(model.status().message().find("num_classes"), std::string::npos);
}

TEST_F(ViTTest, BadInputs) {
  Build(TinyConfig());
  std::vector<float> images(2 * 3 * 16), logits(6);
  // Wrong channel count.
  absl::Status status = model_->Forward(
      *ctx_, *store_, TensorView<const float>(images.data(), {2, 3, 4, 4}),
      TensorView<float>(logits.data(), {2, 3}), false);
  ASSERT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("images"), std::string::npos) << status;
  // Wrong image size.
  status = model_->Forward(*ctx_, *store_,
                           TensorView<const float>(images.data(), {2, 2, 4, 6}),
                           TensorView<float>(logits.data(), {2, 3}), false);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  // Wrong logits shape.
  status = model_->Forward(*ctx_, *store_,
                           TensorView<const float>(images.data(), {2, 2, 4, 4}),
                           TensorView<float>(logits.data(), {2, 2}), false);
  ASSERT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("logits"), std::string::npos) << status;
  // Null data.
  status = model_->Forward(*ctx_, *store_,
                           TensorView<const float>(nullptr, {2, 2, 4, 4}),
                           TensorView<float>(logits.data(), {2, 3}), false);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  // Backward without a saving forward.
  status = model_->Backward(*ctx_, *store_,
                            TensorView<const float>(logits.data(), {2, 3}), {});
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  // Patch helper: patch size not dividing the image.
  std::vector<float> patches(64);
  status = ImageToPatches(*ctx_,
                          TensorView<const float>(images.data(), {1, 1, 5, 5}),
                          2, TensorView<float>(patches.data(), {1, 4, 4}));
  ASSERT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("divide"), std::string::npos) << status;
  status = ImageToPatches(*ctx_,
                          TensorView<const float>(images.data(), {1, 1, 4, 4}),
                          2, TensorView<float>(patches.data(), {1, 4, 5}));
  ASSERT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("patches"), std::string::npos) << status;
}

TEST(ViTConfigFromJsonTest, ReadsWrapperAndEncoderArguments) {
  const absl::StatusOr<ViTConfig> config = ViTConfigFromJson(
      R"({"image_size": 16, "patch_size": 4, "num_classes": 5, "channels": 1,
          "dropout": 0.0, "emb_dropout": 0, "seed": 9,
          "attn_layers": {"dim": 24, "depth": 2, "heads": 3, "dim_head": 8,
                          "seed": 1}})");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->image_size, 16);
  EXPECT_EQ(config->patch_size, 4);
  EXPECT_EQ(config->num_classes, 5);
  EXPECT_EQ(config->channels, 1);
  EXPECT_EQ(config->attn_layers.dim, 24);
  EXPECT_EQ(config->attn_layers.depth, 2);
  EXPECT_EQ(config->attn_layers.heads, 3);
  EXPECT_EQ(config->attn_layers.dim_head, 8);
  EXPECT_EQ(config->attn_layers.seed, 9u);

  const absl::StatusOr<ViTConfig> defaults = ViTConfigFromJson(
      R"({"image_size": 8, "patch_size": 4, "num_classes": 2,
          "attn_layers": {"dim": 8, "depth": 1, "seed": 4}})");
  ASSERT_TRUE(defaults.ok()) << defaults.status();
  EXPECT_EQ(defaults->channels, 3);
  EXPECT_EQ(defaults->attn_layers.seed, 4u);
}

TEST(ViTConfigFromJsonTest, BadJsonNamesTheKey) {
  const struct {
    const char* json;
    const char* named;
  } kCases[] = {
      {"3", "JSON object"},
      {R"({"image_size": "big"})", "\"image_size\""},
      {R"({"patch_size": 2.5})", "\"patch_size\""},
      {R"({"attn_layers": [1]})", "\"attn_layers\""},
      {R"({"attn_layers": {"depht": 2}})", "depht"},
      {R"({"dropout": 0.1})", "\"dropout\""},
      {R"({"emb_dropout": true})", "\"emb_dropout\""},
      {R"({"seed": "x"})", "\"seed\""},
      {R"({"dim": 64})", "\"dim\""},
  };
  for (const auto& c : kCases) {
    const absl::StatusOr<ViTConfig> config = ViTConfigFromJson(c.json);
    ASSERT_FALSE(config.ok()) << c.json;
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument)
        << c.json;
    EXPECT_NE(config.status().message().find(c.named), std::string::npos)
        << c.json << ": " << config.status();
  }
}

// x-transformers' captioning example: a ViT without classes encodes the image
// into embeddings [B, N + 1, C], which a cross-attending decoder reads as its
// context; the decoder's context gradient flows back into the ViT.
class ViTCaptioningTest : public ViTTest {
 protected:
  static constexpr int64_t kBatch = 2, kLength = 4;

  void BuildPair() {
    ViTConfig encoder = TinyConfig();
    encoder.num_classes = 0;
    Build(encoder);
    TransformerConfig decoder;
    decoder.dim = 6;
    decoder.depth = 1;
    decoder.heads = 2;
    decoder.dim_head = 3;
    decoder.causal = true;
    decoder.cross_attend = true;
    decoder.context_dim = encoder.attn_layers.dim;
    decoder.num_tokens = 7;
    decoder.max_seq_len = 8;
    decoder.seed = 9;
    decoder.attention_options["attention_dropout"] = 0.0;
    auto model = TransformerWrapper::Create(decoder, registry_);
    ASSERT_TRUE(model.ok()) << model.status();
    decoder_ = std::move(model).value();
    auto store = ParamStore::Create(decoder_->ParamShapes());
    ASSERT_TRUE(store.ok()) << store.status();
    decoder_store_ = std::make_unique<ParamStore>(std::move(store).value());
    ASSERT_TRUE(decoder_->InitParams(*ctx_, *decoder_store_).ok());
  }

  Shape EmbeddingShape() const {
    return Shape(
        {kBatch, model_->num_patches() + 1, model_->config().attn_layers.dim});
  }

  // images -> ViT embeddings -> decoder logits [B, T, V] (flattened).
  std::vector<float> Caption(const std::vector<float>& images,
                             bool save_for_backward) {
    embeddings_.assign(EmbeddingShape().NumElements(), 0.0f);
    absl::Status status = model_->Forward(
        *ctx_, *store_,
        TensorView<const float>(images.data(), ImageShape(kBatch)),
        TensorView<float>(embeddings_.data(), EmbeddingShape()),
        save_for_backward);
    EXPECT_TRUE(status.ok()) << status;
    TransformerInputs inputs;
    inputs.tokens =
        TensorView<const int32_t>(tokens_.data(), {kBatch, kLength});
    inputs.context =
        TensorView<const float>(embeddings_.data(), EmbeddingShape());
    const int64_t V = decoder_->config().num_tokens;
    std::vector<float> logits(kBatch * kLength * V);
    status = decoder_->Forward(
        *ctx_, *decoder_store_, inputs,
        TensorView<float>(logits.data(), {kBatch, kLength, V}),
        save_for_backward);
    EXPECT_TRUE(status.ok()) << status;
    return logits;
  }

  std::unique_ptr<TransformerWrapper> decoder_;
  std::unique_ptr<ParamStore> decoder_store_;
  const std::vector<int32_t> tokens_ = {1, 6, 0, 3, 2, 2, 5, 4};  // [2, 4]
  std::vector<float> embeddings_;
};

TEST_F(ViTCaptioningTest, EmbeddingsAreTheNormalisedStackWithoutAHead) {
  BuildPair();
  for (const ParamShape& shape : model_->ParamShapes()) {
    EXPECT_EQ(shape.name.find("mlp_head"), std::string::npos) << shape.name;
  }
  const std::vector<float> images =
      RandomUniformVector<float>(kBatch * 2 * 16, 4);
  Caption(images, false);
  // Every row is LayerNorm'd: mean 0 and variance 1 before the (initial,
  // identity) affine part.
  const int64_t C = model_->config().attn_layers.dim;
  for (size_t row = 0; row < embeddings_.size() / C; ++row) {
    double mean = 0, square = 0;
    for (int64_t c = 0; c < C; ++c) mean += embeddings_[row * C + c] / C;
    for (int64_t c = 0; c < C; ++c) {
      const double centred = embeddings_[row * C + c] - mean;
      square += centred * centred / C;
    }
    EXPECT_NEAR(mean, 0.0, 1e-5);
    EXPECT_NEAR(square, 1.0, 1e-3);
  }
  std::vector<float> wrong(kBatch * 3);
  const absl::Status status = model_->Forward(
      *ctx_, *store_,
      TensorView<const float>(images.data(), ImageShape(kBatch)),
      TensorView<float>(wrong.data(), {kBatch, 3}), false);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("embeddings"), std::string::npos) << status;
}

TEST_F(ViTCaptioningTest, GradientsThroughDecoderAndEncoder) {
  BuildPair();
  std::vector<float> images = RandomUniformVector<float>(kBatch * 2 * 16, 5);
  const std::vector<float> logits = Caption(images, false);
  const std::vector<double> w = RandomUniformVector<double>(logits.size(), 6);
  auto loss = [&]() {
    const std::vector<float> out = Caption(images, false);
    double sum = 0;
    for (size_t i = 0; i < out.size(); ++i) sum += w[i] * out[i];
    return sum;
  };
  store_->ZeroGrads();
  decoder_store_->ZeroGrads();
  Caption(images, /*save_for_backward=*/true);
  const std::vector<float> d_logits(w.begin(), w.end());
  std::vector<float> d_embeddings(embeddings_.size(), 7.0f);
  absl::Status status = decoder_->Backward(
      *ctx_, *decoder_store_,
      TensorView<const float>(d_logits.data(),
                              {kBatch, kLength, decoder_->config().num_tokens}),
      TensorView<float>(d_embeddings.data(), EmbeddingShape()));
  ASSERT_TRUE(status.ok()) << status;
  std::vector<float> d_images(images.size(), 7.0f);
  status = model_->Backward(
      *ctx_, *store_,
      TensorView<const float>(d_embeddings.data(), EmbeddingShape()),
      TensorView<float>(d_images.data(), ImageShape(kBatch)));
  ASSERT_TRUE(status.ok()) << status;

  const double h = 1e-2, abs_tol = 2e-3, rel_tol = 2e-2;
  double worst = 0;
  std::string worst_name;
  int64_t checked = 0;
  auto check = [&](float* value, double analytic, const std::string& name) {
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
    if (ratio > worst) {
      worst = ratio;
      worst_name = name + " analytic " + std::to_string(analytic) +
                   " numeric " + std::to_string(numeric);
    }
  };
  // Up to 7 entries per tensor of both models, spread over it.
  for (ParamStore* store : {store_.get(), decoder_store_.get()}) {
    const std::string model = store == store_.get() ? "vit." : "decoder.";
    store->ForEachParam([&](ParamSlot slot) {
      const int64_t n = slot.value.NumElements();
      const int64_t step = std::max<int64_t>(1, n / 7);
      for (int64_t i = 0; i < n; i += step) {
        check(slot.value.data() + i, slot.grad.data()[i],
              model + slot.name + "[" + std::to_string(i) + "]");
      }
    });
  }
  for (size_t i = 0; i < images.size(); i += 3) {
    check(images.data() + i, d_images[i], "images[" + std::to_string(i) + "]");
  }
  std::printf("checked %lld entries; worst ratio %.3f at %s\n",
              static_cast<long long>(checked), worst, worst_name.c_str());
  EXPECT_LT(worst, 1.0) << worst_name;
}

}  // namespace
}  // namespace ftx
