// "conditional-full": a decorator that runs exact softmax attention on short
// sequences and another mechanism on long ones, as fast-transformers'
// ConditionalFullAttention (attention/conditional_full_attention.py):
//   out = other(Q, K, V)   if L > length_limit or S > length_limit,
//         full(Q, K, V)    otherwise (with softmax_temp, attention_dropout),
// with "full" the FullAttention of attention/full.h. Masks, lengths and
// training flags go to the chosen branch unchanged.
//
// Backward runs the backward of the branch its Forward ran. The branch is a
// pure function of (L, S), which Backward reads off the same inputs (the
// Attention contract), so the cache holds only the chosen branch's own layout
// and is passed to it as it is.
//
// Parameters: the other mechanism's, named "other_attention.<name>" as in
// fast-transformers' state_dict (the full branch has none).
#ifndef FTX_ATTENTION_CONDITIONAL_FULL_H_
#define FTX_ATTENTION_CONDITIONAL_FULL_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "attention/attention.h"
#include "attention/full.h"
#include "attention/registry.h"

namespace ftx {

struct ConditionalFullAttentionOptions {
  int64_t length_limit = 512;
  std::optional<float> softmax_temp;  // of the full branch; default 1/sqrt(E)
  float attention_dropout = 0.1f;     // of the full branch
};

class ConditionalFullAttention : public Attention {
 public:
  // InvalidArgument for a null `other`, length_limit < 0 or dropout outside [0,
  // 1).
  static absl::StatusOr<std::unique_ptr<ConditionalFullAttention>> Create(
      std::unique_ptr<Attention> other,
      const ConditionalFullAttentionOptions& options);

  const char* name() const override { return "conditional-full"; }
  // A head bias is accepted only when both branches take one (full always
  // does).
  bool SupportsHeadBias() const override { return other_->SupportsHeadBias(); }
  const ConditionalFullAttentionOptions& options() const { return options_; }
  Attention& other() { return *other_; }
  // The exact branch (fast-transformers' "full_attention" submodule).
  FullAttention& full() { return full_; }

  // True when inputs of L queries and S keys go to the other mechanism.
  bool UsesOther(int64_t queries, int64_t keys) const {
    return queries > options_.length_limit || keys > options_.length_limit;
  }

  std::vector<ParamRef> Parameters() override;

  absl::Status Forward(const Context& ctx, const AttentionInputs& inputs,
                       TensorView<float> out, AttentionCache* cache) override;
  // The chosen branch's backward: activation gradients written (=), parameter
  // gradients (the other mechanism's) accumulated (+=).
  absl::Status Backward(const Context& ctx, const AttentionInputs& inputs,
                        const AttentionCache& cache,
                        TensorView<const float> d_out,
                        const AttentionGrads& grads) override;

 private:
  ConditionalFullAttention(std::unique_ptr<Attention> other,
                           const ConditionalFullAttentionOptions& options);
  // The branch for these inputs; InvalidArgument when they are not rank 4.
  absl::StatusOr<Attention*> Branch(absl::string_view op,
                                    const AttentionInputs& inputs);

  ConditionalFullAttentionOptions options_;
  FullAttention full_;
  std::unique_ptr<Attention> other_;
};

// Registry entry "conditional-full" (a decorator, inner_count = 1, e.g.
// "conditional-full:linear"): length_limit (512), softmax_temp,
// attention_dropout (0.1).
AttentionSpec ConditionalFullAttentionSpec();

}  // namespace ftx

#endif  // FTX_ATTENTION_CONDITIONAL_FULL_H_
