// Highway CPU kernels of kernels/softmax: dispatched once per call, parallel
// over rows with the Context thread pool.
#include "kernels/softmax/softmax_cpu.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/softmax/softmax_cpu.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "kernels/softmax/softmax-inl.h"

HWY_BEFORE_NAMESPACE();
namespace ftx {
namespace HWY_NAMESPACE {
namespace {

// Rows per parallel task so that tiny tensors stay on one thread.
int64_t MinRowsPerTask(int64_t cols) { return 1 + 8192 / (cols + 1); }

}  // namespace

void SoftmaxForwardImpl(const Context& ctx, cpu::SoftmaxKind kind,
                        MatrixView<const float> x, float scale,
                        MatrixView<const float> mask, MatrixView<float> y) {
  ctx.pool().ParallelFor(
      y.rows,
      [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          const float* mask_row =
              mask.data != nullptr ? mask.Row(r % mask.rows) : nullptr;
          switch (kind) {
            case cpu::SoftmaxKind::kSoftmax:
              SoftmaxRow(x.Row(r), mask_row, scale, y.Row(r), y.cols);
              break;
            case cpu::SoftmaxKind::kLogSoftmax:
              LogSoftmaxRow(x.Row(r), mask_row, scale, y.Row(r), y.cols);
              break;
          }
        }
      },
      MinRowsPerTask(y.cols));
}

void SoftmaxBackwardImpl(const Context& ctx, cpu::SoftmaxKind kind,
                         MatrixView<const float> y, MatrixView<const float> d_y,
                         float scale, MatrixView<float> d_x) {
  ctx.pool().ParallelFor(
      d_x.rows,
      [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          switch (kind) {
            case cpu::SoftmaxKind::kSoftmax:
              SoftmaxBackwardRow(y.Row(r), d_y.Row(r), scale, d_x.Row(r),
                                 d_x.cols);
              break;
            case cpu::SoftmaxKind::kLogSoftmax:
              LogSoftmaxBackwardRow(y.Row(r), d_y.Row(r), scale, d_x.Row(r),
                                    d_x.cols);
              break;
          }
        }
      },
      MinRowsPerTask(d_x.cols));
}

}  // namespace HWY_NAMESPACE
}  // namespace ftx
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace ftx::cpu {

HWY_EXPORT(SoftmaxForwardImpl);
HWY_EXPORT(SoftmaxBackwardImpl);

void SoftmaxForward(const Context& ctx, SoftmaxKind kind,
                    MatrixView<const float> x, float scale,
                    MatrixView<const float> mask, MatrixView<float> y) {
  HWY_DYNAMIC_DISPATCH(SoftmaxForwardImpl)(ctx, kind, x, scale, mask, y);
}

void SoftmaxBackward(const Context& ctx, SoftmaxKind kind,
                     MatrixView<const float> y, MatrixView<const float> d_y,
                     float scale, MatrixView<float> d_x) {
  HWY_DYNAMIC_DISPATCH(SoftmaxBackwardImpl)(ctx, kind, y, d_y, scale, d_x);
}

}  // namespace ftx::cpu
#endif  // HWY_ONCE
