// Residual connections of x-transformers 0.26.6 / 1.0.0 (AttentionLayers'
// residual_fn, classes Residual and GRUGating), combining a branch output `out`
// with the skip path `residual` ([B, T, C] each, per token):
//   plain:          y = out + residual                      (also performer,
//   LAT,
//                                                            linformer: x +
//                                                            f(x))
//   scale_residual: y = out + (residual * residual_scale) *
//   scale_residual_constant
//                   the skip path is scaled; residual_scale [C] learned, init
//                   ones; the constant alone (without the learned scale) is
//                   allowed too
//   gate_residual:  GRUGating, torch.nn.GRUCell(dim, dim) on every token with
//                   input = out and hidden h = residual (* residual_scale when
//                   scale_residual), gate rows in torch order (r, z, n):
//     r = sigmoid(W_ir out + b_ir + W_hr h + b_hr)
//     z = sigmoid(W_iz out + b_iz + W_hz h + b_hz)
//     n = tanh(W_in out + b_in + r * (W_hn h + b_hn))
//     y = n + z * (h - n)              (= (1 - z) n + z h, in torch's
//     evaluation order)
// Quirk kept: GRUGating ignores scale_residual_constant (its **kwargs swallow
// it).
//
// Parameter names (state_dict keys relative to the residual module):
// residual_scale [C]; gru.weight_ih [3C, C], gru.weight_hh [3C, C], gru.bias_ih
// [3C], gru.bias_hh [3C], all initialised U(-1/sqrt(C), 1/sqrt(C)) as
// GRUCell.reset_parameters does. Gradient convention: d_out and d_residual
// written (=), parameter gradients (+=).
#ifndef FTX_LAYERS_RESIDUAL_H_
#define FTX_LAYERS_RESIDUAL_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "attention/attention.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor.h"

namespace ftx {

struct ResidualConfig {
  int64_t dim = 0;  // C
  bool scale_residual = false;
  float scale_residual_constant =
      1.0f;  // ignored with gate_residual (reference quirk)
  bool gate_residual = false;
};

// Parameter views (T = const float) or gradient / writable views (T = float).
// Views a configuration does not use stay empty.
template <typename T>
struct ResidualTensors {
  TensorView<T> residual_scale;  // [C], scale_residual
  TensorView<T> gru_weight_ih;   // [3C, C], gate_residual
  TensorView<T> gru_weight_hh;   // [3C, C], gate_residual
  TensorView<T> gru_bias_ih;     // [3C], gate_residual
  TensorView<T> gru_bias_hh;     // [3C], gate_residual
};
using ResidualParams = ResidualTensors<const float>;
using ResidualGrads = ResidualTensors<float>;

// gate_residual keeps the gates (r, z, n) [R, 3C] and W_hn h + b_hn [R, C], R =
// B * T; the other forms keep nothing.
struct ResidualCache {
  std::vector<Tensor> saved;
};

class Residual {
 public:
  // InvalidArgument unless dim > 0.
  static absl::StatusOr<Residual> Create(const ResidualConfig& config);

  const ResidualConfig& config() const { return config_; }

  // The parameters of this configuration, in state_dict order.
  std::vector<ParamShape> ParamShapes() const;

  // residual_scale = ones; GRU tensors U(-1/sqrt(C), 1/sqrt(C)) from `seed`,
  // Philox streams 0-3 for weight_ih, weight_hh, bias_ih, bias_hh.
  absl::Status InitParams(const Context& ctx,
                          const ResidualTensors<float>& params,
                          uint64_t seed) const;

  // out, residual, y: [B, T, C]; y may alias out or residual exactly (Backward
  // then needs the inputs kept elsewhere). cache may be null (inference).
  absl::Status Forward(const Context& ctx, const ResidualParams& params,
                       TensorView<const float> out,
                       TensorView<const float> residual, TensorView<float> y,
                       ResidualCache* cache);

  // d_y, d_out, d_residual: [B, T, C]; d_out and d_residual written (=), grads
  // (+=). Either d_out or d_residual (not both) may alias d_y exactly. `cache`
  // comes from Forward on the same out and residual.
  absl::Status Backward(const Context& ctx, const ResidualParams& params,
                        const ResidualCache& cache, TensorView<const float> out,
                        TensorView<const float> residual,
                        TensorView<const float> d_y, TensorView<float> d_out,
                        TensorView<float> d_residual,
                        const ResidualGrads& grads);

 private:
  explicit Residual(const ResidualConfig& config) : config_(config) {}

  absl::Status GatedForward(const Context& ctx, const ResidualParams& params,
                            TensorView<const float> out,
                            TensorView<const float> residual,
                            TensorView<float> y, ResidualCache* cache);
  absl::Status GatedBackward(const Context& ctx, const ResidualParams& params,
                             const ResidualCache& cache,
                             TensorView<const float> out,
                             TensorView<const float> residual,
                             TensorView<const float> d_y,
                             TensorView<float> d_out,
                             TensorView<float> d_residual,
                             const ResidualGrads& grads);
  // The GRU hidden state: residual itself, or residual * residual_scale in
  // scaled_hidden_.
  absl::StatusOr<TensorView<const float>> Hidden(
      const Context& ctx, const ResidualParams& params,
      TensorView<const float> residual);

  ResidualConfig config_;
  // Reused per shape: the scaled hidden state [R, C], W_hh h + b_hh [R, 3C],
  // and in inference the gate and W_hn h tensors; the gate-input and
  // hidden-input gradients [R, 3C] in Backward.
  Tensor scaled_hidden_, hidden_projection_, inference_gates_,
      inference_hidden_n_;
  Tensor d_gate_input_, d_gate_hidden_;
};

}  // namespace ftx

#endif  // FTX_LAYERS_RESIDUAL_H_
