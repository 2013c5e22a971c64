// CUDA kernels of kernels/layernorm. The forward and the input gradient run
// one block per row (grid-stride over rows), each thread owning the columns
// threadIdx.x + k * blockDim.x, with warp-shuffle block reductions. The
// parameter gradients run first, in 32-column by row-chunk tiles reduced in
// shared memory, then one atomicAdd per column and tile.
#include <cuda_runtime.h>

#include <algorithm>

#include "kernels/layernorm/layernorm_cuda.h"

namespace ftx::cuda {
namespace {

constexpr int kWarpSize = 32;
constexpr int kMaxThreads = 512;
constexpr int64_t kMaxBlocks = 1 << 20;

// Parameter-gradient tiles: kWarpSize columns by kTileRowLanes threads that
// stride over a chunk of rows.
constexpr int kTileRowLanes = 8;
constexpr int64_t kMinRowsPerChunk = 64;
constexpr int64_t kTargetTiles = 1024;
constexpr int64_t kMaxRowChunks = 65535;

__device__ float WarpSum(float value) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    value += __shfl_xor_sync(0xffffffffu, value, offset);
  }
  return value;
}

// Sums `value` over the block (blockDim.x a multiple of 32); every thread gets
// the result. `scratch` holds one value per warp.
__device__ float BlockSum(float value, float* scratch) {
  value = WarpSum(value);
  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  __syncthreads();  // the previous reduction may still read scratch
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  const int warps = blockDim.x / kWarpSize;
  return WarpSum(lane < warps ? scratch[lane] : 0.0f);
}

// Two passes around shift = x[0] (see LayerNormRow in layernorm-inl.h): an
// estimate of mean - shift, then centred sums that correct it.
__global__ void LayerNormForwardKernel(int64_t rows, int64_t cols,
                                       const float* x, int64_t x_stride,
                                       const float* gamma, const float* beta,
                                       float eps, float* y, int64_t y_stride,
                                       float* mean, float* rstd) {
  __shared__ float scratch[kWarpSize];
  const float inverse_cols = 1.0f / static_cast<float>(cols);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float* x_row = x + r * x_stride;
    float* y_row = y + r * y_stride;
    const float shift = x_row[0];

    float shifted_sum = 0.0f;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      shifted_sum += x_row[c] - shift;
    }
    const float offset = BlockSum(shifted_sum, scratch) * inverse_cols;

    float sum = 0.0f, sum_of_squares = 0.0f;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      const float centered = (x_row[c] - shift) - offset;
      sum += centered;
      sum_of_squares += centered * centered;
    }
    const float correction = BlockSum(sum, scratch) * inverse_cols;
    const float variance =
        fmaxf(BlockSum(sum_of_squares, scratch) * inverse_cols -
                  correction * correction,
              0.0f);
    const float mean_minus_shift = offset + correction;
    const float row_rstd = 1.0f / sqrtf(variance + eps);
    if (threadIdx.x == 0) {
      if (mean != nullptr) mean[r] = shift + mean_minus_shift;
      if (rstd != nullptr) rstd[r] = row_rstd;
    }

    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      float value = ((x_row[c] - shift) - mean_minus_shift) * row_rstd;
      if (gamma != nullptr) value *= gamma[c];
      if (beta != nullptr) value += beta[c];
      y_row[c] = value;
    }
  }
}

// d_gamma[c] += sum_r d_y[r, c] * x_hat[r, c]; d_beta[c] += sum_r d_y[r, c]
// over the rows of chunk blockIdx.y and the columns of tile blockIdx.x.
__global__ void LayerNormParameterGradientKernel(
    int64_t rows, int64_t cols, int64_t rows_per_chunk, const float* x,
    int64_t x_stride, const float* mean, const float* rstd, const float* d_y,
    int64_t d_y_stride, float* d_gamma, float* d_beta) {
  __shared__ float gamma_partial[kTileRowLanes][kWarpSize];
  __shared__ float beta_partial[kTileRowLanes][kWarpSize];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kWarpSize + threadIdx.x;
  const int64_t row_begin = static_cast<int64_t>(blockIdx.y) * rows_per_chunk;
  const int64_t row_end =
      row_begin + rows_per_chunk < rows ? row_begin + rows_per_chunk : rows;
  float gamma_sum = 0.0f, beta_sum = 0.0f;
  if (c < cols) {
    for (int64_t r = row_begin + threadIdx.y; r < row_end; r += kTileRowLanes) {
      const float g = d_y[r * d_y_stride + c];
      gamma_sum += g * ((x[r * x_stride + c] - mean[r]) * rstd[r]);
      beta_sum += g;
    }
  }
  gamma_partial[threadIdx.y][threadIdx.x] = gamma_sum;
  beta_partial[threadIdx.y][threadIdx.x] = beta_sum;
  __syncthreads();
  if (threadIdx.y != 0 || c >= cols) return;
  for (int lane = 1; lane < kTileRowLanes; ++lane) {
    gamma_sum += gamma_partial[lane][threadIdx.x];
    beta_sum += beta_partial[lane][threadIdx.x];
  }
  if (d_gamma != nullptr) atomicAdd(d_gamma + c, gamma_sum);
  if (d_beta != nullptr) atomicAdd(d_beta + c, beta_sum);
}

// d_x = rstd * ((g - mean(g)) - x_hat * mean(g * x_hat)), g = d_y * gamma.
__global__ void LayerNormInputGradientKernel(
    int64_t rows, int64_t cols, const float* x, int64_t x_stride,
    const float* gamma, const float* mean, const float* rstd, const float* d_y,
    int64_t d_y_stride, float* d_x, int64_t d_x_stride) {
  __shared__ float scratch[kWarpSize];
  const float inverse_cols = 1.0f / static_cast<float>(cols);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float* x_row = x + r * x_stride;
    const float* d_y_row = d_y + r * d_y_stride;
    float* d_x_row = d_x + r * d_x_stride;
    const float row_mean = mean[r];
    const float row_rstd = rstd[r];

    float g_sum = 0.0f, g_x_hat_sum = 0.0f;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      const float g = gamma != nullptr ? d_y_row[c] * gamma[c] : d_y_row[c];
      g_sum += g;
      g_x_hat_sum += g * ((x_row[c] - row_mean) * row_rstd);
    }
    const float g_mean = BlockSum(g_sum, scratch) * inverse_cols;
    const float g_x_hat_mean = BlockSum(g_x_hat_sum, scratch) * inverse_cols;

    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      const float g = gamma != nullptr ? d_y_row[c] * gamma[c] : d_y_row[c];
      const float x_hat = (x_row[c] - row_mean) * row_rstd;
      d_x_row[c] = row_rstd * ((g - g_mean) - x_hat * g_x_hat_mean);
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

int LaunchLayerNormForward(int64_t rows, int64_t cols, const float* x,
                           int64_t x_stride, const float* gamma,
                           const float* beta, float eps, float* y,
                           int64_t y_stride, float* mean, float* rstd,
                           void* stream) {
  if (rows == 0 || cols == 0) return cudaSuccess;
  LayerNormForwardKernel<<<BlocksFor(rows), ThreadsFor(cols), 0,
                           AsStream(stream)>>>(
      rows, cols, x, x_stride, gamma, beta, eps, y, y_stride, mean, rstd);
  return cudaGetLastError();
}

int LaunchLayerNormBackward(int64_t rows, int64_t cols, const float* x,
                            int64_t x_stride, const float* gamma,
                            const float* mean, const float* rstd,
                            const float* d_y, int64_t d_y_stride, float* d_x,
                            int64_t d_x_stride, float* d_gamma, float* d_beta,
                            void* stream) {
  if (rows == 0 || cols == 0) return cudaSuccess;
  // Parameter gradients first, while d_y and x are intact (d_x may alias
  // either); the stream orders the two kernels.
  if (d_gamma != nullptr || d_beta != nullptr) {
    const int64_t column_tiles = (cols + kWarpSize - 1) / kWarpSize;
    const int64_t wanted_chunks = std::max<int64_t>(
        1, std::min(kTargetTiles / column_tiles,
                    (rows + kMinRowsPerChunk - 1) / kMinRowsPerChunk));
    const int64_t chunks = std::min(wanted_chunks, kMaxRowChunks);
    const int64_t rows_per_chunk = (rows + chunks - 1) / chunks;
    const dim3 grid(
        static_cast<unsigned>(column_tiles),
        static_cast<unsigned>((rows + rows_per_chunk - 1) / rows_per_chunk));
    LayerNormParameterGradientKernel<<<grid, dim3(kWarpSize, kTileRowLanes), 0,
                                       AsStream(stream)>>>(
        rows, cols, rows_per_chunk, x, x_stride, mean, rstd, d_y, d_y_stride,
        d_gamma, d_beta);
    const cudaError_t error = cudaGetLastError();
    if (error != cudaSuccess) return error;
  }
  LayerNormInputGradientKernel<<<BlocksFor(rows), ThreadsFor(cols), 0,
                                 AsStream(stream)>>>(
      rows, cols, x, x_stride, gamma, mean, rstd, d_y, d_y_stride, d_x,
      d_x_stride);
  return cudaGetLastError();
}

}  // namespace ftx::cuda
