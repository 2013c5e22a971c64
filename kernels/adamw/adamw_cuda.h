// CUDA launcher of kernels/adamw. POD arguments only (no CUDA headers), so the
// façade includes this without nvcc; returns a cudaError_t as int (0 =
// success). Matrices are device pointers with rows `stride` elements apart;
// the last axis is contiguous.
#ifndef FTX_KERNELS_ADAMW_ADAMW_CUDA_H_
#define FTX_KERNELS_ADAMW_ADAMW_CUDA_H_

#include <cstdint>

namespace ftx::cuda {

// The per-step scalars of AdamW (computed on the host).
struct AdamWScalars {
  float decay_factor;  // 1 - lr * weight_decay
  float one_minus_beta1;
  float beta2, one_minus_beta2;
  float step_size;              // lr / (1 - beta1^t)
  float bias_correction2_sqrt;  // sqrt(1 - beta2^t)
  float eps;
};

// Elementwise over [rows, cols]:
//   p = p * decay_factor; m = m + (1 - beta1) (g - m);
//   v = beta2 v + (1 - beta2) g^2;
//   p = p - step_size * m / (sqrt(v) / bias_correction2_sqrt + eps).
int LaunchAdamWStep(int64_t rows, int64_t cols, float* params,
                    int64_t params_stride, const float* grads,
                    int64_t grads_stride, float* first_moment,
                    int64_t first_moment_stride, float* second_moment,
                    int64_t second_moment_stride, AdamWScalars scalars,
                    void* stream);

}  // namespace ftx::cuda

#endif  // FTX_KERNELS_ADAMW_ADAMW_CUDA_H_
