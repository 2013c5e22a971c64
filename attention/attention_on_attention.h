// Attention on attention (Huang et al. 2019, "Attention on Attention for Image
// Captioning"), as x-transformers Attention(on_attn=True): the output
// projection becomes
//   a = out W^T,  W [2C, H*D] ("to_out.0.weight", no bias)
//   y = a[..., :C] * sigmoid(a[..., C:])          (torch nn.GLU(dim=-1))
// applied to the merged heads [B, T, H*D] (after value gating), in place of
// to_out (SEMANTICS 6.2 step 20; same in 0.26.6 and 2.x). It is a GLU with a
// sigmoid gate on the second half and no bias, computed by kernels/linear and
// kernels/activation (Glu), so it runs wherever those kernels run.
// Initialisation: torch.nn.Linear, U(-1/sqrt(H*D), 1/sqrt(H*D));
// zero_init_output sets W to 0.
//
// Forward and Backward reuse buffers held by the object: one call at a time.
// Gradient convention: d_attended written (=); d_weight accumulated (+=).
#ifndef FTX_ATTENTION_ATTENTION_ON_ATTENTION_H_
#define FTX_ATTENTION_ATTENTION_ON_ATTENTION_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "attention/attention.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor.h"
#include "kernels/base/tensor_view.h"

namespace ftx {

struct AttentionOnAttentionConfig {
  int64_t dim = 0;     // C, the output width
  int64_t in_dim = 0;  // H*D, the merged heads
  bool zero_init_output = false;
};

struct AttentionOnAttentionCache {
  Tensor projected;  // [B*T, 2C], the projection (value half, gate half)
};

class AttentionOnAttention {
 public:
  // InvalidArgument for dim or in_dim < 1.
  static absl::StatusOr<AttentionOnAttention> Create(
      const AttentionOnAttentionConfig& config);

  const AttentionOnAttentionConfig& config() const { return config_; }

  // {"to_out.0.weight", [2C, H*D]}.
  std::vector<ParamShape> ParamShapes() const;

  // torch.nn.Linear's initialisation from `seed` (Philox stream 0), or zeros
  // with zero_init_output. weight: CPU [2C, H*D].
  absl::Status InitParams(const Context& ctx, uint64_t seed,
                          TensorView<float> weight) const;

  // weight: [2C, H*D]; attended: [B, T, H*D]; y: [B, T, C]. cache may be null.
  absl::Status Forward(const Context& ctx, TensorView<const float> weight,
                       TensorView<const float> attended, TensorView<float> y,
                       AttentionOnAttentionCache* cache);

  // d_y: [B, T, C]; d_attended: [B, T, H*D] (=); d_weight: [2C, H*D] (+=).
  absl::Status Backward(const Context& ctx, TensorView<const float> weight,
                        const AttentionOnAttentionCache& cache,
                        TensorView<const float> attended,
                        TensorView<const float> d_y,
                        TensorView<float> d_attended,
                        TensorView<float> d_weight);

 private:
  explicit AttentionOnAttention(const AttentionOnAttentionConfig& config)
      : config_(config) {}

  absl::Status Validate(TensorView<const float> weight,
                        TensorView<const float> attended,
                        TensorView<const float> y) const;

  AttentionOnAttentionConfig config_;
  Tensor inference_projected_;
  Tensor d_projected_;
};

}  // namespace ftx

#endif  // FTX_ATTENTION_ATTENTION_ON_ATTENTION_H_
