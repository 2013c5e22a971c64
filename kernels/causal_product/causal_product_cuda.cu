// CUDA kernels of kernels/causal_product: one straightforward sweep kernel,
// written for correctness over speed. A block owns one (n, h) sequence and 32
// output columns; its 8 x 32 threads hold a 128 x 32 tile of the running state
// in registers (16 values each) and walk the sequence in chunks of 16 rows
// staged in shared memory. Larger first dimensions are swept in 128-wide tiles
// one after another, each adding its share to the output, so any E and D work.
// The backward is three sweeps of the same kernel with the inputs in other
// roles. Every output element is summed in a fixed order: results are
// deterministic.
#include <cuda_runtime.h>

#include "kernels/causal_product/causal_product_cuda.h"

namespace ftx::cuda {
namespace {

constexpr int kColumns = 32;         // output columns per block (threadIdx.x)
constexpr int kGroups = 8;           // thread rows splitting the state rows
constexpr int kStatePerThread = 16;  // state rows held by each thread
constexpr int kStateRows = kGroups * kStatePerThread;  // state rows per pass
constexpr int kChunk = 16;  // sequence rows staged per step
constexpr int kThreads = kColumns * kGroups;

// out_i = sum_{j <= i} (a_i . b_j) c_j per (n, h), or sum over j >= i when
// `reverse`. a, b: [N, L, H, X]; c, out: [N, L, H, Y].
// Grid: (N * H, ceil(Y / kColumns)); block: (kColumns, kGroups).
__global__ void CausalSweepKernel(int64_t length, int64_t heads, int64_t x_dim,
                                  int64_t y_dim, bool reverse, ConstSequences a,
                                  ConstSequences b, ConstSequences c,
                                  Sequences out) {
  __shared__ float a_chunk[kChunk][kStateRows];
  __shared__ float b_chunk[kChunk][kStateRows];
  __shared__ float c_chunk[kChunk][kColumns];
  __shared__ float partial[kChunk][kGroups][kColumns];

  const int64_t n = blockIdx.x / heads, h = blockIdx.x % heads;
  const int column = threadIdx.x, group = threadIdx.y;
  const int thread = group * kColumns + column;
  const int64_t y_begin = static_cast<int64_t>(blockIdx.y) * kColumns;
  const int64_t y = y_begin + column;
  const float* a_seq = a.data + n * a.batch_stride + h * a.head_stride;
  const float* b_seq = b.data + n * b.batch_stride + h * b.head_stride;
  const float* c_seq = c.data + n * c.batch_stride + h * c.head_stride;
  float* out_seq = out.data + n * out.batch_stride + h * out.head_stride;
  auto step_of = [&](int64_t index) {
    return reverse ? length - 1 - index : index;
  };

  // At least one pass, so that an empty first dimension writes zeros.
  for (int64_t x_begin = 0; x_begin == 0 || x_begin < x_dim;
       x_begin += kStateRows) {
    float state[kStatePerThread];
#pragma unroll
    for (int m = 0; m < kStatePerThread; ++m) state[m] = 0.0f;

    for (int64_t start = 0; start < length; start += kChunk) {
      const int rows =
          static_cast<int>(length - start < kChunk ? length - start : kChunk);
      for (int i = thread; i < kChunk * kStateRows; i += kThreads) {
        const int r = i / kStateRows, local_x = i % kStateRows;
        const int64_t x = x_begin + local_x;
        float a_value = 0.0f, b_value = 0.0f;
        if (r < rows && x < x_dim) {
          const int64_t step = step_of(start + r);
          a_value = a_seq[step * a.step_stride + x];
          b_value = b_seq[step * b.step_stride + x];
        }
        a_chunk[r][local_x] = a_value;
        b_chunk[r][local_x] = b_value;
      }
      for (int i = thread; i < kChunk * kColumns; i += kThreads) {
        const int r = i / kColumns, local_y = i % kColumns;
        const int64_t chunk_y = y_begin + local_y;
        c_chunk[r][local_y] =
            (r < rows && chunk_y < y_dim)
                ? c_seq[step_of(start + r) * c.step_stride + chunk_y]
                : 0.0f;
      }
      __syncthreads();

      for (int r = 0; r < rows; ++r) {
        const float c_value = c_chunk[r][column];
        float sum = 0.0f;
#pragma unroll
        for (int m = 0; m < kStatePerThread; ++m) {
          const int local_x = group + kGroups * m;
          state[m] = fmaf(b_chunk[r][local_x], c_value, state[m]);
          sum = fmaf(a_chunk[r][local_x], state[m], sum);
        }
        partial[r][group][column] = sum;
      }
      __syncthreads();

      if (y < y_dim) {
        for (int r = group; r < rows; r += kGroups) {
          float total = 0.0f;
          for (int g = 0; g < kGroups; ++g) total += partial[r][g][column];
          float* out_value = out_seq + step_of(start + r) * out.step_stride + y;
          *out_value = x_begin == 0 ? total : *out_value + total;
        }
      }
      __syncthreads();
    }
  }
}

cudaStream_t AsStream(void* stream) {
  return static_cast<cudaStream_t>(stream);
}

int LaunchSweep(const CausalProductDims& dims, int64_t x_dim, int64_t y_dim,
                bool reverse, ConstSequences a, ConstSequences b,
                ConstSequences c, Sequences out, void* stream) {
  if (dims.batch * dims.length * dims.heads * y_dim == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(dims.batch * dims.heads),
                  static_cast<unsigned>((y_dim + kColumns - 1) / kColumns));
  const dim3 block(kColumns, kGroups);
  CausalSweepKernel<<<grid, block, 0, AsStream(stream)>>>(
      dims.length, dims.heads, x_dim, y_dim, reverse, a, b, c, out);
  return cudaGetLastError();
}

}  // namespace

int LaunchCausalProduct(const CausalProductDims& dims, ConstSequences queries,
                        ConstSequences keys, ConstSequences values,
                        Sequences out, void* stream) {
  return LaunchSweep(dims, dims.qk_dim, dims.value_dim, /*reverse=*/false,
                     queries, keys, values, out, stream);
}

int LaunchCausalProductBackward(const CausalProductDims& dims,
                                ConstSequences queries, ConstSequences keys,
                                ConstSequences values, ConstSequences d_out,
                                Sequences d_queries, Sequences d_keys,
                                Sequences d_values, void* stream) {
  const int64_t e = dims.qk_dim, d = dims.value_dim;
  int error = LaunchSweep(dims, d, e, /*reverse=*/false, d_out, values, keys,
                          d_queries, stream);
  if (error != cudaSuccess) return error;
  error = LaunchSweep(dims, d, e, /*reverse=*/true, values, d_out, queries,
                      d_keys, stream);
  if (error != cudaSuccess) return error;
  return LaunchSweep(dims, e, d, /*reverse=*/true, keys, queries, d_out,
                     d_values, stream);
}

}  // namespace ftx::cuda
