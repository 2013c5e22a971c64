#include "layers/norm_scale.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "kernels/base/validate.h"

namespace ftx::internal {
namespace {

absl::Status CheckGain(const char* op, const Context& ctx, TensorView<const float> g,
                       int64_t channels) {
  FTX_RETURN_IF_ERROR(CheckRowsView(op, "g", g, ctx));
  if (g.NumElements() != 1 && g.NumElements() != channels) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": g must hold 1 or ", channels, " values, got shape ", g.shape().ToString()));
  }
  return absl::OkStatus();
}

// Scale factor of a row: max(|x| * c, eps); *clamped tells whether eps won.
double RowDenominator(const float* x, int64_t channels, const NormScaleOptions& options,
                      bool* clamped) {
  double sum = 0.0;
  for (int64_t i = 0; i < channels; ++i) sum += static_cast<double>(x[i]) * x[i];
  double norm = std::sqrt(sum);
  if (options.divide_by_sqrt_dim) norm /= std::sqrt(static_cast<double>(channels));
  *clamped = norm < options.eps;
  return *clamped ? options.eps : norm;
}

}  // namespace

absl::Status NormScaleForward(const char* op, const Context& ctx,
                              const NormScaleOptions& options, TensorView<const float> x,
                              TensorView<const float> g, TensorView<float> y) {
  FTX_RETURN_IF_ERROR(CheckSameShapes(op, ctx, "x", x, Named("y", y)));
  const MatrixView<const float> rows = AsMatrix(x);
  FTX_RETURN_IF_ERROR(CheckGain(op, ctx, g, rows.cols));
  const MatrixView<float> out = AsMatrix(y);
  const bool vector_gain = g.NumElements() == rows.cols;
  ctx.pool().ParallelFor(rows.rows, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      bool clamped;
      const double inverse = 1.0 / RowDenominator(rows.Row(r), rows.cols, options, &clamped);
      for (int64_t c = 0; c < rows.cols; ++c) {
        const float gain = g.data()[vector_gain ? c : 0];
        out.Row(r)[c] = static_cast<float>(rows.Row(r)[c] * inverse) * gain;
      }
    }
  });
  return absl::OkStatus();
}

absl::Status NormScaleBackward(const char* op, const Context& ctx,
                               const NormScaleOptions& options,
                               TensorView<const float> x, TensorView<const float> g,
                               TensorView<const float> d_y, TensorView<float> d_x,
                               TensorView<float> d_g) {
  FTX_RETURN_IF_ERROR(
      CheckSameShapes(op, ctx, "x", x, Named("d_y", d_y), Named("d_x", d_x)));
  const MatrixView<const float> rows = AsMatrix(x);
  FTX_RETURN_IF_ERROR(CheckGain(op, ctx, g, rows.cols));
  FTX_RETURN_IF_ERROR(CheckSameShapes(op, ctx, "g", g, Named("d_g", d_g)));
  const MatrixView<const float> grad_out = AsMatrix(d_y);
  const MatrixView<float> grad_in = AsMatrix(d_x);
  const int64_t C = rows.cols;
  const bool vector_gain = g.NumElements() == C;
  const double scale = options.divide_by_sqrt_dim ? 1.0 / C : 1.0;
  // Per-row gain gradients, reduced in row order afterwards (thread-count independent).
  std::vector<double> gain_grads(rows.rows * (vector_gain ? C : 1));
  ctx.pool().ParallelFor(rows.rows, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* xr = rows.Row(r);
      const float* dy = grad_out.Row(r);
      bool clamped;
      const double denominator = RowDenominator(xr, C, options, &clamped);
      // y = g x / n with n = |x| c: dL/dx_i = g_i dy_i / n - x_i (sum_j g_j dy_j x_j) c^2 / n^3.
      double projection = 0.0;
      for (int64_t c = 0; c < C; ++c) {
        projection += static_cast<double>(g.data()[vector_gain ? c : 0]) * dy[c] * xr[c];
      }
      const double correction =
          clamped ? 0.0 : projection * scale / (denominator * denominator * denominator);
      double* row_gain = gain_grads.data() + r * (vector_gain ? C : 1);
      if (!vector_gain) row_gain[0] = 0.0;
      for (int64_t c = 0; c < C; ++c) {
        const double gain = g.data()[vector_gain ? c : 0];
        const double d_x_value = gain * dy[c] / denominator - xr[c] * correction;
        const double d_gain = dy[c] * xr[c] / denominator;
        grad_in.Row(r)[c] = static_cast<float>(d_x_value);
        if (vector_gain) {
          row_gain[c] = d_gain;
        } else {
          row_gain[0] += d_gain;
        }
      }
    }
  });
  const int64_t width = vector_gain ? C : 1;
  for (int64_t i = 0; i < width; ++i) {
    double total = 0.0;
    for (int64_t r = 0; r < rows.rows; ++r) total += gain_grads[r * width + i];
    d_g.data()[i] += static_cast<float>(total);
  }
  return absl::OkStatus();
}

}  // namespace ftx::internal
