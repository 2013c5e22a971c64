#include "layers/glu.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/base/rng.h"
#include "kernels/base/status_macros.h"
#include "kernels/base/validate.h"
#include "kernels/linear/linear.h"

namespace ftx {
namespace {

constexpr char kOp[] = "GluLayer";

// [..., C] (validated by CheckRowsView) as [rows, C].
template <typename T>
TensorView<T> AsRows(const TensorView<T>& view) {
  const MatrixView<T> m = AsMatrix(view);
  return TensorView<T>(m.data, Shape{m.rows, m.cols},
                       Strides{m.row_stride, 1, 0, 0}, view.device());
}

// A parameter or gradient view of `expected` shape, or an empty view when
// `present` is false.
template <typename T>
absl::Status CheckParam(const Context& ctx, const char* name,
                        const TensorView<T>& view, const Shape& expected,
                        bool present) {
  if (!present) {
    if (view.data() != nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          kOp, ": ", name, " must be an empty view: the layer has no bias"));
    }
    return absl::OkStatus();
  }
  if (view.data() == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": ", name, " is required: ", expected.ToString()));
  }
  FTX_RETURN_IF_ERROR(CheckRowsView(kOp, name, view, ctx));
  if (view.shape() != expected) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": ", name, " must be ", expected.ToString(),
                     ", got ", view.shape().ToString()));
  }
  return absl::OkStatus();
}

// A [rows, cols] view.
template <typename T>
absl::Status CheckRows(const Context& ctx, const char* name,
                       const TensorView<T>& view, int64_t rows, int64_t cols) {
  FTX_RETURN_IF_ERROR(CheckRowsView(kOp, name, view, ctx));
  if (view.rank() != 2 || view.dim(0) != rows || view.dim(1) != cols) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": ", name, " must be [", rows, ", ", cols, "], got ",
                     view.shape().ToString()));
  }
  return absl::OkStatus();
}

// Swaps the two halves of every row of a [R, 2 D] view, in place.
void SwapHalves(const Context& ctx, const TensorView<float>& rows) {
  const int64_t half = rows.dim(1) / 2;
  ctx.pool().ParallelFor(rows.dim(0), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float* row = &rows.at(r, 0);
      std::swap_ranges(row, row + half, row + half);
    }
  });
}

}  // namespace

absl::StatusOr<GluLayer> GluLayer::Create(const GluLayerConfig& config) {
  if (config.dim_in < 1 || config.dim_out < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": dim_in and dim_out must be >= 1, got ",
                     config.dim_in, " and ", config.dim_out));
  }
  if (std::strcmp(ActivationName(config.activation), "invalid") == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": unknown activation ", static_cast<int>(config.activation)));
  }
  if (config.activated_half != GluActivatedHalf::kSecond &&
      config.activated_half != GluActivatedHalf::kFirst) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": unknown activated_half ",
                     static_cast<int>(config.activated_half)));
  }
  return GluLayer(config);
}

std::vector<ParamShape> GluLayer::ParamShapes() const {
  std::vector<ParamShape> shapes = {
      {"proj.weight", {2 * config_.dim_out, config_.dim_in}}};
  if (config_.bias) shapes.push_back({"proj.bias", {2 * config_.dim_out}});
  return shapes;
}

absl::Status GluLayer::InitParams(const Context& ctx, uint64_t seed,
                                  const GluTensors<float>& params) const {
  if (ctx.device().type != DeviceType::kCpu) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": InitParams needs a CPU context and CPU views"));
  }
  const int64_t width = 2 * config_.dim_out;
  FTX_RETURN_IF_ERROR(CheckParam(ctx, "proj.weight", params.proj_weight,
                                 {width, config_.dim_in}, true));
  FTX_RETURN_IF_ERROR(
      CheckParam(ctx, "proj.bias", params.proj_bias, {width}, config_.bias));
  const float bound = 1.0f / std::sqrt(static_cast<float>(config_.dim_in));
  FTX_RETURN_IF_ERROR(FillUniform(ctx, params.proj_weight, -bound, bound,
                                  {.seed = seed, .stream = 0}));
  if (config_.bias) {
    FTX_RETURN_IF_ERROR(FillUniform(ctx, params.proj_bias, -bound, bound,
                                    {.seed = seed, .stream = 1}));
  }
  return absl::OkStatus();
}

absl::Status GluLayer::ForwardRows(const Context& ctx, const GluParams& params,
                                   TensorView<const float> x,
                                   TensorView<float> projected,
                                   TensorView<float> y) const {
  const int64_t D = config_.dim_out;
  const int64_t rows = x.rank() == 2 ? x.dim(0) : 0;
  FTX_RETURN_IF_ERROR(CheckRows(ctx, "x", x, rows, config_.dim_in));
  FTX_RETURN_IF_ERROR(CheckRows(ctx, "projected", projected, rows, 2 * D));
  FTX_RETURN_IF_ERROR(CheckRows(ctx, "y", y, rows, D));
  FTX_RETURN_IF_ERROR(CheckParam(ctx, "proj.weight", params.proj_weight,
                                 {2 * D, config_.dim_in}, true));
  FTX_RETURN_IF_ERROR(
      CheckParam(ctx, "proj.bias", params.proj_bias, {2 * D}, config_.bias));
  const bool swap = config_.activated_half == GluActivatedHalf::kFirst;
  if (swap && ctx.device().type != DeviceType::kCpu) {
    return absl::UnimplementedError(
        absl::StrCat(kOp, ": activated_half = kFirst runs on the CPU only"));
  }
  FTX_RETURN_IF_ERROR(
      LinearForward(ctx, x, params.proj_weight, params.proj_bias, projected));
  if (swap) SwapHalves(ctx, projected);
  return Glu(ctx, config_.activation, projected, y);
}

absl::Status GluLayer::BackwardRows(const Context& ctx, const GluParams& params,
                                    TensorView<const float> x,
                                    TensorView<const float> projected,
                                    TensorView<const float> d_y,
                                    TensorView<float> d_projected,
                                    TensorView<float> d_x,
                                    const GluGrads& grads) const {
  const int64_t D = config_.dim_out;
  const int64_t rows = x.rank() == 2 ? x.dim(0) : 0;
  FTX_RETURN_IF_ERROR(CheckRows(ctx, "x", x, rows, config_.dim_in));
  FTX_RETURN_IF_ERROR(CheckRows(ctx, "projected", projected, rows, 2 * D));
  FTX_RETURN_IF_ERROR(CheckRows(ctx, "d_y", d_y, rows, D));
  FTX_RETURN_IF_ERROR(CheckRows(ctx, "d_projected", d_projected, rows, 2 * D));
  if (d_x.data() != nullptr) {
    FTX_RETURN_IF_ERROR(CheckRows(ctx, "d_x", d_x, rows, config_.dim_in));
  }
  FTX_RETURN_IF_ERROR(CheckParam(ctx, "proj.weight", params.proj_weight,
                                 {2 * D, config_.dim_in}, true));
  FTX_RETURN_IF_ERROR(
      CheckParam(ctx, "proj.bias", params.proj_bias, {2 * D}, config_.bias));
  FTX_RETURN_IF_ERROR(CheckParam(ctx, "d_proj.weight", grads.proj_weight,
                                 {2 * D, config_.dim_in}, true));
  FTX_RETURN_IF_ERROR(
      CheckParam(ctx, "d_proj.bias", grads.proj_bias, {2 * D}, config_.bias));
  const bool swap = config_.activated_half == GluActivatedHalf::kFirst;
  if (swap && ctx.device().type != DeviceType::kCpu) {
    return absl::UnimplementedError(
        absl::StrCat(kOp, ": activated_half = kFirst runs on the CPU only"));
  }
  // d_projected = (d_value, d_activated) in the buffer's order; swapped back
  // to the projection's order for kFirst.
  FTX_RETURN_IF_ERROR(
      GluBackward(ctx, config_.activation, projected, d_y, d_projected));
  if (swap) SwapHalves(ctx, d_projected);
  return LinearBackward(ctx, x, params.proj_weight, d_projected, d_x,
                        grads.proj_weight, grads.proj_bias);
}

absl::Status GluLayer::Forward(const Context& ctx, const GluParams& params,
                               TensorView<const float> x, TensorView<float> y,
                               GluCache* cache) {
  FTX_RETURN_IF_ERROR(CheckRowsView(kOp, "x", x, ctx));
  FTX_RETURN_IF_ERROR(CheckRowsView(kOp, "y", y, ctx));
  Shape expected_y = x.shape();
  expected_y.set_dim(x.rank() - 1, config_.dim_out);
  if (x.dim(x.rank() - 1) != config_.dim_in || y.shape() != expected_y) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": expected x [..., ", config_.dim_in, "] and y [..., ",
        config_.dim_out, "] with the same leading axes, got x ",
        x.shape().ToString(), " and y ", y.shape().ToString()));
  }
  const TensorView<const float> x_rows = AsRows(x);
  Tensor& projected =
      cache != nullptr ? cache->projected : inference_projected_;
  FTX_RETURN_IF_ERROR(EnsureTensor(
      projected, {x_rows.dim(0), 2 * config_.dim_out}, ctx.device()));
  return ForwardRows(ctx, params, x_rows, projected.view<float>(), AsRows(y));
}

absl::Status GluLayer::Backward(const Context& ctx, const GluParams& params,
                                const GluCache& cache,
                                TensorView<const float> x,
                                TensorView<const float> d_y,
                                TensorView<float> d_x, const GluGrads& grads) {
  FTX_RETURN_IF_ERROR(CheckRowsView(kOp, "x", x, ctx));
  FTX_RETURN_IF_ERROR(CheckRowsView(kOp, "d_y", d_y, ctx));
  FTX_RETURN_IF_ERROR(CheckSameShapes(kOp, ctx, "x", x, Named("d_x", d_x)));
  Shape expected_d_y = x.shape();
  expected_d_y.set_dim(x.rank() - 1, config_.dim_out);
  if (x.dim(x.rank() - 1) != config_.dim_in || d_y.shape() != expected_d_y) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": expected x [..., ", config_.dim_in, "] and d_y [..., ",
        config_.dim_out, "] with the same leading axes, got x ",
        x.shape().ToString(), " and d_y ", d_y.shape().ToString()));
  }
  const TensorView<const float> x_rows = AsRows(x);
  const Shape projected_shape{x_rows.dim(0), 2 * config_.dim_out};
  if (cache.projected.shape() != projected_shape) {
    return absl::FailedPreconditionError(absl::StrCat(
        kOp, "::Backward: the cache holds ", cache.projected.shape().ToString(),
        " but x needs ", projected_shape.ToString(),
        " (pass the cache to Forward on the same x)"));
  }
  FTX_RETURN_IF_ERROR(
      EnsureTensor(d_projected_, projected_shape, ctx.device()));
  return BackwardRows(ctx, params, x_rows, cache.projected.view<float>(),
                      AsRows(d_y), d_projected_.view<float>(), AsRows(d_x),
                      grads);
}

}  // namespace ftx
