// Parity of ftx against linear-attention-transformer 0.19.1
// (tools/fixtures/make_lat.py, make_lat_extra.py; versions of LAT,
// local-attention, linformer and torch in each fixture's metadata):
//   - linear_attn / causal_linear_attn (bucket 1 and 4) with a kv_mask against
//     the global heads of "mixed-local-linear": output, dQ, dK, dV;
//   - SelfAttention (local + global heads, causal with blindspot, input mask,
//     rotary pos_emb) against AttentionLayer + "mixed-local-linear" + to_out
//     bias: output, d_x and every parameter gradient;
//   - ImageLinearAttention (with a context; without query normalisation):
//     output, d_x, d_context and every parameter gradient;
//   - LinearAttentionTransformerLM behind the Autopadder against
//     models/lat.h, weights loaded through LatStateDictMap: output, every
//     parameter gradient and the context gradient (make_lat.py's lm_* cases
//     and make_lat_extra.py's attend_axially and context Linformer cases),
//     and the export through the same map against the fixture's complete
//     state_dict (buffers included).
// Where a padding mask is given the fixtures zero d_output on padded
// positions, and only unpadded positions are compared: ftx and the fixtures
// follow local-attention 1.4.4, which masks padded queries too, but versions
// >= 1.5 mask keys only, so the outputs at padded positions are version
// dependent (models/lat.h).
#include "models/lat.h"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "attention/attention_layer.h"
#include "attention/mixed_heads.h"
#include "attention/rotary.h"
#include "gtest/gtest.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor.h"
#include "models/lat_state_dict.h"
#include "models/param_store.h"
#include "models/state_dict_map.h"
#include "nlohmann/json.hpp"
#include "tests/parity/fixture.h"

namespace ftx::parity {
namespace {

constexpr char kDir[] = "tests/data/parity/lat/";

Tensor Zeros(const Shape& shape) {
  return Tensor::Create(DType::kF32, shape).value();
}

// [b, h, n, d] <-> [N, L, H, E].
Tensor SwapHeadsAndSequence(const Tensor& t) {
  const Shape& s = t.shape();
  Tensor out = Zeros(Shape({s.dim(0), s.dim(2), s.dim(1), s.dim(3)}));
  const float* in = t.data<float>();
  float* o = out.data<float>();
  for (int64_t a = 0; a < s.dim(0); ++a) {
    for (int64_t b = 0; b < s.dim(1); ++b) {
      for (int64_t c = 0; c < s.dim(2); ++c) {
        for (int64_t d = 0; d < s.dim(3); ++d) {
          o[((a * s.dim(2) + c) * s.dim(1) + b) * s.dim(3) + d] =
              in[((a * s.dim(1) + b) * s.dim(2) + c) * s.dim(3) + d];
        }
      }
    }
  }
  return out;
}

// Rows [b, t, :] with t >= lengths[b] set to zero, for [B, T, ...] tensors.
void ZeroPadded(const std::vector<int64_t>& lengths, Tensor& t) {
  const int64_t batch = t.shape().dim(0), length = t.shape().dim(1);
  const int64_t row = t.NumElements() / (batch * length);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t i = lengths[b]; i < length; ++i) {
      std::fill(t.data<float>() + (b * length + i) * row,
                t.data<float>() + (b * length + i + 1) * row, 0.0f);
    }
  }
}

// ExpectParity, printing the relative error for the record.
void Check(TensorView<const float> actual, TensorView<const float> expected,
           double rel_tol, const std::string& what) {
  ExpectParity(actual, expected, rel_tol, what);
  std::printf("%-60s rel err %.2e\n", what.c_str(),
              RelativeError(actual, expected));
}

class LatParityTest : public ::testing::Test {
 protected:
  void SetUp() override { ctx_ = Context::Create({.num_threads = 2}).value(); }
  std::unique_ptr<Context> ctx_;
};

TEST_F(LatParityTest, GlobalAttentionFunctions) {
  auto fixture = Fixture::Open(absl::StrCat(kDir, "attention_fns.safetensors"));
  ASSERT_TRUE(fixture.ok()) << fixture.status();
  const std::vector<int64_t> kv_lengths = fixture->Int("input.kv_lengths");
  struct Case {
    const char* name;
    bool causal;
    int64_t bucket;
  };
  for (const Case& c : {Case{"linear", false, 1}, Case{"causal_b1", true, 1},
                        Case{"causal_b4", true, 4}}) {
    SCOPED_TRACE(c.name);
    const std::string p = absl::StrCat(c.name, ".");
    const Tensor q = SwapHeadsAndSequence(fixture->Float(p + "input.q"));
    const Tensor k = SwapHeadsAndSequence(fixture->Float(p + "input.k"));
    const Tensor v = SwapHeadsAndSequence(fixture->Float(p + "input.v"));
    const Tensor d_out = SwapHeadsAndSequence(fixture->Float(p + "d_output"));
    MixedLocalLinearAttention attention(
        {.causal = c.causal, .blindspot_size = c.bucket});
    AttentionInputs inputs;
    inputs.queries = q.view<float>();
    inputs.keys = k.view<float>();
    inputs.values = v.view<float>();
    inputs.key_lengths.lengths = kv_lengths;
    Tensor out = Zeros(q.shape());
    AttentionCache cache;
    ASSERT_TRUE(
        attention.Forward(*ctx_, inputs, out.view<float>(), &cache).ok());
    Check(SwapHeadsAndSequence(out).view<float>(),
          fixture->Float(p + "output.out").view<float>(), kForwardTolerance,
          p + "out");
    Tensor d_q = Zeros(q.shape()), d_k = Zeros(k.shape()),
           d_v = Zeros(v.shape());
    ASSERT_TRUE(attention
                    .Backward(*ctx_, inputs, cache, d_out.view<float>(),
                              {.d_queries = d_q.view<float>(),
                               .d_keys = d_k.view<float>(),
                               .d_values = d_v.view<float>()})
                    .ok());
    Check(SwapHeadsAndSequence(d_q).view<float>(),
          fixture->Float(p + "grad.input.q").view<float>(), kGradientTolerance,
          p + "dq");
    Check(SwapHeadsAndSequence(d_k).view<float>(),
          fixture->Float(p + "grad.input.k").view<float>(), kGradientTolerance,
          p + "dk");
    Check(SwapHeadsAndSequence(d_v).view<float>(),
          fixture->Float(p + "grad.input.v").view<float>(), kGradientTolerance,
          p + "dv");
  }
}

class LatSelfAttentionParity
    : public LatParityTest,
      public ::testing::WithParamInterface<const char*> {};

TEST_P(LatSelfAttentionParity, OutputAndGradients) {
  auto fixture = Fixture::Open(absl::StrCat(kDir, GetParam(), ".safetensors"));
  ASSERT_TRUE(fixture.ok()) << fixture.status();
  const int64_t dim = fixture->MetaInt("dim");
  const int64_t heads = fixture->MetaInt("heads");
  const int64_t dim_head = fixture->MetaInt("dim_head");
  MixedLocalLinearOptions options;
  options.n_local_attn_heads = fixture->MetaInt("n_local_attn_heads");
  options.local_attn_window_size = fixture->MetaInt("local_attn_window_size");
  options.causal = fixture->MetaBool("causal");
  options.blindspot_size = fixture->MetaInt("blindspot_size");
  std::unique_ptr<QKTransform> rotary;
  if (fixture->MetaBool("rotary")) {
    rotary = std::make_unique<RotaryEmbedding>(
        RotaryEmbedding::Create(
            {.rotary_dim = dim_head, .layout = RotaryLayout::kInterleaved})
            .value());
  }
  auto layer = AttentionLayer::Create(
      {.d_model = dim,
       .n_heads = heads,
       .d_keys = dim_head,
       .d_values = dim_head,
       .bias = false},
      std::make_unique<MixedLocalLinearAttention>(options), std::move(rotary));
  ASSERT_TRUE(layer.ok()) << layer.status();

  const Tensor x = fixture->Float("input.x");
  const Tensor wq = fixture->Float("param.to_q.weight");
  const Tensor wk = fixture->Float("param.to_k.weight");
  const Tensor wv = fixture->Float("param.to_v.weight");
  const Tensor wo = fixture->Float("param.to_out.weight");
  const Tensor bo = fixture->Float("param.to_out.bias");
  AttentionLayerParams params;
  params.query_weight = wq.view<float>();
  params.key_weight = wk.view<float>();
  params.value_weight = wv.view<float>();
  params.out_weight = wo.view<float>();
  AttentionLayerMasks masks;
  std::vector<int64_t> lengths;
  if (fixture->Has("input.lengths")) {
    lengths = fixture->Int("input.lengths");
    masks.key_lengths.lengths = lengths;
  }
  Tensor out = Zeros(x.shape());
  AttentionLayerCache cache;
  ASSERT_TRUE((*layer)
                  ->Forward(*ctx_, params, x.view<float>(), {}, masks,
                            out.view<float>(), &cache)
                  .ok());
  const int64_t rows = out.NumElements() / dim;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < dim; ++c) {
      out.data<float>()[r * dim + c] += bo.data<float>()[c];
    }
  }
  Tensor expected = fixture->Float("output.out");
  if (!lengths.empty()) {
    ZeroPadded(lengths, out);
    ZeroPadded(lengths, expected);
  }
  Check(out.view<float>(), expected.view<float>(), kForwardTolerance, "out");

  const Tensor d_out = fixture->Float("d_output");
  Tensor d_x = Zeros(x.shape());
  Tensor d_wq = Zeros(wq.shape()), d_wk = Zeros(wk.shape()),
         d_wv = Zeros(wv.shape()), d_wo = Zeros(wo.shape()),
         d_bo = Zeros(bo.shape());
  AttentionLayerGrads grads;
  grads.query_weight = d_wq.view<float>();
  grads.key_weight = d_wk.view<float>();
  grads.value_weight = d_wv.view<float>();
  grads.out_weight = d_wo.view<float>();
  ASSERT_TRUE((*layer)
                  ->Backward(*ctx_, params, x.view<float>(), {}, masks, cache,
                             d_out.view<float>(), d_x.view<float>(), {}, grads)
                  .ok());
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < dim; ++c) {
      d_bo.data<float>()[c] += d_out.data<float>()[r * dim + c];
    }
  }
  Check(d_x.view<float>(), fixture->Float("grad.input.x").view<float>(),
        kGradientTolerance, "d_x");
  const std::pair<const char*, const Tensor*> param_grads[] = {
      {"to_q.weight", &d_wq},
      {"to_k.weight", &d_wk},
      {"to_v.weight", &d_wv},
      {"to_out.weight", &d_wo},
      {"to_out.bias", &d_bo}};
  for (const auto& [name, grad] : param_grads) {
    Check(grad->view<float>(),
          fixture->Float(absl::StrCat("grad.param.", name)).view<float>(),
          kGradientTolerance, name);
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, LatSelfAttentionParity,
                         ::testing::Values("self_attention_local_mask",
                                           "self_attention_causal_blindspot",
                                           "self_attention_causal_global"));

class LatImageParity : public LatParityTest,
                       public ::testing::WithParamInterface<const char*> {};

TEST_P(LatImageParity, OutputAndGradients) {
  auto fixture = Fixture::Open(absl::StrCat(kDir, GetParam(), ".safetensors"));
  ASSERT_TRUE(fixture.ok()) << fixture.status();
  const nlohmann::json kwargs = nlohmann::json::parse(fixture->Meta("config"));
  ImageLinearAttentionConfig config;
  config.chan = kwargs.at("chan").get<int64_t>();
  config.chan_out = kwargs.value("chan_out", int64_t{0});
  config.key_dim = kwargs.at("key_dim").get<int64_t>();
  config.value_dim = kwargs.at("value_dim").get<int64_t>();
  config.heads = kwargs.at("heads").get<int64_t>();
  config.norm_queries = kwargs.value("norm_queries", true);
  auto attention = ImageLinearAttention::Create(config);
  ASSERT_TRUE(attention.ok()) << attention.status();
  auto store = ParamStore::Create((*attention)->ParamShapes());
  ASSERT_TRUE(store.ok()) << store.status();
  StateDictMap map{.library = kLatLibrary};
  for (const ParamShape& shape : (*attention)->ParamShapes()) {
    map.rules.push_back({.reference = shape.name, .ftx = shape.name});
  }
  ASSERT_TRUE(LoadFixtureParams(*fixture, map, *store).ok());
  const Tensor x = fixture->Float("input.x");
  Tensor context;
  if (fixture->Has("input.context")) context = fixture->Float("input.context");
  const bool has_context = fixture->Has("input.context");
  const Tensor expected = fixture->Float("output.out");
  Tensor out = Zeros(expected.shape());
  ASSERT_TRUE((*attention)
                  ->Forward(*ctx_, *store, "", x.view<float>(),
                            has_context ? context.view<float>()
                                        : TensorView<const float>(),
                            out.view<float>(), true)
                  .ok());
  Check(out.view<float>(), expected.view<float>(), kForwardTolerance,
        "image output");
  store->ZeroGrads();
  Tensor d_x = Zeros(x.shape());
  Tensor d_context;
  if (has_context) d_context = Zeros(context.shape());
  ASSERT_TRUE((*attention)
                  ->Backward(*ctx_, *store,
                             fixture->Float("d_output").view<float>(),
                             d_x.view<float>(),
                             has_context ? d_context.view<float>()
                                         : TensorView<float>())
                  .ok());
  Check(d_x.view<float>(), fixture->Float("grad.input.x").view<float>(),
        kGradientTolerance, "image d_x");
  if (has_context) {
    Check(d_context.view<float>(),
          fixture->Float("grad.input.context").view<float>(),
          kGradientTolerance, "image d_context");
  }
  for (const std::string& name : fixture->NamesWithPrefix("grad.param.")) {
    auto grad = store->Grad(name.substr(std::string("grad.param.").size()));
    ASSERT_TRUE(grad.ok()) << grad.status();
    if (!has_context && name == "grad.param.to_k.bias") {
      // Without a context the key bias adds one constant to every position
      // of a softmax over the positions, so its gradient is exactly zero;
      // both libraries return float rounding noise (~1e-8), which a
      // relative comparison would judge against itself.
      for (int64_t i = 0; i < grad->NumElements(); ++i) {
        EXPECT_LT(std::abs(grad->data()[i]), 1e-6f) << name << " " << i;
      }
      continue;
    }
    Check(*grad, fixture->Float(name).view<float>(), kGradientTolerance,
          "image " + name);
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, LatImageParity,
                         ::testing::Values("image_attention_context",
                                           "image_attention_plain"));

class LatLmParity : public LatParityTest,
                    public ::testing::WithParamInterface<const char*> {};

TEST_P(LatLmParity, OutputAndGradients) {
  auto fixture = Fixture::Open(absl::StrCat(kDir, GetParam(), ".safetensors"));
  ASSERT_TRUE(fixture.ok()) << fixture.status();
  auto config = LatConfigFromJson(fixture->Meta("config"));
  ASSERT_TRUE(config.ok()) << config.status();
  auto model = LinearAttentionTransformerLM::Create(*config);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->pad_to_multiple(), fixture->MetaInt("pad_to_multiple"));
  auto store = ParamStore::Create((*model)->ParamShapes());
  ASSERT_TRUE(store.ok()) << store.status();
  auto map = LatStateDictMap(*config);
  ASSERT_TRUE(map.ok()) << map.status();
  const absl::Status loaded = LoadFixtureParams(*fixture, *map, *store);
  ASSERT_TRUE(loaded.ok()) << loaded;
  // The export is LAT's state_dict: the same keys (PKM num_batches_tracked as
  // an int64 scalar, the rotary tables pos_emb.emb / layer_pos_emb.emb) and
  // values, so it loads with load_state_dict(strict=True).
  auto reference_shapes = LatReferenceShapes(*config);
  ASSERT_TRUE(reference_shapes.ok()) << reference_shapes.status();
  ExpectExportMatchesStateDict(*fixture, *map, *store, *reference_shapes);

  const std::vector<int64_t> tokens64 = fixture->Int("input.tokens");
  const Tensor expected_out = fixture->Float("output.out");
  const int64_t batch = expected_out.shape().dim(0);
  const int64_t length = expected_out.shape().dim(1);
  const int64_t width = expected_out.shape().dim(2);
  ASSERT_EQ((*model)->OutputDim(), width);
  std::vector<int32_t> tokens(tokens64.begin(), tokens64.end());
  LatInputs inputs;
  inputs.tokens = TensorView<const int32_t>(tokens.data(), {batch, length});
  std::vector<int64_t> lengths;
  if (fixture->Has("input.lengths")) {
    lengths = fixture->Int("input.lengths");
    inputs.lengths.lengths = lengths;
  }
  Tensor context;
  if (fixture->Has("input.context")) {
    context = fixture->Float("input.context");
    inputs.context = context.view<float>();
    inputs.context_lengths.lengths = fixture->Int("input.context_lengths");
  }
  Tensor out = Zeros(expected_out.shape());
  const absl::Status forward =
      (*model)->Forward(*ctx_, *store, inputs, out.view<float>(), true);
  ASSERT_TRUE(forward.ok()) << forward;
  Tensor expected = fixture->Float("output.out");
  if (!lengths.empty()) {
    ZeroPadded(lengths, out);
    ZeroPadded(lengths, expected);
  }
  Check(out.view<float>(), expected.view<float>(), kForwardTolerance, "output");

  store->ZeroGrads();
  const Tensor d_out = fixture->Float("d_output");
  Tensor d_context;
  if (IsGiven(inputs.context)) d_context = Zeros(context.shape());
  const absl::Status backward = (*model)->Backward(
      *ctx_, *store, d_out.view<float>(),
      IsGiven(inputs.context) ? d_context.view<float>() : TensorView<float>());
  ASSERT_TRUE(backward.ok()) << backward;
  int64_t compared = 0;
  for (const std::string& name : fixture->NamesWithPrefix("grad.param.")) {
    const std::string param = name.substr(std::string("grad.param.").size());
    auto grad = store->Grad(param);
    ASSERT_TRUE(grad.ok()) << grad.status();
    Check(*grad, fixture->Float(name).view<float>(), kGradientTolerance, name);
    ++compared;
  }
  // Every parameter has a gradient; PKM's BatchNorm running statistics and
  // step counter are buffers (no grad.param entry).
  int64_t buffers = 0;
  store->ForEachParam([&](ParamSlot slot) {
    if (!slot.trainable) ++buffers;
  });
  EXPECT_EQ(compared + buffers, store->NumTensors());
  if (IsGiven(inputs.context)) {
    Check(d_context.view<float>(),
          fixture->Float("grad.input.context").view<float>(),
          kGradientTolerance, "grad.input.context");
  }
}

INSTANTIATE_TEST_SUITE_P(
    Cases, LatLmParity,
    ::testing::Values("lm_causal_local_axial", "lm_context_rotary_mask",
                      "lm_reversible_shift", "lm_linformer_embeddings",
                      "lm_pkm_eval", "lm_axial_causal_mask",
                      "lm_context_linformer_axial"));

}  // namespace
}  // namespace ftx::parity
