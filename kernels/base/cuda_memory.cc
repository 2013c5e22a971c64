#include "kernels/base/cuda_memory.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

namespace ftx::cuda {

int DeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

int Malloc(void** ptr, size_t bytes) { return cudaMalloc(ptr, bytes); }
int Free(void* ptr) { return cudaFree(ptr); }
int Memset(void* ptr, int value, size_t bytes) {
  return cudaMemset(ptr, value, bytes);
}

int Memcpy(void* dst, const void* src, size_t bytes, CopyKind kind) {
  cudaMemcpyKind cuda_kind = cudaMemcpyDefault;
  switch (kind) {
    case CopyKind::kHostToDevice:
      cuda_kind = cudaMemcpyHostToDevice;
      break;
    case CopyKind::kDeviceToHost:
      cuda_kind = cudaMemcpyDeviceToHost;
      break;
    case CopyKind::kDeviceToDevice:
      cuda_kind = cudaMemcpyDeviceToDevice;
      break;
  }
  return cudaMemcpy(dst, src, bytes, cuda_kind);
}

int SetDevice(int index) { return cudaSetDevice(index); }

int CreateStream(void** stream) {
  cudaStream_t s = nullptr;
  const cudaError_t error = cudaStreamCreate(&s);
  *stream = s;
  return error;
}

int DestroyStream(void* stream) {
  return cudaStreamDestroy(static_cast<cudaStream_t>(stream));
}

int SynchronizeStream(void* stream) {
  return cudaStreamSynchronize(static_cast<cudaStream_t>(stream));
}

int CreateCublas(void* stream, void** handle) {
  cublasHandle_t h = nullptr;
  cublasStatus_t status = cublasCreate(&h);
  if (status != CUBLAS_STATUS_SUCCESS) return status;
  status = cublasSetStream(h, static_cast<cudaStream_t>(stream));
  *handle = h;
  return status;
}

int DestroyCublas(void* handle) {
  return cublasDestroy(static_cast<cublasHandle_t>(handle));
}

const char* ErrorString(int error) {
  return cudaGetErrorString(static_cast<cudaError_t>(error));
}

}  // namespace ftx::cuda
