// CPU (Highway, dynamic dispatch) entry points of kernels/layernorm. Arguments
// are validated by the façade in layernorm.h; these only compute.
#ifndef FTX_KERNELS_LAYERNORM_LAYERNORM_CPU_H_
#define FTX_KERNELS_LAYERNORM_LAYERNORM_CPU_H_

#include "kernels/base/context.h"
#include "kernels/base/tensor_view.h"

namespace ftx::cpu {

// y = (x - mean) * rstd * gamma + beta row-wise. x, y: [R, C] with C >= 1;
// gamma, beta: [C] or null; mean, rstd: [R] outputs or null. y may be x.
void LayerNormForward(const Context& ctx, MatrixView<const float> x,
                      const float* gamma, const float* beta, float eps,
                      MatrixView<float> y, float* mean, float* rstd);

// d_x written (=); d_gamma, d_beta accumulated (+=), either may be null;
// gamma null means no scale. d_x may alias d_y or x.
void LayerNormBackward(const Context& ctx, MatrixView<const float> x,
                       const float* gamma, const float* mean, const float* rstd,
                       MatrixView<const float> d_y, MatrixView<float> d_x,
                       float* d_gamma, float* d_beta);

}  // namespace ftx::cpu

#endif  // FTX_KERNELS_LAYERNORM_LAYERNORM_CPU_H_
