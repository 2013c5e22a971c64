// CUDA launcher of kernels/matmul: cuBLAS strided-batched SGEMM on row-major
// matrices. POD arguments only (no CUDA headers), so the façade includes this
// without nvcc; returns a cublasStatus_t as int (0 = success).
#ifndef FTX_KERNELS_MATMUL_MATMUL_CUDA_H_
#define FTX_KERNELS_MATMUL_MATMUL_CUDA_H_

#include <cstdint>

namespace ftx::cuda {

// Row-major matrices in device memory: element (i, row, col) of batch item i
// is at data[i * batch_stride + row * row_stride + col]; batch_stride 0 shares
// one matrix across the batch.
struct ConstGemmMatrix {
  const float* data;
  int64_t row_stride;
  int64_t batch_stride;
};
struct GemmMatrix {
  float* data;
  int64_t row_stride;
  int64_t batch_stride;
};

// c[i] = alpha * op(a[i]) @ op(b[i]) + beta * c[i] for i < batch, where op(a)
// is [m, k] (a stored [k, m] when transpose_a), op(b) is [k, n] (b stored
// [n, k] when transpose_b) and c is [m, n]; beta == 0 never reads c. Runs on
// the stream that `cublas_handle` (a cublasHandle_t) is bound to. Row strides
// must be at least max(1, stored columns).
int LaunchGemm(void* cublas_handle, int64_t batch, int64_t m, int64_t n,
               int64_t k, bool transpose_a, ConstGemmMatrix a, bool transpose_b,
               ConstGemmMatrix b, float alpha, float beta, GemmMatrix c);

// The name of a cublasStatus_t, e.g. "CUBLAS_STATUS_INVALID_VALUE".
const char* CublasStatusName(int status);

}  // namespace ftx::cuda

#endif  // FTX_KERNELS_MATMUL_MATMUL_CUDA_H_
