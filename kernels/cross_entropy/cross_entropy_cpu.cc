// Highway CPU kernels of kernels/cross_entropy: dispatched once per call,
// parallel over rows with the Context thread pool.
#include "kernels/cross_entropy/cross_entropy_cpu.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cross_entropy/cross_entropy_cpu.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "kernels/cross_entropy/cross_entropy-inl.h"

HWY_BEFORE_NAMESPACE();
namespace ftx {
namespace HWY_NAMESPACE {
namespace {

// Rows per parallel task so that tiny tensors stay on one thread.
int64_t MinRowsPerTask(int64_t cols) { return 1 + 8192 / (cols + 1); }

}  // namespace

void CrossEntropyForwardImpl(const Context& ctx, MatrixView<const float> logits,
                             const int32_t* targets, int32_t ignore_index,
                             float label_smoothing, float* losses,
                             MatrixView<float> probabilities) {
  ctx.pool().ParallelFor(
      logits.rows,
      [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          float* probabilities_row =
              probabilities.data != nullptr ? probabilities.Row(r) : nullptr;
          losses[r] =
              CrossEntropyRow(logits.Row(r), targets[r], ignore_index,
                              label_smoothing, probabilities_row, logits.cols);
        }
      },
      MinRowsPerTask(logits.cols));
}

void CrossEntropyBackwardImpl(const Context& ctx,
                              MatrixView<const float> logits,
                              const int32_t* targets, int32_t ignore_index,
                              float label_smoothing, const float* d_losses,
                              MatrixView<float> d_logits) {
  ctx.pool().ParallelFor(
      logits.rows,
      [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          CrossEntropyBackwardRow(logits.Row(r), targets[r], ignore_index,
                                  label_smoothing, d_losses[r], d_logits.Row(r),
                                  logits.cols);
        }
      },
      MinRowsPerTask(logits.cols));
}

}  // namespace HWY_NAMESPACE
}  // namespace ftx
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace ftx::cpu {

HWY_EXPORT(CrossEntropyForwardImpl);
HWY_EXPORT(CrossEntropyBackwardImpl);

void CrossEntropyForward(const Context& ctx, MatrixView<const float> logits,
                         const int32_t* targets, int32_t ignore_index,
                         float label_smoothing, float* losses,
                         MatrixView<float> probabilities) {
  HWY_DYNAMIC_DISPATCH(CrossEntropyForwardImpl)
  (ctx, logits, targets, ignore_index, label_smoothing, losses, probabilities);
}

void CrossEntropyBackward(const Context& ctx, MatrixView<const float> logits,
                          const int32_t* targets, int32_t ignore_index,
                          float label_smoothing, const float* d_losses,
                          MatrixView<float> d_logits) {
  HWY_DYNAMIC_DISPATCH(CrossEntropyBackwardImpl)
  (ctx, logits, targets, ignore_index, label_smoothing, d_losses, d_logits);
}

void MeanLoss(int64_t rows, const float* losses, const int32_t* targets,
              int32_t ignore_index, float* mean, float* d_losses) {
  int64_t count = 0;
  double sum = 0.0;
  for (int64_t r = 0; r < rows; ++r) {
    if (targets[r] == ignore_index) continue;
    ++count;
    sum += losses[r];
  }
  const float weight =
      count > 0 ? static_cast<float>(1.0 / static_cast<double>(count)) : 0.0f;
  for (int64_t r = 0; r < rows; ++r) {
    d_losses[r] = targets[r] == ignore_index ? 0.0f : weight;
  }
  *mean =
      count > 0 ? static_cast<float>(sum / static_cast<double>(count)) : 0.0f;
}

}  // namespace ftx::cpu
#endif  // HWY_ONCE
