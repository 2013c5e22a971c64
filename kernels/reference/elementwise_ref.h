// Scalar reference of kernels/elementwise (the oracle for the Highway and CUDA
// versions). Templated on the element type so tests can run it in double. Rows of a
// matrix are `stride` elements apart. Gradient convention: activation gradients are
// written (=), parameter gradients (bias, alpha) are accumulated (+=).
#ifndef FTX_KERNELS_REFERENCE_ELEMENTWISE_REF_H_
#define FTX_KERNELS_REFERENCE_ELEMENTWISE_REF_H_

#include <cstdint>

namespace ftx::reference {

// out = x + y
template <typename T>
void Add(int64_t n, const T* x, const T* y, T* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] + y[i];
}

// out = x * y
template <typename T>
void Mul(int64_t n, const T* x, const T* y, T* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] * y[i];
}

// d_x = d_out * y, d_y = d_out * x
template <typename T>
void MulBackward(int64_t n, const T* x, const T* y, const T* d_out, T* d_x, T* d_y) {
  for (int64_t i = 0; i < n; ++i) {
    d_x[i] = d_out[i] * y[i];
    d_y[i] = d_out[i] * x[i];
  }
}

// out = alpha * x
template <typename T>
void Scale(int64_t n, T alpha, const T* x, T* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = alpha * x[i];
}

// d_x = alpha * d_out; d_alpha += sum(x * d_out)
template <typename T>
void ScaleBackward(int64_t n, T alpha, const T* x, const T* d_out, T* d_x, T* d_alpha) {
  T sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    d_x[i] = alpha * d_out[i];
    sum += x[i] * d_out[i];
  }
  *d_alpha += sum;
}

// y += alpha * x
template <typename T>
void Axpy(int64_t n, T alpha, const T* x, T* y) {
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

// out[r, c] = x[r, c] + bias[c]
template <typename T>
void AddBias(int64_t rows, int64_t cols, const T* x, int64_t x_stride, const T* bias,
             T* out, int64_t out_stride) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      out[r * out_stride + c] = x[r * x_stride + c] + bias[c];
    }
  }
}

// d_bias[c] += sum_r d_out[r, c]
template <typename T>
void AddBiasBackward(int64_t rows, int64_t cols, const T* d_out, int64_t d_out_stride,
                     T* d_bias) {
  for (int64_t c = 0; c < cols; ++c) {
    T sum = 0;
    for (int64_t r = 0; r < rows; ++r) sum += d_out[r * d_out_stride + c];
    d_bias[c] += sum;
  }
}

}  // namespace ftx::reference

#endif  // FTX_KERNELS_REFERENCE_ELEMENTWISE_REF_H_
