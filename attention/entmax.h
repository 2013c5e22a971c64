// entmax-1.5 (Peters, Niculae and Martins 2019, "Sparse Sequence-to-Sequence
// Models"), a sparse alternative to softmax over the last axis, and the switch
// between the two normalisers that attention mechanisms offer:
//
//   z = scale * x + mask[r % mask_rows]
//   entmax15(z) = [z/2 - tau]_+^2  with tau such that sum = 1,
//
// computed exactly by the sort-based algorithm of the `entmax` package's
// entmax15 (Entmax15Function: subtract the row max, halve, sort descending,
// take the threshold of the largest support k with tau_k <= z_(k)), the
// normaliser of x-transformers <= 1.0.3 with attn_use_entmax15. Backward is its
// Jacobian:
//
//   d_z = g * d_y - g * sum(g * d_y) / sum(g),   g = sqrt(y),
//
// and d_x = scale * d_z. -inf entries (masked keys) get 0; a row of -inf gives
// zeros (the package would give NaN); a row holding NaN or +inf gives NaN.
// Rows accumulate in double. CPU only (UnimplementedError for a CUDA context).
//
// Each view is read as rows of its last axis (leading axes must collapse to one
// row stride; the last axis must have unit stride). Gradient convention:
// activation gradients are written (=); there are no parameters.
//
// Example (attention scores [H, N, L, S], in place):
//   FTX_RETURN_IF_ERROR(Entmax15(ctx, scores, scores, {.scale = t}));
#ifndef FTX_ATTENTION_ENTMAX_H_
#define FTX_ATTENTION_ENTMAX_H_

#include "absl/status/status.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor_view.h"

namespace ftx {

struct EntmaxOptions {
  // Logits are scale * x before the mask (attention's softmax_temp).
  float scale = 1.0f;
  // Optional additive mask [mask_rows, S]; row r of x uses row r % mask_rows
  // (mask_rows must divide the row count). -inf excludes an entry.
  TensorView<const float> additive_mask;
};

// y[r, :] = entmax15(scale * x[r, :] + mask[r % mask_rows, :]); x, y: [..., S].
// y may be x (in place).
absl::Status Entmax15(const Context& ctx, TensorView<const float> x,
                      TensorView<float> y, const EntmaxOptions& options = {});

// d_x = scale * (g * d_y - g * sum(g * d_y) / sum(g)), g = sqrt(y), row-wise,
// where y is Entmax15's output (y, d_y, d_x: one shape). d_x is written (=) and
// may alias d_y or y. Only options.scale is used.
absl::Status Entmax15Backward(const Context& ctx, TensorView<const float> y,
                              TensorView<const float> d_y,
                              TensorView<float> d_x,
                              const EntmaxOptions& options = {});

// The normaliser of attention probabilities.
enum class AttentionNormalizer { kSoftmax, kEntmax15 };

// y = softmax(scale * x) or entmax15(scale * x) row-wise (kernels/softmax or
// Entmax15, no mask); y may be x.
absl::Status Normalize(const Context& ctx, AttentionNormalizer normalizer,
                       TensorView<const float> x, TensorView<float> y,
                       float scale);

// The matching backward: d_x (=) from y and d_y; d_x may alias d_y or y.
absl::Status NormalizeBackward(const Context& ctx,
                               AttentionNormalizer normalizer,
                               TensorView<const float> y,
                               TensorView<const float> d_y,
                               TensorView<float> d_x, float scale);

}  // namespace ftx

#endif  // FTX_ATTENTION_ENTMAX_H_
