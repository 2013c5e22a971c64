#include "attention/entmax.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "kernels/base/validate.h"
#include "kernels/softmax/softmax.h"

namespace ftx {
namespace {

absl::Status CheckMask(const Context& ctx, const MatrixView<const float>& rows,
                       const TensorView<const float>& mask) {
  if (IsAbsent(mask)) return absl::OkStatus();
  FTX_RETURN_IF_ERROR(CheckRowsView("Entmax15", "additive_mask", mask, ctx));
  const MatrixView<const float> mask_rows = AsMatrix(mask);
  if (mask_rows.cols != rows.cols || rows.rows % mask_rows.rows != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Entmax15: additive_mask ", mask.shape().ToString(), " must have ",
        rows.cols, " columns and a row count dividing ", rows.rows));
  }
  return absl::OkStatus();
}

absl::Status CheckCpu(absl::string_view op, const Context& ctx) {
  if (ctx.device().type == DeviceType::kCpu) return absl::OkStatus();
  return absl::UnimplementedError(
      absl::StrCat(op, ": only the CPU path exists"));
}

// Rows of entmax15 in [begin, end). z, halves and thresholds are per-call
// scratch of the row width.
void Entmax15Rows(const MatrixView<const float>& x, const MatrixView<float>& y,
                  const MatrixView<const float>& mask, float scale,
                  int64_t begin, int64_t end) {
  const int64_t cols = x.cols;
  const double neg_inf = -std::numeric_limits<double>::infinity();
  std::vector<double> z(cols), sorted(cols), thresholds(cols);
  for (int64_t r = begin; r < end; ++r) {
    const float* x_row = x.Row(r);
    const float* mask_row =
        mask.data != nullptr ? mask.Row(r % mask.rows) : nullptr;
    double z_max = neg_inf;
    bool not_a_number = false;
    for (int64_t c = 0; c < cols; ++c) {
      z[c] = static_cast<double>(scale) * x_row[c] +
             (mask_row ? mask_row[c] : 0.0f);
      not_a_number |= std::isnan(z[c]);
      z_max = std::max(z_max, z[c]);
    }
    float* y_row = y.Row(r);
    if (not_a_number || z_max == std::numeric_limits<double>::infinity()) {
      std::fill(y_row, y_row + cols, std::numeric_limits<float>::quiet_NaN());
      continue;
    }
    if (z_max == neg_inf) {
      std::fill(y_row, y_row + cols, 0.0f);
      continue;
    }
    // Halved, max-shifted logits of the finite entries, sorted descending.
    int64_t finite = 0;
    for (int64_t c = 0; c < cols; ++c) {
      z[c] = (z[c] - z_max) / 2;
      if (z[c] != neg_inf) sorted[finite++] = z[c];
    }
    std::sort(sorted.begin(), sorted.begin() + finite, std::greater<double>());
    // tau_k = mean_k - sqrt(max(0, (1 - k * var_k) / k)) over the k largest;
    // the support is the number of k with tau_k <= sorted[k - 1].
    double sum = 0, sum_squares = 0;
    int64_t support = 0;
    for (int64_t k = 1; k <= finite; ++k) {
      const double value = sorted[k - 1];
      sum += value;
      sum_squares += value * value;
      const double mean = sum / k;
      const double spread = sum_squares - sum * mean;  // k * variance
      const double delta = std::max(0.0, (1 - spread) / k);
      thresholds[k - 1] = mean - std::sqrt(delta);
      if (thresholds[k - 1] <= value) ++support;
    }
    const double tau = thresholds[support - 1];
    for (int64_t c = 0; c < cols; ++c) {
      const double gap = z[c] - tau;
      y_row[c] = gap > 0 ? static_cast<float>(gap * gap) : 0.0f;
    }
  }
}

void Entmax15BackwardRows(const MatrixView<const float>& y,
                          const MatrixView<const float>& d_y,
                          const MatrixView<float>& d_x, float scale,
                          int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    const float* y_row = y.Row(r);
    const float* d_y_row = d_y.Row(r);
    double sum_g = 0, sum_g_dy = 0;
    for (int64_t c = 0; c < y.cols; ++c) {
      const double g = std::sqrt(static_cast<double>(y_row[c]));
      sum_g += g;
      sum_g_dy += g * d_y_row[c];
    }
    const double mean = sum_g > 0 ? sum_g_dy / sum_g : 0.0;
    float* d_x_row = d_x.Row(r);
    for (int64_t c = 0; c < y.cols; ++c) {
      const double g = std::sqrt(static_cast<double>(y_row[c]));
      d_x_row[c] = static_cast<float>(scale * g * (d_y_row[c] - mean));
    }
  }
}

}  // namespace

absl::Status Entmax15(const Context& ctx, TensorView<const float> x,
                      TensorView<float> y, const EntmaxOptions& options) {
  FTX_RETURN_IF_ERROR(CheckSameShapes("Entmax15", ctx, "x", x, Named("y", y)));
  const MatrixView<const float> x_rows = AsMatrix(x);
  FTX_RETURN_IF_ERROR(CheckMask(ctx, x_rows, options.additive_mask));
  FTX_RETURN_IF_ERROR(CheckCpu("Entmax15", ctx));
  const MatrixView<float> y_rows = AsMatrix(y);
  const MatrixView<const float> mask_rows =
      options.additive_mask.NumElements() > 0 ? AsMatrix(options.additive_mask)
                                              : MatrixView<const float>();
  ctx.pool().ParallelFor(
      x_rows.rows,
      [&](int64_t begin, int64_t end) {
        Entmax15Rows(x_rows, y_rows, mask_rows, options.scale, begin, end);
      },
      8);
  return absl::OkStatus();
}

absl::Status Entmax15Backward(const Context& ctx, TensorView<const float> y,
                              TensorView<const float> d_y,
                              TensorView<float> d_x,
                              const EntmaxOptions& options) {
  FTX_RETURN_IF_ERROR(CheckSameShapes("Entmax15Backward", ctx, "y", y,
                                      Named("d_y", d_y), Named("d_x", d_x)));
  FTX_RETURN_IF_ERROR(CheckCpu("Entmax15Backward", ctx));
  const MatrixView<const float> y_rows = AsMatrix(y);
  const MatrixView<const float> d_y_rows = AsMatrix(d_y);
  const MatrixView<float> d_x_rows = AsMatrix(d_x);
  ctx.pool().ParallelFor(
      y_rows.rows,
      [&](int64_t begin, int64_t end) {
        Entmax15BackwardRows(y_rows, d_y_rows, d_x_rows, options.scale, begin,
                             end);
      },
      8);
  return absl::OkStatus();
}

absl::Status Normalize(const Context& ctx, AttentionNormalizer normalizer,
                       TensorView<const float> x, TensorView<float> y,
                       float scale) {
  switch (normalizer) {
    case AttentionNormalizer::kSoftmax:
      return Softmax(ctx, x, y, {.scale = scale});
    case AttentionNormalizer::kEntmax15:
      return Entmax15(ctx, x, y, {.scale = scale});
  }
  return absl::InvalidArgumentError("Normalize: unknown normalizer");
}

absl::Status NormalizeBackward(const Context& ctx,
                               AttentionNormalizer normalizer,
                               TensorView<const float> y,
                               TensorView<const float> d_y,
                               TensorView<float> d_x, float scale) {
  switch (normalizer) {
    case AttentionNormalizer::kSoftmax:
      return SoftmaxBackward(ctx, y, d_y, d_x, {.scale = scale});
    case AttentionNormalizer::kEntmax15:
      return Entmax15Backward(ctx, y, d_y, d_x, {.scale = scale});
  }
  return absl::InvalidArgumentError("NormalizeBackward: unknown normalizer");
}

}  // namespace ftx
