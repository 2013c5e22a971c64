#include "layers/layernorm.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "kernels/base/validate.h"
#include "kernels/layernorm/layernorm.h"

namespace ftx {
namespace {

constexpr char kOp[] = "LayerNormLayer";

// A parameter (or its gradient) view: [dim] when the configuration has it, an
// empty view otherwise.
template <typename T>
absl::Status CheckParam(const Context* ctx, const char* name,
                        const TensorView<T>& view, int64_t dim, bool present) {
  if (!present) {
    if (view.data() != nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          kOp, ": ", name,
          " must be an empty view: this configuration has no such parameter"));
    }
    return absl::OkStatus();
  }
  if (view.data() == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": ", name, " is required: [", dim, "]"));
  }
  if (ctx != nullptr) {
    FTX_RETURN_IF_ERROR(CheckRowsView(kOp, name, view, *ctx));
  } else if (view.device().type != DeviceType::kCpu) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": ", name, " must be a CPU view to initialise"));
  }
  if (view.rank() != 1 || view.dim(0) != dim || view.stride(0) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": ", name, " must be a contiguous [", dim, "], got ",
                     view.shape().ToString()));
  }
  return absl::OkStatus();
}

absl::Status CheckInput(const Context& ctx, const char* name,
                        const TensorView<const float>& x, int64_t dim) {
  FTX_RETURN_IF_ERROR(CheckRowsView(kOp, name, x, ctx));
  if (x.dim(x.rank() - 1) != dim) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": ", name, " must be [..., ", dim, "], got ",
                     x.shape().ToString()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<LayerNormLayer> LayerNormLayer::Create(
    const LayerNormLayerConfig& config) {
  if (config.dim < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": dim must be >= 1, got ", config.dim));
  }
  if (!(std::isfinite(config.eps) && config.eps >= 0.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": eps must be finite and >= 0, got ", config.eps));
  }
  return LayerNormLayer(config);
}

std::vector<ParamShape> LayerNormLayer::ParamShapes() const {
  std::vector<ParamShape> shapes;
  if (has_weight()) shapes.push_back({"weight", {config_.dim}});
  if (has_bias()) shapes.push_back({"bias", {config_.dim}});
  return shapes;
}

absl::Status LayerNormLayer::InitParams(TensorView<float> weight,
                                        TensorView<float> bias) const {
  FTX_RETURN_IF_ERROR(
      CheckParam(nullptr, "weight", weight, config_.dim, has_weight()));
  FTX_RETURN_IF_ERROR(
      CheckParam(nullptr, "bias", bias, config_.dim, has_bias()));
  if (has_weight()) std::fill(weight.data(), weight.data() + config_.dim, 1.0f);
  if (has_bias()) std::fill(bias.data(), bias.data() + config_.dim, 0.0f);
  return absl::OkStatus();
}

absl::Status LayerNormLayer::Forward(const Context& ctx,
                                     TensorView<const float> weight,
                                     TensorView<const float> bias,
                                     TensorView<const float> x,
                                     TensorView<float> y,
                                     LayerNormCache* cache) const {
  FTX_RETURN_IF_ERROR(CheckInput(ctx, "x", x, config_.dim));
  FTX_RETURN_IF_ERROR(CheckSameShapes(kOp, ctx, "x", x, Named("y", y)));
  FTX_RETURN_IF_ERROR(
      CheckParam(&ctx, "weight", weight, config_.dim, has_weight()));
  FTX_RETURN_IF_ERROR(CheckParam(&ctx, "bias", bias, config_.dim, has_bias()));
  TensorView<float> mean, rstd;
  if (cache != nullptr) {
    const Shape rows{x.NumElements() / config_.dim};
    FTX_RETURN_IF_ERROR(EnsureTensor(cache->mean, rows, ctx.device()));
    FTX_RETURN_IF_ERROR(EnsureTensor(cache->rstd, rows, ctx.device()));
    mean = cache->mean.view<float>();
    rstd = cache->rstd.view<float>();
  }
  return LayerNorm(ctx, x, weight, bias, y, mean, rstd, {.eps = config_.eps});
}

absl::Status LayerNormLayer::Backward(
    const Context& ctx, TensorView<const float> weight,
    const LayerNormCache& cache, TensorView<const float> x,
    TensorView<const float> d_y, TensorView<float> d_x,
    TensorView<float> d_weight, TensorView<float> d_bias) const {
  FTX_RETURN_IF_ERROR(CheckInput(ctx, "x", x, config_.dim));
  FTX_RETURN_IF_ERROR(
      CheckSameShapes(kOp, ctx, "x", x, Named("d_y", d_y), Named("d_x", d_x)));
  FTX_RETURN_IF_ERROR(
      CheckParam(&ctx, "weight", weight, config_.dim, has_weight()));
  FTX_RETURN_IF_ERROR(
      CheckParam(&ctx, "d_weight", d_weight, config_.dim, has_weight()));
  FTX_RETURN_IF_ERROR(
      CheckParam(&ctx, "d_bias", d_bias, config_.dim, has_bias()));
  const Shape rows{x.NumElements() / config_.dim};
  if (cache.mean.shape() != rows || cache.rstd.shape() != rows) {
    return absl::FailedPreconditionError(absl::StrCat(
        kOp, "::Backward: the cache holds statistics of ",
        cache.mean.shape().ToString(), " rows but x has ", rows.ToString(),
        " (pass the cache to Forward on the same x)"));
  }
  return LayerNormBackward(ctx, x, weight, cache.mean.view<float>(),
                           cache.rstd.view<float>(), d_y, d_x, d_weight,
                           d_bias);
}

}  // namespace ftx
