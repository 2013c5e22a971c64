// Scalar reference of kernels/matmul (the oracle for the Highway and CUDA
// versions): batched matrix product with optional transposes, alpha/beta and
// strided rows, and its backward. Matches torch.matmul / BLAS sgemm semantics:
//   c[i] = alpha * op(a[i]) @ op(b[i]) + beta * c[i],  op = identity or ^T.
// Templated on the element type so tests can run it in double; sums in T.
#ifndef FTX_KERNELS_REFERENCE_MATMUL_REF_H_
#define FTX_KERNELS_REFERENCE_MATMUL_REF_H_

#include <cstdint>

namespace ftx::reference {

// A batch of row-major matrices: element (i, row, col) of batch item i is at
// data[i * batch_stride + row * row_stride + col]. batch_stride 0 shares one
// matrix across the batch (broadcast).
template <typename T>
struct BatchedMatrix {
  T* data = nullptr;
  int64_t row_stride = 0;
  int64_t batch_stride = 0;

  T& at(int64_t item, int64_t row, int64_t col) const {
    return data[item * batch_stride + row * row_stride + col];
  }
};

// op(a[i]) is [m, k], op(b[i]) is [k, n], c[i] is [m, n], for i < batch.
struct MatMulDims {
  int64_t batch = 1;
  int64_t m = 0;
  int64_t n = 0;
  int64_t k = 0;
};

template <typename T>
struct MatMulParams {
  bool transpose_a = false;  // a stored as [k, m]
  bool transpose_b = false;  // b stored as [n, k]
  T alpha = 1;
  T beta = 0;
};

// op(x)[row, col] of a matrix stored as [row, col], or as [col, row] when
// transposed.
template <typename T>
T& OpAt(const BatchedMatrix<T>& x, bool transposed, int64_t item, int64_t row,
        int64_t col) {
  return transposed ? x.at(item, col, row) : x.at(item, row, col);
}

// c[i] = alpha * op(a[i]) @ op(b[i]) + beta * c[i]; beta == 0 never reads c.
template <typename T>
void MatMul(const MatMulDims& dims, BatchedMatrix<const T> a,
            BatchedMatrix<const T> b, BatchedMatrix<T> c,
            const MatMulParams<T>& params) {
  for (int64_t item = 0; item < dims.batch; ++item) {
    for (int64_t row = 0; row < dims.m; ++row) {
      for (int64_t col = 0; col < dims.n; ++col) {
        T sum = 0;
        for (int64_t inner = 0; inner < dims.k; ++inner) {
          sum += OpAt(a, params.transpose_a, item, row, inner) *
                 OpAt(b, params.transpose_b, item, inner, col);
        }
        T& out = c.at(item, row, col);
        out = params.beta == 0 ? params.alpha * sum
                               : params.alpha * sum + params.beta * out;
      }
    }
  }
}

// Backward of c = alpha * op(a) @ op(b) (beta plays no part):
//   d_a = alpha * d_c @ op(b)^T, d_b = alpha * op(a)^T @ d_c,
// each written in its operand's stored layout (transposed back when the
// operand is). An operand with batch_stride 0 (broadcast) gets the sum over
// the batch. d_a.data / d_b.data null skips that gradient; accumulate_a /
// accumulate_b add to the existing values (+=) instead of writing (=).
template <typename T>
void MatMulBackward(const MatMulDims& dims, BatchedMatrix<const T> a,
                    BatchedMatrix<const T> b, BatchedMatrix<const T> d_c,
                    BatchedMatrix<T> d_a, BatchedMatrix<T> d_b,
                    const MatMulParams<T>& params, bool accumulate_a,
                    bool accumulate_b) {
  const int64_t a_items = a.batch_stride == 0 ? 1 : dims.batch;
  const int64_t b_items = b.batch_stride == 0 ? 1 : dims.batch;
  if (d_a.data != nullptr && !accumulate_a) {
    for (int64_t item = 0; item < a_items; ++item) {
      for (int64_t row = 0; row < dims.m; ++row) {
        for (int64_t inner = 0; inner < dims.k; ++inner) {
          OpAt(d_a, params.transpose_a, item, row, inner) = 0;
        }
      }
    }
  }
  if (d_b.data != nullptr && !accumulate_b) {
    for (int64_t item = 0; item < b_items; ++item) {
      for (int64_t inner = 0; inner < dims.k; ++inner) {
        for (int64_t col = 0; col < dims.n; ++col) {
          OpAt(d_b, params.transpose_b, item, inner, col) = 0;
        }
      }
    }
  }
  for (int64_t item = 0; item < dims.batch; ++item) {
    if (d_a.data != nullptr) {
      for (int64_t row = 0; row < dims.m; ++row) {
        for (int64_t inner = 0; inner < dims.k; ++inner) {
          T sum = 0;
          for (int64_t col = 0; col < dims.n; ++col) {
            sum += d_c.at(item, row, col) *
                   OpAt(b, params.transpose_b, item, inner, col);
          }
          OpAt(d_a, params.transpose_a, item, row, inner) += params.alpha * sum;
        }
      }
    }
    if (d_b.data != nullptr) {
      for (int64_t inner = 0; inner < dims.k; ++inner) {
        for (int64_t col = 0; col < dims.n; ++col) {
          T sum = 0;
          for (int64_t row = 0; row < dims.m; ++row) {
            sum += OpAt(a, params.transpose_a, item, row, inner) *
                   d_c.at(item, row, col);
          }
          OpAt(d_b, params.transpose_b, item, inner, col) += params.alpha * sum;
        }
      }
    }
  }
}

}  // namespace ftx::reference

#endif  // FTX_KERNELS_REFERENCE_MATMUL_REF_H_
