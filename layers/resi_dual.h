// ResiDual (Xie et al. 2023, "ResiDual: Transformer with Dual Residual
// Connections"), as x-transformers AttentionLayers(resi_dual=True,
// resi_dual_scale=s) (1.15.0+): the stack runs post-norm (pre_norm is forced
// off; every layer ends with its post-main norm, x = Norm_l(x + f_l(x))),
// and a second, pre-norm-like stream accumulates the raw branch outputs:
//   outer = s * x_0                         before the first layer
//   outer += s * f_l(.)                     after every branch l, before any
//                                           post-branch norm
//   y = x_L + LayerNorm_final(outer)        instead of the final norm
// with 0 < s <= 1 (x-transformers asserts it; s < 1 keeps fp16 in range).
// The final norm is the stack's final_norm: a LayerNorm(C) here
// (layers/layernorm.h, "final_norm.weight" / "final_norm.bias"; x-transformers
// 2.x stores LayerNorm gains with unit_offset, i.e. weight - 1).
//
// Backward: the gradient of `outer` is one tensor d_outer (the outer stream is
// a plain sum), so every branch output l and x_0 receive s * d_outer on top
// of their post-norm-stream gradient (AddOuterGradient), and y's gradient
// passes unchanged to x_L.
// Gradient convention: d_outer written (=); AddOuterGradient adds (+=) into an
// existing activation gradient; final-norm parameter gradients accumulate (+=).
#ifndef FTX_LAYERS_RESI_DUAL_H_
#define FTX_LAYERS_RESI_DUAL_H_

#include <cstdint>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor_view.h"
#include "layers/layernorm.h"

namespace ftx {

struct ResiDualConfig {
  int64_t dim = 0;     // C
  float scale = 1.0f;  // resi_dual_scale, in (0, 1]
};

class ResiDual {
 public:
  // InvalidArgument for dim < 1 or scale outside (0, 1].
  static absl::StatusOr<ResiDual> Create(const ResiDualConfig& config);

  const ResiDualConfig& config() const { return config_; }
  const LayerNormLayer& final_norm() const { return final_norm_; }

  // outer = s * x. x, outer: [B, T, C].
  absl::Status Begin(const Context& ctx, TensorView<const float> x,
                     TensorView<float> outer) const;

  // outer += s * branch_out. branch_out, outer: [B, T, C].
  absl::Status Accumulate(const Context& ctx,
                          TensorView<const float> branch_out,
                          TensorView<float> outer) const;

  // y = x_last + LayerNorm(outer). weight, bias: [C]; x_last, outer, y:
  // [B, T, C]; y must not overlap x_last or outer. cache: for
  // FinishBackward, or null.
  absl::Status Finish(const Context& ctx, TensorView<const float> weight,
                      TensorView<const float> bias,
                      TensorView<const float> x_last,
                      TensorView<const float> outer, TensorView<float> y,
                      LayerNormCache* cache) const;

  // d_outer = LayerNorm backward of d_y (=); d_weight, d_bias (+=). The
  // gradient of x_last is d_y itself.
  absl::Status FinishBackward(
      const Context& ctx, TensorView<const float> weight,
      const LayerNormCache& cache, TensorView<const float> outer,
      TensorView<const float> d_y, TensorView<float> d_outer,
      TensorView<float> d_weight, TensorView<float> d_bias) const;

  // d_target += s * d_outer: for every branch output and for x_0.
  absl::Status AddOuterGradient(const Context& ctx,
                                TensorView<const float> d_outer,
                                TensorView<float> d_target) const;

 private:
  ResiDual(const ResiDualConfig& config, LayerNormLayer final_norm)
      : config_(config), final_norm_(std::move(final_norm)) {}

  absl::Status CheckPair(const Context& ctx, absl::string_view a_name,
                         TensorView<const float> a, absl::string_view b_name,
                         TensorView<const float> b) const;

  ResiDualConfig config_;
  LayerNormLayer final_norm_;
};

}  // namespace ftx

#endif  // FTX_LAYERS_RESI_DUAL_H_
