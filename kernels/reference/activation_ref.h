// Scalar reference of kernels/activation (the oracle for the Highway and CUDA
// versions), written from the definitions with the standard library's exp,
// erfc and tanh. Templated on the element type so tests can run it in double.
// Derivatives follow PyTorch autograd: relu'(0) = 0, (elu+1)'(0) = exp(0) = 1.
// Gated linear units use x-transformers' layout: x [rows, 2 D] holds (value,
// gate) = (x[:, :D], x[:, D:]); y [rows, D] = value * f(gate). Gradient
// convention: activation gradients are written (=).
#ifndef FTX_KERNELS_REFERENCE_ACTIVATION_REF_H_
#define FTX_KERNELS_REFERENCE_ACTIVATION_REF_H_

#include <cmath>
#include <cstdint>

namespace ftx::reference {

// √(2/π) and the cubic coefficient of the tanh approximation of GELU.
template <typename T>
constexpr T kGeluTanhScale = static_cast<T>(0.79788456080286535587989211986876);
template <typename T>
constexpr T kGeluTanhCubic = static_cast<T>(0.044715);

template <typename T>
T Identity(T x) {
  return x;
}
template <typename T>
T IdentityDerivative(T) {
  return T(1);
}

template <typename T>
T Relu(T x) {
  return x > 0 ? x : T(0);
}
template <typename T>
T ReluDerivative(T x) {
  return x > 0 ? T(1) : T(0);
}

// Φ(x), the standard normal CDF, as 0.5 erfc(-x / √2) (= 0.5 (1 + erf(x /
// √2)) without the cancellation of 1 + erf for negative x).
template <typename T>
T NormalCdf(T x) {
  return T(0.5) * std::erfc(-x / std::sqrt(T(2)));
}
// φ(x) = exp(-x² / 2) / √(2π).
template <typename T>
T NormalPdf(T x) {
  return std::exp(-x * x / T(2)) /
         std::sqrt(T(2) * static_cast<T>(3.14159265358979323846264338327950));
}

template <typename T>
T Gelu(T x) {
  return x * NormalCdf(x);
}
template <typename T>
T GeluDerivative(T x) {
  return NormalCdf(x) + x * NormalPdf(x);
}

// 0.5 x (1 + tanh(u)), u = √(2/π) (x + 0.044715 x³).
template <typename T>
T GeluTanh(T x) {
  const T u = kGeluTanhScale<T> * (x + kGeluTanhCubic<T> * x * x * x);
  return T(0.5) * x * (T(1) + std::tanh(u));
}
// 0.5 (1 + tanh(u)) + 0.5 x (1 - tanh²(u)) u'(x),
// u'(x) = √(2/π) (1 + 3 · 0.044715 x²).
template <typename T>
T GeluTanhDerivative(T x) {
  const T u = kGeluTanhScale<T> * (x + kGeluTanhCubic<T> * x * x * x);
  const T du = kGeluTanhScale<T> * (T(1) + T(3) * kGeluTanhCubic<T> * x * x);
  const T t = std::tanh(u);
  return T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * du;
}

template <typename T>
T Sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}
template <typename T>
T SigmoidDerivative(T x) {
  const T s = Sigmoid(x);
  return s * (T(1) - s);
}

template <typename T>
T Silu(T x) {
  return x * Sigmoid(x);
}
// σ(x) (1 + x (1 - σ(x))).
template <typename T>
T SiluDerivative(T x) {
  const T s = Sigmoid(x);
  return s * (T(1) + x * (T(1) - s));
}

// elu(x) + 1 with alpha = 1.
template <typename T>
T EluPlusOne(T x) {
  return x > 0 ? x + T(1) : std::exp(x);
}
template <typename T>
T EluPlusOneDerivative(T x) {
  return x > 0 ? T(1) : std::exp(x);
}

template <typename T>
T ReluSquared(T x) {
  return x > 0 ? x * x : T(0);
}
template <typename T>
T ReluSquaredDerivative(T x) {
  return x > 0 ? T(2) * x : T(0);
}

template <typename T>
T Tanh(T x) {
  return std::tanh(x);
}
template <typename T>
T TanhDerivative(T x) {
  const T t = std::tanh(x);
  return T(1) - t * t;
}

// y[i] = f(x[i]).
template <typename T, class F>
void Activate(int64_t n, F f, const T* x, T* y) {
  for (int64_t i = 0; i < n; ++i) y[i] = f(x[i]);
}

// d_x[i] = f'(x[i]) * d_y[i].
template <typename T, class FDerivative>
void ActivateBackward(int64_t n, FDerivative f_derivative, const T* x,
                      const T* d_y, T* d_x) {
  for (int64_t i = 0; i < n; ++i) d_x[i] = f_derivative(x[i]) * d_y[i];
}

// y[r, j] = x[r, j] * f(x[r, D + j]). x: [rows, 2 D] and y: [rows, D], both
// contiguous.
template <typename T, class F>
void Glu(int64_t rows, int64_t d, F f, const T* x, T* y) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < d; ++j) {
      y[r * d + j] = x[r * 2 * d + j] * f(x[r * 2 * d + d + j]);
    }
  }
}

// d_x[r, j] = d_y[r, j] * f(gate); d_x[r, D + j] = d_y[r, j] * value *
// f'(gate), with (value, gate) = (x[r, j], x[r, D + j]).
template <typename T, class F, class FDerivative>
void GluBackward(int64_t rows, int64_t d, F f, FDerivative f_derivative,
                 const T* x, const T* d_y, T* d_x) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < d; ++j) {
      const T value = x[r * 2 * d + j];
      const T gate = x[r * 2 * d + d + j];
      const T g = d_y[r * d + j];
      d_x[r * 2 * d + j] = g * f(gate);
      d_x[r * 2 * d + d + j] = g * value * f_derivative(gate);
    }
  }
}

}  // namespace ftx::reference

#endif  // FTX_KERNELS_REFERENCE_ACTIVATION_REF_H_
