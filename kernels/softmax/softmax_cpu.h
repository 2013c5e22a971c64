// CPU (Highway, dynamic dispatch) entry points of kernels/softmax. Arguments
// are validated by the façade in softmax.h; these only compute.
#ifndef FTX_KERNELS_SOFTMAX_SOFTMAX_CPU_H_
#define FTX_KERNELS_SOFTMAX_SOFTMAX_CPU_H_

#include "kernels/base/context.h"
#include "kernels/base/tensor_view.h"

namespace ftx::cpu {

// Same values as cuda::SoftmaxKind.
enum class SoftmaxKind { kSoftmax = 0, kLogSoftmax = 1 };

// y[r, :] = (log-)softmax(scale * x[r, :] + mask[r % mask.rows, :]); a mask
// with null data means none. y may be x.
void SoftmaxForward(const Context& ctx, SoftmaxKind kind,
                    MatrixView<const float> x, float scale,
                    MatrixView<const float> mask, MatrixView<float> y);

// Softmax:    d_x = scale * y * (d_y - sum(d_y * y)) row-wise.
// LogSoftmax: d_x = scale * (d_y - exp(y) * sum(d_y)) row-wise.
// d_x may alias d_y or y.
void SoftmaxBackward(const Context& ctx, SoftmaxKind kind,
                     MatrixView<const float> y, MatrixView<const float> d_y,
                     float scale, MatrixView<float> d_x);

}  // namespace ftx::cpu

#endif  // FTX_KERNELS_SOFTMAX_SOFTMAX_CPU_H_
