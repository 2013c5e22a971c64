#include "attention/attention_on_attention.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/activation/activation.h"
#include "kernels/base/rng.h"
#include "kernels/base/status_macros.h"
#include "kernels/linear/linear.h"

namespace ftx {
namespace {

constexpr char kOp[] = "AttentionOnAttention";

absl::Status CheckView(absl::string_view name, TensorView<const float> view,
                       const Shape& expected) {
  if (view.shape() != expected || view.data() == nullptr ||
      !view.IsContiguous()) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": ", name, " must be a contiguous ",
                     expected.ToString(), ", got ", view.shape().ToString()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<AttentionOnAttention> AttentionOnAttention::Create(
    const AttentionOnAttentionConfig& config) {
  if (config.dim < 1 || config.in_dim < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": dim and in_dim must be >= 1, got ", config.dim,
                     " and ", config.in_dim));
  }
  return AttentionOnAttention(config);
}

std::vector<ParamShape> AttentionOnAttention::ParamShapes() const {
  return {{"to_out.0.weight", {2 * config_.dim, config_.in_dim}}};
}

absl::Status AttentionOnAttention::InitParams(const Context& ctx, uint64_t seed,
                                              TensorView<float> weight) const {
  FTX_RETURN_IF_ERROR(
      CheckView("weight", weight, {2 * config_.dim, config_.in_dim}));
  if (ctx.device().type != DeviceType::kCpu ||
      weight.device().type != DeviceType::kCpu) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": InitParams needs a CPU context and CPU views"));
  }
  const float bound =
      config_.zero_init_output
          ? 0.0f
          : 1.0f / std::sqrt(static_cast<float>(config_.in_dim));
  return FillUniform(ctx, weight, -bound, bound, {.seed = seed, .stream = 0});
}

absl::Status AttentionOnAttention::Validate(TensorView<const float> weight,
                                            TensorView<const float> attended,
                                            TensorView<const float> y) const {
  FTX_RETURN_IF_ERROR(
      CheckView("weight", weight, {2 * config_.dim, config_.in_dim}));
  if (attended.rank() != 3 || attended.dim(2) != config_.in_dim) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": attended must be [B, T, ", config_.in_dim,
                     "], got ", attended.shape().ToString()));
  }
  FTX_RETURN_IF_ERROR(CheckView("attended", attended, attended.shape()));
  return CheckView("y", y, {attended.dim(0), attended.dim(1), config_.dim});
}

absl::Status AttentionOnAttention::Forward(const Context& ctx,
                                           TensorView<const float> weight,
                                           TensorView<const float> attended,
                                           TensorView<float> y,
                                           AttentionOnAttentionCache* cache) {
  FTX_RETURN_IF_ERROR(Validate(weight, attended, y));
  const int64_t rows = attended.dim(0) * attended.dim(1);
  Tensor& projected =
      cache != nullptr ? cache->projected : inference_projected_;
  FTX_RETURN_IF_ERROR(
      EnsureTensor(projected, {rows, 2 * config_.dim}, ctx.device()));
  FTX_RETURN_IF_ERROR(LinearForward(ctx,
                                    attended.Reshape({rows, config_.in_dim}),
                                    weight, {}, projected.view<float>()));
  return Glu(ctx, Activation::kSigmoid, projected.view<const float>(),
             y.Reshape({rows, config_.dim}));
}

absl::Status AttentionOnAttention::Backward(
    const Context& ctx, TensorView<const float> weight,
    const AttentionOnAttentionCache& cache, TensorView<const float> attended,
    TensorView<const float> d_y, TensorView<float> d_attended,
    TensorView<float> d_weight) {
  FTX_RETURN_IF_ERROR(Validate(weight, attended, d_y));
  FTX_RETURN_IF_ERROR(CheckView("d_attended", d_attended, attended.shape()));
  FTX_RETURN_IF_ERROR(CheckView("d_weight", d_weight, weight.shape()));
  const int64_t rows = attended.dim(0) * attended.dim(1);
  if (cache.projected.shape() != Shape{rows, 2 * config_.dim}) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": the cache does not come from Forward on this input"));
  }
  FTX_RETURN_IF_ERROR(
      EnsureTensor(d_projected_, {rows, 2 * config_.dim}, ctx.device()));
  FTX_RETURN_IF_ERROR(GluBackward(
      ctx, Activation::kSigmoid, cache.projected.view<const float>(),
      d_y.Reshape({rows, config_.dim}), d_projected_.view<float>()));
  return LinearBackward(ctx, attended.Reshape({rows, config_.in_dim}), weight,
                        d_projected_.view<const float>(),
                        d_attended.Reshape({rows, config_.in_dim}), d_weight,
                        {});
}

}  // namespace ftx
