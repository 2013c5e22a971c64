// Scalar references of the attention mechanisms, written straight from the math in
// fast-transformers 0.4.0 (SEMANTICS.md section 2.4), templated so tests can run them
// in double and take central differences. Contiguous layout: queries [N, L, H, E],
// keys [N, S, H, E], values [N, S, H, D], out [N, L, H, D].
#ifndef FTX_KERNELS_REFERENCE_ATTENTION_REF_H_
#define FTX_KERNELS_REFERENCE_ATTENTION_REF_H_

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <vector>

#include "kernels/reference/activation_ref.h"

namespace ftx::reference {

struct AttentionShape {
  int64_t batch, queries, keys, heads, qk_dim, value_dim;  // N, L, S, H, E, D
};

// Additive mask value for (query l, key s); 0 keeps, -inf drops.
using AdditiveMaskFn = std::function<double(int64_t l, int64_t s)>;

// "full": out = softmax(temp * Q K^T + mask + key-length mask) V per (n, h).
// key_lengths may be empty (no padding). A query whose keys are all masked gets a zero
// output (fast-transformers would produce NaN there).
template <typename T>
void FullAttention(const AttentionShape& shape, const T* q, const T* k, const T* v,
                   double temp, const AdditiveMaskFn& mask,
                   const std::vector<int64_t>& key_lengths, T* out) {
  const auto [N, L, S, H, E, D] = shape;
  std::vector<T> scores(S);
  for (int64_t n = 0; n < N; ++n) {
    const int64_t valid_keys = key_lengths.empty() ? S : key_lengths[n];
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t l = 0; l < L; ++l) {
        const T* ql = q + ((n * L + l) * H + h) * E;
        T max_score = -std::numeric_limits<T>::infinity();
        for (int64_t s = 0; s < S; ++s) {
          const T* ks = k + ((n * S + s) * H + h) * E;
          T dot = 0;
          for (int64_t e = 0; e < E; ++e) dot += ql[e] * ks[e];
          T score = static_cast<T>(temp) * dot + static_cast<T>(mask(l, s));
          if (s >= valid_keys) score = -std::numeric_limits<T>::infinity();
          scores[s] = score;
          if (score > max_score) max_score = score;
        }
        T* ol = out + ((n * L + l) * H + h) * D;
        for (int64_t d = 0; d < D; ++d) ol[d] = 0;
        if (max_score == -std::numeric_limits<T>::infinity()) continue;
        T total = 0;
        for (int64_t s = 0; s < S; ++s) {
          scores[s] = std::exp(scores[s] - max_score);
          total += scores[s];
        }
        for (int64_t s = 0; s < S; ++s) {
          const T* vs = v + ((n * S + s) * H + h) * D;
          const T weight = scores[s] / total;
          for (int64_t d = 0; d < D; ++d) ol[d] += weight * vs[d];
        }
      }
    }
  }
}

// "linear" (Katharopoulos et al. 2020, eq. 6) and "causal-linear" (eq. 9) with
// fast-transformers' default feature map elu(x) + 1 (EluPlusOne, activation_ref.h): out_l = phi(q_l) . sum_s phi(k_s) v_s^T / (phi(q_l) . sum_s
// phi(k_s) + eps), where the sums run over s < key length (all s) or s <= l (causal).
// Padded keys have their features zeroed, as fast-transformers does.
template <typename T>
void LinearAttention(const AttentionShape& shape, const T* q, const T* k, const T* v,
                     bool causal, double eps, const std::vector<int64_t>& key_lengths,
                     T* out) {
  const auto [N, L, S, H, E, D] = shape;
  for (int64_t n = 0; n < N; ++n) {
    const int64_t valid_keys = key_lengths.empty() ? S : key_lengths[n];
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t l = 0; l < L; ++l) {
        const T* ql = q + ((n * L + l) * H + h) * E;
        T* ol = out + ((n * L + l) * H + h) * D;
        std::vector<T> numerator(D, 0);
        T denominator = 0;
        const int64_t last_key = causal ? std::min<int64_t>(l + 1, S) : S;
        for (int64_t s = 0; s < last_key; ++s) {
          if (s >= valid_keys) continue;
          const T* ks = k + ((n * S + s) * H + h) * E;
          const T* vs = v + ((n * S + s) * H + h) * D;
          T similarity = 0;
          for (int64_t e = 0; e < E; ++e) {
            similarity += EluPlusOne(ql[e]) * EluPlusOne(ks[e]);
          }
          for (int64_t d = 0; d < D; ++d) numerator[d] += similarity * vs[d];
          denominator += similarity;
        }
        for (int64_t d = 0; d < D; ++d) {
          ol[d] = numerator[d] / (denominator + static_cast<T>(eps));
        }
      }
    }
  }
}

}  // namespace ftx::reference

#endif  // FTX_KERNELS_REFERENCE_ATTENTION_REF_H_
