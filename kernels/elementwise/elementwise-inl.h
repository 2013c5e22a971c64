// Highway row kernels of kernels/elementwise, compiled once per SIMD target
// through foreach_target.h. Other kernels include this file for the row
// helpers.
#if defined(FTX_KERNELS_ELEMENTWISE_ELEMENTWISE_INL_H_) == \
    defined(HWY_TARGET_TOGGLE)
#ifdef FTX_KERNELS_ELEMENTWISE_ELEMENTWISE_INL_H_
#undef FTX_KERNELS_ELEMENTWISE_ELEMENTWISE_INL_H_
#else
#define FTX_KERNELS_ELEMENTWISE_ELEMENTWISE_INL_H_
#endif

#include <cstdint>

#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace ftx {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// out[i] = vector_op(x[i], y[i]) for i < n; scalar_op finishes the tail.
template <class VectorOp, class ScalarOp>
HWY_INLINE void BinaryRow(const float* x, const float* y, float* out, int64_t n,
                          VectorOp vector_op, ScalarOp scalar_op) {
  const hn::ScalableTag<float> d;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  int64_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    hn::StoreU(vector_op(hn::LoadU(d, x + i), hn::LoadU(d, y + i)), d, out + i);
  }
  for (; i < n; ++i) out[i] = scalar_op(x[i], y[i]);
}

// out[i] = alpha * x[i] + beta * out[i]; beta == 0 never reads out.
HWY_INLINE void ScaleAddRow(float alpha, const float* x, float beta, float* out,
                            int64_t n) {
  const hn::ScalableTag<float> d;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  const auto alpha_v = hn::Set(d, alpha);
  int64_t i = 0;
  if (beta == 0.0f) {
    for (; i + lanes <= n; i += lanes) {
      hn::StoreU(hn::Mul(alpha_v, hn::LoadU(d, x + i)), d, out + i);
    }
    for (; i < n; ++i) out[i] = alpha * x[i];
    return;
  }
  const auto beta_v = hn::Set(d, beta);
  for (; i + lanes <= n; i += lanes) {
    hn::StoreU(hn::MulAdd(alpha_v, hn::LoadU(d, x + i),
                          hn::Mul(beta_v, hn::LoadU(d, out + i))),
               d, out + i);
  }
  for (; i < n; ++i) out[i] = alpha * x[i] + beta * out[i];
}

// sum(x[i] * y[i]) accumulated in float lanes, reduced in double.
HWY_INLINE double DotRow(const float* x, const float* y, int64_t n) {
  const hn::ScalableTag<float> d;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  auto sum0 = hn::Zero(d);
  auto sum1 = hn::Zero(d);
  int64_t i = 0;
  for (; i + 2 * lanes <= n; i += 2 * lanes) {
    sum0 = hn::MulAdd(hn::LoadU(d, x + i), hn::LoadU(d, y + i), sum0);
    sum1 = hn::MulAdd(hn::LoadU(d, x + i + lanes), hn::LoadU(d, y + i + lanes),
                      sum1);
  }
  for (; i + lanes <= n; i += lanes) {
    sum0 = hn::MulAdd(hn::LoadU(d, x + i), hn::LoadU(d, y + i), sum0);
  }
  double total = hn::GetLane(hn::SumOfLanes(d, hn::Add(sum0, sum1)));
  for (; i < n; ++i) total += static_cast<double>(x[i]) * y[i];
  return total;
}

}  // namespace HWY_NAMESPACE
}  // namespace ftx
HWY_AFTER_NAMESPACE();

#endif  // include guard
