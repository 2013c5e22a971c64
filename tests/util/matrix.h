// Test matrices with padded (strided) rows and a misaligned start, so kernels
// are exercised on non-contiguous views; Dense() returns the packed values for
// references.
#ifndef FTX_TESTS_UTIL_MATRIX_H_
#define FTX_TESTS_UTIL_MATRIX_H_

#include <cstdint>
#include <vector>

#include "kernels/base/tensor_view.h"
#include "tests/util/random.h"

namespace ftx::testing {

class StridedMatrix {
 public:
  // rows x cols values uniform in [low, high); each row padded by `padding`
  // elements (filled with a sentinel that a kernel must never read into its
  // results); the data starts one float past an aligned address.
  StridedMatrix(int64_t rows, int64_t cols, int64_t padding, uint64_t seed,
                double low = -1.0, double high = 1.0)
      : rows_(rows), cols_(cols), stride_(cols + padding) {
    storage_.assign(1 + rows * stride_ + 1, kSentinel);
    const std::vector<float> values =
        RandomUniformVector(rows * cols, seed, low, high);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) at(r, c) = values[r * cols + c];
    }
  }

  static constexpr float kSentinel = 1.0e30f;

  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }
  int64_t stride() const { return stride_; }
  float& at(int64_t r, int64_t c) { return storage_[1 + r * stride_ + c]; }
  float at(int64_t r, int64_t c) const { return storage_[1 + r * stride_ + c]; }
  float* data() { return storage_.data() + 1; }

  TensorView<float> view() {
    return TensorView<float>(data(), Shape{rows_, cols_},
                             Strides{stride_, 1, 0, 0});
  }
  TensorView<const float> const_view() { return view(); }

  std::vector<float> Dense() const {
    std::vector<float> dense(rows_ * cols_);
    for (int64_t r = 0; r < rows_; ++r) {
      for (int64_t c = 0; c < cols_; ++c) dense[r * cols_ + c] = at(r, c);
    }
    return dense;
  }

  // True when no padding element was written.
  bool PaddingIntact() const {
    for (int64_t r = 0; r < rows_; ++r) {
      for (int64_t c = cols_; c < stride_; ++c) {
        if (storage_[1 + r * stride_ + c] != kSentinel) return false;
      }
    }
    return storage_.front() == kSentinel && storage_.back() == kSentinel;
  }

 private:
  int64_t rows_, cols_, stride_;
  std::vector<float> storage_;
};

}  // namespace ftx::testing

#endif  // FTX_TESTS_UTIL_MATRIX_H_
