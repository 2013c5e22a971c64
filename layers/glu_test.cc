// GluLayer against a double reference of both reference-library flavours
// (x-transformers x * act(gate), performer / LAT act(x) * v) for the GLU
// variants' activations; x, proj.weight and proj.bias gradients by central
// differences; strided rows; initialisation; bad input.
#include "layers/glu.h"

#include <cmath>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
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

double Act(Activation activation, double x) {
  switch (activation) {
    case Activation::kRelu:
      return x > 0 ? x : 0.0;
    case Activation::kGelu:
      return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));
    case Activation::kSilu:
      return x / (1.0 + std::exp(-x));
    case Activation::kSigmoid:
      return 1.0 / (1.0 + std::exp(-x));
    case Activation::kReluSquared:
      return x > 0 ? x * x : 0.0;
    case Activation::kGeluTanh:
      return 0.5 * x *
             (1.0 +
              std::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
    default:
      ADD_FAILURE() << "activation not in the test's reference";
      return 0.0;
  }
}

// p = x W^T + b per row; y = p1 * act(p2) (kSecond) or act(p1) * p2 (kFirst).
std::vector<double> Reference(const GluLayerConfig& config,
                              const std::vector<double>& x,
                              const std::vector<double>& weight,
                              const std::vector<double>& bias) {
  const int64_t C = config.dim_in, D = config.dim_out;
  const int64_t rows = x.size() / C;
  std::vector<double> y(rows * D);
  std::vector<double> p(2 * D);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < 2 * D; ++j) {
      double sum = bias.empty() ? 0.0 : bias[j];
      for (int64_t c = 0; c < C; ++c) sum += weight[j * C + c] * x[r * C + c];
      p[j] = sum;
    }
    for (int64_t j = 0; j < D; ++j) {
      y[r * D + j] = config.activated_half == GluActivatedHalf::kSecond
                         ? p[j] * Act(config.activation, p[D + j])
                         : Act(config.activation, p[j]) * p[D + j];
    }
  }
  return y;
}

template <typename T>
TensorView<T> ViewOf(std::vector<T>& values, const Shape& shape) {
  if (values.empty()) return TensorView<T>();
  return TensorView<T>(values.data(), shape);
}

const char* HalfName(GluActivatedHalf half) {
  return half == GluActivatedHalf::kSecond ? "x * act(gate)" : "act(x) * v";
}

TEST(GluLayerTest, BothFlavoursAndAllActivationsMatchReference) {
  auto ctx = Context::Create({.num_threads = 2}).value();
  constexpr int64_t kBatch = 2, kTime = 3, kIn = 5, kOut = 7;
  const Activation activations[] = {
      Activation::kGelu,    Activation::kSilu,        Activation::kRelu,
      Activation::kSigmoid, Activation::kReluSquared, Activation::kGeluTanh};
  for (GluActivatedHalf half :
       {GluActivatedHalf::kSecond, GluActivatedHalf::kFirst}) {
    for (Activation activation : activations) {
      for (bool bias_on : {true, false}) {
        SCOPED_TRACE(absl::StrCat(HalfName(half), " ",
                                  ActivationName(activation),
                                  bias_on ? " with bias" : " without bias"));
        const GluLayerConfig config{.dim_in = kIn,
                                    .dim_out = kOut,
                                    .activation = activation,
                                    .activated_half = half,
                                    .bias = bias_on};
        GluLayer glu = GluLayer::Create(config).value();
        std::vector<float> x =
            RandomUniformVector(kBatch * kTime * kIn, 1, -2, 2);
        std::vector<float> weight = RandomUniformVector(2 * kOut * kIn, 2);
        std::vector<float> bias;
        if (bias_on) bias = RandomUniformVector(2 * kOut, 3);
        const GluParams params{ViewOf(weight, {2 * kOut, kIn}),
                               ViewOf(bias, {2 * kOut})};
        std::vector<float> y(kBatch * kTime * kOut);
        GluCache cache;
        ASSERT_TRUE(glu.Forward(*ctx, params, ViewOf(x, {kBatch, kTime, kIn}),
                                ViewOf(y, {kBatch, kTime, kOut}), &cache)
                        .ok());
        const std::vector<double> xd = Cast<double>(x),
                                  wd = Cast<double>(weight),
                                  bd = Cast<double>(bias);
        EXPECT_TRUE(AllNear(y, Reference(config, xd, wd, bd), {1e-5, 1e-5}));

        std::vector<float> inference(y.size());
        ASSERT_TRUE(glu.Forward(*ctx, params, ViewOf(x, {kBatch, kTime, kIn}),
                                ViewOf(inference, {kBatch, kTime, kOut}),
                                nullptr)
                        .ok());
        EXPECT_EQ(inference, y);

        std::vector<float> d_y = RandomUniformVector(y.size(), 4);
        std::vector<float> d_x(x.size(), 9.0f);
        std::vector<float> d_weight(weight.size(), 0.5f),
            d_bias(bias.size(), 0.5f);
        ASSERT_TRUE(glu.Backward(*ctx, params, cache,
                                 ViewOf(x, {kBatch, kTime, kIn}),
                                 ViewOf(d_y, {kBatch, kTime, kOut}),
                                 ViewOf(d_x, {kBatch, kTime, kIn}),
                                 {ViewOf(d_weight, {2 * kOut, kIn}),
                                  ViewOf(d_bias, {2 * kOut})})
                        .ok());
        const std::vector<double> w = Cast<double>(d_y);
        EXPECT_TRUE(GradientMatches(
            [&](const std::vector<double>& v) {
              return Dot(w, Reference(config, v, wd, bd));
            },
            xd, Cast<double>(d_x), {2e-5, 1e-4}));
        std::vector<double> analytic_weight = Cast<double>(d_weight);
        for (double& g : analytic_weight) g -= 0.5;
        EXPECT_TRUE(GradientMatches(
            [&](const std::vector<double>& v) {
              return Dot(w, Reference(config, xd, v, bd));
            },
            wd, analytic_weight, {2e-5, 1e-4}));
        if (bias_on) {
          std::vector<double> analytic_bias = Cast<double>(d_bias);
          for (double& g : analytic_bias) g -= 0.5;
          EXPECT_TRUE(GradientMatches(
              [&](const std::vector<double>& v) {
                return Dot(w, Reference(config, xd, wd, v));
              },
              bd, analytic_bias, {2e-5, 1e-4}));
        }
      }
    }
  }
}

// The flavours differ only by which half is activated: performer's act(x) * v
// with W equals x-transformers' x * act(gate) with the halves of W swapped.
TEST(GluLayerTest, FlavoursAreHalfSwapsOfEachOther) {
  auto ctx = Context::Create({.num_threads = 1}).value();
  constexpr int64_t kRows = 4, kIn = 3, kOut = 5;
  GluLayer first =
      GluLayer::Create({.dim_in = kIn,
                        .dim_out = kOut,
                        .activation = Activation::kSilu,
                        .activated_half = GluActivatedHalf::kFirst})
          .value();
  GluLayer second =
      GluLayer::Create({.dim_in = kIn,
                        .dim_out = kOut,
                        .activation = Activation::kSilu,
                        .activated_half = GluActivatedHalf::kSecond})
          .value();
  std::vector<float> x = RandomUniformVector(kRows * kIn, 11);
  std::vector<float> weight = RandomUniformVector(2 * kOut * kIn, 12);
  std::vector<float> bias = RandomUniformVector(2 * kOut, 13);
  std::vector<float> swapped_weight(weight.size()), swapped_bias(bias.size());
  for (int64_t j = 0; j < 2 * kOut; ++j) {
    const int64_t source = (j + kOut) % (2 * kOut);
    swapped_bias[j] = bias[source];
    for (int64_t c = 0; c < kIn; ++c) {
      swapped_weight[j * kIn + c] = weight[source * kIn + c];
    }
  }
  std::vector<float> y_first(kRows * kOut), y_second(kRows * kOut);
  ASSERT_TRUE(
      first
          .Forward(
              *ctx, {ViewOf(weight, {2 * kOut, kIn}), ViewOf(bias, {2 * kOut})},
              ViewOf(x, {kRows, kIn}), ViewOf(y_first, {kRows, kOut}), nullptr)
          .ok());
  ASSERT_TRUE(second
                  .Forward(*ctx,
                           {ViewOf(swapped_weight, {2 * kOut, kIn}),
                            ViewOf(swapped_bias, {2 * kOut})},
                           ViewOf(x, {kRows, kIn}),
                           ViewOf(y_second, {kRows, kOut}), nullptr)
                  .ok());
  EXPECT_EQ(y_first, y_second);
  // And with the same weights they differ.
  ASSERT_TRUE(
      second
          .Forward(
              *ctx, {ViewOf(weight, {2 * kOut, kIn}), ViewOf(bias, {2 * kOut})},
              ViewOf(x, {kRows, kIn}), ViewOf(y_second, {kRows, kOut}), nullptr)
          .ok());
  EXPECT_NE(y_first, y_second);
}

TEST(GluLayerTest, StridedRows) {
  auto ctx = Context::Create({.num_threads = 3}).value();
  constexpr int64_t kRows = 33, kIn = 17, kOut = 16;
  for (GluActivatedHalf half :
       {GluActivatedHalf::kSecond, GluActivatedHalf::kFirst}) {
    SCOPED_TRACE(HalfName(half));
    const GluLayerConfig config{.dim_in = kIn,
                                .dim_out = kOut,
                                .activation = Activation::kGelu,
                                .activated_half = half};
    GluLayer glu = GluLayer::Create(config).value();
    testing::StridedMatrix x(kRows, kIn, 3, 21);
    testing::StridedMatrix y(kRows, kOut, 1, 22);
    testing::StridedMatrix d_y(kRows, kOut, 2, 23);
    testing::StridedMatrix d_x(kRows, kIn, 4, 24);
    std::vector<float> weight = RandomUniformVector(2 * kOut * kIn, 25);
    std::vector<float> bias = RandomUniformVector(2 * kOut, 26);
    const GluParams params{ViewOf(weight, {2 * kOut, kIn}),
                           ViewOf(bias, {2 * kOut})};
    GluCache cache;
    ASSERT_TRUE(
        glu.Forward(*ctx, params, x.const_view(), y.view(), &cache).ok());
    const std::vector<double> xd = Cast<double>(x.Dense());
    EXPECT_TRUE(
        AllNear(y.Dense(),
                Reference(config, xd, Cast<double>(weight), Cast<double>(bias)),
                {1e-5, 1e-5}));
    std::vector<float> d_weight(weight.size()), d_bias(bias.size());
    ASSERT_TRUE(glu.Backward(*ctx, params, cache, x.const_view(),
                             d_y.const_view(), d_x.view(),
                             {ViewOf(d_weight, {2 * kOut, kIn}),
                              ViewOf(d_bias, {2 * kOut})})
                    .ok());
    // The same gradient as from dense copies.
    std::vector<float> dense_x = x.Dense(), dense_d_y = d_y.Dense();
    std::vector<float> dense_d_x(dense_x.size()), dense_d_weight(weight.size()),
        dense_d_bias(bias.size());
    GluCache dense_cache;
    std::vector<float> dense_y(kRows * kOut);
    ASSERT_TRUE(glu.Forward(*ctx, params, ViewOf(dense_x, {kRows, kIn}),
                            ViewOf(dense_y, {kRows, kOut}), &dense_cache)
                    .ok());
    ASSERT_TRUE(glu.Backward(*ctx, params, dense_cache,
                             ViewOf(dense_x, {kRows, kIn}),
                             ViewOf(dense_d_y, {kRows, kOut}),
                             ViewOf(dense_d_x, {kRows, kIn}),
                             {ViewOf(dense_d_weight, {2 * kOut, kIn}),
                              ViewOf(dense_d_bias, {2 * kOut})})
                    .ok());
    EXPECT_EQ(d_x.Dense(), dense_d_x);
    EXPECT_TRUE(AllNear(d_weight, dense_d_weight, {1e-6, 1e-6}));
    EXPECT_TRUE(AllNear(d_bias, dense_d_bias, {1e-6, 1e-6}));
    EXPECT_TRUE(x.PaddingIntact() && y.PaddingIntact() && d_y.PaddingIntact() &&
                d_x.PaddingIntact());
  }
}

TEST(GluLayerTest, ParamShapesAndTorchLinearInit) {
  auto ctx = Context::Create({.num_threads = 1}).value();
  constexpr int64_t kIn = 64, kOut = 48;
  GluLayer glu = GluLayer::Create({.dim_in = kIn, .dim_out = kOut}).value();
  const std::vector<ParamShape> shapes = glu.ParamShapes();
  ASSERT_EQ(shapes.size(), 2u);
  EXPECT_EQ(shapes[0].name, "proj.weight");
  EXPECT_EQ(shapes[0].shape, (Shape{2 * kOut, kIn}));
  EXPECT_EQ(shapes[1].name, "proj.bias");
  EXPECT_EQ(shapes[1].shape, Shape{2 * kOut});
  std::vector<float> weight(2 * kOut * kIn), bias(2 * kOut);
  ASSERT_TRUE(glu.InitParams(*ctx, 5,
                             {ViewOf(weight, {2 * kOut, kIn}),
                              ViewOf(bias, {2 * kOut})})
                  .ok());
  // U(-1/sqrt(in), 1/sqrt(in)): bounds, mean 0, variance bound^2 / 3.
  const double bound = 1.0 / std::sqrt(double(kIn));
  double sum = 0, squares = 0;
  for (float w : weight) {
    EXPECT_LE(std::abs(w), bound);
    sum += w;
    squares += double(w) * w;
  }
  const double n = weight.size();
  EXPECT_NEAR(sum / n, 0.0, 4 * bound / std::sqrt(3 * n));
  EXPECT_NEAR(squares / n, bound * bound / 3, 0.1 * bound * bound / 3);
  for (float b : bias) EXPECT_LE(std::abs(b), bound);
  EXPECT_NE(bias[0], bias[1]);
  // Deterministic in the seed.
  std::vector<float> again(weight.size()), again_bias(bias.size());
  ASSERT_TRUE(glu.InitParams(*ctx, 5,
                             {ViewOf(again, {2 * kOut, kIn}),
                              ViewOf(again_bias, {2 * kOut})})
                  .ok());
  EXPECT_EQ(again, weight);
  ASSERT_TRUE(glu.InitParams(*ctx, 6,
                             {ViewOf(again, {2 * kOut, kIn}),
                              ViewOf(again_bias, {2 * kOut})})
                  .ok());
  EXPECT_NE(again, weight);

  GluLayer no_bias =
      GluLayer::Create({.dim_in = kIn, .dim_out = kOut, .bias = false}).value();
  ASSERT_EQ(no_bias.ParamShapes().size(), 1u);
  EXPECT_TRUE(
      no_bias.InitParams(*ctx, 5, {ViewOf(weight, {2 * kOut, kIn}), {}}).ok());
}

void ExpectInvalid(const absl::Status& status, const std::string& needle) {
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(status.message().find(needle), std::string::npos)
      << "message \"" << status.message() << "\" does not mention " << needle;
}

TEST(GluLayerTest, BadInputIsAnError) {
  auto ctx = Context::Create({.num_threads = 1}).value();
  ExpectInvalid(GluLayer::Create({.dim_in = 0, .dim_out = 2}).status(),
                "dim_in");
  ExpectInvalid(GluLayer::Create({.dim_in = 2,
                                  .dim_out = 2,
                                  .activation = static_cast<Activation>(99)})
                    .status(),
                "activation");
  GluLayer glu = GluLayer::Create({.dim_in = 3, .dim_out = 2}).value();
  std::vector<float> x(12, 1.0f), y(8), weight(12), bias(4);
  const GluParams params{ViewOf(weight, {4, 3}), ViewOf(bias, {4})};
  const TensorView<const float> x_view(x.data(), {4, 3});
  const TensorView<float> y_view(y.data(), {4, 2});
  ExpectInvalid(
      glu.Forward(*ctx, params, TensorView<const float>(x.data(), {3, 4}),
                  TensorView<float>(y.data(), {3, 2}), nullptr),
      "expected x [..., 3]");
  ExpectInvalid(glu.Forward(*ctx, params, x_view,
                            TensorView<float>(y.data(), {2, 2}), nullptr),
                "y [..., 2]");
  ExpectInvalid(glu.Forward(*ctx, {ViewOf(weight, {3, 4}), ViewOf(bias, {4})},
                            x_view, y_view, nullptr),
                "proj.weight must be [4, 3]");
  ExpectInvalid(
      glu.Forward(*ctx, {ViewOf(weight, {4, 3}), {}}, x_view, y_view, nullptr),
      "proj.bias is required");
  ExpectInvalid(
      glu.Forward(*ctx, params,
                  TensorView<const float>(x.data(), {4, 3}, Device::Cuda()),
                  y_view, nullptr),
      "cuda");
  ExpectInvalid(
      glu.Forward(*ctx, params, TensorView<const float>(nullptr, {4, 3}),
                  y_view, nullptr),
      "null");
  ExpectInvalid(glu.Forward(*ctx, params,
                            TensorView<const float>(x.data(), {2, 3},
                                                    Strides{6, 2, 0, 0}),
                            TensorView<float>(y.data(), {2, 2}), nullptr),
                "unit stride");
  GluLayer no_bias =
      GluLayer::Create({.dim_in = 3, .dim_out = 2, .bias = false}).value();
  ExpectInvalid(no_bias.Forward(*ctx, params, x_view, y_view, nullptr),
                "proj.bias must be an empty view");

  GluCache cache;
  std::vector<float> d_x(12), d_weight(12), d_bias(4);
  const GluGrads grads{ViewOf(d_weight, {4, 3}), ViewOf(d_bias, {4})};
  const absl::Status stale = glu.Backward(
      *ctx, params, cache, x_view, TensorView<const float>(y.data(), {4, 2}),
      ViewOf(d_x, {4, 3}), grads);
  EXPECT_EQ(stale.code(), absl::StatusCode::kFailedPrecondition) << stale;
  ASSERT_TRUE(glu.Forward(*ctx, params, x_view, y_view, &cache).ok());
  ExpectInvalid(
      glu.Backward(*ctx, params, cache, x_view,
                   TensorView<const float>(y.data(), {4, 2}),
                   ViewOf(d_x, {4, 3}), {ViewOf(d_weight, {4, 3}), {}}),
      "d_proj.bias is required");
  ExpectInvalid(glu.Backward(*ctx, params, cache, x_view,
                             TensorView<const float>(y.data(), {2, 4}),
                             ViewOf(d_x, {4, 3}), grads),
                "d_y");
  ExpectInvalid(glu.Backward(*ctx, params, cache, x_view,
                             TensorView<const float>(y.data(), {4, 2}),
                             ViewOf(d_x, {3, 4}), grads),
                "d_x");
}

}  // namespace
}  // namespace ftx
