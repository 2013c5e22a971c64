// Highway row kernels of kernels/cross_entropy, compiled once per SIMD target
// through foreach_target.h. The row maximum comes from kernels/softmax's row
// helpers; one more pass gives sum(exp(z - max)) (with hn::Exp) and
// sum(z - max), from which the loss follows, and the backward pass turns the
// stored exponentials into the gradient in place.
#if defined(FTX_KERNELS_CROSS_ENTROPY_CROSS_ENTROPY_INL_H_) == \
    defined(HWY_TARGET_TOGGLE)
#ifdef FTX_KERNELS_CROSS_ENTROPY_CROSS_ENTROPY_INL_H_
#undef FTX_KERNELS_CROSS_ENTROPY_CROSS_ENTROPY_INL_H_
#else
#define FTX_KERNELS_CROSS_ENTROPY_CROSS_ENTROPY_INL_H_
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "hwy/contrib/math/math-inl.h"
#include "hwy/highway.h"
#include "kernels/elementwise/elementwise-inl.h"
#include "kernels/softmax/softmax-inl.h"

HWY_BEFORE_NAMESPACE();
namespace ftx {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// The two sums of one row that the loss needs.
struct ShiftedSums {
  double sum_exp;      // sum_i exp(z[i] - max)
  double sum_shifted;  // sum_i (z[i] - max), at most 0
};

// Both sums over z[0, n), accumulated in float lanes and reduced in double.
// When `exps` is not null it receives exp(z[i] - row_max) (it may be z).
HWY_INLINE ShiftedSums SumShiftedExps(const float* z, float row_max,
                                      float* exps, int64_t n) {
  const hn::ScalableTag<float> d;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  const auto max_v = hn::Set(d, row_max);
  auto sum_exp_v = hn::Zero(d);
  auto sum_shifted_v = hn::Zero(d);
  int64_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    const auto shifted = hn::Sub(hn::LoadU(d, z + i), max_v);
    const auto e = hn::Exp(d, shifted);
    if (exps != nullptr) hn::StoreU(e, d, exps + i);
    sum_exp_v = hn::Add(sum_exp_v, e);
    sum_shifted_v = hn::Add(sum_shifted_v, shifted);
  }
  ShiftedSums sums{hn::GetLane(hn::SumOfLanes(d, sum_exp_v)),
                   hn::GetLane(hn::SumOfLanes(d, sum_shifted_v))};
  for (; i < n; ++i) {
    const float shifted = z[i] - row_max;
    const float e = std::exp(shifted);
    if (exps != nullptr) exps[i] = e;
    sums.sum_exp += e;
    sums.sum_shifted += shifted;
  }
  return sums;
}

// Cross-entropy of one row of n logits against `target` with label smoothing
// eps: (1 - eps) * (lse - z[t]) + eps * (lse - mean(z)), computed from the
// shifted sums so that no large terms cancel. 0 for an ignored row. When
// `probabilities` is not null it receives softmax(z), ignored row or not; it
// may be z.
HWY_INLINE float CrossEntropyRow(const float* z, int32_t target,
                                 int32_t ignore_index, float label_smoothing,
                                 float* probabilities, int64_t n) {
  const bool ignored = target == ignore_index;
  if (ignored && probabilities == nullptr) return 0.0f;
  // Read before `probabilities` (which may be z) is written.
  const float target_logit = ignored ? 0.0f : z[target];
  const float row_max = MaxLogit(z, nullptr, 1.0f, n);
  const ShiftedSums sums = SumShiftedExps(z, row_max, probabilities, n);
  if (probabilities != nullptr) {
    ScaleAddRow(static_cast<float>(1.0 / sums.sum_exp), probabilities, 0.0f,
                probabilities, n);
  }
  if (ignored) return 0.0f;
  // The largest term is exp(0) = 1, so the sum is at least 1.
  const double log_sum = std::log(sums.sum_exp);
  const double eps = label_smoothing;
  double loss =
      (1.0 - eps) * (log_sum - static_cast<double>(target_logit - row_max));
  if (label_smoothing > 0.0f) {
    loss += eps * (log_sum - sums.sum_shifted / static_cast<double>(n));
  }
  return static_cast<float>(loss);
}

// d_z = d_loss * (softmax(z) - (1 - eps) * one_hot(target) - eps / n) over n
// logits; zeros for an ignored row. The exponentials go to d_z first and are
// scaled there, so d_z may be z.
HWY_INLINE void CrossEntropyBackwardRow(const float* z, int32_t target,
                                        int32_t ignore_index,
                                        float label_smoothing, float d_loss,
                                        float* d_z, int64_t n) {
  if (target == ignore_index) {
    std::fill(d_z, d_z + n, 0.0f);
    return;
  }
  const float row_max = MaxLogit(z, nullptr, 1.0f, n);
  const ShiftedSums sums = SumShiftedExps(z, row_max, d_z, n);
  const float scale = static_cast<float>(d_loss / sums.sum_exp);
  const float offset = static_cast<float>(
      static_cast<double>(d_loss) * label_smoothing / static_cast<double>(n));
  const hn::ScalableTag<float> d;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  const auto scale_v = hn::Set(d, scale);
  const auto offset_v = hn::Set(d, offset);
  int64_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    hn::StoreU(hn::MulSub(scale_v, hn::LoadU(d, d_z + i), offset_v), d,
               d_z + i);
  }
  for (; i < n; ++i) d_z[i] = scale * d_z[i] - offset;
  d_z[target] -=
      static_cast<float>(static_cast<double>(d_loss) * (1.0 - label_smoothing));
}

}  // namespace HWY_NAMESPACE
}  // namespace ftx
HWY_AFTER_NAMESPACE();

#endif  // include guard
