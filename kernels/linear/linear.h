// Affine maps as torch.nn.Linear: y = x W^T + b, with W [out, in] (PyTorch's weight
// layout, so state_dict tensors load unchanged) and an optional bias [out].
//
// Gradient convention: d_x is written (=) unless `accumulate_input_grad` is set (used
// when several projections read the same input); d_weight and d_bias accumulate (+=).
//
// Example:
//   FTX_RETURN_IF_ERROR(LinearForward(ctx, x, weight, bias, y));  // x [B, T, in]
#ifndef FTX_KERNELS_LINEAR_LINEAR_H_
#define FTX_KERNELS_LINEAR_LINEAR_H_

#include "absl/status/status.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor_view.h"

namespace ftx {

// x: [..., in], weight: [out, in], bias: [out] or empty, y: [..., out].
absl::Status LinearForward(const Context& ctx, TensorView<const float> x,
                           TensorView<const float> weight, TensorView<const float> bias,
                           TensorView<float> y);

struct LinearGradOptions {
  bool accumulate_input_grad = false;
};

// d_x: [..., in] (may be empty to skip); d_weight: [out, in] (+=); d_bias: [out] or
// empty (+=).
absl::Status LinearBackward(const Context& ctx, TensorView<const float> x,
                            TensorView<const float> weight, TensorView<const float> d_y,
                            TensorView<float> d_x, TensorView<float> d_weight,
                            TensorView<float> d_bias,
                            const LinearGradOptions& options = {});

}  // namespace ftx

#endif  // FTX_KERNELS_LINEAR_LINEAR_H_
