// CUDA kernels of kernels/softmax: one block per row (grid-stride over rows),
// each thread owning the columns threadIdx.x + k * blockDim.x; row maxima and
// sums are reduced with warp shuffles and one shared value per warp.
#include <cuda_runtime.h>

#include <algorithm>

#include "kernels/softmax/softmax_cuda.h"

namespace ftx::cuda {
namespace {

constexpr int kWarpSize = 32;
constexpr int kMaxThreads = 512;
constexpr int64_t kMaxBlocks = 1 << 20;

struct MaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct SumOp {
  __device__ float operator()(float a, float b) const { return a + b; }
};

template <class Op>
__device__ float WarpReduce(float value, Op op) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    value = op(value, __shfl_xor_sync(0xffffffffu, value, offset));
  }
  return value;
}

// Reduces `value` over the block (blockDim.x a multiple of 32); every thread
// gets the result. `scratch` holds one value per warp.
template <class Op>
__device__ float BlockReduce(float value, Op op, float identity,
                             float* scratch) {
  value = WarpReduce(value, op);
  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  __syncthreads();  // the previous reduction may still read scratch
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  const int warps = blockDim.x / kWarpSize;
  return WarpReduce(lane < warps ? scratch[lane] : identity, op);
}

__device__ float Logit(const float* x_row, const float* mask_row, float scale,
                       int64_t c) {
  const float scaled = scale * x_row[c];
  return mask_row != nullptr ? scaled + mask_row[c] : scaled;
}

__global__ void SoftmaxForwardKernel(SoftmaxKind kind, int64_t rows,
                                     int64_t cols, const float* x,
                                     int64_t x_stride, float scale,
                                     const float* mask, int64_t mask_rows,
                                     int64_t mask_stride, float* y,
                                     int64_t y_stride) {
  __shared__ float scratch[kWarpSize];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float* x_row = x + r * x_stride;
    const float* mask_row =
        mask != nullptr ? mask + (r % mask_rows) * mask_stride : nullptr;
    float* y_row = y + r * y_stride;

    float row_max = -INFINITY;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      row_max = fmaxf(row_max, Logit(x_row, mask_row, scale, c));
    }
    row_max = BlockReduce(row_max, MaxOp(), -INFINITY, scratch);
    if (row_max == -INFINITY) {  // fully masked; the same in every thread
      const float fill = kind == SoftmaxKind::kSoftmax ? 0.0f : -INFINITY;
      for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) y_row[c] = fill;
      continue;
    }

    float sum = 0.0f;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      const float e = expf(Logit(x_row, mask_row, scale, c) - row_max);
      if (kind == SoftmaxKind::kSoftmax) y_row[c] = e;
      sum += e;
    }
    sum = BlockReduce(sum, SumOp(), 0.0f, scratch);

    if (kind == SoftmaxKind::kSoftmax) {
      const float inverse = 1.0f / sum;
      for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
        y_row[c] *= inverse;
      }
    } else {
      const float log_sum = logf(sum);
      for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
        y_row[c] = (Logit(x_row, mask_row, scale, c) - row_max) - log_sum;
      }
    }
  }
}

__global__ void SoftmaxBackwardKernel(SoftmaxKind kind, int64_t rows,
                                      int64_t cols, const float* y,
                                      int64_t y_stride, const float* d_y,
                                      int64_t d_y_stride, float scale,
                                      float* d_x, int64_t d_x_stride) {
  __shared__ float scratch[kWarpSize];
  const bool is_softmax = kind == SoftmaxKind::kSoftmax;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float* y_row = y + r * y_stride;
    const float* d_y_row = d_y + r * d_y_stride;
    float* d_x_row = d_x + r * d_x_stride;
    // Softmax needs sum(d_y * y), log-softmax sum(d_y).
    float partial = 0.0f;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      partial += is_softmax ? d_y_row[c] * y_row[c] : d_y_row[c];
    }
    const float total = BlockReduce(partial, SumOp(), 0.0f, scratch);
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      d_x_row[c] = is_softmax ? scale * y_row[c] * (d_y_row[c] - total)
                              : scale * (d_y_row[c] - expf(y_row[c]) * total);
    }
  }
}

// Enough whole warps to cover a row once, at most kMaxThreads.
int ThreadsFor(int64_t cols) {
  const int64_t warps = (cols + kWarpSize - 1) / kWarpSize;
  return static_cast<int>(std::min<int64_t>(warps, kMaxThreads / kWarpSize)) *
         kWarpSize;
}

unsigned BlocksFor(int64_t rows) {
  return static_cast<unsigned>(std::min(rows, kMaxBlocks));
}

cudaStream_t AsStream(void* stream) {
  return static_cast<cudaStream_t>(stream);
}

}  // namespace

int LaunchSoftmaxForward(SoftmaxKind kind, int64_t rows, int64_t cols,
                         const float* x, int64_t x_stride, float scale,
                         const float* mask, int64_t mask_rows,
                         int64_t mask_stride, float* y, int64_t y_stride,
                         void* stream) {
  if (rows == 0 || cols == 0) return cudaSuccess;
  SoftmaxForwardKernel<<<BlocksFor(rows), ThreadsFor(cols), 0,
                         AsStream(stream)>>>(kind, rows, cols, x, x_stride,
                                             scale, mask, mask_rows,
                                             mask_stride, y, y_stride);
  return cudaGetLastError();
}

int LaunchSoftmaxBackward(SoftmaxKind kind, int64_t rows, int64_t cols,
                          const float* y, int64_t y_stride, const float* d_y,
                          int64_t d_y_stride, float scale, float* d_x,
                          int64_t d_x_stride, void* stream) {
  if (rows == 0 || cols == 0) return cudaSuccess;
  SoftmaxBackwardKernel<<<BlocksFor(rows), ThreadsFor(cols), 0,
                          AsStream(stream)>>>(
      kind, rows, cols, y, y_stride, d_y, d_y_stride, scale, d_x, d_x_stride);
  return cudaGetLastError();
}

}  // namespace ftx::cuda
