// AttentionLayer: projections around an inner attention mechanism, as
// fast-transformers' AttentionLayer (attention/attention_layer.py) and
// x-transformers' Attention projections:
//   Q = x Wq^T + bq, K = c Wk^T + bk, V = c Wv^T + bv   (c = context, or x
//   itself) heads split to [N, T, H, E]; optional Q/K transform (rotary),
//   optionally applied to V as well (x-transformers 0.26.6 rotates the first
//   rotary dims of q, k and v); optional persistent memory key/values
//   prepended (x-transformers attn_num_mem_kv); inner attention;
//   out = concat_heads(O) Wo^T + bo.
// Biases: fast-transformers 0.4.0 has biases on all four projections;
// x-transformers 0.26.6 on none (to_q, to_k, to_v and to_out are all
// Linear(bias=False)). `bias` switches the Q/K/V biases and `out_bias` the
// out projection's (unset: the same as `bias`).
// Multi-query / grouped key-value heads (x-transformers one_kv_head /
// attn_kv_heads): K and V have kv_heads heads, each shared by n_heads /
// kv_heads query heads.
//
// Parameter names follow fast-transformers' state_dict:
// query_projection.{weight,bias}, key_projection.*, value_projection.*,
// out_projection.*, plus memory_keys [H, M, E] and memory_values [H, M, D] when
// num_memory_kv > 0. Gradient convention: d_x and d_context written (=),
// parameter gradients (+=).
#ifndef FTX_ATTENTION_ATTENTION_LAYER_H_
#define FTX_ATTENTION_ATTENTION_LAYER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "attention/attention.h"
#include "attention/qk_transform.h"

namespace ftx {

struct AttentionLayerConfig {
  int64_t d_model = 0;       // C
  int64_t n_heads = 0;       // H
  int64_t d_keys = 0;        // E per head; 0 means d_model / n_heads
  int64_t d_values = 0;      // D per head; 0 means d_model / n_heads
  int64_t kv_heads = 0;      // 0 means n_heads; 1 is multi-query
  int64_t d_model_keys = 0;  // context width; 0 means d_model
  bool bias = true;  // Q/K/V biases: fast-transformers true, x-transformers
                     // false
  std::optional<bool> out_bias;  // out projection bias; unset: `bias`
  int64_t num_memory_kv = 0;     // persistent memory key/values per head
  // Apply the Q/K transform to the values too (x-transformers 0.26.6 rotary;
  // needs D >= the transform's width).
  bool transform_values = false;

  bool has_out_bias() const { return out_bias.value_or(bias); }
};

// Views of the parameters, torch layout ([out, in] weights). Q/K/V biases are
// empty views when config.bias is false, the out bias when
// config.has_out_bias() is false; memory views are empty when num_memory_kv ==
// 0.
struct AttentionLayerParams {
  TensorView<const float> query_weight, query_bias;
  TensorView<const float> key_weight, key_bias;
  TensorView<const float> value_weight, value_bias;
  TensorView<const float> out_weight, out_bias;
  TensorView<const float> memory_keys, memory_values;
};

struct AttentionLayerGrads {
  TensorView<float> query_weight, query_bias;
  TensorView<float> key_weight, key_bias;
  TensorView<float> value_weight, value_bias;
  TensorView<float> out_weight, out_bias;
  TensorView<float> memory_keys, memory_values;
  // [H, L, S], accumulated (+=) when the masks carry a head_bias; may stay
  // empty.
  TensorView<float> head_bias;
};

// Masks and mode of one call (see AttentionInputs).
struct AttentionLayerMasks {
  AttnMask attn_mask = AttnMask::All();
  LengthMask query_lengths;
  LengthMask key_lengths;
  bool training = false;
  uint64_t seed = 0;
  // Optional per-head additive score bias [H, L, S] (T5 relative bias, ALiBi,
  // dynamic position bias) for mechanisms whose SupportsHeadBias() is true.
  // With persistent memory kv the memory columns get no bias.
  TensorView<const float> head_bias;
};

struct AttentionLayerCache {
  std::vector<Tensor> saved;
  AttentionCache inner;
};

class AttentionLayer {
 public:
  // InvalidArgument for inconsistent dimensions (e.g. n_heads not divisible by
  // kv_heads, d_model not divisible by n_heads when d_keys is 0).
  static absl::StatusOr<std::unique_ptr<AttentionLayer>> Create(
      const AttentionLayerConfig& config, std::unique_ptr<Attention> inner,
      std::unique_ptr<QKTransform> qk_transform = nullptr);

  const AttentionLayerConfig& config() const { return config_; }
  Attention& inner() { return *inner_; }

  // The parameters this layer needs, in state_dict order.
  std::vector<ParamShape> ParamShapes() const;

  // x: [N, L, C]; context: [N, S, C_keys], or an empty view for self-attention;
  // out: [N, L, C]. cache may be null at inference.
  absl::Status Forward(const Context& ctx, const AttentionLayerParams& params,
                       TensorView<const float> x,
                       TensorView<const float> context,
                       const AttentionLayerMasks& masks, TensorView<float> out,
                       AttentionLayerCache* cache);

  // d_x: [N, L, C] (=). d_context: [N, S, C_keys] (=), ignored (may be empty)
  // for self-attention, whose context gradient is part of d_x.
  absl::Status Backward(const Context& ctx, const AttentionLayerParams& params,
                        TensorView<const float> x,
                        TensorView<const float> context,
                        const AttentionLayerMasks& masks,
                        const AttentionLayerCache& cache,
                        TensorView<const float> d_out, TensorView<float> d_x,
                        TensorView<float> d_context,
                        const AttentionLayerGrads& grads);

 private:
  AttentionLayer(const AttentionLayerConfig& config,
                 std::unique_ptr<Attention> inner,
                 std::unique_ptr<QKTransform> qk_transform)
      : config_(config),
        inner_(std::move(inner)),
        qk_transform_(std::move(qk_transform)) {}

  AttentionInputs InnerInputs(const AttentionLayerCache& cache,
                              const AttentionLayerMasks& masks, int64_t batch,
                              int64_t queries, int64_t keys) const;

  AttentionLayerConfig config_;
  std::unique_ptr<Attention> inner_;
  std::unique_ptr<QKTransform> qk_transform_;
  AttentionLayerCache scratch_;
  std::vector<Tensor> grad_scratch_;
  Tensor padded_mask_;
  Tensor padded_bias_;  // [H, L, M + S] when memory kv and a head bias meet
  Tensor padded_bias_grad_;  // its gradient
};

}  // namespace ftx

#endif  // FTX_ATTENTION_ATTENTION_LAYER_H_
