// NormFormer (Shleifer et al. 2021, "NormFormer: Improved Transformer
// Pretraining with Extra Normalization"): three additions to a pre-norm
// block, as x-transformers offers them (README "Normformer", 0.26.6 to 2.x):
//   1. head scale, x-transformers Attention(head_scale=True) (attn_head_scale):
//        out[n, l, h, :] = gamma_h * attended[n, l, h, :]
//      on the attended values [N, L, H, D] after attention, before the heads
//      are merged (SEMANTICS 6.2 step 18); parameter "head_scale_params"
//      [1, H, 1, 1] initialised to ones. This module.
//   2. post-attention LayerNorm: a LayerNorm(C) on the attention branch
//      output before the residual add. x-transformers has no separate option
//      for it (no `attn_sub_ln` in 0.26.6 or 2.x); its sandwich_norm
//      post-branch norm is that LayerNorm (on every branch). Use
//      layers/layernorm.h on the branch output.
//   3. LayerNorm after the feed-forward activation, ff_post_act_ln: the
//      post_act_ln option of layers/feed_forward.h.
//
// Gradient convention: d_attended written (=); d_gamma accumulated (+=).
// CPU only (a CUDA context is Unimplemented).
#ifndef FTX_LAYERS_NORMFORMER_H_
#define FTX_LAYERS_NORMFORMER_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "attention/attention.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor_view.h"

namespace ftx {

struct HeadScaleConfig {
  int64_t heads = 0;  // H
};

class HeadScale {
 public:
  // InvalidArgument for heads < 1.
  static absl::StatusOr<HeadScale> Create(const HeadScaleConfig& config);

  const HeadScaleConfig& config() const { return config_; }

  // {"head_scale_params", [1, H, 1, 1]}.
  std::vector<ParamShape> ParamShapes() const;

  // gamma = 1. gamma: CPU [1, H, 1, 1].
  absl::Status InitParams(TensorView<float> gamma) const;

  // gamma: [1, H, 1, 1]; attended, out: [N, L, H, D] (out may alias attended).
  absl::Status Forward(const Context& ctx, TensorView<const float> gamma,
                       TensorView<const float> attended,
                       TensorView<float> out) const;

  // d_attended = gamma_h d_out (=, may alias d_out);
  // d_gamma[h] += sum over n, l, d of attended * d_out.
  absl::Status Backward(const Context& ctx, TensorView<const float> gamma,
                        TensorView<const float> attended,
                        TensorView<const float> d_out,
                        TensorView<float> d_attended,
                        TensorView<float> d_gamma) const;

 private:
  explicit HeadScale(const HeadScaleConfig& config) : config_(config) {}

  absl::Status Validate(const Context& ctx, TensorView<const float> gamma,
                        TensorView<const float> attended,
                        TensorView<const float> out) const;

  HeadScaleConfig config_;
};

}  // namespace ftx

#endif  // FTX_LAYERS_NORMFORMER_H_
