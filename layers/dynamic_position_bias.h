// Dynamic position bias (SwinV2's continuous position bias in one dimension),
// as x-transformers 0.26.6's DynamicPositionBias (dynamic_pos_bias=True): a
// small MLP maps each relative distance to one bias per head,
//   input: d = i - j for every d in -(n - 1) .. n - 1, or sign(d)
//          log(|d| + 1) with log_distance,
//   a_0 = relu(LN(Linear(1, W)(d))),
//   a_k = relu(LN(Linear(W, W)(a_{k-1}))) for 0 < k < depth,
//   out = Linear(W, H)(a_{depth-1}),
//   bias[h, i, j] = out(i - j)[h],
// with LN present only when `norm` is set (nn.Identity otherwise) and added to
// the scaled scores through AttentionInputs::head_bias (see
// attention/full.h). x-transformers builds it with W = model dim / 4,
// depth = dynamic_pos_bias_mlp_depth (2), log_distance and norm off; later
// versions switch ReLU to SiLU. The reference assumes a square score matrix
// (n = L = S; it fails otherwise), so L != S is InvalidArgument.
//
// Parameters, in state_dict order: for k < depth "mlp.k.0.weight" [W, in]
// (in = 1 for k = 0, else W) and "mlp.k.0.bias" [W], then with norm
// "mlp.k.1.weight" / "mlp.k.1.bias" [W]; finally "mlp.<depth>.weight" [H, W]
// and "mlp.<depth>.bias" [H]. Initialised as PyTorch does: Linear weights and
// biases U(-1/sqrt(in), 1/sqrt(in)) (kaiming_uniform with a = sqrt(5)),
// LayerNorm weight 1 and bias 0.
//
// Gradient convention: Backward accumulates every parameter gradient (+=);
// the bias has no input.
#ifndef FTX_LAYERS_DYNAMIC_POSITION_BIAS_H_
#define FTX_LAYERS_DYNAMIC_POSITION_BIAS_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "attention/attention.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor.h"

namespace ftx {

struct DynamicPositionBiasConfig {
  int64_t dim = 0;    // W, the MLP width (x-transformers: model dim // 4)
  int64_t heads = 0;  // H
  int64_t depth = 2;  // hidden layers, >= 1
  bool log_distance = false;
  bool norm = false;  // LayerNorm (eps 1e-5) after each hidden Linear
};

// Views of the MLP's parameters (T = const float) or of their gradients or
// initial values (T = float). Norm views are left default-constructed without
// `norm`.
template <typename T>
struct DynamicPositionBiasWeights {
  struct Hidden {
    TensorView<T> weight;       // [W, in]
    TensorView<T> bias;         // [W]
    TensorView<T> norm_weight;  // [W]
    TensorView<T> norm_bias;    // [W]
  };
  std::vector<Hidden> hidden;  // depth entries
  TensorView<T> out_weight;    // [H, W]
  TensorView<T> out_bias;      // [H]
};
using DynamicPositionBiasParams = DynamicPositionBiasWeights<const float>;
using DynamicPositionBiasGrads = DynamicPositionBiasWeights<float>;

// The same views, read-only.
DynamicPositionBiasParams AsParams(const DynamicPositionBiasGrads& weights);

// What Forward keeps for Backward: the MLP's activations on the 2n - 1
// distances.
struct DynamicPositionBiasCache {
  std::vector<Tensor> saved;
};

class DynamicPositionBias {
 public:
  // InvalidArgument unless dim, heads and depth are >= 1.
  static absl::StatusOr<DynamicPositionBias> Create(
      const DynamicPositionBiasConfig& config);

  const DynamicPositionBiasConfig& config() const { return config_; }
  std::vector<ParamShape> ParamShapes() const;

  // PyTorch's default initialisation from the Philox stream of `seed` (one
  // stream per tensor, in ParamShapes() order).
  absl::Status InitParams(const Context& ctx,
                          const DynamicPositionBiasGrads& weights,
                          uint64_t seed) const;

  // bias: [H, n, n] (written). `cache` may be null (inference).
  absl::Status Forward(const Context& ctx,
                       const DynamicPositionBiasParams& params,
                       TensorView<float> bias, DynamicPositionBiasCache* cache);

  // Accumulates every parameter gradient (+=) from d_bias [H, n, n]; `cache`
  // comes from Forward with the same n and params.
  absl::Status Backward(const Context& ctx,
                        const DynamicPositionBiasParams& params,
                        const DynamicPositionBiasCache& cache,
                        TensorView<const float> d_bias,
                        const DynamicPositionBiasGrads& grads);

 private:
  explicit DynamicPositionBias(const DynamicPositionBiasConfig& config)
      : config_(config) {}

  // InvalidArgument unless `weights` matches ParamShapes(); `prefix` names
  // gradients ("d_") in the messages.
  template <typename T>
  absl::Status CheckWeights(const char* op, const char* prefix,
                            const DynamicPositionBiasWeights<T>& weights) const;
  absl::Status CheckBias(const char* op, const Context& ctx,
                         TensorView<const float> bias) const;

  DynamicPositionBiasConfig config_;
  DynamicPositionBiasCache scratch_;  // activations when no cache is given
  // Backward buffers: d(MLP output) [P, H] and two d(hidden) [P, W].
  Tensor d_output_;
  Tensor d_hidden_[2];
};

}  // namespace ftx

#endif  // FTX_LAYERS_DYNAMIC_POSITION_BIAS_H_
