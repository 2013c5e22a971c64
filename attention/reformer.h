// "reformer": shared-QK LSH attention (Kitaev, Kaiser, Levskaya 2020,
// "Reformer: The Efficient Transformer"), as fast-transformers 0.4.0's
// ReformerAttention (attention/reformer_attention.py). Self-attention only; the
// keys argument is ignored:
//
//   K = Q / |Q| per token and head, zero for padded keys;
//   mask(i, j) = key-length mask (-inf) + (masked ? -1e9 on i == j) +
//   attn_mask(i, j); per round r (planes R_r: [bits, E]):
//     bucket = argmax([K R_r^T, -K R_r^T]) (2 bits buckets, lsh.h),
//     positions sorted by bucket (stable) and cut into chunks of chunk_size;
//     chunk b attends to [chunk b - 1, chunk b] (a one-chunk look-back; chunk 0
//     sees chunk_size zero keys with zero values in place of chunk -1, always
//     masked, no wrap-around); a row whose mask is entirely infinite gets mask
//     0 on all its 2 chunk_size slots; P = dropout(softmax(t (q_i . k_j +
//     mask(i, j)))),  out_r = P V;
//   out = (1 / rounds) sum_r out_r   (an equal-weight average, not the paper's
//   log-sum-exp combination).
// t = softmax_temp or 1/sqrt(E); note that the mask is scaled by t too, as in
// fast-transformers. L must be divisible by chunk_size; values need S = L.
// Query lengths are ignored (padded queries are computed as usual).
//
// Randomness: the planes of round r are N(0, 1) draws from Philox with the key
// CombineSeeds(seed option, AttentionInputs::seed) (lsh.h) unless fixed with
// SetPlanes; dropout (training only) uses AttentionInputs::seed.
//
// Backward: the buckets and sort orders are constants (as under PyTorch
// autograd); gradients flow through q_i as query, through K = Q/|Q| into Q, and
// into V. d_queries and d_values are written (=); d_keys is written with zeros.
//
// Differences from fast-transformers (documented, deliberate):
//   - the sort is stable (torch.argsort's order of equal buckets is
//   unspecified);
//   - a zero query gives a zero key where fast-transformers divides by zero
//   (NaN);
//   - values may have D != E (fast-transformers reshapes the output with E);
//   - reproducible randomness (above).
//
// Cost: O(N H rounds L (bits E + chunk_size (E + D))) time, the chunk products
// as batched SGEMMs over overlapping look-back windows; O(N H rounds L
// chunk_size) memory for the saved probabilities; no L x L matrix.
#ifndef FTX_ATTENTION_REFORMER_H_
#define FTX_ATTENTION_REFORMER_H_

#include <cstdint>
#include <memory>
#include <optional>

#include "absl/status/statusor.h"
#include "attention/attention.h"
#include "attention/registry.h"

namespace ftx {

struct ReformerAttentionOptions {
  int64_t chunk_size = 32;  // must divide L
  int64_t bits = 63;        // planes per round; 2 bits buckets
  int64_t rounds = 4;       // hashing rounds, averaged
  bool masked =
      false;  // a query does not attend to itself (-1e9 on the diagonal)
  std::optional<float> softmax_temp;  // default 1/sqrt(E)
  float attention_dropout = 0.1f;
  uint64_t seed = 0;  // hashing planes
};

class ReformerAttention : public Attention {
 public:
  // InvalidArgument for chunk_size, bits or rounds < 1 or a dropout outside [0,
  // 1).
  static absl::StatusOr<std::unique_ptr<ReformerAttention>> Create(
      const ReformerAttentionOptions& options);

  const char* name() const override { return "reformer"; }
  const ReformerAttentionOptions& options() const { return options_; }

  // Fixes the planes [rounds, bits, E] of every later call (copied). E is
  // checked on Forward.
  absl::Status SetPlanes(TensorView<const float> planes);

  absl::Status Forward(const Context& ctx, const AttentionInputs& inputs,
                       TensorView<float> out, AttentionCache* cache) override;
  absl::Status Backward(const Context& ctx, const AttentionInputs& inputs,
                        const AttentionCache& cache,
                        TensorView<const float> d_out,
                        const AttentionGrads& grads) override;

 private:
  explicit ReformerAttention(const ReformerAttentionOptions& options)
      : options_(options) {}

  absl::Status CheckCall(const char* op, const AttentionDims& dims) const;
  float Temperature(int64_t qk_dim) const;
  // Sizes the work buffers (the gradient ones too when `backward`).
  absl::Status EnsureWork(const Context& ctx, const AttentionDims& dims,
                          bool backward);
  // Fills the sorted query, key (normalized) and value buffers of one round.
  void GatherSorted(const Context& ctx, const AttentionDims& dims,
                    const AttentionInputs& inputs, const float* keys,
                    const int32_t* orders);
  bool DropoutActive(const AttentionInputs& inputs) const {
    return inputs.training && options_.attention_dropout > 0.0f;
  }

  ReformerAttentionOptions options_;
  Tensor fixed_planes_;  // [rounds, bits, E] when set
  Tensor planes_, projections_, buckets_;
  AttentionCache scratch_;
  // Per-round gathers in sorted order and their gradients (see reformer.cc).
  AttentionCache work_;
};

// Registry entry with fast-transformers' name, options and defaults (chunk_size
// 32, bits 63, rounds 4, masked false, softmax_temp 1/sqrt(E),
// attention_dropout 0.1) plus `seed`.
AttentionSpec ReformerAttentionSpec();

}  // namespace ftx

#endif  // FTX_ATTENTION_REFORMER_H_
