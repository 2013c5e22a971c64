// CUDA launchers of kernels/causal_product. POD arguments only (no CUDA
// headers), so the façade includes this without nvcc; each returns a
// cudaError_t as int (0 = success).
#ifndef FTX_KERNELS_CAUSAL_PRODUCT_CAUSAL_PRODUCT_CUDA_H_
#define FTX_KERNELS_CAUSAL_PRODUCT_CAUSAL_PRODUCT_CUDA_H_

#include <cstdint>

namespace ftx::cuda {

// A [N, L, H, *] tensor in device memory: element (n, l, h, x) is at
// data[n * batch_stride + l * step_stride + h * head_stride + x].
struct ConstSequences {
  const float* data;
  int64_t batch_stride, step_stride, head_stride;
};
struct Sequences {
  float* data;
  int64_t batch_stride, step_stride, head_stride;
};

struct CausalProductDims {
  int64_t batch, length, heads, qk_dim, value_dim;  // N, L, H, E, D
};

// out_i = sum_{j <= i} (q_i . k_j) v_j per (n, h).
// queries, keys: [N, L, H, E]; values, out: [N, L, H, D].
int LaunchCausalProduct(const CausalProductDims& dims, ConstSequences queries,
                        ConstSequences keys, ConstSequences values,
                        Sequences out, void* stream);

// d_queries_i = sum_{j <= i} (g_i . v_j) k_j,
// d_keys_j = sum_{i >= j} (v_j . g_i) q_i,
// d_values_j = sum_{i >= j} (k_j . q_i) g_i, with g = d_out (all written).
int LaunchCausalProductBackward(const CausalProductDims& dims,
                                ConstSequences queries, ConstSequences keys,
                                ConstSequences values, ConstSequences d_out,
                                Sequences d_queries, Sequences d_keys,
                                Sequences d_values, void* stream);

}  // namespace ftx::cuda

#endif  // FTX_KERNELS_CAUSAL_PRODUCT_CAUSAL_PRODUCT_CUDA_H_
