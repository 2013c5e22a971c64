// Scalar references of fast-transformers 0.4.0's hashing-based attentions
// (SEMANTICS.md sections 2.4 and 2.9), written straight from the math and
// templated so tests can run them in double and take central differences:
//   - SIMPLE-LSH hashes, Hamming k-means (one sequence at a time) and Reformer
//   buckets;
//   - "clustered", "improved-clustered" and "causal-improved-clustered"
//   attention;
//   - "reformer" attention (shared-QK LSH attention).
// The random choices (hashing planes, initial centroid positions, the seeded
// reseed of empty clusters, see attention/lsh.h) are inputs, so a reference run
// and a mechanism given the same ones must agree. Each attention can report its
// discrete choices (hashes, clusters, top-k sets, sort orders) so a gradient
// check can assert that its perturbations did not change them. Contiguous
// layout: queries [N, L, H, E], keys [N, S, H, E], values [N, S, H, D], out [N,
// L, H, D]; planes are float as the mechanisms store them.
#ifndef FTX_KERNELS_REFERENCE_CLUSTERED_REF_H_
#define FTX_KERNELS_REFERENCE_CLUSTERED_REF_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "kernels/base/philox.h"
#include "kernels/reference/attention_ref.h"

namespace ftx::reference {

// bit b = [x . planes[b, :dim] > planes[b, dim]], planes: [bits, dim + 1].
template <typename T>
int64_t SimpleLshHash(const T* x, int64_t dim, const float* planes,
                      int64_t bits) {
  int64_t hash = 0;
  for (int64_t b = 0; b < bits; ++b) {
    const float* plane = planes + b * (dim + 1);
    T dot = 0;
    for (int64_t e = 0; e < dim; ++e) dot += x[e] * static_cast<T>(plane[e]);
    if (dot > static_cast<T>(plane[dim])) hash |= int64_t{1} << b;
  }
  return hash;
}

// argmax over [x R^T, -x R^T] (first maximum), planes R: [bits, dim].
template <typename T>
int64_t AngularBucket(const T* x, int64_t dim, const float* planes,
                      int64_t bits) {
  std::vector<T> candidates(2 * bits);
  for (int64_t b = 0; b < bits; ++b) {
    T dot = 0;
    for (int64_t e = 0; e < dim; ++e)
      dot += x[e] * static_cast<T>(planes[b * dim + e]);
    candidates[b] = dot;
    candidates[bits + b] = -dot;
  }
  int64_t best = 0;
  for (int64_t i = 1; i < 2 * bits; ++i) {
    if (candidates[i] > candidates[best]) best = i;
  }
  return best;
}

// The seeded centroid of an empty cluster (the rule of attention/lsh.h
// ReseedCentroid).
inline int64_t ReseedCentroid(uint64_t seed, int64_t sequence, int64_t round,
                              int64_t cluster, int64_t clusters, int64_t bits) {
  const uint64_t stream = (static_cast<uint64_t>(sequence) << 16) | 0x15A2u;
  const uint64_t index = 2 * static_cast<uint64_t>(round * clusters + cluster);
  const uint64_t high = RandomBits(seed, stream, index);
  const uint64_t low = RandomBits(seed, stream, index + 1);
  return static_cast<int64_t>(((high << 32) | low) &
                              ((uint64_t{1} << bits) - 1));
}

// Lloyd k-means of one sequence's hashes [L] in Hamming space: centroids start
// at hashes[initial_indices]; `iterations - 1` rounds of (assign to the nearest
// centroid, first minimum on ties; each centroid becomes the bitwise majority
// of its members, a tie giving 0, or ReseedCentroid when it has none), then a
// final assignment. Only the first `valid` positions are clustered; the rest
// get -1.
inline void HammingKMeans(const int64_t* hashes, int64_t length, int64_t valid,
                          const std::vector<int64_t>& initial_indices,
                          int64_t iterations, int64_t bits,
                          uint64_t reseed_seed, int64_t sequence,
                          int32_t* assignment, int64_t* centroids) {
  const int64_t clusters = static_cast<int64_t>(initial_indices.size());
  const int64_t mask = static_cast<int64_t>((uint64_t{1} << bits) - 1);
  for (int64_t c = 0; c < clusters; ++c)
    centroids[c] = hashes[initial_indices[c]] & mask;
  for (int64_t l = 0; l < length; ++l) assignment[l] = -1;
  const auto assign = [&] {
    for (int64_t l = 0; l < valid; ++l) {
      int64_t best = 0;
      int best_distance = 1000;
      for (int64_t c = 0; c < clusters; ++c) {
        int distance = 0;
        for (int64_t b = 0; b < 64; ++b) {
          distance +=
              static_cast<int>((((hashes[l] & mask) ^ centroids[c]) >> b) & 1);
        }
        if (distance < best_distance) {
          best_distance = distance;
          best = c;
        }
      }
      assignment[l] = static_cast<int32_t>(best);
    }
  };
  for (int64_t round = 0; round + 1 < iterations; ++round) {
    assign();
    for (int64_t c = 0; c < clusters; ++c) {
      int64_t members = 0;
      std::vector<int64_t> balance(bits, 0);  // (#ones - #zeros) per bit
      for (int64_t l = 0; l < valid; ++l) {
        if (assignment[l] != c) continue;
        ++members;
        for (int64_t b = 0; b < bits; ++b)
          balance[b] += ((hashes[l] >> b) & 1) ? 1 : -1;
      }
      if (members == 0) {
        centroids[c] =
            ReseedCentroid(reseed_seed, sequence, round, c, clusters, bits);
        continue;
      }
      int64_t centroid = 0;
      for (int64_t b = 0; b < bits; ++b) {
        if (balance[b] > 0) centroid |= int64_t{1} << b;
      }
      centroids[c] = centroid;
    }
  }
  assign();
}

enum class ClusteredKind { kClustered, kImproved, kCausalImproved };

struct ClusteredConfig {
  ClusteredKind kind = ClusteredKind::kClustered;
  int64_t iterations = 10;
  int64_t bits = 63;
  const float* planes = nullptr;         // [bits, E + 1]
  std::vector<int64_t> initial_indices;  // [C], shared by every (n, h)
  uint64_t reseed_seed = 0;
  int64_t topk = 32;  // improved variants
  double temp = 1.0;  // softmax temperature t
};

// Discrete choices of a clustered forward.
struct ClusteredChoices {
  std::vector<int64_t> hashes;      // [N, H, L]
  std::vector<int32_t> assignment;  // [N, H, L]
  std::vector<int64_t> top_keys;    // [N, H, C, k], each set sorted ascending
  bool operator==(const ClusteredChoices& other) const {
    return hashes == other.hashes && assignment == other.assignment &&
           top_keys == other.top_keys;
  }
};

// Indices of the k largest scores (ties: the lower index), sorted ascending.
template <typename T>
std::vector<int64_t> TopIndices(const std::vector<T>& scores, int64_t k) {
  std::vector<int64_t> order(scores.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return scores[a] > scores[b]; });
  order.resize(k);
  std::sort(order.begin(), order.end());
  return order;
}

// softmax(temp * x) over the entries with allowed[i]; the others (and every
// entry of a row with none allowed) get 0.
template <typename T>
std::vector<T> MaskedSoftmax(const std::vector<T>& x,
                             const std::vector<bool>& allowed, double temp) {
  std::vector<T> p(x.size(), 0);
  T max_value = -std::numeric_limits<T>::infinity();
  for (size_t i = 0; i < x.size(); ++i) {
    if (allowed[i])
      max_value = std::max(max_value, static_cast<T>(temp) * x[i]);
  }
  if (max_value == -std::numeric_limits<T>::infinity()) return p;
  T total = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    if (!allowed[i]) continue;
    p[i] = std::exp(static_cast<T>(temp) * x[i] - max_value);
    total += p[i];
  }
  for (T& value : p) value /= total;
  return p;
}

// The clustered family of fast-transformers (SEMANTICS.md section 2.4):
//   clusters of the SIMPLE-LSH hashes of the valid queries, centroid Q_c = mean
//   of the raw member queries, scores_c = Q_c K^T with padded keys removed;
//   kClustered:      out_i = softmax(t scores_c) V for every member i of
//   cluster c; kImproved:       T_c = top-min(topk, S) keys of scores_c; P_c =
//   softmax(t scores_c);
//                    m_c = sum of P_c outside T_c; out_i = (P_c outside T_c) V
//                    + (1 - m_c) softmax_{j in T_c, j valid}(t q_i . k_j) V_j;
//   kCausalImproved: T_c = top-min(topk, min key length) keys of scores_c;
//                    out_i = softmax_{j in T_c, j <= i}(t q_i . k_j) V_j, 0 if
//                    none.
// Queries past their length get a zero output. No dropout.
template <typename T>
void ClusteredAttention(const AttentionShape& shape, const T* q, const T* k,
                        const T* v, const ClusteredConfig& config,
                        const std::vector<int64_t>& query_lengths,
                        const std::vector<int64_t>& key_lengths, T* out,
                        ClusteredChoices* choices = nullptr) {
  const auto [N, L, S, H, E, D] = shape;
  const int64_t C = static_cast<int64_t>(config.initial_indices.size());
  int64_t top_count = std::min<int64_t>(config.topk, S);
  if (config.kind == ClusteredKind::kCausalImproved) {
    for (int64_t n = 0; n < N; ++n) {
      top_count = std::min(top_count, key_lengths.empty() ? S : key_lengths[n]);
    }
  }
  if (config.kind == ClusteredKind::kClustered) top_count = 0;
  ClusteredChoices local;
  ClusteredChoices& chosen = choices != nullptr ? *choices : local;
  chosen.hashes.assign(N * H * L, 0);
  chosen.assignment.assign(N * H * L, -1);
  chosen.top_keys.assign(N * H * C * top_count, 0);
  std::fill(out, out + N * L * H * D, T(0));
  const auto query = [&](int64_t n, int64_t l, int64_t h) {
    return q + ((n * L + l) * H + h) * E;
  };
  const auto key = [&](int64_t n, int64_t s, int64_t h) {
    return k + ((n * S + s) * H + h) * E;
  };
  const auto value = [&](int64_t n, int64_t s, int64_t h) {
    return v + ((n * S + s) * H + h) * D;
  };
  for (int64_t n = 0; n < N; ++n) {
    const int64_t valid_queries = query_lengths.empty() ? L : query_lengths[n];
    const int64_t valid_keys = key_lengths.empty() ? S : key_lengths[n];
    for (int64_t h = 0; h < H; ++h) {
      const int64_t sequence = n * H + h;
      int64_t* hashes = chosen.hashes.data() + sequence * L;
      int32_t* assignment = chosen.assignment.data() + sequence * L;
      for (int64_t l = 0; l < L; ++l) {
        hashes[l] =
            SimpleLshHash(query(n, l, h), E, config.planes, config.bits);
      }
      std::vector<int64_t> centroids(C);
      HammingKMeans(hashes, L, valid_queries, config.initial_indices,
                    config.iterations, config.bits, config.reseed_seed,
                    sequence, assignment, centroids.data());
      for (int64_t c = 0; c < C; ++c) {
        std::vector<int64_t> members;
        for (int64_t l = 0; l < valid_queries; ++l) {
          if (assignment[l] == c) members.push_back(l);
        }
        std::vector<T> center(E, 0);
        for (int64_t l : members) {
          for (int64_t e = 0; e < E; ++e) center[e] += query(n, l, h)[e];
        }
        for (T& x : center)
          x /= static_cast<T>(std::max<size_t>(members.size(), 1));
        std::vector<T> scores(S);
        std::vector<bool> key_valid(S);
        for (int64_t s = 0; s < S; ++s) {
          T dot = 0;
          for (int64_t e = 0; e < E; ++e) dot += center[e] * key(n, s, h)[e];
          key_valid[s] = s < valid_keys;
          scores[s] = key_valid[s] ? dot : -std::numeric_limits<T>::infinity();
        }
        const std::vector<T> probabilities =
            MaskedSoftmax(scores, key_valid, config.temp);
        std::vector<int64_t> top;
        if (top_count > 0) {
          top = TopIndices(scores, top_count);
          std::copy(top.begin(), top.end(),
                    chosen.top_keys.begin() + (sequence * C + c) * top_count);
        }
        // Cluster-level part: clustered uses all keys, improved only those
        // outside T_c.
        std::vector<T> cluster_out(D, 0);
        T bottom_mass = 0;
        if (config.kind != ClusteredKind::kCausalImproved) {
          std::vector<bool> in_top(S, false);
          for (int64_t s : top) in_top[s] = true;
          for (int64_t s = 0; s < S; ++s) {
            if (in_top[s]) continue;
            bottom_mass += probabilities[s];
            for (int64_t d = 0; d < D; ++d)
              cluster_out[d] += probabilities[s] * value(n, s, h)[d];
          }
        }
        for (int64_t l : members) {
          T* o = out + ((n * L + l) * H + h) * D;
          for (int64_t d = 0; d < D; ++d) o[d] = cluster_out[d];
          if (config.kind == ClusteredKind::kClustered) continue;
          std::vector<T> dots(top_count);
          std::vector<bool> allowed(top_count);
          for (int64_t j = 0; j < top_count; ++j) {
            const int64_t s = top[j];
            T dot = 0;
            for (int64_t e = 0; e < E; ++e)
              dot += query(n, l, h)[e] * key(n, s, h)[e];
            dots[j] = dot;
            allowed[j] =
                s < valid_keys &&
                (config.kind != ClusteredKind::kCausalImproved || s <= l);
          }
          const std::vector<T> weights =
              MaskedSoftmax(dots, allowed, config.temp);
          const T scale = config.kind == ClusteredKind::kImproved
                              ? T(1) - bottom_mass
                              : T(1);
          for (int64_t j = 0; j < top_count; ++j) {
            for (int64_t d = 0; d < D; ++d)
              o[d] += scale * weights[j] * value(n, top[j], h)[d];
          }
        }
      }
    }
  }
}

struct ReformerConfig {
  int64_t chunk_size = 32;
  int64_t rounds = 4;
  int64_t bits = 63;
  bool masked = false;            // -1e9 on the diagonal
  double temp = 1.0;              // softmax temperature t
  const float* planes = nullptr;  // [rounds, bits, E]
};

// fast-transformers' "reformer" (SEMANTICS.md section 2.4), keys ignored:
//   K = Q / |Q| per token and head, zero for padded keys (and for a zero
//   query); per round r: bucket = AngularBucket(K, planes[r]); positions sorted
//   by bucket (stable); chunk b of chunk_size sorted queries attends to slots
//   [previous chunk, own chunk] (chunk 0: chunk_size zero keys with zero
//   values, masked); mask(i, j) = key-length mask + (masked ? -1e9 on i == j) +
//   attn_mask(i, j); a row whose mask is entirely infinite gets mask 0
//   everywhere (fake slots included); P = softmax(t (q_i . k_j + mask)); out +=
//   P V / rounds.
// `orders` receives the sorted positions [rounds, N, H, L].
template <typename T>
void ReformerAttention(const AttentionShape& shape, const T* q, const T* v,
                       const ReformerConfig& config,
                       const AdditiveMaskFn& attn_mask,
                       const std::vector<int64_t>& key_lengths, T* out,
                       std::vector<int64_t>* orders = nullptr) {
  const auto [N, L, S, H, E, D] = shape;
  const int64_t C = config.chunk_size, R = config.rounds;
  const T inf = std::numeric_limits<T>::infinity();
  std::vector<int64_t> local_orders;
  std::vector<int64_t>& all_orders = orders != nullptr ? *orders : local_orders;
  all_orders.assign(R * N * H * L, 0);
  std::fill(out, out + N * L * H * D, T(0));
  for (int64_t n = 0; n < N; ++n) {
    const int64_t valid_keys = key_lengths.empty() ? L : key_lengths[n];
    for (int64_t h = 0; h < H; ++h) {
      std::vector<T> keys(L * E, 0);
      for (int64_t l = 0; l < valid_keys; ++l) {
        const T* ql = q + ((n * L + l) * H + h) * E;
        T norm = 0;
        for (int64_t e = 0; e < E; ++e) norm += ql[e] * ql[e];
        norm = std::sqrt(norm);
        if (norm == 0) continue;
        for (int64_t e = 0; e < E; ++e) keys[l * E + e] = ql[e] / norm;
      }
      for (int64_t r = 0; r < R; ++r) {
        std::vector<int64_t> buckets(L);
        for (int64_t l = 0; l < L; ++l) {
          buckets[l] =
              AngularBucket(keys.data() + l * E, E,
                            config.planes + r * config.bits * E, config.bits);
        }
        std::vector<int64_t> order(L);
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
          return buckets[a] < buckets[b];
        });
        std::copy(order.begin(), order.end(),
                  all_orders.begin() + ((r * N + n) * H + h) * L);
        for (int64_t i = 0; i < L; ++i) {
          const int64_t chunk = i / C;
          const int64_t query_position = order[i];
          const T* qi = q + ((n * L + query_position) * H + h) * E;
          // Slot j holds sorted position (chunk - 1) * C + j; negative ones are
          // fake.
          std::vector<T> dots(2 * C, 0), mask(2 * C, 0);
          std::vector<int64_t> positions(2 * C, -1);
          bool all_infinite = true;
          for (int64_t j = 0; j < 2 * C; ++j) {
            const int64_t sorted = (chunk - 1) * C + j;
            if (sorted < 0) {
              mask[j] = -inf;
              continue;
            }
            const int64_t p = order[sorted];
            positions[j] = p;
            for (int64_t e = 0; e < E; ++e) dots[j] += qi[e] * keys[p * E + e];
            T m = p < valid_keys ? T(0) : -inf;
            if (config.masked && p == query_position) m += T(-1e9);
            m += static_cast<T>(attn_mask(query_position, p));
            mask[j] = m;
            if (!std::isinf(m)) all_infinite = false;
          }
          std::vector<T> scores(2 * C);
          std::vector<bool> allowed(2 * C);
          for (int64_t j = 0; j < 2 * C; ++j) {
            scores[j] = dots[j] + (all_infinite ? T(0) : mask[j]);
            allowed[j] = scores[j] != -inf;
          }
          const std::vector<T> p = MaskedSoftmax(scores, allowed, config.temp);
          T* o = out + ((n * L + query_position) * H + h) * D;
          for (int64_t j = 0; j < 2 * C; ++j) {
            if (positions[j] < 0) continue;
            const T* vj = v + ((n * S + positions[j]) * H + h) * D;
            for (int64_t d = 0; d < D; ++d)
              o[d] += p[j] * vj[d] / static_cast<T>(R);
          }
        }
      }
    }
  }
}

}  // namespace ftx::reference

#endif  // FTX_KERNELS_REFERENCE_CLUSTERED_REF_H_
