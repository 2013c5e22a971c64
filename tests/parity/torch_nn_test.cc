// Parity of torch.nn.TransformerEncoder (torch 2.2.2, batch_first, post-norm;
// tools/fixtures/make_fast_transformers_models.py) with ftx's fast-transformers
// encoder loaded through the "torch-nn" state-dict map
// (models/ft_state_dict.h): relu with a final LayerNorm and a key padding
// mask (src_key_padding_mask = ftx length mask), and gelu without a final
// norm. Outputs match to 1e-4, input and parameter gradients to 1e-3 (the
// packed in_proj_weight / in_proj_bias gradients compared block by block).
// The registered "torch-nn" converter exports the loaded store back to the
// torch state_dict bit for bit.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "attention/builtin.h"
#include "gtest/gtest.h"
#include "models/ft_builders.h"
#include "models/ft_state_dict.h"
#include "models/safetensors.h"
#include "tests/parity/fixture.h"

namespace ftx::parity {
namespace {

class TorchNnTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ctx_ = Context::Create({.num_threads = 1}).value();
    ASSERT_TRUE(RegisterBuiltinAttentions(registry_).ok());
  }

  void RunCase(const std::string& file) {
    SCOPED_TRACE(file);
    auto fixture = Fixture::Open("tests/data/parity/torch_nn/" + file);
    ASSERT_TRUE(fixture.ok()) << fixture.status();
    const std::string config_json = fixture->Meta("config");
    TransformerEncoderBuilder builder(registry_);
    ASSERT_TRUE(builder.FromDictionary(config_json).ok());
    auto encoder = builder.Get();
    ASSERT_TRUE(encoder.ok()) << encoder.status();
    auto map = TorchNnEncoderMap(builder.Config());
    ASSERT_TRUE(map.ok()) << map.status();
    auto store = ParamStore::Create((*encoder)->ParamShapes());
    ASSERT_TRUE(store.ok()) << store.status();
    absl::Status status = LoadFixtureParams(*fixture, *map, *store);
    ASSERT_TRUE(status.ok()) << status;
    ExpectExportMatchesStateDict(
        *fixture, *map, *store, TorchNnEncoderShapes(builder.Config()).value());

    const Tensor x = fixture->Float("input.x");
    const Shape shape = x.shape();
    FtEncoderInputs inputs;
    if (fixture->MetaBool("padding")) {
      inputs.lengths.lengths = fixture->Int("input.lengths");
    }
    std::vector<float> y(shape.NumElements()), d_x(shape.NumElements());
    status = (*encoder)->Forward(*ctx_, *store, x.view<float>(), inputs,
                                 TensorView<float>(y.data(), shape),
                                 /*save_for_backward=*/true);
    ASSERT_TRUE(status.ok()) << status;
    Check(TensorView<const float>(y.data(), shape),
          fixture->Float("output.y").view<float>(), kForwardTolerance,
          "torch encoder output");
    store->ZeroGrads();
    const Tensor d_y = fixture->Float("d_output");
    status = (*encoder)->Backward(*ctx_, *store, d_y.view<float>(),
                                  TensorView<float>(d_x.data(), shape));
    ASSERT_TRUE(status.ok()) << status;
    Check(TensorView<const float>(d_x.data(), shape),
          fixture->Float("grad.input.x").view<float>(), kGradientTolerance,
          "d_x");
    // Parameter gradients are compared per torch tensor: the three blocks of
    // in_proj_weight / in_proj_bias are packed back first. (Compared block
    // by block, the key bias would be judged against its own scale: its
    // gradient is zero up to rounding in both libraries, because softmax is
    // invariant to the constant q . b_k added to every score of a query.)
    std::map<std::string, std::vector<float>> packed;
    for (const StateDictRule& rule : map->rules) {
      const Tensor reference = fixture->Float("grad.param." + rule.reference);
      std::vector<float>& target = packed[rule.reference];
      target.resize(reference.shape().NumElements());
      TensorView<float> grad = store->Grad(rule.ftx).value();
      const int64_t row_width =
          reference.shape().NumElements() / reference.shape().dim(0);
      const int64_t offset =
          rule.row_offset < 0 ? 0 : rule.row_offset * row_width;
      ASSERT_LE(offset + grad.NumElements(),
                static_cast<int64_t>(target.size()));
      std::copy_n(grad.data(), grad.NumElements(), target.data() + offset);
    }
    for (const auto& [name, values] : packed) {
      const Tensor reference = fixture->Float("grad.param." + name);
      Check(TensorView<const float>(values.data(), reference.shape()),
            reference.view<float>(), kGradientTolerance, name + " gradient");
    }

    // The converter exports the torch state_dict back unchanged.
    StateDictConverterRegistry converters;
    ASSERT_TRUE(RegisterFastTransformersConverters(converters).ok());
    auto converter = converters.Find("torch-nn");
    ASSERT_TRUE(converter.ok()) << converter.status();
    auto shapes = (*converter)->param_shapes(config_json);
    ASSERT_TRUE(shapes.ok()) << shapes.status();
    EXPECT_EQ(shapes->size(), (*encoder)->ParamShapes().size());
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
  AttentionRegistry registry_;
  double worst_forward_ = 0, worst_gradient_ = 0;
};

TEST_F(TorchNnTest, ReluEncoderWithFinalNormAndPadding) {
  RunCase("encoder_relu_norm.safetensors");
}

TEST_F(TorchNnTest, GeluEncoderWithoutFinalNorm) {
  RunCase("encoder_gelu.safetensors");
}

TEST(TorchNnMapTest, RejectsConfigsTorchCannotExpress) {
  FtTransformerConfig config;
  config.attention_type = "linear";
  auto map = TorchNnEncoderMap(config);
  EXPECT_EQ(map.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(map.status().message().find("attention_type"), std::string::npos);
  config.attention_type = "full";
  config.d_keys = 32;
  map = TorchNnEncoderMap(config);
  EXPECT_EQ(map.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(map.status().message().find("query_dimensions"), std::string::npos);
  StateDictConverterRegistry converters;
  ASSERT_TRUE(RegisterFastTransformersConverters(converters).ok());
  EXPECT_EQ(RegisterFastTransformersConverters(converters).code(),
            absl::StatusCode::kAlreadyExists);
  auto converter = converters.Find("fast-transformers");
  ASSERT_TRUE(converter.ok()) << converter.status();
  auto bad = (*converter)->param_shapes(R"({"n_layer": 2})");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("n_layer"), std::string::npos);
}

}  // namespace
}  // namespace ftx::parity
