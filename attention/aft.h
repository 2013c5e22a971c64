// "aft-full" and "aft-simple": the Attention Free Transformer (Zhai et al.
// 2021, "An Attention Free Transformer") as fast-transformers implements it
// (attention/aft_attention.py, SEMANTICS.md section 2.4), including its quirks.
// Both require E == D (InvalidArgument otherwise) and ignore query lengths;
// every product is elementwise per channel d, so a query gets its own weights
// per channel.
//
// aft-full, per (n, l, h, d), with u, v: [max_sequence_length, P]:
//   w[l, s] = u[l] . v[s] + attn_mask(l, s)
//   out     = sigmoid(Q[n,l,h,d]) * sum_s softmax_s(K[n,s,h,d] * w[l, s])
//                                         V[n,s,h,d]
// Quirk kept: the position bias MULTIPLIES the keys (the paper has exp(K + w)).
// Where fast-transformers multiplies a -inf mask or key-length entry by w
// (giving +-inf or NaN), ftx drops the entry instead, which is what the mask
// means; a finite additive mask is folded into w as there. u and v are the
// parameters "u" and "v", initialised 0.01 * N(0, 1) from the Philox stream of
// `seed`; L and S must not exceed max_sequence_length.
//
// aft-simple, per (n, h, d), no parameters, attn_mask all-ones or causal only:
//   non-causal (L may differ from S):
//     out_l = sigmoid(Q_l) * sum_s softmax_s(K_s) V_s
//   causal (L == S, AttnMask::Causal() with offset 0):
//     W_s   = exp(K_s) / sum_{j<=s} exp(K_j)
//     out_l = sigmoid(Q_l) * sum_{s<=l} W_s V_s
// Quirk kept: W_s is normalised over the prefix up to s, not up to l, so this
// is not the prefix softmax of the paper. fast-transformers evaluates W with
// one max over the whole sequence, which underflows to 0/0 for long or
// spread-out keys; ftx computes the same W with a running prefix max. Padded
// keys get W = 0.
//
// A query with no usable key gets a zero output (fast-transformers: NaN).
// Gradient convention: d_queries, d_keys, d_values written (=), d_u and d_v
// accumulated (+=). CPU only.
//
// Cost: aft-full O(N H L S D) time (an exp per (l, s, d)), O(L S + N L H D)
// memory; aft-simple O(N H L D).
#ifndef FTX_ATTENTION_AFT_H_
#define FTX_ATTENTION_AFT_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "attention/attention.h"
#include "attention/registry.h"

namespace ftx {

struct AftFullAttentionOptions {
  int64_t max_sequence_length = 1024;
  int64_t aft_parameterization = 64;  // P, rank of the position bias u v^T
  uint64_t seed = 0;
};

class AftFullAttention : public Attention {
 public:
  // InvalidArgument unless max_sequence_length >= 1 and aft_parameterization
  // >= 1.
  static absl::StatusOr<std::unique_ptr<AftFullAttention>> Create(
      const AftFullAttentionOptions& options);

  const char* name() const override { return "aft-full"; }
  const AftFullAttentionOptions& options() const { return options_; }

  // "u", "v": [max_sequence_length, aft_parameterization] each.
  std::vector<ParamRef> Parameters() override;

  absl::Status Forward(const Context& ctx, const AttentionInputs& inputs,
                       TensorView<float> out, AttentionCache* cache) override;
  // d_queries, d_keys, d_values written (=); u and v gradients accumulated
  // (+=).
  absl::Status Backward(const Context& ctx, const AttentionInputs& inputs,
                        const AttentionCache& cache,
                        TensorView<const float> d_out,
                        const AttentionGrads& grads) override;

 private:
  explicit AftFullAttention(const AftFullAttentionOptions& options)
      : options_(options) {}
  absl::Status Initialize();
  // Position bias w [L, S] = u[:L] v[:S]^T + attn_mask into `bias`.
  absl::Status PositionBias(const Context& ctx, const AttentionInputs& inputs,
                            int64_t queries, int64_t keys, Tensor& bias);

  AftFullAttentionOptions options_;
  Tensor u_, v_, u_grad_, v_grad_;
  AttentionCache scratch_;  // inference-time buffers (no cache given)
  Tensor bias_grad_;        // backward buffer, d_w [L, S]
};

class AftSimpleAttention : public Attention {
 public:
  const char* name() const override { return "aft-simple"; }

  absl::Status Forward(const Context& ctx, const AttentionInputs& inputs,
                       TensorView<float> out, AttentionCache* cache) override;
  // d_queries, d_keys, d_values written (=); there are no parameters.
  absl::Status Backward(const Context& ctx, const AttentionInputs& inputs,
                        const AttentionCache& cache,
                        TensorView<const float> d_out,
                        const AttentionGrads& grads) override;

 private:
  AttentionCache scratch_;  // inference-time buffers (no cache given)
};

// Registry entries "aft-full" (max_sequence_length 1024, aft_parameterization
// 64, seed 0) and "aft-simple" (no options).
AttentionSpec AftFullAttentionSpec();
AttentionSpec AftSimpleAttentionSpec();

}  // namespace ftx

#endif  // FTX_ATTENTION_AFT_H_
