// Matrix multiplication (SGEMM) and its backward, batched, with transposes,
// alpha/beta and strided rows:
//   c[i] = alpha * op(a[i]) @ op(b[i]) + beta * c[i],  op = identity or ^T,
// matching torch.matmul / torch.baddbmm (and BLAS sgemm for alpha, beta and
// the transposes). CPU: packed, cache-blocked Highway SGEMM; CUDA: cuBLAS
// (cublasSgemmStridedBatched).
//
// Shapes (as stored; M, N, K of the product op(a) @ op(b)):
//   a: [M, K] or [Batch, M, K]; [K, M] / [Batch, K, M] when transpose_a,
//   b: [K, N] or [Batch, K, N]; [N, K] / [Batch, N, K] when transpose_b,
//   c: [M, N], or [Batch, M, N] when a or b has a batch.
// A rank-2 a or b is shared by every batch item of the other (broadcast), e.g.
// a linear layer: x [B, T, C] times a weight w [C_out, C] with transpose_b
// gives y [B, T, C_out]. Rows may be strided (row stride >= columns) and the
// batch stride is free; the last axis must have unit stride. beta == 0 never
// reads c (NaN or garbage there is ignored). Outputs must not overlap inputs.
//
// Example:
//   FTX_RETURN_IF_ERROR(MatMul(ctx, x, w, y, {.transpose_b = true}));
#ifndef FTX_KERNELS_MATMUL_MATMUL_H_
#define FTX_KERNELS_MATMUL_MATMUL_H_

#include "absl/status/status.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor_view.h"

namespace ftx {

struct MatMulOptions {
  bool transpose_a = false;
  bool transpose_b = false;
  float alpha = 1.0f;
  float beta = 0.0f;
};

// c = alpha * op(a) @ op(b) + beta * c, batched and broadcast as above.
absl::Status MatMul(const Context& ctx, TensorView<const float> a,
                    TensorView<const float> b, TensorView<float> c,
                    const MatMulOptions& options = {});

struct MatMulGradOptions {
  bool accumulate_a = false;  // d_a += ... instead of d_a = ...
  bool accumulate_b = false;  // d_b += ... instead of d_b = ...
};

// Backward of c = alpha * op(a) @ op(b) (options.beta plays no part):
//   d_a = alpha * d_c @ op(b)^T,  d_b = alpha * op(a)^T @ d_c,
// each in its operand's stored layout and shape (d_a: a's shape, d_b: b's).
// A rank-2 operand broadcast over the batch gets the sum over the batch.
// Either output may be an empty view (TensorView<float>(), data null and
// shape {}) to skip it. Gradient convention: the gradients are written (=)
// unless grad_options asks to accumulate (+=), as a caller does for parameter
// gradients (e.g. the weight of a linear layer).
absl::Status MatMulBackward(const Context& ctx, TensorView<const float> a,
                            TensorView<const float> b,
                            TensorView<const float> d_c, TensorView<float> d_a,
                            TensorView<float> d_b,
                            const MatMulOptions& options = {},
                            const MatMulGradOptions& grad_options = {});

}  // namespace ftx

#endif  // FTX_KERNELS_MATMUL_MATMUL_H_
