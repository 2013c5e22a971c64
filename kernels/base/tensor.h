// Tensor: owning, move-only, type-erased storage of up to four dimensions.
//
// CPU memory is 64-byte aligned and zero-filled; CUDA memory comes from
// cudaMalloc (only in builds with --config=cuda; otherwise creating one is
// UnimplementedError).
//
// Example:
//   FTX_ASSIGN_OR_RETURN(Tensor x, Tensor::Create(DType::kF32, {B, T, C}));
//   TensorView<float> v = x.view<float>();
#ifndef FTX_KERNELS_BASE_TENSOR_H_
#define FTX_KERNELS_BASE_TENSOR_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/base/check.h"
#include "kernels/base/device.h"
#include "kernels/base/dtype.h"
#include "kernels/base/shape.h"
#include "kernels/base/tensor_view.h"

namespace ftx {

inline constexpr size_t kTensorAlignment = 64;

class Tensor {
 public:
  Tensor() = default;
  ~Tensor();
  Tensor(Tensor&& other) noexcept;
  Tensor& operator=(Tensor&& other) noexcept;
  Tensor(const Tensor&) = delete;
  Tensor& operator=(const Tensor&) = delete;

  // Zero-filled tensor. InvalidArgument for rank > 4 or negative dimensions.
  static absl::StatusOr<Tensor> Create(DType dtype, const Shape& shape,
                                       Device device = Device::Cpu());

  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  Device device() const { return device_; }
  int64_t NumElements() const { return shape_.NumElements(); }
  size_t nbytes() const { return NumElements() * SizeOf(dtype_); }
  void* raw_data() { return data_; }
  const void* raw_data() const { return data_; }

  template <typename T>
  TensorView<T> view() {
    FTX_CHECK(DTypeOf<std::remove_const_t<T>>() == dtype_);
    return TensorView<T>(static_cast<T*>(data_), shape_, device_);
  }
  template <typename T>
  TensorView<const T> view() const {
    FTX_CHECK(DTypeOf<std::remove_const_t<T>>() == dtype_);
    return TensorView<const T>(static_cast<const T*>(data_), shape_, device_);
  }
  template <typename T>
  T* data() {
    return view<T>().data();
  }
  template <typename T>
  const T* data() const {
    return view<T>().data();
  }

  // Copies `source` (same dtype and element count, any device) into this
  // tensor.
  absl::Status CopyFrom(const Tensor& source);

  // Returns a copy on `device`.
  absl::StatusOr<Tensor> To(Device device) const;

 private:
  void Release();

  void* data_ = nullptr;
  DType dtype_ = DType::kF32;
  Shape shape_;
  Device device_;
};

}  // namespace ftx

#endif  // FTX_KERNELS_BASE_TENSOR_H_
