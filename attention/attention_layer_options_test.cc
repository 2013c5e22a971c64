// The x-transformers 0.26.6 options of AttentionLayer (qk_norm, head_scale,
// gate_values, on_attn) and FullAttention's residual scores (RealFormer):
// every input and parameter gradient against central differences of the
// float forward, plus the bad-input errors.
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "attention/attention_layer.h"
#include "attention/full.h"
#include "gtest/gtest.h"
#include "tests/util/gradcheck.h"
#include "tests/util/random.h"
#include "tests/util/tolerance.h"

namespace ftx {
namespace {

using ::ftx::testing::RandomUniformVector;

// Float central differences (step 1e-2) against float analytic gradients.
constexpr double kStep = 1e-2;
const testing::Tolerance kTolerance{2e-3, 2e-2};

class AttentionLayerOptionsTest : public ::testing::Test {
 protected:
  void SetUp() override { ctx_ = Context::Create({.num_threads = 1}).value(); }
  std::unique_ptr<Context> ctx_;
};

// Views of `values` laid out in ParamShapes() order.
struct ParamBuffers {
  std::vector<ParamShape> shapes;
  std::vector<float> values, grads;

  explicit ParamBuffers(std::vector<ParamShape> param_shapes)
      : shapes(std::move(param_shapes)) {
    int64_t total = 0;
    for (const ParamShape& shape : shapes) total += shape.shape.NumElements();
    values = RandomUniformVector<float>(total, 5, -0.6, 0.6);
    grads.assign(total, 0.0f);
  }

  template <typename T>
  TensorView<T> Find(std::vector<float>& data, const std::string& name) {
    int64_t offset = 0;
    for (const ParamShape& shape : shapes) {
      if (shape.name == name) {
        return TensorView<T>(data.data() + offset, shape.shape);
      }
      offset += shape.shape.NumElements();
    }
    return TensorView<T>();
  }

  template <typename Views, typename T>
  Views Collect(std::vector<float>& data) {
    Views views;
    views.query_weight = Find<T>(data, "query_projection.weight");
    views.key_weight = Find<T>(data, "key_projection.weight");
    views.value_weight = Find<T>(data, "value_projection.weight");
    views.out_weight = Find<T>(data, "out_projection.weight");
    views.memory_keys = Find<T>(data, "memory_keys");
    views.memory_values = Find<T>(data, "memory_values");
    views.head_scale = Find<T>(data, "head_scale_params");
    views.value_gate_weight = Find<T>(data, "to_v_gate.weight");
    views.value_gate_bias = Find<T>(data, "to_v_gate.bias");
    views.qk_norm_scale = Find<T>(data, "qk_norm_scale");
    views.qk_norm_q_scale = Find<T>(data, "qk_norm_q_scale");
    views.qk_norm_k_scale = Find<T>(data, "qk_norm_k_scale");
    return views;
  }
  AttentionLayerParams Params() {
    return Collect<AttentionLayerParams, const float>(values);
  }
  AttentionLayerGrads Grads() {
    return Collect<AttentionLayerGrads, float>(grads);
  }
};

struct OptionsCase {
  const char* name;
  AttentionLayerConfig config;
};

TEST_F(AttentionLayerOptionsTest, GradientsOfEveryOptionCombination) {
  const int64_t N = 2, L = 4, C = 6, H = 2, E = 4;
  AttentionLayerConfig base{
      .d_model = C, .n_heads = H, .d_keys = E, .d_values = 3, .bias = false};
  std::vector<OptionsCase> cases;
  AttentionLayerConfig all = base;
  all.num_memory_kv = 2;
  all.head_scale = true;
  all.gate_values = true;
  all.on_attn = true;
  all.qk_norm = QkNormConfig{.variant = QkNormVariant::kLearnedTemperature,
                             .scale_init_value = 0.3f};
  cases.push_back({"0.26.6 options with memory kv", all});
  AttentionLayerConfig grouped = base;
  grouped.kv_heads = 1;
  grouped.qk_norm = QkNormConfig{.variant = QkNormVariant::kFixedScale,
                                 .groups = 1,
                                 .fixed_scale = 1.5f,
                                 .dim_scale = true};
  cases.push_back({"1.x qk norm with dim scale, multi-query", grouped});
  for (const OptionsCase& c : cases) {
    SCOPED_TRACE(c.name);
    auto layer = AttentionLayer::Create(
        c.config, std::make_unique<FullAttention>(FullAttentionOptions{
                      .softmax_temp = 1.0f, .attention_dropout = 0.0f}));
    ASSERT_TRUE(layer.ok()) << layer.status();
    ParamBuffers params((*layer)->ParamShapes());
    AttentionLayerMasks masks;
    masks.attn_mask = AttnMask::Causal();
    std::vector<float> x = RandomUniformVector<float>(N * L * C, 7);
    const std::vector<float> w = RandomUniformVector<float>(N * L * C, 8);
    AttentionLayerCache cache;
    std::vector<float> out(N * L * C);
    auto forward = [&]() {
      const absl::Status status = (*layer)->Forward(
          *ctx_, params.Params(), TensorView<const float>(x.data(), {N, L, C}),
          TensorView<const float>(), masks,
          TensorView<float>(out.data(), {N, L, C}), &cache);
      EXPECT_TRUE(status.ok()) << status;
      double loss = 0;
      for (size_t i = 0; i < out.size(); ++i) loss += w[i] * out[i];
      return loss;
    };
    forward();
    std::vector<float> d_x(x.size());
    const absl::Status backward = (*layer)->Backward(
        *ctx_, params.Params(), TensorView<const float>(x.data(), {N, L, C}),
        TensorView<const float>(), masks, cache,
        TensorView<const float>(w.data(), {N, L, C}),
        TensorView<float>(d_x.data(), {N, L, C}), TensorView<float>(),
        params.Grads());
    ASSERT_TRUE(backward.ok()) << backward;
    auto loss_of = [&](std::vector<float>& target) {
      return [&](const std::vector<double>& v) {
        for (size_t i = 0; i < v.size(); ++i) target[i] = v[i];
        return forward();
      };
    };
    const std::vector<double> x0(x.begin(), x.end());
    EXPECT_TRUE(testing::GradientMatches(
        loss_of(x), x0, testing::Cast<double>(d_x), kTolerance, kStep))
        << "d_x";
    x.assign(x0.begin(), x0.end());
    const std::vector<double> p0(params.values.begin(), params.values.end());
    EXPECT_TRUE(testing::GradientMatches(loss_of(params.values), p0,
                                         testing::Cast<double>(params.grads),
                                         kTolerance, kStep))
        << "parameter gradients";
  }
}

TEST_F(AttentionLayerOptionsTest, OptionParamsInitialiseAsTheReference) {
  AttentionLayerConfig config{
      .d_model = 6, .n_heads = 2, .d_keys = 4, .d_values = 3, .bias = false};
  config.head_scale = true;
  config.gate_values = true;
  config.qk_norm = QkNormConfig{.variant = QkNormVariant::kLearnedTemperature};
  auto layer =
      AttentionLayer::Create(config, std::make_unique<FullAttention>());
  ASSERT_TRUE(layer.ok());
  ParamBuffers params((*layer)->ParamShapes());
  for (const ParamShape& shape : params.shapes) {
    EXPECT_EQ(AttentionLayer::IsOptionParam(shape.name),
              shape.name.find("projection") == std::string::npos)
        << shape.name;
  }
  ASSERT_TRUE((*layer)
                  ->InitOptionParams(
                      params.Collect<AttentionLayerGrads, float>(params.values))
                  .ok());
  EXPECT_EQ(params.Find<float>(params.values, "head_scale_params").data()[1],
            1.0f);
  EXPECT_EQ(params.Find<float>(params.values, "to_v_gate.weight").data()[0],
            0.0f);
  EXPECT_EQ(params.Find<float>(params.values, "to_v_gate.bias").data()[5],
            1.0f);
  EXPECT_EQ(params.Find<float>(params.values, "qk_norm_scale").data()[0],
            -3.0f);
}

TEST_F(AttentionLayerOptionsTest, BadOptionsAndParamsAreInvalidArgument) {
  AttentionLayerConfig config{
      .d_model = 6, .n_heads = 2, .d_keys = 4, .d_values = 3, .bias = false};
  config.on_attn = true;
  config.out_bias = true;
  auto bad = AttentionLayer::Create(config, std::make_unique<FullAttention>());
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("on_attn"), std::string::npos);
  config.out_bias = false;
  config.qk_norm =
      QkNormConfig{.variant = QkNormVariant::kFixedScale, .groups = 3};
  EXPECT_EQ(AttentionLayer::Create(config, std::make_unique<FullAttention>())
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  config.qk_norm.reset();
  config.gate_values = true;
  config.head_scale = true;
  auto layer =
      AttentionLayer::Create(config, std::make_unique<FullAttention>());
  ASSERT_TRUE(layer.ok());
  ParamBuffers params((*layer)->ParamShapes());
  std::vector<float> x(2 * 3 * 6, 0.1f), out(x.size());
  for (const char* missing : {"head_scale_params", "to_v_gate.weight"}) {
    AttentionLayerParams views = params.Params();
    if (std::string(missing) == "head_scale_params") {
      views.head_scale = TensorView<const float>();
    } else {
      views.value_gate_weight = TensorView<const float>();
    }
    const absl::Status status = (*layer)->Forward(
        *ctx_, views, TensorView<const float>(x.data(), {2, 3, 6}),
        TensorView<const float>(), {}, TensorView<float>(out.data(), {2, 3, 6}),
        nullptr);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << missing;
    EXPECT_NE(status.message().find(missing), std::string::npos) << status;
  }
}

// RealFormer: loss = <w, out> + <u, current> with current = t Q K^T +
// previous; d_previous, d_queries and d_keys against central differences.
TEST_F(AttentionLayerOptionsTest, FullResidualScoresGradients) {
  const int64_t N = 2, L = 3, S = 3, H = 2, E = 4, D = 3;
  FullAttention full(FullAttentionOptions{.attention_dropout = 0.0f});
  std::vector<float> q = RandomUniformVector<float>(N * L * H * E, 11);
  std::vector<float> k = RandomUniformVector<float>(N * S * H * E, 12);
  const std::vector<float> v = RandomUniformVector<float>(N * S * H * D, 13);
  std::vector<float> previous = RandomUniformVector<float>(H * N * L * S, 14);
  const std::vector<float> w = RandomUniformVector<float>(N * L * H * D, 15);
  const std::vector<float> u = RandomUniformVector<float>(H * N * L * S, 16);
  std::vector<float> out(N * L * H * D), current(H * N * L * S);
  AttentionCache cache;
  auto inputs = [&]() {
    AttentionInputs in;
    in.queries = TensorView<const float>(q.data(), {N, L, H, E});
    in.keys = TensorView<const float>(k.data(), {N, S, H, E});
    in.values = TensorView<const float>(v.data(), {N, S, H, D});
    in.attn_mask = AttnMask::Causal();
    return in;
  };
  auto forward = [&]() {
    full.SetResidualScores(
        TensorView<const float>(previous.data(), {H, N, L, S}),
        TensorView<float>(current.data(), {H, N, L, S}));
    EXPECT_TRUE(full.Forward(*ctx_, inputs(),
                             TensorView<float>(out.data(), {N, L, H, D}),
                             &cache)
                    .ok());
    double loss = 0;
    for (size_t i = 0; i < out.size(); ++i) loss += w[i] * out[i];
    for (size_t i = 0; i < current.size(); ++i) loss += u[i] * current[i];
    return loss;
  };
  forward();
  std::vector<float> d_q(q.size()), d_k(k.size()), d_v(v.size()),
      d_previous(previous.size());
  full.SetResidualScoreGrads(
      TensorView<const float>(u.data(), {H, N, L, S}),
      TensorView<float>(d_previous.data(), {H, N, L, S}));
  ASSERT_TRUE(full.Backward(*ctx_, inputs(), cache,
                            TensorView<const float>(w.data(), {N, L, H, D}),
                            {TensorView<float>(d_q.data(), {N, L, H, E}),
                             TensorView<float>(d_k.data(), {N, S, H, E}),
                             TensorView<float>(d_v.data(), {N, S, H, D})})
                  .ok());
  for (auto [target, analytic, name] :
       {std::tuple<std::vector<float>*, std::vector<float>*, const char*>{
            &q, &d_q, "d_queries"},
        {&k, &d_k, "d_keys"},
        {&previous, &d_previous, "d_previous"}}) {
    const std::vector<double> start(target->begin(), target->end());
    EXPECT_TRUE(testing::GradientMatches(
        [&](const std::vector<double>& values) {
          for (size_t i = 0; i < values.size(); ++i) (*target)[i] = values[i];
          return forward();
        },
        start, testing::Cast<double>(*analytic), kTolerance, kStep))
        << name;
    target->assign(start.begin(), start.end());
  }
  // A wrongly shaped view is InvalidArgument naming it.
  full.SetResidualScores(TensorView<const float>(previous.data(), {H, N, L, 2}),
                         TensorView<float>());
  const absl::Status status = full.Forward(
      *ctx_, inputs(), TensorView<float>(out.data(), {N, L, H, D}), &cache);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("previous"), std::string::npos) << status;
}

}  // namespace
}  // namespace ftx
