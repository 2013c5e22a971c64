// LayerNormLayer against torch.nn.LayerNorm's formula in double for the three
// parameter configurations; x, weight and bias gradients by central
// differences; strided rows and in-place use; initialisation; bad input.
#include "layers/layernorm.h"

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/util/gradcheck.h"
#include "tests/util/matrix.h"
#include "tests/util/random.h"
#include "tests/util/tolerance.h"

namespace ftx {
namespace {

using ::ftx::testing::AllNear;
using ::ftx::testing::Cast;
using ::ftx::testing::Dot;
using ::ftx::testing::GradientMatches;
using ::ftx::testing::RandomUniformVector;

// y = (x - mean) / sqrt(var + eps) * weight + bias per row of `dim` values;
// an empty weight or bias means none.
std::vector<double> Reference(const std::vector<double>& x, int64_t dim,
                              const std::vector<double>& weight,
                              const std::vector<double>& bias, double eps) {
  std::vector<double> y(x.size());
  for (size_t row = 0; row < x.size() / dim; ++row) {
    const double* in = &x[row * dim];
    double mean = 0, var = 0;
    for (int64_t c = 0; c < dim; ++c) mean += in[c] / dim;
    for (int64_t c = 0; c < dim; ++c)
      var += (in[c] - mean) * (in[c] - mean) / dim;
    for (int64_t c = 0; c < dim; ++c) {
      double value = (in[c] - mean) / std::sqrt(var + eps);
      if (!weight.empty()) value *= weight[c];
      if (!bias.empty()) value += bias[c];
      y[row * dim + c] = value;
    }
  }
  return y;
}

template <typename T>
TensorView<T> ViewOf(std::vector<T>& values, const Shape& shape) {
  if (values.empty()) return TensorView<T>();
  return TensorView<T>(values.data(), shape);
}

struct Case {
  const char* name;
  LayerNormLayerConfig config;
};

TEST(LayerNormLayerTest, ForwardAndBackwardMatchReference) {
  auto ctx = Context::Create({.num_threads = 2}).value();
  constexpr int64_t kBatch = 2, kTime = 3;
  const Case cases[] = {
      {"affine", {.dim = 7}},
      {"no bias", {.dim = 7, .bias = false}},
      {"no affine", {.dim = 7, .elementwise_affine = false}},
      {"wide", {.dim = 33, .eps = 1e-3f}},
      {"one column", {.dim = 1}},
  };
  for (const Case& test_case : cases) {
    SCOPED_TRACE(test_case.name);
    LayerNormLayer norm = LayerNormLayer::Create(test_case.config).value();
    const int64_t C = test_case.config.dim;
    const Shape shape{kBatch, kTime, C};
    std::vector<float> x = RandomUniformVector(kBatch * kTime * C, 1, -2, 3);
    std::vector<float> weight, bias;
    if (norm.has_weight()) weight = RandomUniformVector(C, 2, 0.5, 1.5);
    if (norm.has_bias()) bias = RandomUniformVector(C, 3, -0.5, 0.5);
    std::vector<float> y(x.size());
    LayerNormCache cache;
    ASSERT_TRUE(norm.Forward(*ctx, ViewOf(weight, {C}), ViewOf(bias, {C}),
                             ViewOf(x, shape), ViewOf(y, shape), &cache)
                    .ok());
    const std::vector<double> xd = Cast<double>(x), wd = Cast<double>(weight),
                              bd = Cast<double>(bias);
    const double eps = test_case.config.eps;
    EXPECT_TRUE(AllNear(y, Reference(xd, C, wd, bd, eps), {1e-5, 1e-5}));

    std::vector<float> inference(x.size());
    ASSERT_TRUE(norm.Forward(*ctx, ViewOf(weight, {C}), ViewOf(bias, {C}),
                             ViewOf(x, shape), ViewOf(inference, shape),
                             nullptr)
                    .ok());
    EXPECT_EQ(inference, y);

    const std::vector<float> d_y = RandomUniformVector(y.size(), 4);
    std::vector<float> d_x(x.size(), 7.0f);
    // Parameter gradients accumulate onto these starting values.
    std::vector<float> d_weight(weight.size(), 0.25f),
        d_bias(bias.size(), -0.5f);
    ASSERT_TRUE(norm.Backward(*ctx, ViewOf(weight, {C}), cache,
                              ViewOf(x, shape),
                              TensorView<const float>(d_y.data(), shape),
                              ViewOf(d_x, shape), ViewOf(d_weight, {C}),
                              ViewOf(d_bias, {C}))
                    .ok());
    const std::vector<double> w = Cast<double>(d_y);
    EXPECT_TRUE(GradientMatches(
        [&](const std::vector<double>& v) {
          return Dot(w, Reference(v, C, wd, bd, eps));
        },
        xd, Cast<double>(d_x), {1e-5, 1e-4}));
    if (norm.has_weight()) {
      std::vector<double> analytic = Cast<double>(d_weight);
      for (double& g : analytic) g -= 0.25;
      EXPECT_TRUE(GradientMatches(
          [&](const std::vector<double>& v) {
            return Dot(w, Reference(xd, C, v, bd, eps));
          },
          wd, analytic, {1e-5, 1e-4}));
    }
    if (norm.has_bias()) {
      std::vector<double> analytic = Cast<double>(d_bias);
      for (double& g : analytic) g += 0.5;
      EXPECT_TRUE(GradientMatches(
          [&](const std::vector<double>& v) {
            return Dot(w, Reference(xd, C, wd, v, eps));
          },
          bd, analytic, {1e-5, 1e-4}));
    }
  }
}

TEST(LayerNormLayerTest, StridedRowsAndInPlace) {
  auto ctx = Context::Create({.num_threads = 3}).value();
  constexpr int64_t kRows = 17, kDim = 15;
  LayerNormLayer norm = LayerNormLayer::Create({.dim = kDim}).value();
  std::vector<float> weight = RandomUniformVector(kDim, 5, 0.5, 1.5);
  std::vector<float> bias = RandomUniformVector(kDim, 6);
  testing::StridedMatrix x(kRows, kDim, 3, 7, 1e4, 1e4 + 1);  // far from 0
  testing::StridedMatrix y(kRows, kDim, 5, 8);
  LayerNormCache cache;
  ASSERT_TRUE(norm.Forward(*ctx, ViewOf(weight, {kDim}), ViewOf(bias, {kDim}),
                           x.const_view(), y.view(), &cache)
                  .ok());
  const std::vector<double> expected =
      Reference(Cast<double>(x.Dense()), kDim, Cast<double>(weight),
                Cast<double>(bias), 1e-5);
  EXPECT_TRUE(AllNear(y.Dense(), expected, {1e-4, 1e-4}));
  EXPECT_TRUE(x.PaddingIntact());
  EXPECT_TRUE(y.PaddingIntact());

  // y may be x.
  testing::StridedMatrix in_place = x;
  ASSERT_TRUE(norm.Forward(*ctx, ViewOf(weight, {kDim}), ViewOf(bias, {kDim}),
                           in_place.const_view(), in_place.view(), nullptr)
                  .ok());
  EXPECT_EQ(in_place.Dense(), y.Dense());

  // d_x may alias d_y.
  testing::StridedMatrix d_y(kRows, kDim, 2, 9);
  std::vector<float> d_x(kRows * kDim), d_weight(kDim), d_bias(kDim);
  ASSERT_TRUE(norm.Backward(*ctx, ViewOf(weight, {kDim}), cache, x.const_view(),
                            d_y.const_view(), ViewOf(d_x, {kRows, kDim}),
                            ViewOf(d_weight, {kDim}), ViewOf(d_bias, {kDim}))
                  .ok());
  std::vector<float> d_weight2(kDim), d_bias2(kDim);
  ASSERT_TRUE(norm.Backward(*ctx, ViewOf(weight, {kDim}), cache, x.const_view(),
                            d_y.const_view(), d_y.view(),
                            ViewOf(d_weight2, {kDim}), ViewOf(d_bias2, {kDim}))
                  .ok());
  EXPECT_EQ(d_y.Dense(), d_x);
  EXPECT_EQ(d_weight2, d_weight);
  EXPECT_TRUE(d_y.PaddingIntact());
}

TEST(LayerNormLayerTest, ParamShapesAndInit) {
  LayerNormLayer affine = LayerNormLayer::Create({.dim = 5}).value();
  const std::vector<ParamShape> shapes = affine.ParamShapes();
  ASSERT_EQ(shapes.size(), 2u);
  EXPECT_EQ(shapes[0].name, "weight");
  EXPECT_EQ(shapes[0].shape, Shape{5});
  EXPECT_EQ(shapes[1].name, "bias");
  EXPECT_EQ(shapes[1].shape, Shape{5});
  std::vector<float> weight(5, -3.0f), bias(5, -3.0f);
  ASSERT_TRUE(affine.InitParams(ViewOf(weight, {5}), ViewOf(bias, {5})).ok());
  EXPECT_EQ(weight, std::vector<float>(5, 1.0f));
  EXPECT_EQ(bias, std::vector<float>(5, 0.0f));

  LayerNormLayer no_bias =
      LayerNormLayer::Create({.dim = 5, .bias = false}).value();
  ASSERT_EQ(no_bias.ParamShapes().size(), 1u);
  EXPECT_EQ(no_bias.ParamShapes()[0].name, "weight");
  EXPECT_TRUE(no_bias.InitParams(ViewOf(weight, {5}), {}).ok());
  EXPECT_EQ(no_bias.InitParams(ViewOf(weight, {5}), ViewOf(bias, {5})).code(),
            absl::StatusCode::kInvalidArgument);

  LayerNormLayer plain =
      LayerNormLayer::Create({.dim = 5, .elementwise_affine = false}).value();
  EXPECT_TRUE(plain.ParamShapes().empty());
  EXPECT_TRUE(plain.InitParams({}, {}).ok());
}

void ExpectInvalid(const absl::Status& status, const std::string& needle) {
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(status.message().find(needle), std::string::npos)
      << "message \"" << status.message() << "\" does not mention " << needle;
}

TEST(LayerNormLayerTest, BadInputIsAnError) {
  auto ctx = Context::Create({.num_threads = 1}).value();
  ExpectInvalid(LayerNormLayer::Create({.dim = 0}).status(), "dim");
  ExpectInvalid(LayerNormLayer::Create({.dim = 3, .eps = -1.0f}).status(),
                "eps");
  LayerNormLayer norm = LayerNormLayer::Create({.dim = 4}).value();
  std::vector<float> x(24, 1.0f), y(24), weight(4, 1.0f), bias(4);
  const auto w = ViewOf(weight, {4});
  const auto b = ViewOf(bias, {4});
  const auto x_view = TensorView<const float>(x.data(), {2, 3, 4});
  const auto y_view = TensorView<float>(y.data(), {2, 3, 4});
  ExpectInvalid(
      norm.Forward(*ctx, w, b, TensorView<const float>(x.data(), {4, 6}),
                   TensorView<float>(y.data(), {4, 6}), nullptr),
      "[..., 4]");
  ExpectInvalid(norm.Forward(*ctx, w, b, x_view,
                             TensorView<float>(y.data(), {3, 2, 4}), nullptr),
                "y");
  ExpectInvalid(
      norm.Forward(*ctx, ViewOf(weight, {2, 2}), b, x_view, y_view, nullptr),
      "weight");
  ExpectInvalid(norm.Forward(*ctx, {}, b, x_view, y_view, nullptr),
                "weight is required");
  ExpectInvalid(
      norm.Forward(*ctx, w, b,
                   TensorView<const float>(x.data(), {2, 3, 4}, Device::Cuda()),
                   y_view, nullptr),
      "cuda");
  ExpectInvalid(
      norm.Forward(*ctx, w, b, TensorView<const float>(nullptr, {2, 3, 4}),
                   y_view, nullptr),
      "null");
  ExpectInvalid(norm.Forward(*ctx, w, b,
                             TensorView<const float>(x.data(), {3, 4},
                                                     Strides{8, 2, 0, 0}),
                             TensorView<float>(y.data(), {3, 4}), nullptr),
                "unit stride");
  LayerNormLayer no_bias =
      LayerNormLayer::Create({.dim = 4, .bias = false}).value();
  ExpectInvalid(no_bias.Forward(*ctx, w, b, x_view, y_view, nullptr),
                "bias must be an empty view");

  LayerNormCache cache;
  std::vector<float> d_x(24), d_weight(4), d_bias(4);
  const auto status =
      norm.Backward(*ctx, w, cache, x_view, x_view, ViewOf(d_x, {2, 3, 4}),
                    ViewOf(d_weight, {4}), ViewOf(d_bias, {4}));
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  ASSERT_TRUE(norm.Forward(*ctx, w, b, x_view, y_view, &cache).ok());
  ExpectInvalid(norm.Backward(*ctx, w, cache, x_view, x_view,
                              ViewOf(d_x, {2, 3, 4}), {}, ViewOf(d_bias, {4})),
                "d_weight is required");
  ExpectInvalid(norm.Backward(*ctx, w, cache, x_view,
                              TensorView<const float>(x.data(), {3, 2, 4}),
                              ViewOf(d_x, {2, 3, 4}), ViewOf(d_weight, {4}),
                              ViewOf(d_bias, {4})),
                "d_y");
}

}  // namespace
}  // namespace ftx
