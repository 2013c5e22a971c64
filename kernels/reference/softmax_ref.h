// Scalar reference of kernels/softmax (the oracle for the Highway and CUDA
// versions): softmax and log-softmax over the last axis of scaled logits with
// an optional additive mask, and their backward passes. Templated on the
// element type so tests can run it in double. Rows of a matrix are `stride`
// elements apart.
//
//   z[r, c] = scale * x[r, c] + mask[r % mask_rows, c]
//   softmax:     y[r, c] = exp(z[r, c] - max_c z[r, :]) / sum_c exp(...)
//   log-softmax: y[r, c] = z[r, c] - max_c z[r, :] - log(sum_c exp(...))
//
// A row whose logits are all -inf gives zeros (softmax) or -inf (log-softmax);
// torch.softmax would give NaN. Gradient convention: d_x is written (=).
#ifndef FTX_KERNELS_REFERENCE_SOFTMAX_REF_H_
#define FTX_KERNELS_REFERENCE_SOFTMAX_REF_H_

#include <cmath>
#include <cstdint>
#include <limits>

namespace ftx::reference {

namespace softmax_internal {

// Writes the logits z of row `r` into `z` and returns their maximum. `mask` may
// be null (no mask).
template <typename T>
T Logits(int64_t r, int64_t cols, const T* x, int64_t x_stride, T scale,
         const T* mask, int64_t mask_rows, int64_t mask_stride, T* z) {
  T row_max = -std::numeric_limits<T>::infinity();
  for (int64_t c = 0; c < cols; ++c) {
    z[c] = scale * x[r * x_stride + c];
    if (mask != nullptr) z[c] += mask[(r % mask_rows) * mask_stride + c];
    if (z[c] > row_max) row_max = z[c];
  }
  return row_max;
}

}  // namespace softmax_internal

// y[r, :] = softmax(scale * x[r, :] + mask[r % mask_rows, :]). x and y may be
// the same memory. mask may be null.
template <typename T>
void Softmax(int64_t rows, int64_t cols, const T* x, int64_t x_stride, T scale,
             const T* mask, int64_t mask_rows, int64_t mask_stride, T* y,
             int64_t y_stride) {
  for (int64_t r = 0; r < rows; ++r) {
    T* y_row = y + r * y_stride;
    // Logits go to y first; each is read back before it is overwritten.
    const T row_max = softmax_internal::Logits(
        r, cols, x, x_stride, scale, mask, mask_rows, mask_stride, y_row);
    if (row_max == -std::numeric_limits<T>::infinity()) {
      for (int64_t c = 0; c < cols; ++c) y_row[c] = 0;
      continue;
    }
    T sum = 0;
    for (int64_t c = 0; c < cols; ++c) {
      y_row[c] = std::exp(y_row[c] - row_max);
      sum += y_row[c];
    }
    for (int64_t c = 0; c < cols; ++c) y_row[c] /= sum;
  }
}

// y[r, :] = log_softmax(scale * x[r, :] + mask[r % mask_rows, :]). x and y may
// be the same memory. mask may be null.
template <typename T>
void LogSoftmax(int64_t rows, int64_t cols, const T* x, int64_t x_stride,
                T scale, const T* mask, int64_t mask_rows, int64_t mask_stride,
                T* y, int64_t y_stride) {
  for (int64_t r = 0; r < rows; ++r) {
    T* y_row = y + r * y_stride;
    const T row_max = softmax_internal::Logits(
        r, cols, x, x_stride, scale, mask, mask_rows, mask_stride, y_row);
    if (row_max == -std::numeric_limits<T>::infinity()) continue;  // all -inf
    T sum = 0;
    for (int64_t c = 0; c < cols; ++c) sum += std::exp(y_row[c] - row_max);
    const T log_sum = std::log(sum);
    for (int64_t c = 0; c < cols; ++c) {
      y_row[c] = (y_row[c] - row_max) - log_sum;
    }
  }
}

// d_x[r, :] = scale * y[r, :] * (d_y[r, :] - sum_c d_y[r, c] * y[r, c]), where
// y is the softmax output. d_x is written (=) and may alias d_y or y.
template <typename T>
void SoftmaxBackward(int64_t rows, int64_t cols, const T* y, int64_t y_stride,
                     const T* d_y, int64_t d_y_stride, T scale, T* d_x,
                     int64_t d_x_stride) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* y_row = y + r * y_stride;
    const T* d_y_row = d_y + r * d_y_stride;
    T dot = 0;
    for (int64_t c = 0; c < cols; ++c) dot += d_y_row[c] * y_row[c];
    for (int64_t c = 0; c < cols; ++c) {
      d_x[r * d_x_stride + c] = scale * y_row[c] * (d_y_row[c] - dot);
    }
  }
}

// d_x[r, :] = scale * (d_y[r, :] - exp(y[r, :]) * sum_c d_y[r, c]), where y is
// the log-softmax output. d_x is written (=) and may alias d_y or y.
template <typename T>
void LogSoftmaxBackward(int64_t rows, int64_t cols, const T* y,
                        int64_t y_stride, const T* d_y, int64_t d_y_stride,
                        T scale, T* d_x, int64_t d_x_stride) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* y_row = y + r * y_stride;
    const T* d_y_row = d_y + r * d_y_stride;
    T sum = 0;
    for (int64_t c = 0; c < cols; ++c) sum += d_y_row[c];
    for (int64_t c = 0; c < cols; ++c) {
      d_x[r * d_x_stride + c] = scale * (d_y_row[c] - std::exp(y_row[c]) * sum);
    }
  }
}

}  // namespace ftx::reference

#endif  // FTX_KERNELS_REFERENCE_SOFTMAX_REF_H_
