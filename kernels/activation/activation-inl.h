// Highway row kernels of kernels/activation, compiled once per SIMD target
// through foreach_target.h. Each activation is a struct with vector Value(d, x)
// and Derivative(d, x); the row kernels are templated on it, so the choice of
// activation is made once per call and never per element.
//
// Numerics (float, all finite for finite input):
//  - σ(y) comes from e = exp(-|y|) as 1 / (1 + e) or e / (1 + e), and σ'(y) =
//    e / (1 + e)², so nothing overflows and no 1 - σ cancels.
//  - gelu_tanh uses 0.5 (1 + tanh(u)) = σ(2 u), avoiding the cancellation of
//    1 + tanh(u) for negative x; tanh'(x) = 4 e / (1 + e)², e = exp(-2 |x|).
//  - gelu uses Φ(x) = 0.5 erfc(-x / √2) from the two-piece approximation in
//    NormalCdf below (Highway 1.0.3 has no Erf).
#if defined(FTX_KERNELS_ACTIVATION_ACTIVATION_INL_H_) == \
    defined(HWY_TARGET_TOGGLE)
#ifdef FTX_KERNELS_ACTIVATION_ACTIVATION_INL_H_
#undef FTX_KERNELS_ACTIVATION_ACTIVATION_INL_H_
#else
#define FTX_KERNELS_ACTIVATION_ACTIVATION_INL_H_
#endif

#include <array>
#include <cstddef>
#include <cstdint>

#include "hwy/contrib/math/math-inl.h"
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace ftx {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

namespace activation_constants {
constexpr double kInvSqrt2Pi = 0.39894228040143267794;   // 1 / √(2π)
constexpr double kSqrt2OverPi = 0.79788456080286535588;  // √(2/π)
constexpr double kGeluTanhCubic = 0.044715;
}  // namespace activation_constants

// c[0] + c[1] x + c[2] x² + ... by Horner's rule.
template <class D, class V>
HWY_INLINE V Polynomial(D d, V x, float c0) {
  return hn::Set(d, c0);
}
template <class D, class V, class... Rest>
HWY_INLINE V Polynomial(D d, V x, float c0, Rest... rest) {
  return hn::MulAdd(Polynomial(d, x, rest...), x, hn::Set(d, c0));
}

// σ(y) given e = exp(-|y|).
template <class D, class V>
HWY_INLINE V SigmoidFromExp(D d, V y, V e) {
  const V one = hn::Set(d, 1.0f);
  const V r = hn::Div(one, hn::Add(one, e));
  return hn::IfThenElse(hn::Ge(y, hn::Zero(d)), r, hn::Mul(e, r));
}

// σ'(y) = σ(y) σ(-y) = e / (1 + e)², given e = exp(-|y|).
template <class D, class V>
HWY_INLINE V SigmoidDerivativeFromExp(D d, V e) {
  const V one = hn::Set(d, 1.0f);
  const V r = hn::Div(one, hn::Add(one, e));
  return hn::Mul(e, hn::Mul(r, r));
}

// Φ(x) = 0.5 erfc(-z), z = x / √2, given z² (as x² / 2) and exp(-z²). Two
// pieces, each a Chebyshev-interpolation fit (near minimax) computed with
// mpmath for this file:
//  |z| < 27/32:  erf(z) = z P(z²), P of degree 5, max relative error 6e-9;
//                evaluated as Φ = 0.5 + x P(z²) / (2 √2) with the constant
//                folded into the coefficients, so z itself is never rounded.
//  |z| >= 27/32: erfc(|z|) = exp(-z²) s R(s - 0.43164835), s = 1 / (1 + |z|/2),
//                R of degree 8 fitted over |z| in [27/32, 10.5] (beyond, exp
//                underflows), max relative error 7e-9; Φ = 0.5 erfc(|z|) for
//                x < 0 and 1 - 0.5 erfc(|z|) otherwise.
// So the lower tail keeps its relative accuracy instead of cancelling in
// 1 + erf(z). In float the result is within a few ulp of Φ (activation_test
// measures it through gelu).
template <class D, class V>
HWY_INLINE V NormalCdf(D d, V x, V z_squared, V exp_neg_z_squared) {
  const V half = hn::Set(d, 0.5f);
  const V one = hn::Set(d, 1.0f);
  const V abs_x = hn::Abs(x);

  const V cdf_small =
      hn::MulAdd(x,
                 Polynomial(d, z_squared, 0.398942278313f, -0.132980548691f,
                            0.0398907404022f, -0.00947744103671f,
                            0.00178807623612f, -0.000224614610173f),
                 half);

  // 1 + |z| / 2 = 1 + |x| / (2 √2).
  const V s =
      hn::Div(one, hn::MulAdd(abs_x, hn::Set(d, 0.353553390593273762f), one));
  const V scaled_erfc = Polynomial(
      d, hn::Sub(s, hn::Set(d, 0.431648351648351648f)), 0.466384004276f,
      0.613001963824f, 0.524591144067f, 0.187379892827f, -0.130438193600f,
      -0.136951203527f, 0.0621278289001f, 0.0853304202199f, -0.0509076659655f);
  const V half_erfc =
      hn::Mul(hn::Mul(half, exp_neg_z_squared), hn::Mul(s, scaled_erfc));
  const V cdf_large = hn::IfThenElse(hn::Lt(x, hn::Zero(d)), half_erfc,
                                     hn::Sub(one, half_erfc));
  // |z| < 27/32, i.e. |x| < 27/32 · √2.
  return hn::IfThenElse(hn::Lt(abs_x, hn::Set(d, 1.19324269325f)), cdf_small,
                        cdf_large);
}

struct IdentityActivation {
  template <class D, class V>
  static HWY_INLINE V Value(D, V x) {
    return x;
  }
  template <class D, class V>
  static HWY_INLINE V Derivative(D d, V) {
    return hn::Set(d, 1.0f);
  }
};

// relu'(0) = 0, as PyTorch.
struct ReluActivation {
  template <class D, class V>
  static HWY_INLINE V Value(D d, V x) {
    return hn::IfThenElseZero(hn::Gt(x, hn::Zero(d)), x);
  }
  template <class D, class V>
  static HWY_INLINE V Derivative(D d, V x) {
    return hn::IfThenElseZero(hn::Gt(x, hn::Zero(d)), hn::Set(d, 1.0f));
  }
};

// x Φ(x); derivative Φ(x) + x φ(x). |x| is clamped to 17 inside the Gaussian
// (exp(-17² / 2) is already 0 in float), so x² never overflows.
struct GeluActivation {
  template <class D, class V>
  static HWY_INLINE V Value(D d, V x) {
    const V clamped = Clamp(d, x);
    const V z_squared = hn::Mul(hn::Mul(clamped, clamped), hn::Set(d, 0.5f));
    return hn::Mul(x,
                   NormalCdf(d, x, z_squared, hn::Exp(d, hn::Neg(z_squared))));
  }
  template <class D, class V>
  static HWY_INLINE V Derivative(D d, V x) {
    const V clamped = Clamp(d, x);
    const V z_squared = hn::Mul(hn::Mul(clamped, clamped), hn::Set(d, 0.5f));
    const V gaussian = hn::Exp(d, hn::Neg(z_squared));
    const V pdf = hn::Mul(
        gaussian,
        hn::Set(d, static_cast<float>(activation_constants::kInvSqrt2Pi)));
    return hn::MulAdd(clamped, pdf, NormalCdf(d, x, z_squared, gaussian));
  }

 private:
  template <class D, class V>
  static HWY_INLINE V Clamp(D d, V x) {
    return hn::Min(hn::Max(x, hn::Set(d, -17.0f)), hn::Set(d, 17.0f));
  }
};

// 0.5 x (1 + tanh(u)) = x σ(2 u), u = √(2/π) (x + 0.044715 x³); derivative
// σ(2 u) + x σ'(2 u) 2 u'(x). x is clamped to ±12 inside u (where σ(2 u) is
// already exactly 0 or 1), so x³ never overflows.
struct GeluTanhActivation {
  template <class D, class V>
  static HWY_INLINE V Value(D d, V x) {
    const V two_u = TwoU(d, Clamp(d, x));
    return hn::Mul(x, SigmoidFromExp(d, two_u, ExpNegAbs(d, two_u)));
  }
  template <class D, class V>
  static HWY_INLINE V Derivative(D d, V x) {
    using activation_constants::kGeluTanhCubic;
    using activation_constants::kSqrt2OverPi;
    const V clamped = Clamp(d, x);
    const V two_u = TwoU(d, clamped);
    const V e = ExpNegAbs(d, two_u);
    const V two_du = hn::MulAdd(
        hn::Mul(clamped, clamped),
        hn::Set(d, static_cast<float>(6 * kSqrt2OverPi * kGeluTanhCubic)),
        hn::Set(d, static_cast<float>(2 * kSqrt2OverPi)));
    return hn::MulAdd(hn::Mul(clamped, SigmoidDerivativeFromExp(d, e)), two_du,
                      SigmoidFromExp(d, two_u, e));
  }

 private:
  template <class D, class V>
  static HWY_INLINE V Clamp(D d, V x) {
    return hn::Min(hn::Max(x, hn::Set(d, -12.0f)), hn::Set(d, 12.0f));
  }
  template <class D, class V>
  static HWY_INLINE V TwoU(D d, V x) {
    using activation_constants::kGeluTanhCubic;
    using activation_constants::kSqrt2OverPi;
    return hn::Mul(
        x, hn::MulAdd(hn::Mul(x, x),
                      hn::Set(d, static_cast<float>(2 * kSqrt2OverPi *
                                                    kGeluTanhCubic)),
                      hn::Set(d, static_cast<float>(2 * kSqrt2OverPi))));
  }
  template <class D, class V>
  static HWY_INLINE V ExpNegAbs(D d, V y) {
    return hn::Exp(d, hn::Neg(hn::Abs(y)));
  }
};

// x σ(x); derivative σ(x) + x σ'(x).
struct SiluActivation {
  template <class D, class V>
  static HWY_INLINE V Value(D d, V x) {
    return hn::Mul(x, SigmoidFromExp(d, x, hn::Exp(d, hn::Neg(hn::Abs(x)))));
  }
  template <class D, class V>
  static HWY_INLINE V Derivative(D d, V x) {
    const V e = hn::Exp(d, hn::Neg(hn::Abs(x)));
    return hn::MulAdd(x, SigmoidDerivativeFromExp(d, e),
                      SigmoidFromExp(d, x, e));
  }
};

// x > 0 ? x + 1 : exp(x); derivative x > 0 ? 1 : exp(x) (1 at 0, as
// PyTorch's elu backward).
struct EluPlusOneActivation {
  template <class D, class V>
  static HWY_INLINE V Value(D d, V x) {
    const auto positive = hn::Gt(x, hn::Zero(d));
    return hn::IfThenElse(positive, hn::Add(x, hn::Set(d, 1.0f)),
                          hn::Exp(d, hn::Min(x, hn::Zero(d))));
  }
  template <class D, class V>
  static HWY_INLINE V Derivative(D d, V x) {
    const auto positive = hn::Gt(x, hn::Zero(d));
    return hn::IfThenElse(positive, hn::Set(d, 1.0f),
                          hn::Exp(d, hn::Min(x, hn::Zero(d))));
  }
};

// relu(x)²; derivative 2 relu(x).
struct ReluSquaredActivation {
  template <class D, class V>
  static HWY_INLINE V Value(D d, V x) {
    const V relu = ReluActivation::Value(d, x);
    return hn::Mul(relu, relu);
  }
  template <class D, class V>
  static HWY_INLINE V Derivative(D d, V x) {
    const V relu = ReluActivation::Value(d, x);
    return hn::Add(relu, relu);
  }
};

struct SigmoidActivation {
  template <class D, class V>
  static HWY_INLINE V Value(D d, V x) {
    return SigmoidFromExp(d, x, hn::Exp(d, hn::Neg(hn::Abs(x))));
  }
  template <class D, class V>
  static HWY_INLINE V Derivative(D d, V x) {
    return SigmoidDerivativeFromExp(d, hn::Exp(d, hn::Neg(hn::Abs(x))));
  }
};

// tanh(x); derivative 1 - tanh² = 4 σ'(2 x).
struct TanhActivation {
  template <class D, class V>
  static HWY_INLINE V Value(D d, V x) {
    return hn::Tanh(d, x);
  }
  template <class D, class V>
  static HWY_INLINE V Derivative(D d, V x) {
    const V e = hn::Exp(d, hn::Mul(hn::Abs(x), hn::Set(d, -2.0f)));
    return hn::Mul(hn::Set(d, 4.0f), SigmoidDerivativeFromExp(d, e));
  }
};

// Calls body(d, inputs, outputs) on successive vectors of n elements: body
// loads one vector at each input pointer and stores one at each output
// pointer. The tail (fewer than Lanes(d) elements) is copied by scalar loops
// through zero-padded stack buffers, so nothing outside the rows is read or
// written and the tail gets the same arithmetic as the rest. Outputs may alias
// inputs exactly.
template <size_t kInputs, size_t kOutputs, class Body>
HWY_INLINE void MapRow(const std::array<const float*, kInputs>& inputs,
                       const std::array<float*, kOutputs>& outputs, int64_t n,
                       Body body) {
  const hn::ScalableTag<float> d;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  std::array<const float*, kInputs> in;
  std::array<float*, kOutputs> out;
  int64_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    for (size_t k = 0; k < kInputs; ++k) in[k] = inputs[k] + i;
    for (size_t k = 0; k < kOutputs; ++k) out[k] = outputs[k] + i;
    body(d, in, out);
  }
  if (i == n) return;
  const int64_t tail = n - i;
  HWY_ALIGN float in_tail[kInputs][hn::MaxLanes(d)] = {};
  HWY_ALIGN float out_tail[kOutputs][hn::MaxLanes(d)];
  for (size_t k = 0; k < kInputs; ++k) {
    for (int64_t j = 0; j < tail; ++j) in_tail[k][j] = inputs[k][i + j];
    in[k] = in_tail[k];
  }
  for (size_t k = 0; k < kOutputs; ++k) out[k] = out_tail[k];
  body(d, in, out);
  for (size_t k = 0; k < kOutputs; ++k) {
    for (int64_t j = 0; j < tail; ++j) outputs[k][i + j] = out_tail[k][j];
  }
}

// y[i] = f(x[i]).
template <class ActivationOp>
HWY_INLINE void ActivateRow(const float* x, float* y, int64_t n) {
  MapRow<1, 1>({x}, {y}, n, [](auto d, const auto& in, const auto& out) {
    hn::StoreU(ActivationOp::Value(d, hn::LoadU(d, in[0])), d, out[0]);
  });
}

// d_x[i] = f'(x[i]) * d_y[i].
template <class ActivationOp>
HWY_INLINE void ActivateBackwardRow(const float* x, const float* d_y,
                                    float* d_x, int64_t n) {
  MapRow<2, 1>({x, d_y}, {d_x}, n, [](auto d, const auto& in, const auto& out) {
    const auto f_prime = ActivationOp::Derivative(d, hn::LoadU(d, in[0]));
    hn::StoreU(hn::Mul(f_prime, hn::LoadU(d, in[1])), d, out[0]);
  });
}

// y[j] = value[j] * f(gate[j]).
template <class ActivationOp>
HWY_INLINE void GluRow(const float* value, const float* gate, float* y,
                       int64_t n) {
  MapRow<2, 1>({value, gate}, {y}, n,
               [](auto d, const auto& in, const auto& out) {
                 const auto f = ActivationOp::Value(d, hn::LoadU(d, in[1]));
                 hn::StoreU(hn::Mul(hn::LoadU(d, in[0]), f), d, out[0]);
               });
}

// d_value[j] = d_y[j] * f(gate[j]); d_gate[j] = d_y[j] * value[j] *
// f'(gate[j]). All loads happen before the stores, so d_value and d_gate may
// alias value and gate.
template <class ActivationOp>
HWY_INLINE void GluBackwardRow(const float* value, const float* gate,
                               const float* d_y, float* d_value, float* d_gate,
                               int64_t n) {
  MapRow<3, 2>({value, gate, d_y}, {d_value, d_gate}, n,
               [](auto d, const auto& in, const auto& out) {
                 const auto v = hn::LoadU(d, in[0]);
                 const auto g = hn::LoadU(d, in[1]);
                 const auto grad = hn::LoadU(d, in[2]);
                 const auto f = ActivationOp::Value(d, g);
                 const auto f_prime = ActivationOp::Derivative(d, g);
                 hn::StoreU(hn::Mul(grad, f), d, out[0]);
                 hn::StoreU(hn::Mul(hn::Mul(grad, v), f_prime), d, out[1]);
               });
}

}  // namespace HWY_NAMESPACE
}  // namespace ftx
HWY_AFTER_NAMESPACE();

#endif  // include guard
