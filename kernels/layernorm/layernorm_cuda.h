// CUDA launchers of kernels/layernorm. POD arguments only (no CUDA headers),
// so the façade includes this without nvcc; each returns a cudaError_t as int
// (0 = success). Matrices are device pointers with rows `stride` elements
// apart; the last axis is contiguous. Vectors are contiguous.
#ifndef FTX_KERNELS_LAYERNORM_LAYERNORM_CUDA_H_
#define FTX_KERNELS_LAYERNORM_LAYERNORM_CUDA_H_

#include <cstdint>

namespace ftx::cuda {

// y = (x - mean) * rstd * gamma + beta row-wise. x, y: [rows, cols] with
// cols >= 1; gamma, beta: [cols] or null; mean, rstd: [rows] outputs or null.
// y may be x.
int LaunchLayerNormForward(int64_t rows, int64_t cols, const float* x,
                           int64_t x_stride, const float* gamma,
                           const float* beta, float eps, float* y,
                           int64_t y_stride, float* mean, float* rstd,
                           void* stream);

// d_x written (=); d_gamma, d_beta accumulated (+=) with atomics, either may be
// null; gamma null means no scale. d_x may alias d_y or x.
int LaunchLayerNormBackward(int64_t rows, int64_t cols, const float* x,
                            int64_t x_stride, const float* gamma,
                            const float* mean, const float* rstd,
                            const float* d_y, int64_t d_y_stride, float* d_x,
                            int64_t d_x_stride, float* d_gamma, float* d_beta,
                            void* stream);

}  // namespace ftx::cuda

#endif  // FTX_KERNELS_LAYERNORM_LAYERNORM_CUDA_H_
