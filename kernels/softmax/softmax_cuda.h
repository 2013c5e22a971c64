// CUDA launchers of kernels/softmax. POD arguments only (no CUDA headers), so
// the façade includes this without nvcc; each returns a cudaError_t as int
// (0 = success). Matrices are device pointers with rows `stride` elements
// apart; the last axis is contiguous.
#ifndef FTX_KERNELS_SOFTMAX_SOFTMAX_CUDA_H_
#define FTX_KERNELS_SOFTMAX_SOFTMAX_CUDA_H_

#include <cstdint>

namespace ftx::cuda {

// Same values as cpu::SoftmaxKind.
enum class SoftmaxKind : int { kSoftmax = 0, kLogSoftmax = 1 };

// y[r, :] = (log-)softmax(scale * x[r, :] + mask[r % mask_rows, :]) for
// x, y: [rows, cols]; mask: [mask_rows, cols] or null. y may be x.
int LaunchSoftmaxForward(SoftmaxKind kind, int64_t rows, int64_t cols,
                         const float* x, int64_t x_stride, float scale,
                         const float* mask, int64_t mask_rows,
                         int64_t mask_stride, float* y, int64_t y_stride,
                         void* stream);

// Softmax:    d_x = scale * y * (d_y - sum(d_y * y)) row-wise.
// LogSoftmax: d_x = scale * (d_y - exp(y) * sum(d_y)) row-wise.
// d_x may alias d_y or y.
int LaunchSoftmaxBackward(SoftmaxKind kind, int64_t rows, int64_t cols,
                          const float* y, int64_t y_stride, const float* d_y,
                          int64_t d_y_stride, float scale, float* d_x,
                          int64_t d_x_stride, void* stream);

}  // namespace ftx::cuda

#endif  // FTX_KERNELS_SOFTMAX_SOFTMAX_CUDA_H_
