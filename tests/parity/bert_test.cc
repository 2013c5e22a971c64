// Parity of Hugging Face transformers 4.46.3's BertModel (torch 2.2.2, eager
// attention, eval; tools/fixtures/make_bert.py) with ftx's BertModel
// (models/bert.h) loaded through the "hf-bert" state-dict map
// (models/bert_state_dict.h):
//   bert_gelu_pooler: two gelu layers, pooler, layer_norm_eps 1e-12, an
//     attention_mask padding the second row, token types 0 / 1, pad tokens;
//   bert_relu: one relu layer, no pooler, layer_norm_eps 1e-5, 3 token types.
// last_hidden_state (every row: HF masks keys only, and so does ftx, so the
// padded query rows match too) and pooler_output to 1e-4; the gradient of
// sum(last_hidden_state * d_output) + sum(pooler_output * d_pooler_output)
// w.r.t. every parameter to 1e-3 (the word embedding's padding row is zero in
// both; the key biases, whose gradient is exactly zero, are checked to be
// negligible in both, see below). The registered converter exports the
// state_dict back bit for bit.
#include "models/bert.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "models/bert_state_dict.h"
#include "models/safetensors.h"
#include "tests/parity/fixture.h"

namespace ftx::parity {
namespace {

std::vector<int32_t> ToInt32(const std::vector<int64_t>& values) {
  return std::vector<int32_t>(values.begin(), values.end());
}

class BertParityTest : public ::testing::Test {
 protected:
  void SetUp() override { ctx_ = Context::Create({.num_threads = 1}).value(); }

  void RunCase(const std::string& file) {
    SCOPED_TRACE(file);
    auto fixture = Fixture::Open("tests/data/parity/bert/" + file);
    ASSERT_TRUE(fixture.ok()) << fixture.status();
    const std::string config_json = fixture->Meta("config");
    auto config = BertConfigFromJson(config_json);
    ASSERT_TRUE(config.ok()) << config.status();
    config->hidden_dropout_prob = 0.0f;
    config->attention_probs_dropout_prob = 0.0f;
    auto model = BertModel::Create(*config);
    ASSERT_TRUE(model.ok()) << model.status();
    auto map = BertStateDictMap(*config);
    ASSERT_TRUE(map.ok()) << map.status();
    auto store = ParamStore::Create((*model)->ParamShapes());
    ASSERT_TRUE(store.ok()) << store.status();
    absl::Status status = LoadFixtureParams(*fixture, *map, *store);
    ASSERT_TRUE(status.ok()) << status;
    ExpectExportMatchesStateDict(*fixture, *map, *store,
                                 BertReferenceShapes(*config).value());

    const Tensor expected_hidden = fixture->Float("output.last_hidden_state");
    const Shape shape = expected_hidden.shape();
    const int64_t N = shape.dim(0), L = shape.dim(1), C = shape.dim(2);
    const std::vector<int32_t> ids = ToInt32(fixture->Int("input.input_ids"));
    const std::vector<int32_t> types =
        ToInt32(fixture->Int("input.token_type_ids"));
    const std::vector<int32_t> mask =
        ToInt32(fixture->Int("input.attention_mask"));
    BertInputs inputs;
    inputs.input_ids = TensorView<const int32_t>(ids.data(), {N, L});
    inputs.token_type_ids = TensorView<const int32_t>(types.data(), {N, L});
    inputs.attention_mask = TensorView<const int32_t>(mask.data(), {N, L});
    const bool pooler = config->add_pooling_layer;
    std::vector<float> hidden(N * L * C), pooled(N * C);
    status = (*model)->Forward(
        *ctx_, *store, inputs, TensorView<float>(hidden.data(), shape),
        pooler ? TensorView<float>(pooled.data(), {N, C}) : TensorView<float>(),
        /*save_for_backward=*/true);
    ASSERT_TRUE(status.ok()) << status;
    Check(TensorView<const float>(hidden.data(), shape),
          expected_hidden.view<float>(), kForwardTolerance,
          "last_hidden_state");
    Tensor d_pooled;
    if (pooler) {
      Check(TensorView<const float>(pooled.data(), {N, C}),
            fixture->Float("output.pooler_output").view<float>(),
            kForwardTolerance, "pooler_output");
      d_pooled = fixture->Float("d_pooler_output");
    }
    store->ZeroGrads();
    const Tensor d_hidden = fixture->Float("d_output");
    status = (*model)->Backward(
        *ctx_, *store, d_hidden.view<float>(),
        pooler ? d_pooled.view<float>() : TensorView<const float>());
    ASSERT_TRUE(status.ok()) << status;
    for (const StateDictRule& rule : map->rules) {
      const Tensor expected = fixture->Float("grad.param." + rule.reference);
      TensorView<float> grad = store->Grad(rule.ftx).value();
      const std::string key_bias = "attention.self.key.bias";
      if (rule.reference.size() > key_bias.size() &&
          rule.reference.compare(rule.reference.size() - key_bias.size(),
                                 key_bias.size(), key_bias) == 0) {
        // The key bias adds q . b_k to every score of a query, which softmax
        // ignores: its gradient is exactly zero, and both libraries return
        // rounding noise (~1e-6) that cannot be compared relative to itself.
        // Both must be negligible against the key weight's gradient.
        const std::string weight_name =
            rule.reference.substr(0, rule.reference.size() - 4) + "weight";
        const Tensor weight_grad = fixture->Float("grad.param." + weight_name);
        double scale = 0, worst = 0;
        for (int64_t i = 0; i < weight_grad.shape().NumElements(); ++i) {
          scale = std::max(
              scale,
              std::fabs(static_cast<double>(weight_grad.data<float>()[i])));
        }
        for (int64_t i = 0; i < grad.NumElements(); ++i) {
          worst = std::max({worst, std::fabs(double{grad.data()[i]}),
                            std::fabs(double{expected.data<float>()[i]})});
        }
        EXPECT_LE(worst, kGradientTolerance * scale) << rule.reference;
        continue;
      }
      Check(grad, expected.view<float>(), kGradientTolerance,
            rule.reference + " gradient");
    }

    // The converter exports the HF state_dict back unchanged.
    StateDictConverterRegistry converters;
    ASSERT_TRUE(RegisterBertConverter(converters).ok());
    auto converter = converters.Find("hf-bert");
    ASSERT_TRUE(converter.ok()) << converter.status();
    auto converter_map = (*converter)->make_map(config_json);
    ASSERT_TRUE(converter_map.ok()) << converter_map.status();
    auto reference_shapes = (*converter)->reference_shapes(config_json);
    ASSERT_TRUE(reference_shapes.ok()) << reference_shapes.status();
    const char* tmp = std::getenv("TEST_TMPDIR");
    const std::string path =
        std::string(tmp != nullptr ? tmp : "/tmp") + "/" + file;
    status = ExportStateDict(*store, *converter_map, *reference_shapes, path);
    ASSERT_TRUE(status.ok()) << status;
    auto exported = SafetensorsFile::Open(path);
    ASSERT_TRUE(exported.ok()) << exported.status();
    for (const auto& [name, dims] : *reference_shapes) {
      auto value = exported->ReadFloat(name);
      ASSERT_TRUE(value.ok()) << value.status();
      ExpectParity(value->view<float>(),
                   fixture->Float("param." + name).view<float>(), 0.0,
                   "exported " + name);
    }
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
  double worst_forward_ = 0, worst_gradient_ = 0;
};

TEST_F(BertParityTest, GeluWithPoolerPaddingAndTokenTypes) {
  RunCase("bert_gelu_pooler.safetensors");
}

TEST_F(BertParityTest, ReluWithoutPooler) { RunCase("bert_relu.safetensors"); }

}  // namespace
}  // namespace ftx::parity
