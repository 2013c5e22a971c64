#include "kernels/base/context.h"

#include "gtest/gtest.h"

namespace ftx {
namespace {

TEST(ContextTest, CpuContextHasPool) {
  auto ctx = Context::Create({.num_threads = 2});
  ASSERT_TRUE(ctx.ok()) << ctx.status();
  EXPECT_EQ((*ctx)->num_threads(), 2);
  EXPECT_EQ((*ctx)->device().type, DeviceType::kCpu);
  EXPECT_EQ((*ctx)->cuda_stream(), nullptr);
  EXPECT_TRUE((*ctx)->Synchronize().ok());
}

TEST(ContextTest, RejectsNegativeThreads) {
  auto ctx = Context::Create({.num_threads = -3});
  EXPECT_EQ(ctx.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(ctx.status().message().find("-3"), std::string::npos);
}

TEST(ContextTest, CudaContextNeedsBuildAndDevice) {
  auto ctx = Context::Create({.device = Device::Cuda(0)});
  if (CudaDeviceCount() > 0) {
    ASSERT_TRUE(ctx.ok()) << ctx.status();
    EXPECT_NE((*ctx)->cuda_stream(), nullptr);
    EXPECT_NE((*ctx)->cublas_handle(), nullptr);
  } else {
    EXPECT_FALSE(ctx.ok());
  }
}

}  // namespace
}  // namespace ftx
