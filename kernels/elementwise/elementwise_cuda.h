// CUDA launchers of kernels/elementwise. POD arguments only (no CUDA headers),
// so the façade includes this without nvcc; each returns a cudaError_t as int
// (0 = success).
#ifndef FTX_KERNELS_ELEMENTWISE_ELEMENTWISE_CUDA_H_
#define FTX_KERNELS_ELEMENTWISE_ELEMENTWISE_CUDA_H_

#include <cstdint>

namespace ftx::cuda {

// Rows of a matrix in device memory, `stride` elements apart.
struct DeviceRows {
  float* data;
  int64_t stride;
};
struct ConstDeviceRows {
  const float* data;
  int64_t stride;
};

enum class ElementwiseBinaryOp : int { kAdd = 0, kMul = 1 };

int LaunchBinary(ElementwiseBinaryOp op, int64_t rows, int64_t cols,
                 ConstDeviceRows x, ConstDeviceRows y, DeviceRows out,
                 void* stream);
int LaunchMulBackward(int64_t rows, int64_t cols, ConstDeviceRows x,
                      ConstDeviceRows y, ConstDeviceRows d_out, DeviceRows d_x,
                      DeviceRows d_y, void* stream);
// out = alpha * x + beta * out (beta = 0 never reads out).
int LaunchScaleAdd(int64_t rows, int64_t cols, float alpha, ConstDeviceRows x,
                   float beta, DeviceRows out, void* stream);
// d_x = alpha * d_out; *d_alpha += sum(x * d_out) (d_alpha in device memory).
int LaunchScaleBackward(int64_t rows, int64_t cols, float alpha,
                        ConstDeviceRows x, ConstDeviceRows d_out,
                        DeviceRows d_x, float* d_alpha, void* stream);
int LaunchAddBias(int64_t rows, int64_t cols, ConstDeviceRows x,
                  const float* bias, DeviceRows out, void* stream);
// d_bias[c] += sum_r d_out[r, c].
int LaunchAddBiasBackward(int64_t rows, int64_t cols, ConstDeviceRows d_out,
                          float* d_bias, void* stream);

}  // namespace ftx::cuda

#endif  // FTX_KERNELS_ELEMENTWISE_ELEMENTWISE_CUDA_H_
