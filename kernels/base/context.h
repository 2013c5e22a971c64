// Context: what every op needs besides its tensors — the CPU thread pool and,
// for CUDA contexts, the stream and cuBLAS handle (opaque here so host code
// needs no CUDA headers). One Context per thread of control; ops never create
// their own.
//
// Example:
//   FTX_ASSIGN_OR_RETURN(auto ctx, Context::Create({.num_threads = 2}));
//   FTX_RETURN_IF_ERROR(MatMul(*ctx, a, b, c));
#ifndef FTX_KERNELS_BASE_CONTEXT_H_
#define FTX_KERNELS_BASE_CONTEXT_H_

#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/base/device.h"
#include "kernels/base/thread_pool.h"

namespace ftx {

struct ContextOptions {
  // CPU threads including the caller; 0 means all hardware threads.
  int num_threads = 0;
  // kCuda creates a stream and a cuBLAS handle on that device.
  Device device = Device::Cpu();
};

class Context {
 public:
  static absl::StatusOr<std::unique_ptr<Context>> Create(
      const ContextOptions& options = {});
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  Device device() const { return device_; }
  const ThreadPool& pool() const { return *pool_; }
  int num_threads() const { return pool_->num_threads(); }

  // cudaStream_t and cublasHandle_t of a CUDA context; null for CPU contexts.
  void* cuda_stream() const { return cuda_stream_; }
  void* cublas_handle() const { return cublas_handle_; }

  // Waits for all work queued on the stream (no-op on CPU).
  absl::Status Synchronize() const;

 private:
  explicit Context(int num_threads, Device device);

  std::unique_ptr<ThreadPool> pool_;
  Device device_;
  void* cuda_stream_ = nullptr;
  void* cublas_handle_ = nullptr;
};

// Number of CUDA devices visible; 0 without a device or without --config=cuda.
int CudaDeviceCount();

}  // namespace ftx

#endif  // FTX_KERNELS_BASE_CONTEXT_H_
