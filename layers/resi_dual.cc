#include "layers/resi_dual.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"

namespace ftx {
namespace {

constexpr char kOp[] = "ResiDual";

}  // namespace

absl::StatusOr<ResiDual> ResiDual::Create(const ResiDualConfig& config) {
  if (config.dim < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": dim must be >= 1, got ", config.dim));
  }
  if (!(config.scale > 0.0f && config.scale <= 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": scale (resi_dual_scale) must be in (0, 1], got ",
                     config.scale));
  }
  FTX_ASSIGN_OR_RETURN(LayerNormLayer norm,
                       LayerNormLayer::Create({.dim = config.dim}));
  return ResiDual(config, std::move(norm));
}

absl::Status ResiDual::CheckPair(const Context& ctx, absl::string_view a_name,
                                 TensorView<const float> a,
                                 absl::string_view b_name,
                                 TensorView<const float> b) const {
  if (ctx.device().type != DeviceType::kCpu) {
    return absl::UnimplementedError(
        absl::StrCat(kOp, ": only CPU contexts are supported"));
  }
  for (const auto& [name, view] :
       {std::pair<absl::string_view, TensorView<const float>>{a_name, a},
        {b_name, b}}) {
    if (view.rank() != 3 || view.dim(2) != config_.dim ||
        view.data() == nullptr || !view.IsContiguous() ||
        view.device().type != DeviceType::kCpu) {
      return absl::InvalidArgumentError(
          absl::StrCat(kOp, ": ", name, " must be a contiguous CPU [B, T, ",
                       config_.dim, "], got ", view.shape().ToString()));
    }
  }
  if (a.shape() != b.shape()) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": ", a_name, " is ", a.shape().ToString(), " but ",
                     b_name, " is ", b.shape().ToString()));
  }
  return absl::OkStatus();
}

absl::Status ResiDual::Begin(const Context& ctx, TensorView<const float> x,
                             TensorView<float> outer) const {
  FTX_RETURN_IF_ERROR(CheckPair(ctx, "x", x, "outer", outer));
  for (int64_t i = 0; i < x.NumElements(); ++i) {
    outer.data()[i] = config_.scale * x.data()[i];
  }
  return absl::OkStatus();
}

absl::Status ResiDual::Accumulate(const Context& ctx,
                                  TensorView<const float> branch_out,
                                  TensorView<float> outer) const {
  FTX_RETURN_IF_ERROR(CheckPair(ctx, "branch_out", branch_out, "outer", outer));
  for (int64_t i = 0; i < outer.NumElements(); ++i) {
    outer.data()[i] += config_.scale * branch_out.data()[i];
  }
  return absl::OkStatus();
}

absl::Status ResiDual::Finish(const Context& ctx,
                              TensorView<const float> weight,
                              TensorView<const float> bias,
                              TensorView<const float> x_last,
                              TensorView<const float> outer,
                              TensorView<float> y,
                              LayerNormCache* cache) const {
  FTX_RETURN_IF_ERROR(CheckPair(ctx, "x_last", x_last, "outer", outer));
  FTX_RETURN_IF_ERROR(CheckPair(ctx, "x_last", x_last, "y", y));
  if (y.data() == x_last.data() || y.data() == outer.data()) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": y must not overlap x_last or outer"));
  }
  FTX_RETURN_IF_ERROR(final_norm_.Forward(ctx, weight, bias, outer, y, cache));
  for (int64_t i = 0; i < y.NumElements(); ++i) y.data()[i] += x_last.data()[i];
  return absl::OkStatus();
}

absl::Status ResiDual::FinishBackward(
    const Context& ctx, TensorView<const float> weight,
    const LayerNormCache& cache, TensorView<const float> outer,
    TensorView<const float> d_y, TensorView<float> d_outer,
    TensorView<float> d_weight, TensorView<float> d_bias) const {
  FTX_RETURN_IF_ERROR(CheckPair(ctx, "outer", outer, "d_y", d_y));
  FTX_RETURN_IF_ERROR(CheckPair(ctx, "outer", outer, "d_outer", d_outer));
  return final_norm_.Backward(ctx, weight, cache, outer, d_y, d_outer, d_weight,
                              d_bias);
}

absl::Status ResiDual::AddOuterGradient(const Context& ctx,
                                        TensorView<const float> d_outer,
                                        TensorView<float> d_target) const {
  FTX_RETURN_IF_ERROR(CheckPair(ctx, "d_outer", d_outer, "d_target", d_target));
  for (int64_t i = 0; i < d_target.NumElements(); ++i) {
    d_target.data()[i] += config_.scale * d_outer.data()[i];
  }
  return absl::OkStatus();
}

}  // namespace ftx
