// Highway CPU kernel of kernels/adamw: dispatched once per call, parallel over
// fixed chunks of every row with the Context thread pool (the chunks, and so
// the results, do not depend on the thread count).
#include "kernels/adamw/adamw_cpu.h"

#include <algorithm>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/adamw/adamw_cpu.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "kernels/adamw/adamw-inl.h"

HWY_BEFORE_NAMESPACE();
namespace ftx {
namespace HWY_NAMESPACE {
namespace {

// Elements per task: a multiple of every vector length, large enough to
// amortise scheduling.
constexpr int64_t kChunk = 8192;

}  // namespace

void AdamWStepImpl(const Context& ctx, MatrixView<float> params,
                   MatrixView<const float> grads,
                   MatrixView<float> first_moment,
                   MatrixView<float> second_moment,
                   const cpu::AdamWCoefficients& coefficients) {
  const int64_t chunks_per_row = (params.cols + kChunk - 1) / kChunk;
  ctx.pool().ParallelFor(
      params.rows * chunks_per_row,
      [&](int64_t begin, int64_t end) {
        for (int64_t task = begin; task < end; ++task) {
          const int64_t r = task / chunks_per_row;
          const int64_t c = (task % chunks_per_row) * kChunk;
          const int64_t n = std::min(kChunk, params.cols - c);
          AdamWRow(params.Row(r) + c, grads.Row(r) + c, first_moment.Row(r) + c,
                   second_moment.Row(r) + c, n, coefficients);
        }
      },
      1 + kChunk / (params.cols + 1));
}

}  // namespace HWY_NAMESPACE
}  // namespace ftx
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace ftx::cpu {

HWY_EXPORT(AdamWStepImpl);

void AdamWStep(const Context& ctx, MatrixView<float> params,
               MatrixView<const float> grads, MatrixView<float> first_moment,
               MatrixView<float> second_moment,
               const AdamWCoefficients& coefficients) {
  HWY_DYNAMIC_DISPATCH(AdamWStepImpl)
  (ctx, params, grads, first_moment, second_moment, coefficients);
}

}  // namespace ftx::cpu
#endif  // HWY_ONCE
