// CUDA launchers of kernels/cross_entropy. POD arguments only (no CUDA
// headers), so the façade includes this without nvcc; each returns a
// cudaError_t as int (0 = success). Pointers are device memory unless named
// host_*; logits-like matrices have rows `stride` elements apart and a
// contiguous last axis.
#ifndef FTX_KERNELS_CROSS_ENTROPY_CROSS_ENTROPY_CUDA_H_
#define FTX_KERNELS_CROSS_ENTROPY_CROSS_ENTROPY_CUDA_H_

#include <cstdint>

namespace ftx::cuda {

// Copies targets[0, rows) to host_targets and waits for `stream`, so that the
// façade can validate them.
int CopyTargetsToHost(int64_t rows, const int32_t* targets,
                      int32_t* host_targets, void* stream);

// losses[r] = cross-entropy of logits [rows, cols] row r against targets[r]
// (0 where targets[r] == ignore_index); probabilities (null for none)
// receives softmax(logits) row-wise and may be logits. Targets must be valid.
int LaunchCrossEntropyForward(int64_t rows, int64_t cols, const float* logits,
                              int64_t logits_stride, const int32_t* targets,
                              int32_t ignore_index, float label_smoothing,
                              float* losses, float* probabilities,
                              int64_t probabilities_stride, void* stream);

// d_logits[r, :] = d_losses[r] * (softmax(logits[r, :]) - (1 - eps) *
// one_hot(targets[r]) - eps / cols); zeros for ignored rows. d_logits may be
// logits.
int LaunchCrossEntropyBackward(int64_t rows, int64_t cols, const float* logits,
                               int64_t logits_stride, const int32_t* targets,
                               int32_t ignore_index, float label_smoothing,
                               const float* d_losses, float* d_logits,
                               int64_t d_logits_stride, void* stream);

// *mean = the mean of losses[0, rows) over the rows whose target is not
// ignore_index (0 when none); d_losses[r] = 1 / count for those rows, else 0.
// One block, summed in double with a fixed reduction order.
int LaunchMeanLoss(int64_t rows, const float* losses, const int32_t* targets,
                   int32_t ignore_index, float* mean, float* d_losses,
                   void* stream);

}  // namespace ftx::cuda

#endif  // FTX_KERNELS_CROSS_ENTROPY_CROSS_ENTROPY_CUDA_H_
