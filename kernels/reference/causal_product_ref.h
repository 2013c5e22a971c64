// Scalar reference of kernels/causal_product (the oracle for the Highway and
// CUDA versions): the numerator of causal linear attention (Katharopoulos et
// al. 2020, eq. 9; fast-transformers' causal_dot_product), computed as the
// O(L^2) double sum straight from the definition. Templated on the element type
// so tests can run it in double. Contiguous layout: queries, keys [N, L, H, E];
// values, out [N, L, H, D].
#ifndef FTX_KERNELS_REFERENCE_CAUSAL_PRODUCT_REF_H_
#define FTX_KERNELS_REFERENCE_CAUSAL_PRODUCT_REF_H_

#include <cstdint>

namespace ftx::reference {

struct CausalProductShape {
  int64_t batch, length, heads, qk_dim, value_dim;  // N, L, H, E, D
};

// out[n, i, h, :] = sum_{j <= i} (q[n, i, h, :] . k[n, j, h, :]) v[n, j, h, :]
template <typename T>
void CausalProduct(const CausalProductShape& shape, const T* q, const T* k,
                   const T* v, T* out) {
  const auto [N, L, H, E, D] = shape;
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t i = 0; i < L; ++i) {
        const T* qi = q + ((n * L + i) * H + h) * E;
        T* oi = out + ((n * L + i) * H + h) * D;
        for (int64_t d = 0; d < D; ++d) oi[d] = 0;
        for (int64_t j = 0; j <= i; ++j) {
          const T* kj = k + ((n * L + j) * H + h) * E;
          const T* vj = v + ((n * L + j) * H + h) * D;
          T score = 0;
          for (int64_t e = 0; e < E; ++e) score += qi[e] * kj[e];
          for (int64_t d = 0; d < D; ++d) oi[d] += score * vj[d];
        }
      }
    }
  }
}

// Vector-Jacobian product of CausalProduct for the cotangent d_out = g:
//   d_q[i] = sum_{j <= i} (g_i . v_j) k_j
//   d_k[j] = sum_{i >= j} (g_i . v_j) q_i
//   d_v[j] = sum_{i >= j} (q_i . k_j) g_i
// All three are activation gradients and are written (=).
template <typename T>
void CausalProductBackward(const CausalProductShape& shape, const T* q,
                           const T* k, const T* v, const T* d_out, T* d_q,
                           T* d_k, T* d_v) {
  const auto [N, L, H, E, D] = shape;
  for (int64_t i = 0; i < N * L * H * E; ++i) d_q[i] = d_k[i] = 0;
  for (int64_t i = 0; i < N * L * H * D; ++i) d_v[i] = 0;
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t i = 0; i < L; ++i) {
        const int64_t row_i = (n * L + i) * H + h;
        const T* qi = q + row_i * E;
        const T* gi = d_out + row_i * D;
        for (int64_t j = 0; j <= i; ++j) {
          const int64_t row_j = (n * L + j) * H + h;
          const T* kj = k + row_j * E;
          const T* vj = v + row_j * D;
          T score = 0;  // q_i . k_j
          for (int64_t e = 0; e < E; ++e) score += qi[e] * kj[e];
          T d_score = 0;  // g_i . v_j
          for (int64_t d = 0; d < D; ++d) d_score += gi[d] * vj[d];
          for (int64_t e = 0; e < E; ++e) {
            d_q[row_i * E + e] += d_score * kj[e];
            d_k[row_j * E + e] += d_score * qi[e];
          }
          for (int64_t d = 0; d < D; ++d) d_v[row_j * D + d] += score * gi[d];
        }
      }
    }
  }
}

}  // namespace ftx::reference

#endif  // FTX_KERNELS_REFERENCE_CAUSAL_PRODUCT_REF_H_
