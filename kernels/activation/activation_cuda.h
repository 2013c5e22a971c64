// CUDA launchers of kernels/activation. POD arguments only (no CUDA headers),
// so the façade includes this without nvcc; each returns a cudaError_t as int
// (0 = success). Matrices are rows of `cols` floats, `*_stride` elements apart,
// in device memory.
#ifndef FTX_KERNELS_ACTIVATION_ACTIVATION_CUDA_H_
#define FTX_KERNELS_ACTIVATION_ACTIVATION_CUDA_H_

#include <cstdint>

namespace ftx::cuda {

// Same values as ftx::Activation and cpu::ActivationKind.
enum class ActivationKind : int {
  kIdentity = 0,
  kRelu = 1,
  kGelu = 2,
  kGeluTanh = 3,
  kSilu = 4,
  kEluPlusOne = 5,
  kReluSquared = 6,
  kSigmoid = 7,
  kTanh = 8,
};

// y = f(x); y may alias x.
int LaunchActivate(ActivationKind kind, int64_t rows, int64_t cols,
                   const float* x, int64_t x_stride, float* y, int64_t y_stride,
                   void* stream);
// d_x = f'(x) * d_y; d_x may alias d_y.
int LaunchActivateBackward(ActivationKind kind, int64_t rows, int64_t cols,
                           const float* x, int64_t x_stride, const float* d_y,
                           int64_t d_y_stride, float* d_x, int64_t d_x_stride,
                           void* stream);
// x: [rows, 2 half]; y: [rows, half] = x[:, :half] * f(x[:, half:]).
int LaunchGlu(ActivationKind gate_kind, int64_t rows, int64_t half,
              const float* x, int64_t x_stride, float* y, int64_t y_stride,
              void* stream);
// d_x[:, :half] = d_y * f(gate); d_x[:, half:] = d_y * value * f'(gate).
// d_x may alias x.
int LaunchGluBackward(ActivationKind gate_kind, int64_t rows, int64_t half,
                      const float* x, int64_t x_stride, const float* d_y,
                      int64_t d_y_stride, float* d_x, int64_t d_x_stride,
                      void* stream);

}  // namespace ftx::cuda

#endif  // FTX_KERNELS_ACTIVATION_ACTIVATION_CUDA_H_
