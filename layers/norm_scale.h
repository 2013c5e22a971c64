// Shared math of RMSNorm and ScaleNorm (both x-transformers / performer-pytorch):
//   y = x / max(|x|_2 * c, eps) * g
// over the last axis, with c = dim^-0.5 (RMS form) or 1 (plain L2 form), and g either
// one scalar or a [C] vector. Rows are independent; CPU only.
#ifndef FTX_LAYERS_NORM_SCALE_H_
#define FTX_LAYERS_NORM_SCALE_H_

#include "absl/status/status.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor_view.h"

namespace ftx::internal {

struct NormScaleOptions {
  bool divide_by_sqrt_dim = true;  // c = dim^-0.5 when true, 1 otherwise
  float eps = 1e-8f;
};

// x, y: [..., C]; g: [1] (scalar) or [C]. op names the calling layer in errors.
absl::Status NormScaleForward(const char* op, const Context& ctx,
                              const NormScaleOptions& options, TensorView<const float> x,
                              TensorView<const float> g, TensorView<float> y);

// d_x written (=); d_g accumulated (+=), same shape as g.
absl::Status NormScaleBackward(const char* op, const Context& ctx,
                               const NormScaleOptions& options,
                               TensorView<const float> x, TensorView<const float> g,
                               TensorView<const float> d_y, TensorView<float> d_x,
                               TensorView<float> d_g);

}  // namespace ftx::internal

#endif  // FTX_LAYERS_NORM_SCALE_H_
