// "exact-topk": oracle top-k softmax attention (Zhao et al. 2019, "Explicit
// Sparse Transformer"), as fast-transformers' ExactTopKAttention
// (attention/exact_topk_attention.py), per (n, h, l):
//   z = Q K^T + attn_mask + key_length_mask          (unscaled dots)
//   z_s = -inf for every s outside topk(z, min(topk, S))
//   P = dropout(softmax(t * z)),  out = P V,   t = softmax_temp or 1/sqrt(E).
// Note that fast-transformers scales a finite additive attn_mask by t as well.
// torch.topk breaks ties in no documented order; here the lower key indices
// win, so exactly k keys are kept.
//
// With sparse_topk_ties, the selection is x-transformers' attn_sparse_topk
// (Attention.forward, SEMANTICS.md section 6.2, step 15) instead:
//   z = t * Q K^T + attn_mask + key_length_mask,  keep z >= k-th largest (ties
//   kept, so more than k keys may survive), P = dropout(softmax(z)).
// x-transformers fills masked entries with -finfo.max, ftx with -inf; they
// differ only for a query whose keys are all masked, which gets a uniform row
// there and a zero output here (as in "full"). With use_entmax15, entmax-1.5
// (attention/entmax.h) replaces the softmax (x-transformers attn_use_entmax15);
// topk >= S then gives plain entmax attention.
//
// Query lengths are ignored. Dropout (default 0.1) applies only when
// AttentionInputs::training is set; its mask comes from the Philox stream of
// AttentionInputs::seed, so the backward regenerates it. The backward treats
// the selection as constant (gradients flow only through the kept entries).
//
// Cost: O(N H L S E) time, O(N H L S) memory for the saved probabilities.
#ifndef FTX_ATTENTION_EXACT_TOPK_H_
#define FTX_ATTENTION_EXACT_TOPK_H_

#include <cstdint>
#include <optional>

#include "absl/status/status.h"
#include "attention/attention.h"
#include "attention/entmax.h"
#include "attention/registry.h"

namespace ftx {

enum class TopKSelection {
  kExactlyK,  // fast-transformers: k entries, ties broken towards lower indices
  kKeepTies,  // x-transformers sparse_topk: every entry >= the k-th largest
};

// Keeps the selected entries of each row of scores [..., S] and sets the others
// to -inf; k >= S leaves the rows unchanged; a row holding NaN is left as it
// is. Leading axes must collapse into rows; the last axis must have unit
// stride. InvalidArgument for k < 1 or an unusable view; CPU only.
absl::Status KeepTopK(const Context& ctx, TensorView<float> scores, int64_t k,
                      TopKSelection selection);

// Score helpers shared with "talking-heads".
// scores: contiguous [H, N, L, S]; adds attn_mask(l, s) and sets keys past each
// sequence's key length to -inf. Query lengths are ignored.
void ApplyScoreMasks(const Context& ctx, const AttentionInputs& inputs,
                     const AttentionDims& dims, float* scores);

// out[i] = in[i] * keep_i / (1 - p), keep_i = (U(offset + i) >= p) with U
// element offset + i of the Philox (seed, stream) uniforms, so a backward
// regenerates the forward's mask. out may be in.
void ApplyDropoutMask(const Context& ctx, float p, uint64_t seed,
                      uint64_t stream, uint64_t offset, int64_t count,
                      const float* in, float* out);

struct ExactTopKAttentionOptions {
  int64_t topk = 32;
  std::optional<float> softmax_temp;  // default 1/sqrt(E)
  float attention_dropout = 0.1f;
  bool sparse_topk_ties = false;  // x-transformers' selection (see above)
  bool use_entmax15 = false;
};

class ExactTopKAttention : public Attention {
 public:
  explicit ExactTopKAttention(const ExactTopKAttentionOptions& options = {})
      : options_(options) {}

  const char* name() const override { return "exact-topk"; }
  const ExactTopKAttentionOptions& options() const { return options_; }

  absl::Status Forward(const Context& ctx, const AttentionInputs& inputs,
                       TensorView<float> out, AttentionCache* cache) override;
  // d_queries, d_keys, d_values are written (=); there are no parameters.
  absl::Status Backward(const Context& ctx, const AttentionInputs& inputs,
                        const AttentionCache& cache,
                        TensorView<const float> d_out,
                        const AttentionGrads& grads) override;

 private:
  float Temperature(int64_t qk_dim) const;
  bool DropoutActive(const AttentionInputs& inputs) const {
    return inputs.training && options_.attention_dropout > 0.0f;
  }
  AttentionNormalizer normalizer() const {
    return options_.use_entmax15 ? AttentionNormalizer::kEntmax15
                                 : AttentionNormalizer::kSoftmax;
  }

  ExactTopKAttentionOptions options_;
  AttentionCache scratch_;  // inference-time buffers (no cache given)
  Tensor grad_scratch_;
};

// Registry entry "exact-topk": topk (32), softmax_temp, attention_dropout
// (0.1), sparse_topk_ties (false), use_entmax15 (false).
AttentionSpec ExactTopKAttentionSpec();

}  // namespace ftx

#endif  // FTX_ATTENTION_EXACT_TOPK_H_
