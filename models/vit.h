// Vision transformer classifier, as x-transformers 0.26.6 ViTransformerWrapper
// (SEMANTICS.md sections 6.1 and 6.6):
//   patches = rearrange(img, 'b c (h p1) (w p2) -> b (h w) (p1 p2 c)')
//                                          [B, N, P], P = p * p * channels
//   x = cat(cls_token, patches W^T + b) + pos_embedding     [B, N + 1, C]
//   x = Encoder(x)                         AttentionLayers, causal = false
//   logits = FeedForward(LayerNorm(x[:, 0]))                [B, num_classes]
// Patch n = hh * (image_size / p) + ww covers rows hh*p .. hh*p+p-1 and
// columns ww*p .. ww*p+p-1; inside it feature (p1 * p + p2) * channels + c is
// pixel (c, hh*p + p1, ww*p + p2), channels fastest as einops orders it.
// The head is 0.26.6's FeedForward(dim, dim_out = num_classes) (GELU, inner
// 4 * dim) after the wrapper's final LayerNorm `norm`; only the CLS row is
// normalised, which is all the head reads. `channels` is 1.0.0's option
// (0.26.6 fixes 3). Without classes (num_classes = 0, 0.26.6's
// num_classes = None) there is no mlp_head and Forward returns the
// embeddings LayerNorm(x) [B, N + 1, C] (the CLS row first), as 0.26.6
// does; this is the README's image encoder for captioning: a cross-attending
// decoder reads them as its context and Backward takes their gradient
// (d_context of TransformerWrapper::Backward). Not supported: dropout,
// emb_dropout, return_embeddings with classes, and 1.0.0's mean-pool head.
//
// Parameter names (x-transformers 0.26.6 state_dict keys) and initialisation:
//   pos_embedding [1, N + 1, C]              N(0, 1) (torch.randn)
//   patch_to_embedding.weight [C, P], .bias [C]   torch Linear
//   cls_token [1, 1, C]                      N(0, 1)
//   attn_layers.*                            models/transformer.h
//   norm.weight, norm.bias [C]               ones, zeros
//   mlp_head.net.0.0.weight [4C, C], .bias   torch Linear
//   mlp_head.net.3.weight [K, 4C], .bias [K] torch Linear
//   (no mlp_head.* without classes)
//
// Gradient convention: Backward accumulates every parameter gradient into the
// ParamStore (+=); the image gradient is written (=).
//
// Example:
//   FTX_ASSIGN_OR_RETURN(auto vit, ViTransformerWrapper::Create(config,
//                                                               registry));
//   FTX_ASSIGN_OR_RETURN(ParamStore store,
//   ParamStore::Create(vit->ParamShapes()));
//   FTX_RETURN_IF_ERROR(vit->InitParams(ctx, store));
//   FTX_RETURN_IF_ERROR(vit->Forward(ctx, store, images, logits, true));
//   FTX_RETURN_IF_ERROR(vit->Backward(ctx, store, d_logits, d_images));
#ifndef FTX_MODELS_VIT_H_
#define FTX_MODELS_VIT_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "attention/attention.h"
#include "attention/registry.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor.h"
#include "kernels/base/tensor_view.h"
#include "layers/feed_forward.h"
#include "layers/layernorm.h"
#include "models/param_store.h"
#include "models/transformer.h"

namespace ftx {

// einops 'b c (h p1) (w p2) -> b (h w) (p1 p2 c)': images [B, ch, H, W]
// (H and W multiples of p) -> patches [B, (H / p) (W / p), p p ch], with
// patches[b, hh * (W / p) + ww, (p1 * p + p2) * ch + c] =
// images[b, c, hh * p + p1, ww * p + p2]. Contiguous CPU views;
// InvalidArgument otherwise or when p does not divide H and W.
absl::Status ImageToPatches(const Context& ctx, TensorView<const float> images,
                            int64_t patch_size, TensorView<float> patches);
// The inverse map (each pixel lies in exactly one patch): images = the
// patches put back (=). Same shapes and errors as ImageToPatches.
absl::Status PatchesToImage(const Context& ctx, TensorView<const float> patches,
                            int64_t patch_size, TensorView<float> images);

struct ViTConfig {
  int64_t image_size = 0;  // H = W
  int64_t patch_size = 0;  // p, divides image_size
  int64_t channels = 3;
  int64_t num_classes = 0;  // K; 0: no head, Forward returns embeddings
  // The Encoder: dim, depth, heads, ... (causal must be false; the wrapper
  // fields num_tokens and max_seq_len are ignored). Its seed initialises the
  // whole model.
  TransformerConfig attn_layers;
};

// Reads a config from a JSON object with ViTransformerWrapper's argument
// names (models/configs/vit.json): image_size, patch_size, num_classes,
// channels (1.0.0), attn_layers (an object read by TransformerConfigFromJson:
// the Encoder's dim, depth, heads, ...), dropout and emb_dropout (accepted
// only as 0, ftx has no ViT dropout), plus "seed" (ftx only: sets
// attn_layers.seed). InvalidArgument naming the key for malformed JSON,
// unknown keys or wrongly typed values; the result is not validated (Create
// does that).
absl::StatusOr<ViTConfig> ViTConfigFromJson(absl::string_view json);

class ViTransformerWrapper {
 public:
  // InvalidArgument for sizes < 1, image_size not divisible by patch_size, a
  // causal stack or a bad stack config.
  static absl::StatusOr<std::unique_ptr<ViTransformerWrapper>> Create(
      const ViTConfig& config, const AttentionRegistry& registry);

  const ViTConfig& config() const { return config_; }
  int64_t num_patches() const;  // N = (image_size / patch_size)^2
  int64_t patch_dim() const;    // P = patch_size^2 * channels

  std::vector<ParamShape> ParamShapes() const;
  absl::Status InitParams(const Context& ctx, ParamStore& store) const;

  // images: contiguous [B, channels, image_size, image_size]; logits:
  // contiguous [B, num_classes], or the embeddings [B, N + 1, C] without
  // classes. CPU context.
  absl::Status Forward(const Context& ctx, ParamStore& store,
                       TensorView<const float> images, TensorView<float> logits,
                       bool save_for_backward);
  // d_logits: Forward's logits shape ([B, num_classes] or [B, N + 1, C]);
  // d_images: the images' shape (=), or empty to
  // skip; parameter gradients (+=). Needs a saving Forward just before.
  absl::Status Backward(const Context& ctx, ParamStore& store,
                        TensorView<const float> d_logits,
                        TensorView<float> d_images);

 private:
  ViTransformerWrapper(const ViTConfig& config,
                       std::unique_ptr<AttentionLayers> layers,
                       LayerNormLayer norm, std::optional<FeedForward> head)
      : config_(config),
        layers_(std::move(layers)),
        norm_(norm),
        head_(std::move(head)) {}

  FeedForwardParams HeadParams(ParamStore& store) const;
  // With classes: the head's and the CLS norm's backward; writes d_stack_out
  // [B, N + 1, C] (zero outside the CLS rows).
  absl::Status HeadBackward(const Context& ctx, ParamStore& store,
                            TensorView<const float> d_logits,
                            TensorView<float> d_stack_out);

  ViTConfig config_;
  std::unique_ptr<AttentionLayers> layers_;
  LayerNormLayer norm_;
  std::optional<FeedForward> head_;  // absent without classes
  // Forward state: patches [B, N, P], patch embeddings [B, N, C], stack input
  // and output [B, N + 1, C], the CLS rows [B, C] and their norm (without
  // classes: the norm of every row, [B, N + 1, C]).
  int64_t batch_ = 0;
  bool saved_ = false;
  Tensor patches_, patch_embedded_, embedded_, stack_out_, cls_, normed_;
  LayerNormCache norm_cache_;
  FeedForwardCache head_cache_;
  Tensor d_normed_, d_cls_, d_stack_out_, d_embedded_, d_patch_embedded_,
      d_patches_;
};

}  // namespace ftx

#endif  // FTX_MODELS_VIT_H_
