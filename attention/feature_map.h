// Feature maps phi for linear attention (Katharopoulos et al. 2020,
// "Transformers are RNNs", eq. 4-6): sim(q, k) = phi(q) . phi(k). The interface
// mirrors fast-transformers' FeatureMap (feature_maps/base.py): NewFeatureMap
// runs before every forward (random maps redraw there), then queries and keys
// are mapped separately.
//
// Shapes: x [N, T, H, E] -> features [N, T, H, F], F = FeatureDim(E).
#ifndef FTX_ATTENTION_FEATURE_MAP_H_
#define FTX_ATTENTION_FEATURE_MAP_H_

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/activation/activation.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor_view.h"

namespace ftx {

class FeatureMap {
 public:
  virtual ~FeatureMap() = default;

  virtual const char* name() const = 0;
  virtual int64_t FeatureDim(int64_t qk_dim) const = 0;

  // Called once per attention forward, before the maps below.
  virtual absl::Status NewFeatureMap(const Context& ctx, int64_t qk_dim) {
    return absl::OkStatus();
  }

  // features = phi(x). `is_query` selects the query or key form (they differ
  // for Performer's softmax kernel).
  virtual absl::Status Forward(const Context& ctx, TensorView<const float> x,
                               bool is_query, TensorView<float> features) = 0;

  // d_x = (d phi / d x)^T d_features, written (=). `features` is Forward's
  // output.
  virtual absl::Status Backward(const Context& ctx, TensorView<const float> x,
                                bool is_query, TensorView<const float> features,
                                TensorView<const float> d_features,
                                TensorView<float> d_x) = 0;
};

// phi(x) = f(x) elementwise: elu(x) + 1 is fast-transformers' default
// (elu_feature_map); relu and the others of kernels/activation work too.
class ActivationFeatureMap : public FeatureMap {
 public:
  explicit ActivationFeatureMap(Activation activation = Activation::kEluPlusOne)
      : activation_(activation) {}

  const char* name() const override { return ActivationName(activation_); }
  int64_t FeatureDim(int64_t qk_dim) const override { return qk_dim; }
  absl::Status Forward(const Context& ctx, TensorView<const float> x,
                       bool is_query, TensorView<float> features) override;
  absl::Status Backward(const Context& ctx, TensorView<const float> x,
                        bool is_query, TensorView<const float> features,
                        TensorView<const float> d_features,
                        TensorView<float> d_x) override;

 private:
  Activation activation_;
};

}  // namespace ftx

#endif  // FTX_ATTENTION_FEATURE_MAP_H_
