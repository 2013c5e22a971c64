// kernels/elementwise on a CUDA device against the scalar reference (skips
// without a device).
#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/base/tensor.h"
#include "kernels/elementwise/elementwise.h"
#include "kernels/reference/elementwise_ref.h"
#include "tests/util/random.h"
#include "tests/util/tolerance.h"

namespace ftx {
namespace {

using ::ftx::testing::AllNear;

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

TEST(ElementwiseCudaTest, MatchesReference) {
  if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  auto ctx = Context::Create({.device = Device::Cuda()}).value();
  for (auto [rows, cols] :
       {std::pair<int64_t, int64_t>{1, 1}, {7, 33}, {129, 1000}}) {
    const int64_t n = rows * cols;
    const Shape shape{rows, cols};
    const auto x = testing::RandomUniformVector(n, 1),
               y = testing::RandomUniformVector(n, 2);
    const auto bias = testing::RandomUniformVector(cols, 3);
    Tensor dx = ToDevice(x, shape), dy = ToDevice(y, shape);
    Tensor out = Tensor::Create(DType::kF32, shape, Device::Cuda()).value();
    Tensor d_bias = ToDevice(std::vector<float>(cols, 1.0f), {cols});
    Tensor d_alpha = ToDevice({0.25f}, {1});
    Tensor grad = Tensor::Create(DType::kF32, shape, Device::Cuda()).value();

    ASSERT_TRUE(
        Mul(*ctx, dx.view<float>(), dy.view<float>(), out.view<float>()).ok());
    std::vector<float> expected(n);
    reference::Mul(n, x.data(), y.data(), expected.data());
    EXPECT_TRUE(AllNear(ToHost(out), expected, {1e-7, 1e-6}));

    ASSERT_TRUE(
        Add(*ctx, dx.view<float>(), dy.view<float>(), out.view<float>()).ok());
    reference::Add(n, x.data(), y.data(), expected.data());
    EXPECT_TRUE(AllNear(ToHost(out), expected, {1e-7, 1e-6}));

    ASSERT_TRUE(AddBias(*ctx, dx.view<float>(),
                        ToDevice(bias, {cols}).view<float>(), out.view<float>())
                    .ok());
    reference::AddBias(rows, cols, x.data(), cols, bias.data(), expected.data(),
                       cols);
    EXPECT_TRUE(AllNear(ToHost(out), expected, {1e-7, 1e-6}));

    ASSERT_TRUE(
        AddBiasBackward(*ctx, dy.view<float>(), d_bias.view<float>()).ok());
    std::vector<float> expected_bias(cols, 1.0f);
    reference::AddBiasBackward(rows, cols, y.data(), cols,
                               expected_bias.data());
    EXPECT_TRUE(AllNear(ToHost(d_bias), expected_bias, {1e-5, 1e-5}));

    ASSERT_TRUE(ScaleBackward(*ctx, 2.0f, dx.view<float>(), dy.view<float>(),
                              grad.view<float>(), d_alpha.view<float>())
                    .ok());
    float expected_alpha = 0.25f;
    reference::ScaleBackward(n, 2.0f, x.data(), y.data(), expected.data(),
                             &expected_alpha);
    EXPECT_TRUE(AllNear(ToHost(grad), expected, {1e-7, 1e-6}));
    EXPECT_NEAR(ToHost(d_alpha)[0], expected_alpha,
                1e-4 * (1 + std::abs(expected_alpha)));

    ASSERT_TRUE(Axpy(*ctx, 0.5f, dx.view<float>(), dy.view<float>()).ok());
    std::vector<float> expected_y = y;
    reference::Axpy(n, 0.5f, x.data(), expected_y.data());
    EXPECT_TRUE(AllNear(ToHost(dy), expected_y, {1e-7, 1e-6}));
  }
}

}  // namespace
}  // namespace ftx
