// kernels/activation: every Highway target against the scalar reference (run
// in double) for every activation over a value sweep (zeros, values near the
// kinks and the piece boundaries of the erf approximation, |x| up to 1e30),
// odd sizes, strided rows and in place; saturation without NaN; the reference
// derivatives against central differences; gated linear units; names; bad
// input.
#include "kernels/activation/activation.h"

#include <cmath>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/reference/activation_ref.h"
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
using ::ftx::testing::Tolerance;

struct Case {
  Activation activation;
  double (*value)(double);
  double (*derivative)(double);
};

const Case kCases[] = {
    {Activation::kIdentity, reference::Identity<double>,
     reference::IdentityDerivative<double>},
    {Activation::kRelu, reference::Relu<double>,
     reference::ReluDerivative<double>},
    {Activation::kGelu, reference::Gelu<double>,
     reference::GeluDerivative<double>},
    {Activation::kGeluTanh, reference::GeluTanh<double>,
     reference::GeluTanhDerivative<double>},
    {Activation::kSilu, reference::Silu<double>,
     reference::SiluDerivative<double>},
    {Activation::kEluPlusOne, reference::EluPlusOne<double>,
     reference::EluPlusOneDerivative<double>},
    {Activation::kReluSquared, reference::ReluSquared<double>,
     reference::ReluSquaredDerivative<double>},
    {Activation::kSigmoid, reference::Sigmoid<double>,
     reference::SigmoidDerivative<double>},
    {Activation::kTanh, reference::Tanh<double>,
     reference::TanhDerivative<double>},
};

const Case& CaseOf(Activation activation) {
  for (const Case& c : kCases) {
    if (c.activation == activation) return c;
  }
  return kCases[0];
}

// The Highway kernels against the double reference rounded to float: 1e-6
// (values) or 2e-6 (derivatives) relative, about 16 or 32 float ulps, plus
// 1e-7 absolute for where f or f' crosses zero. The worst cases observed use
// under 60% of this bound (gelu' and gelu_tanh' next to their zeros).
constexpr Tolerance kValueTolerance = {1e-7, 1e-6};
constexpr Tolerance kDerivativeTolerance = {1e-7, 2e-6};

struct Size {
  int64_t rows, cols;
};
const Size kSizes[] = {{1, 1},  {3, 7},  {2, 15}, {5, 16},
                       {4, 17}, {7, 33}, {3, 257}};

// Zeros, tiny values and values near the kinks at 0, both sides of the
// 27/32 · √2 piece boundary of the Φ approximation, the clamps (12, 17), the
// float exp limits, saturation up to 1e30, and a dense sweep of [-20, 20].
std::vector<float> SweepValues() {
  std::vector<float> values = {0.0f, -0.0f};
  for (double magnitude :
       {1e-30, 1e-7,  1e-3, 0.1,  0.5,  0.75,  1.0,   1.1932, 1.1933, 2.0,
        3.0,   5.0,   8.0,  9.5,  10.0, 11.99, 12.0,  12.01,  14.5,   16.99,
        17.0,  17.01, 20.0, 40.0, 80.0, 88.0,  100.0, 1e4,    1e30}) {
    values.push_back(static_cast<float>(magnitude));
    values.push_back(static_cast<float>(-magnitude));
  }
  for (int i = -2000; i <= 2000; ++i) values.push_back(0.01f * i);
  return values;
}

// A strided matrix holding `values` (cycled to fill the last row).
StridedMatrix MatrixOf(const std::vector<float>& values, int64_t cols,
                       int64_t padding) {
  const int64_t rows = (static_cast<int64_t>(values.size()) + cols - 1) / cols;
  StridedMatrix m(rows, cols, padding, /*seed=*/1);
  for (int64_t i = 0; i < rows * cols; ++i) {
    m.at(i / cols, i % cols) = values[i % values.size()];
  }
  return m;
}

std::vector<float> ExpectedValues(const Case& c, const std::vector<float>& x) {
  std::vector<float> expected(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    expected[i] = static_cast<float>(c.value(x[i]));
  }
  return expected;
}

std::vector<float> ExpectedGradients(const Case& c, const std::vector<float>& x,
                                     const std::vector<float>& d_y) {
  std::vector<double> x_double = testing::Cast<double>(x);
  std::vector<double> d_y_double = testing::Cast<double>(d_y);
  std::vector<double> d_x(x.size());
  reference::ActivateBackward(static_cast<int64_t>(x.size()), c.derivative,
                              x_double.data(), d_y_double.data(), d_x.data());
  return testing::Cast<float>(d_x);
}

class ActivationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto ctx = Context::Create({.num_threads = 2});
    ASSERT_TRUE(ctx.ok());
    ctx_ = std::move(ctx).value();
  }
  std::unique_ptr<Context> ctx_;
};

TEST_F(ActivationTest, SweepMatchesReferenceOnEveryTarget) {
  const std::vector<float> values = SweepValues();
  ForEachHighwayTarget([&] {
    for (const Case& c : kCases) {
      SCOPED_TRACE(ActivationName(c.activation));
      StridedMatrix x = MatrixOf(values, 61, 3);
      StridedMatrix y(x.rows(), x.cols(), 2, 2);
      ASSERT_TRUE(Activate(*ctx_, c.activation, x.const_view(), y.view()).ok());
      EXPECT_TRUE(
          AllNear(y.Dense(), ExpectedValues(c, x.Dense()), kValueTolerance));
      EXPECT_TRUE(y.PaddingIntact());

      StridedMatrix d_y(x.rows(), x.cols(), 1, 3);
      StridedMatrix d_x(x.rows(), x.cols(), 4, 4);
      ASSERT_TRUE(ActivateBackward(*ctx_, c.activation, x.const_view(),
                                   d_y.const_view(), d_x.view())
                      .ok());
      EXPECT_TRUE(AllNear(d_x.Dense(),
                          ExpectedGradients(c, x.Dense(), d_y.Dense()),
                          kDerivativeTolerance));
      EXPECT_TRUE(d_x.PaddingIntact());
    }
  });
}

TEST_F(ActivationTest, OddSizesStridedAndInPlace) {
  ForEachHighwayTarget([&] {
    for (const Case& c : kCases) {
      SCOPED_TRACE(ActivationName(c.activation));
      for (const Size& size : kSizes) {
        StridedMatrix x(size.rows, size.cols, 3, 5, -6.0, 6.0);
        StridedMatrix y(size.rows, size.cols, 1, 6);
        const std::vector<float> expected = ExpectedValues(c, x.Dense());
        ASSERT_TRUE(
            Activate(*ctx_, c.activation, x.const_view(), y.view()).ok());
        EXPECT_TRUE(AllNear(y.Dense(), expected, kValueTolerance));
        EXPECT_TRUE(y.PaddingIntact());

        StridedMatrix d_y(size.rows, size.cols, 2, 7);
        const std::vector<float> expected_d_x =
            ExpectedGradients(c, x.Dense(), d_y.Dense());
        // In place: d_x is d_y.
        ASSERT_TRUE(ActivateBackward(*ctx_, c.activation, x.const_view(),
                                     d_y.const_view(), d_y.view())
                        .ok());
        EXPECT_TRUE(AllNear(d_y.Dense(), expected_d_x, kDerivativeTolerance));
        EXPECT_TRUE(d_y.PaddingIntact());

        // In place: y is x.
        ASSERT_TRUE(
            Activate(*ctx_, c.activation, x.const_view(), x.view()).ok());
        EXPECT_TRUE(AllNear(x.Dense(), expected, kValueTolerance));
        EXPECT_TRUE(x.PaddingIntact());
      }
    }
  });
}

TEST_F(ActivationTest, LeadingAxesCollapseIntoRows) {
  constexpr int64_t kBatch = 2, kTime = 3, kChannels = 19;
  const std::vector<float> x =
      testing::RandomUniformVector(kBatch * kTime * kChannels, 8, -4.0, 4.0);
  std::vector<float> y(x.size());
  ASSERT_TRUE(
      Activate(*ctx_, Activation::kGelu,
               TensorView<const float>(x.data(), {kBatch, kTime, kChannels}),
               TensorView<float>(y.data(), {kBatch, kTime, kChannels}))
          .ok());
  EXPECT_TRUE(AllNear(y, ExpectedValues(CaseOf(Activation::kGelu), x),
                      kValueTolerance));
}

// Limits that hold exactly in float, whatever the approximation.
TEST_F(ActivationTest, SaturatesWithoutNaN) {
  const std::vector<float> x = {-1e30f, -1e4f, -80.0f, 80.0f, 1e4f, 1e30f};
  ForEachHighwayTarget([&] {
    for (const Case& c : kCases) {
      SCOPED_TRACE(ActivationName(c.activation));
      const int64_t n = static_cast<int64_t>(x.size());
      std::vector<float> y(n), d_x(n);
      const std::vector<float> d_y(n, 1.0f);
      ASSERT_TRUE(Activate(*ctx_, c.activation,
                           TensorView<const float>(x.data(), {n}),
                           TensorView<float>(y.data(), {n}))
                      .ok());
      ASSERT_TRUE(ActivateBackward(*ctx_, c.activation,
                                   TensorView<const float>(x.data(), {n}),
                                   TensorView<const float>(d_y.data(), {n}),
                                   TensorView<float>(d_x.data(), {n}))
                      .ok());
      for (int64_t i = 0; i < n; ++i) {
        EXPECT_FALSE(std::isnan(y[i])) << "f(" << x[i] << ")";
        EXPECT_FALSE(std::isnan(d_x[i])) << "f'(" << x[i] << ")";
      }
      switch (c.activation) {
        case Activation::kSigmoid:
          EXPECT_EQ(y[0], 0.0f);
          EXPECT_EQ(y[1], 0.0f);
          EXPECT_EQ(y[4], 1.0f);
          EXPECT_EQ(y[5], 1.0f);
          EXPECT_GT(y[2], 0.0f);  // σ(-80) = 1.8e-35 is a normal float
          break;
        case Activation::kSilu:
        case Activation::kGelu:
        case Activation::kGeluTanh:
          EXPECT_EQ(y[0], 0.0f);
          EXPECT_EQ(y[1], 0.0f);
          EXPECT_EQ(y[4], 1e4f);
          EXPECT_EQ(y[5], 1e30f);
          EXPECT_EQ(d_x[1], 0.0f);
          EXPECT_EQ(d_x[4], 1.0f);
          break;
        case Activation::kTanh:
          EXPECT_EQ(y[1], -1.0f);
          EXPECT_EQ(y[4], 1.0f);
          EXPECT_EQ(d_x[1], 0.0f);
          EXPECT_EQ(d_x[4], 0.0f);
          break;
        default:
          break;
      }
    }
  });
}

// The reference derivatives meet central differences, away from the kinks at
// 0 of relu, relu_squared and elu+1.
TEST(ActivationReferenceGradientTest, DerivativesMatchCentralDifferences) {
  constexpr int64_t kN = 64;
  std::vector<double> x0 = testing::RandomUniformVector<double>(kN, 30, -6, 6);
  x0.push_back(-20.0);
  x0.push_back(15.0);
  for (double& x : x0) {
    if (std::abs(x) < 1e-2) x = 0.5;
  }
  const std::vector<double> w =
      testing::RandomUniformVector<double>(x0.size(), 31);
  for (const Case& c : kCases) {
    SCOPED_TRACE(ActivationName(c.activation));
    std::vector<double> analytic(x0.size());
    reference::ActivateBackward(static_cast<int64_t>(x0.size()), c.derivative,
                                x0.data(), w.data(), analytic.data());
    auto loss = [&](const std::vector<double>& x) {
      std::vector<double> y(x.size());
      reference::Activate(static_cast<int64_t>(x.size()), c.value, x.data(),
                          y.data());
      return testing::Dot(w, y);
    };
    EXPECT_TRUE(testing::GradientMatches(loss, x0, analytic));
  }
}

const Activation kGateActivations[] = {Activation::kGelu, Activation::kSilu,
                                       Activation::kRelu, Activation::kSigmoid,
                                       Activation::kGeluTanh};

TEST(ActivationReferenceGradientTest, GluBackwardMatchesCentralDifferences) {
  constexpr int64_t kRows = 3, kHalf = 5;
  std::vector<double> x0 =
      testing::RandomUniformVector<double>(kRows * 2 * kHalf, 40, -3, 3);
  for (double& x : x0) {
    if (std::abs(x) < 1e-2) x = -0.5;
  }
  const std::vector<double> w =
      testing::RandomUniformVector<double>(kRows * kHalf, 41);
  for (Activation activation : kGateActivations) {
    SCOPED_TRACE(ActivationName(activation));
    const Case& c = CaseOf(activation);
    std::vector<double> analytic(x0.size());
    reference::GluBackward(kRows, kHalf, c.value, c.derivative, x0.data(),
                           w.data(), analytic.data());
    auto loss = [&](const std::vector<double>& x) {
      std::vector<double> y(kRows * kHalf);
      reference::Glu(kRows, kHalf, c.value, x.data(), y.data());
      return testing::Dot(w, y);
    };
    EXPECT_TRUE(testing::GradientMatches(loss, x0, analytic));
  }
}

TEST_F(ActivationTest, GluAndBackwardMatchReference) {
  ForEachHighwayTarget([&] {
    for (Activation activation : kGateActivations) {
      SCOPED_TRACE(ActivationName(activation));
      const Case& c = CaseOf(activation);
      for (const Size& size : kSizes) {
        const int64_t half = size.cols;
        StridedMatrix x(size.rows, 2 * half, 3, 50, -5.0, 5.0);
        StridedMatrix y(size.rows, half, 2, 51);
        ASSERT_TRUE(Glu(*ctx_, activation, x.const_view(), y.view()).ok());
        const std::vector<double> x_double = testing::Cast<double>(x.Dense());
        std::vector<double> expected_y(size.rows * half);
        reference::Glu(size.rows, half, c.value, x_double.data(),
                       expected_y.data());
        EXPECT_TRUE(AllNear(y.Dense(), testing::Cast<float>(expected_y),
                            kValueTolerance));
        EXPECT_TRUE(y.PaddingIntact());

        StridedMatrix d_y(size.rows, half, 1, 52);
        const std::vector<double> d_y_double =
            testing::Cast<double>(d_y.Dense());
        std::vector<double> expected_d_x(x_double.size());
        reference::GluBackward(size.rows, half, c.value, c.derivative,
                               x_double.data(), d_y_double.data(),
                               expected_d_x.data());
        StridedMatrix d_x(size.rows, 2 * half, 1, 53);
        ASSERT_TRUE(GluBackward(*ctx_, activation, x.const_view(),
                                d_y.const_view(), d_x.view())
                        .ok());
        EXPECT_TRUE(AllNear(d_x.Dense(), testing::Cast<float>(expected_d_x),
                            kDerivativeTolerance));
        EXPECT_TRUE(d_x.PaddingIntact());

        // In place: d_x is x.
        ASSERT_TRUE(GluBackward(*ctx_, activation, x.const_view(),
                                d_y.const_view(), x.view())
                        .ok());
        EXPECT_TRUE(AllNear(x.Dense(), testing::Cast<float>(expected_d_x),
                            kDerivativeTolerance));
        EXPECT_TRUE(x.PaddingIntact());
      }
    }
  });
}

TEST_F(ActivationTest, GluOverLeadingAxes) {
  constexpr int64_t kBatch = 2, kTime = 3, kHalf = 9;
  const std::vector<float> x =
      testing::RandomUniformVector(kBatch * kTime * 2 * kHalf, 60, -3.0, 3.0);
  std::vector<float> y(kBatch * kTime * kHalf);
  ASSERT_TRUE(Glu(*ctx_, Activation::kSilu,
                  TensorView<const float>(x.data(), {kBatch, kTime, 2 * kHalf}),
                  TensorView<float>(y.data(), {kBatch, kTime, kHalf}))
                  .ok());
  std::vector<double> expected(y.size());
  const std::vector<double> x_double = testing::Cast<double>(x);
  reference::Glu(kBatch * kTime, kHalf, reference::Silu<double>,
                 x_double.data(), expected.data());
  EXPECT_TRUE(AllNear(y, testing::Cast<float>(expected), kValueTolerance));
}

TEST(ActivationNameTest, RoundTripsAndRejectsUnknownNames) {
  for (const Case& c : kCases) {
    const absl::StatusOr<Activation> parsed =
        ActivationFromName(ActivationName(c.activation));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, c.activation);
  }
  const std::pair<const char*, Activation> kExpected[] = {
      {"identity", Activation::kIdentity},
      {"relu", Activation::kRelu},
      {"gelu", Activation::kGelu},
      {"gelu_tanh", Activation::kGeluTanh},
      {"silu", Activation::kSilu},
      {"swish", Activation::kSilu},
      {"elu+1", Activation::kEluPlusOne},
      {"relu_squared", Activation::kReluSquared},
      {"sigmoid", Activation::kSigmoid},
      {"tanh", Activation::kTanh}};
  for (const auto& [name, activation] : kExpected) {
    const absl::StatusOr<Activation> parsed = ActivationFromName(name);
    ASSERT_TRUE(parsed.ok()) << name;
    EXPECT_EQ(*parsed, activation) << name;
  }
  EXPECT_STREQ(ActivationName(Activation::kSilu), "silu");
  EXPECT_STREQ(ActivationName(static_cast<Activation>(42)), "invalid");

  const absl::StatusOr<Activation> unknown = ActivationFromName("Gelu");
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kInvalidArgument);
  const std::string message(unknown.status().message());
  EXPECT_NE(message.find("'Gelu'"), std::string::npos) << message;
  EXPECT_NE(message.find("gelu_tanh"), std::string::npos) << message;
  EXPECT_NE(message.find("elu+1"), std::string::npos) << message;
}

TEST_F(ActivationTest, BadInputIsAnErrorNamingTheProblem) {
  std::vector<float> a(12), b(12), c(10);
  TensorView<const float> x(a.data(), {3, 4});
  TensorView<float> out(b.data(), {3, 4});
  auto expect_error = [](const absl::Status& status, const char* needle) {
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_NE(status.message().find(needle), std::string::npos)
        << "expected '" << needle << "' in: " << status;
  };

  // Activate.
  expect_error(Activate(*ctx_, Activation::kRelu, x,
                        TensorView<float>(c.data(), {2, 5})),
               "[2, 5]");
  expect_error(Activate(*ctx_, Activation::kRelu,
                        TensorView<const float>(nullptr, {3, 4}), out),
               "null");
  expect_error(
      Activate(*ctx_, Activation::kRelu,
               TensorView<const float>(a.data(), {3, 4}, Device::Cuda()), out),
      "is on cuda");
  expect_error(Activate(*ctx_, Activation::kRelu,
                        TensorView<const float>(a.data(), {3, 2}, {4, 2, 0, 0}),
                        TensorView<float>(b.data(), {3, 2})),
               "unit stride");
  expect_error(Activate(*ctx_, static_cast<Activation>(42), x, out),
               "invalid value 42");

  // ActivateBackward.
  TensorView<const float> d_y(b.data(), {3, 4});
  expect_error(ActivateBackward(*ctx_, Activation::kGelu, x,
                                TensorView<const float>(c.data(), {5, 2}),
                                TensorView<float>(b.data(), {3, 4})),
               "d_y has shape [5, 2]");
  expect_error(ActivateBackward(*ctx_, Activation::kGelu, x, d_y,
                                TensorView<float>(nullptr, {3, 4})),
               "d_x has null data");
  expect_error(
      ActivateBackward(*ctx_, Activation::kGelu, x, d_y,
                       TensorView<float>(b.data(), {3, 4}, Device::Cuda())),
      "d_x is on cuda");
  expect_error(ActivateBackward(*ctx_, static_cast<Activation>(-1), x, d_y,
                                TensorView<float>(b.data(), {3, 4})),
               "invalid value -1");

  // Glu: x [3, 4] -> y [3, 2].
  expect_error(
      Glu(*ctx_, Activation::kSilu, TensorView<const float>(a.data(), {4, 3}),
          TensorView<float>(c.data(), {4, 1})),
      "even last dimension");
  expect_error(Glu(*ctx_, Activation::kSilu, x, out),
               "y has shape [3, 4] but expected [3, 2]");
  expect_error(
      Glu(*ctx_, Activation::kSilu, TensorView<const float>(nullptr, {3, 4}),
          TensorView<float>(c.data(), {3, 2})),
      "x has null data");
  expect_error(Glu(*ctx_, Activation::kSilu, x,
                   TensorView<float>(c.data(), {3, 2}, {4, 2, 0, 0})),
               "unit stride");
  expect_error(Glu(*ctx_, Activation::kSilu, x,
                   TensorView<float>(c.data(), {3, 2}, Device::Cuda())),
               "y is on cuda");
  expect_error(Glu(*ctx_, static_cast<Activation>(9), x,
                   TensorView<float>(c.data(), {3, 2})),
               "gate_activation has invalid value 9");

  // GluBackward: x, d_x [3, 4]; d_y [3, 2].
  TensorView<const float> half_grad(c.data(), {3, 2});
  expect_error(GluBackward(*ctx_, Activation::kGelu, x,
                           TensorView<const float>(c.data(), {3, 3}), out),
               "d_y has shape [3, 3] but expected [3, 2]");
  expect_error(GluBackward(*ctx_, Activation::kGelu, x, half_grad,
                           TensorView<float>(b.data(), {4, 3})),
               "d_x has shape [4, 3]");
  expect_error(GluBackward(*ctx_, Activation::kGelu,
                           TensorView<const float>(a.data(), {3, 3}), half_grad,
                           TensorView<float>(b.data(), {3, 3})),
               "even last dimension");
  expect_error(GluBackward(*ctx_, Activation::kGelu, x, half_grad,
                           TensorView<float>(nullptr, {3, 4})),
               "d_x has null data");
  expect_error(
      GluBackward(*ctx_, Activation::kGelu, x,
                  TensorView<const float>(c.data(), {3, 2}, Device::Cuda()),
                  out),
      "d_y is on cuda");
}

}  // namespace
}  // namespace ftx
