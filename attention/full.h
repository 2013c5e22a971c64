// "full": softmax attention (Vaswani et al. 2017), as fast-transformers'
// FullAttention (attention/full_attention.py):
//   P = dropout(softmax(t * Q K^T + head_bias + attn_mask + key_length_mask)),
//   out = P V,
// with t = softmax_temp or 1/sqrt(E). The optional per-head bias
// AttentionInputs::head_bias [H, L, S] (T5 relative bias, ALiBi, dynamic
// position bias) is added to the scaled scores before the masks, as
// x-transformers' Attention adds rel_pos(dots); its gradient, the batch sum of
// d(scores), accumulates into AttentionGrads::d_head_bias when that is given.
// Query lengths are ignored (padded queries are computed as usual). A query
// whose keys are all masked gets a zero output, where fast-transformers would
// return NaN. Dropout (default 0.1, the registry default) applies only when
// AttentionInputs::training is set; its mask comes from the Philox stream of
// AttentionInputs::seed, so the backward regenerates it exactly.
//
// Cost: O(N H L S E) time, O(N H L S) memory for the saved probabilities.
#ifndef FTX_ATTENTION_FULL_H_
#define FTX_ATTENTION_FULL_H_

#include <optional>

#include "attention/attention.h"

namespace ftx {

struct FullAttentionOptions {
  std::optional<float> softmax_temp;  // default 1/sqrt(E)
  float attention_dropout = 0.1f;
};

class FullAttention : public Attention {
 public:
  explicit FullAttention(const FullAttentionOptions& options = {})
      : options_(options) {}

  const char* name() const override { return "full"; }
  const FullAttentionOptions& options() const { return options_; }
  bool SupportsHeadBias() const override { return true; }

  absl::Status Forward(const Context& ctx, const AttentionInputs& inputs,
                       TensorView<float> out, AttentionCache* cache) override;
  // d_queries, d_keys, d_values written (=); d_head_bias, when given,
  // accumulated (+=).
  absl::Status Backward(const Context& ctx, const AttentionInputs& inputs,
                        const AttentionCache& cache,
                        TensorView<const float> d_out,
                        const AttentionGrads& grads) override;

 private:
  float Temperature(int64_t qk_dim) const;
  bool DropoutActive(const AttentionInputs& inputs) const {
    return inputs.training && options_.attention_dropout > 0.0f;
  }

  FullAttentionOptions options_;
  // Inference-time buffers (no cache given) and the causal mask, reused across
  // calls.
  AttentionCache scratch_;
  Tensor causal_mask_;
  Tensor grad_scratch_;
};

}  // namespace ftx

#endif  // FTX_ATTENTION_FULL_H_
