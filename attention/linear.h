// "linear": non-causal linear attention (Katharopoulos et al. 2020,
// "Transformers are RNNs", eq. 6), as fast-transformers' LinearAttention
// (attention/linear_attention.py):
//   out_l = phi(q_l)^T (sum_s phi(k_s) v_s^T) / (phi(q_l)^T sum_s phi(k_s) +
//   eps),
// eps = 1e-6 added to the scalar denominator. Padded keys (key lengths) have
// their features zeroed after the feature map, so they add nothing to either
// sum; queries are never masked. Only an all-ones attn_mask is accepted
// (fast-transformers raises otherwise). The feature map defaults to elu(x) + 1
// and is pluggable.
//
// Cost: O(N H (L + S) F D) time, O(N H F D) extra memory, F = feature
// dimension.
#ifndef FTX_ATTENTION_LINEAR_H_
#define FTX_ATTENTION_LINEAR_H_

#include <memory>

#include "attention/attention.h"
#include "attention/feature_map.h"

namespace ftx {

struct LinearAttentionOptions {
  float eps = 1e-6f;
};

class LinearAttention : public Attention {
 public:
  // A null feature map means elu(x) + 1.
  explicit LinearAttention(std::unique_ptr<FeatureMap> feature_map = nullptr,
                           const LinearAttentionOptions& options = {});

  const char* name() const override { return "linear"; }
  FeatureMap& feature_map() { return *feature_map_; }

  absl::Status Forward(const Context& ctx, const AttentionInputs& inputs,
                       TensorView<float> out, AttentionCache* cache) override;
  absl::Status Backward(const Context& ctx, const AttentionInputs& inputs,
                        const AttentionCache& cache,
                        TensorView<const float> d_out,
                        const AttentionGrads& grads) override;

 private:
  std::unique_ptr<FeatureMap> feature_map_;
  LinearAttentionOptions options_;
  AttentionCache scratch_;
  AttentionCache grad_scratch_;
};

}  // namespace ftx

#endif  // FTX_ATTENTION_LINEAR_H_
