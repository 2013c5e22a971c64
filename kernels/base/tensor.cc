#include "kernels/base/tensor.h"

#include <cstdlib>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"

#ifdef FTX_HAVE_CUDA
#include "kernels/base/cuda_memory.h"
#endif

namespace ftx {
namespace {

absl::Status CheckShape(const Shape& shape) {
  if (shape.rank() > kMaxRank) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor rank ", shape.rank(), " exceeds the maximum of ", kMaxRank));
  }
  if (!shape.IsValid()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor shape ", shape.ToString(), " has a negative dimension"));
  }
  return absl::OkStatus();
}

#ifdef FTX_HAVE_CUDA
absl::Status CudaError(int error, const char* what) {
  return absl::InternalError(
      absl::StrCat(what, " failed: ", cuda::ErrorString(error)));
}
#endif

}  // namespace

Tensor::~Tensor() { Release(); }

Tensor::Tensor(Tensor&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      dtype_(other.dtype_),
      shape_(other.shape_),
      device_(other.device_) {}

Tensor& Tensor::operator=(Tensor&& other) noexcept {
  if (this != &other) {
    Release();
    data_ = std::exchange(other.data_, nullptr);
    dtype_ = other.dtype_;
    shape_ = other.shape_;
    device_ = other.device_;
  }
  return *this;
}

void Tensor::Release() {
  if (data_ == nullptr) return;
  switch (device_.type) {
    case DeviceType::kCpu:
      std::free(data_);
      break;
    case DeviceType::kCuda:
#ifdef FTX_HAVE_CUDA
      cuda::Free(data_);
#endif
      break;
  }
  data_ = nullptr;
}

absl::StatusOr<Tensor> Tensor::Create(DType dtype, const Shape& shape,
                                      Device device) {
  FTX_RETURN_IF_ERROR(CheckShape(shape));
  Tensor tensor;
  tensor.dtype_ = dtype;
  tensor.shape_ = shape;
  tensor.device_ = device;
  const size_t bytes = tensor.nbytes();
  // Always allocate at least one aligned block so data() is never null.
  const size_t padded = ((bytes == 0 ? 1 : bytes) + kTensorAlignment - 1) /
                        kTensorAlignment * kTensorAlignment;
  switch (device.type) {
    case DeviceType::kCpu: {
      tensor.data_ = std::aligned_alloc(kTensorAlignment, padded);
      if (tensor.data_ == nullptr) {
        return absl::ResourceExhaustedError(
            absl::StrCat("cannot allocate ", padded, " bytes for tensor ",
                         shape.ToString()));
      }
      std::memset(tensor.data_, 0, padded);
      return tensor;
    }
    case DeviceType::kCuda: {
#ifdef FTX_HAVE_CUDA
      int error = cuda::SetDevice(device.index);
      if (error != 0) return CudaError(error, "cudaSetDevice");
      error = cuda::Malloc(&tensor.data_, padded);
      if (error != 0) {
        tensor.data_ = nullptr;
        return CudaError(error, "cudaMalloc");
      }
      error = cuda::Memset(tensor.data_, 0, padded);
      if (error != 0) return CudaError(error, "cudaMemset");
      return tensor;
#else
      return absl::UnimplementedError(
          "CUDA tensors need a build with --config=cuda");
#endif
    }
  }
  return absl::InvalidArgumentError("unknown device type");
}

absl::Status Tensor::CopyFrom(const Tensor& source) {
  if (source.dtype_ != dtype_ || source.NumElements() != NumElements()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "CopyFrom: source ", DTypeName(source.dtype_), source.shape_.ToString(),
        " does not match destination ", DTypeName(dtype_), shape_.ToString()));
  }
  const size_t bytes = nbytes();
  if (bytes == 0) return absl::OkStatus();
  const bool source_cpu = source.device_.type == DeviceType::kCpu;
  const bool dest_cpu = device_.type == DeviceType::kCpu;
  if (source_cpu && dest_cpu) {
    std::memcpy(data_, source.data_, bytes);
    return absl::OkStatus();
  }
#ifdef FTX_HAVE_CUDA
  const cuda::CopyKind kind = source_cpu ? cuda::CopyKind::kHostToDevice
                              : dest_cpu ? cuda::CopyKind::kDeviceToHost
                                         : cuda::CopyKind::kDeviceToDevice;
  const int error = cuda::Memcpy(data_, source.data_, bytes, kind);
  if (error != 0) return CudaError(error, "cudaMemcpy");
  return absl::OkStatus();
#else
  return absl::UnimplementedError(
      "CUDA copies need a build with --config=cuda");
#endif
}

absl::StatusOr<Tensor> Tensor::To(Device device) const {
  FTX_ASSIGN_OR_RETURN(Tensor copy, Create(dtype_, shape_, device));
  FTX_RETURN_IF_ERROR(copy.CopyFrom(*this));
  return copy;
}

}  // namespace ftx
