// Scalar references of local (windowed) softmax attention and of
// linear-attention-transformer's global linear attention, written straight from
// the reference libraries' code paths (SEMANTICS.md sections 2.4 and 4.2):
// every slot of every window is materialised, masked and normalised as the
// Python does, with no banding or blocking tricks. Templated so tests can run
// them in double and take central differences. Contiguous layout:
// queries [N, L, H, E], keys [N, S, H, E], values [N, S, H, D],
// out [N, L, H, D]; key_lengths empty means no padding.
#ifndef FTX_KERNELS_REFERENCE_LOCAL_REF_H_
#define FTX_KERNELS_REFERENCE_LOCAL_REF_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "kernels/reference/attention_ref.h"

namespace ftx::reference {

// fast-transformers "local" (local_product_cpu.cpp +
// attention/local_attention.py). Per (n, h, l), the c = context slots k hold
// the keys s = l - c/2 + k. A slot with 0 <= s < key_length scores
// temp * (q.k + mask(l, s)), where -inf mask entries become -1e24
// (additive_matrix_finite); every other slot scores temp * (-1e24). Softmax
// over the c slots, then out = sum of P_k v_s over the slots with 0 <= s < S.
template <typename T>
void FastTransformersLocalAttention(const AttentionShape& shape, const T* q,
                                    const T* k, const T* v, int64_t context,
                                    double temp, const AdditiveMaskFn& mask,
                                    const std::vector<int64_t>& key_lengths,
                                    T* out) {
  const auto [N, L, S, H, E, D] = shape;
  const T fill = static_cast<T>(temp) * static_cast<T>(-1e24);
  std::vector<T> scores(context);
  for (int64_t n = 0; n < N; ++n) {
    const int64_t valid_keys = key_lengths.empty() ? S : key_lengths[n];
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t l = 0; l < L; ++l) {
        const T* ql = q + ((n * L + l) * H + h) * E;
        const int64_t first = l - context / 2;
        T max_score = -std::numeric_limits<T>::infinity();
        for (int64_t slot = 0; slot < context; ++slot) {
          const int64_t s = first + slot;
          T score = fill;
          if (s >= 0 && s < valid_keys) {
            const T* ks = k + ((n * S + s) * H + h) * E;
            T dot = 0;
            for (int64_t e = 0; e < E; ++e) dot += ql[e] * ks[e];
            double bias = mask(l, s);
            if (std::isinf(bias) && bias < 0) bias = -1e24;
            score = static_cast<T>(temp) * (dot + static_cast<T>(bias));
          }
          scores[slot] = score;
          max_score = std::max(max_score, score);
        }
        T total = 0;
        for (int64_t slot = 0; slot < context; ++slot) {
          scores[slot] = std::exp(scores[slot] - max_score);
          total += scores[slot];
        }
        T* ol = out + ((n * L + l) * H + h) * D;
        for (int64_t d = 0; d < D; ++d) ol[d] = 0;
        for (int64_t slot = 0; slot < context; ++slot) {
          const int64_t s = first + slot;
          if (s < 0 || s >= S) continue;
          const T* vs = v + ((n * S + s) * H + h) * D;
          for (int64_t d = 0; d < D; ++d) ol[d] += scores[slot] / total * vs[d];
        }
      }
    }
  }
}

// lucidrains local-attention 1.4.4 LocalAttention options (see
// attention/local.h).
struct WindowedLocalOptions {
  int64_t window_size = 1;
  bool causal = false;
  int64_t look_backward = 1;
  int64_t look_forward = 0;
  bool autopad = false;
  bool exact_windowsize = false;
  bool rel_pos_emb = false;  // rotary (rotate_half layout) over the whole head
};

// lucidrains local-attention 1.4.4 (local_attention/local_attention.py),
// self-attention (L == S). Steps, as in the Python: rotary on q and k at
// positions 0..L-1 (rel_pos_emb); zero-pad the sequence to a multiple of the
// window (autopad); bucket into windows; each query window gathers the
// keys/values of windows u - look_backward .. u + look_forward, windows
// outside the sequence being filled with -1 (look_around); dots * E^-0.5;
// -FLT_MAX where causal and key > query (exact_windowsize: also
// query > key + window * look_backward), where the slot is padding, and where
// the input mask (key_lengths, padded with false, applied to queries and keys)
// is false; softmax over the slots; out = P times the gathered values; drop the
// padded rows.
template <typename T>
void WindowedLocalAttention(const AttentionShape& shape, const T* q, const T* k,
                            const T* v, const WindowedLocalOptions& options,
                            const std::vector<int64_t>& key_lengths, T* out) {
  const auto [N, L, S, H, E, D] = shape;
  const int64_t w = options.window_size;
  const int64_t padded = options.autopad ? (L + w - 1) / w * w : L;
  const int64_t slots = (options.look_backward + options.look_forward + 1) * w;
  const T mask_value = static_cast<T>(-std::numeric_limits<float>::max());
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(E)));
  std::vector<T> qs(padded * E), ks(padded * E), vs(padded * D), scores(slots);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t h = 0; h < H; ++h) {
      std::fill(qs.begin(), qs.end(), T(0));
      std::fill(ks.begin(), ks.end(), T(0));
      std::fill(vs.begin(), vs.end(), T(0));
      for (int64_t t = 0; t < L; ++t) {
        for (int64_t e = 0; e < E; ++e) {
          qs[t * E + e] = q[((n * L + t) * H + h) * E + e];
          ks[t * E + e] = k[((n * S + t) * H + h) * E + e];
        }
        for (int64_t d = 0; d < D; ++d)
          vs[t * D + d] = v[((n * S + t) * H + h) * D + d];
        if (options.rel_pos_emb) {
          // x cos(t f) + rotate_half(x) sin(t f), f = cat(inv_freq, inv_freq).
          const int64_t half = E / 2;
          for (int64_t i = 0; i < half; ++i) {
            const double angle = t * std::pow(10000.0, -2.0 * i / E);
            const T c = static_cast<T>(std::cos(angle)),
                    s = static_cast<T>(std::sin(angle));
            for (T* x : {&qs[t * E], &ks[t * E]}) {
              const T a = x[i], b = x[i + half];
              x[i] = a * c - b * s;
              x[i + half] = b * c + a * s;
            }
          }
        }
      }
      const int64_t length = key_lengths.empty() ? padded : key_lengths[n];
      for (int64_t i = 0; i < padded; ++i) {
        const int64_t first = (i / w - options.look_backward) * w;
        T max_score = -std::numeric_limits<T>::infinity();
        for (int64_t j = 0; j < slots; ++j) {
          const int64_t p = first + j;
          const bool pad = p < 0 || p >= padded;
          T dot = 0;
          for (int64_t e = 0; e < E; ++e)
            dot += qs[i * E + e] * (pad ? T(-1) : ks[p * E + e]);
          bool masked = pad;
          if (options.causal) {
            masked = masked || i < p;
            if (options.exact_windowsize)
              masked = masked || i > p + w * options.look_backward;
          }
          if (!key_lengths.empty())
            masked = masked || !(i < length && p < length);
          scores[j] = masked ? mask_value : dot * scale;
          max_score = std::max(max_score, scores[j]);
        }
        T total = 0;
        for (int64_t j = 0; j < slots; ++j) {
          scores[j] = std::exp(scores[j] - max_score);
          total += scores[j];
        }
        if (i >= L) continue;
        T* oi = out + ((n * L + i) * H + h) * D;
        for (int64_t d = 0; d < D; ++d) oi[d] = 0;
        for (int64_t j = 0; j < slots; ++j) {
          const int64_t p = first + j;
          const bool pad = p < 0 || p >= padded;
          for (int64_t d = 0; d < D; ++d) {
            oi[d] += scores[j] / total * (pad ? T(-1) : vs[p * D + d]);
          }
        }
      }
    }
  }
}

// linear-attention-transformer linear_attn (non-causal global heads): padded
// keys get -FLT_MAX in every feature and padded values 0; q = softmax over E,
// times E^-0.5; k = softmax over the sequence; out = q (k^T v). No normaliser.
template <typename T>
void LatLinearAttention(const AttentionShape& shape, const T* q, const T* k,
                        const T* v, const std::vector<int64_t>& key_lengths,
                        T* out) {
  const auto [N, L, S, H, E, D] = shape;
  const T mask_value = static_cast<T>(-std::numeric_limits<float>::max());
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(E)));
  std::vector<T> key_features(S * E), context(E * D), query(E);
  for (int64_t n = 0; n < N; ++n) {
    const int64_t valid_keys = key_lengths.empty() ? S : key_lengths[n];
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t e = 0; e < E; ++e) {
        T max_value = -std::numeric_limits<T>::infinity();
        for (int64_t s = 0; s < S; ++s) {
          const T x =
              s < valid_keys ? k[((n * S + s) * H + h) * E + e] : mask_value;
          key_features[s * E + e] = x;
          max_value = std::max(max_value, x);
        }
        T total = 0;
        for (int64_t s = 0; s < S; ++s) {
          key_features[s * E + e] =
              std::exp(key_features[s * E + e] - max_value);
          total += key_features[s * E + e];
        }
        for (int64_t s = 0; s < S; ++s) key_features[s * E + e] /= total;
      }
      std::fill(context.begin(), context.end(), T(0));
      for (int64_t s = 0; s < valid_keys; ++s) {
        for (int64_t e = 0; e < E; ++e) {
          for (int64_t d = 0; d < D; ++d) {
            context[e * D + d] +=
                key_features[s * E + e] * v[((n * S + s) * H + h) * D + d];
          }
        }
      }
      for (int64_t l = 0; l < L; ++l) {
        const T* ql = q + ((n * L + l) * H + h) * E;
        const T max_value = *std::max_element(ql, ql + E);
        T total = 0;
        for (int64_t e = 0; e < E; ++e) total += std::exp(ql[e] - max_value);
        for (int64_t e = 0; e < E; ++e)
          query[e] = std::exp(ql[e] - max_value) / total * scale;
        T* ol = out + ((n * L + l) * H + h) * D;
        for (int64_t d = 0; d < D; ++d) {
          ol[d] = 0;
          for (int64_t e = 0; e < E; ++e)
            ol[d] += query[e] * context[e * D + d];
        }
      }
    }
  }
}

// linear-attention-transformer causal_linear_attn with bucket_size = blindspot
// B, as a naive O(L^2) sum: phi(q) = softmax_E(q) * E^-0.5, phi(k) = exp(k)
// (0 for padded keys, whose values are 0 too). Query i sees the keys j <= i
// when B == 1, and the keys of earlier buckets (j < B * floor(i / B)) when
// B > 1;
//   out_i = sum_j (phi(q_i) . phi(k_j)) v_j / max(phi(q_i) . sum_j phi(k_j),
//                                                 eps).
template <typename T>
void LatCausalLinearAttention(const AttentionShape& shape, const T* q,
                              const T* k, const T* v, int64_t blindspot,
                              double eps,
                              const std::vector<int64_t>& key_lengths, T* out) {
  const auto [N, L, S, H, E, D] = shape;
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(E)));
  std::vector<T> query(E), numerator(D);
  for (int64_t n = 0; n < N; ++n) {
    const int64_t valid_keys = key_lengths.empty() ? S : key_lengths[n];
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t i = 0; i < L; ++i) {
        const T* qi = q + ((n * L + i) * H + h) * E;
        const T max_value = *std::max_element(qi, qi + E);
        T total = 0;
        for (int64_t e = 0; e < E; ++e) total += std::exp(qi[e] - max_value);
        for (int64_t e = 0; e < E; ++e)
          query[e] = std::exp(qi[e] - max_value) / total * scale;
        const int64_t visible =
            blindspot == 1 ? i + 1 : i / blindspot * blindspot;
        std::fill(numerator.begin(), numerator.end(), T(0));
        T denominator = 0;
        for (int64_t j = 0; j < std::min(visible, valid_keys); ++j) {
          T similarity = 0;
          for (int64_t e = 0; e < E; ++e) {
            similarity += query[e] * std::exp(k[((n * S + j) * H + h) * E + e]);
          }
          denominator += similarity;
          for (int64_t d = 0; d < D; ++d) {
            numerator[d] += similarity * v[((n * S + j) * H + h) * D + d];
          }
        }
        T* oi = out + ((n * L + i) * H + h) * D;
        const T clamped = std::max(denominator, static_cast<T>(eps));
        for (int64_t d = 0; d < D; ++d) oi[d] = numerator[d] / clamped;
      }
    }
  }
}

// linear-attention-transformer SelfAttention's head mix: heads [0, local_heads)
// use WindowedLocalAttention (window, causal, look_backward 1, look_forward 0
// if causal else 1), the others LatLinearAttention (non-causal) or
// LatCausalLinearAttention (causal, eps 1e-3); outputs are concatenated over
// heads in that order.
template <typename T>
void MixedLocalLinearAttention(const AttentionShape& shape, const T* q,
                               const T* k, const T* v, int64_t local_heads,
                               int64_t window, bool causal, int64_t blindspot,
                               const std::vector<int64_t>& key_lengths,
                               T* out) {
  const auto [N, L, S, H, E, D] = shape;
  // Copies heads [first, first + count) of a [N, T, H, W] tensor.
  auto heads = [&](const T* x, int64_t steps, int64_t width, int64_t first,
                   int64_t count) {
    std::vector<T> part(N * steps * count * width);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t t = 0; t < steps; ++t)
        for (int64_t h = 0; h < count; ++h)
          for (int64_t i = 0; i < width; ++i)
            part[((n * steps + t) * count + h) * width + i] =
                x[((n * steps + t) * H + first + h) * width + i];
    return part;
  };
  for (const bool local : {true, false}) {
    const int64_t first = local ? 0 : local_heads;
    const int64_t count = local ? local_heads : H - local_heads;
    if (count == 0) continue;
    const std::vector<T> qp = heads(q, L, E, first, count),
                         kp = heads(k, S, E, first, count),
                         vp = heads(v, S, D, first, count);
    std::vector<T> part(N * L * count * D);
    const AttentionShape part_shape{N, L, S, count, E, D};
    if (local) {
      WindowedLocalOptions options;
      options.window_size = window;
      options.causal = causal;
      options.look_forward = causal ? 0 : 1;
      WindowedLocalAttention(part_shape, qp.data(), kp.data(), vp.data(),
                             options, key_lengths, part.data());
    } else if (causal) {
      LatCausalLinearAttention(part_shape, qp.data(), kp.data(), vp.data(),
                               blindspot, 1e-3, key_lengths, part.data());
    } else {
      LatLinearAttention(part_shape, qp.data(), kp.data(), vp.data(),
                         key_lengths, part.data());
    }
    for (int64_t n = 0; n < N; ++n)
      for (int64_t t = 0; t < L; ++t)
        for (int64_t h = 0; h < count; ++h)
          for (int64_t d = 0; d < D; ++d)
            out[((n * L + t) * H + first + h) * D + d] =
                part[((n * L + t) * count + h) * D + d];
  }
}

}  // namespace ftx::reference

#endif  // FTX_KERNELS_REFERENCE_LOCAL_REF_H_
