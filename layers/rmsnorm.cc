#include "layers/rmsnorm.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "layers/norm_scale.h"

namespace ftx {

void RMSNorm::InitParams(TensorView<float> g) {
  std::fill(g.data(), g.data() + g.NumElements(), 1.0f);
}

absl::Status RMSNorm::Forward(const Context& ctx, TensorView<const float> g,
                              TensorView<const float> x, TensorView<float> y) const {
  if (g.NumElements() != config_.dim) {
    return absl::InvalidArgumentError(absl::StrCat("RMSNorm: g must hold dim = ",
                                                   config_.dim, " values, got ",
                                                   g.shape().ToString()));
  }
  return internal::NormScaleForward("RMSNorm", ctx, {true, config_.eps}, x, g, y);
}

absl::Status RMSNorm::Backward(const Context& ctx, TensorView<const float> g,
                               TensorView<const float> x, TensorView<const float> d_y,
                               TensorView<float> d_x, TensorView<float> d_g) const {
  if (g.NumElements() != config_.dim) {
    return absl::InvalidArgumentError(absl::StrCat("RMSNorm: g must hold dim = ",
                                                   config_.dim, " values, got ",
                                                   g.shape().ToString()));
  }
  return internal::NormScaleBackward("RMSNorm", ctx, {true, config_.eps}, x, g, d_y, d_x,
                                     d_g);
}

}  // namespace ftx
