// CUDA kernels of kernels/elementwise: one thread per element over a 2-D grid-stride
// loop; reductions use a block tree then one atomicAdd per block.
#include "kernels/elementwise/elementwise_cuda.h"

#include <cuda_runtime.h>

namespace ftx::cuda {
namespace {

constexpr int kThreads = 256;

dim3 GridFor(int64_t rows, int64_t cols) {
  const int64_t blocks_x = (cols + kThreads - 1) / kThreads;
  const int64_t blocks_y = rows < 65535 ? rows : 65535;
  return dim3(static_cast<unsigned>(blocks_x < 65535 ? blocks_x : 65535),
              static_cast<unsigned>(blocks_y > 0 ? blocks_y : 1));
}

template <class Body>
__device__ void ForEachElement(int64_t rows, int64_t cols, Body body) {
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
         c < cols; c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      body(r, c);
    }
  }
}

__global__ void BinaryKernel(ElementwiseBinaryOp op, int64_t rows, int64_t cols,
                             ConstDeviceRows x, ConstDeviceRows y, DeviceRows out) {
  ForEachElement(rows, cols, [&](int64_t r, int64_t c) {
    const float a = x.data[r * x.stride + c];
    const float b = y.data[r * y.stride + c];
    out.data[r * out.stride + c] = op == ElementwiseBinaryOp::kAdd ? a + b : a * b;
  });
}

__global__ void MulBackwardKernel(int64_t rows, int64_t cols, ConstDeviceRows x,
                                  ConstDeviceRows y, ConstDeviceRows d_out,
                                  DeviceRows d_x, DeviceRows d_y) {
  ForEachElement(rows, cols, [&](int64_t r, int64_t c) {
    const float g = d_out.data[r * d_out.stride + c];
    const float a = x.data[r * x.stride + c];
    const float b = y.data[r * y.stride + c];
    d_x.data[r * d_x.stride + c] = g * b;
    d_y.data[r * d_y.stride + c] = g * a;
  });
}

__global__ void ScaleAddKernel(int64_t rows, int64_t cols, float alpha,
                               ConstDeviceRows x, float beta, DeviceRows out) {
  ForEachElement(rows, cols, [&](int64_t r, int64_t c) {
    float* o = out.data + r * out.stride + c;
    const float scaled = alpha * x.data[r * x.stride + c];
    *o = beta == 0.0f ? scaled : scaled + beta * *o;
  });
}

__global__ void ScaleBackwardKernel(int64_t rows, int64_t cols, float alpha,
                                    ConstDeviceRows x, ConstDeviceRows d_out,
                                    DeviceRows d_x, float* d_alpha) {
  __shared__ float partial[kThreads];
  float sum = 0.0f;
  ForEachElement(rows, cols, [&](int64_t r, int64_t c) {
    const float g = d_out.data[r * d_out.stride + c];
    sum += x.data[r * x.stride + c] * g;
    d_x.data[r * d_x.stride + c] = alpha * g;
  });
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (int width = kThreads / 2; width > 0; width /= 2) {
    if (threadIdx.x < width) partial[threadIdx.x] += partial[threadIdx.x + width];
    __syncthreads();
  }
  if (threadIdx.x == 0) atomicAdd(d_alpha, partial[0]);
}

__global__ void AddBiasKernel(int64_t rows, int64_t cols, ConstDeviceRows x,
                              const float* bias, DeviceRows out) {
  ForEachElement(rows, cols, [&](int64_t r, int64_t c) {
    out.data[r * out.stride + c] = x.data[r * x.stride + c] + bias[c];
  });
}

__global__ void AddBiasBackwardKernel(int64_t rows, int64_t cols, ConstDeviceRows d_out,
                                      float* d_bias) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  float sum = 0.0f;
  for (int64_t r = 0; r < rows; ++r) sum += d_out.data[r * d_out.stride + c];
  d_bias[c] += sum;
}

cudaStream_t AsStream(void* stream) { return static_cast<cudaStream_t>(stream); }

}  // namespace

int LaunchBinary(ElementwiseBinaryOp op, int64_t rows, int64_t cols, ConstDeviceRows x,
                 ConstDeviceRows y, DeviceRows out, void* stream) {
  if (rows == 0 || cols == 0) return cudaSuccess;
  BinaryKernel<<<GridFor(rows, cols), kThreads, 0, AsStream(stream)>>>(op, rows, cols,
                                                                       x, y, out);
  return cudaGetLastError();
}

int LaunchMulBackward(int64_t rows, int64_t cols, ConstDeviceRows x, ConstDeviceRows y,
                      ConstDeviceRows d_out, DeviceRows d_x, DeviceRows d_y,
                      void* stream) {
  if (rows == 0 || cols == 0) return cudaSuccess;
  MulBackwardKernel<<<GridFor(rows, cols), kThreads, 0, AsStream(stream)>>>(
      rows, cols, x, y, d_out, d_x, d_y);
  return cudaGetLastError();
}

int LaunchScaleAdd(int64_t rows, int64_t cols, float alpha, ConstDeviceRows x,
                   float beta, DeviceRows out, void* stream) {
  if (rows == 0 || cols == 0) return cudaSuccess;
  ScaleAddKernel<<<GridFor(rows, cols), kThreads, 0, AsStream(stream)>>>(
      rows, cols, alpha, x, beta, out);
  return cudaGetLastError();
}

int LaunchScaleBackward(int64_t rows, int64_t cols, float alpha, ConstDeviceRows x,
                        ConstDeviceRows d_out, DeviceRows d_x, float* d_alpha,
                        void* stream) {
  if (rows == 0 || cols == 0) return cudaSuccess;
  ScaleBackwardKernel<<<GridFor(rows, cols), kThreads, 0, AsStream(stream)>>>(
      rows, cols, alpha, x, d_out, d_x, d_alpha);
  return cudaGetLastError();
}

int LaunchAddBias(int64_t rows, int64_t cols, ConstDeviceRows x, const float* bias,
                  DeviceRows out, void* stream) {
  if (rows == 0 || cols == 0) return cudaSuccess;
  AddBiasKernel<<<GridFor(rows, cols), kThreads, 0, AsStream(stream)>>>(rows, cols, x,
                                                                        bias, out);
  return cudaGetLastError();
}

int LaunchAddBiasBackward(int64_t rows, int64_t cols, ConstDeviceRows d_out,
                          float* d_bias, void* stream) {
  if (rows == 0 || cols == 0) return cudaSuccess;
  const unsigned blocks = static_cast<unsigned>((cols + kThreads - 1) / kThreads);
  AddBiasBackwardKernel<<<blocks, kThreads, 0, AsStream(stream)>>>(rows, cols, d_out,
                                                                   d_bias);
  return cudaGetLastError();
}

}  // namespace ftx::cuda
