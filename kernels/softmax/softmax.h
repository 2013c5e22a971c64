// Softmax and log-softmax over the last axis of scaled logits with an optional
// additive mask, and their backward passes; the normaliser of softmax
// attention (fast-transformers' FullAttention: softmax(softmax_temp * QK^T +
// attn_mask)) and of cross-entropy.
//
//   z[r, :] = scale * x[r, :] + mask[r % mask_rows, :]
//   Softmax:    y[r, :] = exp(z[r, :] - max(z[r, :])) / sum(exp(...))
//   LogSoftmax: y[r, :] = z[r, :] - max(z[r, :]) - log(sum(exp(...)))
//
// Matches torch.softmax / torch.log_softmax of z over dim=-1, numerically
// stable for logits of any magnitude (the row maximum is subtracted), except
// that a row whose logits are all -inf (fully masked) gives zeros (Softmax) or
// -inf (LogSoftmax) where PyTorch gives NaN.
//
// Each view is read as rows of its last axis (leading axes must collapse to
// one row stride; the last axis must have unit stride). x: [..., S] with R
// rows; y: the shape of x.
//
// Gradient convention (all of ftx): activation gradients are written (=),
// parameter gradients are accumulated (+=). Softmax has no parameters and the
// mask has no gradient.
//
// Example (attention scores [N, H, L, S] with an [L, S] causal mask):
//   SoftmaxOptions options{.scale = 1 / std::sqrt(E), .additive_mask = mask};
//   FTX_RETURN_IF_ERROR(Softmax(ctx, scores, probabilities, options));
#ifndef FTX_KERNELS_SOFTMAX_SOFTMAX_H_
#define FTX_KERNELS_SOFTMAX_SOFTMAX_H_

#include "absl/status/status.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor_view.h"

namespace ftx {

struct SoftmaxOptions {
  // Logits are scale * x before the mask (attention's softmax_temp).
  float scale = 1.0f;
  // Optional additive mask; a default-constructed or empty view means none.
  // [mask_rows, S] (or any shape whose rows of the last axis are that): row r
  // of x uses mask row r % mask_rows, so an [L, S] mask broadcasts over
  // [N, H, L, S] scores. mask_rows must divide R. -inf entries exclude a key.
  TensorView<const float> additive_mask;
};

// y[r, :] = softmax(scale * x[r, :] + mask[r % mask_rows, :]). y may be x (in
// place).
absl::Status Softmax(const Context& ctx, TensorView<const float> x,
                     TensorView<float> y, const SoftmaxOptions& options = {});

// d_x = scale * y * (d_y - sum(d_y * y)) row-wise, where y is Softmax's output
// (y, d_y, d_x: one shape). d_x is written (=) and may alias d_y or y. Only
// options.scale is used.
absl::Status SoftmaxBackward(const Context& ctx, TensorView<const float> y,
                             TensorView<const float> d_y, TensorView<float> d_x,
                             const SoftmaxOptions& options = {});

// y[r, :] = log_softmax(scale * x[r, :] + mask[r % mask_rows, :]). y may be x
// (in place).
absl::Status LogSoftmax(const Context& ctx, TensorView<const float> x,
                        TensorView<float> y,
                        const SoftmaxOptions& options = {});

// d_x = scale * (d_y - exp(y) * sum(d_y)) row-wise, where y is LogSoftmax's
// output (y, d_y, d_x: one shape). d_x is written (=) and may alias d_y or y.
// Only options.scale is used.
absl::Status LogSoftmaxBackward(const Context& ctx, TensorView<const float> y,
                                TensorView<const float> d_y,
                                TensorView<float> d_x,
                                const SoftmaxOptions& options = {});

}  // namespace ftx

#endif  // FTX_KERNELS_SOFTMAX_SOFTMAX_H_
