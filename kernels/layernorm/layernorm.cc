#include "kernels/layernorm/layernorm.h"

#include <cmath>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "kernels/base/status_macros.h"
#include "kernels/base/validate.h"
#include "kernels/layernorm/layernorm_cpu.h"

#ifdef FTX_HAVE_CUDA
#include "kernels/layernorm/layernorm_cuda.h"
#endif

namespace ftx {
namespace {

// The data of an optional vector argument of `count` contiguous elements (one
// per `per`), or null when it is absent.
template <typename T>
absl::StatusOr<T*> OptionalVector(absl::string_view op, absl::string_view name,
                                  const TensorView<T>& view, int64_t count,
                                  absl::string_view per, const Context& ctx) {
  if (IsAbsent(view)) return static_cast<T*>(nullptr);
  FTX_RETURN_IF_ERROR(CheckRowsView(op, name, view, ctx));
  if (view.NumElements() != count || !view.IsContiguous()) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": ", name, " must hold ", count, " contiguous elements (one per ",
        per, "), got shape ", view.shape().ToString()));
  }
  return view.data();
}

template <typename T>
absl::StatusOr<T*> RequiredVector(absl::string_view op, absl::string_view name,
                                  const TensorView<T>& view, int64_t count,
                                  absl::string_view per, const Context& ctx) {
  if (IsAbsent(view) && count > 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": ", name, " is required: ", count, " elements, one per ", per));
  }
  return OptionalVector(op, name, view, count, per, ctx);
}

absl::Status CheckColumns(absl::string_view op, absl::string_view name,
                          const TensorView<const float>& view) {
  if (view.dim(view.rank() - 1) == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", name, " ", view.shape().ToString(),
                     " must have a non-empty last axis"));
  }
  return absl::OkStatus();
}

constexpr char kPerColumn[] = "column of x";
constexpr char kPerRow[] = "row of x";

}  // namespace

absl::Status LayerNorm(const Context& ctx, TensorView<const float> x,
                       TensorView<const float> gamma,
                       TensorView<const float> beta, TensorView<float> y,
                       TensorView<float> mean, TensorView<float> rstd,
                       const LayerNormOptions& options) {
  constexpr char kOp[] = "LayerNorm";
  FTX_RETURN_IF_ERROR(CheckSameShapes(kOp, ctx, "x", x, Named("y", y)));
  FTX_RETURN_IF_ERROR(CheckColumns(kOp, "x", x));
  if (!(std::isfinite(options.eps) && options.eps >= 0.0f)) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": options.eps must be finite and >= 0, got ", options.eps));
  }
  const MatrixView<const float> x_rows = AsMatrix(x);
  const MatrixView<float> y_rows = AsMatrix(y);
  FTX_ASSIGN_OR_RETURN(
      const float* gamma_data,
      OptionalVector(kOp, "gamma", gamma, x_rows.cols, kPerColumn, ctx));
  FTX_ASSIGN_OR_RETURN(
      const float* beta_data,
      OptionalVector(kOp, "beta", beta, x_rows.cols, kPerColumn, ctx));
  FTX_ASSIGN_OR_RETURN(
      float* mean_data,
      OptionalVector(kOp, "mean", mean, x_rows.rows, kPerRow, ctx));
  FTX_ASSIGN_OR_RETURN(
      float* rstd_data,
      OptionalVector(kOp, "rstd", rstd, x_rows.rows, kPerRow, ctx));
  return RouteByDevice(
      kOp, ctx,
      [&] {
        cpu::LayerNormForward(ctx, x_rows, gamma_data, beta_data, options.eps,
                              y_rows, mean_data, rstd_data);
      },
      FTX_CUDA_LAUNCH(cuda::LaunchLayerNormForward(
          x_rows.rows, x_rows.cols, x_rows.data, x_rows.row_stride, gamma_data,
          beta_data, options.eps, y_rows.data, y_rows.row_stride, mean_data,
          rstd_data, ctx.cuda_stream())));
}

absl::Status LayerNormBackward(const Context& ctx, TensorView<const float> x,
                               TensorView<const float> gamma,
                               TensorView<const float> mean,
                               TensorView<const float> rstd,
                               TensorView<const float> d_y,
                               TensorView<float> d_x, TensorView<float> d_gamma,
                               TensorView<float> d_beta) {
  constexpr char kOp[] = "LayerNormBackward";
  FTX_RETURN_IF_ERROR(
      CheckSameShapes(kOp, ctx, "d_y", d_y, Named("x", x), Named("d_x", d_x)));
  FTX_RETURN_IF_ERROR(CheckColumns(kOp, "d_y", d_y));
  const MatrixView<const float> x_rows = AsMatrix(x);
  const MatrixView<const float> d_y_rows = AsMatrix(d_y);
  const MatrixView<float> d_x_rows = AsMatrix(d_x);
  FTX_ASSIGN_OR_RETURN(
      const float* gamma_data,
      OptionalVector(kOp, "gamma", gamma, x_rows.cols, kPerColumn, ctx));
  FTX_ASSIGN_OR_RETURN(
      const float* mean_data,
      RequiredVector(kOp, "mean", mean, x_rows.rows, kPerRow, ctx));
  FTX_ASSIGN_OR_RETURN(
      const float* rstd_data,
      RequiredVector(kOp, "rstd", rstd, x_rows.rows, kPerRow, ctx));
  FTX_ASSIGN_OR_RETURN(
      float* d_gamma_data,
      OptionalVector(kOp, "d_gamma", d_gamma, x_rows.cols, kPerColumn, ctx));
  FTX_ASSIGN_OR_RETURN(
      float* d_beta_data,
      OptionalVector(kOp, "d_beta", d_beta, x_rows.cols, kPerColumn, ctx));
  return RouteByDevice(
      kOp, ctx,
      [&] {
        cpu::LayerNormBackward(ctx, x_rows, gamma_data, mean_data, rstd_data,
                               d_y_rows, d_x_rows, d_gamma_data, d_beta_data);
      },
      FTX_CUDA_LAUNCH(cuda::LaunchLayerNormBackward(
          x_rows.rows, x_rows.cols, x_rows.data, x_rows.row_stride, gamma_data,
          mean_data, rstd_data, d_y_rows.data, d_y_rows.row_stride,
          d_x_rows.data, d_x_rows.row_stride, d_gamma_data, d_beta_data,
          ctx.cuda_stream())));
}

}  // namespace ftx
