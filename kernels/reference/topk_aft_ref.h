// Scalar references of the entmax-1.5 normaliser, the top-k selections, and
// the "exact-topk", "talking-heads", "aft-full" and "aft-simple" attentions,
// written straight from the math (SEMANTICS.md sections 2.4 and 6.2) and
// templated so tests can run them in double and take central differences.
// Contiguous layout: queries [N, L, H, E], keys [N, S, H, E],
// values [N, S, H, D], out [N, L, H, D].
//
// Masked entries (additive -inf, keys past their sequence's length) get zero
// weight, and a query whose keys are all masked gets a zero output.
#ifndef FTX_KERNELS_REFERENCE_TOPK_AFT_REF_H_
#define FTX_KERNELS_REFERENCE_TOPK_AFT_REF_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <vector>

#include "kernels/reference/attention_ref.h"

namespace ftx::reference {

// entmax-1.5 (Peters, Niculae and Martins 2019) by bisection on the
// threshold: y = [z/2 - tau]_+^2 with tau such that sum(y) = 1. -inf entries
// get 0; a row of -inf gives zeros. tau lies in [max(z)/2 - 1, max(z)/2],
// where the sum falls from >= 1 to 0, so bisection converges to the exact
// threshold.
template <typename T>
void Entmax15Bisect(const T* z, int64_t n, T* y) {
  const T neg_inf = -std::numeric_limits<T>::infinity();
  T z_max = neg_inf;
  for (int64_t i = 0; i < n; ++i) z_max = std::max(z_max, z[i]);
  if (z_max == neg_inf) {
    for (int64_t i = 0; i < n; ++i) y[i] = 0;
    return;
  }
  auto mass = [&](T tau) {
    T total = 0;
    for (int64_t i = 0; i < n; ++i) {
      const T gap = z[i] / 2 - tau;
      if (gap > 0) total += gap * gap;
    }
    return total;
  };
  T low = z_max / 2 - 1, high = z_max / 2;
  for (int iteration = 0; iteration < 200; ++iteration) {
    const T middle = (low + high) / 2;
    (mass(middle) >= 1 ? low : high) = middle;
  }
  const T tau = (low + high) / 2;
  const T total = mass(tau);
  for (int64_t i = 0; i < n; ++i) {
    const T gap = z[i] / 2 - tau;
    y[i] = gap > 0 ? gap * gap / total : T(0);
  }
}

// Vector-Jacobian product of entmax-1.5 at its output y:
//   dz = g * dy - g * sum(g * dy) / sum(g),  g = sqrt(y).
template <typename T>
void Entmax15Backward(const T* y, const T* dy, int64_t n, T* dz) {
  T sum_g = 0, sum_g_dy = 0;
  for (int64_t i = 0; i < n; ++i) {
    sum_g += std::sqrt(y[i]);
    sum_g_dy += std::sqrt(y[i]) * dy[i];
  }
  const T mean = sum_g > 0 ? sum_g_dy / sum_g : T(0);
  for (int64_t i = 0; i < n; ++i) dz[i] = std::sqrt(y[i]) * (dy[i] - mean);
}

// Softmax of a row in place; a row of -inf gives zeros.
template <typename T>
void SoftmaxRow(T* z, int64_t n) {
  T z_max = -std::numeric_limits<T>::infinity();
  for (int64_t i = 0; i < n; ++i) z_max = std::max(z_max, z[i]);
  if (z_max == -std::numeric_limits<T>::infinity()) {
    for (int64_t i = 0; i < n; ++i) z[i] = 0;
    return;
  }
  T total = 0;
  for (int64_t i = 0; i < n; ++i) total += (z[i] = std::exp(z[i] - z_max));
  for (int64_t i = 0; i < n; ++i) z[i] /= total;
}

enum class RowNormalizer { kSoftmax, kEntmax15 };

template <typename T>
void NormalizeRow(RowNormalizer normalizer, T* z, int64_t n) {
  if (normalizer == RowNormalizer::kSoftmax) {
    SoftmaxRow(z, n);
  } else {
    std::vector<T> input(z, z + n);
    Entmax15Bisect(input.data(), n, z);
  }
}

// Sets every entry outside the row's top k to -inf. keep_ties = false keeps
// exactly k entries (fast-transformers' torch.topk; among equal values the
// lower indices); keep_ties = true keeps every entry >= the k-th largest
// (x-transformers' sparse_topk). k >= n keeps the row.
template <typename T>
void KeepTopK(T* row, int64_t n, int64_t k, bool keep_ties) {
  if (k >= n) return;
  std::vector<T> sorted(row, row + n);
  std::sort(sorted.begin(), sorted.end(), std::greater<T>());
  const T kth = sorted[k - 1];
  int64_t ties_left = k;
  for (int64_t i = 0; i < n; ++i) ties_left -= row[i] > kth ? 1 : 0;
  for (int64_t i = 0; i < n; ++i) {
    if (row[i] > kth) continue;
    if (row[i] == kth && (keep_ties || ties_left-- > 0)) continue;
    row[i] = -std::numeric_limits<T>::infinity();
  }
}

struct ExactTopKConfig {
  double temp;     // t
  int64_t topk;    // k
  bool keep_ties;  // x-transformers' sparse_topk instead of fast-transformers'
  RowNormalizer normalizer;
};

// "exact-topk" per (n, h, l):
//   fast-transformers (keep_ties = false): z = Q K^T + mask, keep the top k
//     of z, P = normalize(t * z)   (the mask is scaled by t too);
//   x-transformers (keep_ties = true): z = t * Q K^T + mask, keep the z >= the
//     k-th largest, P = normalize(z);
//   out = (P * probability_scale) V.
// probability_scale [H, N, L, S] (a dropout mask divided by the keep rate)
// may be null.
template <typename T>
void ExactTopKAttention(const AttentionShape& shape, const T* q, const T* k,
                        const T* v, const ExactTopKConfig& config,
                        const AdditiveMaskFn& mask,
                        const std::vector<int64_t>& key_lengths,
                        const T* probability_scale, T* out) {
  const auto [N, L, S, H, E, D] = shape;
  const T t = static_cast<T>(config.temp);
  const T pre_scale = config.keep_ties ? t : T(1);
  std::vector<T> z(S);
  for (int64_t n = 0; n < N; ++n) {
    const int64_t valid_keys = key_lengths.empty() ? S : key_lengths[n];
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t l = 0; l < L; ++l) {
        const T* ql = q + ((n * L + l) * H + h) * E;
        for (int64_t s = 0; s < S; ++s) {
          const T* ks = k + ((n * S + s) * H + h) * E;
          T dot = 0;
          for (int64_t e = 0; e < E; ++e) dot += ql[e] * ks[e];
          z[s] = pre_scale * dot + static_cast<T>(mask(l, s));
          if (s >= valid_keys) z[s] = -std::numeric_limits<T>::infinity();
        }
        KeepTopK(z.data(), S, config.topk, config.keep_ties);
        if (!config.keep_ties) {
          for (int64_t s = 0; s < S; ++s) z[s] *= t;
        }
        NormalizeRow(config.normalizer, z.data(), S);
        T* ol = out + ((n * L + l) * H + h) * D;
        for (int64_t d = 0; d < D; ++d) ol[d] = 0;
        for (int64_t s = 0; s < S; ++s) {
          T weight = z[s];
          if (probability_scale != nullptr) {
            weight *= probability_scale[((h * N + n) * L + l) * S + s];
          }
          const T* vs = v + ((n * S + s) * H + h) * D;
          for (int64_t d = 0; d < D; ++d) ol[d] += weight * vs[d];
        }
      }
    }
  }
}

struct TalkingHeadsConfig {
  double temp;          // t
  int64_t sparse_topk;  // 0: off; else keep entries >= the k-th largest
  RowNormalizer normalizer;
};

// "talking-heads" (x-transformers 0.26.6 Attention with talking_heads), per
// (n, l):
//   dots[h]    = t * q_h K_h^T
//   mixed[j]   = sum_h pre[j, h] dots[h] + mask
//   P[j]       = normalize(sparse_topk(mixed[j]))
//   mixed_P[j] = sum_h post[j, h] (P[h] * probability_scale[h])
//   out_j      = mixed_P[j] V_j
// pre, post: [H, H] row-major (Conv2d weight [H, H, 1, 1]); probability_scale
// [H, N, L, S] may be null.
template <typename T>
void TalkingHeadsAttention(const AttentionShape& shape, const T* q, const T* k,
                           const T* v, const T* pre, const T* post,
                           const TalkingHeadsConfig& config,
                           const AdditiveMaskFn& mask,
                           const std::vector<int64_t>& key_lengths,
                           const T* probability_scale, T* out) {
  const auto [N, L, S, H, E, D] = shape;
  const T t = static_cast<T>(config.temp);
  std::vector<T> dots(H * S), probabilities(H * S);
  for (int64_t n = 0; n < N; ++n) {
    const int64_t valid_keys = key_lengths.empty() ? S : key_lengths[n];
    for (int64_t l = 0; l < L; ++l) {
      for (int64_t h = 0; h < H; ++h) {
        const T* ql = q + ((n * L + l) * H + h) * E;
        for (int64_t s = 0; s < S; ++s) {
          const T* ks = k + ((n * S + s) * H + h) * E;
          T dot = 0;
          for (int64_t e = 0; e < E; ++e) dot += ql[e] * ks[e];
          dots[h * S + s] = t * dot;
        }
      }
      for (int64_t j = 0; j < H; ++j) {
        T* row = &probabilities[j * S];
        for (int64_t s = 0; s < S; ++s) {
          T mixed = 0;
          for (int64_t h = 0; h < H; ++h)
            mixed += pre[j * H + h] * dots[h * S + s];
          row[s] = mixed + static_cast<T>(mask(l, s));
          if (s >= valid_keys) row[s] = -std::numeric_limits<T>::infinity();
        }
        if (config.sparse_topk > 0) KeepTopK(row, S, config.sparse_topk, true);
        NormalizeRow(config.normalizer, row, S);
        if (probability_scale != nullptr) {
          for (int64_t s = 0; s < S; ++s) {
            row[s] *= probability_scale[((j * N + n) * L + l) * S + s];
          }
        }
      }
      for (int64_t j = 0; j < H; ++j) {
        T* ol = out + ((n * L + l) * H + j) * D;
        for (int64_t d = 0; d < D; ++d) ol[d] = 0;
        for (int64_t s = 0; s < S; ++s) {
          T weight = 0;
          for (int64_t h = 0; h < H; ++h)
            weight += post[j * H + h] * probabilities[h * S + s];
          const T* vs = v + ((n * S + s) * H + j) * D;
          for (int64_t d = 0; d < D; ++d) ol[d] += weight * vs[d];
        }
      }
    }
  }
}

// "aft-full" (fast-transformers AFTFullAttention, E == D), per (n, l, h, d):
//   w[l, s] = u[l] . v[s] + mask(l, s),  logit_s = K[n, s, h, d] * w[l, s],
//   out = sigmoid(Q[n, l, h, d]) * sum_s softmax_s(logit) V[n, s, h, d],
// with entries of -inf mask or past the key length excluded. u: [>= L, P],
// v_param: [>= S, P], row-major.
template <typename T>
void AftFullAttention(const AttentionShape& shape, const T* q, const T* k,
                      const T* v, const T* u, const T* v_param, int64_t P,
                      const AdditiveMaskFn& mask,
                      const std::vector<int64_t>& key_lengths, T* out) {
  const auto [N, L, S, H, E, D] = shape;
  const T neg_inf = -std::numeric_limits<T>::infinity();
  std::vector<T> w(L * S), logits(S);
  for (int64_t l = 0; l < L; ++l) {
    for (int64_t s = 0; s < S; ++s) {
      T dot = 0;
      for (int64_t p = 0; p < P; ++p) dot += u[l * P + p] * v_param[s * P + p];
      w[l * S + s] = dot + static_cast<T>(mask(l, s));
    }
  }
  for (int64_t n = 0; n < N; ++n) {
    const int64_t valid_keys = key_lengths.empty() ? S : key_lengths[n];
    for (int64_t l = 0; l < L; ++l) {
      for (int64_t h = 0; h < H; ++h) {
        for (int64_t d = 0; d < D; ++d) {
          for (int64_t s = 0; s < S; ++s) {
            const T bias = w[l * S + s];
            logits[s] = (s >= valid_keys || bias == neg_inf)
                            ? neg_inf
                            : k[((n * S + s) * H + h) * E + d] * bias;
          }
          SoftmaxRow(logits.data(), S);
          T average = 0;
          for (int64_t s = 0; s < S; ++s) {
            average += logits[s] * v[((n * S + s) * H + h) * D + d];
          }
          out[((n * L + l) * H + h) * D + d] =
              Sigmoid(q[((n * L + l) * H + h) * E + d]) * average;
        }
      }
    }
  }
}

// "aft-simple" (fast-transformers AFTSimpleAttention, E == D), per (n, h, d):
//   non-causal: out_l = sigmoid(Q_l) * sum_s softmax_s(K) V_s;
//   causal (L == S), fast-transformers' formula: Ke_s = exp(K_s - max K),
//     W_s = Ke_s / sum_{j<=s} Ke_j,  out_l = sigmoid(Q_l) * sum_{s<=l} W_s V_s.
// Keys past the key length are excluded (Ke = 0, W = 0).
template <typename T>
void AftSimpleAttention(const AttentionShape& shape, const T* q, const T* k,
                        const T* v, bool causal,
                        const std::vector<int64_t>& key_lengths, T* out) {
  const auto [N, L, S, H, E, D] = shape;
  std::vector<T> weights(S);
  for (int64_t n = 0; n < N; ++n) {
    const int64_t valid_keys = key_lengths.empty() ? S : key_lengths[n];
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t d = 0; d < D; ++d) {
        auto key = [&](int64_t s) { return k[((n * S + s) * H + h) * E + d]; };
        auto value = [&](int64_t s) {
          return v[((n * S + s) * H + h) * D + d];
        };
        for (int64_t s = 0; s < S; ++s) {
          weights[s] =
              s < valid_keys ? key(s) : -std::numeric_limits<T>::infinity();
        }
        if (!causal) {
          SoftmaxRow(weights.data(), S);
          T average = 0;
          for (int64_t s = 0; s < S; ++s) average += weights[s] * value(s);
          for (int64_t l = 0; l < L; ++l) {
            out[((n * L + l) * H + h) * D + d] =
                Sigmoid(q[((n * L + l) * H + h) * E + d]) * average;
          }
          continue;
        }
        T key_max = -std::numeric_limits<T>::infinity();
        for (int64_t s = 0; s < S; ++s) key_max = std::max(key_max, weights[s]);
        T prefix = 0, running = 0;
        for (int64_t s = 0; s < S; ++s) {
          const T exp_key = s < valid_keys ? std::exp(key(s) - key_max) : T(0);
          prefix += exp_key;
          running += (prefix > 0 ? exp_key / prefix : T(0)) * value(s);
          out[((n * L + s) * H + h) * D + d] =
              Sigmoid(q[((n * L + s) * H + h) * E + d]) * running;
        }
      }
    }
  }
}

}  // namespace ftx::reference

#endif  // FTX_KERNELS_REFERENCE_TOPK_AFT_REF_H_
