// CUDA twin of rng.h: fills device memory from the same Philox stream.
#ifndef FTX_KERNELS_BASE_RNG_CUDA_H_
#define FTX_KERNELS_BASE_RNG_CUDA_H_

#include <cstdint>

namespace ftx::cuda {

// out[i] = low + (high - low) * U(offset + i) for i < n. Returns a cudaError_t.
int LaunchFillUniform(float* out, int64_t n, float low, float high,
                      uint64_t seed, uint64_t stream, uint64_t offset,
                      void* cuda_stream);

}  // namespace ftx::cuda

#endif  // FTX_KERNELS_BASE_RNG_CUDA_H_
