// CPU (Highway, dynamic dispatch) entry point of kernels/matmul: a packed,
// cache-blocked SGEMM with a register-blocked microkernel. Arguments are
// validated by the façade in matmul.h; this only computes.
#ifndef FTX_KERNELS_MATMUL_MATMUL_CPU_H_
#define FTX_KERNELS_MATMUL_MATMUL_CPU_H_

#include <cstdint>

#include "kernels/base/context.h"

namespace ftx::cpu {

// A batch of row-major matrices: element (i, row, col) of item i is at
// data[i * batch_stride + row * row_stride + col]; batch_stride 0 broadcasts.
template <typename T>
struct GemmMatrix {
  T* data = nullptr;
  int64_t row_stride = 0;
  int64_t batch_stride = 0;
};

// op(a[i]) is [m, k], op(b[i]) is [k, n], c[i] is [m, n], for i < batch.
struct GemmDims {
  int64_t batch = 1;
  int64_t m = 0;
  int64_t n = 0;
  int64_t k = 0;
};

// c[i] = alpha * op(a[i]) @ op(b[i]) + beta * c[i], where op transposes a
// (stored [k, m]) or b (stored [n, k]) when asked. beta == 0 never reads c.
// Each element of c is summed in the same order whatever the thread count.
void Gemm(const Context& ctx, const GemmDims& dims, bool transpose_a,
          GemmMatrix<const float> a, bool transpose_b,
          GemmMatrix<const float> b, float alpha, float beta,
          GemmMatrix<float> c);

}  // namespace ftx::cpu

#endif  // FTX_KERNELS_MATMUL_MATMUL_CPU_H_
