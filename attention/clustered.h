// Clustered attention (Vyas, Katharopoulos, Fleuret 2020, "Fast Transformers
// with Clustered Attention"), as fast-transformers 0.4.0's "clustered",
// "improved-clustered" and "causal-improved-clustered"
// (attention/clustered_attention.py, improved_clustered_attention.py,
// improved_clustered_causal_attention.py):
//
//   1. every valid query is hashed with SIMPLE-LSH on planes [bits, E + 1] and
//   the
//      hashes of each (n, h) are grouped by Hamming k-means into C clusters
//      (lsh.h);
//   2. Q_c = mean of the raw queries of cluster c;  scores_c = Q_c K^T +
//   key-length mask;
//   3. "clustered":  out_i = dropout(softmax(t scores_c)) V  for every member i
//   of c;
//      "improved-clustered": T_c = the top-min(topk, S) keys of scores_c,
//        P_c = softmax(t scores_c), B_c = P_c with the columns of T_c zeroed,
//        m_c = sum(B_c), out_i = dropout(B_c) V
//                                + sum_{j in T_c} dropout((1 - m_c) a_ij) v_j,
//        a_i = softmax_{j in T_c}(t q_i . k_j) over the unpadded keys of T_c
//        (with topk >= S this is exact softmax attention);
//      "causal-improved-clustered": T_c = top-min(topk, min key length) keys of
//        scores_c, out_i = sum_j dropout(a_ij) v_j with a_i = softmax over the
//        keys of T_c at positions <= i, and a zero output when they are all in
//        the future.
//   t = softmax_temp or 1/sqrt(E). Queries past query_lengths are not clustered
//   and get a zero output. Only an all-ones attn_mask is accepted
//   ("causal-...": only the lower-triangular AttnMask::Causal()), as
//   fast-transformers asserts.
//
// Randomness: the planes (N(0, 1); last column zeroed when hash_bias is false)
// and the initial centroid positions are drawn per call from Philox with the
// key CombineSeeds(seed option, AttentionInputs::seed) unless fixed with
// SetPlanes / SetInitialCentroids; empty clusters are reseeded from the same
// key (lsh.h). Dropout (training only) uses AttentionInputs::seed; the
// cluster-level matrix shares one mask among a cluster's members, as in
// fast-transformers.
//
// Backward: the hashes, clusters and top-k sets are constants (as under PyTorch
// autograd); gradients flow through Q_c (mean of the members), the exact top-k
// dot products, the softmaxes, m_c and V. d_queries, d_keys and d_values are
// written (=).
//
// Differences from fast-transformers (documented, deliberate):
//   - reproducible randomness (above); fast-transformers reseeds empty clusters
//     from an unseeded random_device and starts the k-means from the hashes at
//     np.random.choice(L, C, replace=False) (clustering/hamming/__init__.py);
//     SetInitialCentroids with those positions reproduces that start;
//   - ties of torch.topk(sorted=False) are resolved towards the lower key
//   index;
//   - improved-clustered masks a top-k slot when that cluster's own key is
//   padded,
//     where fast-transformers reuses the slot pattern of the first (n, 0, 0)
//     cluster (the same set whenever torch.topk orders slots consistently);
//   - causal-improved-clustered drops future keys from the softmax exactly,
//   where
//     fast-transformers fills them with -1e7 (identical unless a dot product is
//     ~-1e7);
//   - improved-clustered's backward includes the gradient through the
//     factor (1 - m_c) of the top-k weights; fast-transformers broadcasts m_c
//     with a raw kernel call that autograd does not see, so its dQ and dK
//     miss that term (the forward is the same; the parity test
//     tests/parity/fast_transformers_attention_test.cc compares with the
//     library's gradient with that call made differentiable);
//   - a query whose keys are all padded gets a zero output instead of NaN;
//   - no recurrent form: the clusters depend on every query of the sequence.
//
// Cost: O(N H (L C + L bits E + C S E + L topk (E + D))) time, O(N H (C S + L
// topk)) memory; no L x S matrix.
#ifndef FTX_ATTENTION_CLUSTERED_H_
#define FTX_ATTENTION_CLUSTERED_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "attention/attention.h"
#include "attention/registry.h"

namespace ftx {

enum class ClusteredVariant { kClustered, kImproved, kCausalImproved };

struct ClusteredAttentionOptions {
  int64_t clusters = 0;     // C, required: 1 <= C <= L
  int64_t iterations = 10;  // Lloyd iterations, >= 0
  int64_t bits = 63;        // hash bits, 1..63
  bool hash_bias = true;    // false: planes through the origin (cosine LSH)
  int64_t topk = 32;  // improved variants: keys recomputed exactly per cluster
  std::optional<float> softmax_temp;  // default 1/sqrt(E)
  float attention_dropout = 0.1f;
  uint64_t seed =
      0;  // hashing planes, initial centroids, empty-cluster reseeds
};

class ClusteredAttention : public Attention {
 public:
  // InvalidArgument for options outside the ranges above.
  static absl::StatusOr<std::unique_ptr<ClusteredAttention>> Create(
      ClusteredVariant variant, const ClusteredAttentionOptions& options);

  const char* name() const override;
  ClusteredVariant variant() const { return variant_; }
  const ClusteredAttentionOptions& options() const { return options_; }

  // Fixes the hashing planes [bits, E + 1] of every later call (copied and used
  // as given; hash_bias does not apply). The width is checked against E on
  // Forward.
  absl::Status SetPlanes(TensorView<const float> planes);
  // Fixes the query positions whose hashes start the k-means (C of them, shared
  // by every (n, h)); each must be < L on Forward.
  absl::Status SetInitialCentroids(std::vector<int64_t> positions);

  absl::Status Forward(const Context& ctx, const AttentionInputs& inputs,
                       TensorView<float> out, AttentionCache* cache) override;
  absl::Status Backward(const Context& ctx, const AttentionInputs& inputs,
                        const AttentionCache& cache,
                        TensorView<const float> d_out,
                        const AttentionGrads& grads) override;

 private:
  ClusteredAttention(ClusteredVariant variant,
                     const ClusteredAttentionOptions& options)
      : variant_(variant), options_(options) {}

  // Checks the mask, sizes and fixed randomness of a call; returns the number
  // of top-k keys per cluster (0 for "clustered").
  absl::StatusOr<int64_t> CheckCall(const char* op, const AttentionDims& dims,
                                    const AttentionInputs& inputs) const;
  float Temperature(int64_t qk_dim) const;
  bool DropoutActive(const AttentionInputs& inputs) const {
    return inputs.training && options_.attention_dropout > 0.0f;
  }
  // Hashes and clusters the queries into cache.saved (assignment, counts).
  absl::Status ClusterQueries(const Context& ctx, const AttentionInputs& inputs,
                              const AttentionDims& dims, AttentionCache& saved);

  ClusteredVariant variant_;
  ClusteredAttentionOptions options_;
  Tensor fixed_planes_;  // [bits, E + 1] when set
  std::vector<int64_t> fixed_positions_;
  Tensor planes_, projections_, hashes_, hamming_centroids_, cluster_values_;
  AttentionCache scratch_;
  AttentionCache grad_scratch_;
};

// Registry entries with fast-transformers' names, options and defaults
// (clusters required, iterations 10, bits 63, hash_bias true, topk 32,
// softmax_temp 1/sqrt(E), attention_dropout 0.1) plus `seed`.
AttentionSpec ClusteredAttentionSpec();
AttentionSpec ImprovedClusteredAttentionSpec();
AttentionSpec CausalImprovedClusteredAttentionSpec();

}  // namespace ftx

#endif  // FTX_ATTENTION_CLUSTERED_H_
