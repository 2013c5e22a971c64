// ContinuousTransformerWrapper: parameter names and shapes with and without
// the projections; output shapes and finiteness; every parameter (sampled),
// the input and the context gradients against central differences of the
// float forward (projections on and off, decoder with padding lengths,
// cross-attention, rotary without absolute positions); config and input
// errors.
#include "models/continuous.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "attention/builtin.h"
#include "gtest/gtest.h"
#include "tests/util/random.h"

namespace ftx {
namespace {

using ::ftx::testing::RandomUniformVector;

ContinuousConfig TinyConfig() {
  ContinuousConfig config;
  config.max_seq_len = 6;
  config.dim_in = 5;
  config.dim_out = 3;
  config.attn_layers.dim = 8;
  config.attn_layers.depth = 1;
  config.attn_layers.heads = 2;
  config.attn_layers.dim_head = 4;
  config.attn_layers.seed = 9;
  config.attn_layers.attention_options["attention_dropout"] = 0.0;
  return config;
}

class ContinuousTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ctx_ = Context::Create({.num_threads = 2}).value();
    ASSERT_TRUE(RegisterBuiltinAttentions(registry_).ok());
  }

  void Build(const ContinuousConfig& config) {
    auto model = ContinuousTransformerWrapper::Create(config, registry_);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(model).value();
    auto store = ParamStore::Create(model_->ParamShapes());
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::make_unique<ParamStore>(std::move(store).value());
    ASSERT_TRUE(model_->InitParams(*ctx_, *store_).ok());
  }

  std::vector<float> Run(const std::vector<float>& x, int64_t batch,
                         const StackInputs& inputs = {},
                         bool save_for_backward = false) {
    const int64_t in = model_->input_width(), out = model_->output_width();
    const int64_t T = static_cast<int64_t>(x.size()) / (batch * in);
    std::vector<float> y(batch * T * out);
    const absl::Status status = model_->Forward(
        *ctx_, *store_, TensorView<const float>(x.data(), {batch, T, in}),
        inputs, TensorView<float>(y.data(), {batch, T, out}),
        save_for_backward);
    EXPECT_TRUE(status.ok()) << status;
    return y;
  }

  // Gradient of sum(w * y) for every tensor (up to 7 entries each), x and
  // the context (when given) against central differences.
  void CheckGradients(int64_t batch, int64_t length, StackInputs inputs = {},
                      std::vector<float>* context = nullptr) {
    const int64_t in = model_->input_width();
    std::vector<float> x = RandomUniformVector<float>(batch * length * in, 4);
    const std::vector<float> y = Run(x, batch, inputs);
    const std::vector<double> w = RandomUniformVector<double>(y.size(), 5);
    auto loss = [&]() {
      const std::vector<float> out = Run(x, batch, inputs);
      double sum = 0;
      for (size_t i = 0; i < out.size(); ++i) sum += w[i] * out[i];
      return sum;
    };
    store_->ZeroGrads();
    Run(x, batch, inputs, /*save_for_backward=*/true);
    const std::vector<float> d_y(w.begin(), w.end());
    std::vector<float> d_x(x.size(), 7.0f);
    std::vector<float> d_context(context ? context->size() : 0, 7.0f);
    TensorView<float> d_context_view;
    if (context) {
      d_context_view =
          TensorView<float>(d_context.data(), inputs.context.shape());
    }
    const absl::Status status = model_->Backward(
        *ctx_, *store_,
        TensorView<const float>(d_y.data(),
                                {batch, length, model_->output_width()}),
        TensorView<float>(d_x.data(), {batch, length, in}), d_context_view);
    ASSERT_TRUE(status.ok()) << status;

    const double h = 1e-2, abs_tol = 2e-3, rel_tol = 2e-2;
    double worst = 0;
    std::string worst_name;
    int64_t checked = 0;
    auto check = [&](float* value, double analytic, const std::string& name) {
      const float saved = *value;
      *value = saved + static_cast<float>(h);
      const double plus = loss();
      *value = saved - static_cast<float>(h);
      const double minus = loss();
      *value = saved;
      const double numeric = (plus - minus) / (2 * h);
      const double ratio =
          std::abs(analytic - numeric) /
          (abs_tol + rel_tol * std::max(std::abs(analytic), std::abs(numeric)));
      ++checked;
      if (ratio > worst) {
        worst = ratio;
        worst_name = name + " analytic " + std::to_string(analytic) +
                     " numeric " + std::to_string(numeric);
      }
    };
    store_->ForEachParam([&](ParamSlot slot) {
      const int64_t n = slot.value.NumElements();
      const int64_t step = std::max<int64_t>(1, n / 7);
      for (int64_t i = 0; i < n; i += step) {
        check(slot.value.data() + i, slot.grad.data()[i],
              slot.name + "[" + std::to_string(i) + "]");
      }
    });
    for (size_t i = 0; i < x.size(); i += 2) {
      check(x.data() + i, d_x[i], "x[" + std::to_string(i) + "]");
    }
    if (context) {
      for (size_t i = 0; i < context->size(); i += 2) {
        check(context->data() + i, d_context[i],
              "context[" + std::to_string(i) + "]");
      }
    }
    std::printf("checked %lld entries; worst ratio %.3f at %s\n",
                static_cast<long long>(checked), worst, worst_name.c_str());
    EXPECT_LT(worst, 1.0) << worst_name;
  }

  std::unique_ptr<Context> ctx_;
  AttentionRegistry registry_;
  std::unique_ptr<ContinuousTransformerWrapper> model_;
  std::unique_ptr<ParamStore> store_;
};

TEST_F(ContinuousTest, NamesAndShapes) {
  Build(TinyConfig());
  EXPECT_EQ(store_->Value("project_in.weight").value().shape(), Shape({8, 5}));
  EXPECT_EQ(store_->Value("project_out.weight").value().shape(), Shape({3, 8}));
  EXPECT_EQ(store_->Value("pos_emb.emb.weight").value().shape(), Shape({6, 8}));
  EXPECT_TRUE(store_->Contains("norm.weight"));
  EXPECT_TRUE(store_->Contains("attn_layers.layers.0.norm.weight"));
  const std::vector<float> y = Run(RandomUniformVector<float>(2 * 4 * 5, 1), 2);
  ASSERT_EQ(y.size(), 2u * 4 * 3);
  for (float v : y) EXPECT_TRUE(std::isfinite(v));

  ContinuousConfig identity = TinyConfig();
  identity.dim_in = 0;
  identity.dim_out = 0;
  identity.use_abs_pos_emb = false;
  Build(identity);
  EXPECT_FALSE(store_->Contains("project_in.weight"));
  EXPECT_FALSE(store_->Contains("project_out.weight"));
  EXPECT_FALSE(store_->Contains("pos_emb.emb.weight"));
  EXPECT_EQ(model_->input_width(), 8);
  EXPECT_EQ(model_->output_width(), 8);
}

TEST_F(ContinuousTest, GradientsWithProjections) {
  Build(TinyConfig());
  CheckGradients(2, 5);
}

TEST_F(ContinuousTest, GradientsIdentityProjectionsDecoderWithLengths) {
  ContinuousConfig config = TinyConfig();
  config.dim_in = 0;
  config.dim_out = 0;
  config.attn_layers.causal = true;
  Build(config);
  StackInputs inputs;
  inputs.lengths.lengths = {4, 2};
  CheckGradients(2, 4, inputs);
}

TEST_F(ContinuousTest, GradientsCrossAttendRotary) {
  ContinuousConfig config = TinyConfig();
  config.attn_layers.cross_attend = true;
  config.attn_layers.context_dim = 6;
  config.attn_layers.rotary_pos_emb = true;
  config.attn_layers.heads = 1;
  config.attn_layers.dim_head = 32;  // rotary needs >= 32
  Build(config);
  EXPECT_FALSE(store_->Contains("pos_emb.emb.weight"));
  std::vector<float> context = RandomUniformVector<float>(2 * 3 * 6, 8);
  StackInputs inputs;
  inputs.context = TensorView<const float>(context.data(), {2, 3, 6});
  CheckGradients(2, 3, inputs, &context);
}

TEST_F(ContinuousTest, Errors) {
  ContinuousConfig config = TinyConfig();
  config.max_seq_len = 0;
  auto model = ContinuousTransformerWrapper::Create(config, registry_);
  ASSERT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(model.status().message().find("max_seq_len"), std::string::npos);
  config = TinyConfig();
  config.dim_in = -1;
  model = ContinuousTransformerWrapper::Create(config, registry_);
  ASSERT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(model.status().message().find("dim_in"), std::string::npos);

  Build(TinyConfig());
  std::vector<float> x(2 * 7 * 8), y(2 * 7 * 8);
  // Wrong input width.
  absl::Status status = model_->Forward(
      *ctx_, *store_, TensorView<const float>(x.data(), {2, 3, 4}), {},
      TensorView<float>(y.data(), {2, 3, 3}), false);
  ASSERT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("x must be"), std::string::npos) << status;
  // Too long.
  status = model_->Forward(*ctx_, *store_,
                           TensorView<const float>(x.data(), {1, 7, 5}), {},
                           TensorView<float>(y.data(), {1, 7, 3}), false);
  ASSERT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("max_seq_len"), std::string::npos) << status;
  // Wrong output shape.
  status = model_->Forward(*ctx_, *store_,
                           TensorView<const float>(x.data(), {2, 3, 5}), {},
                           TensorView<float>(y.data(), {2, 3, 8}), false);
  ASSERT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("y must be"), std::string::npos) << status;
  // Backward: no saving forward, then a wrong d_x.
  status = model_->Backward(*ctx_, *store_,
                            TensorView<const float>(y.data(), {2, 3, 3}), {});
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  ASSERT_TRUE(model_
                  ->Forward(*ctx_, *store_,
                            TensorView<const float>(x.data(), {2, 3, 5}), {},
                            TensorView<float>(y.data(), {2, 3, 3}), true)
                  .ok());
  std::vector<float> d_x(2 * 3 * 5);
  status = model_->Backward(*ctx_, *store_,
                            TensorView<const float>(y.data(), {2, 3, 3}),
                            TensorView<float>(d_x.data(), {2, 3, 4}));
  ASSERT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("d_x"), std::string::npos) << status;
}

}  // namespace
}  // namespace ftx
