// Parity of ftx's fast-transformers stacks (models/ft_transformers.h, built
// by models/ft_builders.h from the fixture's builder dictionary) with
// fast-transformers 0.4.0 (tools/fixtures/make_fast_transformers_models.py):
// TransformerEncoderBuilder models with "full" attention and a length mask,
// "linear" attention and a length mask, "causal-linear" with a
// TriangularCausalMask, and a TransformerDecoderBuilder model (causal-linear
// self-attention, full cross-attention, memory lengths; the 0.4.0 release
// has no cross_* size keywords, so those are covered by the unit tests only).
// Weights come in through the identity state-dict map (models/ft_state_dict.h);
// outputs match to 1e-4 and input, memory and parameter gradients to 1e-3
// (relative to each tensor's scale). The RecurrentEncoderBuilder /
// RecurrentDecoderBuilder twins stepped with the same weights match the
// library's step outputs to 1e-4.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "attention/builtin.h"
#include "gtest/gtest.h"
#include "models/ft_builders.h"
#include "models/ft_state_dict.h"
#include "tests/parity/fixture.h"

namespace ftx::parity {
namespace {

constexpr char kDir[] = "tests/data/parity/fast_transformers/";

class FastTransformersModelsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ctx_ = Context::Create({.num_threads = 1}).value();
    ASSERT_TRUE(RegisterBuiltinAttentions(registry_).ok());
  }

  // A store for `shapes` filled with the fixture's parameters.
  std::unique_ptr<ParamStore> LoadStore(const Fixture& fixture,
                                        const std::vector<ParamShape>& shapes) {
    auto store = ParamStore::Create(shapes);
    EXPECT_TRUE(store.ok()) << store.status();
    auto owned = std::make_unique<ParamStore>(std::move(store).value());
    const absl::Status status =
        LoadFixtureParams(fixture, FastTransformersMap(shapes), *owned);
    EXPECT_TRUE(status.ok()) << status;
    ExpectExportMatchesStateDict(fixture, FastTransformersMap(shapes), *owned,
                                 {});
    return owned;
  }

  // Every parameter gradient of the store against "grad.param.<name>".
  // Softmax attention is invariant to the constant q . b_k that a key bias
  // adds to every score of a query, so the key_projection.bias gradient of a
  // softmax block (names containing one of `softmax_blocks`) is zero up to
  // rounding in both libraries: it is judged against the scale of the same
  // projection's weight gradient instead of its own.
  void ExpectParamGrads(const Fixture& fixture, ParamStore& store,
                        const std::vector<std::string>& softmax_blocks) {
    int64_t compared = 0;
    store.ForEachParam([&](ParamSlot slot) {
      const std::string name = "grad.param." + slot.name;
      if (!fixture.Has(name)) {
        ADD_FAILURE() << "fixture has no " << name;
        return;
      }
      ++compared;
      const Tensor expected = fixture.Float(name);
      const std::string bias = "key_projection.bias";
      const bool zero_by_symmetry =
          slot.name.size() > bias.size() &&
          slot.name.compare(slot.name.size() - bias.size(), bias.size(),
                            bias) == 0 &&
          std::any_of(softmax_blocks.begin(), softmax_blocks.end(),
                      [&](const std::string& block) {
                        return slot.name.find(block) != std::string::npos;
                      });
      if (!zero_by_symmetry) {
        Check(slot.grad, expected.view<float>(), kGradientTolerance, name);
        return;
      }
      const std::string weight_name =
          slot.name.substr(0, slot.name.size() - 4) + "weight";
      const Tensor weight_grad = fixture.Float("grad.param." + weight_name);
      double scale = 0, diff = 0;
      for (int64_t i = 0; i < weight_grad.shape().NumElements(); ++i) {
        scale = std::max(
            scale, std::abs(static_cast<double>(weight_grad.data<float>()[i])));
      }
      for (int64_t i = 0; i < slot.grad.NumElements(); ++i) {
        diff =
            std::max(diff, std::abs(static_cast<double>(slot.grad.data()[i]) -
                                    expected.data<float>()[i]));
      }
      EXPECT_LE(diff, kGradientTolerance * scale)
          << name << " (zero by softmax shift invariance)";
    });
    EXPECT_EQ(compared, store.NumTensors());
  }

  // Steps `step(x_t, y_t)` over the positions of x [N, L, C] and compares
  // the stacked outputs with "output.recurrent".
  template <typename StepFn>
  void ExpectRecurrentParity(const Fixture& fixture, const Tensor& x,
                             StepFn step) {
    const int64_t N = x.shape().dim(0), L = x.shape().dim(1),
                  C = x.shape().dim(2);
    std::vector<float> steps(N * L * C);
    const float* source = x.data<float>();
    for (int64_t t = 0; t < L; ++t) {
      std::vector<float> x_t(N * C), y_t(N * C);
      for (int64_t n = 0; n < N; ++n) {
        std::copy_n(source + (n * L + t) * C, C, x_t.data() + n * C);
      }
      const absl::Status status =
          step(TensorView<const float>(x_t.data(), {N, C}),
               TensorView<float>(y_t.data(), {N, C}));
      ASSERT_TRUE(status.ok()) << status;
      for (int64_t n = 0; n < N; ++n) {
        std::copy_n(y_t.data() + n * C, C, steps.data() + (n * L + t) * C);
      }
    }
    Check(TensorView<const float>(steps.data(), {N, L, C}),
          fixture.Float("output.recurrent").view<float>(), kForwardTolerance,
          "recurrent step outputs");
  }

  void RunEncoderCase(const std::string& file) {
    SCOPED_TRACE(file);
    auto fixture = Fixture::Open(kDir + file);
    ASSERT_TRUE(fixture.ok()) << fixture.status();
    TransformerEncoderBuilder builder(registry_);
    ASSERT_TRUE(builder.FromDictionary(fixture->Meta("config")).ok());
    auto encoder = builder.Get();
    ASSERT_TRUE(encoder.ok()) << encoder.status();
    std::unique_ptr<ParamStore> store =
        LoadStore(*fixture, (*encoder)->ParamShapes());
    const Tensor x = fixture->Float("input.x");
    FtEncoderInputs inputs;
    if (fixture->Has("input.lengths")) {
      inputs.lengths.lengths = fixture->Int("input.lengths");
    }
    if (fixture->MetaBool("causal")) inputs.attn_mask = AttnMask::Causal();
    const Shape shape = x.shape();
    std::vector<float> y(shape.NumElements()), d_x(shape.NumElements());
    absl::Status status = (*encoder)->Forward(
        *ctx_, *store, x.view<float>(), inputs,
        TensorView<float>(y.data(), shape), /*save_for_backward=*/true);
    ASSERT_TRUE(status.ok()) << status;
    Check(TensorView<const float>(y.data(), shape),
          fixture->Float("output.y").view<float>(), kForwardTolerance,
          "encoder output");
    store->ZeroGrads();
    const Tensor d_y = fixture->Float("d_output");
    status = (*encoder)->Backward(*ctx_, *store, d_y.view<float>(),
                                  TensorView<float>(d_x.data(), shape));
    ASSERT_TRUE(status.ok()) << status;
    Check(TensorView<const float>(d_x.data(), shape),
          fixture->Float("grad.input.x").view<float>(), kGradientTolerance,
          "d_x");
    std::vector<std::string> softmax_blocks;
    if (builder.attention_type() == "full") softmax_blocks = {".attention."};
    ExpectParamGrads(*fixture, *store, softmax_blocks);

    if (!fixture->Has("output.recurrent")) return;
    RecurrentEncoderBuilder recurrent_builder(registry_);
    ASSERT_TRUE(recurrent_builder.FromDictionary(fixture->Meta("config")).ok());
    ASSERT_TRUE(
        recurrent_builder.SetAttentionType(fixture->Meta("recurrent_type"))
            .ok());
    auto recurrent = recurrent_builder.Get();
    ASSERT_TRUE(recurrent.ok()) << recurrent.status();
    FtRecurrentState state = (*recurrent)->NewState();
    ExpectRecurrentParity(
        *fixture, x, [&](TensorView<const float> x_t, TensorView<float> y_t) {
          return (*recurrent)->Step(*ctx_, *store, x_t, state, y_t);
        });
  }

  // ExpectParity, remembering the worst relative error of outputs and
  // gradients for the report TearDown prints.
  void Check(TensorView<const float> actual, TensorView<const float> expected,
             double rel_tol, const std::string& what) {
    ExpectParity(actual, expected, rel_tol, what);
    double& worst =
        rel_tol == kForwardTolerance ? worst_forward_ : worst_gradient_;
    worst = std::max(worst, RelativeError(actual, expected));
  }

  void TearDown() override {
    std::printf("worst relative error: outputs %.3g, gradients %.3g\n",
                worst_forward_, worst_gradient_);
  }

  std::unique_ptr<Context> ctx_;
  AttentionRegistry registry_;
  double worst_forward_ = 0, worst_gradient_ = 0;
};

TEST_F(FastTransformersModelsTest, EncoderFullAttentionWithLengths) {
  RunEncoderCase("model_encoder_full.safetensors");
}

TEST_F(FastTransformersModelsTest, EncoderLinearAttentionWithLengths) {
  RunEncoderCase("model_encoder_linear.safetensors");
}

TEST_F(FastTransformersModelsTest, CausalLinearEncoderAndRecurrentTwin) {
  RunEncoderCase("model_encoder_causal_linear.safetensors");
}

TEST_F(FastTransformersModelsTest, DecoderAndRecurrentTwin) {
  auto fixture = Fixture::Open(std::string(kDir) + "model_decoder.safetensors");
  ASSERT_TRUE(fixture.ok()) << fixture.status();
  TransformerDecoderBuilder builder(registry_);
  ASSERT_TRUE(builder.FromDictionary(fixture->Meta("config")).ok());
  auto decoder = builder.Get();
  ASSERT_TRUE(decoder.ok()) << decoder.status();
  std::unique_ptr<ParamStore> store =
      LoadStore(*fixture, (*decoder)->ParamShapes());
  const Tensor x = fixture->Float("input.x");
  const Tensor memory = fixture->Float("input.memory");
  FtDecoderInputs inputs;
  inputs.x_mask = AttnMask::Causal();
  inputs.memory_lengths.lengths = fixture->Int("input.memory_lengths");
  const Shape shape = x.shape();
  std::vector<float> y(shape.NumElements()), d_x(shape.NumElements()),
      d_memory(memory.shape().NumElements());
  absl::Status status = (*decoder)->Forward(
      *ctx_, *store, x.view<float>(), memory.view<float>(), inputs,
      TensorView<float>(y.data(), shape), /*save_for_backward=*/true);
  ASSERT_TRUE(status.ok()) << status;
  Check(TensorView<const float>(y.data(), shape),
        fixture->Float("output.y").view<float>(), kForwardTolerance,
        "decoder output");
  store->ZeroGrads();
  const Tensor d_y = fixture->Float("d_output");
  status = (*decoder)->Backward(
      *ctx_, *store, d_y.view<float>(), TensorView<float>(d_x.data(), shape),
      TensorView<float>(d_memory.data(), memory.shape()));
  ASSERT_TRUE(status.ok()) << status;
  Check(TensorView<const float>(d_x.data(), shape),
        fixture->Float("grad.input.x").view<float>(), kGradientTolerance,
        "d_x");
  Check(TensorView<const float>(d_memory.data(), memory.shape()),
        fixture->Float("grad.input.memory").view<float>(), kGradientTolerance,
        "d_memory");
  ASSERT_EQ(builder.cross_attention_type(), "full");
  ExpectParamGrads(*fixture, *store, {".cross_attention."});

  RecurrentDecoderBuilder recurrent_builder(registry_);
  ASSERT_TRUE(
      recurrent_builder.FromDictionary(fixture->Meta("recurrent_config")).ok());
  auto recurrent = recurrent_builder.Get();
  ASSERT_TRUE(recurrent.ok()) << recurrent.status();
  FtRecurrentState state = (*recurrent)->NewState();
  ExpectRecurrentParity(
      *fixture, x, [&](TensorView<const float> x_t, TensorView<float> y_t) {
        return (*recurrent)
            ->Step(*ctx_, *store, x_t, memory.view<float>(),
                   inputs.memory_lengths, state, y_t);
      });
}

}  // namespace
}  // namespace ftx::parity
