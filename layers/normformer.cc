#include "layers/normformer.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"

namespace ftx {
namespace {

constexpr char kOp[] = "HeadScale";

absl::Status CheckGamma(absl::string_view name, TensorView<const float> gamma,
                        int64_t heads) {
  if (gamma.shape() != Shape{1, heads, 1, 1} || gamma.data() == nullptr ||
      !gamma.IsContiguous() || gamma.device().type != DeviceType::kCpu) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": ", name, " must be a contiguous CPU [1, ", heads,
                     ", 1, 1], got ", gamma.shape().ToString()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<HeadScale> HeadScale::Create(const HeadScaleConfig& config) {
  if (config.heads < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": heads must be >= 1, got ", config.heads));
  }
  return HeadScale(config);
}

std::vector<ParamShape> HeadScale::ParamShapes() const {
  return {{"head_scale_params", {1, config_.heads, 1, 1}}};
}

absl::Status HeadScale::InitParams(TensorView<float> gamma) const {
  FTX_RETURN_IF_ERROR(CheckGamma("gamma", gamma, config_.heads));
  std::fill_n(gamma.data(), config_.heads, 1.0f);
  return absl::OkStatus();
}

absl::Status HeadScale::Validate(const Context& ctx,
                                 TensorView<const float> gamma,
                                 TensorView<const float> attended,
                                 TensorView<const float> out) const {
  if (ctx.device().type != DeviceType::kCpu) {
    return absl::UnimplementedError(
        absl::StrCat(kOp, ": only CPU contexts are supported"));
  }
  FTX_RETURN_IF_ERROR(CheckGamma("gamma", gamma, config_.heads));
  for (const auto& [name, view] :
       {std::pair<const char*, TensorView<const float>>{"attended", attended},
        {"out", out}}) {
    if (view.rank() != 4 || view.dim(2) != config_.heads) {
      return absl::InvalidArgumentError(
          absl::StrCat(kOp, ": ", name, " must be [N, L, ", config_.heads,
                       ", D], got ", view.shape().ToString()));
    }
    if (view.data() == nullptr || !view.IsContiguous() ||
        view.device().type != DeviceType::kCpu) {
      return absl::InvalidArgumentError(
          absl::StrCat(kOp, ": ", name, " must be a contiguous CPU view"));
    }
  }
  if (attended.shape() != out.shape()) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": attended is ", attended.shape().ToString(),
                     " but the output is ", out.shape().ToString()));
  }
  return absl::OkStatus();
}

absl::Status HeadScale::Forward(const Context& ctx,
                                TensorView<const float> gamma,
                                TensorView<const float> attended,
                                TensorView<float> out) const {
  FTX_RETURN_IF_ERROR(Validate(ctx, gamma, attended, out));
  const int64_t H = config_.heads, D = attended.dim(3);
  const int64_t rows = attended.dim(0) * attended.dim(1) * H;
  for (int64_t r = 0; r < rows; ++r) {
    const float g = gamma.data()[r % H];
    for (int64_t d = 0; d < D; ++d) {
      out.data()[r * D + d] = g * attended.data()[r * D + d];
    }
  }
  return absl::OkStatus();
}

absl::Status HeadScale::Backward(const Context& ctx,
                                 TensorView<const float> gamma,
                                 TensorView<const float> attended,
                                 TensorView<const float> d_out,
                                 TensorView<float> d_attended,
                                 TensorView<float> d_gamma) const {
  FTX_RETURN_IF_ERROR(Validate(ctx, gamma, attended, d_out));
  FTX_RETURN_IF_ERROR(Validate(ctx, gamma, attended, d_attended));
  FTX_RETURN_IF_ERROR(CheckGamma("d_gamma", d_gamma, config_.heads));
  const int64_t H = config_.heads, D = attended.dim(3);
  const int64_t rows = attended.dim(0) * attended.dim(1) * H;
  std::vector<double> d_sum(H, 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t h = r % H;
    const float g = gamma.data()[h];
    for (int64_t d = 0; d < D; ++d) {
      const float upstream = d_out.data()[r * D + d];
      d_sum[h] += static_cast<double>(upstream) * attended.data()[r * D + d];
      d_attended.data()[r * D + d] = g * upstream;
    }
  }
  for (int64_t h = 0; h < H; ++h) {
    d_gamma.data()[h] += static_cast<float>(d_sum[h]);
  }
  return absl::OkStatus();
}

}  // namespace ftx
