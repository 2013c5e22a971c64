// Gated linear unit projection (Shazeer 2020, "GLU Variants Improve
// Transformer"): one Linear to twice the width, then one half times the
// activation of the other half.
//   p = x W^T + b                 proj = Linear(dim_in, 2 D), D = dim_out
//   (first, second) = (p[..., :D], p[..., D:])       torch p.chunk(2, dim=-1)
// The reference libraries put the activation on different halves:
//   kSecond  y = first * act(second)   x-transformers GLU:
//            `x, gate = self.proj(x).chunk(2, dim=-1); return x * act(gate)`
//   kFirst   y = act(first) * second   performer-pytorch and
//            linear-attention-transformer FeedForward(glu=True):
//            `x, v = self.w1(x).chunk(2, dim=-1); x = self.act(x) * v`
// With act = gelu this is GEGLU, silu SwiGLU, relu ReGLU, sigmoid the original
// GLU; any ftx::Activation works.
//
// Parameters: "proj.weight" [2 D, dim_in] and "proj.bias" [2 D] (x-transformers
// GLU.proj; performer's FeedForward.w1 is the same tensor), initialised as
// torch.nn.Linear: U(-1/sqrt(dim_in), 1/sqrt(dim_in)) for both. Both reference
// libraries always have the bias; bias = false drops it.
//
// The projection and activation run in kernels/linear and kernels/activation
// (value = first half, gate = second half). For kFirst the halves of each
// projected row are swapped in place before the gated product (and the
// gradient halves swapped back), a CPU loop: kFirst needs a CPU context.
//
// Forward and Backward reuse buffers held by the object (allocated once per
// shape): one call at a time per object.
//
// Gradient convention: d_x is written (=); parameter gradients are accumulated
// (+=).
//
// Example (SwiGLU, x-transformers layout):
//   FTX_ASSIGN_OR_RETURN(GluLayer glu, GluLayer::Create(
//       {.dim_in = C, .dim_out = 4 * C, .activation = Activation::kSilu}));
//   GluCache cache;
//   FTX_RETURN_IF_ERROR(glu.Forward(ctx, params, x, y, &cache));
//   FTX_RETURN_IF_ERROR(glu.Backward(ctx, params, cache, x, d_y, d_x, grads));
#ifndef FTX_LAYERS_GLU_H_
#define FTX_LAYERS_GLU_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "attention/attention.h"
#include "kernels/activation/activation.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor.h"
#include "kernels/base/tensor_view.h"

namespace ftx {

// Which half of the projection goes through the activation.
enum class GluActivatedHalf {
  kSecond,  // x-transformers: first * act(second)
  kFirst,   // performer-pytorch, linear-attention-transformer: act(first) *
            // second
};

struct GluLayerConfig {
  int64_t dim_in = 0;   // C
  int64_t dim_out = 0;  // D; the projection has 2 D outputs
  Activation activation = Activation::kGelu;
  GluActivatedHalf activated_half = GluActivatedHalf::kSecond;
  bool bias = true;
};

// Parameter (T = const float) or gradient / initialisation (T = float) views.
template <typename T>
struct GluTensors {
  TensorView<T> proj_weight;  // [2 D, dim_in]
  TensorView<T> proj_bias;    // [2 D]; an empty view when bias is false
};
using GluParams = GluTensors<const float>;
using GluGrads = GluTensors<float>;

// What Forward keeps for Backward.
struct GluCache {
  // [R, 2 D]: the projection of every row of x, halves ordered (value,
  // activated), i.e. swapped for kFirst.
  Tensor projected;
};

class GluLayer {
 public:
  // InvalidArgument for dim_in or dim_out < 1 or an activation outside the
  // enum.
  static absl::StatusOr<GluLayer> Create(const GluLayerConfig& config);

  const GluLayerConfig& config() const { return config_; }

  // {"proj.weight", [2 D, dim_in]}, then {"proj.bias", [2 D]} when bias.
  std::vector<ParamShape> ParamShapes() const;

  // torch.nn.Linear's initialisation from `seed` (Philox streams 0: weight,
  // 1: bias). CPU views.
  absl::Status InitParams(const Context& ctx, uint64_t seed,
                          const GluTensors<float>& params) const;

  // x: [..., dim_in]; y: [..., D] with the same leading axes. cache may be
  // null at inference.
  absl::Status Forward(const Context& ctx, const GluParams& params,
                       TensorView<const float> x, TensorView<float> y,
                       GluCache* cache);

  // d_y: [..., D]; d_x: [..., dim_in] (=); grads: as params (+=). cache: from
  // Forward on this x.
  absl::Status Backward(const Context& ctx, const GluParams& params,
                        const GluCache& cache, TensorView<const float> x,
                        TensorView<const float> d_y, TensorView<float> d_x,
                        const GluGrads& grads);

  // The two steps on rows with caller-owned buffers (FeedForward's GLU path).
  // x: [R, dim_in]; projected: [R, 2 D] receives the projection in (value,
  // activated) order; y: [R, D]. y must not overlap projected.
  absl::Status ForwardRows(const Context& ctx, const GluParams& params,
                           TensorView<const float> x,
                           TensorView<float> projected,
                           TensorView<float> y) const;

  // projected: [R, 2 D] from ForwardRows on this x; d_y: [R, D];
  // d_projected: [R, 2 D] scratch, which may alias projected exactly (the
  // projection is then overwritten); d_x: [R, dim_in] (=), or an empty view
  // to skip it; grads (+=).
  absl::Status BackwardRows(const Context& ctx, const GluParams& params,
                            TensorView<const float> x,
                            TensorView<const float> projected,
                            TensorView<const float> d_y,
                            TensorView<float> d_projected,
                            TensorView<float> d_x, const GluGrads& grads) const;

 private:
  explicit GluLayer(const GluLayerConfig& config) : config_(config) {}

  GluLayerConfig config_;
  Tensor inference_projected_;  // Forward's buffer when no cache is given
  Tensor d_projected_;          // Backward's scratch
};

}  // namespace ftx

#endif  // FTX_LAYERS_GLU_H_
