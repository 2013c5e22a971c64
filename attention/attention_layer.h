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
// x-transformers 0.26.6 Attention options (SEMANTICS 6.2), all off by default:
//   qk_norm     attention/qk_norm.h on the queries and the (memory-extended)
//               keys after the Q/K transform; the inner mechanism must then
//               run with softmax_temp = 1 (the norm carries the scale).
//   head_scale  attended[n, l, h, :] *= head_scale_params[h] before the heads
//               are merged ("head_scale_params" [1, H, 1, 1], init ones; the
//               layers/normformer.h HeadScale formula).
//   gate_values merged heads *= sigmoid(x Wg^T + bg) (attention/value_gating.h,
//               "to_v_gate.weight" [H * D, C], "to_v_gate.bias" [H * D]).
//   on_attn     the out projection becomes attention on attention
//               (attention/attention_on_attention.h): out_projection.weight
//               is [2C, H * D] (x-transformers' to_out.0.weight), no bias.
//
// Parameter names follow fast-transformers' state_dict:
// query_projection.{weight,bias}, key_projection.*, value_projection.*,
// out_projection.*, plus memory_keys [H, M, E] and memory_values [H, M, D] when
// num_memory_kv > 0. Gradient convention: d_x and d_context written (=),
// parameter gradients (+=).
//
// An optional projection observer (SetProjectionObserver) receives Q [N, L, H,
// E], K [N, S, Hkv, E] and V [N, S, Hkv, D] right after the projections
// (before any Q/K transform or memory kv) on every Forward, where
// fast-transformers 0.4.0's AttentionLayer dispatches its QKVEvent
// (models/ft_events.h).
#ifndef FTX_ATTENTION_ATTENTION_LAYER_H_
#define FTX_ATTENTION_ATTENTION_LAYER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "attention/attention.h"
#include "attention/attention_on_attention.h"
#include "attention/qk_norm.h"
#include "attention/qk_transform.h"
#include "attention/value_gating.h"

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
  // x-transformers 0.26.6 options (see the top of this file). qk_norm's
  // heads and head_dim are filled in from n_heads and d_keys.
  std::optional<QkNormConfig> qk_norm;
  bool head_scale = false;
  bool gate_values = false;
  float gate_values_initial_bias = 1.0f;  // 0.26.6: 1
  bool on_attn = false;

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
  // Present with the matching option only.
  TensorView<const float> head_scale;                        // [1, H, 1, 1]
  TensorView<const float> value_gate_weight;                 // [H * D, C]
  TensorView<const float> value_gate_bias;                   // [H * D]
  TensorView<const float> qk_norm_scale;                     // [1, H, 1, 1]
  TensorView<const float> qk_norm_q_scale, qk_norm_k_scale;  // [H, 1, E]
};

struct AttentionLayerGrads {
  TensorView<float> query_weight, query_bias;
  TensorView<float> key_weight, key_bias;
  TensorView<float> value_weight, value_bias;
  TensorView<float> out_weight, out_bias;
  TensorView<float> memory_keys, memory_values;
  TensorView<float> head_scale;
  TensorView<float> value_gate_weight, value_gate_bias;
  TensorView<float> qk_norm_scale, qk_norm_q_scale, qk_norm_k_scale;
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
  ValueGatingCache value_gate;
  AttentionOnAttentionCache on_attn;
};

class AttentionLayer {
 public:
  // Receives the projected queries, keys and values (contiguous views valid
  // during the call only).
  using ProjectionObserver = std::function<void(
      TensorView<const float> queries, TensorView<const float> keys,
      TensorView<const float> values)>;

  // InvalidArgument for inconsistent dimensions (e.g. n_heads not divisible by
  // kv_heads, d_model not divisible by n_heads when d_keys is 0).
  static absl::StatusOr<std::unique_ptr<AttentionLayer>> Create(
      const AttentionLayerConfig& config, std::unique_ptr<Attention> inner,
      std::unique_ptr<QKTransform> qk_transform = nullptr);

  const AttentionLayerConfig& config() const { return config_; }
  Attention& inner() { return *inner_; }
  // Called by every later Forward until replaced; nullptr removes it.
  void SetProjectionObserver(ProjectionObserver observer) {
    projection_observer_ = std::move(observer);
  }

  // The parameters this layer needs, in state_dict order; the option
  // parameters (head_scale_params, to_v_gate.*, qk_norm_scale,
  // qk_norm_q_scale, qk_norm_k_scale) last.
  std::vector<ParamShape> ParamShapes() const;
  // Whether `name` is one of the option parameters, which InitOptionParams
  // initialises (the projections are the caller's).
  static bool IsOptionParam(absl::string_view name);
  // head_scale_params = 1, to_v_gate weight 0 and bias
  // gate_values_initial_bias, the qk_norm parameters per QkNorm::InitParams.
  // `params`: writable views of the present option parameters.
  absl::Status InitOptionParams(const AttentionLayerGrads& params) const;

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

  QkNormParams QkNormViews(const AttentionLayerParams& params) const {
    return {params.qk_norm_scale, params.qk_norm_q_scale,
            params.qk_norm_k_scale};
  }
  absl::Status CheckOptionParams(const AttentionLayerParams& params) const;

  AttentionInputs InnerInputs(const AttentionLayerCache& cache,
                              const AttentionLayerMasks& masks, int64_t batch,
                              int64_t queries, int64_t keys) const;

  AttentionLayerConfig config_;
  std::unique_ptr<Attention> inner_;
  std::unique_ptr<QKTransform> qk_transform_;
  std::optional<QkNorm> qk_norm_;
  std::optional<ValueGating> value_gate_;
  std::optional<AttentionOnAttention> on_attn_;
  ProjectionObserver projection_observer_;
  AttentionLayerCache scratch_;
  std::vector<Tensor> grad_scratch_;
  Tensor padded_mask_;
  Tensor padded_bias_;  // [H, L, M + S] when memory kv and a head bias meet
  Tensor padded_bias_grad_;  // its gradient
};

}  // namespace ftx

#endif  // FTX_ATTENTION_ATTENTION_LAYER_H_
