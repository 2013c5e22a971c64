// CUDA launcher of kernels/matmul. cuBLAS is column-major; a row-major [r, c]
// matrix with row stride ld is the column-major [c, r] matrix with leading
// dimension ld, i.e. its transpose. So the row-major product
//   C = op(A) @ op(B)   is computed as   C^T = op(B)^T @ op(A)^T,
// a column-major GEMM of the [n, m] matrix C^T with B first and A second,
// each transposed exactly when the caller asked for it. An empty product
// (k == 0) only scales c, with a small kernel of its own.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <climits>

#include "kernels/matmul/matmul_cuda.h"

namespace ftx::cuda {
namespace {

bool FitsInt(int64_t value) { return value >= 0 && value <= INT_MAX; }

constexpr int kThreads = 256;

// c[i] = beta * c[i] (zeros when beta == 0): the product with k == 0, which
// is not left to cuBLAS.
__global__ void ScaleKernel(int64_t batch, int64_t m, int64_t n, float beta,
                            GemmMatrix c) {
  const int64_t total = batch * m * n;
  for (int64_t index =
           static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       index < total; index += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t col = index % n;
    const int64_t row = (index / n) % m;
    const int64_t item = index / (n * m);
    float* out = c.data + item * c.batch_stride + row * c.row_stride + col;
    *out = beta == 0.0f ? 0.0f : beta * *out;
  }
}

}  // namespace

int LaunchGemm(void* cublas_handle, int64_t batch, int64_t m, int64_t n,
               int64_t k, bool transpose_a, ConstGemmMatrix a, bool transpose_b,
               ConstGemmMatrix b, float alpha, float beta, GemmMatrix c) {
  if (batch == 0 || m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
  if (!FitsInt(batch) || !FitsInt(m) || !FitsInt(n) || !FitsInt(k) ||
      !FitsInt(a.row_stride) || !FitsInt(b.row_stride) ||
      !FitsInt(c.row_stride)) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  cublasHandle_t handle = static_cast<cublasHandle_t>(cublas_handle);
  if (k == 0) {
    cudaStream_t stream = nullptr;
    const cublasStatus_t status = cublasGetStream(handle, &stream);
    if (status != CUBLAS_STATUS_SUCCESS) return status;
    const int64_t blocks = (batch * m * n + kThreads - 1) / kThreads;
    ScaleKernel<<<static_cast<unsigned>(blocks < 65535 ? blocks : 65535),
                  kThreads, 0, stream>>>(batch, m, n, beta, c);
    return cudaGetLastError() == cudaSuccess ? CUBLAS_STATUS_SUCCESS
                                             : CUBLAS_STATUS_EXECUTION_FAILED;
  }
  return cublasSgemmStridedBatched(
      handle, transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N,
      transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N, static_cast<int>(n),
      static_cast<int>(m), static_cast<int>(k), &alpha, b.data,
      static_cast<int>(b.row_stride), b.batch_stride, a.data,
      static_cast<int>(a.row_stride), a.batch_stride, &beta, c.data,
      static_cast<int>(c.row_stride), c.batch_stride, static_cast<int>(batch));
}

const char* CublasStatusName(int status) {
  return cublasGetStatusName(static_cast<cublasStatus_t>(status));
}

}  // namespace ftx::cuda
