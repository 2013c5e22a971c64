// Query-key normalisation, "cosine-sim attention" (Henry et al. 2020,
// "Query-Key Normalization for Transformers"; Dehghani et al. 2023 for the
// learned per-dimension scale), as x-transformers Attention(qk_norm=True):
// q and k are l2-normalised per head (F.normalize, x / max(|x|, 1e-12)) and
// the dot products get a scale s_h instead of dim_head^-0.5.
//
// This module is a Q/K transform on the projected, head-split (and rotated)
// queries and keys, placed where x-transformers normalises them (Attention.
// forward step 8 of SEMANTICS 6.2: after rotary in 0.26.6, before rotary in
// 2.x, after mem_kv concatenation in 0.26.6): it writes
//   q' = s_h * g^q_h (.) l2norm_G(q),   k' = g^k_h (.) l2norm_G(k)
// so that any mechanism run with softmax_temp = 1 computes softmax(s_h q̂·k̂).
// With the "full" mechanism this is cosine-sim attention.
//
// Versions (state_dict names relative to the Attention module):
//   kLearnedTemperature  x-transformers 0.26.6 (qk_norm, scale_init_value):
//     G = 1, s_h = 1 / clamp(exp(scale_h), min = 1e-2), "scale" [1, H, 1, 1]
//     initialised to scale_init_value (-3, i.e. s ~ 20.09; use_qk_norm_attn
//     with qk_norm_attn_seq_len n sets -log(log2(n^2 - n)), see
//     QkNormTemperatureInit). No per-dimension scale.
//   kFixedScale  x-transformers >= 1.0 (qk_norm_groups, qk_norm_scale):
//     l2norm over G groups of E / G dims each, s_h = qk_norm_scale for every
//     head (default 10 from 1.0.4; 1.0.0 to 1.0.3 had 1), no parameter; with
//     qk_norm_dim_scale (1.9.1+) learned "qk_norm_q_scale" and
//     "qk_norm_k_scale" [H, 1, E], initialised to ones (kv_heads = H here).
// 2.x also l2-normalises memory keys (num_mem_kv) with G = 1 and the k scale;
// that stays with the caller.
//
// Layouts: queries [N, L, H, E], keys [N, S, H, E] (fast-transformers layout).
// Gradient convention: d_queries, d_keys written (=); d_scale, d_q_scale,
// d_k_scale accumulated (+=). CPU only (a CUDA context is Unimplemented).
#ifndef FTX_ATTENTION_QK_NORM_H_
#define FTX_ATTENTION_QK_NORM_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "attention/attention.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor_view.h"

namespace ftx {

enum class QkNormVariant {
  kLearnedTemperature,  // x-transformers 0.26.6
  kFixedScale,          // x-transformers >= 1.0
};

struct QkNormConfig {
  int64_t heads = 0;     // H
  int64_t head_dim = 0;  // E
  QkNormVariant variant = QkNormVariant::kFixedScale;
  float scale_init_value = -3.0f;  // kLearnedTemperature: initial "scale"
  int64_t groups = 1;              // kFixedScale: qk_norm_groups, divides E
  float fixed_scale = 10.0f;       // kFixedScale: qk_norm_scale
  bool dim_scale = false;          // kFixedScale: qk_norm_dim_scale
};

// Parameter views (T = const float) or gradient / init views (T = float);
// the views of absent parameters are empty.
template <typename T>
struct QkNormTensors {
  TensorView<T> scale;    // [1, H, 1, 1], kLearnedTemperature
  TensorView<T> q_scale;  // [H, 1, E], kFixedScale with dim_scale
  TensorView<T> k_scale;  // [H, 1, E], kFixedScale with dim_scale
};
using QkNormParams = QkNormTensors<const float>;
using QkNormGrads = QkNormTensors<float>;

// x-transformers 0.26.6 use_qk_norm_attn: -log(log2(n^2 - n)) for sequence
// length n (> 2).
float QkNormTemperatureInit(int64_t seq_len);

class QkNorm {
 public:
  // InvalidArgument for heads or head_dim < 1, groups not dividing head_dim,
  // dim_scale or groups != 1 with kLearnedTemperature.
  static absl::StatusOr<QkNorm> Create(const QkNormConfig& config);

  const QkNormConfig& config() const { return config_; }

  // {"scale", [1, H, 1, 1]} for kLearnedTemperature; {"qk_norm_q_scale",
  // [H, 1, E]}, {"qk_norm_k_scale", [H, 1, E]} with dim_scale; none otherwise.
  std::vector<ParamShape> ParamShapes() const;

  // scale = scale_init_value, q_scale = k_scale = 1 (the present ones).
  absl::Status InitParams(const QkNormGrads& params) const;

  // The score scale s_h of head h.
  float ScoreScale(const QkNormParams& params, int64_t head) const;

  // queries, q_out: [N, L, H, E]; keys, k_out: [N, S, H, E]. Outputs may
  // alias their inputs exactly.
  absl::Status Forward(const Context& ctx, const QkNormParams& params,
                       TensorView<const float> queries,
                       TensorView<const float> keys, TensorView<float> q_out,
                       TensorView<float> k_out) const;

  // d_q_out, d_queries: [N, L, H, E]; d_k_out, d_keys: [N, S, H, E] (=).
  // grads: as params (+=). The inputs are those given to Forward.
  absl::Status Backward(const Context& ctx, const QkNormParams& params,
                        TensorView<const float> queries,
                        TensorView<const float> keys,
                        TensorView<const float> d_q_out,
                        TensorView<const float> d_k_out,
                        TensorView<float> d_queries, TensorView<float> d_keys,
                        const QkNormGrads& grads) const;

 private:
  explicit QkNorm(const QkNormConfig& config) : config_(config) {}

  absl::Status CheckParams(const QkNormParams& params) const;

  QkNormConfig config_;
};

}  // namespace ftx

#endif  // FTX_ATTENTION_QK_NORM_H_
