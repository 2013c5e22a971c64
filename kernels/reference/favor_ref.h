// Scalar references of the random-feature maps and of FAVOR+ attention, written
// straight from the formulas (SEMANTICS.md sections 2.5 and 3.2), templated so
// tests can run them in double and take central differences.
//
//   - fast-transformers 0.4.0 feature maps (feature_maps/fourier_features.py)
//     with a given omega [E, C]: RandomFourierFeatures,
//     SmoothedRandomFourierFeatures, Favor and GeneralizedRandomFeatures.
//     Inputs x [N, T, H, E], features [N, T, H, F].
//   - performer-pytorch 1.1.4 FastAttention with a given projection W [m, E]:
//     the softmax kernel (with its detached max stabilisers), the generalized
//     kernel, and no_projection; non-causal and causal; key lengths that zero
//     padded V rows only.
//
// Contiguous layouts throughout: queries [N, L, H, E], keys [N, S, H, E],
// values [N, S, H, D], out [N, L, H, D].
#ifndef FTX_KERNELS_REFERENCE_FAVOR_REF_H_
#define FTX_KERNELS_REFERENCE_FAVOR_REF_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <vector>

#include "kernels/reference/attention_ref.h"

namespace ftx::reference {

struct FeatureShape {
  int64_t batch, steps, heads, qk_dim;  // N, T, H, E
};

// u[c] = scale * sum_e x[e] omega[e, c] for one row x [E]; omega [E, C].
template <typename T>
std::vector<T> ProjectRow(int64_t E, int64_t C, const T* x, const T* omega,
                          T scale) {
  std::vector<T> u(C, T(0));
  for (int64_t e = 0; e < E; ++e) {
    for (int64_t c = 0; c < C; ++c) u[c] += scale * x[e] * omega[e * C + c];
  }
  return u;
}

// RandomFourierFeatures: phi = sqrt(2 / n_dims) [cos u, sin u] with
// u = (x sqrt(t)) omega. omega [E, C], C = n_dims / 2; phi [N, T, H, 2 C].
template <typename T>
void RandomFourierFeatureMap(const FeatureShape& shape, const T* x,
                             const T* omega, int64_t C, int64_t n_dims,
                             double temp, T* phi) {
  const int64_t rows = shape.batch * shape.steps * shape.heads,
                E = shape.qk_dim;
  const T scale = std::sqrt(T(2) / static_cast<T>(n_dims));
  for (int64_t r = 0; r < rows; ++r) {
    const std::vector<T> u =
        ProjectRow<T>(E, C, x + r * E, omega, std::sqrt(static_cast<T>(temp)));
    for (int64_t c = 0; c < C; ++c) {
      phi[r * 2 * C + c] = scale * std::cos(u[c]);
      phi[r * 2 * C + C + c] = scale * std::sin(u[c]);
    }
  }
}

// SmoothedRandomFourierFeatures: the random Fourier features of n_dims - 1
// dimensions followed by the constant `smoothing`. omega [E, C],
// C = (n_dims - 1) / 2; phi [N, T, H, 2 C + 1].
template <typename T>
void SmoothedRandomFourierFeatureMap(const FeatureShape& shape, const T* x,
                                     const T* omega, int64_t C, int64_t n_dims,
                                     double temp, double smoothing, T* phi) {
  const int64_t rows = shape.batch * shape.steps * shape.heads;
  std::vector<T> inner(rows * 2 * C);
  RandomFourierFeatureMap<T>(shape, x, omega, C, n_dims - 1, temp,
                             inner.data());
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t f = 0; f < 2 * C; ++f)
      phi[r * (2 * C + 1) + f] = inner[r * 2 * C + f];
    phi[r * (2 * C + 1) + 2 * C] = static_cast<T>(smoothing);
  }
}

// Favor (fast-transformers): x' = x sqrt(t), u = x' omega,
// off = |x'|^2 / 2 + log(n_dims) / 2 (+ max over the sequence axis T of |x'|^2
// for the same (n, h) when `stabilize`), phi = [exp(u - off), exp(-u - off)].
// omega [E, C], C = n_dims / 2; phi [N, T, H, 2 C].
template <typename T>
void FavorFeatureMap(const FeatureShape& shape, const T* x, const T* omega,
                     int64_t C, int64_t n_dims, double temp, bool stabilize,
                     T* phi) {
  const auto [N, L, H, E] = shape;
  const T root_temp = std::sqrt(static_cast<T>(temp));
  auto squared_norm = [&](int64_t n, int64_t l, int64_t h) {
    const T* row = x + ((n * L + l) * H + h) * E;
    T sum = 0;
    for (int64_t e = 0; e < E; ++e)
      sum += row[e] * root_temp * row[e] * root_temp;
    return sum;
  };
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t h = 0; h < H; ++h) {
      T sequence_max = -std::numeric_limits<T>::infinity();
      for (int64_t l = 0; l < L; ++l)
        sequence_max = std::max(sequence_max, squared_norm(n, l, h));
      for (int64_t l = 0; l < L; ++l) {
        const int64_t r = (n * L + l) * H + h;
        const std::vector<T> u =
            ProjectRow<T>(E, C, x + r * E, omega, root_temp);
        T offset =
            squared_norm(n, l, h) / 2 + std::log(static_cast<T>(n_dims)) / 2;
        if (stabilize) offset += sequence_max;
        for (int64_t c = 0; c < C; ++c) {
          phi[r * 2 * C + c] = std::exp(u[c] - offset);
          phi[r * 2 * C + C + c] = std::exp(-u[c] - offset);
        }
      }
    }
  }
}

// GeneralizedRandomFeatures: phi = kernel_fn((x sqrt(t)) omega). omega [E, C],
// C = n_dims; phi [N, T, H, C].
template <typename T>
void GeneralizedRandomFeatureMap(const FeatureShape& shape, const T* x,
                                 const T* omega, int64_t C, double temp,
                                 const std::function<T(T)>& kernel_fn, T* phi) {
  const int64_t rows = shape.batch * shape.steps * shape.heads,
                E = shape.qk_dim;
  for (int64_t r = 0; r < rows; ++r) {
    const std::vector<T> u =
        ProjectRow<T>(E, C, x + r * E, omega, std::sqrt(static_cast<T>(temp)));
    for (int64_t c = 0; c < C; ++c) phi[r * C + c] = kernel_fn(u[c]);
  }
}

// ---- performer-pytorch FastAttention ----

enum class FavorKernel { kSoftmax, kGeneralized, kNoProjection };

template <typename T>
struct FavorRefOptions {
  FavorKernel kernel = FavorKernel::kSoftmax;
  bool causal = false;
  // Softmax kernel, keys: subtract the max of dd over the whole (n, h) slice
  // (performer) or nothing.
  bool key_max_stabilizer = true;
  std::function<T(T)> kernel_fn = [](T x) { return x > 0 ? x : T(0); };  // relu
  double softmax_eps = 1e-4;      // inside phi of the softmax kernel
  double generalized_eps = 1e-3;  // added to kernel_fn
  double causal_eps = 1e-6;       // added to every element of cumsum(phi(K))
};

// The max stabilisers of the softmax kernel, which performer detaches:
// query [N, L, H] = max_f dd_q, key [N, H] = max over s and f of dd_k (or 0).
template <typename T>
struct FavorOffsets {
  std::vector<T> query;
  std::vector<T> key;
};

// dd [rows, m] = (c x) W^T with c = E^-1/4, for x [rows, E] and W [m, E].
template <typename T>
std::vector<T> PerformerProjection(int64_t rows, int64_t E, int64_t m,
                                   const T* x, const T* w) {
  const T c = std::pow(static_cast<T>(E), T(-0.25));
  std::vector<T> dd(rows * m, T(0));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t f = 0; f < m; ++f) {
      T sum = 0;
      for (int64_t e = 0; e < E; ++e) sum += c * x[r * E + e] * w[f * E + e];
      dd[r * m + f] = sum;
    }
  }
  return dd;
}

template <typename T>
FavorOffsets<T> PerformerSoftmaxOffsets(const AttentionShape& shape, const T* q,
                                        const T* k, const T* w, int64_t m,
                                        bool key_max_stabilizer) {
  const auto [N, L, S, H, E, D] = shape;
  FavorOffsets<T> offsets;
  const std::vector<T> dq = PerformerProjection<T>(N * L * H, E, m, q, w);
  const std::vector<T> dk = PerformerProjection<T>(N * S * H, E, m, k, w);
  offsets.query.assign(N * L * H, -std::numeric_limits<T>::infinity());
  for (int64_t r = 0; r < N * L * H; ++r) {
    for (int64_t f = 0; f < m; ++f) {
      offsets.query[r] = std::max(offsets.query[r], dq[r * m + f]);
    }
  }
  offsets.key.assign(
      N * H, key_max_stabilizer ? -std::numeric_limits<T>::infinity() : T(0));
  if (key_max_stabilizer) {
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t s = 0; s < S; ++s) {
        for (int64_t h = 0; h < H; ++h) {
          for (int64_t f = 0; f < m; ++f) {
            T& key = offsets.key[n * H + h];
            key = std::max(key, dk[((n * S + s) * H + h) * m + f]);
          }
        }
      }
    }
  }
  return offsets;
}

// phi [N, T, H, F] of queries (is_query) or keys for the chosen kernel.
// `offsets` holds the row maxima (queries: [N, T, H]) or the per-(n, h) maxima
// (keys: [N, H]) of the softmax kernel. F = m, or E for no_projection.
template <typename T>
std::vector<T> PerformerFeatures(const FeatureShape& shape, const T* x,
                                 const T* w, int64_t m,
                                 const FavorRefOptions<T>& options,
                                 bool is_query, const std::vector<T>& offsets) {
  const auto [N, L, H, E] = shape;
  const int64_t rows = N * L * H;
  if (options.kernel == FavorKernel::kNoProjection) {
    std::vector<T> phi(rows * E);
    if (is_query) {
      // softmax over e.
      for (int64_t r = 0; r < rows; ++r) {
        T max_value = -std::numeric_limits<T>::infinity();
        for (int64_t e = 0; e < E; ++e)
          max_value = std::max(max_value, x[r * E + e]);
        T total = 0;
        for (int64_t e = 0; e < E; ++e)
          total += std::exp(x[r * E + e] - max_value);
        for (int64_t e = 0; e < E; ++e)
          phi[r * E + e] = std::exp(x[r * E + e] - max_value) / total;
      }
    } else if (options.causal) {
      for (int64_t i = 0; i < rows * E; ++i) phi[i] = std::exp(x[i]);
    } else {
      // softmax over the sequence for each (n, h, e).
      for (int64_t n = 0; n < N; ++n) {
        for (int64_t h = 0; h < H; ++h) {
          for (int64_t e = 0; e < E; ++e) {
            auto at = [&](int64_t l) { return ((n * L + l) * H + h) * E + e; };
            T max_value = -std::numeric_limits<T>::infinity();
            for (int64_t l = 0; l < L; ++l)
              max_value = std::max(max_value, x[at(l)]);
            T total = 0;
            for (int64_t l = 0; l < L; ++l)
              total += std::exp(x[at(l)] - max_value);
            for (int64_t l = 0; l < L; ++l)
              phi[at(l)] = std::exp(x[at(l)] - max_value) / total;
          }
        }
      }
    }
    return phi;
  }
  const std::vector<T> dd = PerformerProjection<T>(rows, E, m, x, w);
  std::vector<T> phi(rows * m);
  if (options.kernel == FavorKernel::kGeneralized) {
    for (int64_t i = 0; i < rows * m; ++i) {
      phi[i] =
          options.kernel_fn(dd[i]) + static_cast<T>(options.generalized_eps);
    }
    return phi;
  }
  const T c = std::pow(static_cast<T>(E), T(-0.25));
  const T ratio = T(1) / std::sqrt(static_cast<T>(m));
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t n = r / (L * H), h = r % H;
    T diag = 0;
    for (int64_t e = 0; e < E; ++e) diag += x[r * E + e] * x[r * E + e];
    diag = diag / 2 * c * c;
    const T offset = is_query ? offsets[r] : offsets[n * H + h];
    for (int64_t f = 0; f < m; ++f) {
      phi[r * m + f] = ratio * (std::exp(dd[r * m + f] - diag - offset) +
                                static_cast<T>(options.softmax_eps));
    }
  }
  return phi;
}

// FastAttention.forward on per-head (q, k, v) with projection W [m, E]:
//   non-causal: out_l = phi(q_l) sum_s phi(k_s) v_s^T
//                       / (phi(q_l) . sum_s phi(k_s)),
//   causal:     out_i = phi(q_i) sum_{j<=i} phi(k_j) v_j^T
//                       / (phi(q_i) . (sum_{j<=i} phi(k_j) + causal_eps)).
// Key lengths zero the V rows of padded keys (performer's v.masked_fill_);
// padded keys still enter the key sums. `offsets` freezes the softmax-kernel
// stabilisers (as autograd sees them, detached); null computes them from q and
// k.
template <typename T>
void FavorAttention(const AttentionShape& shape, const T* q, const T* k,
                    const T* v, const T* w, int64_t m,
                    const FavorRefOptions<T>& options,
                    const std::vector<int64_t>& key_lengths,
                    const FavorOffsets<T>* offsets, T* out) {
  const auto [N, L, S, H, E, D] = shape;
  FavorOffsets<T> computed;
  if (options.kernel == FavorKernel::kSoftmax && offsets == nullptr) {
    computed = PerformerSoftmaxOffsets<T>(shape, q, k, w, m,
                                          options.key_max_stabilizer);
    offsets = &computed;
  }
  const std::vector<T> no_offsets;
  const std::vector<T> phi_q =
      PerformerFeatures<T>({N, L, H, E}, q, w, m, options, true,
                           offsets ? offsets->query : no_offsets);
  const std::vector<T> phi_k =
      PerformerFeatures<T>({N, S, H, E}, k, w, m, options, false,
                           offsets ? offsets->key : no_offsets);
  const int64_t F = options.kernel == FavorKernel::kNoProjection ? E : m;
  for (int64_t n = 0; n < N; ++n) {
    const int64_t valid_keys = key_lengths.empty() ? S : key_lengths[n];
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t l = 0; l < L; ++l) {
        const T* ql = phi_q.data() + ((n * L + l) * H + h) * F;
        const int64_t last_key = options.causal ? l + 1 : S;
        std::vector<T> key_sum(F, T(0)), numerator(D, T(0));
        for (int64_t s = 0; s < last_key; ++s) {
          const T* ks = phi_k.data() + ((n * S + s) * H + h) * F;
          T similarity = 0;
          for (int64_t f = 0; f < F; ++f) {
            key_sum[f] += ks[f];
            similarity += ql[f] * ks[f];
          }
          if (s >= valid_keys) continue;
          const T* vs = v + ((n * S + s) * H + h) * D;
          for (int64_t d = 0; d < D; ++d) numerator[d] += similarity * vs[d];
        }
        T denominator = 0;
        for (int64_t f = 0; f < F; ++f) {
          denominator +=
              ql[f] *
              (key_sum[f] +
               (options.causal ? static_cast<T>(options.causal_eps) : T(0)));
        }
        T* ol = out + ((n * L + l) * H + h) * D;
        for (int64_t d = 0; d < D; ++d) ol[d] = numerator[d] / denominator;
      }
    }
  }
}

}  // namespace ftx::reference

#endif  // FTX_KERNELS_REFERENCE_FAVOR_REF_H_
