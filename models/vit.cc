#include "models/vit.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/base/rng.h"
#include "kernels/base/status_macros.h"
#include "kernels/linear/linear.h"
#include "nlohmann/json.hpp"

namespace ftx {
namespace {

using Json = nlohmann::json;

absl::Status JsonKeyError(const std::string& key, absl::string_view message) {
  return absl::InvalidArgumentError(
      absl::StrCat("ViTConfig JSON: \"", key, "\": ", message));
}

// A distinct initialisation seed per wrapper tensor (the stack derives its
// own from the same seed).
uint64_t WrapperSeed(uint64_t seed, uint64_t index) {
  return seed * 0xD1B54A32D192ED03ull + 0x8CB92BA72F3D8DD7ull * (index + 1);
}

absl::StatusOr<TensorView<float>> Buffer(Tensor& tensor, const Shape& shape) {
  FTX_RETURN_IF_ERROR(EnsureTensor(tensor, shape, Device::Cpu()));
  return tensor.view<float>();
}

bool IsDenseCpu(const TensorView<const float>& view) {
  return view.data() != nullptr && view.IsContiguous() &&
         view.device() == Device::Cpu();
}

absl::Status FillTorchLinear(const Context& ctx, TensorView<float> weight,
                             TensorView<float> bias, int64_t fan_in,
                             uint64_t seed) {
  const float bound = 1.0f / std::sqrt(static_cast<float>(fan_in));
  FTX_RETURN_IF_ERROR(
      FillUniform(ctx, weight, -bound, bound, {.seed = WrapperSeed(seed, 0)}));
  return FillUniform(ctx, bias, -bound, bound, {.seed = WrapperSeed(seed, 1)});
}

// Checks the shapes shared by ImageToPatches and PatchesToImage.
absl::Status CheckPatchShapes(const char* op, TensorView<const float> images,
                              int64_t p, TensorView<const float> patches) {
  if (images.rank() != 4 || !IsDenseCpu(images)) {
    return absl::InvalidArgumentError(
        absl::StrCat(op,
                     ": images must be a contiguous CPU [B, channels, H, "
                     "W] tensor, got ",
                     images.shape().ToString()));
  }
  if (p < 1 || images.dim(2) % p != 0 || images.dim(3) % p != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": patch_size ", p, " must be >= 1 and divide the image height ",
        images.dim(2), " and width ", images.dim(3)));
  }
  const int64_t B = images.dim(0),
                N = (images.dim(2) / p) * (images.dim(3) / p),
                P = p * p * images.dim(1);
  if (patches.rank() != 3 || !IsDenseCpu(patches) || patches.dim(0) != B ||
      patches.dim(1) != N || patches.dim(2) != P) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": patches must be a contiguous CPU [", B, ", ", N,
                     ", ", P, "] tensor, got ", patches.shape().ToString()));
  }
  return absl::OkStatus();
}

// Calls move(pixel_index, patch_index) for every pixel of `images`' shape.
template <typename Move>
void ForEachPatchPixel(const Context& ctx, const Shape& images, int64_t p,
                       Move move) {
  const int64_t ch = images.dim(1), H = images.dim(2), W = images.dim(3),
                across = W / p, N = (H / p) * across, P = p * p * ch;
  ctx.pool().ParallelFor(images.dim(0) * N, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / N, hh = (r % N) / across, ww = (r % N) % across;
      for (int64_t p1 = 0; p1 < p; ++p1) {
        for (int64_t p2 = 0; p2 < p; ++p2) {
          for (int64_t c = 0; c < ch; ++c) {
            move(((b * ch + c) * H + hh * p + p1) * W + ww * p + p2,
                 r * P + (p1 * p + p2) * ch + c);
          }
        }
      }
    }
  });
}

}  // namespace

absl::Status ImageToPatches(const Context& ctx, TensorView<const float> images,
                            int64_t patch_size, TensorView<float> patches) {
  FTX_RETURN_IF_ERROR(
      CheckPatchShapes("ImageToPatches", images, patch_size, patches));
  const float* in = images.data();
  float* out = patches.data();
  ForEachPatchPixel(
      ctx, images.shape(), patch_size,
      [&](int64_t pixel, int64_t feature) { out[feature] = in[pixel]; });
  return absl::OkStatus();
}

absl::Status PatchesToImage(const Context& ctx, TensorView<const float> patches,
                            int64_t patch_size, TensorView<float> images) {
  FTX_RETURN_IF_ERROR(
      CheckPatchShapes("PatchesToImage", images, patch_size, patches));
  const float* in = patches.data();
  float* out = images.data();
  ForEachPatchPixel(
      ctx, images.shape(), patch_size,
      [&](int64_t pixel, int64_t feature) { out[pixel] = in[feature]; });
  return absl::OkStatus();
}

absl::StatusOr<ViTConfig> ViTConfigFromJson(absl::string_view json) {
  const Json root = Json::parse(json.begin(), json.end(), nullptr,
                                /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object()) {
    return absl::InvalidArgumentError("ViTConfig JSON: expected a JSON object");
  }
  ViTConfig config;
  const std::map<std::string, int64_t*> ints = {
      {"image_size", &config.image_size},
      {"patch_size", &config.patch_size},
      {"channels", &config.channels},
      {"num_classes", &config.num_classes}};
  bool has_seed = false;
  uint64_t seed = 0;
  for (const auto& [key, value] : root.items()) {
    if (auto it = ints.find(key); it != ints.end()) {
      if (!value.is_number_integer())
        return JsonKeyError(key, "must be an integer");
      *it->second = value.get<int64_t>();
    } else if (key == "attn_layers") {
      if (!value.is_object()) return JsonKeyError(key, "must be an object");
      absl::StatusOr<TransformerConfig> layers =
          TransformerConfigFromJson(value.dump());
      if (!layers.ok()) return JsonKeyError(key, layers.status().message());
      config.attn_layers = *std::move(layers);
    } else if (key == "dropout" || key == "emb_dropout") {
      if (!value.is_number() || value.get<double>() != 0.0) {
        return JsonKeyError(key, "must be 0 (ftx has no ViT dropout)");
      }
    } else if (key == "seed") {
      if (!value.is_number_unsigned()) {
        return JsonKeyError(key, "must be a non-negative integer");
      }
      has_seed = true;
      seed = value.get<uint64_t>();
    } else {
      return JsonKeyError(
          key,
          "unknown key (ViTransformerWrapper takes image_size, patch_size, "
          "num_classes, channels, attn_layers, dropout, emb_dropout, seed)");
    }
  }
  if (has_seed) config.attn_layers.seed = seed;
  return config;
}

absl::StatusOr<std::unique_ptr<ViTransformerWrapper>>
ViTransformerWrapper::Create(const ViTConfig& config,
                             const AttentionRegistry& registry) {
  auto bad = [](const char* field, int64_t value, const char* requirement) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ViTConfig.", field, " must be ", requirement, ", got ", value));
  };
  if (config.image_size < 1)
    return bad("image_size", config.image_size, ">= 1");
  if (config.patch_size < 1)
    return bad("patch_size", config.patch_size, ">= 1");
  if (config.image_size % config.patch_size != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("ViTConfig: image_size ", config.image_size,
                     " must be divisible by patch_size ", config.patch_size));
  }
  if (config.channels < 1) return bad("channels", config.channels, ">= 1");
  if (config.num_classes < 0) {
    return bad("num_classes", config.num_classes,
               ">= 0 (0: embeddings, no head)");
  }
  if (config.attn_layers.causal) {
    return absl::InvalidArgumentError(
        "ViTConfig.attn_layers must be an Encoder (causal = false)");
  }
  FTX_ASSIGN_OR_RETURN(std::unique_ptr<AttentionLayers> layers,
                       AttentionLayers::Create(config.attn_layers, registry));
  const int64_t C = config.attn_layers.dim;
  FTX_ASSIGN_OR_RETURN(LayerNormLayer norm, LayerNormLayer::Create({.dim = C}));
  std::optional<FeedForward> head;
  if (config.num_classes > 0) {
    FTX_ASSIGN_OR_RETURN(
        head, FeedForward::Create({.dim = C, .dim_out = config.num_classes}));
  }
  return std::unique_ptr<ViTransformerWrapper>(new ViTransformerWrapper(
      config, std::move(layers), norm, std::move(head)));
}

int64_t ViTransformerWrapper::num_patches() const {
  const int64_t side = config_.image_size / config_.patch_size;
  return side * side;
}

int64_t ViTransformerWrapper::patch_dim() const {
  return config_.patch_size * config_.patch_size * config_.channels;
}

std::vector<ParamShape> ViTransformerWrapper::ParamShapes() const {
  const int64_t C = config_.attn_layers.dim, N = num_patches();
  std::vector<ParamShape> shapes = {
      {"pos_embedding", {1, N + 1, C}},
      {"patch_to_embedding.weight", {C, patch_dim()}},
      {"patch_to_embedding.bias", {C}},
      {"cls_token", {1, 1, C}}};
  for (ParamShape& shape : WithPrefix("attn_layers.", layers_->ParamShapes())) {
    shapes.push_back(std::move(shape));
  }
  shapes.push_back({"norm.weight", {C}});
  shapes.push_back({"norm.bias", {C}});
  if (!head_) return shapes;
  for (ParamShape& shape : WithPrefix("mlp_head.", head_->ParamShapes())) {
    shapes.push_back(std::move(shape));
  }
  return shapes;
}

FeedForwardParams ViTransformerWrapper::HeadParams(ParamStore& store) const {
  return {store.Value("mlp_head.net.0.0.weight").value(),
          store.Value("mlp_head.net.0.0.bias").value(),
          {},
          {},
          store.Value("mlp_head.net.3.weight").value(),
          store.Value("mlp_head.net.3.bias").value()};
}

absl::Status ViTransformerWrapper::InitParams(const Context& ctx,
                                              ParamStore& store) const {
  const uint64_t seed = config_.attn_layers.seed;
  FTX_ASSIGN_OR_RETURN(TensorView<float> pos, store.Value("pos_embedding"));
  FTX_RETURN_IF_ERROR(
      FillNormal(ctx, pos, 0.0f, 1.0f, {.seed = WrapperSeed(seed, 10)}));
  FTX_ASSIGN_OR_RETURN(TensorView<float> w,
                       store.Value("patch_to_embedding.weight"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> b,
                       store.Value("patch_to_embedding.bias"));
  FTX_RETURN_IF_ERROR(
      FillTorchLinear(ctx, w, b, patch_dim(), WrapperSeed(seed, 11)));
  FTX_ASSIGN_OR_RETURN(TensorView<float> cls, store.Value("cls_token"));
  FTX_RETURN_IF_ERROR(
      FillNormal(ctx, cls, 0.0f, 1.0f, {.seed = WrapperSeed(seed, 12)}));
  FTX_RETURN_IF_ERROR(layers_->InitParams(ctx, store, "attn_layers."));
  FTX_ASSIGN_OR_RETURN(TensorView<float> norm_w, store.Value("norm.weight"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> norm_b, store.Value("norm.bias"));
  FTX_RETURN_IF_ERROR(norm_.InitParams(norm_w, norm_b));
  if (!head_) return absl::OkStatus();
  FTX_ASSIGN_OR_RETURN(TensorView<float> h0w,
                       store.Value("mlp_head.net.0.0.weight"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> h0b,
                       store.Value("mlp_head.net.0.0.bias"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> h3w,
                       store.Value("mlp_head.net.3.weight"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> h3b,
                       store.Value("mlp_head.net.3.bias"));
  return head_->InitParams(ctx, WrapperSeed(seed, 13),
                           {h0w, h0b, {}, {}, h3w, h3b});
}

absl::Status ViTransformerWrapper::Forward(const Context& ctx,
                                           ParamStore& store,
                                           TensorView<const float> images,
                                           TensorView<float> logits,
                                           bool save_for_backward) {
  saved_ = false;
  const int64_t S = config_.image_size, ch = config_.channels,
                p = config_.patch_size, K = config_.num_classes;
  if (images.rank() != 4 || !IsDenseCpu(images) || images.dim(0) < 1 ||
      images.dim(1) != ch || images.dim(2) != S || images.dim(3) != S) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ViTransformerWrapper: images must be a contiguous CPU [B, ", ch, ", ",
        S, ", ", S, "] tensor (channels, image_size, image_size), got ",
        images.shape().ToString()));
  }
  const int64_t B = images.dim(0), N = num_patches(), P = patch_dim(),
                C = config_.attn_layers.dim;
  const Shape out_shape = head_ ? Shape{B, K} : Shape{B, N + 1, C};
  if (logits.shape() != out_shape || !IsDenseCpu(logits)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ViTransformerWrapper: logits must be a contiguous CPU ",
        out_shape.ToString(), head_ ? " tensor" : " tensor (embeddings)",
        ", got ", logits.shape().ToString()));
  }
  FTX_ASSIGN_OR_RETURN(TensorView<float> patches, Buffer(patches_, {B, N, P}));
  FTX_RETURN_IF_ERROR(ImageToPatches(ctx, images, p, patches));
  FTX_ASSIGN_OR_RETURN(TensorView<float> patch_embedded,
                       Buffer(patch_embedded_, {B, N, C}));
  FTX_ASSIGN_OR_RETURN(TensorView<float> w,
                       store.Value("patch_to_embedding.weight"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> bias,
                       store.Value("patch_to_embedding.bias"));
  FTX_RETURN_IF_ERROR(LinearForward(ctx, patches, w, bias, patch_embedded));
  FTX_ASSIGN_OR_RETURN(TensorView<float> embedded,
                       Buffer(embedded_, {B, N + 1, C}));
  FTX_ASSIGN_OR_RETURN(TensorView<float> cls_token, store.Value("cls_token"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> pos, store.Value("pos_embedding"));
  ctx.pool().ParallelFor(B * (N + 1), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / (N + 1), t = r % (N + 1);
      const float* source = t == 0
                                ? cls_token.data()
                                : patch_embedded.data() + (b * N + t - 1) * C;
      const float* position = pos.data() + t * C;
      float* target = embedded.data() + r * C;
      for (int64_t c = 0; c < C; ++c) target[c] = source[c] + position[c];
    }
  });
  FTX_ASSIGN_OR_RETURN(TensorView<float> stack_out,
                       Buffer(stack_out_, {B, N + 1, C}));
  FTX_RETURN_IF_ERROR(layers_->Forward(ctx, store, "attn_layers.", embedded,
                                       StackInputs{}, stack_out,
                                       save_for_backward));
  FTX_ASSIGN_OR_RETURN(TensorView<float> norm_w, store.Value("norm.weight"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> norm_b, store.Value("norm.bias"));
  if (!head_) {
    FTX_RETURN_IF_ERROR(
        norm_.Forward(ctx, norm_w, norm_b, stack_out, logits, &norm_cache_));
    batch_ = B;
    saved_ = save_for_backward;
    return absl::OkStatus();
  }
  FTX_ASSIGN_OR_RETURN(TensorView<float> cls, Buffer(cls_, {B, C}));
  for (int64_t b = 0; b < B; ++b) {
    const float* source = stack_out.data() + b * (N + 1) * C;
    for (int64_t c = 0; c < C; ++c) cls.data()[b * C + c] = source[c];
  }
  FTX_ASSIGN_OR_RETURN(TensorView<float> normed, Buffer(normed_, {B, C}));
  FTX_RETURN_IF_ERROR(
      norm_.Forward(ctx, norm_w, norm_b, cls, normed, &norm_cache_));
  FTX_RETURN_IF_ERROR(
      head_->Forward(ctx, HeadParams(store), normed, {}, logits, &head_cache_));
  batch_ = B;
  saved_ = save_for_backward;
  return absl::OkStatus();
}

absl::Status ViTransformerWrapper::HeadBackward(
    const Context& ctx, ParamStore& store, TensorView<const float> d_logits,
    TensorView<float> d_stack_out) {
  const int64_t B = batch_, N = num_patches(), C = config_.attn_layers.dim;
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_normed, Buffer(d_normed_, {B, C}));
  FTX_ASSIGN_OR_RETURN(TensorView<float> g0w,
                       store.Grad("mlp_head.net.0.0.weight"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> g0b,
                       store.Grad("mlp_head.net.0.0.bias"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> g3w,
                       store.Grad("mlp_head.net.3.weight"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> g3b,
                       store.Grad("mlp_head.net.3.bias"));
  FTX_RETURN_IF_ERROR(head_->Backward(ctx, HeadParams(store), head_cache_,
                                      normed_.view<float>(), d_logits, d_normed,
                                      {g0w, g0b, {}, {}, g3w, g3b}));
  std::fill(d_stack_out.data(), d_stack_out.data() + B * (N + 1) * C, 0.0f);
  FTX_ASSIGN_OR_RETURN(TensorView<float> norm_w, store.Value("norm.weight"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_norm_w, store.Grad("norm.weight"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_norm_b, store.Grad("norm.bias"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_cls, Buffer(d_cls_, {B, C}));
  FTX_RETURN_IF_ERROR(norm_.Backward(ctx, norm_w, norm_cache_,
                                     cls_.view<float>(), d_normed, d_cls,
                                     d_norm_w, d_norm_b));
  for (int64_t b = 0; b < B; ++b) {
    float* target = d_stack_out.data() + b * (N + 1) * C;
    for (int64_t c = 0; c < C; ++c) target[c] = d_cls.data()[b * C + c];
  }
  return absl::OkStatus();
}

absl::Status ViTransformerWrapper::Backward(const Context& ctx,
                                            ParamStore& store,
                                            TensorView<const float> d_logits,
                                            TensorView<float> d_images) {
  if (!saved_) {
    return absl::FailedPreconditionError(
        "ViTransformerWrapper::Backward needs a Forward with "
        "save_for_backward");
  }
  const int64_t B = batch_, K = config_.num_classes, N = num_patches(),
                P = patch_dim(), C = config_.attn_layers.dim,
                S = config_.image_size, ch = config_.channels,
                p = config_.patch_size;
  const Shape out_shape = head_ ? Shape{B, K} : Shape{B, N + 1, C};
  if (d_logits.shape() != out_shape || !IsDenseCpu(d_logits)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ViTransformerWrapper::Backward: d_logits must be a contiguous CPU ",
        out_shape.ToString(), " tensor, got ", d_logits.shape().ToString()));
  }
  // A default-constructed view (rank 0, no data) skips the image gradient.
  const bool want_images = d_images.data() != nullptr || d_images.rank() > 0;
  if (want_images &&
      (d_images.rank() != 4 || !IsDenseCpu(d_images) || d_images.dim(0) != B ||
       d_images.dim(1) != ch || d_images.dim(2) != S || d_images.dim(3) != S)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ViTransformerWrapper::Backward: d_images must be empty or a "
        "contiguous CPU [",
        B, ", ", ch, ", ", S, ", ", S, "] tensor, got ",
        d_images.shape().ToString()));
  }
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_stack_out,
                       Buffer(d_stack_out_, {B, N + 1, C}));
  if (head_) {
    FTX_RETURN_IF_ERROR(HeadBackward(ctx, store, d_logits, d_stack_out));
  } else {
    // Embeddings: the final norm covers every row.
    FTX_ASSIGN_OR_RETURN(TensorView<float> norm_w, store.Value("norm.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_norm_w, store.Grad("norm.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_norm_b, store.Grad("norm.bias"));
    FTX_RETURN_IF_ERROR(norm_.Backward(ctx, norm_w, norm_cache_,
                                       stack_out_.view<float>(), d_logits,
                                       d_stack_out, d_norm_w, d_norm_b));
  }
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_embedded,
                       Buffer(d_embedded_, {B, N + 1, C}));
  FTX_RETURN_IF_ERROR(layers_->Backward(ctx, store, "attn_layers.", d_stack_out,
                                        d_embedded, {}));
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_pos, store.Grad("pos_embedding"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_cls_token, store.Grad("cls_token"));
  ctx.pool().ParallelFor(C, [&](int64_t begin, int64_t end) {
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t t = 0; t < N + 1; ++t) {
        const float* source = d_embedded.data() + (b * (N + 1) + t) * C;
        float* target = d_pos.data() + t * C;
        for (int64_t c = begin; c < end; ++c) target[c] += source[c];
      }
      const float* source = d_embedded.data() + b * (N + 1) * C;
      for (int64_t c = begin; c < end; ++c) d_cls_token.data()[c] += source[c];
    }
  });
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_patch_embedded,
                       Buffer(d_patch_embedded_, {B, N, C}));
  ctx.pool().ParallelFor(B * N, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / N, n = r % N;
      const float* source = d_embedded.data() + (b * (N + 1) + n + 1) * C;
      float* target = d_patch_embedded.data() + r * C;
      for (int64_t c = 0; c < C; ++c) target[c] = source[c];
    }
  });
  FTX_ASSIGN_OR_RETURN(TensorView<float> w,
                       store.Value("patch_to_embedding.weight"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_w,
                       store.Grad("patch_to_embedding.weight"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_b,
                       store.Grad("patch_to_embedding.bias"));
  TensorView<float> d_patches;
  if (want_images) {
    FTX_ASSIGN_OR_RETURN(d_patches, Buffer(d_patches_, {B, N, P}));
  }
  FTX_RETURN_IF_ERROR(LinearBackward(ctx, patches_.view<float>(), w,
                                     d_patch_embedded, d_patches, d_w, d_b));
  if (!want_images) return absl::OkStatus();
  return PatchesToImage(ctx, d_patches, p, d_images);
}

}  // namespace ftx
