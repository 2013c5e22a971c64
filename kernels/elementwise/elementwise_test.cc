// kernels/elementwise: every Highway target against the scalar reference over
// odd sizes and strided rows; reference backward against central differences;
// bad input.
#include "kernels/elementwise/elementwise.h"

#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/reference/elementwise_ref.h"
#include "tests/util/gradcheck.h"
#include "tests/util/highway_targets.h"
#include "tests/util/matrix.h"
#include "tests/util/random.h"
#include "tests/util/tolerance.h"

namespace ftx {
namespace {

using ::ftx::testing::AllNear;
using ::ftx::testing::ForEachHighwayTarget;
using ::ftx::testing::StridedMatrix;

struct Size {
  int64_t rows, cols;
};
const Size kSizes[] = {{1, 1},  {3, 7},  {2, 15}, {5, 16},
                       {4, 17}, {7, 33}, {3, 257}};

class ElementwiseTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto ctx = Context::Create({.num_threads = 2});
    ASSERT_TRUE(ctx.ok());
    ctx_ = std::move(ctx).value();
  }
  std::unique_ptr<Context> ctx_;
};

TEST_F(ElementwiseTest, AddAndMulMatchReference) {
  ForEachHighwayTarget([&] {
    for (const Size& size : kSizes) {
      StridedMatrix x(size.rows, size.cols, 3, 1),
          y(size.rows, size.cols, 5, 2);
      StridedMatrix sum(size.rows, size.cols, 1, 3),
          product(size.rows, size.cols, 2, 4);
      ASSERT_TRUE(Add(*ctx_, x.const_view(), y.const_view(), sum.view()).ok());
      ASSERT_TRUE(
          Mul(*ctx_, x.const_view(), y.const_view(), product.view()).ok());
      const int64_t n = size.rows * size.cols;
      std::vector<float> expected_sum(n), expected_product(n);
      reference::Add(n, x.Dense().data(), y.Dense().data(),
                     expected_sum.data());
      reference::Mul(n, x.Dense().data(), y.Dense().data(),
                     expected_product.data());
      EXPECT_TRUE(AllNear(sum.Dense(), expected_sum, {0, 0}));
      EXPECT_TRUE(AllNear(product.Dense(), expected_product, {0, 0}));
      EXPECT_TRUE(sum.PaddingIntact());
      EXPECT_TRUE(product.PaddingIntact());
    }
  });
}

TEST_F(ElementwiseTest, ScaleAxpyAndInPlace) {
  ForEachHighwayTarget([&] {
    for (const Size& size : kSizes) {
      const int64_t n = size.rows * size.cols;
      StridedMatrix x(size.rows, size.cols, 2, 5),
          y(size.rows, size.cols, 4, 6);
      std::vector<float> expected_y = y.Dense();
      reference::Axpy(n, -0.75f, x.Dense().data(), expected_y.data());
      ASSERT_TRUE(Axpy(*ctx_, -0.75f, x.const_view(), y.view()).ok());
      EXPECT_TRUE(AllNear(y.Dense(), expected_y, {1e-7, 1e-6}));
      // In place: x = 3 * x.
      std::vector<float> expected_x(n);
      reference::Scale(n, 3.0f, x.Dense().data(), expected_x.data());
      ASSERT_TRUE(Scale(*ctx_, 3.0f, x.const_view(), x.view()).ok());
      EXPECT_TRUE(AllNear(x.Dense(), expected_x, {0, 0}));
      EXPECT_TRUE(x.PaddingIntact() && y.PaddingIntact());
    }
  });
}

TEST_F(ElementwiseTest, BackwardsMatchReference) {
  ForEachHighwayTarget([&] {
    for (const Size& size : kSizes) {
      const int64_t n = size.rows * size.cols;
      StridedMatrix x(size.rows, size.cols, 1, 7),
          y(size.rows, size.cols, 2, 8);
      StridedMatrix d_out(size.rows, size.cols, 3, 9);
      StridedMatrix d_x(size.rows, size.cols, 1, 10),
          d_y(size.rows, size.cols, 1, 11);
      ASSERT_TRUE(MulBackward(*ctx_, x.const_view(), y.const_view(),
                              d_out.const_view(), d_x.view(), d_y.view())
                      .ok());
      std::vector<float> expected_dx(n), expected_dy(n);
      reference::MulBackward(n, x.Dense().data(), y.Dense().data(),
                             d_out.Dense().data(), expected_dx.data(),
                             expected_dy.data());
      EXPECT_TRUE(AllNear(d_x.Dense(), expected_dx, {0, 0}));
      EXPECT_TRUE(AllNear(d_y.Dense(), expected_dy, {0, 0}));

      float d_alpha = 0.5f;  // accumulates
      ASSERT_TRUE(ScaleBackward(*ctx_, 1.5f, x.const_view(), d_out.const_view(),
                                d_x.view(), TensorView<float>(&d_alpha, {1}))
                      .ok());
      float expected_alpha = 0.5f;
      reference::ScaleBackward(n, 1.5f, x.Dense().data(), d_out.Dense().data(),
                               expected_dx.data(), &expected_alpha);
      EXPECT_TRUE(AllNear(d_x.Dense(), expected_dx, {0, 0}));
      EXPECT_NEAR(d_alpha, expected_alpha,
                  1e-5 * (1 + std::abs(expected_alpha)));

      std::vector<float> bias = testing::RandomUniformVector(size.cols, 12);
      StridedMatrix out(size.rows, size.cols, 2, 13);
      ASSERT_TRUE(AddBias(*ctx_, x.const_view(),
                          TensorView<const float>(bias.data(), {size.cols}),
                          out.view())
                      .ok());
      std::vector<float> expected_out(n);
      reference::AddBias(size.rows, size.cols, x.Dense().data(), size.cols,
                         bias.data(), expected_out.data(), size.cols);
      EXPECT_TRUE(AllNear(out.Dense(), expected_out, {0, 0}));

      std::vector<float> d_bias(size.cols, 1.0f),
          expected_d_bias(size.cols, 1.0f);
      ASSERT_TRUE(AddBiasBackward(*ctx_, d_out.const_view(),
                                  TensorView<float>(d_bias.data(), {size.cols}))
                      .ok());
      reference::AddBiasBackward(size.rows, size.cols, d_out.Dense().data(),
                                 size.cols, expected_d_bias.data());
      EXPECT_TRUE(AllNear(d_bias, expected_d_bias, {1e-6, 1e-6}));
    }
  });
}

// The reference VJPs are the oracle above; here they meet central differences.
TEST(ElementwiseReferenceGradientTest, MatchesCentralDifferences) {
  constexpr int64_t kRows = 3, kCols = 5, kN = kRows * kCols;
  const std::vector<double> w = testing::RandomUniformVector<double>(kN, 20);
  const std::vector<double> x0 = testing::RandomUniformVector<double>(kN, 21);
  const std::vector<double> y0 = testing::RandomUniformVector<double>(kN, 22);
  std::vector<double> d_x(kN), d_y(kN);
  reference::MulBackward(kN, x0.data(), y0.data(), w.data(), d_x.data(),
                         d_y.data());
  auto mul_loss_x = [&](const std::vector<double>& x) {
    std::vector<double> out(kN);
    reference::Mul(kN, x.data(), y0.data(), out.data());
    return testing::Dot(w, out);
  };
  EXPECT_TRUE(testing::GradientMatches(mul_loss_x, x0, d_x));

  // Scale: gradient with respect to alpha.
  double d_alpha = 0;
  std::vector<double> scratch(kN);
  reference::ScaleBackward(kN, 0.7, x0.data(), w.data(), scratch.data(),
                           &d_alpha);
  auto scale_loss = [&](const std::vector<double>& alpha) {
    std::vector<double> out(kN);
    reference::Scale(kN, alpha[0], x0.data(), out.data());
    return testing::Dot(w, out);
  };
  EXPECT_TRUE(testing::GradientMatches(scale_loss, {0.7}, {d_alpha}));

  // AddBias: gradient with respect to the bias.
  std::vector<double> d_bias(kCols, 0.0);
  reference::AddBiasBackward(kRows, kCols, w.data(), kCols, d_bias.data());
  auto bias_loss = [&](const std::vector<double>& bias) {
    std::vector<double> out(kN);
    reference::AddBias(kRows, kCols, x0.data(), kCols, bias.data(), out.data(),
                       kCols);
    return testing::Dot(w, out);
  };
  EXPECT_TRUE(testing::GradientMatches(
      bias_loss, testing::RandomUniformVector<double>(kCols, 23), d_bias));
}

TEST_F(ElementwiseTest, BadInputIsAnErrorNamingTheProblem) {
  std::vector<float> a(12), b(12), c(10);
  TensorView<const float> x(a.data(), {3, 4});
  TensorView<const float> y(b.data(), {3, 4});
  TensorView<float> wrong_shape(c.data(), {2, 5});
  absl::Status status = Add(*ctx_, x, y, wrong_shape);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("[2, 5]"), std::string::npos) << status;

  status = Mul(*ctx_, TensorView<const float>(nullptr, {3, 4}), y,
               TensorView<float>(b.data(), {3, 4}));
  EXPECT_NE(status.message().find("null"), std::string::npos) << status;

  TensorView<const float> on_gpu(a.data(), {3, 4}, Device::Cuda());
  status = Scale(*ctx_, 2.0f, on_gpu, TensorView<float>(b.data(), {3, 4}));
  EXPECT_NE(status.message().find("is on cuda"), std::string::npos) << status;

  TensorView<const float> column_strided(a.data(), {3, 2}, {4, 2, 0, 0});
  status =
      Axpy(*ctx_, 1.0f, column_strided, TensorView<float>(b.data(), {3, 2}));
  EXPECT_NE(status.message().find("unit stride"), std::string::npos) << status;

  status = AddBias(*ctx_, x, TensorView<const float>(c.data(), {5}),
                   TensorView<float>(b.data(), {3, 4}));
  EXPECT_NE(status.message().find("bias"), std::string::npos) << status;

  float d_alpha = 0;
  status = ScaleBackward(*ctx_, 1.0f, x, y, TensorView<float>(c.data(), {2, 5}),
                         TensorView<float>(&d_alpha, {1}));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  status = MulBackward(*ctx_, x, y, y, TensorView<float>(a.data(), {4, 3}),
                       TensorView<float>(b.data(), {3, 4}));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  status = AddBiasBackward(*ctx_, y, TensorView<float>(c.data(), {3}));
  EXPECT_NE(status.message().find("d_bias"), std::string::npos) << status;
}

}  // namespace
}  // namespace ftx
