// Parity with linformer-pytorch 0.19.3 and lucidrains' linformer 0.2.3
// (fixtures from tools/fixtures/make_linformer.py, eval mode):
//   - Linformer stacks: learnable E/F with sharing none, k_reduce_by_layer,
//     w_o_intermediate_dim, ff_intermediate and input / embeddings masks;
//     convolution E/F, headwise, causal (n, k) mask, relu; no_params E (read
//     from head.E) with kv sharing; decoder_mode + causal with layerwise
//     sharing and embeddings. Output, input gradients and every parameter
//     gradient for loss = sum(y * d_output).
//   - LinformerLM (emb_dim projection, layerwise, causal; full_attention with
//     return_emb) and LinformerEncDec: logits and every parameter gradient.
//     A length other than input_size is InvalidArgument (the reference
//     asserts).
//   - lucidrains LinformerSelfAttention (proj_k, proj_v (seq_len, k)) through
//     ftx's "linformer" mechanism with bound projections E = proj_k^T, F =
//     proj_v^T, also share_kv + one_kv_head on a sequence shorter than
//     seq_len (the projection sliced): output, d_x and every parameter
//     gradient.
// Parameters a case does not use (E / F under full_attention) have no
// gradient in the fixture (None in torch); ftx's must then be zero.
#include "attention/linformer.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/base/context.h"
#include "kernels/linear/linear.h"
#include "models/linformer.h"
#include "models/linformer_state_dict.h"
#include "models/safetensors.h"
#include "models/state_dict_map.h"
#include "nlohmann/json.hpp"
#include "tests/parity/fixture.h"

namespace ftx::parity {
namespace {

constexpr char kDir[] = "tests/data/parity/linformer/";

void Check(TensorView<const float> actual, TensorView<const float> expected,
           double tolerance, const std::string& what) {
  ExpectParity(actual, expected, tolerance, what);
  std::printf("%s: relative error %.3g\n", what.c_str(),
              RelativeError(actual, expected));
}

// Largest |value|.
float MaxAbs(TensorView<const float> view) {
  float largest = 0.0f;
  for (int64_t i = 0; i < view.NumElements(); ++i) {
    largest = std::max(largest, std::abs(view.data()[i]));
  }
  return largest;
}

// Every parameter gradient against "grad.param.<name>"; absent ones (unused
// in the reference) must be zero.
//
// One gradient is exactly zero in exact arithmetic: the bias of a
// convolution E (method convolution, E != F). It adds b to every projected
// key, K'_j + b, which shifts all scores of query i by the same q_i . b (also
// under the causal mask), and the softmax cancels that. Both sides then hold
// float rounding noise of ~1e-7 (no common scale to compare against), so such
// a gradient is checked as |grad| <= 1e-5 on both sides.
void CheckParamGrads(const Fixture& fixture, ParamStore& store) {
  store.ForEachParam([&](ParamSlot slot) {
    const std::string name = "grad.param." + slot.name;
    if (fixture.Has(name)) {
      const Tensor expected = fixture.Float(name);
      const bool vanishing = absl::EndsWith(slot.name, ".E.bias") &&
                             MaxAbs(expected.view<float>()) < 1e-5f;
      if (vanishing) {
        EXPECT_LE(MaxAbs(slot.grad), 1e-5f) << name;
        std::printf("%s: analytically zero, max |ftx| %.3g, max |ref| %.3g\n",
                    name.c_str(), MaxAbs(slot.grad),
                    MaxAbs(expected.view<float>()));
        return;
      }
      Check(slot.grad, expected.view<float>(), kGradientTolerance, name);
      return;
    }
    for (int64_t i = 0; i < slot.grad.NumElements(); ++i) {
      ASSERT_EQ(slot.grad.data()[i], 0.0f) << slot.name << " has no reference "
                                           << "gradient but a nonzero one here";
    }
  });
}

// Copies the fixture's no_params matrices "fixed.<name>" (n, k) into the
// model's [k, n].
void LoadFixedProjections(const Fixture& fixture, Linformer& model) {
  for (const FixedProjection& fixed : model.FixedProjections()) {
    const Tensor matrix = fixture.Float("fixed." + fixed.name);
    const int64_t k = fixed.matrix.dim(0), n = fixed.matrix.dim(1);
    ASSERT_EQ(matrix.shape(), (Shape{n, k})) << fixed.name;
    for (int64_t j = 0; j < k; ++j) {
      for (int64_t s = 0; s < n; ++s) {
        fixed.matrix.at(j, s) = matrix.data<float>()[s * k + j];
      }
    }
  }
}

LengthMask Lengths(const Fixture& fixture, const std::string& name) {
  LengthMask mask;
  if (fixture.Has(name)) mask.lengths = fixture.Int(name);
  return mask;
}

void RunStack(const std::string& name) {
  SCOPED_TRACE(name);
  auto fixture = Fixture::Open(kDir + name + ".safetensors");
  ASSERT_TRUE(fixture.ok()) << fixture.status();
  auto ctx = Context::Create({.num_threads = 2}).value();
  auto lm_config = LinformerLMConfigFromJson(fixture->Meta("config"));
  ASSERT_TRUE(lm_config.ok()) << lm_config.status();
  const LinformerConfig& config = lm_config->linformer;
  auto model = Linformer::Create(config);
  ASSERT_TRUE(model.ok()) << model.status();
  auto store = ParamStore::Create((*model)->ParamShapes()).value();
  auto map = LinformerStateDictMap(config);
  ASSERT_TRUE(map.ok()) << map.status();
  ASSERT_TRUE(LoadFixtureParams(*fixture, *map, store).ok());
  ExpectExportMatchesStateDict(*fixture, *map, store, {});
  LoadFixedProjections(*fixture, **model);

  const Tensor x = fixture->Float("input.x");
  const Shape shape = x.shape();
  LinformerInputs inputs;
  Tensor embeddings;
  if (config.decoder_mode) {
    embeddings = fixture->Float("input.embeddings");
    inputs.embeddings = embeddings.view<float>();
  }
  inputs.input_lengths = Lengths(*fixture, "input.input_lengths");
  inputs.embeddings_lengths = Lengths(*fixture, "input.embeddings_lengths");
  Tensor y = Tensor::Create(DType::kF32, shape).value();
  absl::Status status = (*model)->Forward(*ctx, store, "", x.view<float>(),
                                          inputs, y.view<float>(), true);
  ASSERT_TRUE(status.ok()) << status;
  Check(y.view<float>(), fixture->Float("output.y").view<float>(),
        kForwardTolerance, name + " output");

  const Tensor d_output = fixture->Float("d_output");
  Tensor d_x = Tensor::Create(DType::kF32, shape).value();
  Tensor d_embeddings = Tensor::Create(DType::kF32, shape).value();
  store.ZeroGrads();
  status = (*model)->Backward(
      *ctx, store, "", d_output.view<float>(), d_x.view<float>(),
      config.decoder_mode ? d_embeddings.view<float>() : TensorView<float>());
  ASSERT_TRUE(status.ok()) << status;
  Check(d_x.view<float>(), fixture->Float("grad.input.x").view<float>(),
        kGradientTolerance, name + " d_x");
  if (config.decoder_mode) {
    Check(d_embeddings.view<float>(),
          fixture->Float("grad.input.embeddings").view<float>(),
          kGradientTolerance, name + " d_embeddings");
  }
  CheckParamGrads(*fixture, store);
}

TEST(LinformerParityTest, StackLearnableNoneReducedMasked) {
  RunStack("stack_learnable_none");
}
TEST(LinformerParityTest, StackConvolutionHeadwiseCausal) {
  RunStack("stack_convolution_causal");
}
TEST(LinformerParityTest, StackNoParamsKeyValue) {
  RunStack("stack_no_params_kv");
}
TEST(LinformerParityTest, StackDecoderLayerwise) {
  RunStack("stack_decoder_layerwise");
}

std::vector<int32_t> Tokens(const Fixture& fixture, const std::string& name) {
  const std::vector<int64_t> wide = fixture.Int(name);
  return std::vector<int32_t>(wide.begin(), wide.end());
}

void RunLanguageModel(const std::string& name) {
  SCOPED_TRACE(name);
  auto fixture = Fixture::Open(kDir + name + ".safetensors");
  ASSERT_TRUE(fixture.ok()) << fixture.status();
  auto ctx = Context::Create({.num_threads = 2}).value();
  auto config = LinformerLMConfigFromJson(fixture->Meta("config"));
  ASSERT_TRUE(config.ok()) << config.status();
  auto model = LinformerLM::Create(*config);
  ASSERT_TRUE(model.ok()) << model.status();
  auto store = ParamStore::Create((*model)->ParamShapes()).value();
  auto map = LinformerLMStateDictMap(*config);
  ASSERT_TRUE(map.ok()) << map.status();
  ASSERT_TRUE(LoadFixtureParams(*fixture, *map, store).ok());
  ExpectExportMatchesStateDict(*fixture, *map, store, {});

  const std::vector<int32_t> tokens = Tokens(*fixture, "input.tokens");
  const Tensor expected = fixture->Float("output.logits");
  const int64_t n = config->linformer.input_size;
  const int64_t batch = static_cast<int64_t>(tokens.size()) / n;
  Tensor logits = Tensor::Create(DType::kF32, expected.shape()).value();
  absl::Status status = (*model)->Forward(
      *ctx, store,
      {.tokens = TensorView<const int32_t>(tokens.data(), {batch, n})},
      logits.view<float>(), true);
  ASSERT_TRUE(status.ok()) << status;
  Check(logits.view<float>(), expected.view<float>(), kForwardTolerance,
        name + " logits");
  store.ZeroGrads();
  status =
      (*model)->Backward(*ctx, store, fixture->Float("d_output").view<float>());
  ASSERT_TRUE(status.ok()) << status;
  CheckParamGrads(*fixture, store);

  // The reference asserts the length; ftx returns InvalidArgument.
  status = (*model)->Forward(
      *ctx, store,
      {.tokens = TensorView<const int32_t>(tokens.data(), {batch, n - 1})},
      TensorView<float>(logits.data<float>(),
                        {batch, n - 1, (*model)->output_dim()}),
      false);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
}

TEST(LinformerParityTest, LanguageModelLayerwiseProjected) {
  RunLanguageModel("lm_layerwise_emb");
}
TEST(LinformerParityTest, LanguageModelFullAttentionReturnEmb) {
  RunLanguageModel("lm_full_attention");
}

TEST(LinformerParityTest, ConverterExportsAndReimports) {
  // `ftx convert` path: the registered converter's map exports the fixture's
  // whole state_dict (every key of a shared E / F, the position table) and
  // imports it back.
  auto fixture =
      Fixture::Open(std::string(kDir) + "lm_layerwise_emb.safetensors");
  ASSERT_TRUE(fixture.ok()) << fixture.status();
  StateDictConverterRegistry registry;
  ASSERT_TRUE(RegisterLinformerConverter(registry).ok());
  EXPECT_EQ(RegisterLinformerConverter(registry).code(),
            absl::StatusCode::kAlreadyExists);
  auto converter = registry.Find(kLinformerLibrary);
  ASSERT_TRUE(converter.ok()) << converter.status();
  const std::string json = fixture->Meta("config");
  auto shapes = (*converter)->param_shapes(json);
  auto map = (*converter)->make_map(json);
  auto reference_shapes = (*converter)->reference_shapes(json);
  ASSERT_TRUE(shapes.ok() && map.ok() && reference_shapes.ok());
  auto store = ParamStore::Create(*shapes).value();
  ASSERT_TRUE(LoadFixtureParams(*fixture, *map, store).ok());
  ExpectExportMatchesStateDict(*fixture, *map, store, {});
  const std::string path =
      absl::StrCat(::testing::TempDir(), "/linformer_export.safetensors");
  const absl::Status exported =
      ExportStateDict(store, *map, *reference_shapes, path);
  ASSERT_TRUE(exported.ok()) << exported;
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  auto back = ParamStore::Create(*shapes).value();
  const absl::Status imported = ImportStateDict(*file, *map, back);
  ASSERT_TRUE(imported.ok()) << imported;
  const TensorView<float> a = store.values(), b = back.values();
  ASSERT_EQ(a.NumElements(), b.NumElements());
  for (int64_t i = 0; i < a.NumElements(); ++i) {
    ASSERT_EQ(a.data()[i], b.data()[i]) << i;
  }
  // The shared F of a later layer is written as a copy of the first one.
  const std::string copy = "linformer.fn.seq.2.fn.heads.1.F.weight";
  EXPECT_TRUE(fixture->Has("param." + copy));
  const auto alias = std::find_if(
      map->aliases.begin(), map->aliases.end(),
      [&](const StateDictAlias& entry) { return entry.reference == copy; });
  ASSERT_NE(alias, map->aliases.end());
  EXPECT_EQ(file->Bytes(**file->Find(copy)),
            file->Bytes(**file->Find(alias->same_as)));
}

TEST(LinformerParityTest, EncoderDecoder) {
  auto fixture = Fixture::Open(std::string(kDir) + "encdec.safetensors");
  ASSERT_TRUE(fixture.ok()) << fixture.status();
  auto ctx = Context::Create({.num_threads = 2}).value();
  auto encoder = LinformerLMConfigFromJson(fixture->Meta("encoder"));
  auto decoder = LinformerLMConfigFromJson(fixture->Meta("decoder"));
  ASSERT_TRUE(encoder.ok() && decoder.ok());
  const LinformerEncDecConfig config{*encoder, *decoder};
  auto model = LinformerEncDec::Create(config);
  ASSERT_TRUE(model.ok()) << model.status();
  auto store = ParamStore::Create((*model)->ParamShapes()).value();
  auto map = LinformerEncDecStateDictMap(config);
  ASSERT_TRUE(map.ok()) << map.status();
  ASSERT_TRUE(LoadFixtureParams(*fixture, *map, store).ok());
  ExpectExportMatchesStateDict(*fixture, *map, store, {});
  const std::vector<int32_t> source = Tokens(*fixture, "input.source");
  const std::vector<int32_t> target = Tokens(*fixture, "input.target");
  const Tensor expected = fixture->Float("output.logits");
  const int64_t batch = expected.shape().dim(0), n = expected.shape().dim(1);
  Tensor logits = Tensor::Create(DType::kF32, expected.shape()).value();
  absl::Status status = (*model)->Forward(
      *ctx, store, TensorView<const int32_t>(source.data(), {batch, n}),
      TensorView<const int32_t>(target.data(), {batch, n}),
      logits.view<float>(), true);
  ASSERT_TRUE(status.ok()) << status;
  Check(logits.view<float>(), expected.view<float>(), kForwardTolerance,
        "encdec logits");
  store.ZeroGrads();
  status =
      (*model)->Backward(*ctx, store, fixture->Float("d_output").view<float>());
  ASSERT_TRUE(status.ok()) << status;
  CheckParamGrads(*fixture, store);
}

// [n, k] (lucidrains proj) <-> [k, n] (ftx projection weight).
std::vector<float> Transposed(const float* data, int64_t rows, int64_t cols) {
  std::vector<float> out(rows * cols);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) out[c * rows + r] = data[r * cols + c];
  return out;
}

void RunLucidrains(const std::string& name) {
  SCOPED_TRACE(name);
  auto fixture = Fixture::Open(kDir + name + ".safetensors");
  ASSERT_TRUE(fixture.ok()) << fixture.status();
  auto ctx = Context::Create({.num_threads = 2}).value();
  const nlohmann::json config = nlohmann::json::parse(fixture->Meta("config"));
  const int64_t dim = config["dim"], seq_len = config["seq_len"],
                k = config["k"], H = config["heads"];
  const bool share_kv = config.value("share_kv", false);
  const bool one_kv_head = config.value("one_kv_head", false);
  const int64_t d = dim / H;
  const Tensor x = fixture->Float("input.x");
  const int64_t B = x.shape().dim(0), n = x.shape().dim(1);

  // The mechanism with lucidrains' projections bound: E = proj_k^T, F =
  // proj_v^T (or proj_k^T with share_kv), shared by all heads.
  auto attention = LinformerAttention::Create(
                       {.seq_len = seq_len,
                        .k = k,
                        .heads = H,
                        .sharing = share_kv ? LinformerSharing::kKeyValue
                                            : LinformerSharing::kHeadwise,
                        .init = LinformerInit::kUniform,
                        .bias = false,
                        .slice_shorter = true})
                       .value();
  std::vector<std::vector<float>> weights, weight_grads;
  std::vector<LinformerProjection> projections;
  for (const char* proj : {"proj_k", "proj_v"}) {
    if (share_kv && std::string(proj) == "proj_v") break;
    const Tensor p = fixture->Float(std::string("param.") + proj);
    weights.push_back(Transposed(p.data<float>(), seq_len, k));
    weight_grads.emplace_back(seq_len * k, 0.0f);
  }
  for (size_t i = 0; i < weights.size(); ++i) {
    projections.push_back(
        {TensorView<float>(weights[i].data(), {k, seq_len}),
         {},
         TensorView<float>(weight_grads[i].data(), {k, seq_len}),
         {}});
  }
  ASSERT_TRUE(attention->BindProjections(projections).ok());

  const Tensor w_q = fixture->Float("param.to_q.weight");
  const Tensor w_k = fixture->Float("param.to_k.weight");
  const Tensor w_out = fixture->Float("param.to_out.weight");
  const Tensor b_out = fixture->Float("param.to_out.bias");
  Tensor w_v;
  if (!share_kv) w_v = fixture->Float("param.to_v.weight");
  const int64_t kv_width = one_kv_head ? d : H * d;
  std::vector<float> q(B * n * H * d), k_small(B * n * kv_width),
      v_small(B * n * kv_width), keys(B * n * H * d), values(B * n * H * d);
  ASSERT_TRUE(LinearForward(*ctx, x.view<float>(), w_q.view<float>(), {},
                            TensorView<float>(q.data(), {B, n, H * d}))
                  .ok());
  ASSERT_TRUE(LinearForward(*ctx, x.view<float>(), w_k.view<float>(), {},
                            TensorView<float>(k_small.data(), {B, n, kv_width}))
                  .ok());
  if (share_kv) {
    v_small = k_small;
  } else {
    ASSERT_TRUE(
        LinearForward(*ctx, x.view<float>(), w_v.view<float>(), {},
                      TensorView<float>(v_small.data(), {B, n, kv_width}))
            .ok());
  }
  // One kv head serves every query head.
  for (int64_t r = 0; r < B * n; ++r)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t e = 0; e < d; ++e) {
        const int64_t from = r * kv_width + (one_kv_head ? 0 : h * d) + e;
        keys[(r * H + h) * d + e] = k_small[from];
        values[(r * H + h) * d + e] = v_small[from];
      }
  AttentionInputs inputs;
  inputs.queries = TensorView<const float>(q.data(), {B, n, H, d});
  inputs.keys = TensorView<const float>(keys.data(), {B, n, H, d});
  inputs.values = TensorView<const float>(values.data(), {B, n, H, d});
  std::vector<float> attended(B * n * H * d), out(B * n * dim);
  AttentionCache cache;
  ASSERT_TRUE(attention
                  ->Forward(*ctx, inputs,
                            TensorView<float>(attended.data(), {B, n, H, d}),
                            &cache)
                  .ok());
  ASSERT_TRUE(LinearForward(
                  *ctx, TensorView<const float>(attended.data(), {B, n, H * d}),
                  w_out.view<float>(), b_out.view<float>(),
                  TensorView<float>(out.data(), {B, n, dim}))
                  .ok());
  Check(TensorView<const float>(out.data(), {B, n, dim}),
        fixture->Float("output.out").view<float>(), kForwardTolerance,
        name + " output");

  // Backward of the same chain.
  const Tensor d_output = fixture->Float("d_output");
  std::vector<float> d_attended(attended.size()), d_q(q.size()),
      d_keys(keys.size()), d_values(values.size()), d_k_small(k_small.size()),
      d_v_small(v_small.size()), d_x(B * n * dim);
  std::vector<float> d_w_q(w_q.NumElements()), d_w_k(w_k.NumElements()),
      d_w_v(share_kv ? 0 : w_v.NumElements()), d_w_out(w_out.NumElements()),
      d_b_out(b_out.NumElements());
  ASSERT_TRUE(LinearBackward(
                  *ctx, TensorView<const float>(attended.data(), {B, n, H * d}),
                  w_out.view<float>(), d_output.view<float>(),
                  TensorView<float>(d_attended.data(), {B, n, H * d}),
                  TensorView<float>(d_w_out.data(), w_out.shape()),
                  TensorView<float>(d_b_out.data(), b_out.shape()))
                  .ok());
  ASSERT_TRUE(
      attention
          ->Backward(*ctx, inputs, cache,
                     TensorView<const float>(d_attended.data(), {B, n, H, d}),
                     {TensorView<float>(d_q.data(), {B, n, H, d}),
                      TensorView<float>(d_keys.data(), {B, n, H, d}),
                      TensorView<float>(d_values.data(), {B, n, H, d})})
          .ok());
  for (int64_t r = 0; r < B * n; ++r)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t e = 0; e < d; ++e) {
        const int64_t to = r * kv_width + (one_kv_head ? 0 : h * d) + e;
        d_k_small[to] += d_keys[(r * H + h) * d + e];
        (share_kv ? d_k_small : d_v_small)[to] += d_values[(r * H + h) * d + e];
      }
  ASSERT_TRUE(LinearBackward(*ctx, x.view<float>(), w_q.view<float>(),
                             TensorView<const float>(d_q.data(), {B, n, H * d}),
                             TensorView<float>(d_x.data(), {B, n, dim}),
                             TensorView<float>(d_w_q.data(), w_q.shape()), {})
                  .ok());
  ASSERT_TRUE(LinearBackward(
                  *ctx, x.view<float>(), w_k.view<float>(),
                  TensorView<const float>(d_k_small.data(), {B, n, kv_width}),
                  TensorView<float>(d_x.data(), {B, n, dim}),
                  TensorView<float>(d_w_k.data(), w_k.shape()), {},
                  {.accumulate_input_grad = true})
                  .ok());
  if (!share_kv) {
    ASSERT_TRUE(LinearBackward(
                    *ctx, x.view<float>(), w_v.view<float>(),
                    TensorView<const float>(d_v_small.data(), {B, n, kv_width}),
                    TensorView<float>(d_x.data(), {B, n, dim}),
                    TensorView<float>(d_w_v.data(), w_v.shape()), {},
                    {.accumulate_input_grad = true})
                    .ok());
    Check(TensorView<const float>(d_w_v.data(), w_v.shape()),
          fixture->Float("grad.param.to_v.weight").view<float>(),
          kGradientTolerance, name + " to_v grad");
  }
  Check(TensorView<const float>(d_x.data(), {B, n, dim}),
        fixture->Float("grad.input.x").view<float>(), kGradientTolerance,
        name + " d_x");
  Check(TensorView<const float>(d_w_q.data(), w_q.shape()),
        fixture->Float("grad.param.to_q.weight").view<float>(),
        kGradientTolerance, name + " to_q grad");
  Check(TensorView<const float>(d_w_k.data(), w_k.shape()),
        fixture->Float("grad.param.to_k.weight").view<float>(),
        kGradientTolerance, name + " to_k grad");
  Check(TensorView<const float>(d_w_out.data(), w_out.shape()),
        fixture->Float("grad.param.to_out.weight").view<float>(),
        kGradientTolerance, name + " to_out grad");
  Check(TensorView<const float>(d_b_out.data(), b_out.shape()),
        fixture->Float("grad.param.to_out.bias").view<float>(),
        kGradientTolerance, name + " to_out bias grad");
  for (size_t i = 0; i < weight_grads.size(); ++i) {
    const std::string proj = i == 0 ? "proj_k" : "proj_v";
    const std::vector<float> grad =
        Transposed(weight_grads[i].data(), k, seq_len);
    Check(TensorView<const float>(grad.data(), {seq_len, k}),
          fixture->Float("grad.param." + proj).view<float>(),
          kGradientTolerance, name + " " + proj + " grad");
  }
}

TEST(LinformerParityTest, LucidrainsSelfAttention) {
  RunLucidrains("lucidrains_self_attention");
}
TEST(LinformerParityTest, LucidrainsSharedKeyValueShorterSequence) {
  RunLucidrains("lucidrains_share_kv_short");
}

}  // namespace
}  // namespace ftx::parity
