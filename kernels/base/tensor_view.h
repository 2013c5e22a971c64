// TensorView<T>: a non-owning, strided view of up to four dimensions on one
// device.
//
// Strides are in elements. Views are cheap to copy and never allocate; Slice
// and Select return views of the same memory. Kernels take raw pointers, sizes
// and strides; the op façades turn views into those with AsMatrix (rows of the
// last axis).
//
// Example:
//   TensorView<float> qkv(ptr, {N, L, 3 * H * E});
//   TensorView<float> q = qkv.Slice(2, 0, H * E);   // strided view of the Q
//   part
#ifndef FTX_KERNELS_BASE_TENSOR_VIEW_H_
#define FTX_KERNELS_BASE_TENSOR_VIEW_H_

#include <array>
#include <cstdint>
#include <type_traits>

#include "kernels/base/check.h"
#include "kernels/base/device.h"
#include "kernels/base/dtype.h"
#include "kernels/base/shape.h"

namespace ftx {

using Strides = std::array<int64_t, kMaxRank>;

// Row-major strides of a contiguous tensor of `shape`.
inline Strides ContiguousStrides(const Shape& shape) {
  Strides strides{};
  int64_t stride = 1;
  for (int axis = shape.rank() - 1; axis >= 0; --axis) {
    strides[axis] = stride;
    stride *= shape.dim(axis);
  }
  return strides;
}

template <typename T>
class TensorView {
 public:
  using Element = T;

  TensorView() = default;
  TensorView(T* data, const Shape& shape, Device device = Device::Cpu())
      : data_(data),
        shape_(shape),
        strides_(ContiguousStrides(shape)),
        device_(device) {}
  TensorView(T* data, const Shape& shape, const Strides& strides,
             Device device = Device::Cpu())
      : data_(data), shape_(shape), strides_(strides), device_(device) {}

  // A view of T converts to a view of const T.
  template <typename U = T, typename = std::enable_if_t<std::is_const_v<U>>>
  TensorView(const TensorView<std::remove_const_t<U>>& other)  // NOLINT
      : data_(other.data()),
        shape_(other.shape()),
        strides_(other.strides()),
        device_(other.device()) {}

  T* data() const { return data_; }
  const Shape& shape() const { return shape_; }
  int rank() const { return shape_.rank(); }
  int64_t dim(int axis) const { return shape_.dim(axis); }
  int64_t stride(int axis) const { return strides_[axis]; }
  const Strides& strides() const { return strides_; }
  Device device() const { return device_; }
  int64_t NumElements() const { return shape_.NumElements(); }
  bool empty() const { return NumElements() == 0; }

  bool IsContiguous() const {
    const Strides expected = ContiguousStrides(shape_);
    for (int axis = 0; axis < rank(); ++axis) {
      if (shape_.dim(axis) != 1 && strides_[axis] != expected[axis])
        return false;
    }
    return true;
  }

  // Element access; indices beyond rank() are ignored.
  T& at(int64_t i0, int64_t i1 = 0, int64_t i2 = 0, int64_t i3 = 0) const {
    FTX_DCHECK(i0 < dim(0));
    return data_[i0 * strides_[0] + i1 * strides_[1] + i2 * strides_[2] +
                 i3 * strides_[3]];
  }

  // Elements [begin, end) of `axis`.
  TensorView Slice(int axis, int64_t begin, int64_t end) const {
    FTX_CHECK(axis >= 0 && axis < rank() && begin >= 0 && begin <= end &&
              end <= dim(axis));
    Shape shape = shape_;
    shape.set_dim(axis, end - begin);
    return TensorView(data_ + begin * strides_[axis], shape, strides_, device_);
  }

  // Drops `axis`, keeping element `index` of it.
  TensorView Select(int axis, int64_t index) const {
    FTX_CHECK(axis >= 0 && axis < rank() && index >= 0 && index < dim(axis));
    Shape shape;
    Strides strides{};
    int out = 0;
    std::array<int64_t, kMaxRank> dims{};
    for (int a = 0; a < rank(); ++a) {
      if (a == axis) continue;
      dims[out] = shape_.dim(a);
      strides[out] = strides_[a];
      ++out;
    }
    shape = MakeShape(dims, out);
    return TensorView(data_ + index * strides_[axis], shape, strides, device_);
  }

  // Same memory, new shape; only for contiguous views (checked).
  TensorView Reshape(const Shape& shape) const {
    FTX_CHECK(IsContiguous() && shape.NumElements() == NumElements());
    return TensorView(data_, shape, device_);
  }

 private:
  static Shape MakeShape(const std::array<int64_t, kMaxRank>& dims, int rank) {
    switch (rank) {
      case 0:
        return Shape{};
      case 1:
        return Shape{dims[0]};
      case 2:
        return Shape{dims[0], dims[1]};
      default:
        return Shape{dims[0], dims[1], dims[2]};
    }
  }

  T* data_ = nullptr;
  Shape shape_;
  Strides strides_{};
  Device device_;
};

// True for an optional argument that was left out: a default-constructed view
// (rank 0, null data) or one with no elements.
template <typename T>
bool IsAbsent(const TensorView<T>& view) {
  return view.empty() || (view.rank() == 0 && view.data() == nullptr);
}

// A view as rows of its last axis: rows = product of the leading dimensions,
// all rows `row_stride` apart. Only possible when the leading axes collapse to
// one stride.
template <typename T>
struct MatrixView {
  T* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t row_stride = 0;  // elements between consecutive rows
  int64_t col_stride = 1;  // elements between consecutive columns

  T* Row(int64_t r) const { return data + r * row_stride; }
};

// True when the leading axes of `view` collapse into a single row stride.
template <typename T>
bool LeadingAxesCollapse(const TensorView<T>& view) {
  for (int axis = 0; axis + 2 < view.rank(); ++axis) {
    if (view.dim(axis + 1) == 1 || view.dim(axis) == 1) continue;
    if (view.stride(axis) != view.stride(axis + 1) * view.dim(axis + 1))
      return false;
  }
  return true;
}

// Precondition: LeadingAxesCollapse(view) (the façades check it and return a
// Status).
template <typename T>
MatrixView<T> AsMatrix(const TensorView<T>& view) {
  MatrixView<T> m;
  m.data = view.data();
  if (view.rank() == 0) {
    m.rows = 1;
    m.cols = 1;
    return m;
  }
  m.cols = view.dim(view.rank() - 1);
  m.col_stride = view.stride(view.rank() - 1);
  m.rows = 1;
  for (int axis = 0; axis + 1 < view.rank(); ++axis) m.rows *= view.dim(axis);
  m.row_stride = m.cols * m.col_stride;
  // The smallest-stride leading axis of size > 1 gives the row stride.
  for (int axis = view.rank() - 2; axis >= 0; --axis) {
    if (view.dim(axis) > 1) {
      m.row_stride = view.stride(axis);
      break;
    }
  }
  return m;
}

}  // namespace ftx

#endif  // FTX_KERNELS_BASE_TENSOR_VIEW_H_
