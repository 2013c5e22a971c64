// Dynamic position bias against a double reference of x-transformers' MLP
// (depths 1-3, with and without LayerNorm and log distances), every parameter
// gradient by central differences, PyTorch-style init statistics, parameter
// names, bad inputs.
#include "layers/dynamic_position_bias.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "tests/util/gradcheck.h"
#include "tests/util/random.h"
#include "tests/util/tolerance.h"

namespace ftx {
namespace {

using ::ftx::testing::AllNear;
using ::ftx::testing::RandomUniformVector;

using Tensors = std::vector<std::vector<double>>;  // in ParamShapes() order

// bias [H, n, n] from the MLP written out in double.
std::vector<double> ReferenceBias(const DynamicPositionBiasConfig& config,
                                  const Tensors& params, int64_t n) {
  const int64_t width = config.dim, heads = config.heads, count = 2 * n - 1;
  std::vector<double> out(count * heads);
  for (int64_t p = 0; p < count; ++p) {
    const double d = double(p - (n - 1));
    std::vector<double> x = {config.log_distance
                                 ? (d > 0 ? 1 : (d < 0 ? -1 : 0)) *
                                       std::log(std::abs(d) + 1)
                                 : d};
    size_t index = 0;
    for (int64_t k = 0; k < config.depth; ++k) {
      const std::vector<double>& w = params[index++];
      const std::vector<double>& b = params[index++];
      std::vector<double> z(width);
      for (int64_t o = 0; o < width; ++o) {
        z[o] = b[o];
        for (size_t i = 0; i < x.size(); ++i)
          z[o] += w[o * x.size() + i] * x[i];
      }
      if (config.norm) {
        const std::vector<double>& gamma = params[index++];
        const std::vector<double>& beta = params[index++];
        double mean = 0, var = 0;
        for (double v : z) mean += v / width;
        for (double v : z) var += (v - mean) * (v - mean) / width;
        for (int64_t o = 0; o < width; ++o) {
          z[o] = (z[o] - mean) / std::sqrt(var + 1e-5) * gamma[o] + beta[o];
        }
      }
      for (double& v : z) v = std::max(v, 0.0);
      x = z;
    }
    const std::vector<double>& w = params[index++];
    const std::vector<double>& b = params[index++];
    for (int64_t h = 0; h < heads; ++h) {
      double sum = b[h];
      for (int64_t i = 0; i < width; ++i) sum += w[h * width + i] * x[i];
      out[p * heads + h] = sum;
    }
  }
  std::vector<double> bias(heads * n * n);
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j)
        bias[(h * n + i) * n + j] = out[(i - j + n - 1) * heads + h];
  return bias;
}

// Float storage for every parameter, and views over it.
class Storage {
 public:
  Storage(const DynamicPositionBias& module, uint64_t seed, float fill = NAN)
      : config_(module.config()) {
    int index = 0;
    for (const ParamShape& shape : module.ParamShapes()) {
      shapes_.push_back(shape.shape);
      values_.push_back(
          std::isnan(fill)
              ? RandomUniformVector(shape.shape.NumElements(), seed + index, -1,
                                    1)
              : std::vector<float>(shape.shape.NumElements(), fill));
      ++index;
    }
  }

  DynamicPositionBiasGrads Views() {
    DynamicPositionBiasGrads views;
    size_t index = 0;
    auto next = [&]() {
      TensorView<float> view(values_[index].data(), shapes_[index]);
      ++index;
      return view;
    };
    for (int64_t k = 0; k < config_.depth; ++k) {
      DynamicPositionBiasGrads::Hidden layer;
      layer.weight = next();
      layer.bias = next();
      if (config_.norm) {
        layer.norm_weight = next();
        layer.norm_bias = next();
      }
      views.hidden.push_back(layer);
    }
    views.out_weight = next();
    views.out_bias = next();
    return views;
  }

  Tensors AsDouble() const {
    Tensors tensors;
    for (const auto& v : values_) tensors.push_back(testing::Cast<double>(v));
    return tensors;
  }
  std::vector<std::vector<float>>& values() { return values_; }

 private:
  DynamicPositionBiasConfig config_;
  std::vector<Shape> shapes_;
  std::vector<std::vector<float>> values_;
};

std::vector<DynamicPositionBiasConfig> Configs() {
  return {
      {.dim = 4, .heads = 3, .depth = 1},
      {.dim = 5, .heads = 2, .depth = 2, .log_distance = true, .norm = true},
      {.dim = 3, .heads = 4, .depth = 3, .log_distance = true},
      {.dim = 6, .heads = 2, .depth = 2, .norm = true}};
}

class DynamicPositionBiasTest : public ::testing::Test {
 protected:
  void SetUp() override { ctx_ = Context::Create({.num_threads = 2}).value(); }
  std::unique_ptr<Context> ctx_;
};

TEST_F(DynamicPositionBiasTest, ParamNamesFollowXTransformers) {
  const DynamicPositionBias module =
      DynamicPositionBias::Create(
          {.dim = 8, .heads = 4, .depth = 2, .norm = true})
          .value();
  const std::vector<ParamShape> shapes = module.ParamShapes();
  const std::vector<std::pair<std::string, Shape>> expected = {
      {"mlp.0.0.weight", {8, 1}}, {"mlp.0.0.bias", {8}},
      {"mlp.0.1.weight", {8}},    {"mlp.0.1.bias", {8}},
      {"mlp.1.0.weight", {8, 8}}, {"mlp.1.0.bias", {8}},
      {"mlp.1.1.weight", {8}},    {"mlp.1.1.bias", {8}},
      {"mlp.2.weight", {4, 8}},   {"mlp.2.bias", {4}}};
  ASSERT_EQ(shapes.size(), expected.size());
  for (size_t i = 0; i < shapes.size(); ++i) {
    EXPECT_EQ(shapes[i].name, expected[i].first);
    EXPECT_EQ(shapes[i].shape, expected[i].second) << shapes[i].name;
  }
  const DynamicPositionBias plain =
      DynamicPositionBias::Create({.dim = 8, .heads = 4, .depth = 1}).value();
  EXPECT_EQ(plain.ParamShapes().size(), 4u);
  EXPECT_EQ(plain.ParamShapes()[2].name, "mlp.1.weight");
}

TEST_F(DynamicPositionBiasTest, ForwardMatchesReference) {
  for (const DynamicPositionBiasConfig& config : Configs()) {
    DynamicPositionBias module = DynamicPositionBias::Create(config).value();
    Storage params(module, 10);
    for (int64_t n : {1, 4, 9}) {
      const int64_t row = n + 2;
      std::vector<float> storage(config.heads * n * row, 5.0f);
      ASSERT_TRUE(
          module
              .Forward(*ctx_, AsParams(params.Views()),
                       TensorView<float>(storage.data(), {config.heads, n, n},
                                         {n * row, row, 1}),
                       nullptr)
              .ok());
      const std::vector<double> dense =
          ReferenceBias(config, params.AsDouble(), n);
      std::vector<double> expected(storage.size(), 5.0);
      for (int64_t r = 0; r < config.heads * n; ++r)
        for (int64_t j = 0; j < n; ++j)
          expected[r * row + j] = dense[r * n + j];
      EXPECT_TRUE(AllNear(storage, expected, {2e-6, 2e-6}))
          << "depth " << config.depth << " norm " << config.norm << " n " << n;
    }
  }
}

TEST_F(DynamicPositionBiasTest, BackwardMatchesCentralDifferences) {
  for (const DynamicPositionBiasConfig& config : Configs()) {
    DynamicPositionBias module = DynamicPositionBias::Create(config).value();
    Storage params(module, 20);
    Storage grads(module, 0, 0.25f);
    const int64_t n = 6;
    std::vector<float> bias(config.heads * n * n);
    DynamicPositionBiasCache cache;
    ASSERT_TRUE(
        module
            .Forward(*ctx_, AsParams(params.Views()),
                     TensorView<float>(bias.data(), {config.heads, n, n}),
                     &cache)
            .ok());
    const std::vector<float> d_bias = RandomUniformVector(bias.size(), 30);
    const absl::Status status = module.Backward(
        *ctx_, AsParams(params.Views()), cache,
        TensorView<const float>(d_bias.data(), {config.heads, n, n}),
        grads.Views());
    ASSERT_TRUE(status.ok()) << status;

    const std::vector<double> w(d_bias.begin(), d_bias.end());
    const Tensors base = params.AsDouble();
    const std::vector<ParamShape> shapes = module.ParamShapes();
    for (size_t t = 0; t < base.size(); ++t) {
      std::vector<double> analytic = testing::Cast<double>(grads.values()[t]);
      for (double& g : analytic) g -= 0.25;  // accumulated onto 0.25
      EXPECT_TRUE(testing::GradientMatches(
          [&](const std::vector<double>& v) {
            Tensors perturbed = base;
            perturbed[t] = v;
            return testing::Dot(w, ReferenceBias(config, perturbed, n));
          },
          base[t], analytic, {2e-5, 2e-4}))
          << shapes[t].name << ", depth " << config.depth << " norm "
          << config.norm;
    }
  }
}

TEST_F(DynamicPositionBiasTest, InitStatistics) {
  const DynamicPositionBias module =
      DynamicPositionBias::Create(
          {.dim = 256, .heads = 64, .depth = 2, .norm = true})
          .value();
  Storage params(module, 0, NAN);
  ASSERT_TRUE(module.InitParams(*ctx_, params.Views(), 3).ok());
  const std::vector<ParamShape> shapes = module.ParamShapes();
  for (size_t t = 0; t < shapes.size(); ++t) {
    const std::vector<float>& v = params.values()[t];
    // LayerNorm ("mlp.k.1.*"; depth 2, so no output layer named "mlp.1.*"):
    // weight 1, bias 0.
    const bool layer_norm =
        shapes[t].name.find(".1.weight") != std::string::npos ||
        shapes[t].name.find(".1.bias") != std::string::npos;
    if (layer_norm) {
      const float expected = shapes[t].name.back() == 't' ? 1.0f : 0.0f;
      EXPECT_TRUE(std::all_of(v.begin(), v.end(), [&](float x) {
        return x == expected;
      })) << shapes[t].name;
      continue;
    }
    // Linear: U(-1/sqrt(in), 1/sqrt(in)), in = 1 for the first layer.
    const int64_t fan_in =
        shapes[t].name == "mlp.0.0.weight" || shapes[t].name == "mlp.0.0.bias"
            ? 1
            : 256;
    const double bound = 1.0 / std::sqrt(double(fan_in));
    double sum = 0, sum_sq = 0;
    for (float x : v) {
      EXPECT_LE(std::abs(x), bound) << shapes[t].name;
      sum += x;
      sum_sq += double(x) * x;
    }
    if (v.size() >= 1000) {
      const double mean = sum / v.size();
      EXPECT_NEAR(mean, 0.0, 0.05 * bound) << shapes[t].name;
      EXPECT_NEAR(std::sqrt(sum_sq / v.size() - mean * mean),
                  bound / std::sqrt(3.0), 0.05 * bound)
          << shapes[t].name;
    }
  }
  // Weights and biases are different draws.
  EXPECT_NE(params.values()[0][0], params.values()[1][0]);
}

TEST_F(DynamicPositionBiasTest, BadInputsAreErrors) {
  auto expect_error = [](const absl::Status& status, const char* text) {
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_NE(status.message().find(text), std::string::npos) << status;
  };
  expect_error(
      DynamicPositionBias::Create({.dim = 4, .heads = 2, .depth = 0}).status(),
      "depth must be >= 1");
  DynamicPositionBias module =
      DynamicPositionBias::Create({.dim = 4, .heads = 2, .depth = 1}).value();
  Storage params(module, 1);
  std::vector<float> buffer(200);
  // x-transformers assumes a square score matrix.
  expect_error(
      module.Forward(*ctx_, AsParams(params.Views()),
                     TensorView<float>(buffer.data(), {2, 3, 4}), nullptr),
      "[H = 2, n, n]");
  expect_error(
      module.Forward(*ctx_, AsParams(params.Views()),
                     TensorView<float>(buffer.data(), {3, 4, 4}), nullptr),
      "[H = 2, n, n]");
  DynamicPositionBiasParams missing = AsParams(params.Views());
  missing.hidden.clear();
  expect_error(
      module.Forward(*ctx_, missing,
                     TensorView<float>(buffer.data(), {2, 4, 4}), nullptr),
      "expected 1 hidden layers");
  DynamicPositionBiasParams wrong = AsParams(params.Views());
  wrong.out_weight = TensorView<const float>(buffer.data(), {2, 3});
  expect_error(
      module.Forward(*ctx_, wrong, TensorView<float>(buffer.data(), {2, 4, 4}),
                     nullptr),
      "mlp.1.weight must be a contiguous CPU [2, 4]");
  DynamicPositionBiasParams with_norm = AsParams(params.Views());
  with_norm.hidden[0].norm_weight = TensorView<const float>(buffer.data(), {4});
  expect_error(
      module.Forward(*ctx_, with_norm,
                     TensorView<float>(buffer.data(), {2, 4, 4}), nullptr),
      "norm = false");

  // A cache from another n.
  DynamicPositionBiasCache cache;
  ASSERT_TRUE(module
                  .Forward(*ctx_, AsParams(params.Views()),
                           TensorView<float>(buffer.data(), {2, 3, 3}), &cache)
                  .ok());
  Storage grads(module, 0, 0.0f);
  const absl::Status status = module.Backward(
      *ctx_, AsParams(params.Views()), cache,
      TensorView<const float>(buffer.data(), {2, 4, 4}), grads.Views());
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  DynamicPositionBiasGrads bad_grads = grads.Views();
  bad_grads.out_bias = TensorView<float>(buffer.data(), {3});
  expect_error(
      module.Backward(*ctx_, AsParams(params.Views()), cache,
                      TensorView<const float>(buffer.data(), {2, 3, 3}),
                      bad_grads),
      "d_mlp.1.bias must be a contiguous CPU [2]");
}

}  // namespace
}  // namespace ftx
