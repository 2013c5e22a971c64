// A transform applied to projected queries and keys before the inner attention
// (rotary position embedding is one), so it composes with every mechanism.
// Shapes: x [N, T, H, E]; positions of x are offset + 0 .. T-1.
#ifndef FTX_ATTENTION_QK_TRANSFORM_H_
#define FTX_ATTENTION_QK_TRANSFORM_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor_view.h"

namespace ftx {

class QKTransform {
 public:
  virtual ~QKTransform() = default;
  virtual const char* name() const = 0;
  // In place: x <- f(x). Contiguous views.
  virtual absl::Status Forward(const Context& ctx, TensorView<float> x,
                               int64_t position_offset) const = 0;
  // In place: d_x <- J^T d_x for the transform at the same positions.
  virtual absl::Status Backward(const Context& ctx, TensorView<float> d_x,
                                int64_t position_offset) const = 0;
};

}  // namespace ftx

#endif  // FTX_ATTENTION_QK_TRANSFORM_H_
