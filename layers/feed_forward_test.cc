// FeedForward against a double reference of x-transformers 0.26.6's
// FeedForward (every activation, both GLU flavours, post_act_ln, dropout,
// no_bias, dim_out, fractional mult); gradients of x and every parameter by
// central differences; dropout semantics and determinism; chunked runs against
// the unchunked one (bitwise y and d_x); state_dict names; initialisation; bad
// input.
#include "layers/feed_forward.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/base/philox.h"
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
    case Activation::kReluSquared:
      return x > 0 ? x * x : 0.0;
    case Activation::kSigmoid:
      return 1.0 / (1.0 + std::exp(-x));
    default:
      ADD_FAILURE() << "activation not in the test's reference";
      return 0.0;
  }
}

// Parameters in double; empty vectors for absent ones.
struct RefParams {
  std::vector<double> in_weight, in_bias, norm_weight, norm_bias, out_weight,
      out_bias;
};

// x-transformers FeedForward.forward on rows of x, in double:
// net.0 (Linear + act, or GLU), net.1 (LayerNorm or Identity), net.2 (dropout
// with the documented Philox mask), net.3 (Linear).
std::vector<double> Reference(const FeedForwardConfig& config,
                              Activation activation, int64_t inner,
                              int64_t dim_out, const RefParams& p,
                              const std::vector<double>& x,
                              const FeedForwardMode& mode) {
  const int64_t C = config.dim;
  const int64_t P = config.glu ? 2 * inner : inner;
  const int64_t rows = x.size() / C;
  std::vector<double> y(rows * dim_out), projected(P), hidden(inner);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < P; ++j) {
      double sum = p.in_bias.empty() ? 0.0 : p.in_bias[j];
      for (int64_t c = 0; c < C; ++c)
        sum += p.in_weight[j * C + c] * x[r * C + c];
      projected[j] = sum;
    }
    for (int64_t j = 0; j < inner; ++j) {
      if (!config.glu) {
        hidden[j] = Act(activation, projected[j]);
      } else if (config.glu_activated_half == GluActivatedHalf::kSecond) {
        hidden[j] = projected[j] * Act(activation, projected[inner + j]);
      } else {
        hidden[j] = Act(activation, projected[j]) * projected[inner + j];
      }
    }
    if (config.post_act_ln) {
      double mean = 0, var = 0;
      for (double h : hidden) mean += h / inner;
      for (double h : hidden) var += (h - mean) * (h - mean) / inner;
      for (int64_t j = 0; j < inner; ++j) {
        hidden[j] =
            (hidden[j] - mean) / std::sqrt(var + 1e-5) * p.norm_weight[j] +
            p.norm_bias[j];
      }
    }
    if (mode.training && config.dropout > 0) {
      for (int64_t j = 0; j < inner; ++j) {
        const bool keep = RandomUniform(mode.seed, kFeedForwardDropoutStream,
                                        r * inner + j) >= config.dropout;
        hidden[j] = keep ? hidden[j] / (1.0 - config.dropout) : 0.0;
      }
    }
    for (int64_t o = 0; o < dim_out; ++o) {
      double sum = p.out_bias.empty() ? 0.0 : p.out_bias[o];
      for (int64_t j = 0; j < inner; ++j) {
        sum += p.out_weight[o * inner + j] * hidden[j];
      }
      y[r * dim_out + o] = sum;
    }
  }
  return y;
}

template <typename T>
TensorView<T> ViewOf(std::vector<T>& values, const Shape& shape) {
  if (values.empty()) return TensorView<T>();
  return TensorView<T>(values.data(), shape);
}

// A FeedForward with random parameters (present ones only) and views of them.
struct Instance {
  explicit Instance(const FeedForwardConfig& config, uint64_t seed = 1)
      : ff(FeedForward::Create(config).value()) {
    const int64_t inner = ff.inner_dim(), C = config.dim,
                  P = config.glu ? 2 * inner : inner;
    in_weight = RandomUniformVector(P * C, seed, -0.8, 0.8);
    if (config.glu || !config.no_bias) {
      in_bias = RandomUniformVector(P, seed + 1, -0.5, 0.5);
    }
    if (config.post_act_ln) {
      norm_weight = RandomUniformVector(inner, seed + 2, 0.5, 1.5);
      norm_bias = RandomUniformVector(inner, seed + 3, -0.5, 0.5);
    }
    out_weight = RandomUniformVector(ff.dim_out() * inner, seed + 4, -0.5, 0.5);
    if (!config.no_bias) {
      out_bias = RandomUniformVector(ff.dim_out(), seed + 5, -0.5, 0.5);
    }
  }

  FeedForwardParams Params() {
    return {ViewOf(in_weight, {InRows(), ff.config().dim}),
            ViewOf(in_bias, {InRows()}),
            ViewOf(norm_weight, {ff.inner_dim()}),
            ViewOf(norm_bias, {ff.inner_dim()}),
            ViewOf(out_weight, {ff.dim_out(), ff.inner_dim()}),
            ViewOf(out_bias, {ff.dim_out()})};
  }
  RefParams Ref() const {
    return {Cast<double>(in_weight),   Cast<double>(in_bias),
            Cast<double>(norm_weight), Cast<double>(norm_bias),
            Cast<double>(out_weight),  Cast<double>(out_bias)};
  }
  int64_t InRows() const {
    return ff.config().glu ? 2 * ff.inner_dim() : ff.inner_dim();
  }

  FeedForward ff;
  std::vector<float> in_weight, in_bias, norm_weight, norm_bias, out_weight,
      out_bias;
};

// Gradient buffers shaped like an instance's parameters, each starting at
// kStart to show that Backward accumulates.
constexpr float kStart = 0.25f;
struct Grads {
  explicit Grads(const Instance& instance)
      : in_weight(instance.in_weight.size(), kStart),
        in_bias(instance.in_bias.size(), kStart),
        norm_weight(instance.norm_weight.size(), kStart),
        norm_bias(instance.norm_bias.size(), kStart),
        out_weight(instance.out_weight.size(), kStart),
        out_bias(instance.out_bias.size(), kStart),
        in_rows(instance.InRows()),
        dim(instance.ff.config().dim),
        inner(instance.ff.inner_dim()),
        dim_out(instance.ff.dim_out()) {}

  FeedForwardGrads Views() {
    return {ViewOf(in_weight, {in_rows, dim}),    ViewOf(in_bias, {in_rows}),
            ViewOf(norm_weight, {inner}),         ViewOf(norm_bias, {inner}),
            ViewOf(out_weight, {dim_out, inner}), ViewOf(out_bias, {dim_out})};
  }

  std::vector<float> in_weight, in_bias, norm_weight, norm_bias, out_weight,
      out_bias;
  int64_t in_rows, dim, inner, dim_out;
};

std::vector<double> MinusStart(const std::vector<float>& grad) {
  std::vector<double> result = Cast<double>(grad);
  for (double& g : result) g -= kStart;
  return result;
}

struct Case {
  const char* name;
  FeedForwardConfig config;
  FeedForwardMode mode;
};

// Forward against the reference, then d_x and every parameter gradient
// against central differences of the reference.
void CheckAgainstReference(const Case& test_case) {
  SCOPED_TRACE(test_case.name);
  auto ctx = Context::Create({.num_threads = 2}).value();
  constexpr int64_t kBatch = 2, kTime = 3;
  Instance instance(test_case.config);
  FeedForward& ff = instance.ff;
  const int64_t C = test_case.config.dim, O = ff.dim_out();
  std::vector<float> x = RandomUniformVector(kBatch * kTime * C, 7, -1.5, 1.5);
  std::vector<float> y(kBatch * kTime * O);
  FeedForwardCache cache;
  ASSERT_TRUE(ff.Forward(*ctx, instance.Params(), ViewOf(x, {kBatch, kTime, C}),
                         test_case.mode, ViewOf(y, {kBatch, kTime, O}), &cache)
                  .ok());
  const RefParams ref = instance.Ref();
  const std::vector<double> xd = Cast<double>(x);
  auto reference = [&](const RefParams& p, const std::vector<double>& input) {
    return Reference(test_case.config, ff.activation(), ff.inner_dim(), O, p,
                     input, test_case.mode);
  };
  EXPECT_TRUE(AllNear(y, reference(ref, xd), {1e-5, 1e-4}));

  std::vector<float> d_y = RandomUniformVector(y.size(), 8);
  std::vector<float> d_x(x.size(), 5.0f);
  Grads grads(instance);
  ASSERT_TRUE(ff.Backward(*ctx, instance.Params(), cache,
                          ViewOf(x, {kBatch, kTime, C}),
                          ViewOf(d_y, {kBatch, kTime, O}),
                          ViewOf(d_x, {kBatch, kTime, C}), grads.Views())
                  .ok());
  const std::vector<double> w = Cast<double>(d_y);
  const testing::Tolerance tolerance{3e-5, 3e-4};
  EXPECT_TRUE(GradientMatches(
      [&](const std::vector<double>& v) { return Dot(w, reference(ref, v)); },
      xd, Cast<double>(d_x), tolerance))
      << "d_x";
  const struct {
    const char* name;
    std::vector<double> RefParams::*member;
    const std::vector<float>* grad;
  } params[] = {
      {"in_weight", &RefParams::in_weight, &grads.in_weight},
      {"in_bias", &RefParams::in_bias, &grads.in_bias},
      {"norm_weight", &RefParams::norm_weight, &grads.norm_weight},
      {"norm_bias", &RefParams::norm_bias, &grads.norm_bias},
      {"out_weight", &RefParams::out_weight, &grads.out_weight},
      {"out_bias", &RefParams::out_bias, &grads.out_bias},
  };
  for (const auto& param : params) {
    ASSERT_EQ((ref.*param.member).size(), param.grad->size()) << param.name;
    if (param.grad->empty()) continue;
    EXPECT_TRUE(GradientMatches(
        [&](const std::vector<double>& v) {
          RefParams changed = ref;
          changed.*param.member = v;
          return Dot(w, reference(changed, xd));
        },
        ref.*param.member, MinusStart(*param.grad), tolerance))
        << param.name;
  }
}

TEST(FeedForwardTest, EveryOptionMatchesReference) {
  const FeedForwardMode eval{};
  const FeedForwardMode train{.training = true, .seed = 42};
  const Case cases[] = {
      {"gelu (x-transformers default)", {.dim = 5, .mult = 2}, eval},
      {"relu (fast-transformers)",
       {.dim = 5, .mult = 2, .activation = Activation::kRelu},
       eval},
      {"swish", {.dim = 5, .mult = 2, .swish = true}, eval},
      {"relu_squared over swish",
       {.dim = 5, .mult = 2, .swish = true, .relu_squared = true},
       eval},
      {"GEGLU x * act(gate)", {.dim = 5, .mult = 2, .glu = true}, eval},
      {"GEGLU act(x) * v",
       {.dim = 5,
        .mult = 2,
        .glu = true,
        .glu_activated_half = GluActivatedHalf::kFirst},
       eval},
      {"SwiGLU no_bias (GLU keeps its bias)",
       {.dim = 5, .mult = 2, .swish = true, .glu = true, .no_bias = true},
       eval},
      {"GLU sigmoid",
       {.dim = 5, .mult = 2, .activation = Activation::kSigmoid, .glu = true},
       eval},
      {"post_act_ln", {.dim = 5, .mult = 2, .post_act_ln = true}, eval},
      {"dropout training", {.dim = 5, .mult = 2, .dropout = 0.3f}, train},
      {"dropout in eval is off", {.dim = 5, .mult = 2, .dropout = 0.3f}, eval},
      {"dim_out and fractional mult",
       {.dim = 5, .dim_out = 3, .mult = 2.5},
       eval},
      {"everything",
       {.dim = 5,
        .dim_out = 3,
        .mult = 2.5,
        .relu_squared = true,
        .glu = true,
        .glu_activated_half = GluActivatedHalf::kFirst,
        .post_act_ln = true,
        .dropout = 0.25f,
        .no_bias = true},
       train},
      {"everything in 3 chunks",
       {.dim = 5,
        .mult = 2,
        .glu = true,
        .post_act_ln = true,
        .dropout = 0.25f,
        .chunks = 3},
       train},
  };
  for (const Case& test_case : cases) CheckAgainstReference(test_case);
}

TEST(FeedForwardTest, ActivationPrecedenceAndInnerDim) {
  EXPECT_EQ(FeedForward::Create({.dim = 4}).value().activation(),
            Activation::kGelu);
  EXPECT_EQ(FeedForward::Create({.dim = 4, .swish = true}).value().activation(),
            Activation::kSilu);
  EXPECT_EQ(FeedForward::Create({.dim = 4, .swish = true, .relu_squared = true})
                .value()
                .activation(),
            Activation::kReluSquared);
  EXPECT_EQ(FeedForward::Create({.dim = 4, .activation = Activation::kRelu})
                .value()
                .activation(),
            Activation::kRelu);
  EXPECT_EQ(FeedForward::Create({.dim = 4}).value().inner_dim(), 16);
  EXPECT_EQ(FeedForward::Create({.dim = 7, .mult = 2.5}).value().inner_dim(),
            17);  // int(17.5)
  EXPECT_EQ(FeedForward::Create({.dim = 7}).value().dim_out(), 7);
  EXPECT_EQ(FeedForward::Create({.dim = 7, .dim_out = 2}).value().dim_out(), 2);
}

std::vector<std::string> Names(const FeedForward& ff) {
  std::vector<std::string> names;
  for (const ParamShape& param : ff.ParamShapes()) {
    names.push_back(absl::StrCat(param.name, " ", param.shape.ToString()));
  }
  return names;
}

TEST(FeedForwardTest, StateDictNamesOfXTransformers0266) {
  const std::string in = Shape{16, 4}.ToString(),
                    glu_in = Shape{32, 4}.ToString(),
                    inner = Shape{16}.ToString(), out = Shape{4, 16}.ToString(),
                    out_bias = Shape{4}.ToString();
  EXPECT_EQ(Names(FeedForward::Create({.dim = 4}).value()),
            (std::vector<std::string>{
                "net.0.0.weight " + in, "net.0.0.bias " + inner,
                "net.3.weight " + out, "net.3.bias " + out_bias}));
  EXPECT_EQ(Names(FeedForward::Create({.dim = 4, .no_bias = true}).value()),
            (std::vector<std::string>{"net.0.0.weight " + in,
                                      "net.3.weight " + out}));
  EXPECT_EQ(
      Names(FeedForward::Create({.dim = 4, .glu = true, .post_act_ln = true})
                .value()),
      (std::vector<std::string>{"net.0.proj.weight " + glu_in,
                                "net.0.proj.bias " + Shape{32}.ToString(),
                                "net.1.weight " + inner, "net.1.bias " + inner,
                                "net.3.weight " + out,
                                "net.3.bias " + out_bias}));
  EXPECT_EQ(Names(FeedForward::Create({.dim = 4, .glu = true, .no_bias = true})
                      .value()),
            (std::vector<std::string>{"net.0.proj.weight " + glu_in,
                                      "net.0.proj.bias " + Shape{32}.ToString(),
                                      "net.3.weight " + out}));
  EXPECT_EQ(Names(FeedForward::Create({.dim = 4, .dim_out = 2}).value()).back(),
            "net.3.bias " + Shape{2}.ToString());
}

TEST(FeedForwardTest, InitFollowsTorch) {
  auto ctx = Context::Create({.num_threads = 1}).value();
  for (bool glu : {false, true}) {
    SCOPED_TRACE(glu ? "glu" : "plain");
    const FeedForwardConfig config{
        .dim = 16, .glu = glu, .post_act_ln = true, .zero_init_output = true};
    Instance instance(config);
    Grads views(instance);  // float views of the same shapes to initialise
    ASSERT_TRUE(instance.ff.InitParams(*ctx, 3, views.Views()).ok());
    const double in_bound = 1.0 / 4.0;  // 1 / sqrt(dim)
    double squares = 0;
    for (float w : views.in_weight) {
      EXPECT_LE(std::abs(w), in_bound);
      squares += double(w) * w;
    }
    EXPECT_NEAR(squares / views.in_weight.size(), in_bound * in_bound / 3,
                0.1 * in_bound * in_bound / 3);
    for (float b : views.in_bias) EXPECT_LE(std::abs(b), in_bound);
    EXPECT_NE(views.in_bias[0], views.in_bias[1]);
    EXPECT_EQ(views.norm_weight, std::vector<float>(64, 1.0f));
    EXPECT_EQ(views.norm_bias, std::vector<float>(64, 0.0f));
    EXPECT_EQ(views.out_weight, std::vector<float>(16 * 64, 0.0f));
    EXPECT_EQ(views.out_bias, std::vector<float>(16, 0.0f));
  }
  Instance plain(FeedForwardConfig{.dim = 16});
  Grads views(plain);
  ASSERT_TRUE(plain.ff.InitParams(*ctx, 3, views.Views()).ok());
  const double out_bound = 1.0 / 8.0;  // 1 / sqrt(inner = 64)
  double squares = 0;
  for (float w : views.out_weight) {
    EXPECT_LE(std::abs(w), out_bound);
    squares += double(w) * w;
  }
  EXPECT_NEAR(squares / views.out_weight.size(), out_bound * out_bound / 3,
              0.1 * out_bound * out_bound / 3);
  for (float b : views.out_bias) EXPECT_LE(std::abs(b), out_bound);
}

// With identity projections and relu on positive input the block is y =
// dropout(x): every element is 0 or x / (1 - p), about p of them 0, the mask
// follows the seed, eval mode is exact identity, and Backward applies the same
// mask to the gradient.
TEST(FeedForwardTest, DropoutSemanticsAndDeterminism) {
  auto ctx = Context::Create({.num_threads = 4}).value();
  constexpr int64_t kRows = 64, kDim = 64;
  constexpr float kP = 0.25f;
  const FeedForwardConfig config{.dim = kDim,
                                 .mult = 1,
                                 .activation = Activation::kRelu,
                                 .dropout = kP,
                                 .no_bias = true};
  FeedForward ff = FeedForward::Create(config).value();
  std::vector<float> identity(kDim * kDim, 0.0f);
  for (int64_t i = 0; i < kDim; ++i) identity[i * kDim + i] = 1.0f;
  const FeedForwardParams params{ViewOf(identity, {kDim, kDim}), {}, {}, {},
                                 ViewOf(identity, {kDim, kDim}), {}};
  std::vector<float> x = RandomUniformVector(kRows * kDim, 3, 0.5, 1.5);
  auto run = [&](const FeedForwardMode& mode, FeedForwardCache* cache) {
    std::vector<float> y(x.size());
    EXPECT_TRUE(ff.Forward(*ctx, params, ViewOf(x, {kRows, kDim}), mode,
                           ViewOf(y, {kRows, kDim}), cache)
                    .ok());
    return y;
  };
  FeedForwardCache cache;
  const std::vector<float> y = run({.training = true, .seed = 7}, &cache);
  int64_t dropped = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    if (y[i] == 0.0f) {
      ++dropped;
    } else {
      EXPECT_NEAR(y[i], x[i] / (1.0f - kP), 1e-6f * x[i]) << i;
    }
  }
  const double rate = double(dropped) / y.size();
  EXPECT_NEAR(rate, kP, 0.03);
  EXPECT_EQ(run({.training = true, .seed = 7}, nullptr), y);
  EXPECT_NE(run({.training = true, .seed = 8}, nullptr), y);
  EXPECT_EQ(run({.training = false, .seed = 7}, nullptr), x);
  EXPECT_EQ(run({.training = false, .seed = 8}, nullptr), x);

  std::vector<float> d_y = RandomUniformVector(x.size(), 4);
  std::vector<float> d_x(x.size()), d_weight(kDim * kDim), d_out(kDim * kDim);
  ASSERT_TRUE(ff.Backward(*ctx, params, cache, ViewOf(x, {kRows, kDim}),
                          ViewOf(d_y, {kRows, kDim}),
                          ViewOf(d_x, {kRows, kDim}),
                          {ViewOf(d_weight, {kDim, kDim}),
                           {},
                           {},
                           {},
                           ViewOf(d_out, {kDim, kDim}),
                           {}})
                  .ok());
  for (size_t i = 0; i < y.size(); ++i) {
    // d_x = W1^T relu'(.) mask W2^T d_y / (1 - p) with identities.
    const float expected = y[i] == 0.0f ? 0.0f : d_y[i] / (1.0f - kP);
    EXPECT_NEAR(d_x[i], expected, 1e-6f) << i;
  }
}

::testing::AssertionResult BitwiseEqual(const std::vector<float>& a,
                                        const std::vector<float>& b) {
  if (a.size() != b.size()) return ::testing::AssertionFailure() << "sizes";
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0) {
      return ::testing::AssertionFailure()
             << "first difference at " << i << ": " << a[i] << " vs " << b[i];
    }
  }
  return ::testing::AssertionSuccess();
}

// Equal within 1e-5 of the largest magnitude (plus 1e-5 relative).
::testing::AssertionResult SameUpToRounding(
    const std::vector<float>& actual, const std::vector<float>& expected) {
  float scale = 0.0f;
  for (float value : expected) scale = std::max(scale, std::abs(value));
  return AllNear(actual, expected, {1e-5 * scale, 1e-5});
}

struct RunResult {
  std::vector<float> y, d_x;
  Grads grads;
  int64_t saved_tensors;
};

// Forward and Backward of `config` with `chunks` pieces on strided x [R, C].
RunResult RunChunked(const Context& ctx, FeedForwardConfig config,
                     int64_t chunks, int64_t rows,
                     const FeedForwardMode& mode) {
  config.chunks = chunks;
  Instance instance(config, 11);
  const int64_t C = config.dim, O = instance.ff.dim_out();
  testing::StridedMatrix x(rows, C, 3, 12);
  testing::StridedMatrix d_y(rows, O, 1, 13);
  testing::StridedMatrix d_x(rows, C, 2, 14);
  std::vector<float> y(rows * O);
  FeedForwardCache cache;
  EXPECT_TRUE(instance.ff
                  .Forward(ctx, instance.Params(), x.const_view(), mode,
                           ViewOf(y, {rows, O}), &cache)
                  .ok());
  Grads grads(instance);
  EXPECT_TRUE(instance.ff
                  .Backward(ctx, instance.Params(), cache, x.const_view(),
                            d_y.const_view(), d_x.view(), grads.Views())
                  .ok());
  EXPECT_TRUE(x.PaddingIntact() && d_y.PaddingIntact() && d_x.PaddingIntact());
  return {y, d_x.Dense(), grads, static_cast<int64_t>(cache.saved.size())};
}

TEST(FeedForwardTest, ChunksGiveTheSameResults) {
  auto ctx = Context::Create({.num_threads = 3}).value();
  const struct {
    const char* name;
    FeedForwardConfig config;
    int64_t rows;
    FeedForwardMode mode;
  } setups[] = {
      {"gelu", {.dim = 6, .mult = 3}, 14, {}},
      {"act(x) * v GLU, post_act_ln, dropout",
       {.dim = 6,
        .mult = 3,
        .swish = true,
        .glu = true,
        .glu_activated_half = GluActivatedHalf::kFirst,
        .post_act_ln = true,
        .dropout = 0.2f},
       14,
       {.training = true, .seed = 99}},
      // Large enough for the threaded GEMM and two k blocks of 256.
      {"large x * act(gate) GLU",
       {.dim = 64, .mult = 4.5, .glu = true, .dropout = 0.1f},
       301,
       {.training = true, .seed = 5}},
  };
  for (const auto& setup : setups) {
    SCOPED_TRACE(setup.name);
    const RunResult whole =
        RunChunked(*ctx, setup.config, 1, setup.rows, setup.mode);
    EXPECT_GT(whole.saved_tensors, 0);
    for (int64_t chunks : {2, 3, 4, 5, 7, 13, 14, 20}) {
      SCOPED_TRACE(absl::StrCat(chunks, " chunks"));
      const RunResult pieces =
          RunChunked(*ctx, setup.config, chunks, setup.rows, setup.mode);
      EXPECT_EQ(pieces.saved_tensors, 0);
      EXPECT_TRUE(BitwiseEqual(pieces.y, whole.y));
      EXPECT_TRUE(BitwiseEqual(pieces.d_x, whole.d_x));
      // Parameter gradients sum the pieces in another order: float rounding
      // of sums over all rows, relative to the gradient's scale.
      EXPECT_TRUE(
          SameUpToRounding(pieces.grads.in_weight, whole.grads.in_weight));
      EXPECT_TRUE(SameUpToRounding(pieces.grads.in_bias, whole.grads.in_bias));
      EXPECT_TRUE(
          SameUpToRounding(pieces.grads.norm_weight, whole.grads.norm_weight));
      EXPECT_TRUE(
          SameUpToRounding(pieces.grads.norm_bias, whole.grads.norm_bias));
      EXPECT_TRUE(
          SameUpToRounding(pieces.grads.out_weight, whole.grads.out_weight));
      EXPECT_TRUE(
          SameUpToRounding(pieces.grads.out_bias, whole.grads.out_bias));
    }
  }
}

TEST(FeedForwardTest, ActivationBuffersShrinkWithChunks) {
  // inner = 32 (glu: projection 64), post_act_ln; 14 rows.
  const FeedForwardConfig config{.dim = 8, .glu = true, .post_act_ln = true};
  FeedForward whole = FeedForward::Create(config).value();
  // projection 64 + activation 32 + LayerNorm out 32 + mean, rstd 2 + d_hidden
  // 32 + d_projection 64, for all 14 rows.
  EXPECT_EQ(whole.ChunkRows(14), 14);
  EXPECT_EQ(whole.ActivationFloats(14), 14 * (64 + 32 + 32 + 2 + 32 + 64));
  FeedForwardConfig chunked = config;
  chunked.chunks = 4;
  FeedForward pieces = FeedForward::Create(chunked).value();
  // ceil(14 / 4) = 4 rows at a time; the piece reuses its projection buffer
  // for the projection's gradient.
  EXPECT_EQ(pieces.ChunkRows(14), 4);
  EXPECT_EQ(pieces.ActivationFloats(14), 4 * (64 + 32 + 32 + 2 + 32));
  chunked.chunks = 20;
  EXPECT_EQ(FeedForward::Create(chunked).value().ChunkRows(14), 1);
}

TEST(FeedForwardTest, InferenceWithoutCacheAndStaleCaches) {
  auto ctx = Context::Create({.num_threads = 2}).value();
  Instance instance(FeedForwardConfig{.dim = 4, .post_act_ln = true});
  std::vector<float> x = RandomUniformVector(24, 1), y(24), inference(24);
  const auto x_view = ViewOf(x, {2, 3, 4});
  FeedForwardCache cache;
  ASSERT_TRUE(instance.ff
                  .Forward(*ctx, instance.Params(), x_view, {},
                           ViewOf(inference, {2, 3, 4}), nullptr)
                  .ok());
  std::vector<float> d_x(24);
  Grads grads(instance);
  const absl::Status never =
      instance.ff.Backward(*ctx, instance.Params(), cache, x_view, x_view,
                           ViewOf(d_x, {2, 3, 4}), grads.Views());
  EXPECT_EQ(never.code(), absl::StatusCode::kFailedPrecondition) << never;
  ASSERT_TRUE(instance.ff
                  .Forward(*ctx, instance.Params(), x_view, {},
                           ViewOf(y, {2, 3, 4}), &cache)
                  .ok());
  EXPECT_EQ(inference, y);
  const auto shorter = ViewOf(x, {1, 3, 4});
  const absl::Status other =
      instance.ff.Backward(*ctx, instance.Params(), cache, shorter, shorter,
                           ViewOf(d_x, {1, 3, 4}), grads.Views());
  EXPECT_EQ(other.code(), absl::StatusCode::kFailedPrecondition) << other;
}

void ExpectInvalid(const absl::Status& status, const std::string& needle) {
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(status.message().find(needle), std::string::npos)
      << "message \"" << status.message() << "\" does not mention " << needle;
}

TEST(FeedForwardTest, BadInputIsAnError) {
  ExpectInvalid(FeedForward::Create({.dim = 0}).status(), "dim");
  ExpectInvalid(FeedForward::Create({.dim = 4, .mult = 0.1}).status(), "mult");
  ExpectInvalid(FeedForward::Create({.dim = 4, .dropout = 1.0f}).status(),
                "dropout");
  ExpectInvalid(FeedForward::Create({.dim = 4, .dropout = -0.1f}).status(),
                "dropout");
  ExpectInvalid(FeedForward::Create({.dim = 4, .chunks = 0}).status(),
                "chunks");
  ExpectInvalid(
      FeedForward::Create({.dim = 4, .activation = static_cast<Activation>(42)})
          .status(),
      "activation");

  auto ctx = Context::Create({.num_threads = 1}).value();
  Instance instance(FeedForwardConfig{.dim = 4, .mult = 2});
  FeedForward& ff = instance.ff;
  const FeedForwardParams params = instance.Params();
  std::vector<float> x(24, 1.0f), y(24);
  const TensorView<const float> x_view(x.data(), {6, 4});
  const TensorView<float> y_view(y.data(), {6, 4});
  ExpectInvalid(
      ff.Forward(*ctx, params, TensorView<const float>(x.data(), {4, 6}), {},
                 TensorView<float>(y.data(), {4, 6}), nullptr),
      "expected x [..., 4]");
  ExpectInvalid(ff.Forward(*ctx, params, x_view, {},
                           TensorView<float>(y.data(), {3, 4}), nullptr),
                "y [..., 4]");
  ExpectInvalid(
      ff.Forward(*ctx, params,
                 TensorView<const float>(x.data(), {6, 4}, Device::Cuda()), {},
                 y_view, nullptr),
      "cuda");
  ExpectInvalid(
      ff.Forward(*ctx, params, TensorView<const float>(nullptr, {6, 4}), {},
                 y_view, nullptr),
      "null");
  ExpectInvalid(
      ff.Forward(*ctx, params,
                 TensorView<const float>(x.data(), {3, 4}, Strides{8, 2, 0, 0}),
                 {}, TensorView<float>(y.data(), {3, 4}), nullptr),
      "unit stride");
  FeedForwardParams missing = params;
  missing.in_bias = {};
  ExpectInvalid(ff.Forward(*ctx, missing, x_view, {}, y_view, nullptr),
                "net.0.0.bias is required");
  FeedForwardParams wrong = params;
  wrong.out_weight = ViewOf(instance.in_weight, {4, 4});
  ExpectInvalid(ff.Forward(*ctx, wrong, x_view, {}, y_view, nullptr),
                "net.3.weight must be");
  FeedForwardParams extra = params;
  extra.norm_weight = ViewOf(instance.out_bias, {4});
  ExpectInvalid(ff.Forward(*ctx, extra, x_view, {}, y_view, nullptr),
                "net.1.weight must be an empty view");
  Instance no_bias(FeedForwardConfig{.dim = 4, .mult = 2, .no_bias = true});
  ExpectInvalid(no_bias.ff.Forward(*ctx, params, x_view, {}, y_view, nullptr),
                "net.0.0.bias must be an empty view");

  FeedForwardCache cache;
  ASSERT_TRUE(ff.Forward(*ctx, params, x_view, {}, y_view, &cache).ok());
  std::vector<float> d_x(24);
  Grads grads(instance);
  FeedForwardGrads missing_grad = grads.Views();
  missing_grad.out_bias = {};
  ExpectInvalid(ff.Backward(*ctx, params, cache, x_view, x_view,
                            ViewOf(d_x, {6, 4}), missing_grad),
                "d_net.3.bias is required");
  ExpectInvalid(ff.Backward(*ctx, params, cache, x_view,
                            TensorView<const float>(x.data(), {4, 6}),
                            ViewOf(d_x, {6, 4}), grads.Views()),
                "d_y");
  ExpectInvalid(ff.Backward(*ctx, params, cache, x_view, x_view,
                            ViewOf(d_x, {4, 6}), grads.Views()),
                "d_x");
}

}  // namespace
}  // namespace ftx
