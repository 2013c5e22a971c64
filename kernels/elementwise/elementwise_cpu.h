// CPU (Highway, dynamic dispatch) entry points of kernels/elementwise.
// Arguments are validated by the façade in elementwise.h; these only compute.
#ifndef FTX_KERNELS_ELEMENTWISE_ELEMENTWISE_CPU_H_
#define FTX_KERNELS_ELEMENTWISE_ELEMENTWISE_CPU_H_

#include "kernels/base/context.h"
#include "kernels/base/tensor_view.h"

namespace ftx::cpu {

// Same values as cuda::ElementwiseBinaryOp.
enum class BinaryOp { kAdd = 0, kMul = 1 };

void Binary(const Context& ctx, BinaryOp op, MatrixView<const float> x,
            MatrixView<const float> y, MatrixView<float> out);
void MulBackward(const Context& ctx, MatrixView<const float> x,
                 MatrixView<const float> y, MatrixView<const float> d_out,
                 MatrixView<float> d_x, MatrixView<float> d_y);
// out = alpha * x + beta * out (beta = 0 never reads out).
void ScaleAdd(const Context& ctx, float alpha, MatrixView<const float> x,
              float beta, MatrixView<float> out);
// Returns sum(x * d_out) and writes d_x = alpha * d_out.
double ScaleBackward(const Context& ctx, float alpha, MatrixView<const float> x,
                     MatrixView<const float> d_out, MatrixView<float> d_x);
void AddBias(const Context& ctx, MatrixView<const float> x, const float* bias,
             MatrixView<float> out);
void AddBiasBackward(const Context& ctx, MatrixView<const float> d_out,
                     float* d_bias);

}  // namespace ftx::cpu

#endif  // FTX_KERNELS_ELEMENTWISE_ELEMENTWISE_CPU_H_
