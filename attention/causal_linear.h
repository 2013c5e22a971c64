// "causal-linear": causal linear attention (Katharopoulos et al. 2020,
// "Transformers are RNNs", eq. 9), as fast-transformers' CausalLinearAttention
// (attention/causal_linear_attention.py):
//   out_i = phi(q_i)^T sum_{j<=i} phi(k_j) v_j^T / (phi(q_i)^T sum_{j<=i}
//   phi(k_j) + eps)
// with eps = 1e-6 added to the scalar denominator and padded keys' features
// zeroed. The numerator is kernels/causal_product (O(L) memory, no L x L
// matrix). Requires a causal attn_mask and L == S (self-attention);
// fast-transformers' slicing/padding of K for L != S is not reproduced and is
// an InvalidArgument here.
#ifndef FTX_ATTENTION_CAUSAL_LINEAR_H_
#define FTX_ATTENTION_CAUSAL_LINEAR_H_

#include <memory>

#include "attention/attention.h"
#include "attention/feature_map.h"

namespace ftx {

class CausalLinearAttention : public Attention {
 public:
  // A null feature map means elu(x) + 1.
  explicit CausalLinearAttention(
      std::unique_ptr<FeatureMap> feature_map = nullptr, float eps = 1e-6f);

  const char* name() const override { return "causal-linear"; }
  FeatureMap& feature_map() { return *feature_map_; }

  absl::Status Forward(const Context& ctx, const AttentionInputs& inputs,
                       TensorView<float> out, AttentionCache* cache) override;
  absl::Status Backward(const Context& ctx, const AttentionInputs& inputs,
                        const AttentionCache& cache,
                        TensorView<const float> d_out,
                        const AttentionGrads& grads) override;

 private:
  std::unique_ptr<FeatureMap> feature_map_;
  float eps_;
  AttentionCache scratch_;
  AttentionCache grad_scratch_;
};

}  // namespace ftx

#endif  // FTX_ATTENTION_CAUSAL_LINEAR_H_
