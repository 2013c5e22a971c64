#include "layers/scalenorm.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "layers/norm_scale.h"

namespace ftx {

void ScaleNorm::InitParams(TensorView<float> g) const {
  g.data()[0] = config_.variant == ScaleNormVariant::kXTransformers10
                    ? 1.0f / std::sqrt(static_cast<float>(config_.dim))
                    : 1.0f;
}

absl::Status ScaleNorm::CheckGain(TensorView<const float> g,
                                  TensorView<const float> x) const {
  if (g.NumElements() != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("ScaleNorm: g must be one scalar, got ", g.shape().ToString()));
  }
  if (x.rank() < 1 || x.dim(x.rank() - 1) != config_.dim) {
    return absl::InvalidArgumentError(absl::StrCat("ScaleNorm: x must be [..., ",
                                                   config_.dim, "], got ",
                                                   x.shape().ToString()));
  }
  return absl::OkStatus();
}

absl::Status ScaleNorm::Forward(const Context& ctx, TensorView<const float> g,
                                TensorView<const float> x, TensorView<float> y) const {
  if (absl::Status status = CheckGain(g, x); !status.ok()) return status;
  return internal::NormScaleForward("ScaleNorm", ctx, {DivideBySqrtDim(), config_.eps},
                                    x, g, y);
}

absl::Status ScaleNorm::Backward(const Context& ctx, TensorView<const float> g,
                                 TensorView<const float> x, TensorView<const float> d_y,
                                 TensorView<float> d_x, TensorView<float> d_g) const {
  if (absl::Status status = CheckGain(g, x); !status.ok()) return status;
  return internal::NormScaleBackward("ScaleNorm", ctx, {DivideBySqrtDim(), config_.eps},
                                     x, g, d_y, d_x, d_g);
}

}  // namespace ftx
