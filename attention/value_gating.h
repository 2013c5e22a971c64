// Gating of the attended values (AlphaFold2's gated attention; per-head
// variant from Bondarenko et al. 2023, "Quantizable Transformers: Removing
// Outliers by Helping Attention Heads Do Nothing"), as x-transformers
// Attention(gate_values=True) / (gate_value_heads=True):
//   kPerChannel  out[b,t,:] = values[b,t,:] * act(x[b,t] W^T + b)
//                W [H*D, C], b [H*D]: "to_v_gate.weight", "to_v_gate.bias"
//   kPerHead     out[b,t,h*D:(h+1)*D] = values[b,t,h*D:(h+1)*D] * act(g_h)
//                g = x[b,t] W^T + b, W [H, C], b [H]: "to_v_head_gate.*"
//                (x-transformers 1.23.2+)
// act is sigmoid, or SiLU with x-transformers' swiglu_values (1.24.3+).
// x is the attention layer's input (the normalised one in a pre-norm stack),
// values the merged heads [B, T, H*D] after head_scale (SEMANTICS 6.2 step 19:
// after `rearrange(out, 'b h n d -> b n (h d)')`, before to_out; the per-head
// gate sits just before the merge, which is the same product).
// Initialisation: W = 0 and b = initial_bias: 1 in x-transformers 0.26.6
// (gates start at sigmoid(1) ~ 0.73), 10 in the later releases (read at
// x-transformers HEAD; gates start ~ 1).
//
// Gradient convention: d_x, d_values written (=); d_weight, d_bias
// accumulated (+=). CPU only (a CUDA context is Unimplemented).
#ifndef FTX_ATTENTION_VALUE_GATING_H_
#define FTX_ATTENTION_VALUE_GATING_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "attention/attention.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor.h"
#include "kernels/base/tensor_view.h"

namespace ftx {

enum class ValueGateKind { kPerChannel, kPerHead };
enum class ValueGateActivation { kSigmoid, kSilu };

struct ValueGatingConfig {
  int64_t dim = 0;       // C, width of x
  int64_t heads = 0;     // H
  int64_t head_dim = 0;  // D, value dim per head
  ValueGateKind kind = ValueGateKind::kPerChannel;
  ValueGateActivation activation = ValueGateActivation::kSigmoid;
  float initial_bias = 1.0f;  // 0.26.6: 1; later releases: 10
};

template <typename T>
struct ValueGatingTensors {
  TensorView<T> weight;  // [G, C], G = H*D (kPerChannel) or H (kPerHead)
  TensorView<T> bias;    // [G]
};
using ValueGatingParams = ValueGatingTensors<const float>;
using ValueGatingGrads = ValueGatingTensors<float>;

// What Forward keeps for Backward.
struct ValueGatingCache {
  Tensor gate_logits;  // [B*T, G], x W^T + b
};

class ValueGating {
 public:
  // InvalidArgument for dim, heads or head_dim < 1.
  static absl::StatusOr<ValueGating> Create(const ValueGatingConfig& config);

  const ValueGatingConfig& config() const { return config_; }
  int64_t gates() const;  // G

  // {"to_v_gate.weight", [H*D, C]}, {"to_v_gate.bias", [H*D]}, or the
  // "to_v_head_gate" pair [H, C], [H] for kPerHead.
  std::vector<ParamShape> ParamShapes() const;

  // weight = 0, bias = initial_bias (x-transformers' nn.init.constant_).
  absl::Status InitParams(const ValueGatingGrads& params) const;

  // x: [B, T, C]; values, out: [B, T, H*D] (out may alias values). cache may
  // be null at inference.
  absl::Status Forward(const Context& ctx, const ValueGatingParams& params,
                       TensorView<const float> x,
                       TensorView<const float> values, TensorView<float> out,
                       ValueGatingCache* cache);

  // d_out: [B, T, H*D]; d_x: [B, T, C] (=); d_values: [B, T, H*D] (=, may
  // alias d_out); grads (+=). cache: from Forward on these x and values.
  absl::Status Backward(const Context& ctx, const ValueGatingParams& params,
                        const ValueGatingCache& cache,
                        TensorView<const float> x,
                        TensorView<const float> values,
                        TensorView<const float> d_out, TensorView<float> d_x,
                        TensorView<float> d_values,
                        const ValueGatingGrads& grads);

 private:
  explicit ValueGating(const ValueGatingConfig& config) : config_(config) {}

  absl::Status Validate(const Context& ctx, const ValueGatingParams& params,
                        TensorView<const float> x,
                        TensorView<const float> values,
                        TensorView<const float> out) const;

  ValueGatingConfig config_;
  Tensor inference_logits_;  // Forward's buffer when no cache is given
  Tensor d_logits_;          // Backward's scratch
};

}  // namespace ftx

#endif  // FTX_ATTENTION_VALUE_GATING_H_
