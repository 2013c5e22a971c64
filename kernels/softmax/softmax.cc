#include "kernels/softmax/softmax.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "kernels/base/status_macros.h"
#include "kernels/base/validate.h"
#include "kernels/softmax/softmax_cpu.h"

#ifdef FTX_HAVE_CUDA
#include "kernels/softmax/softmax_cuda.h"
#endif

namespace ftx {
namespace {

absl::Status CheckScale(absl::string_view op, float scale) {
  if (!std::isfinite(scale)) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": options.scale must be finite, got ", scale));
  }
  return absl::OkStatus();
}

// The mask as rows of its last axis, or a view with null data when absent.
absl::Status CheckMask(absl::string_view op, const Context& ctx,
                       TensorView<const float> x,
                       TensorView<const float> additive_mask,
                       MatrixView<const float>* mask) {
  *mask = MatrixView<const float>();
  if (IsAbsent(additive_mask)) return absl::OkStatus();
  FTX_RETURN_IF_ERROR(
      CheckRowsView(op, "options.additive_mask", additive_mask, ctx));
  const MatrixView<const float> x_rows = AsMatrix(x);
  const MatrixView<const float> mask_rows = AsMatrix(additive_mask);
  if (mask_rows.cols != x_rows.cols) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": options.additive_mask ", additive_mask.shape().ToString(),
        " has ", mask_rows.cols, " columns but x ", x.shape().ToString(),
        " has ", x_rows.cols));
  }
  if (x_rows.rows % mask_rows.rows != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": options.additive_mask ", additive_mask.shape().ToString(),
        " has ", mask_rows.rows, " rows, which must divide the ", x_rows.rows,
        " rows of x ", x.shape().ToString()));
  }
  *mask = mask_rows;
  return absl::OkStatus();
}

absl::Status ForwardOp(absl::string_view op, cpu::SoftmaxKind kind,
                       const Context& ctx, TensorView<const float> x,
                       TensorView<float> y, const SoftmaxOptions& options) {
  FTX_RETURN_IF_ERROR(CheckSameShapes(op, ctx, "x", x, Named("y", y)));
  FTX_RETURN_IF_ERROR(CheckScale(op, options.scale));
  MatrixView<const float> mask;
  FTX_RETURN_IF_ERROR(CheckMask(op, ctx, x, options.additive_mask, &mask));
  const auto x_rows = AsMatrix(x);
  const auto y_rows = AsMatrix(y);
  return RouteByDevice(
      op, ctx,
      [&] {
        cpu::SoftmaxForward(ctx, kind, x_rows, options.scale, mask, y_rows);
      },
      FTX_CUDA_LAUNCH(cuda::LaunchSoftmaxForward(
          static_cast<cuda::SoftmaxKind>(kind), y_rows.rows, y_rows.cols,
          x_rows.data, x_rows.row_stride, options.scale, mask.data, mask.rows,
          mask.row_stride, y_rows.data, y_rows.row_stride, ctx.cuda_stream())));
}

absl::Status BackwardOp(absl::string_view op, cpu::SoftmaxKind kind,
                        const Context& ctx, TensorView<const float> y,
                        TensorView<const float> d_y, TensorView<float> d_x,
                        const SoftmaxOptions& options) {
  FTX_RETURN_IF_ERROR(
      CheckSameShapes(op, ctx, "d_y", d_y, Named("y", y), Named("d_x", d_x)));
  FTX_RETURN_IF_ERROR(CheckScale(op, options.scale));
  const auto y_rows = AsMatrix(y);
  const auto d_y_rows = AsMatrix(d_y);
  const auto d_x_rows = AsMatrix(d_x);
  return RouteByDevice(
      op, ctx,
      [&] {
        cpu::SoftmaxBackward(ctx, kind, y_rows, d_y_rows, options.scale,
                             d_x_rows);
      },
      FTX_CUDA_LAUNCH(cuda::LaunchSoftmaxBackward(
          static_cast<cuda::SoftmaxKind>(kind), d_x_rows.rows, d_x_rows.cols,
          y_rows.data, y_rows.row_stride, d_y_rows.data, d_y_rows.row_stride,
          options.scale, d_x_rows.data, d_x_rows.row_stride,
          ctx.cuda_stream())));
}

}  // namespace

absl::Status Softmax(const Context& ctx, TensorView<const float> x,
                     TensorView<float> y, const SoftmaxOptions& options) {
  return ForwardOp("Softmax", cpu::SoftmaxKind::kSoftmax, ctx, x, y, options);
}

absl::Status SoftmaxBackward(const Context& ctx, TensorView<const float> y,
                             TensorView<const float> d_y, TensorView<float> d_x,
                             const SoftmaxOptions& options) {
  return BackwardOp("SoftmaxBackward", cpu::SoftmaxKind::kSoftmax, ctx, y, d_y,
                    d_x, options);
}

absl::Status LogSoftmax(const Context& ctx, TensorView<const float> x,
                        TensorView<float> y, const SoftmaxOptions& options) {
  return ForwardOp("LogSoftmax", cpu::SoftmaxKind::kLogSoftmax, ctx, x, y,
                   options);
}

absl::Status LogSoftmaxBackward(const Context& ctx, TensorView<const float> y,
                                TensorView<const float> d_y,
                                TensorView<float> d_x,
                                const SoftmaxOptions& options) {
  return BackwardOp("LogSoftmaxBackward", cpu::SoftmaxKind::kLogSoftmax, ctx, y,
                    d_y, d_x, options);
}

}  // namespace ftx
