// Elementwise ops on float tensors: add, multiply, scale, axpy and bias add,
// with their backward passes. Each view is read as rows of its last axis
// (leading axes must collapse to one row stride; the last axis must have unit
// stride). Inputs and outputs may alias exactly (in place) but must not
// partially overlap.
//
// Gradient convention (all of ftx): activation gradients are written (=),
// parameter gradients (bias, alpha) are accumulated (+=).
//
// Example:
//   FTX_RETURN_IF_ERROR(AddBias(ctx, x, bias, y));   // y[r, c] = x[r, c] +
//   bias[c]
#ifndef FTX_KERNELS_ELEMENTWISE_ELEMENTWISE_H_
#define FTX_KERNELS_ELEMENTWISE_ELEMENTWISE_H_

#include "absl/status/status.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor_view.h"

namespace ftx {

// out = x + y; all three of one shape.
absl::Status Add(const Context& ctx, TensorView<const float> x,
                 TensorView<const float> y, TensorView<float> out);

// out = x * y; all three of one shape.
absl::Status Mul(const Context& ctx, TensorView<const float> x,
                 TensorView<const float> y, TensorView<float> out);

// d_x = d_out * y; d_y = d_out * x.
absl::Status MulBackward(const Context& ctx, TensorView<const float> x,
                         TensorView<const float> y,
                         TensorView<const float> d_out, TensorView<float> d_x,
                         TensorView<float> d_y);

// out = alpha * x.
absl::Status Scale(const Context& ctx, float alpha, TensorView<const float> x,
                   TensorView<float> out);

// d_x = alpha * d_out; d_alpha[0] += sum(x * d_out). d_alpha: [1].
absl::Status ScaleBackward(const Context& ctx, float alpha,
                           TensorView<const float> x,
                           TensorView<const float> d_out, TensorView<float> d_x,
                           TensorView<float> d_alpha);

// y += alpha * x.
absl::Status Axpy(const Context& ctx, float alpha, TensorView<const float> x,
                  TensorView<float> y);

// out[r, c] = x[r, c] + bias[c]. x, out: [..., C]; bias: [C].
absl::Status AddBias(const Context& ctx, TensorView<const float> x,
                     TensorView<const float> bias, TensorView<float> out);

// d_bias[c] += sum over rows of d_out[r, c]. d_out: [..., C]; d_bias: [C].
absl::Status AddBiasBackward(const Context& ctx, TensorView<const float> d_out,
                             TensorView<float> d_bias);

}  // namespace ftx

#endif  // FTX_KERNELS_ELEMENTWISE_ELEMENTWISE_H_
