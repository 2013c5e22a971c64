// CPU (Highway, dynamic dispatch) entry points of kernels/cross_entropy.
// Arguments are validated by the façade in cross_entropy.h (targets included);
// these only compute. Each row is computed by one thread in a fixed order, so
// results do not depend on the thread count.
#ifndef FTX_KERNELS_CROSS_ENTROPY_CROSS_ENTROPY_CPU_H_
#define FTX_KERNELS_CROSS_ENTROPY_CROSS_ENTROPY_CPU_H_

#include <cstdint>

#include "kernels/base/context.h"
#include "kernels/base/tensor_view.h"

namespace ftx::cpu {

// losses[r] = cross-entropy of logits row r against targets[r] (0 where
// targets[r] == ignore_index). probabilities with null data means none;
// otherwise it receives softmax(logits) row-wise (it may be logits).
void CrossEntropyForward(const Context& ctx, MatrixView<const float> logits,
                         const int32_t* targets, int32_t ignore_index,
                         float label_smoothing, float* losses,
                         MatrixView<float> probabilities);

// d_logits[r, :] = d_losses[r] * (softmax(logits[r, :]) - (1 - eps) *
// one_hot(targets[r]) - eps / V); zeros for ignored rows. d_logits may be
// logits.
void CrossEntropyBackward(const Context& ctx, MatrixView<const float> logits,
                          const int32_t* targets, int32_t ignore_index,
                          float label_smoothing, const float* d_losses,
                          MatrixView<float> d_logits);

// *mean = the mean of losses[0, rows) over the rows whose target is not
// ignore_index (0 when there are none); d_losses[r] = 1 / count for those rows
// and 0 for the others. Summed in double in row order.
void MeanLoss(int64_t rows, const float* losses, const int32_t* targets,
              int32_t ignore_index, float* mean, float* d_losses);

}  // namespace ftx::cpu

#endif  // FTX_KERNELS_CROSS_ENTROPY_CROSS_ENTROPY_CPU_H_
