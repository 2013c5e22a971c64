// CPU (Highway, dynamic dispatch) entry point of kernels/adamw. Arguments are
// validated by the façade in adamw.h; this only computes.
#ifndef FTX_KERNELS_ADAMW_ADAMW_CPU_H_
#define FTX_KERNELS_ADAMW_ADAMW_CPU_H_

#include "kernels/base/context.h"
#include "kernels/base/tensor_view.h"

namespace ftx::cpu {

// The per-step scalars of AdamW, computed once on the host (in double, then
// rounded to float).
struct AdamWCoefficients {
  float decay_factor;  // 1 - lr * weight_decay
  float one_minus_beta1;
  float beta2, one_minus_beta2;
  float step_size;              // lr / (1 - beta1^t)
  float bias_correction2_sqrt;  // sqrt(1 - beta2^t)
  float eps;
};

// Elementwise over rows of one shape:
//   p = p * decay_factor; m = m + (1 - beta1) (g - m);
//   v = beta2 v + (1 - beta2) g^2;
//   p = p - step_size * m / (sqrt(v) / bias_correction2_sqrt + eps).
void AdamWStep(const Context& ctx, MatrixView<float> params,
               MatrixView<const float> grads, MatrixView<float> first_moment,
               MatrixView<float> second_moment,
               const AdamWCoefficients& coefficients);

}  // namespace ftx::cpu

#endif  // FTX_KERNELS_ADAMW_ADAMW_CPU_H_
