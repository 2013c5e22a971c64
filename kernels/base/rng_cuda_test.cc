// The GPU Philox stream equals the CPU one bit for bit (skips without a
// device).
#include "kernels/base/rng_cuda.h"

#include <vector>

#include "gtest/gtest.h"
#include "kernels/base/context.h"
#include "kernels/base/rng.h"
#include "kernels/base/tensor.h"

namespace ftx {
namespace {

TEST(RngCudaTest, UniformMatchesCpuBitForBit) {
  if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  auto gpu_ctx = Context::Create({.device = Device::Cuda(0)});
  auto cpu_ctx = Context::Create({.num_threads = 2});
  ASSERT_TRUE(gpu_ctx.ok() && cpu_ctx.ok());
  constexpr int64_t kCount = 100003;
  auto device = Tensor::Create(DType::kF32, {kCount}, Device::Cuda(0));
  auto host = Tensor::Create(DType::kF32, {kCount});
  auto expected = Tensor::Create(DType::kF32, {kCount});
  ASSERT_TRUE(device.ok() && host.ok() && expected.ok());
  ASSERT_EQ(cuda::LaunchFillUniform(device->data<float>(), kCount, -2, 5, 99, 3,
                                    17, (*gpu_ctx)->cuda_stream()),
            0);
  ASSERT_TRUE((*gpu_ctx)->Synchronize().ok());
  ASSERT_TRUE(host->CopyFrom(*device).ok());
  ASSERT_TRUE(FillUniform(**cpu_ctx, expected->view<float>(), -2, 5,
                          {.seed = 99, .stream = 3, .offset = 17})
                  .ok());
  for (int64_t i = 0; i < kCount; ++i) {
    ASSERT_EQ(host->data<float>()[i], expected->data<float>()[i]) << i;
  }
}

}  // namespace
}  // namespace ftx
