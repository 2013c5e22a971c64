// CUDA kernel of kernels/adamw: one thread per element (grid-stride), IEEE
// sqrt and division as nvcc compiles them by default.
#include <cuda_runtime.h>

#include <algorithm>

#include "kernels/adamw/adamw_cuda.h"

namespace ftx::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 1 << 16;

__global__ void AdamWStepKernel(int64_t rows, int64_t cols, float* params,
                                int64_t params_stride, const float* grads,
                                int64_t grads_stride, float* first_moment,
                                int64_t first_moment_stride,
                                float* second_moment,
                                int64_t second_moment_stride, AdamWScalars s) {
  const int64_t total = rows * cols;
  for (int64_t index =
           blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       index < total; index += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = index / cols;
    const int64_t c = index - r * cols;
    float* p = params + r * params_stride + c;
    float* m = first_moment + r * first_moment_stride + c;
    float* v = second_moment + r * second_moment_stride + c;
    const float g = grads[r * grads_stride + c];
    const float decayed = *p * s.decay_factor;
    const float first = *m + s.one_minus_beta1 * (g - *m);
    const float second = s.beta2 * *v + s.one_minus_beta2 * (g * g);
    const float denominator = sqrtf(second) / s.bias_correction2_sqrt + s.eps;
    *m = first;
    *v = second;
    *p = decayed - s.step_size * (first / denominator);
  }
}

}  // namespace

int LaunchAdamWStep(int64_t rows, int64_t cols, float* params,
                    int64_t params_stride, const float* grads,
                    int64_t grads_stride, float* first_moment,
                    int64_t first_moment_stride, float* second_moment,
                    int64_t second_moment_stride, AdamWScalars scalars,
                    void* stream) {
  const int64_t total = rows * cols;
  if (total == 0) return cudaSuccess;
  const unsigned blocks = static_cast<unsigned>(
      std::min((total + kThreads - 1) / kThreads, kMaxBlocks));
  AdamWStepKernel<<<blocks, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      rows, cols, params, params_stride, grads, grads_stride, first_moment,
      first_moment_stride, second_moment, second_moment_stride, scalars);
  return cudaGetLastError();
}

}  // namespace ftx::cuda
