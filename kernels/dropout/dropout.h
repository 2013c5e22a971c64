// Inverted dropout (Srivastava et al. 2014) with a counter-based mask: element
// i of a call keeps its value, scaled by 1 / (1 - p), when the Philox uniform
// U(seed, stream, offset + i) >= p, and is zero otherwise. The mask is a pure
// function of (seed, stream, offset + i), so the backward regenerates it
// instead of storing it, and it is the same on any thread count and on CPU and
// GPU.
//
// Backward of y = dropout(x) is d_x = dropout(d_y) with the same (seed, stream,
// offset): call Dropout on the gradient.
//
// Example:
//   FTX_RETURN_IF_ERROR(Dropout(ctx, {.p = 0.1f, .seed = step, .stream =
//   kMyStream},
//                               probabilities, probabilities));
#ifndef FTX_KERNELS_DROPOUT_DROPOUT_H_
#define FTX_KERNELS_DROPOUT_DROPOUT_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor_view.h"

namespace ftx {

struct DropoutOptions {
  float p = 0.0f;  // drop probability, in [0, 1)
  uint64_t seed = 0;
  uint64_t stream =
      0;  // one stream per call site, so masks of different ops differ
  uint64_t offset = 0;  // index of the first element in the stream
};

// y = dropout(x) over contiguous views of one shape (y may be x).
absl::Status Dropout(const Context& ctx, const DropoutOptions& options,
                     TensorView<const float> x, TensorView<float> y);

// The unchecked core of Dropout for code that already validated its buffers:
// out[i] = dropout(in[i]) for i < count, CPU memory, p in [0, 1); out may be
// in.
void DropoutInto(const Context& ctx, const DropoutOptions& options,
                 int64_t count, const float* in, float* out);

// Whether element `index` of the stream is kept (for code that fuses the mask).
bool DropoutKeeps(const DropoutOptions& options, uint64_t index);

}  // namespace ftx

#endif  // FTX_KERNELS_DROPOUT_DROPOUT_H_
