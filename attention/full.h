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
// RealFormer residual attention (He et al. 2020; x-transformers 0.26.6
// residual_attn) through SetResidualScores / SetResidualScoreGrads, which
// arm the next Forward / Backward only:
//   logits = t * Q K^T + previous + head_bias + masks,
//   current = t * Q K^T + previous  (0.26.6's pre_softmax_attn, what the next
//                                    layer receives as `previous`)
// with previous, current [H, N, L, S] (this mechanism's score layout). The
// backward adds d_current (the gradient of `current` from later layers) to
// the logit gradient and writes the sum to d_previous.
//
// An optional probability observer (SetProbabilityObserver) receives P after
// dropout as a [N, H, L, S] view (strided over this mechanism's [H, N, L, S]
// buffer) on every Forward, as fast-transformers 0.4.0 dispatches its
// AttentionEvent (models/ft_events.h); without one nothing extra is done.
//
// Cost: O(N H L S E) time, O(N H L S) memory for the saved probabilities.
#ifndef FTX_ATTENTION_FULL_H_
#define FTX_ATTENTION_FULL_H_

#include <functional>
#include <optional>
#include <utility>

#include "attention/attention.h"

namespace ftx {

struct FullAttentionOptions {
  std::optional<float> softmax_temp;  // default 1/sqrt(E)
  float attention_dropout = 0.1f;
};

class FullAttention : public Attention {
 public:
  // Receives the attention matrix P [N, H, L, S] (after dropout; a strided
  // view valid during the call only).
  using ProbabilityObserver =
      std::function<void(TensorView<const float> probabilities)>;

  explicit FullAttention(const FullAttentionOptions& options = {})
      : options_(options) {}

  const char* name() const override { return "full"; }

  // Residual attention for the next Forward (see the top of this file);
  // either view may be empty. InvalidArgument from that Forward when a view
  // is not [H, N, L, S].
  void SetResidualScores(TensorView<const float> previous,
                         TensorView<float> current) {
    residual_previous_ = previous;
    residual_current_ = current;
  }
  // Residual attention gradients for the next Backward; d_current is added
  // to the score gradient, d_previous receives the total (=). Either may be
  // empty.
  void SetResidualScoreGrads(TensorView<const float> d_current,
                             TensorView<float> d_previous) {
    residual_d_current_ = d_current;
    residual_d_previous_ = d_previous;
  }
  // Called by every later Forward until replaced; nullptr removes it.
  void SetProbabilityObserver(ProbabilityObserver observer) {
    probability_observer_ = std::move(observer);
  }
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
  ProbabilityObserver probability_observer_;
  // Armed residual-attention views (empty when off).
  TensorView<const float> residual_previous_;
  TensorView<float> residual_current_;
  TensorView<const float> residual_d_current_;
  TensorView<float> residual_d_previous_;
  // Inference-time buffers (no cache given) and the causal mask, reused across
  // calls.
  AttentionCache scratch_;
  Tensor causal_mask_;
  Tensor grad_scratch_;
};

}  // namespace ftx

#endif  // FTX_ATTENTION_FULL_H_
