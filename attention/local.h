// Local (sliding-window) softmax attention: each query attends to a window of
// nearby keys only, so time and memory are O(L * window) instead of O(L * S).
// Two flavours, one per reference library, computed by one banded kernel (query
// blocks times their key range with kernels/matmul, never an L x S matrix).
//
// "local": fast-transformers' LocalAttention (attention/local_attention.py and
// the local_product kernels). With c = local_context, query l has c slots; slot
// k = 0..c-1 holds key s = l - c/2 + k (window [l - c/2, l + (c+1)/2), integer
// division), and
//   z_k = t * (q_l . k_s + m(l, s))   when 0 <= s < key_length,
//   z_k = t * (-1e24)                 for every other slot,
//   out_l = sum over the slots with 0 <= s < S of dropout(softmax(z))_k v_s,
// with t = softmax_temp or 1/sqrt(E) and m = attn_mask made finite (-inf
// becomes -1e24, as fast-transformers' additive_matrix_finite; finite entries
// are scaled by t too). A causal attn_mask (AttnMask::Causal(offset)) removes
// the keys s > l + offset, which is what fast-transformers computes with a
// TriangularCausalMask. Quirk kept: a query with no visible key gets weight
// 1/c on every slot, i.e. the sum of its in-range values (padded ones
// included) divided by c, where "full" returns zero.
//
// "local-windowed": lucidrains' local-attention LocalAttention, pinned to
// 1.4.4 (window_size, causal, look_backward, look_forward, autopad,
// exact_windowsize, rel_pos_emb_config; performer-pytorch and
// linear-attention-transformer leave the version unpinned). Self-attention
// only (L == S). The sequence is cut into windows of w = window_size (autopad:
// zero-padded at the end to a multiple of w; otherwise L % w must be 0). A
// query in window u has W = (look_backward + 1 + look_forward) * w slots, the
// keys of windows u - look_backward .. u + look_forward, and
//   z = E^-0.5 q . k, replaced by -FLT_MAX where the slot lies outside the
//       (padded) sequence (look_around's -1 padding), where causal and
//       key > query (exact_windowsize: also query > key + w * look_backward),
//       and where the input mask is false;
//   out = dropout(softmax(z)) . (gathered values, -1 on out-of-sequence slots).
// The input mask is key_lengths, applied to queries and keys as 1.4.4 does
// (mask = mq & mk), so a padded query sees nothing and gets the uniform mean
// of its W slots, the -1 padding included. Autopadded positions are zero keys
// and values that stay visible unless key_lengths is given (as in the Python).
// rel_pos_emb applies 1.4.4's SinusoidalEmbeddings rotary (rotate_half layout
// over the whole head, base 10000, positions 0..L-1) to q and k before the
// windows. A causal attn_mask is intersected like the causal option; additive
// masks are rejected (the package has none). Not reproduced: shared_qk (unused
// by performer and LAT) and the later package versions (>= 1.5: key-only
// masks, xpos, non-causal exact_windowsize).
//
// Query lengths are ignored by both. Dropout (registry default 0.1 for
// "local", 0 for "local-windowed") applies only when AttentionInputs::training
// is set; its mask comes from the Philox stream of AttentionInputs::seed, so
// the backward regenerates it.
//
// RecurrentLocalAttention is the step-by-step causal form of either flavour:
// it keeps the last window of keys and values (O(window) state) and equals the
// parallel causal forward at every position.
#ifndef FTX_ATTENTION_LOCAL_H_
#define FTX_ATTENTION_LOCAL_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "attention/attention.h"
#include "attention/recurrent.h"
#include "attention/registry.h"

namespace ftx {

struct LocalAttentionOptions {
  int64_t local_context = 0;          // c, required, > 0
  std::optional<float> softmax_temp;  // default 1/sqrt(E)
  float attention_dropout = 0.1f;
};

// InvalidArgument naming the bad option.
absl::Status ValidateLocalAttentionOptions(
    const LocalAttentionOptions& options);

class LocalAttention : public Attention {
 public:
  explicit LocalAttention(const LocalAttentionOptions& options)
      : options_(options) {}

  const char* name() const override { return "local"; }
  const LocalAttentionOptions& options() const { return options_; }

  absl::Status Forward(const Context& ctx, const AttentionInputs& inputs,
                       TensorView<float> out, AttentionCache* cache) override;
  // d_queries, d_keys, d_values are written (=); there are no parameters.
  absl::Status Backward(const Context& ctx, const AttentionInputs& inputs,
                        const AttentionCache& cache,
                        TensorView<const float> d_out,
                        const AttentionGrads& grads) override;

 private:
  LocalAttentionOptions options_;
  AttentionCache scratch_;  // inference-time buffers (no cache given)
};

struct LocalWindowedAttentionOptions {
  int64_t window_size = 128;  // w, > 0
  bool causal = false;
  int64_t look_backward = 1;  // >= 0
  // Default 0 if causal else 1; must be 0 when causal.
  std::optional<int64_t> look_forward;
  bool autopad = false;
  bool exact_windowsize = false;  // causal only, as in 1.4.4
  // Rotary inside the mechanism (rel_pos_emb_config: performer's local heads).
  bool rel_pos_emb = false;
  float attention_dropout = 0.0f;

  int64_t LookForward() const { return look_forward.value_or(causal ? 0 : 1); }
};

absl::Status ValidateLocalWindowedAttentionOptions(
    const LocalWindowedAttentionOptions& options);

class LocalWindowedAttention : public Attention {
 public:
  explicit LocalWindowedAttention(const LocalWindowedAttentionOptions& options)
      : options_(options) {}

  const char* name() const override { return "local-windowed"; }
  const LocalWindowedAttentionOptions& options() const { return options_; }

  absl::Status Forward(const Context& ctx, const AttentionInputs& inputs,
                       TensorView<float> out, AttentionCache* cache) override;
  // d_queries, d_keys, d_values are written (=); there are no parameters.
  absl::Status Backward(const Context& ctx, const AttentionInputs& inputs,
                        const AttentionCache& cache,
                        TensorView<const float> d_out,
                        const AttentionGrads& grads) override;

  // The same with the saved tensors in a caller-owned span of kSavedCount
  // tensors, for mechanisms that run this one on some of their heads
  // (attention/mixed_heads.h).
  static constexpr int kSavedCount = 2;
  absl::Status ForwardInto(const Context& ctx, const AttentionInputs& inputs,
                           TensorView<float> out, absl::Span<Tensor> saved);
  absl::Status BackwardFrom(const Context& ctx, const AttentionInputs& inputs,
                            absl::Span<const Tensor> saved,
                            TensorView<const float> d_out,
                            const AttentionGrads& grads);

 private:
  LocalWindowedAttentionOptions options_;
  AttentionCache scratch_;
  // Padded (and rotated) copies of the inputs and their gradients, when autopad
  // pads or rel_pos_emb rotates; reused across calls of the same shape.
  std::vector<Tensor> work_;
  std::vector<Tensor> grad_work_;
};

// Step-by-step causal local attention. Per step: query, key [N, H, E]; value,
// out [N, H, D]. The state is a ring buffer of the last keys and values per
// (n, h): c/2 + 1 of them for "local", (look_backward + 1) * w for
// "local-windowed".
class RecurrentLocalAttention : public RecurrentAttention {
 public:
  // "local": query l sees keys max(0, l - c/2) .. l, scored t * q . k.
  static absl::StatusOr<std::unique_ptr<RecurrentLocalAttention>> Create(
      const LocalAttentionOptions& options);
  // "local-windowed": query l in window u sees keys (u - look_backward) * w
  // .. l (and only those >= l - w * look_backward with exact_windowsize),
  // scored E^-0.5 q . k after the rotary of rel_pos_emb. InvalidArgument
  // unless the options are causal.
  static absl::StatusOr<std::unique_ptr<RecurrentLocalAttention>> Create(
      const LocalWindowedAttentionOptions& options);

  const char* name() const override {
    return windowed_ ? "local-windowed" : "local";
  }
  std::unique_ptr<RecurrentState> NewState() const override;
  absl::Status Step(const Context& ctx, TensorView<const float> query,
                    TensorView<const float> key, TensorView<const float> value,
                    TensorView<float> out, RecurrentState& state) override;

 private:
  RecurrentLocalAttention() = default;
  // First visible key of the query at `position`.
  int64_t FirstVisible(int64_t position) const;

  bool windowed_ = false;
  int64_t capacity_ = 0;  // keys kept per (n, h)
  LocalAttentionOptions local_;
  LocalWindowedAttentionOptions windowed_options_;
};

// Registry entry "local": local_context (required), softmax_temp,
// attention_dropout (0.1); its recurrent form is RecurrentLocalAttention.
AttentionSpec LocalAttentionSpec();

// Registry entry "local-windowed": window_size (required), causal (false),
// look_backward (1), look_forward (0 if causal else 1), autopad (false),
// exact_windowsize (false), rel_pos_emb (false), attention_dropout (0);
// recurrent form when causal.
AttentionSpec LocalWindowedAttentionSpec();

}  // namespace ftx

#endif  // FTX_ATTENTION_LOCAL_H_
