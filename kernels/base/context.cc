#include "kernels/base/context.h"

#include <thread>

#include "absl/strings/str_cat.h"
#include "hwy/targets.h"

#ifdef FTX_HAVE_CUDA
#include "kernels/base/cuda_memory.h"
#endif

namespace ftx {

Context::Context(int num_threads, Device device)
    : pool_(std::make_unique<ThreadPool>(num_threads)), device_(device) {}

Context::~Context() {
#ifdef FTX_HAVE_CUDA
  if (cublas_handle_ != nullptr) cuda::DestroyCublas(cublas_handle_);
  if (cuda_stream_ != nullptr) cuda::DestroyStream(cuda_stream_);
#endif
}

absl::StatusOr<std::unique_ptr<Context>> Context::Create(
    const ContextOptions& options) {
  if (options.num_threads < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "num_threads must be >= 0 (0 = all hardware threads), got ",
        options.num_threads));
  }
  int threads = options.num_threads;
  if (threads == 0) {
    threads = static_cast<int>(std::thread::hardware_concurrency());
    if (threads <= 0) threads = 1;
  }
  // Pick the Highway target once, not on the first op call.
  hwy::GetChosenTarget().Update(hwy::SupportedTargets());
  std::unique_ptr<Context> context(new Context(threads, options.device));
  switch (options.device.type) {
    case DeviceType::kCpu:
      return context;
    case DeviceType::kCuda: {
#ifdef FTX_HAVE_CUDA
      if (options.device.index < 0 ||
          options.device.index >= cuda::DeviceCount()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "CUDA device ", options.device.index, " requested but ",
            cuda::DeviceCount(), " device(s) are visible"));
      }
      int error = cuda::SetDevice(options.device.index);
      if (error == 0) error = cuda::CreateStream(&context->cuda_stream_);
      if (error != 0) {
        return absl::InternalError(absl::StrCat(
            "creating a CUDA stream failed: ", cuda::ErrorString(error)));
      }
      error =
          cuda::CreateCublas(context->cuda_stream_, &context->cublas_handle_);
      if (error != 0) {
        return absl::InternalError(absl::StrCat(
            "creating a cuBLAS handle failed with status ", error));
      }
      return context;
#else
      return absl::UnimplementedError(
          "CUDA contexts need a build with --config=cuda");
#endif
    }
  }
  return absl::InvalidArgumentError("unknown device type");
}

absl::Status Context::Synchronize() const {
#ifdef FTX_HAVE_CUDA
  if (cuda_stream_ != nullptr) {
    const int error = cuda::SynchronizeStream(cuda_stream_);
    if (error != 0) {
      return absl::InternalError(
          absl::StrCat("CUDA stream failed: ", cuda::ErrorString(error)));
    }
  }
#endif
  return absl::OkStatus();
}

int CudaDeviceCount() {
#ifdef FTX_HAVE_CUDA
  return cuda::DeviceCount();
#else
  return 0;
#endif
}

}  // namespace ftx
