// ReZero (Bachlechner et al. 2020, "ReZero is All You Need"): a residual branch is
// scaled by one learned scalar, x + g * f(x), with g initialised to 0 (x-transformers
// 0.26.6 use_rezero: Rezero.g = zeros(1)) or 1e-3 (performer-pytorch ReZero).
// This module scales the branch output; the caller adds the residual.
// Parameter name "g" ([1]). Gradient convention: d_branch (=), d_g (+=).
#ifndef FTX_LAYERS_REZERO_H_
#define FTX_LAYERS_REZERO_H_

#include <vector>

#include "absl/status/status.h"
#include "attention/attention.h"
#include "kernels/base/context.h"

namespace ftx {

struct ReZeroConfig {
  float initial_gain = 0.0f;  // 0: x-transformers; 1e-3: performer-pytorch
};

class ReZero {
 public:
  explicit ReZero(const ReZeroConfig& config = {}) : config_(config) {}

  std::vector<ParamShape> ParamShapes() const { return {{"g", {1}}}; }
  void InitParams(TensorView<float> g) const { g.data()[0] = config_.initial_gain; }

  // y = g * branch; branch, y: same shape; g: [1].
  absl::Status Forward(const Context& ctx, TensorView<const float> g,
                       TensorView<const float> branch, TensorView<float> y) const;
  // d_branch = g * d_y; d_g += sum(branch * d_y).
  absl::Status Backward(const Context& ctx, TensorView<const float> g,
                        TensorView<const float> branch, TensorView<const float> d_y,
                        TensorView<float> d_branch, TensorView<float> d_g) const;

 private:
  ReZeroConfig config_;
};

}  // namespace ftx

#endif  // FTX_LAYERS_REZERO_H_
