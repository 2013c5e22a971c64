// kernels/adamw on a CUDA device against the scalar reference in double over
// several steps (skips without a device).
#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/adamw/adamw.h"
#include "kernels/base/tensor.h"
#include "kernels/reference/adamw_ref.h"
#include "tests/util/random.h"
#include "tests/util/tolerance.h"

namespace ftx {
namespace {

using ::ftx::testing::AllNear;
using ::ftx::testing::Cast;

Tensor ToDevice(const std::vector<float>& values, const Shape& shape) {
  Tensor host = Tensor::Create(DType::kF32, shape).value();
  std::copy(values.begin(), values.end(), host.data<float>());
  return host.To(Device::Cuda()).value();
}

std::vector<float> ToHost(const Tensor& device) {
  Tensor host = device.To(Device::Cpu()).value();
  return std::vector<float>(host.data<float>(),
                            host.data<float>() + host.NumElements());
}

TEST(AdamWCudaTest, MatchesReferenceOverSeveralSteps) {
  if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  auto ctx = Context::Create({.device = Device::Cuda()}).value();
  for (auto [rows, cols] : {std::pair<int64_t, int64_t>{1, 1},
                            {7, 33},
                            {3, 100003},
                            {1, 1 << 22}}) {
    SCOPED_TRACE(::testing::Message() << rows << "x" << cols);
    const int64_t n = rows * cols;
    const Shape shape{rows, cols};
    const std::vector<float> p0 = testing::RandomUniformVector(n, 1, -2, 2);
    const std::vector<float> m0 = testing::RandomUniformVector(n, 2, -0.1, 0.1);
    const std::vector<float> v0 = testing::RandomUniformVector(n, 3, 0, 0.01);
    Tensor p = ToDevice(p0, shape), m = ToDevice(m0, shape),
           v = ToDevice(v0, shape);
    std::vector<double> expected_p = Cast<double>(p0),
                        expected_m = Cast<double>(m0),
                        expected_v = Cast<double>(v0);
    for (int64_t step = 1; step <= 4; ++step) {
      const std::vector<float> g = testing::RandomUniformVector(n, 10 + step);
      const Tensor device_g = ToDevice(g, shape);
      AdamWOptions options;
      options.lr = 1e-2;
      options.weight_decay = 0.1;
      options.step = step;
      ASSERT_TRUE(AdamWStep(*ctx, p.view<float>(), device_g.view<float>(),
                            m.view<float>(), v.view<float>(), options)
                      .ok());
      reference::AdamWStep<double>(n, expected_p.data(), Cast<double>(g).data(),
                                   expected_m.data(), expected_v.data(),
                                   options.lr, options.beta1, options.beta2,
                                   options.eps, options.weight_decay, step);
    }
    EXPECT_TRUE(AllNear(ToHost(p), expected_p, {1e-6, 1e-5}));
    EXPECT_TRUE(AllNear(ToHost(m), expected_m, {5e-8, 1e-5}));
    EXPECT_TRUE(AllNear(ToHost(v), expected_v, {5e-8, 1e-5}));
  }
}

}  // namespace
}  // namespace ftx
