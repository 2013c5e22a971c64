// Highway row kernels of kernels/softmax, compiled once per SIMD target
// through foreach_target.h. Other kernels (attention, cross-entropy) include
// this file for the row helpers.
#if defined(FTX_KERNELS_SOFTMAX_SOFTMAX_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef FTX_KERNELS_SOFTMAX_SOFTMAX_INL_H_
#undef FTX_KERNELS_SOFTMAX_SOFTMAX_INL_H_
#else
#define FTX_KERNELS_SOFTMAX_SOFTMAX_INL_H_
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "hwy/contrib/math/math-inl.h"
#include "hwy/highway.h"
#include "kernels/elementwise/elementwise-inl.h"

HWY_BEFORE_NAMESPACE();
namespace ftx {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

inline constexpr float kNegativeInfinity =
    -std::numeric_limits<float>::infinity();

// Logit i of a row: scale * x[i] + mask[i] (mask may be null). The vector
// version below computes the same two roundings, so every pass over a row sees
// the same logits.
HWY_INLINE float ScaledLogit(const float* x, const float* mask, float scale,
                             int64_t i) {
  const float scaled = scale * x[i];
  return mask != nullptr ? scaled + mask[i] : scaled;
}

template <class D, class V>
HWY_INLINE V ScaledLogits(D d, const float* x, const float* mask, V scale,
                          int64_t i) {
  const V scaled = hn::Mul(scale, hn::LoadU(d, x + i));
  return mask != nullptr ? hn::Add(scaled, hn::LoadU(d, mask + i)) : scaled;
}

// max_i (scale * x[i] + mask[i]); -inf for an empty or fully masked row.
HWY_INLINE float MaxLogit(const float* x, const float* mask, float scale,
                          int64_t n) {
  const hn::ScalableTag<float> d;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  const auto scale_v = hn::Set(d, scale);
  auto max_v = hn::Set(d, kNegativeInfinity);
  int64_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    max_v = hn::Max(max_v, ScaledLogits(d, x, mask, scale_v, i));
  }
  float row_max = hn::GetLane(hn::MaxOfLanes(d, max_v));
  for (; i < n; ++i)
    row_max = std::max(row_max, ScaledLogit(x, mask, scale, i));
  return row_max;
}

// sum_i exp(scale * x[i] + mask[i] - row_max), accumulated in float lanes and
// reduced in double. When `exps` is not null it receives the terms (it may be
// x).
HWY_INLINE double SumExpLogits(const float* x, const float* mask, float scale,
                               float row_max, float* exps, int64_t n) {
  const hn::ScalableTag<float> d;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  const auto scale_v = hn::Set(d, scale);
  const auto max_v = hn::Set(d, row_max);
  auto sum_v = hn::Zero(d);
  int64_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    const auto e =
        hn::Exp(d, hn::Sub(ScaledLogits(d, x, mask, scale_v, i), max_v));
    if (exps != nullptr) hn::StoreU(e, d, exps + i);
    sum_v = hn::Add(sum_v, e);
  }
  double sum = hn::GetLane(hn::SumOfLanes(d, sum_v));
  for (; i < n; ++i) {
    const float e = std::exp(ScaledLogit(x, mask, scale, i) - row_max);
    if (exps != nullptr) exps[i] = e;
    sum += e;
  }
  return sum;
}

// y = softmax(scale * x + mask) over n elements; zeros when every logit is
// -inf. mask may be null; y may be x.
HWY_INLINE void SoftmaxRow(const float* x, const float* mask, float scale,
                           float* y, int64_t n) {
  const float row_max = MaxLogit(x, mask, scale, n);
  if (row_max == kNegativeInfinity) {
    std::fill(y, y + n, 0.0f);
    return;
  }
  // The largest term is exp(0) = 1, so the sum is at least 1.
  const double sum = SumExpLogits(x, mask, scale, row_max, y, n);
  ScaleAddRow(static_cast<float>(1.0 / sum), y, 0.0f, y, n);
}

// y = log_softmax(scale * x + mask) over n elements; -inf when every logit is
// -inf. mask may be null; y may be x.
HWY_INLINE void LogSoftmaxRow(const float* x, const float* mask, float scale,
                              float* y, int64_t n) {
  const float row_max = MaxLogit(x, mask, scale, n);
  if (row_max == kNegativeInfinity) {
    std::fill(y, y + n, kNegativeInfinity);
    return;
  }
  const float log_sum = static_cast<float>(
      std::log(SumExpLogits(x, mask, scale, row_max, nullptr, n)));
  const hn::ScalableTag<float> d;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  const auto scale_v = hn::Set(d, scale);
  const auto max_v = hn::Set(d, row_max);
  const auto log_sum_v = hn::Set(d, log_sum);
  int64_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    const auto shifted = hn::Sub(ScaledLogits(d, x, mask, scale_v, i), max_v);
    hn::StoreU(hn::Sub(shifted, log_sum_v), d, y + i);
  }
  for (; i < n; ++i) {
    y[i] = (ScaledLogit(x, mask, scale, i) - row_max) - log_sum;
  }
}

// sum_i x[i], accumulated in float lanes and reduced in double.
HWY_INLINE double SumRow(const float* x, int64_t n) {
  const hn::ScalableTag<float> d;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  auto sum0 = hn::Zero(d);
  auto sum1 = hn::Zero(d);
  int64_t i = 0;
  for (; i + 2 * lanes <= n; i += 2 * lanes) {
    sum0 = hn::Add(sum0, hn::LoadU(d, x + i));
    sum1 = hn::Add(sum1, hn::LoadU(d, x + i + lanes));
  }
  for (; i + lanes <= n; i += lanes) sum0 = hn::Add(sum0, hn::LoadU(d, x + i));
  double total = hn::GetLane(hn::SumOfLanes(d, hn::Add(sum0, sum1)));
  for (; i < n; ++i) total += x[i];
  return total;
}

// d_x = scale * y * (d_y - sum(d_y * y)), y the softmax output. d_x may alias
// d_y or y.
HWY_INLINE void SoftmaxBackwardRow(const float* y, const float* d_y,
                                   float scale, float* d_x, int64_t n) {
  const float dot = static_cast<float>(DotRow(d_y, y, n));
  const hn::ScalableTag<float> d;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  const auto scale_v = hn::Set(d, scale);
  const auto dot_v = hn::Set(d, dot);
  int64_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    const auto scaled_y = hn::Mul(scale_v, hn::LoadU(d, y + i));
    hn::StoreU(hn::Mul(scaled_y, hn::Sub(hn::LoadU(d, d_y + i), dot_v)), d,
               d_x + i);
  }
  for (; i < n; ++i) d_x[i] = scale * y[i] * (d_y[i] - dot);
}

// d_x = scale * (d_y - exp(y) * sum(d_y)), y the log-softmax output. d_x may
// alias d_y or y.
HWY_INLINE void LogSoftmaxBackwardRow(const float* y, const float* d_y,
                                      float scale, float* d_x, int64_t n) {
  const float sum = static_cast<float>(SumRow(d_y, n));
  const hn::ScalableTag<float> d;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  const auto scale_v = hn::Set(d, scale);
  const auto sum_v = hn::Set(d, sum);
  int64_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    const auto probability = hn::Exp(d, hn::LoadU(d, y + i));
    const auto centered =
        hn::NegMulAdd(probability, sum_v, hn::LoadU(d, d_y + i));
    hn::StoreU(hn::Mul(scale_v, centered), d, d_x + i);
  }
  for (; i < n; ++i) d_x[i] = scale * (d_y[i] - std::exp(y[i]) * sum);
}

}  // namespace HWY_NAMESPACE
}  // namespace ftx
HWY_AFTER_NAMESPACE();

#endif  // include guard
