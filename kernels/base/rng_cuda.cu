#include "kernels/base/philox.h"
#include "kernels/base/rng_cuda.h"

#include <cuda_runtime.h>

namespace ftx::cuda {
namespace {

__global__ void FillUniformKernel(float* out, int64_t n, float low, float scale,
                                  uint64_t seed, uint64_t stream, uint64_t offset) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = low + scale * RandomUniform(seed, stream, offset + i);
}

}  // namespace

int LaunchFillUniform(float* out, int64_t n, float low, float high, uint64_t seed,
                      uint64_t stream, uint64_t offset, void* cuda_stream) {
  if (n <= 0) return cudaSuccess;
  constexpr int kThreads = 256;
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  FillUniformKernel<<<static_cast<unsigned>(blocks), kThreads, 0,
                      static_cast<cudaStream_t>(cuda_stream)>>>(
      out, n, low, high - low, seed, stream, offset);
  return cudaGetLastError();
}

}  // namespace ftx::cuda
