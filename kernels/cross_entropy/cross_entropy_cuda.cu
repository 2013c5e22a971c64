// CUDA kernels of kernels/cross_entropy: one block per row (grid-stride over
// rows), each thread owning the columns threadIdx.x + k * blockDim.x; row
// maxima and sums are reduced with warp shuffles and one shared value per
// warp, in a fixed order (deterministic).
#include <cuda_runtime.h>

#include <algorithm>

#include "kernels/cross_entropy/cross_entropy_cuda.h"

namespace ftx::cuda {
namespace {

constexpr int kWarpSize = 32;
constexpr int kMaxThreads = 512;
constexpr int64_t kMaxBlocks = 1 << 20;

struct MaxOp {
  template <typename T>
  __device__ T operator()(T a, T b) const {
    return a > b ? a : b;
  }
};
struct SumOp {
  template <typename T>
  __device__ T operator()(T a, T b) const {
    return a + b;
  }
};

template <typename T, class Op>
__device__ T WarpReduce(T value, Op op) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    value = op(value, __shfl_xor_sync(0xffffffffu, value, offset));
  }
  return value;
}

// Reduces `value` over the block (blockDim.x a multiple of 32); every thread
// gets the result. `scratch` holds one value per warp.
template <typename T, class Op>
__device__ T BlockReduce(T value, Op op, T identity, T* scratch) {
  value = WarpReduce(value, op);
  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  __syncthreads();  // the previous reduction may still read scratch
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  const int warps = blockDim.x / kWarpSize;
  return WarpReduce(lane < warps ? scratch[lane] : identity, op);
}

// max(row[0, cols)) over the block; -inf for an empty row. fmaxf skips NaN,
// so a NaN logit shows up through the sums instead.
__device__ float RowMax(const float* row, int64_t cols, float* scratch) {
  float row_max = -INFINITY;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    row_max = fmaxf(row_max, row[c]);
  }
  return BlockReduce(row_max, MaxOp(), -INFINITY, scratch);
}

__global__ void CrossEntropyForwardKernel(
    int64_t rows, int64_t cols, const float* logits, int64_t logits_stride,
    const int32_t* targets, int32_t ignore_index, float label_smoothing,
    float* losses, float* probabilities, int64_t probabilities_stride) {
  __shared__ float scratch[kWarpSize];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int32_t target = targets[r];
    const bool ignored = target == ignore_index;
    if (ignored && probabilities == nullptr) {
      if (threadIdx.x == 0) losses[r] = 0.0f;
      continue;
    }
    const float* row = logits + r * logits_stride;
    float* probabilities_row = probabilities != nullptr
                                   ? probabilities + r * probabilities_stride
                                   : nullptr;
    // Read before the reductions' barriers, after which probabilities (which
    // may be logits) are written.
    const float target_logit = ignored ? 0.0f : row[target];
    const float row_max = RowMax(row, cols, scratch);

    float sum_exp = 0.0f;
    float sum_shifted = 0.0f;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      const float shifted = row[c] - row_max;
      const float e = expf(shifted);
      if (probabilities_row != nullptr) probabilities_row[c] = e;
      sum_exp += e;
      sum_shifted += shifted;
    }
    sum_exp = BlockReduce(sum_exp, SumOp(), 0.0f, scratch);
    sum_shifted = BlockReduce(sum_shifted, SumOp(), 0.0f, scratch);

    if (probabilities_row != nullptr) {
      const float inverse = 1.0f / sum_exp;
      for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
        probabilities_row[c] *= inverse;
      }
    }
    if (threadIdx.x == 0) {
      float loss = 0.0f;
      if (!ignored) {
        const double log_sum = log(static_cast<double>(sum_exp));
        const double eps = label_smoothing;
        double value = (1.0 - eps) *
                       (log_sum - static_cast<double>(target_logit - row_max));
        if (label_smoothing > 0.0f) {
          value += eps * (log_sum - static_cast<double>(sum_shifted) /
                                        static_cast<double>(cols));
        }
        loss = static_cast<float>(value);
      }
      losses[r] = loss;
    }
  }
}

__global__ void CrossEntropyBackwardKernel(
    int64_t rows, int64_t cols, const float* logits, int64_t logits_stride,
    const int32_t* targets, int32_t ignore_index, float label_smoothing,
    const float* d_losses, float* d_logits, int64_t d_logits_stride) {
  __shared__ float scratch[kWarpSize];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int32_t target = targets[r];
    float* d_row = d_logits + r * d_logits_stride;
    if (target == ignore_index) {
      for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) d_row[c] = 0.0f;
      continue;
    }
    const float* row = logits + r * logits_stride;
    const float row_max = RowMax(row, cols, scratch);
    float sum_exp = 0.0f;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      sum_exp += expf(row[c] - row_max);
    }
    sum_exp = BlockReduce(sum_exp, SumOp(), 0.0f, scratch);

    const float d_loss = d_losses[r];
    const float scale = d_loss / sum_exp;
    const float offset =
        static_cast<float>(static_cast<double>(d_loss) * label_smoothing /
                           static_cast<double>(cols));
    const float target_term = static_cast<float>(static_cast<double>(d_loss) *
                                                 (1.0 - label_smoothing));
    // Each thread reads row[c] before writing d_row[c] for its own columns
    // only, so d_logits may be logits.
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      float gradient = scale * expf(row[c] - row_max) - offset;
      if (c == target) gradient -= target_term;
      d_row[c] = gradient;
    }
  }
}

__global__ void MeanLossKernel(int64_t rows, const float* losses,
                               const int32_t* targets, int32_t ignore_index,
                               float* mean, float* d_losses) {
  __shared__ double scratch[kWarpSize];
  double sum = 0.0;
  double count = 0.0;
  for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) {
    if (targets[r] == ignore_index) continue;
    sum += losses[r];
    count += 1.0;
  }
  sum = BlockReduce(sum, SumOp(), 0.0, scratch);
  count = BlockReduce(count, SumOp(), 0.0, scratch);
  const float weight = count > 0.0 ? static_cast<float>(1.0 / count) : 0.0f;
  for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) {
    d_losses[r] = targets[r] == ignore_index ? 0.0f : weight;
  }
  if (threadIdx.x == 0) {
    *mean = count > 0.0 ? static_cast<float>(sum / count) : 0.0f;
  }
}

// Enough whole warps to cover a row once (at least one), at most kMaxThreads.
int ThreadsFor(int64_t cols) {
  const int64_t warps =
      std::max<int64_t>((cols + kWarpSize - 1) / kWarpSize, 1);
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

int CopyTargetsToHost(int64_t rows, const int32_t* targets,
                      int32_t* host_targets, void* stream) {
  if (rows == 0) return cudaSuccess;
  const cudaError_t error =
      cudaMemcpyAsync(host_targets, targets, rows * sizeof(int32_t),
                      cudaMemcpyDeviceToHost, AsStream(stream));
  if (error != cudaSuccess) return error;
  return cudaStreamSynchronize(AsStream(stream));
}

int LaunchCrossEntropyForward(int64_t rows, int64_t cols, const float* logits,
                              int64_t logits_stride, const int32_t* targets,
                              int32_t ignore_index, float label_smoothing,
                              float* losses, float* probabilities,
                              int64_t probabilities_stride, void* stream) {
  if (rows == 0) return cudaSuccess;
  CrossEntropyForwardKernel<<<BlocksFor(rows), ThreadsFor(cols), 0,
                              AsStream(stream)>>>(
      rows, cols, logits, logits_stride, targets, ignore_index, label_smoothing,
      losses, probabilities, probabilities_stride);
  return cudaGetLastError();
}

int LaunchCrossEntropyBackward(int64_t rows, int64_t cols, const float* logits,
                               int64_t logits_stride, const int32_t* targets,
                               int32_t ignore_index, float label_smoothing,
                               const float* d_losses, float* d_logits,
                               int64_t d_logits_stride, void* stream) {
  if (rows == 0 || cols == 0) return cudaSuccess;
  CrossEntropyBackwardKernel<<<BlocksFor(rows), ThreadsFor(cols), 0,
                               AsStream(stream)>>>(
      rows, cols, logits, logits_stride, targets, ignore_index, label_smoothing,
      d_losses, d_logits, d_logits_stride);
  return cudaGetLastError();
}

int LaunchMeanLoss(int64_t rows, const float* losses, const int32_t* targets,
                   int32_t ignore_index, float* mean, float* d_losses,
                   void* stream) {
  MeanLossKernel<<<1, kMaxThreads, 0, AsStream(stream)>>>(
      rows, losses, targets, ignore_index, mean, d_losses);
  return cudaGetLastError();
}

}  // namespace ftx::cuda
