// Seeded random tensors on the CPU from the Philox stream in philox.h. The same
// (seed, stream) gives the same numbers on every thread count and, through the
// CUDA twin in rng_cuda.h, on the GPU: uniforms are bit-identical; normals
// (Box-Muller) agree to float rounding of log/sin/cos.
#ifndef FTX_KERNELS_BASE_RNG_H_
#define FTX_KERNELS_BASE_RNG_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor_view.h"

namespace ftx {

// Element `index` of a standard normal sequence. Elements come in groups of
// four from one Philox block: (0,1) and (2,3) are Box-Muller pairs.
float RandomNormal(uint64_t seed, uint64_t stream, uint64_t index);

struct RandomOptions {
  uint64_t seed = 0;
  uint64_t stream = 0;
  // Index of the first element, so a tensor can continue a sequence.
  uint64_t offset = 0;
};

// out[i] = low + (high - low) * U(offset + i), i in row-major order of `out`.
absl::Status FillUniform(const Context& ctx, TensorView<float> out, float low,
                         float high, const RandomOptions& options);

// out[i] = mean + stddev * N(offset + i).
absl::Status FillNormal(const Context& ctx, TensorView<float> out, float mean,
                        float stddev, const RandomOptions& options);

}  // namespace ftx

#endif  // FTX_KERNELS_BASE_RNG_H_
