// Scalar reference of kernels/layernorm (the oracle for the Highway and CUDA
// versions): LayerNorm (Ba et al. 2016) over the last axis, as
// torch.nn.LayerNorm with biased variance:
//
//   mean[r] = sum_c x[r, c] / C,  var[r] = sum_c (x[r, c] - mean[r])^2 / C
//   rstd[r] = 1 / sqrt(var[r] + eps)
//   y[r, c] = (x[r, c] - mean[r]) * rstd[r] * gamma[c] + beta[c]
//
// Templated on the element type so tests can run it in double. Rows of a
// matrix are `stride` elements apart. Gradient convention: d_x is written (=);
// d_gamma and d_beta are accumulated (+=).
#ifndef FTX_KERNELS_REFERENCE_LAYERNORM_REF_H_
#define FTX_KERNELS_REFERENCE_LAYERNORM_REF_H_

#include <cmath>
#include <cstdint>

namespace ftx::reference {

// x, y: [rows, cols]; gamma, beta: [cols] or null (no scale / no shift);
// mean, rstd: [rows] or null (not saved). x and y may be the same memory.
template <typename T>
void LayerNorm(int64_t rows, int64_t cols, const T* x, int64_t x_stride,
               const T* gamma, const T* beta, T eps, T* y, int64_t y_stride,
               T* mean, T* rstd) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* x_row = x + r * x_stride;
    T sum = 0;
    for (int64_t c = 0; c < cols; ++c) sum += x_row[c];
    const T row_mean = sum / static_cast<T>(cols);
    T squares = 0;
    for (int64_t c = 0; c < cols; ++c) {
      squares += (x_row[c] - row_mean) * (x_row[c] - row_mean);
    }
    const T row_rstd = T(1) / std::sqrt(squares / static_cast<T>(cols) + eps);
    for (int64_t c = 0; c < cols; ++c) {
      T value = (x_row[c] - row_mean) * row_rstd;
      if (gamma != nullptr) value *= gamma[c];
      if (beta != nullptr) value += beta[c];
      y[r * y_stride + c] = value;
    }
    if (mean != nullptr) mean[r] = row_mean;
    if (rstd != nullptr) rstd[r] = row_rstd;
  }
}

// With x_hat = (x - mean) * rstd and g = d_y * gamma:
//   d_x[r, :] = rstd[r] * (g - mean_c(g) - x_hat * mean_c(g * x_hat))   (=)
//   d_gamma[c] += sum_r d_y[r, c] * x_hat[r, c]                          (+=)
//   d_beta[c] += sum_r d_y[r, c]                                         (+=)
// gamma null means no scale; d_gamma or d_beta null skips that gradient.
// d_x may alias d_y.
template <typename T>
void LayerNormBackward(int64_t rows, int64_t cols, const T* x, int64_t x_stride,
                       const T* gamma, const T* mean, const T* rstd,
                       const T* d_y, int64_t d_y_stride, T* d_x,
                       int64_t d_x_stride, T* d_gamma, T* d_beta) {
  for (int64_t c = 0; c < cols; ++c) {
    T gamma_sum = 0, beta_sum = 0;
    for (int64_t r = 0; r < rows; ++r) {
      const T x_hat = (x[r * x_stride + c] - mean[r]) * rstd[r];
      gamma_sum += d_y[r * d_y_stride + c] * x_hat;
      beta_sum += d_y[r * d_y_stride + c];
    }
    if (d_gamma != nullptr) d_gamma[c] += gamma_sum;
    if (d_beta != nullptr) d_beta[c] += beta_sum;
  }
  for (int64_t r = 0; r < rows; ++r) {
    const T* x_row = x + r * x_stride;
    const T* d_y_row = d_y + r * d_y_stride;
    T g_sum = 0, g_x_hat_sum = 0;
    for (int64_t c = 0; c < cols; ++c) {
      const T g = gamma != nullptr ? d_y_row[c] * gamma[c] : d_y_row[c];
      g_sum += g;
      g_x_hat_sum += g * (x_row[c] - mean[r]) * rstd[r];
    }
    const T g_mean = g_sum / static_cast<T>(cols);
    const T g_x_hat_mean = g_x_hat_sum / static_cast<T>(cols);
    for (int64_t c = 0; c < cols; ++c) {
      const T g = gamma != nullptr ? d_y_row[c] * gamma[c] : d_y_row[c];
      const T x_hat = (x_row[c] - mean[r]) * rstd[r];
      d_x[r * d_x_stride + c] = rstd[r] * (g - g_mean - x_hat * g_x_hat_mean);
    }
  }
}

}  // namespace ftx::reference

#endif  // FTX_KERNELS_REFERENCE_LAYERNORM_REF_H_
