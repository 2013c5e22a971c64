// Highway CPU kernels of kernels/layernorm: dispatched once per call, parallel
// over rows with the Context thread pool; the parameter gradients are
// parallel over fixed column blocks instead, each summed over the rows in
// order, so they do not depend on the thread count.
#include "kernels/layernorm/layernorm_cpu.h"

#include <algorithm>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/layernorm/layernorm_cpu.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "kernels/layernorm/layernorm-inl.h"

HWY_BEFORE_NAMESPACE();
namespace ftx {
namespace HWY_NAMESPACE {
namespace {

// Rows per parallel task so that tiny tensors stay on one thread.
int64_t MinRowsPerTask(int64_t cols) { return 1 + 16384 / (cols + 1); }

// Columns per block of the parameter gradients: a multiple of the lane count
// of every fixed-width target (up to AVX-512), so which columns take the vector
// or the scalar path does not depend on how blocks are shared among threads.
constexpr int64_t kColumnBlock = 64;

}  // namespace

void LayerNormForwardImpl(const Context& ctx, MatrixView<const float> x,
                          const float* gamma, const float* beta, float eps,
                          MatrixView<float> y, float* mean, float* rstd) {
  ctx.pool().ParallelFor(
      x.rows,
      [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          LayerNormRow(x.Row(r), gamma, beta, eps, y.Row(r), x.cols,
                       mean != nullptr ? mean + r : nullptr,
                       rstd != nullptr ? rstd + r : nullptr);
        }
      },
      MinRowsPerTask(x.cols));
}

void LayerNormBackwardImpl(const Context& ctx, MatrixView<const float> x,
                           const float* gamma, const float* mean,
                           const float* rstd, MatrixView<const float> d_y,
                           MatrixView<float> d_x, float* d_gamma,
                           float* d_beta) {
  const int64_t rows = x.rows;
  const int64_t cols = x.cols;
  // Parameter gradients first, while d_y and x are intact (d_x may alias
  // either).
  if (d_gamma != nullptr || d_beta != nullptr) {
    const int64_t blocks = (cols + kColumnBlock - 1) / kColumnBlock;
    ctx.pool().ParallelFor(
        blocks,
        [&](int64_t begin_block, int64_t end_block) {
          const int64_t begin = begin_block * kColumnBlock;
          const int64_t end = std::min(end_block * kColumnBlock, cols);
          for (int64_t r = 0; r < rows; ++r) {
            AccumulateParameterGradients(
                x.Row(r) + begin, d_y.Row(r) + begin, mean[r], rstd[r],
                d_gamma != nullptr ? d_gamma + begin : nullptr,
                d_beta != nullptr ? d_beta + begin : nullptr, end - begin);
          }
        },
        1 + 16384 / (kColumnBlock * rows + 1));
  }
  ctx.pool().ParallelFor(
      rows,
      [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          LayerNormBackwardRow(x.Row(r), d_y.Row(r), gamma, mean[r], rstd[r],
                               d_x.Row(r), cols);
        }
      },
      MinRowsPerTask(cols));
}

}  // namespace HWY_NAMESPACE
}  // namespace ftx
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace ftx::cpu {

HWY_EXPORT(LayerNormForwardImpl);
HWY_EXPORT(LayerNormBackwardImpl);

void LayerNormForward(const Context& ctx, MatrixView<const float> x,
                      const float* gamma, const float* beta, float eps,
                      MatrixView<float> y, float* mean, float* rstd) {
  HWY_DYNAMIC_DISPATCH(LayerNormForwardImpl)
  (ctx, x, gamma, beta, eps, y, mean, rstd);
}

void LayerNormBackward(const Context& ctx, MatrixView<const float> x,
                       const float* gamma, const float* mean, const float* rstd,
                       MatrixView<const float> d_y, MatrixView<float> d_x,
                       float* d_gamma, float* d_beta) {
  HWY_DYNAMIC_DISPATCH(LayerNormBackwardImpl)
  (ctx, x, gamma, mean, rstd, d_y, d_x, d_gamma, d_beta);
}

}  // namespace ftx::cpu
#endif  // HWY_ONCE
