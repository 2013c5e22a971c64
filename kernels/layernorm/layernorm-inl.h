// Highway row kernels of kernels/layernorm, compiled once per SIMD target
// through foreach_target.h. Other kernels include this file for the row
// helpers.
#if defined(FTX_KERNELS_LAYERNORM_LAYERNORM_INL_H_) == \
    defined(HWY_TARGET_TOGGLE)
#ifdef FTX_KERNELS_LAYERNORM_LAYERNORM_INL_H_
#undef FTX_KERNELS_LAYERNORM_LAYERNORM_INL_H_
#else
#define FTX_KERNELS_LAYERNORM_LAYERNORM_INL_H_
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace ftx {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// sum_i (x[i] - shift), accumulated in float lanes and reduced in double.
HWY_INLINE double SumShifted(const float* x, float shift, int64_t n) {
  const hn::ScalableTag<float> d;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  const auto shift_v = hn::Set(d, shift);
  auto sum_v = hn::Zero(d);
  int64_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    sum_v = hn::Add(sum_v, hn::Sub(hn::LoadU(d, x + i), shift_v));
  }
  double sum = hn::GetLane(hn::SumOfLanes(d, sum_v));
  for (; i < n; ++i) sum += x[i] - shift;
  return sum;
}

// Sums of c[i] = (x[i] - shift) - offset and of c[i]^2, accumulated in float
// lanes and reduced in double.
HWY_INLINE void CenteredSums(const float* x, float shift, float offset,
                             int64_t n, double* sum, double* sum_of_squares) {
  const hn::ScalableTag<float> d;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  const auto shift_v = hn::Set(d, shift);
  const auto offset_v = hn::Set(d, offset);
  auto sum_v = hn::Zero(d);
  auto squares_v = hn::Zero(d);
  int64_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    const auto c = hn::Sub(hn::Sub(hn::LoadU(d, x + i), shift_v), offset_v);
    sum_v = hn::Add(sum_v, c);
    squares_v = hn::MulAdd(c, c, squares_v);
  }
  *sum = hn::GetLane(hn::SumOfLanes(d, sum_v));
  *sum_of_squares = hn::GetLane(hn::SumOfLanes(d, squares_v));
  for (; i < n; ++i) {
    const float c = (x[i] - shift) - offset;
    *sum += c;
    *sum_of_squares += static_cast<double>(c) * c;
  }
}

// y = ((x - shift) - offset) * rstd * gamma + beta; gamma, beta may be null.
// y may be x.
HWY_INLINE void NormalizeRow(const float* x, float shift, float offset,
                             float rstd, const float* gamma, const float* beta,
                             float* y, int64_t n) {
  const hn::ScalableTag<float> d;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  const auto shift_v = hn::Set(d, shift);
  const auto offset_v = hn::Set(d, offset);
  const auto rstd_v = hn::Set(d, rstd);
  int64_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    auto value = hn::Mul(
        hn::Sub(hn::Sub(hn::LoadU(d, x + i), shift_v), offset_v), rstd_v);
    if (gamma != nullptr) value = hn::Mul(value, hn::LoadU(d, gamma + i));
    if (beta != nullptr) value = hn::Add(value, hn::LoadU(d, beta + i));
    hn::StoreU(value, d, y + i);
  }
  for (; i < n; ++i) {
    float value = ((x[i] - shift) - offset) * rstd;
    if (gamma != nullptr) value *= gamma[i];
    if (beta != nullptr) value += beta[i];
    y[i] = value;
  }
}

// LayerNorm of one row of n >= 1 elements; gamma, beta, mean and rstd may be
// null. y may be x.
//
// The statistics use two passes around shift = x[0]: the first estimates
// offset = mean - shift from sums of x - shift, which stay small when the row
// sits far from zero; the second sums c = (x - shift) - offset and c^2, and
// sum(c) / n corrects the first estimate (the corrected two-pass algorithm).
HWY_INLINE void LayerNormRow(const float* x, const float* gamma,
                             const float* beta, float eps, float* y, int64_t n,
                             float* mean, float* rstd) {
  const float shift = x[0];
  const double inverse_n = 1.0 / static_cast<double>(n);
  const float offset = static_cast<float>(SumShifted(x, shift, n) * inverse_n);
  double sum, sum_of_squares;
  CenteredSums(x, shift, offset, n, &sum, &sum_of_squares);
  const double correction = sum * inverse_n;
  const double variance =
      std::max(sum_of_squares * inverse_n - correction * correction, 0.0);
  const double mean_minus_shift = offset + correction;
  const float row_rstd = static_cast<float>(1.0 / std::sqrt(variance + eps));
  if (mean != nullptr) *mean = static_cast<float>(shift + mean_minus_shift);
  if (rstd != nullptr) *rstd = row_rstd;
  NormalizeRow(x, shift, static_cast<float>(mean_minus_shift), row_rstd, gamma,
               beta, y, n);
}

// g = d_y * gamma (gamma may be null: g = d_y).
template <class D>
HWY_INLINE auto ScaledGradient(D d, const float* d_y, const float* gamma,
                               int64_t i) {
  const auto d_y_v = hn::LoadU(d, d_y + i);
  return gamma != nullptr ? hn::Mul(d_y_v, hn::LoadU(d, gamma + i)) : d_y_v;
}

HWY_INLINE float ScaledGradient(const float* d_y, const float* gamma,
                                int64_t i) {
  return gamma != nullptr ? d_y[i] * gamma[i] : d_y[i];
}

// sum(g) and sum(g * x_hat) over a row, x_hat = (x - mean) * rstd,
// accumulated in float lanes and reduced in double.
HWY_INLINE void GradientSums(const float* x, const float* d_y,
                             const float* gamma, float mean, float rstd,
                             int64_t n, double* g_sum, double* g_x_hat_sum) {
  const hn::ScalableTag<float> d;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  const auto mean_v = hn::Set(d, mean);
  const auto rstd_v = hn::Set(d, rstd);
  auto g_sum_v = hn::Zero(d);
  auto g_x_hat_sum_v = hn::Zero(d);
  int64_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    const auto g = ScaledGradient(d, d_y, gamma, i);
    const auto x_hat = hn::Mul(hn::Sub(hn::LoadU(d, x + i), mean_v), rstd_v);
    g_sum_v = hn::Add(g_sum_v, g);
    g_x_hat_sum_v = hn::MulAdd(g, x_hat, g_x_hat_sum_v);
  }
  *g_sum = hn::GetLane(hn::SumOfLanes(d, g_sum_v));
  *g_x_hat_sum = hn::GetLane(hn::SumOfLanes(d, g_x_hat_sum_v));
  for (; i < n; ++i) {
    const float g = ScaledGradient(d_y, gamma, i);
    *g_sum += g;
    *g_x_hat_sum += static_cast<double>(g) * ((x[i] - mean) * rstd);
  }
}

// d_x = rstd * ((g - g_mean) - x_hat * g_x_hat_mean) over one row of n >= 1
// elements. d_x may alias d_y or x.
HWY_INLINE void LayerNormBackwardRow(const float* x, const float* d_y,
                                     const float* gamma, float mean, float rstd,
                                     float* d_x, int64_t n) {
  double g_sum, g_x_hat_sum;
  GradientSums(x, d_y, gamma, mean, rstd, n, &g_sum, &g_x_hat_sum);
  const float g_mean = static_cast<float>(g_sum / static_cast<double>(n));
  const float g_x_hat_mean =
      static_cast<float>(g_x_hat_sum / static_cast<double>(n));
  const hn::ScalableTag<float> d;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  const auto mean_v = hn::Set(d, mean);
  const auto rstd_v = hn::Set(d, rstd);
  const auto g_mean_v = hn::Set(d, g_mean);
  const auto g_x_hat_mean_v = hn::Set(d, g_x_hat_mean);
  int64_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    const auto centered = hn::Sub(ScaledGradient(d, d_y, gamma, i), g_mean_v);
    const auto x_hat = hn::Mul(hn::Sub(hn::LoadU(d, x + i), mean_v), rstd_v);
    hn::StoreU(hn::Mul(rstd_v, hn::NegMulAdd(x_hat, g_x_hat_mean_v, centered)),
               d, d_x + i);
  }
  for (; i < n; ++i) {
    const float centered = ScaledGradient(d_y, gamma, i) - g_mean;
    const float x_hat = (x[i] - mean) * rstd;
    d_x[i] = rstd * (centered - x_hat * g_x_hat_mean);
  }
}

// d_gamma[i] += d_y[i] * x_hat[i] and d_beta[i] += d_y[i] over n columns of
// one row, x_hat = (x - mean) * rstd; d_gamma or d_beta may be null.
HWY_INLINE void AccumulateParameterGradients(const float* x, const float* d_y,
                                             float mean, float rstd,
                                             float* d_gamma, float* d_beta,
                                             int64_t n) {
  const hn::ScalableTag<float> d;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  const auto mean_v = hn::Set(d, mean);
  const auto rstd_v = hn::Set(d, rstd);
  int64_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    const auto d_y_v = hn::LoadU(d, d_y + i);
    if (d_gamma != nullptr) {
      const auto x_hat = hn::Mul(hn::Sub(hn::LoadU(d, x + i), mean_v), rstd_v);
      hn::StoreU(hn::MulAdd(d_y_v, x_hat, hn::LoadU(d, d_gamma + i)), d,
                 d_gamma + i);
    }
    if (d_beta != nullptr) {
      hn::StoreU(hn::Add(hn::LoadU(d, d_beta + i), d_y_v), d, d_beta + i);
    }
  }
  for (; i < n; ++i) {
    if (d_gamma != nullptr) d_gamma[i] += d_y[i] * ((x[i] - mean) * rstd);
    if (d_beta != nullptr) d_beta[i] += d_y[i];
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace ftx
HWY_AFTER_NAMESPACE();

#endif  // include guard
