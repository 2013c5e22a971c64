// Residual: plain, scale_residual (learned scale and constant), the constant
// alone, GRU gating with and without the learned scale, each against a double
// reference of x-transformers' Residual / GRUGating (torch GRUCell equations)
// on padded views, with the gradients of out, residual and every parameter by
// central differences; init values and ranges; in-place use; bad inputs.
#include "layers/residual.h"

#include <algorithm>
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
using ::ftx::testing::GradientMatches;
using ::ftx::testing::RandomUniformVector;
using ::ftx::testing::StridedMatrix;

constexpr int64_t kBatch = 2, kLength = 3, kDim = 5, kRows = kBatch * kLength;

std::unique_ptr<Context> MakeContext() {
  return Context::Create({.num_threads = 2}).value();
}

TensorView<float> Sequence(StridedMatrix& rows) {
  return TensorView<float>(
      rows.data(), {kBatch, kLength, rows.cols()},
      Strides{kLength * rows.stride(), rows.stride(), 1, 0});
}

// The parameters in double; unused ones stay empty.
struct RefParams {
  std::vector<double> residual_scale, weight_ih, weight_hh, bias_ih, bias_hh;
};

double Sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// x-transformers Residual.forward / GRUGating.forward with torch.nn.GRUCell,
// per row.
std::vector<double> Reference(const ResidualConfig& config, const RefParams& p,
                              const std::vector<double>& out,
                              const std::vector<double>& residual) {
  const int64_t C = config.dim;
  std::vector<double> hidden = residual;
  if (config.scale_residual) {
    for (size_t i = 0; i < hidden.size(); ++i)
      hidden[i] *= p.residual_scale[i % C];
  }
  std::vector<double> y(out.size());
  if (!config.gate_residual) {
    for (size_t i = 0; i < y.size(); ++i) {
      y[i] = out[i] + hidden[i] * config.scale_residual_constant;
    }
    return y;
  }
  for (int64_t r = 0; r < kRows; ++r) {
    const double* x = &out[r * C];
    const double* h = &hidden[r * C];
    // gi = W_ih x + b_ih, gh = W_hh h + b_hh, rows (r, z, n).
    std::vector<double> gi(3 * C), gh(3 * C);
    for (int64_t j = 0; j < 3 * C; ++j) {
      gi[j] = p.bias_ih[j];
      gh[j] = p.bias_hh[j];
      for (int64_t k = 0; k < C; ++k) {
        gi[j] += p.weight_ih[j * C + k] * x[k];
        gh[j] += p.weight_hh[j * C + k] * h[k];
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      const double reset = Sigmoid(gi[c] + gh[c]);
      const double update = Sigmoid(gi[C + c] + gh[C + c]);
      const double candidate = std::tanh(gi[2 * C + c] + reset * gh[2 * C + c]);
      y[r * C + c] = (1 - update) * candidate + update * h[c];
    }
  }
  return y;
}

// Float parameter storage laid out as ParamShapes, with views.
struct Params {
  explicit Params(const ResidualConfig& config, uint64_t seed) {
    const int64_t C = config.dim;
    const int64_t gate_rows = config.gate_residual ? 3 * C : 0;
    residual_scale =
        RandomUniformVector(config.scale_residual ? C : 0, seed, 0.5, 1.5);
    weight_ih = RandomUniformVector(gate_rows * C, seed + 1, -0.6, 0.6);
    weight_hh = RandomUniformVector(gate_rows * C, seed + 2, -0.6, 0.6);
    bias_ih = RandomUniformVector(gate_rows, seed + 3, -0.5, 0.5);
    bias_hh = RandomUniformVector(gate_rows, seed + 4, -0.5, 0.5);
    shapes = {{C}, {gate_rows, C}, {gate_rows, C}, {gate_rows}, {gate_rows}};
  }
  template <typename T>
  ResidualTensors<T> Views() {
    return {TensorView<T>(residual_scale.data(), shapes[0]),
            TensorView<T>(weight_ih.data(), shapes[1]),
            TensorView<T>(weight_hh.data(), shapes[2]),
            TensorView<T>(bias_ih.data(), shapes[3]),
            TensorView<T>(bias_hh.data(), shapes[4])};
  }
  RefParams AsDouble() const {
    return {Cast<double>(residual_scale), Cast<double>(weight_ih),
            Cast<double>(weight_hh), Cast<double>(bias_ih),
            Cast<double>(bias_hh)};
  }
  std::vector<float> residual_scale, weight_ih, weight_hh, bias_ih, bias_hh;
  std::vector<Shape> shapes;
};

std::vector<double> Minus(const std::vector<float>& values, double offset) {
  std::vector<double> result = Cast<double>(values);
  for (double& v : result) v -= offset;
  return result;
}

void CheckConfig(const ResidualConfig& config) {
  auto ctx = MakeContext();
  Residual layer = Residual::Create(config).value();
  Params params(config, 11);
  StridedMatrix out(kRows, kDim, 2, 1, -1.5, 1.5),
      residual(kRows, kDim, 3, 2, -1.5, 1.5);
  StridedMatrix y(kRows, kDim, 1, 3);
  ResidualCache cache;
  const ResidualParams param_views = params.Views<const float>();
  ASSERT_TRUE(layer
                  .Forward(*ctx, param_views, Sequence(out), Sequence(residual),
                           Sequence(y), &cache)
                  .ok());
  const RefParams ref = params.AsDouble();
  const std::vector<double> out_d = Cast<double>(out.Dense());
  const std::vector<double> residual_d = Cast<double>(residual.Dense());
  EXPECT_TRUE(AllNear(y.Dense(), Reference(config, ref, out_d, residual_d),
                      {1e-6, 1e-5}));
  EXPECT_TRUE(y.PaddingIntact());

  const std::vector<float> d_y = RandomUniformVector(kRows * kDim, 4);
  StridedMatrix d_out(kRows, kDim, 2, 5), d_residual(kRows, kDim, 1, 6);
  Params grads(config, 30);  // accumulated into: start from known values
  const Params grads_before = grads;
  ASSERT_TRUE(
      layer
          .Backward(
              *ctx, param_views, cache, Sequence(out), Sequence(residual),
              TensorView<const float>(d_y.data(), {kBatch, kLength, kDim}),
              Sequence(d_out), Sequence(d_residual), grads.Views<float>())
          .ok());
  EXPECT_TRUE(d_out.PaddingIntact());
  EXPECT_TRUE(d_residual.PaddingIntact());
  const std::vector<double> w = Cast<double>(d_y);
  const testing::Tolerance tolerance{2e-5, 1e-4};
  EXPECT_TRUE(GradientMatches(
      [&](const std::vector<double>& v) {
        return testing::Dot(w, Reference(config, ref, v, residual_d));
      },
      out_d, Cast<double>(d_out.Dense()), tolerance));
  EXPECT_TRUE(GradientMatches(
      [&](const std::vector<double>& v) {
        return testing::Dot(w, Reference(config, ref, out_d, v));
      },
      residual_d, Cast<double>(d_residual.Dense()), tolerance));
  // Each parameter: the analytic gradient is what Backward added.
  auto check_param = [&](std::vector<double> RefParams::*member,
                         const std::vector<float>& after,
                         const std::vector<float>& before) {
    std::vector<double> analytic = Cast<double>(after);
    for (size_t i = 0; i < analytic.size(); ++i) analytic[i] -= before[i];
    EXPECT_TRUE(GradientMatches(
        [&](const std::vector<double>& v) {
          RefParams changed = ref;
          changed.*member = v;
          return testing::Dot(w, Reference(config, changed, out_d, residual_d));
        },
        ref.*member, analytic, tolerance));
  };
  check_param(&RefParams::residual_scale, grads.residual_scale,
              grads_before.residual_scale);
  check_param(&RefParams::weight_ih, grads.weight_ih, grads_before.weight_ih);
  check_param(&RefParams::weight_hh, grads.weight_hh, grads_before.weight_hh);
  check_param(&RefParams::bias_ih, grads.bias_ih, grads_before.bias_ih);
  check_param(&RefParams::bias_hh, grads.bias_hh, grads_before.bias_hh);
}

TEST(ResidualTest, Plain) { CheckConfig({.dim = kDim}); }

TEST(ResidualTest, ScaleResidualWithConstant) {
  CheckConfig(
      {.dim = kDim, .scale_residual = true, .scale_residual_constant = 1.7f});
}

TEST(ResidualTest, ConstantAlone) {
  CheckConfig({.dim = kDim, .scale_residual_constant = 0.5f});
}

TEST(ResidualTest, GateResidual) {
  CheckConfig({.dim = kDim, .gate_residual = true});
}

TEST(ResidualTest, GateResidualWithScaleIgnoresTheConstant) {
  // The reference above gives the constant no role in the gated form.
  CheckConfig({.dim = kDim,
               .scale_residual = true,
               .scale_residual_constant = 3.0f,
               .gate_residual = true});
}

TEST(ResidualTest, GateResidualWithoutCacheMatchesWithCache) {
  auto ctx = MakeContext();
  const ResidualConfig config{
      .dim = kDim, .scale_residual = true, .gate_residual = true};
  Residual layer = Residual::Create(config).value();
  Params params(config, 40);
  std::vector<float> out = RandomUniformVector(kRows * kDim, 41);
  std::vector<float> residual = RandomUniformVector(kRows * kDim, 42);
  std::vector<float> cached(out.size()), uncached(out.size());
  const TensorView<const float> out_view(out.data(), {kBatch, kLength, kDim});
  const TensorView<const float> residual_view(residual.data(),
                                              {kBatch, kLength, kDim});
  ResidualCache cache;
  ASSERT_TRUE(
      layer
          .Forward(*ctx, params.Views<const float>(), out_view, residual_view,
                   TensorView<float>(cached.data(), {kBatch, kLength, kDim}),
                   &cache)
          .ok());
  ASSERT_TRUE(
      layer
          .Forward(*ctx, params.Views<const float>(), out_view, residual_view,
                   TensorView<float>(uncached.data(), {kBatch, kLength, kDim}),
                   nullptr)
          .ok());
  EXPECT_EQ(cached, uncached);
  EXPECT_EQ(cache.saved.size(), 2u);
}

TEST(ResidualTest, InPlace) {
  auto ctx = MakeContext();
  const Shape shape{kBatch, kLength, kDim};
  for (const ResidualConfig& config :
       {ResidualConfig{.dim = kDim, .scale_residual = true},
        ResidualConfig{
            .dim = kDim, .scale_residual = true, .gate_residual = true}}) {
    SCOPED_TRACE(::testing::Message()
                 << "gate_residual " << config.gate_residual);
    Residual layer = Residual::Create(config).value();
    Params params(config, 50);
    const std::vector<float> out = RandomUniformVector(kRows * kDim, 51);
    const std::vector<float> residual = RandomUniformVector(kRows * kDim, 52);
    const TensorView<const float> out_view(out.data(), shape);
    const TensorView<const float> residual_view(residual.data(), shape);
    std::vector<float> y(out.size()), y_in_place = out;
    ResidualCache cache;
    ASSERT_TRUE(layer
                    .Forward(*ctx, params.Views<const float>(), out_view,
                             residual_view, TensorView<float>(y.data(), shape),
                             &cache)
                    .ok());
    const TensorView<float> in_place(y_in_place.data(), shape);
    ASSERT_TRUE(layer
                    .Forward(*ctx, params.Views<const float>(), in_place,
                             residual_view, in_place, nullptr)
                    .ok());
    EXPECT_EQ(y_in_place, y);

    // d_residual over d_y.
    const std::vector<float> d_y = RandomUniformVector(kRows * kDim, 53);
    std::vector<float> d_out(out.size()), d_residual(out.size());
    std::vector<float> d_out_again(out.size()), d_shared = d_y;
    Params grads(config, 54);
    ASSERT_TRUE(layer
                    .Backward(*ctx, params.Views<const float>(), cache,
                              out_view, residual_view,
                              TensorView<const float>(d_y.data(), shape),
                              TensorView<float>(d_out.data(), shape),
                              TensorView<float>(d_residual.data(), shape),
                              grads.Views<float>())
                    .ok());
    const TensorView<float> shared(d_shared.data(), shape);
    ASSERT_TRUE(layer
                    .Backward(*ctx, params.Views<const float>(), cache,
                              out_view, residual_view, shared,
                              TensorView<float>(d_out_again.data(), shape),
                              shared, grads.Views<float>())
                    .ok());
    EXPECT_EQ(d_out_again, d_out);
    EXPECT_EQ(d_shared, d_residual);
  }
}

TEST(ResidualTest, ParamShapesAndInit) {
  auto ctx = MakeContext();
  constexpr int64_t C = 16;
  const ResidualConfig config{
      .dim = C, .scale_residual = true, .gate_residual = true};
  const Residual layer = Residual::Create(config).value();
  const std::vector<ParamShape> shapes = layer.ParamShapes();
  ASSERT_EQ(shapes.size(), 5u);
  const std::vector<std::string> names = {"residual_scale", "gru.weight_ih",
                                          "gru.weight_hh", "gru.bias_ih",
                                          "gru.bias_hh"};
  const std::vector<Shape> expected_shapes = {
      {C}, {3 * C, C}, {3 * C, C}, {3 * C}, {3 * C}};
  for (size_t i = 0; i < shapes.size(); ++i) {
    EXPECT_EQ(shapes[i].name, names[i]);
    EXPECT_EQ(shapes[i].shape, expected_shapes[i]);
  }
  EXPECT_TRUE(Residual::Create({.dim = C}).value().ParamShapes().empty());
  EXPECT_EQ(Residual::Create({.dim = C, .scale_residual = true})
                .value()
                .ParamShapes()
                .size(),
            1u);

  Params params(config, 60);
  ASSERT_TRUE(layer.InitParams(*ctx, params.Views<float>(), 7).ok());
  for (float v : params.residual_scale) EXPECT_EQ(v, 1.0f);
  const float bound = 0.25f;  // 1 / sqrt(16)
  for (const std::vector<float>* gru : {&params.weight_ih, &params.weight_hh,
                                        &params.bias_ih, &params.bias_hh}) {
    const auto [low, high] = std::minmax_element(gru->begin(), gru->end());
    EXPECT_GE(*low, -bound);
    EXPECT_LE(*high, bound);
    EXPECT_LT(*low, -0.8f * bound);  // spread over the range, not a constant
    EXPECT_GT(*high, 0.8f * bound);
  }
  EXPECT_NE(params.weight_ih, params.weight_hh);  // separate streams
  Params again(config, 61);
  ASSERT_TRUE(layer.InitParams(*ctx, again.Views<float>(), 7).ok());
  EXPECT_EQ(again.weight_ih, params.weight_ih);
  EXPECT_EQ(again.bias_hh, params.bias_hh);
}

void ExpectInvalid(const absl::Status& status, const std::string& fragment) {
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(std::string(status.message()).find(fragment), std::string::npos)
      << "message \"" << status.message() << "\" lacks \"" << fragment << "\"";
}

TEST(ResidualTest, BadInputsAreErrors) {
  auto ctx = MakeContext();
  ExpectInvalid(Residual::Create({.dim = 0}).status(), "dim must be positive");
  const ResidualConfig config{
      .dim = kDim, .scale_residual = true, .gate_residual = true};
  Residual layer = Residual::Create(config).value();
  Params params(config, 70);
  std::vector<float> a(kRows * kDim), b(kRows * kDim), c(kRows * kDim),
      d(kRows * kDim);
  const Shape shape{kBatch, kLength, kDim};
  const TensorView<const float> out(a.data(), shape), residual(b.data(), shape);
  const TensorView<float> y(c.data(), shape);
  ResidualCache cache;
  ExpectInvalid(
      layer.Forward(*ctx, params.Views<const float>(), out,
                    TensorView<const float>(b.data(), {kBatch, kDim, kLength}),
                    y, &cache),
      "residual has shape");
  ExpectInvalid(
      layer.Forward(*ctx, params.Views<const float>(),
                    TensorView<const float>(a.data(), {kBatch, kDim, kLength}),
                    TensorView<const float>(b.data(), {kBatch, kDim, kLength}),
                    TensorView<float>(c.data(), {kBatch, kDim, kLength}),
                    &cache),
      "must have dim = 5");
  ExpectInvalid(
      layer.Forward(*ctx, params.Views<const float>(),
                    TensorView<const float>(a.data(), shape, Device::Cuda()),
                    residual, y, &cache),
      "out is on cuda");
  ExpectInvalid(layer.Forward(*ctx, params.Views<const float>(),
                              TensorView<const float>(nullptr, shape), residual,
                              y, &cache),
                "out has null data");
  ExpectInvalid(
      layer.Forward(*ctx, params.Views<const float>(), out, residual,
                    TensorView<float>(c.data(), {kBatch, kLength, 2},
                                      Strides{kLength * kDim, kDim, 2, 0}),
                    &cache),
      "unit stride");
  ResidualParams bad = params.Views<const float>();
  bad.residual_scale =
      TensorView<const float>(params.residual_scale.data(), {kDim - 1});
  ExpectInvalid(layer.Forward(*ctx, bad, out, residual, y, &cache),
                "residual_scale must hold 5");
  bad = params.Views<const float>();
  bad.gru_weight_ih =
      TensorView<const float>(params.weight_ih.data(), {kDim, 3 * kDim});
  ExpectInvalid(layer.Forward(*ctx, bad, out, residual, y, &cache),
                "gru.weight_ih must be [15, 5]");
  bad = params.Views<const float>();
  bad.gru_bias_hh = TensorView<const float>();
  ExpectInvalid(layer.Forward(*ctx, bad, out, residual, y, &cache),
                "gru.bias_hh");

  ASSERT_TRUE(
      layer.Forward(*ctx, params.Views<const float>(), out, residual, y, &cache)
          .ok());
  Params grads(config, 71);
  ResidualGrads bad_grads = grads.Views<float>();
  bad_grads.gru_bias_hh = TensorView<float>(nullptr, {3 * kDim});
  const TensorView<const float> d_y(c.data(), shape);
  ExpectInvalid(
      layer.Backward(*ctx, params.Views<const float>(), cache, out, residual,
                     d_y, TensorView<float>(d.data(), shape),
                     TensorView<float>(a.data(), shape), bad_grads),
      "d_gru.bias_hh has null data");
  ExpectInvalid(
      layer.Backward(*ctx, params.Views<const float>(), ResidualCache{}, out,
                     residual, d_y, TensorView<float>(d.data(), shape),
                     TensorView<float>(a.data(), shape), grads.Views<float>()),
      "cache does not come from a gate_residual Forward");
  ExpectInvalid(
      layer.Backward(*ctx, params.Views<const float>(), cache, out, residual,
                     d_y, TensorView<float>(d.data(), {kRows, kDim}),
                     TensorView<float>(a.data(), shape), grads.Views<float>()),
      "d_out has shape");
}

}  // namespace
}  // namespace ftx
