// One AdamW step (Loshchilov & Hutter 2019, "Decoupled Weight Decay
// Regularization") over parameter, gradient and moment tensors of one shape,
// exactly as torch.optim.AdamW (amsgrad=False, maximize=False, the
// single-tensor path) orders it, with t = options.step:
//
//   p = p * (1 - lr * weight_decay)                  (decoupled decay first)
//   m = beta1 * m + (1 - beta1) * g
//   v = beta2 * v + (1 - beta2) * g^2
//   p = p - (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
//
// (= p - lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * p_old)). As in
// torch, the hyper-parameters are doubles: 1 - lr * weight_decay, 1 - beta,
// the bias corrections and the step size are computed in double and rounded
// to float once, and m is updated as torch's exp_avg.lerp_(g, 1 - beta1),
// i.e. m + (1 - beta1) * (g - m). Elementwise, in fixed chunks, so the results
// do not depend on the thread count.
//
// Each view is read as rows of its last axis (leading axes must collapse to
// one row stride; the last axis must have unit stride); a flat arena [P] is
// one row. params, grads, first_moment (m), second_moment (v): one shape;
// params, m and v are updated in place; none may overlap another.
//
// Example (the whole parameter arena of a model, step 1 after zeroed moments):
//   AdamWOptions options{.lr = 3e-4, .step = 1};
//   FTX_RETURN_IF_ERROR(AdamWStep(ctx, params, grads, m, v, options));
#ifndef FTX_KERNELS_ADAMW_ADAMW_H_
#define FTX_KERNELS_ADAMW_ADAMW_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor_view.h"

namespace ftx {

// torch.optim.AdamW's defaults; `step` is the 1-based number of this update
// (torch's state["step"] after its increment).
struct AdamWOptions {
  double lr = 1e-3;            // >= 0
  double beta1 = 0.9;          // in [0, 1)
  double beta2 = 0.999;        // in [0, 1)
  double eps = 1e-8;           // >= 0
  double weight_decay = 0.01;  // >= 0
  int64_t step = 1;            // >= 1
};

// Applies one AdamW update to params, first_moment and second_moment in place.
absl::Status AdamWStep(const Context& ctx, TensorView<float> params,
                       TensorView<const float> grads,
                       TensorView<float> first_moment,
                       TensorView<float> second_moment,
                       const AdamWOptions& options);

}  // namespace ftx

#endif  // FTX_KERNELS_ADAMW_ADAMW_H_
