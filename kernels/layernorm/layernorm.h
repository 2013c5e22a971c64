// LayerNorm (Ba et al. 2016) over the last axis, as torch.nn.LayerNorm with
// biased variance, and its backward pass:
//
//   mean[r] = sum_c x[r, c] / C,  var[r] = sum_c (x[r, c] - mean[r])^2 / C
//   rstd[r] = 1 / sqrt(var[r] + eps)
//   y[r, c] = (x[r, c] - mean[r]) * rstd[r] * gamma[c] + beta[c]
//
// gamma or beta may be absent (a default-constructed or empty view): no scale
// or no shift, as x-transformers' bias-free LayerNorm. The mean and variance
// are computed in two passes around a shift taken from the row, with float
// lanes reduced in double, so rows far from zero (x = 1e4 + small noise) keep
// full precision.
//
// Each view of [..., C] is read as rows of its last axis (leading axes must
// collapse to one row stride; the last axis must have unit stride); R is the
// number of rows. Vectors ([C] or [R]) must be contiguous.
//
// Gradient convention (all of ftx): activation gradients are written (=),
// parameter gradients are accumulated (+=). The accumulated d_gamma and d_beta
// do not depend on the thread count.
//
// Example:
//   FTX_RETURN_IF_ERROR(LayerNorm(ctx, x, gamma, beta, y, mean, rstd));
//   ...
//   FTX_RETURN_IF_ERROR(LayerNormBackward(ctx, x, gamma, mean, rstd, d_y, d_x,
//                                         d_gamma, d_beta));
#ifndef FTX_KERNELS_LAYERNORM_LAYERNORM_H_
#define FTX_KERNELS_LAYERNORM_LAYERNORM_H_

#include "absl/status/status.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor_view.h"

namespace ftx {

struct LayerNormOptions {
  // Added to the variance; must be >= 0 (torch.nn.LayerNorm's default).
  float eps = 1e-5f;
};

// x, y: [..., C] with C >= 1; gamma, beta: [C] or absent; mean, rstd: [R]
// outputs saved for the backward, or absent at inference. y may be x (in
// place).
absl::Status LayerNorm(const Context& ctx, TensorView<const float> x,
                       TensorView<const float> gamma,
                       TensorView<const float> beta, TensorView<float> y,
                       TensorView<float> mean, TensorView<float> rstd,
                       const LayerNormOptions& options = {});

// With x_hat = (x - mean) * rstd and g = d_y * gamma:
//   d_x = rstd * (g - mean_c(g) - x_hat * mean_c(g * x_hat))   written (=)
//   d_gamma[c] += sum_r d_y[r, c] * x_hat[r, c]                 accumulated
//   d_beta[c] += sum_r d_y[r, c]                                accumulated
// x, d_y, d_x: [..., C]; gamma: [C] or absent (no scale); mean, rstd: [R] from
// LayerNorm; d_gamma, d_beta: [C], or absent to skip. d_x may alias d_y or x.
absl::Status LayerNormBackward(const Context& ctx, TensorView<const float> x,
                               TensorView<const float> gamma,
                               TensorView<const float> mean,
                               TensorView<const float> rstd,
                               TensorView<const float> d_y,
                               TensorView<float> d_x, TensorView<float> d_gamma,
                               TensorView<float> d_beta);

}  // namespace ftx

#endif  // FTX_KERNELS_LAYERNORM_LAYERNORM_H_
