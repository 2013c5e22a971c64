// RMSNorm (Zhang & Sennrich 2019), as x-transformers (use_rmsnorm):
//   y = x / max(|x|_2 * dim^-0.5, eps) * g,   g: [C] initialised to ones, eps = 1e-8.
// Parameter name "g" (x-transformers' RMSNorm.g).
// Gradient convention: d_x written (=), d_g accumulated (+=).
#ifndef FTX_LAYERS_RMSNORM_H_
#define FTX_LAYERS_RMSNORM_H_

#include <vector>

#include "absl/status/status.h"
#include "attention/attention.h"
#include "kernels/base/context.h"

namespace ftx {

struct RMSNormConfig {
  int64_t dim = 0;
  float eps = 1e-8f;
};

class RMSNorm {
 public:
  explicit RMSNorm(const RMSNormConfig& config) : config_(config) {}

  std::vector<ParamShape> ParamShapes() const { return {{"g", {config_.dim}}}; }
  // g = ones, as x-transformers initialises it.
  static void InitParams(TensorView<float> g);

  // x, y: [..., C]; g: [C].
  absl::Status Forward(const Context& ctx, TensorView<const float> g,
                       TensorView<const float> x, TensorView<float> y) const;
  absl::Status Backward(const Context& ctx, TensorView<const float> g,
                        TensorView<const float> x, TensorView<const float> d_y,
                        TensorView<float> d_x, TensorView<float> d_g) const;

 private:
  RMSNormConfig config_;
};

}  // namespace ftx

#endif  // FTX_LAYERS_RMSNORM_H_
