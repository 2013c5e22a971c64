// "mixed-local-linear": linear-attention-transformer 0.19.1's SelfAttention
// head mix (linear_attention_transformer.py; SEMANTICS.md section 4.2). Heads
// [0, n_local) use local windowed softmax attention, the other heads global
// linear attention in LAT's own formulation, and the outputs are concatenated
// over heads in that order.
//
// Local heads: lucidrains local-attention (pinned to 1.4.4) with window
// w = local_attn_window_size, look_backward 1, look_forward 0 if causal else 1,
// no autopad and no rotary (LocalWindowedAttention in attention/local.h); L
// must be a multiple of w, as LAT asserts (its Autopadder pads the model
// input).
//
// Global heads, non-causal (linear_attn), with no normaliser:
//   phi(q) = softmax over E of q, times E^-0.5,
//   phi(k) = softmax over the sequence of k (padded keys filled with -FLT_MAX,
//            padded values with 0),
//   out = phi(q) (phi(k)^T v).
//
// Global heads, causal (causal_linear_attn, bucket_size = blindspot_size = B):
//   phi(q) = softmax over E of q, times E^-0.5,
//   phi(k) = exp(k), 0 for padded keys and values (not stabilised: large keys
//            overflow, as in LAT),
//   out_i = phi(q_i) sum_j phi(k_j) v_j^T / max(phi(q_i) . sum_j phi(k_j),
//   1e-3)
// where query i sees the keys j <= i when B == 1, and when B > 1 only the keys
// of earlier buckets, j < B floor(i / B): its own bucket is the blind spot the
// local heads cover, and the first bucket's output is 0. L must be a multiple
// of B (LAT asserts it). Computed per (n, h) over chunks of about 64 rows with
// running sums S [E, D] and z [E] between chunks and masked [64, 64] products
// inside them (kernels/matmul), never an L x L matrix.
//
// The mask is key_lengths (LAT's input_mask / kv_mask); query lengths are
// ignored. causal comes from the option; an attn_mask AttnMask::Causal() is
// accepted when it is set, and AttnMask::All() always. Keys must equal queries
// in number when there are local heads or causal is set (self-attention); the
// non-causal global-only form also serves as LAT's context (cross) attention
// with S != L. attention_dropout (LAT's attn_dropout, default 0) applies to
// the local heads only, in training. Rotary embedding, when LAT uses it, is
// applied to all heads before this mechanism (a QKTransform in the attention
// layer).
//
// Cost: O(N H_local L w (E + D)) for the local heads, O(N H_global (L + S) E D)
// (+ O(N H_global L 64 (E + D)) when causal) for the global heads.
#ifndef FTX_ATTENTION_MIXED_HEADS_H_
#define FTX_ATTENTION_MIXED_HEADS_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "attention/attention.h"
#include "attention/local.h"
#include "attention/registry.h"

namespace ftx {

struct MixedLocalLinearOptions {
  int64_t n_local_attn_heads = 0;
  int64_t local_attn_window_size = 128;
  bool causal = false;
  int64_t blindspot_size = 1;
  float attention_dropout = 0.0f;  // local heads only
};

// InvalidArgument naming the bad option.
absl::Status ValidateMixedLocalLinearOptions(
    const MixedLocalLinearOptions& options);

class MixedLocalLinearAttention : public Attention {
 public:
  explicit MixedLocalLinearAttention(const MixedLocalLinearOptions& options);

  const char* name() const override { return "mixed-local-linear"; }
  const MixedLocalLinearOptions& options() const { return options_; }

  absl::Status Forward(const Context& ctx, const AttentionInputs& inputs,
                       TensorView<float> out, AttentionCache* cache) override;
  // d_queries, d_keys, d_values are written (=); there are no parameters.
  absl::Status Backward(const Context& ctx, const AttentionInputs& inputs,
                        const AttentionCache& cache,
                        TensorView<const float> d_out,
                        const AttentionGrads& grads) override;

 private:
  MixedLocalLinearOptions options_;
  LocalWindowedAttention local_;
  AttentionCache scratch_;  // inference-time buffers (no cache given)
  std::vector<Tensor> grad_scratch_;
};

// Registry entry "mixed-local-linear": n_local_attn_heads (0),
// local_attn_window_size (128), causal (false), blindspot_size (1),
// attention_dropout (0).
AttentionSpec MixedLocalLinearAttentionSpec();

}  // namespace ftx

#endif  // FTX_ATTENTION_MIXED_HEADS_H_
