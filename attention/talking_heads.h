// "talking-heads": talking-heads attention (Shazeer et al. 2020,
// "Talking-Heads Attention"), as x-transformers 0.26.6's Attention with
// talking_heads = True (SEMANTICS.md section 6.2, steps 9-18): learned H x H
// mixings over the head axis of the logits before the normaliser and of the
// probabilities after it. Per (n, l, s), with t = softmax_temp or 1/sqrt(E):
//   dots[h]    = t * q_h . k_h
//   mixed[j]   = sum_h W_pre[j, h] dots[h] + attn_mask(l, s) + key_length_mask
//   P[j]       = normalize(sparse_topk(mixed[j]))   (softmax or entmax-1.5)
//   P_mixed[j] = sum_h W_post[j, h] dropout(P[h])
//   out_j      = sum_s P_mixed[j] v_j
// The mixings are x-transformers' Conv2d(H, H, 1, bias=False) modules, so the
// parameters are "pre_softmax_talking_heads.weight" and
// "post_softmax_talking_heads.weight" of shape [H, H, 1, 1] (output head,
// input head), initialised as PyTorch initialises a Conv2d (kaiming_uniform
// with a = sqrt(5), i.e. U(-1/sqrt(H), 1/sqrt(H))) from the Philox stream of
// `seed`. Identity mixings give "full" attention.
//
// The head count comes from the option n_heads (required), so the parameters
// exist before the first Forward; inputs with another H are InvalidArgument.
//
// Masks as in x-transformers: the mixing sees unmasked logits, the masks are
// applied to the mixed logits, then the optional sparse_topk (keep entries >=
// the k-th largest, ties kept) and the normaliser. x-transformers 0.26.6 fills
// masked entries with -finfo.max, ftx with -inf: a query whose keys are all
// masked gets a uniform row there and a zero row here (later x-transformers
// zero such outputs too). Query lengths are ignored. Dropout (x-transformers
// default 0) applies only in training, from the Philox stream of
// AttentionInputs::seed, between the normaliser and the post-softmax mixing.
//
// Cost: O(N H L S (E + D + H)) time; O(N H L S) memory (three saved score
// tensors, four with dropout).
#ifndef FTX_ATTENTION_TALKING_HEADS_H_
#define FTX_ATTENTION_TALKING_HEADS_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "attention/attention.h"
#include "attention/entmax.h"
#include "attention/registry.h"

namespace ftx {

struct TalkingHeadsAttentionOptions {
  int64_t heads = 0;                  // H (option n_heads), required
  std::optional<float> softmax_temp;  // default 1/sqrt(E)
  float attention_dropout = 0.0f;     // x-transformers Attention(dropout = 0.)
  int64_t sparse_topk = 0;            // 0: off
  bool use_entmax15 = false;
  uint64_t seed = 0;  // initialisation of the mixing weights
};

class TalkingHeadsAttention : public Attention {
 public:
  // InvalidArgument for heads < 1, sparse_topk < 0 or dropout outside [0, 1).
  static absl::StatusOr<std::unique_ptr<TalkingHeadsAttention>> Create(
      const TalkingHeadsAttentionOptions& options);

  const char* name() const override { return "talking-heads"; }
  const TalkingHeadsAttentionOptions& options() const { return options_; }

  // "pre_softmax_talking_heads.weight", "post_softmax_talking_heads.weight":
  // [H, H, 1, 1] each (output head, input head).
  std::vector<ParamRef> Parameters() override;

  absl::Status Forward(const Context& ctx, const AttentionInputs& inputs,
                       TensorView<float> out, AttentionCache* cache) override;
  // d_queries, d_keys, d_values are written (=); the mixing-weight gradients
  // are accumulated (+=).
  absl::Status Backward(const Context& ctx, const AttentionInputs& inputs,
                        const AttentionCache& cache,
                        TensorView<const float> d_out,
                        const AttentionGrads& grads) override;

 private:
  explicit TalkingHeadsAttention(const TalkingHeadsAttentionOptions& options)
      : options_(options) {}
  absl::Status Initialize();
  float Temperature(int64_t qk_dim) const;
  bool DropoutActive(const AttentionInputs& inputs) const {
    return inputs.training && options_.attention_dropout > 0.0f;
  }
  AttentionNormalizer normalizer() const {
    return options_.use_entmax15 ? AttentionNormalizer::kEntmax15
                                 : AttentionNormalizer::kSoftmax;
  }
  // A [H, H, 1, 1] weight as an [H, H] matrix.
  TensorView<float> Matrix(Tensor& weight) const;

  TalkingHeadsAttentionOptions options_;
  Tensor pre_weight_, post_weight_, pre_grad_, post_grad_;
  AttentionCache scratch_;       // inference-time buffers (no cache given)
  AttentionCache grad_scratch_;  // backward buffers
};

// Registry entry "talking-heads": n_heads (required), softmax_temp,
// attention_dropout (0), sparse_topk (0 = off), use_entmax15 (false), seed (0).
AttentionSpec TalkingHeadsAttentionSpec();

}  // namespace ftx

#endif  // FTX_ATTENTION_TALKING_HEADS_H_
