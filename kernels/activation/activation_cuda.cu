// CUDA kernels of kernels/activation: one thread per element over a 2-D
// grid-stride loop, each kernel instantiated per activation so the choice is
// made once per launch. Same numerics as the Highway version: σ from
// e = exp(-|y|) (no overflow, no 1 - σ cancellation), gelu_tanh as x σ(2 u),
// gelu with normcdff (= 0.5 erfc(-x / √2), accurate in the lower tail).
#include <cuda_runtime.h>

#include <type_traits>

#include "kernels/activation/activation_cuda.h"

namespace ftx::cuda {
namespace {

constexpr int kThreads = 256;
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;   // 1 / √(2π)
constexpr double kSqrt2OverPi = 0.79788456080286535588;  // √(2/π)
constexpr double kGeluTanhCubic = 0.044715;

// σ(y) given e = exp(-|y|).
__device__ float SigmoidFromExp(float y, float e) {
  const float r = 1.0f / (1.0f + e);
  return y >= 0.0f ? r : e * r;
}

// σ'(y) = e / (1 + e)² given e = exp(-|y|).
__device__ float SigmoidDerivativeFromExp(float e) {
  const float r = 1.0f / (1.0f + e);
  return e * r * r;
}

template <ActivationKind kKind>
struct Activation;

template <>
struct Activation<ActivationKind::kIdentity> {
  __device__ static float Value(float x) { return x; }
  __device__ static float Derivative(float) { return 1.0f; }
};

// relu'(0) = 0, as PyTorch.
template <>
struct Activation<ActivationKind::kRelu> {
  __device__ static float Value(float x) { return x > 0.0f ? x : 0.0f; }
  __device__ static float Derivative(float x) { return x > 0.0f ? 1.0f : 0.0f; }
};

// x Φ(x); derivative Φ(x) + x φ(x).
template <>
struct Activation<ActivationKind::kGelu> {
  __device__ static float Value(float x) { return x * normcdff(x); }
  __device__ static float Derivative(float x) {
    return normcdff(x) + x * expf(-0.5f * x * x) * kInvSqrt2Pi;
  }
};

// x σ(2 u), u = √(2/π) (x + 0.044715 x³), with x clamped to ±12 inside u
// (where σ(2 u) is already exactly 0 or 1).
template <>
struct Activation<ActivationKind::kGeluTanh> {
  __device__ static float Clamp(float x) {
    return fminf(fmaxf(x, -12.0f), 12.0f);
  }
  __device__ static float TwoU(float x) {
    return x * (static_cast<float>(2 * kSqrt2OverPi) +
                static_cast<float>(2 * kSqrt2OverPi * kGeluTanhCubic) * x * x);
  }
  __device__ static float Value(float x) {
    const float two_u = TwoU(Clamp(x));
    return x * SigmoidFromExp(two_u, expf(-fabsf(two_u)));
  }
  __device__ static float Derivative(float x) {
    const float clamped = Clamp(x);
    const float two_u = TwoU(clamped);
    const float e = expf(-fabsf(two_u));
    const float two_du = static_cast<float>(2 * kSqrt2OverPi) +
                         static_cast<float>(6 * kSqrt2OverPi * kGeluTanhCubic) *
                             clamped * clamped;
    return SigmoidFromExp(two_u, e) +
           clamped * SigmoidDerivativeFromExp(e) * two_du;
  }
};

template <>
struct Activation<ActivationKind::kSilu> {
  __device__ static float Value(float x) {
    return x * SigmoidFromExp(x, expf(-fabsf(x)));
  }
  __device__ static float Derivative(float x) {
    const float e = expf(-fabsf(x));
    return SigmoidFromExp(x, e) + x * SigmoidDerivativeFromExp(e);
  }
};

// Derivative exp(x) for x <= 0 (1 at 0, as PyTorch's elu backward).
template <>
struct Activation<ActivationKind::kEluPlusOne> {
  __device__ static float Value(float x) {
    return x > 0.0f ? x + 1.0f : expf(x);
  }
  __device__ static float Derivative(float x) {
    return x > 0.0f ? 1.0f : expf(x);
  }
};

template <>
struct Activation<ActivationKind::kReluSquared> {
  __device__ static float Value(float x) { return x > 0.0f ? x * x : 0.0f; }
  __device__ static float Derivative(float x) {
    return x > 0.0f ? 2.0f * x : 0.0f;
  }
};

template <>
struct Activation<ActivationKind::kSigmoid> {
  __device__ static float Value(float x) {
    return SigmoidFromExp(x, expf(-fabsf(x)));
  }
  __device__ static float Derivative(float x) {
    return SigmoidDerivativeFromExp(expf(-fabsf(x)));
  }
};

// tanh'(x) = 4 σ'(2 x).
template <>
struct Activation<ActivationKind::kTanh> {
  __device__ static float Value(float x) { return tanhf(x); }
  __device__ static float Derivative(float x) {
    return 4.0f * SigmoidDerivativeFromExp(expf(-2.0f * fabsf(x)));
  }
};

dim3 GridFor(int64_t rows, int64_t cols) {
  const int64_t blocks_x = (cols + kThreads - 1) / kThreads;
  const int64_t blocks_y = rows < 65535 ? rows : 65535;
  return dim3(static_cast<unsigned>(blocks_x < 65535 ? blocks_x : 65535),
              static_cast<unsigned>(blocks_y > 0 ? blocks_y : 1));
}

template <class Body>
__device__ void ForEachElement(int64_t rows, int64_t cols, Body body) {
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    for (int64_t c =
             static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
         c < cols; c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      body(r, c);
    }
  }
}

template <ActivationKind kKind>
__global__ void ActivateKernel(int64_t rows, int64_t cols, const float* x,
                               int64_t x_stride, float* y, int64_t y_stride) {
  ForEachElement(rows, cols, [&](int64_t r, int64_t c) {
    y[r * y_stride + c] = Activation<kKind>::Value(x[r * x_stride + c]);
  });
}

template <ActivationKind kKind>
__global__ void ActivateBackwardKernel(int64_t rows, int64_t cols,
                                       const float* x, int64_t x_stride,
                                       const float* d_y, int64_t d_y_stride,
                                       float* d_x, int64_t d_x_stride) {
  ForEachElement(rows, cols, [&](int64_t r, int64_t c) {
    d_x[r * d_x_stride + c] =
        Activation<kKind>::Derivative(x[r * x_stride + c]) *
        d_y[r * d_y_stride + c];
  });
}

template <ActivationKind kKind>
__global__ void GluKernel(int64_t rows, int64_t half, const float* x,
                          int64_t x_stride, float* y, int64_t y_stride) {
  ForEachElement(rows, half, [&](int64_t r, int64_t c) {
    const float* row = x + r * x_stride;
    y[r * y_stride + c] = row[c] * Activation<kKind>::Value(row[half + c]);
  });
}

// Each thread reads value and gate before writing, so d_x may alias x.
template <ActivationKind kKind>
__global__ void GluBackwardKernel(int64_t rows, int64_t half, const float* x,
                                  int64_t x_stride, const float* d_y,
                                  int64_t d_y_stride, float* d_x,
                                  int64_t d_x_stride) {
  ForEachElement(rows, half, [&](int64_t r, int64_t c) {
    const float value = x[r * x_stride + c];
    const float gate = x[r * x_stride + half + c];
    const float grad = d_y[r * d_y_stride + c];
    float* d_row = d_x + r * d_x_stride;
    d_row[c] = grad * Activation<kKind>::Value(gate);
    d_row[half + c] = grad * value * Activation<kKind>::Derivative(gate);
  });
}

template <ActivationKind kKind>
using KindConstant = std::integral_constant<ActivationKind, kKind>;

// Calls launch(KindConstant<kind>()) so kernels are instantiated per kind.
template <class Launch>
int WithKind(ActivationKind kind, Launch launch) {
  switch (kind) {
    case ActivationKind::kIdentity:
      return launch(KindConstant<ActivationKind::kIdentity>());
    case ActivationKind::kRelu:
      return launch(KindConstant<ActivationKind::kRelu>());
    case ActivationKind::kGelu:
      return launch(KindConstant<ActivationKind::kGelu>());
    case ActivationKind::kGeluTanh:
      return launch(KindConstant<ActivationKind::kGeluTanh>());
    case ActivationKind::kSilu:
      return launch(KindConstant<ActivationKind::kSilu>());
    case ActivationKind::kEluPlusOne:
      return launch(KindConstant<ActivationKind::kEluPlusOne>());
    case ActivationKind::kReluSquared:
      return launch(KindConstant<ActivationKind::kReluSquared>());
    case ActivationKind::kSigmoid:
      return launch(KindConstant<ActivationKind::kSigmoid>());
    case ActivationKind::kTanh:
      return launch(KindConstant<ActivationKind::kTanh>());
  }
  return cudaErrorInvalidValue;
}

cudaStream_t AsStream(void* stream) {
  return static_cast<cudaStream_t>(stream);
}

}  // namespace

int LaunchActivate(ActivationKind kind, int64_t rows, int64_t cols,
                   const float* x, int64_t x_stride, float* y, int64_t y_stride,
                   void* stream) {
  if (rows == 0 || cols == 0) return cudaSuccess;
  return WithKind(kind, [&](auto kind_constant) {
    ActivateKernel<decltype(kind_constant)::value>
        <<<GridFor(rows, cols), kThreads, 0, AsStream(stream)>>>(
            rows, cols, x, x_stride, y, y_stride);
    return static_cast<int>(cudaGetLastError());
  });
}

int LaunchActivateBackward(ActivationKind kind, int64_t rows, int64_t cols,
                           const float* x, int64_t x_stride, const float* d_y,
                           int64_t d_y_stride, float* d_x, int64_t d_x_stride,
                           void* stream) {
  if (rows == 0 || cols == 0) return cudaSuccess;
  return WithKind(kind, [&](auto kind_constant) {
    ActivateBackwardKernel<decltype(kind_constant)::value>
        <<<GridFor(rows, cols), kThreads, 0, AsStream(stream)>>>(
            rows, cols, x, x_stride, d_y, d_y_stride, d_x, d_x_stride);
    return static_cast<int>(cudaGetLastError());
  });
}

int LaunchGlu(ActivationKind gate_kind, int64_t rows, int64_t half,
              const float* x, int64_t x_stride, float* y, int64_t y_stride,
              void* stream) {
  if (rows == 0 || half == 0) return cudaSuccess;
  return WithKind(gate_kind, [&](auto kind_constant) {
    GluKernel<decltype(kind_constant)::value>
        <<<GridFor(rows, half), kThreads, 0, AsStream(stream)>>>(
            rows, half, x, x_stride, y, y_stride);
    return static_cast<int>(cudaGetLastError());
  });
}

int LaunchGluBackward(ActivationKind gate_kind, int64_t rows, int64_t half,
                      const float* x, int64_t x_stride, const float* d_y,
                      int64_t d_y_stride, float* d_x, int64_t d_x_stride,
                      void* stream) {
  if (rows == 0 || half == 0) return cudaSuccess;
  return WithKind(gate_kind, [&](auto kind_constant) {
    GluBackwardKernel<decltype(kind_constant)::value>
        <<<GridFor(rows, half), kThreads, 0, AsStream(stream)>>>(
            rows, half, x, x_stride, d_y, d_y_stride, d_x, d_x_stride);
    return static_cast<int>(cudaGetLastError());
  });
}

}  // namespace ftx::cuda
