#include "kernels/linear/linear.h"

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "kernels/base/validate.h"
#include "kernels/elementwise/elementwise.h"
#include "kernels/matmul/matmul.h"

namespace ftx {
namespace {

// [..., C] as a rank-2 [rows, C] view (validated by CheckRowsView).
template <typename T>
TensorView<T> Flatten(const TensorView<T>& view) {
  const MatrixView<T> m = AsMatrix(view);
  return TensorView<T>(m.data, Shape{m.rows, m.cols}, Strides{m.row_stride, 1, 0, 0},
                       view.device());
}

absl::Status CheckWeight(const char* op, const Context& ctx,
                         TensorView<const float> weight, int64_t in, int64_t out) {
  FTX_RETURN_IF_ERROR(CheckRowsView(op, "weight", weight, ctx));
  if (weight.rank() != 2 || weight.dim(0) != out || weight.dim(1) != in) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": weight must be [out, in] = [", out, ", ", in, "], got ",
                     weight.shape().ToString()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status LinearForward(const Context& ctx, TensorView<const float> x,
                           TensorView<const float> weight, TensorView<const float> bias,
                           TensorView<float> y) {
  constexpr char kOp[] = "LinearForward";
  FTX_RETURN_IF_ERROR(CheckRowsView(kOp, "x", x, ctx));
  FTX_RETURN_IF_ERROR(CheckRowsView(kOp, "y", y, ctx));
  const int64_t in = x.dim(x.rank() - 1), out = y.dim(y.rank() - 1);
  FTX_RETURN_IF_ERROR(CheckWeight(kOp, ctx, weight, in, out));
  if (x.NumElements() / in != y.NumElements() / out) {
    return absl::InvalidArgumentError(absl::StrCat(kOp, ": x ", x.shape().ToString(),
                                                   " and y ", y.shape().ToString(),
                                                   " have different row counts"));
  }
  const TensorView<float> y2 = Flatten(y);
  FTX_RETURN_IF_ERROR(MatMul(ctx, Flatten(x), weight, y2, {.transpose_b = true}));
  if (bias.data() != nullptr) FTX_RETURN_IF_ERROR(AddBias(ctx, y2, bias, y2));
  return absl::OkStatus();
}

absl::Status LinearBackward(const Context& ctx, TensorView<const float> x,
                            TensorView<const float> weight, TensorView<const float> d_y,
                            TensorView<float> d_x, TensorView<float> d_weight,
                            TensorView<float> d_bias, const LinearGradOptions& options) {
  constexpr char kOp[] = "LinearBackward";
  FTX_RETURN_IF_ERROR(CheckRowsView(kOp, "x", x, ctx));
  FTX_RETURN_IF_ERROR(CheckRowsView(kOp, "d_y", d_y, ctx));
  const int64_t in = x.dim(x.rank() - 1), out = d_y.dim(d_y.rank() - 1);
  FTX_RETURN_IF_ERROR(CheckWeight(kOp, ctx, weight, in, out));
  TensorView<float> d_x2;
  if (d_x.data() != nullptr) {
    FTX_RETURN_IF_ERROR(CheckSameShapes(kOp, ctx, "x", x, Named("d_x", d_x)));
    d_x2 = Flatten(d_x);
  }
  const TensorView<const float> d_y2 = Flatten(d_y);
  FTX_RETURN_IF_ERROR(MatMulBackward(
      ctx, Flatten(x), weight, d_y2, d_x2, d_weight, {.transpose_b = true},
      {.accumulate_a = options.accumulate_input_grad, .accumulate_b = true}));
  if (d_bias.data() != nullptr) FTX_RETURN_IF_ERROR(AddBiasBackward(ctx, d_y2, d_bias));
  return absl::OkStatus();
}

}  // namespace ftx
