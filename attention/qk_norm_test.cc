// QkNorm: forward against a double reference of x-transformers' l2norm and
// scales (0.26.6 learned temperature; 1.x groups, fixed scale and learned
// per-dimension scales), cosine-sim attention through the "full" mechanism,
// central-difference gradients of inputs and parameters, bad arguments.
#include "attention/qk_norm.h"

#include <cmath>
#include <vector>

#include "attention/full.h"
#include "gtest/gtest.h"
#include "tests/util/gradcheck.h"
#include "tests/util/random.h"
#include "tests/util/tolerance.h"

namespace ftx {
namespace {

constexpr int64_t kN = 2, kL = 5, kS = 7, kH = 3, kE = 8;

struct Case {
  QkNormConfig config;
  std::vector<double> scale, q_scale, k_scale;  // empty when absent
};

Case LearnedTemperatureCase() {
  Case c{{.heads = kH,
          .head_dim = kE,
          .variant = QkNormVariant::kLearnedTemperature}};
  c.scale = {-3.0, -1.2, -5.5};  // the last one is below the 1e-2 clamp
  return c;
}

Case FixedScaleCase() {
  Case c{{.heads = kH,
          .head_dim = kE,
          .variant = QkNormVariant::kFixedScale,
          .groups = 2,
          .fixed_scale = 10.0f,
          .dim_scale = true}};
  c.q_scale = testing::RandomUniformVector<double>(kH * kE, 11, 0.5, 1.5);
  c.k_scale = testing::RandomUniformVector<double>(kH * kE, 12, 0.5, 1.5);
  return c;
}

double ScoreScale(const Case& c, int64_t h) {
  if (c.config.variant == QkNormVariant::kFixedScale)
    return c.config.fixed_scale;
  return 1.0 / std::max(std::exp(c.scale[h]), 1e-2);
}

// Double reference of one side: rows [X, H, E] flattened per batch item.
std::vector<double> Reference(const Case& c, const std::vector<double>& x,
                              const std::vector<double>& gain, bool queries) {
  std::vector<double> y(x.size());
  const int64_t width = kE / c.config.groups;
  for (size_t row = 0; row < x.size() / kE; ++row) {
    const int64_t h = row % kH;
    for (int64_t g = 0; g < c.config.groups; ++g) {
      double sum = 0;
      for (int64_t e = g * width; e < (g + 1) * width; ++e) {
        sum += x[row * kE + e] * x[row * kE + e];
      }
      const double norm = std::max(std::sqrt(sum), 1e-12);
      for (int64_t e = g * width; e < (g + 1) * width; ++e) {
        double m = gain.empty() ? 1.0 : gain[h * kE + e];
        if (queries) m *= ScoreScale(c, h);
        y[row * kE + e] = x[row * kE + e] / norm * m;
      }
    }
  }
  return y;
}

struct Buffers {
  std::vector<float> scale, q_scale, k_scale;
  QkNormParams Params() const {
    return {
        scale.empty() ? TensorView<const float>()
                      : TensorView<const float>(scale.data(), {1, kH, 1, 1}),
        q_scale.empty() ? TensorView<const float>()
                        : TensorView<const float>(q_scale.data(), {kH, 1, kE}),
        k_scale.empty() ? TensorView<const float>()
                        : TensorView<const float>(k_scale.data(), {kH, 1, kE})};
  }
};

Buffers MakeBuffers(const Case& c) {
  return {testing::Cast<float>(c.scale), testing::Cast<float>(c.q_scale),
          testing::Cast<float>(c.k_scale)};
}

void CheckForwardAndGradients(const Case& c) {
  auto ctx = Context::Create({.num_threads = 1}).value();
  auto norm = QkNorm::Create(c.config);
  ASSERT_TRUE(norm.ok()) << norm.status();
  const Buffers buffers = MakeBuffers(c);
  std::vector<float> q = testing::RandomNormalVector(kN * kL * kH * kE, 1);
  std::vector<float> k = testing::RandomNormalVector(kN * kS * kH * kE, 2);
  std::fill(k.begin(), k.begin() + kE, 0.0f);  // a zero key row: the eps path
  std::vector<float> q_out(q.size()), k_out(k.size());
  ASSERT_TRUE(norm->Forward(*ctx, buffers.Params(),
                            TensorView<const float>(q.data(), {kN, kL, kH, kE}),
                            TensorView<const float>(k.data(), {kN, kS, kH, kE}),
                            TensorView<float>(q_out.data(), {kN, kL, kH, kE}),
                            TensorView<float>(k_out.data(), {kN, kS, kH, kE}))
                  .ok());
  const std::vector<double> q64 = testing::Cast<double>(q);
  EXPECT_TRUE(testing::AllNear(q_out, Reference(c, q64, c.q_scale, true),
                               {1e-5, 1e-5}));
  EXPECT_TRUE(testing::AllNear(
      k_out, Reference(c, testing::Cast<double>(k), c.k_scale, false),
      {1e-6, 1e-5}));
  // x / |x| has no derivative at 0 (the backward there is torch's c d_y /
  // eps), so the gradient check uses a key tensor without zero rows.
  k = testing::RandomNormalVector(k.size(), 2);
  const std::vector<double> k64 = testing::Cast<double>(k);

  const std::vector<float> w_q = testing::RandomUniformVector(q.size(), 3);
  const std::vector<float> w_k = testing::RandomUniformVector(k.size(), 4);
  std::vector<float> d_q(q.size()), d_k(k.size());
  Buffers grads = buffers;
  for (auto* v : {&grads.scale, &grads.q_scale, &grads.k_scale}) {
    std::fill(v->begin(), v->end(), 0.5f);  // accumulation: starts at 0.5
  }
  const QkNormParams grad_views = grads.Params();
  const QkNormGrads grad_out{
      TensorView<float>(const_cast<float*>(grad_views.scale.data()),
                        grad_views.scale.shape()),
      TensorView<float>(const_cast<float*>(grad_views.q_scale.data()),
                        grad_views.q_scale.shape()),
      TensorView<float>(const_cast<float*>(grad_views.k_scale.data()),
                        grad_views.k_scale.shape())};
  ASSERT_TRUE(
      norm->Backward(*ctx, buffers.Params(),
                     TensorView<const float>(q.data(), {kN, kL, kH, kE}),
                     TensorView<const float>(k.data(), {kN, kS, kH, kE}),
                     TensorView<const float>(w_q.data(), {kN, kL, kH, kE}),
                     TensorView<const float>(w_k.data(), {kN, kS, kH, kE}),
                     TensorView<float>(d_q.data(), {kN, kL, kH, kE}),
                     TensorView<float>(d_k.data(), {kN, kS, kH, kE}), grad_out)
          .ok());
  const std::vector<double> wq = testing::Cast<double>(w_q);
  const std::vector<double> wk = testing::Cast<double>(w_k);
  auto loss = [&](const Case& variant, const std::vector<double>& qx,
                  const std::vector<double>& kx) {
    return testing::Dot(wq, Reference(variant, qx, variant.q_scale, true)) +
           testing::Dot(wk, Reference(variant, kx, variant.k_scale, false));
  };
  EXPECT_TRUE(
      testing::GradientMatches([&](const auto& v) { return loss(c, v, k64); },
                               q64, testing::Cast<double>(d_q), {1e-5, 1e-4}));
  EXPECT_TRUE(
      testing::GradientMatches([&](const auto& v) { return loss(c, q64, v); },
                               k64, testing::Cast<double>(d_k), {1e-5, 1e-4}));
  auto minus_half = [](const std::vector<float>& g) {
    std::vector<double> out(g.begin(), g.end());
    for (double& v : out) v -= 0.5;
    return out;
  };
  if (!c.scale.empty()) {
    EXPECT_TRUE(testing::GradientMatches(
        [&](const auto& v) {
          Case varied = c;
          varied.scale = v;
          return loss(varied, q64, k64);
        },
        c.scale, minus_half(grads.scale), {1e-4, 1e-4}));
  }
  if (!c.q_scale.empty()) {
    EXPECT_TRUE(testing::GradientMatches(
        [&](const auto& v) {
          Case varied = c;
          varied.q_scale = v;
          return loss(varied, q64, k64);
        },
        c.q_scale, minus_half(grads.q_scale), {1e-4, 1e-4}));
    EXPECT_TRUE(testing::GradientMatches(
        [&](const auto& v) {
          Case varied = c;
          varied.k_scale = v;
          return loss(varied, q64, k64);
        },
        c.k_scale, minus_half(grads.k_scale), {1e-4, 1e-4}));
  }
}

TEST(QkNormTest, LearnedTemperatureForwardBackward) {
  CheckForwardAndGradients(LearnedTemperatureCase());
}

TEST(QkNormTest, FixedScaleGroupsDimScaleForwardBackward) {
  CheckForwardAndGradients(FixedScaleCase());
}

TEST(QkNormTest, InitAndTemperatureFormula) {
  auto norm = QkNorm::Create({.heads = 2,
                              .head_dim = 4,
                              .variant = QkNormVariant::kLearnedTemperature});
  ASSERT_TRUE(norm.ok());
  ASSERT_EQ(norm->ParamShapes().size(), 1u);
  EXPECT_EQ(norm->ParamShapes()[0].name, "scale");
  std::vector<float> scale(2);
  ASSERT_TRUE(
      norm->InitParams({TensorView<float>(scale.data(), {1, 2, 1, 1}), {}, {}})
          .ok());
  EXPECT_EQ(scale[0], -3.0f);
  EXPECT_NEAR(
      norm->ScoreScale(
          {TensorView<const float>(scale.data(), {1, 2, 1, 1}), {}, {}}, 1),
      std::exp(3.0), 1e-3);
  // use_qk_norm_attn with n = 1024: -log(log2(1024^2 - 1024)).
  EXPECT_NEAR(QkNormTemperatureInit(1024), -std::log(std::log2(1047552.0)),
              1e-6);
  auto fixed = QkNorm::Create({.heads = 2, .head_dim = 4, .dim_scale = true});
  ASSERT_TRUE(fixed.ok());
  EXPECT_EQ(fixed->ParamShapes()[1].name, "qk_norm_k_scale");
}

// Cosine-sim attention: QkNorm, then "full" with softmax_temp = 1, equals
// softmax_j(s_h cos(q_i, k_j)) v_j.
TEST(QkNormTest, CosineSimAttentionThroughFullMechanism) {
  auto ctx = Context::Create({.num_threads = 1}).value();
  const Case c = LearnedTemperatureCase();
  auto norm = QkNorm::Create(c.config);
  ASSERT_TRUE(norm.ok());
  const Buffers buffers = MakeBuffers(c);
  std::vector<float> q = testing::RandomNormalVector(kN * kL * kH * kE, 5);
  std::vector<float> k = testing::RandomNormalVector(kN * kS * kH * kE, 6);
  const std::vector<float> v =
      testing::RandomNormalVector(kN * kS * kH * kE, 7);
  const std::vector<double> q64 = testing::Cast<double>(q),
                            k64 = testing::Cast<double>(k);
  const TensorView<float> q_view(q.data(), {kN, kL, kH, kE});
  const TensorView<float> k_view(k.data(), {kN, kS, kH, kE});
  ASSERT_TRUE(
      norm->Forward(*ctx, buffers.Params(), q_view, k_view, q_view, k_view)
          .ok());
  FullAttention full({.softmax_temp = 1.0f, .attention_dropout = 0.0f});
  std::vector<float> out(kN * kL * kH * kE);
  AttentionInputs inputs;
  inputs.queries = q_view;
  inputs.keys = k_view;
  inputs.values = TensorView<const float>(v.data(), {kN, kS, kH, kE});
  ASSERT_TRUE(full.Forward(*ctx, inputs,
                           TensorView<float>(out.data(), {kN, kL, kH, kE}),
                           nullptr)
                  .ok());
  std::vector<double> expected(out.size());
  for (int64_t n = 0; n < kN; ++n) {
    for (int64_t h = 0; h < kH; ++h) {
      for (int64_t l = 0; l < kL; ++l) {
        const double* qi = &q64[((n * kL + l) * kH + h) * kE];
        std::vector<double> p(kS);
        double max_score = -1e300, total = 0;
        for (int64_t s = 0; s < kS; ++s) {
          const double* kj = &k64[((n * kS + s) * kH + h) * kE];
          double dot = 0, qq = 0, kk = 0;
          for (int64_t e = 0; e < kE; ++e) {
            dot += qi[e] * kj[e];
            qq += qi[e] * qi[e];
            kk += kj[e] * kj[e];
          }
          p[s] = ScoreScale(c, h) * dot / (std::sqrt(qq) * std::sqrt(kk));
          max_score = std::max(max_score, p[s]);
        }
        for (double& x : p) total += (x = std::exp(x - max_score));
        for (int64_t e = 0; e < kE; ++e) {
          double sum = 0;
          for (int64_t s = 0; s < kS; ++s) {
            sum += p[s] / total * v[((n * kS + s) * kH + h) * kE + e];
          }
          expected[((n * kL + l) * kH + h) * kE + e] = sum;
        }
      }
    }
  }
  EXPECT_TRUE(testing::AllNear(out, expected, {1e-5, 1e-4}));
}

TEST(QkNormTest, BadArgumentsAreInvalidArgument) {
  EXPECT_EQ(QkNorm::Create({.heads = 0, .head_dim = 4}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      QkNorm::Create({.heads = 2, .head_dim = 6, .groups = 4}).status().code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(QkNorm::Create({.heads = 2,
                            .head_dim = 4,
                            .variant = QkNormVariant::kLearnedTemperature,
                            .dim_scale = true})
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  auto ctx = Context::Create({.num_threads = 1}).value();
  auto norm = QkNorm::Create({.heads = 2, .head_dim = 4});
  ASSERT_TRUE(norm.ok());
  std::vector<float> buffer(64);
  const TensorView<const float> q(buffer.data(), {1, 2, 2, 4});
  const TensorView<float> out(buffer.data() + 16, {1, 2, 2, 4});
  const TensorView<const float> wrong_heads(buffer.data(), {1, 2, 4, 2});
  const auto status = norm->Forward(*ctx, {}, wrong_heads, q, out, out);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("queries"), std::string::npos);
  // A temperature given to a kFixedScale norm.
  float theta = 0;
  EXPECT_EQ(
      norm->Forward(*ctx,
                    {TensorView<const float>(&theta, {1, 2, 1, 1}), {}, {}}, q,
                    q, out, out)
          .code(),
      absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ftx
