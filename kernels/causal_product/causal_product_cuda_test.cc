// kernels/causal_product on a CUDA device against the O(L^2) scalar reference
// (skips without a device), on views strided in their rows, including first
// and value dimensions above 128 that the kernel sweeps in several tiles.
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/base/tensor.h"
#include "kernels/causal_product/causal_product.h"
#include "kernels/reference/causal_product_ref.h"
#include "tests/util/random.h"
#include "tests/util/tolerance.h"

namespace ftx {
namespace {

using ::ftx::testing::AllNear;

constexpr int64_t kPadding = 3;

// A [N, L, H, W] device tensor stored with kPadding extra floats per row.
class DeviceSequences {
 public:
  DeviceSequences(int64_t n, int64_t l, int64_t h, int64_t width, uint64_t seed)
      : width_(width) {
    const Shape padded{n, l, h, width + kPadding};
    Tensor host = Tensor::Create(DType::kF32, padded).value();
    const std::vector<float> values =
        testing::RandomUniformVector(host.NumElements(), seed);
    std::copy(values.begin(), values.end(), host.data<float>());
    initial_padded_ = values;
    for (int64_t row = 0; row < n * l * h; ++row) {
      for (int64_t w = 0; w < width; ++w) {
        dense_.push_back(values[row * (width + kPadding) + w]);
      }
    }
    device_ = host.To(Device::Cuda()).value();
  }

  TensorView<float> view() { return device_.view<float>().Slice(3, 0, width_); }
  TensorView<const float> const_view() { return view(); }

  // The values written at construction, row-major [N, L, H, W].
  const std::vector<float>& initial() const { return dense_; }

  // True when no padding float changed on the device.
  bool PaddingIntact() const {
    Tensor host = device_.To(Device::Cpu()).value();
    const float* data = host.data<float>();
    for (int64_t i = 0; i < host.NumElements(); ++i) {
      if (i % (width_ + kPadding) >= width_ && data[i] != initial_padded_[i]) {
        return false;
      }
    }
    return true;
  }

  // The current values, row-major [N, L, H, W].
  std::vector<float> Dense() const {
    Tensor host = device_.To(Device::Cpu()).value();
    const float* data = host.data<float>();
    std::vector<float> dense;
    for (int64_t row = 0; row < host.NumElements() / (width_ + kPadding);
         ++row) {
      for (int64_t w = 0; w < width_; ++w) {
        dense.push_back(data[row * (width_ + kPadding) + w]);
      }
    }
    return dense;
  }

 private:
  int64_t width_;
  std::vector<float> dense_, initial_padded_;
  Tensor device_;
};

testing::Tolerance ToleranceFor(int64_t length, int64_t inner) {
  return {2e-6 * std::sqrt(static_cast<double>(length * (inner + 1))), 1e-5};
}

struct Case {
  int64_t n, l, h, e, d;
};

const Case kCases[] = {{1, 1, 1, 1, 1},     {2, 7, 3, 3, 17},
                       {1, 130, 2, 64, 64}, {2, 33, 2, 17, 130},
                       {1, 40, 3, 200, 33}, {1, 19, 1, 0, 5}};

TEST(CausalProductCudaTest, ForwardAndBackwardMatchReference) {
  if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  auto ctx = Context::Create({.device = Device::Cuda()}).value();
  for (const Case& c : kCases) {
    SCOPED_TRACE("N=" + std::to_string(c.n) + " L=" + std::to_string(c.l) +
                 " H=" + std::to_string(c.h) + " E=" + std::to_string(c.e) +
                 " D=" + std::to_string(c.d));
    DeviceSequences q(c.n, c.l, c.h, c.e, 1), k(c.n, c.l, c.h, c.e, 2),
        v(c.n, c.l, c.h, c.d, 3), g(c.n, c.l, c.h, c.d, 4),
        out(c.n, c.l, c.h, c.d, 5), d_q(c.n, c.l, c.h, c.e, 6),
        d_k(c.n, c.l, c.h, c.e, 7), d_v(c.n, c.l, c.h, c.d, 8);
    ASSERT_TRUE(CausalProduct(*ctx, q.const_view(), k.const_view(),
                              v.const_view(), out.view())
                    .ok());
    ASSERT_TRUE(CausalProductBackward(*ctx, q.const_view(), k.const_view(),
                                      v.const_view(), g.const_view(),
                                      d_q.view(), d_k.view(), d_v.view())
                    .ok());
    ASSERT_TRUE(ctx->Synchronize().ok());

    const reference::CausalProductShape shape{c.n, c.l, c.h, c.e, c.d};
    const std::vector<double> q_host = testing::Cast<double>(q.initial()),
                              k_host = testing::Cast<double>(k.initial()),
                              v_host = testing::Cast<double>(v.initial()),
                              g_host = testing::Cast<double>(g.initial());
    std::vector<double> expected(c.n * c.l * c.h * c.d),
        expected_dq(c.n * c.l * c.h * c.e), expected_dk(expected_dq.size()),
        expected_dv(expected.size());
    reference::CausalProduct(shape, q_host.data(), k_host.data(), v_host.data(),
                             expected.data());
    reference::CausalProductBackward(
        shape, q_host.data(), k_host.data(), v_host.data(), g_host.data(),
        expected_dq.data(), expected_dk.data(), expected_dv.data());
    EXPECT_TRUE(AllNear(out.Dense(), expected, ToleranceFor(c.l, c.e)));
    EXPECT_TRUE(AllNear(d_q.Dense(), expected_dq, ToleranceFor(c.l, c.d)))
        << "d_queries";
    EXPECT_TRUE(AllNear(d_k.Dense(), expected_dk, ToleranceFor(c.l, c.d)))
        << "d_keys";
    EXPECT_TRUE(AllNear(d_v.Dense(), expected_dv, ToleranceFor(c.l, c.e)))
        << "d_values";
    EXPECT_TRUE(out.PaddingIntact() && d_q.PaddingIntact() &&
                d_k.PaddingIntact() && d_v.PaddingIntact());
  }
}

}  // namespace
}  // namespace ftx
