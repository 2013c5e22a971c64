// Highway row kernel of kernels/adamw, compiled once per SIMD target through
// foreach_target.h.
#if defined(FTX_KERNELS_ADAMW_ADAMW_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef FTX_KERNELS_ADAMW_ADAMW_INL_H_
#undef FTX_KERNELS_ADAMW_ADAMW_INL_H_
#else
#define FTX_KERNELS_ADAMW_ADAMW_INL_H_
#endif

#include <cmath>
#include <cstdint>

#include "hwy/highway.h"
#include "kernels/adamw/adamw_cpu.h"

HWY_BEFORE_NAMESPACE();
namespace ftx {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// One AdamW update of n elements (see cpu::AdamWStep), in place on p, m, v.
HWY_INLINE void AdamWRow(float* p, const float* g, float* m, float* v,
                         int64_t n, const cpu::AdamWCoefficients& c) {
  const hn::ScalableTag<float> d;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  const auto decay_factor = hn::Set(d, c.decay_factor);
  const auto one_minus_beta1 = hn::Set(d, c.one_minus_beta1);
  const auto beta2 = hn::Set(d, c.beta2);
  const auto one_minus_beta2 = hn::Set(d, c.one_minus_beta2);
  const auto step_size = hn::Set(d, c.step_size);
  const auto bias_correction2_sqrt = hn::Set(d, c.bias_correction2_sqrt);
  const auto eps = hn::Set(d, c.eps);
  int64_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    const auto gradient = hn::LoadU(d, g + i);
    const auto decayed = hn::Mul(hn::LoadU(d, p + i), decay_factor);
    const auto previous = hn::LoadU(d, m + i);
    const auto first =
        hn::MulAdd(one_minus_beta1, hn::Sub(gradient, previous), previous);
    const auto second =
        hn::MulAdd(beta2, hn::LoadU(d, v + i),
                   hn::Mul(one_minus_beta2, hn::Mul(gradient, gradient)));
    const auto denominator =
        hn::Add(hn::Div(hn::Sqrt(second), bias_correction2_sqrt), eps);
    hn::StoreU(first, d, m + i);
    hn::StoreU(second, d, v + i);
    hn::StoreU(hn::NegMulAdd(step_size, hn::Div(first, denominator), decayed),
               d, p + i);
  }
  for (; i < n; ++i) {
    const float decayed = p[i] * c.decay_factor;
    m[i] = m[i] + c.one_minus_beta1 * (g[i] - m[i]);
    v[i] = c.beta2 * v[i] + c.one_minus_beta2 * (g[i] * g[i]);
    const float denominator = std::sqrt(v[i]) / c.bias_correction2_sqrt + c.eps;
    p[i] = decayed - c.step_size * (m[i] / denominator);
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace ftx
HWY_AFTER_NAMESPACE();

#endif  // include guard
