// ScaleNorm (Nguyen & Salazar 2019, "Transformers without Tears"): one learned scalar
// g scales the L2-normalised input. The reference libraries differ, so the variant is
// explicit:
//   - kXTransformers026 (x-transformers 0.26.6 use_scalenorm, the default):
//       y = x / max(|x| * dim^-0.5, eps) * g,  g = 1, eps = 1e-5;
//   - kXTransformers10 (x-transformers 1.0.0):
//       y = x / max(|x|, eps) * g,  g initialised to dim^-0.5, eps = 1e-5;
//   - kPerformer (performer-pytorch PreScaleNorm):
//       y = x / max(|x|, eps) * g,  g = 1, eps = 1e-5.
// Parameter name "g" ([1]). Gradient convention: d_x (=), d_g (+=).
#ifndef FTX_LAYERS_SCALENORM_H_
#define FTX_LAYERS_SCALENORM_H_

#include <vector>

#include "absl/status/status.h"
#include "attention/attention.h"
#include "kernels/base/context.h"

namespace ftx {

enum class ScaleNormVariant { kXTransformers026, kXTransformers10, kPerformer };

struct ScaleNormConfig {
  int64_t dim = 0;
  ScaleNormVariant variant = ScaleNormVariant::kXTransformers026;
  float eps = 1e-5f;
};

class ScaleNorm {
 public:
  explicit ScaleNorm(const ScaleNormConfig& config) : config_(config) {}

  std::vector<ParamShape> ParamShapes() const { return {{"g", {1}}}; }
  // g as the chosen reference initialises it.
  void InitParams(TensorView<float> g) const;

  // x, y: [..., C]; g: [1].
  absl::Status Forward(const Context& ctx, TensorView<const float> g,
                       TensorView<const float> x, TensorView<float> y) const;
  absl::Status Backward(const Context& ctx, TensorView<const float> g,
                        TensorView<const float> x, TensorView<const float> d_y,
                        TensorView<float> d_x, TensorView<float> d_g) const;

 private:
  bool DivideBySqrtDim() const {
    return config_.variant == ScaleNormVariant::kXTransformers026;
  }
  absl::Status CheckGain(TensorView<const float> g, TensorView<const float> x) const;

  ScaleNormConfig config_;
};

}  // namespace ftx

#endif  // FTX_LAYERS_SCALENORM_H_
