// LayerNorm (Ba et al. 2016) as a layer module: torch.nn.LayerNorm(dim) over
// the last axis, with biased variance, as used by x-transformers (every norm
// and the final norm), performer-pytorch and linear-attention-transformer
// (PreLayerNorm, eps 1e-5):
//   mean = sum_c x_c / C,  var = sum_c (x_c - mean)^2 / C
//   y = (x - mean) / sqrt(var + eps) * weight + bias
// Parameters (torch state_dict names): "weight" [C] initialised to ones and
// "bias" [C] initialised to zeros. elementwise_affine = false drops both
// (torch's option); bias = false keeps only "weight" (torch
// LayerNorm(bias=False)). The computation runs in kernels/layernorm, so any
// device the kernel supports works.
//
// Gradient convention: d_x is written (=); d_weight and d_bias are accumulated
// (+=).
//
// Example:
//   FTX_ASSIGN_OR_RETURN(LayerNormLayer norm, LayerNormLayer::Create({.dim =
//   C})); LayerNormCache cache; FTX_RETURN_IF_ERROR(norm.Forward(ctx, weight,
//   bias, x, y, &cache)); FTX_RETURN_IF_ERROR(norm.Backward(ctx, weight, cache,
//   x, d_y, d_x,
//                                     d_weight, d_bias));
#ifndef FTX_LAYERS_LAYERNORM_H_
#define FTX_LAYERS_LAYERNORM_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "attention/attention.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor.h"
#include "kernels/base/tensor_view.h"

namespace ftx {

struct LayerNormLayerConfig {
  int64_t dim = 0;                 // C
  float eps = 1e-5f;               // torch.nn.LayerNorm's default
  bool elementwise_affine = true;  // false: no weight and no bias
  bool bias = true;                // false: weight only
};

// What Forward keeps for Backward: the statistics of every row of x.
struct LayerNormCache {
  Tensor mean;  // [R], R = number of rows of x
  Tensor rstd;  // [R], 1 / sqrt(var + eps)
};

class LayerNormLayer {
 public:
  // InvalidArgument for dim < 1 or eps negative or not finite.
  static absl::StatusOr<LayerNormLayer> Create(
      const LayerNormLayerConfig& config);

  const LayerNormLayerConfig& config() const { return config_; }
  bool has_weight() const { return config_.elementwise_affine; }
  bool has_bias() const { return config_.elementwise_affine && config_.bias; }

  // {"weight", [C]}, {"bias", [C]}, each only when present.
  std::vector<ParamShape> ParamShapes() const;

  // weight = 1, bias = 0, as torch initialises them. Views: CPU, [C] or empty
  // when the parameter is absent.
  absl::Status InitParams(TensorView<float> weight,
                          TensorView<float> bias) const;

  // x, y: [..., C] (y may be x); weight, bias: [C], or empty views when
  // absent. cache may be null at inference; otherwise it receives mean and
  // rstd.
  absl::Status Forward(const Context& ctx, TensorView<const float> weight,
                       TensorView<const float> bias, TensorView<const float> x,
                       TensorView<float> y, LayerNormCache* cache) const;

  // With x_hat = (x - mean) * rstd and g = d_y * weight:
  //   d_x = rstd * (g - mean_c(g) - x_hat * mean_c(g * x_hat))   (=)
  //   d_weight += sum_rows d_y * x_hat,  d_bias += sum_rows d_y   (+=)
  // x, d_y, d_x: [..., C] (d_x may alias d_y); d_weight, d_bias: [C] when the
  // parameter is present, empty otherwise. cache: from Forward on this x.
  absl::Status Backward(const Context& ctx, TensorView<const float> weight,
                        const LayerNormCache& cache, TensorView<const float> x,
                        TensorView<const float> d_y, TensorView<float> d_x,
                        TensorView<float> d_weight,
                        TensorView<float> d_bias) const;

 private:
  explicit LayerNormLayer(const LayerNormLayerConfig& config)
      : config_(config) {}

  LayerNormLayerConfig config_;
};

}  // namespace ftx

#endif  // FTX_LAYERS_LAYERNORM_H_
