// Cross-entropy of logits against integer targets, fused with log-softmax, its
// backward pass, and the mean over the rows that are not ignored: the training
// loss of a language model.
//
//   lse[r]  = max(z[r, :]) + log(sum_c exp(z[r, c] - max(z[r, :])))
//   loss[r] = (1 - eps) (lse[r] - z[r, t_r]) + eps (lse[r] - mean_c z[r, c])
//   d_z[r, c] = d_loss[r] (softmax(z[r, :])[c] - (1 - eps) [c == t_r] - eps/V)
//
// Matches torch.nn.functional.cross_entropy(z, t, reduction="none",
// ignore_index=ignore_index, label_smoothing=eps) and its gradient, stable for
// logits of any magnitude (the row maximum is subtracted). A row whose target
// is ignore_index has loss 0 and a zero gradient; any other target outside
// [0, V) is InvalidArgument naming the row and the value. With
// MeanLoss the pair reproduces reduction="mean" (torch divides the smoothing
// term by the same count of rows that are not ignored).
//
// Logits are read as rows of their last axis: logits [..., V] with R rows
// (leading axes must collapse to one row stride; the last axis must have unit
// stride). targets, losses and d_losses are contiguous with R elements (any
// shape, e.g. [B, T] for logits [B, T, V]).
//
// On CUDA the targets are copied to the host to be validated, so the forward
// and backward calls wait for the context's stream.
//
// Gradient convention (all of ftx): activation gradients are written (=),
// parameter gradients are accumulated (+=). Cross-entropy has no parameters.
//
// Example (a [B, T, V] logits tensor and [B, T] next-token targets):
//   FTX_RETURN_IF_ERROR(CrossEntropyForward(ctx, logits, targets, losses, {}));
//   FTX_RETURN_IF_ERROR(MeanLoss(ctx, losses, targets, mean, d_losses));
//   FTX_RETURN_IF_ERROR(
//       CrossEntropyBackward(ctx, logits, targets, d_losses, d_logits));
#ifndef FTX_KERNELS_CROSS_ENTROPY_CROSS_ENTROPY_H_
#define FTX_KERNELS_CROSS_ENTROPY_CROSS_ENTROPY_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor_view.h"

namespace ftx {

struct CrossEntropyOptions {
  // Rows whose target equals this contribute no loss and no gradient.
  int32_t ignore_index = -100;
  // eps in [0, 1]: the target distribution is (1 - eps) * one_hot + eps / V.
  float label_smoothing = 0.0f;
};

// losses[r] = cross-entropy of logits[r, :] against targets[r] (0 for ignored
// rows). logits: [..., V] with R rows; targets, losses: R elements.
// probabilities_or_empty: a default-constructed or zero-element view, or the
// shape of logits to receive softmax(logits) row-wise (for every row, ignored
// or not); it may be logits itself (in place).
absl::Status CrossEntropyForward(const Context& ctx,
                                 TensorView<const float> logits,
                                 TensorView<const int32_t> targets,
                                 TensorView<float> losses,
                                 TensorView<float> probabilities_or_empty,
                                 const CrossEntropyOptions& options = {});

// d_logits[r, :] = d_losses[r] * (softmax(logits[r, :]) - (1 - eps) *
// one_hot(targets[r]) - eps / V); zeros for ignored rows. d_logits (the shape
// of logits) is written (=) and may be logits itself (in place).
absl::Status CrossEntropyBackward(const Context& ctx,
                                  TensorView<const float> logits,
                                  TensorView<const int32_t> targets,
                                  TensorView<const float> d_losses,
                                  TensorView<float> d_logits,
                                  const CrossEntropyOptions& options = {});

// mean[0] = the mean of losses over the rows whose target is not
// options.ignore_index, and d_losses[r] = 1 / count for those rows, 0 for the
// others: the gradient of that mean, ready for CrossEntropyBackward. losses,
// targets, d_losses: R elements; mean: [1]. With every row ignored the mean is
// 0 and d_losses is all 0 (torch gives NaN). The sum runs in double in row
// order on CPU (deterministic).
absl::Status MeanLoss(const Context& ctx, TensorView<const float> losses,
                      TensorView<const int32_t> targets, TensorView<float> mean,
                      TensorView<float> d_losses,
                      const CrossEntropyOptions& options = {});

}  // namespace ftx

#endif  // FTX_KERNELS_CROSS_ENTROPY_CROSS_ENTROPY_H_
