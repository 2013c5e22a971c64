// Host-side CUDA runtime calls used by kernels/base (device memory, streams,
// cuBLAS handles). Linked only with --config=cuda; every function returns a
// cudaError_t-style integer (0 = success) and a message through ErrorString, so
// this header needs no CUDA headers.
#ifndef FTX_KERNELS_BASE_CUDA_MEMORY_H_
#define FTX_KERNELS_BASE_CUDA_MEMORY_H_

#include <cstddef>

namespace ftx::cuda {

enum class CopyKind { kHostToDevice, kDeviceToHost, kDeviceToDevice };

int DeviceCount();
int Malloc(void** ptr, size_t bytes);
int Free(void* ptr);
int Memset(void* ptr, int value, size_t bytes);
int Memcpy(void* dst, const void* src, size_t bytes, CopyKind kind);
int SetDevice(int index);
int CreateStream(void** stream);
int DestroyStream(void* stream);
int SynchronizeStream(void* stream);
// Creates a cuBLAS handle bound to `stream`; returns a cublasStatus_t.
int CreateCublas(void* stream, void** handle);
int DestroyCublas(void* handle);
const char* ErrorString(int error);

}  // namespace ftx::cuda

#endif  // FTX_KERNELS_BASE_CUDA_MEMORY_H_
