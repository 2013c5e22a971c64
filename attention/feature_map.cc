#include "attention/feature_map.h"

namespace ftx {

absl::Status ActivationFeatureMap::Forward(const Context& ctx,
                                           TensorView<const float> x,
                                           bool is_query,
                                           TensorView<float> features) {
  return Activate(ctx, activation_, x, features);
}

absl::Status ActivationFeatureMap::Backward(const Context& ctx,
                                            TensorView<const float> x,
                                            bool is_query,
                                            TensorView<const float> features,
                                            TensorView<const float> d_features,
                                            TensorView<float> d_x) {
  return ActivateBackward(ctx, activation_, x, d_features, d_x);
}

}  // namespace ftx
