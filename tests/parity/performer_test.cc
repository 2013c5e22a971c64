// Parity with performer-pytorch 1.1.4 (fixtures from
// tools/fixtures/make_performer.py):
//   - FastAttention on (b, h, n, d) with the exported projection_matrix:
//     softmax kernel non-causal and causal, generalized ReLU kernel,
//     no_projection non-causal and causal; output and dQ, dK, dV.
//   - PerformerLM in eval mode (the reversible case in training mode with
//     every dropout 0, which computes the same function): logits and the
//     gradient of every parameter for loss = sum(logits * d_output).
//   - PerformerEncDec: the decoder logits given the encodings as context, and
//     every parameter gradient of both models.
// The fixtures' causal cases ran performer's non-CUDA causal path
// (causal_linear_attention_noncuda), which computes the same function as the
// CUDA CausalDotProduct path.
#include "models/performer.h"

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "attention/favor.h"
#include "gtest/gtest.h"
#include "kernels/base/context.h"
#include "models/performer_state_dict.h"
#include "nlohmann/json.hpp"
#include "tests/parity/fixture.h"

namespace ftx::parity {
namespace {

constexpr double kForwardTolerance = 1e-4;
constexpr double kGradientTolerance = 1e-3;
constexpr char kDir[] = "tests/data/parity/performer/";

// ExpectParity, and the relative error printed for the record.
void Check(TensorView<const float> actual, TensorView<const float> expected,
           double tolerance, const std::string& what) {
  ExpectParity(actual, expected, tolerance, what);
  std::printf("%s: relative error %.3g\n", what.c_str(),
              RelativeError(actual, expected));
}

// (b, h, n, d) -> [N = b, L = n, H = h, E = d], contiguous.
Tensor HeadsMajorToSequenceMajor(const Tensor& bhnd) {
  const Shape& s = bhnd.shape();
  const int64_t b = s.dim(0), h = s.dim(1), n = s.dim(2), d = s.dim(3);
  Tensor out = Tensor::Create(DType::kF32, {b, n, h, d}).value();
  const float* in = bhnd.data<float>();
  float* o = out.data<float>();
  for (int64_t i = 0; i < b; ++i)
    for (int64_t j = 0; j < h; ++j)
      for (int64_t t = 0; t < n; ++t)
        for (int64_t e = 0; e < d; ++e)
          o[((i * n + t) * h + j) * d + e] = in[((i * h + j) * n + t) * d + e];
  return out;
}

void RunFastAttention(const std::string& name) {
  SCOPED_TRACE(name);
  auto fixture = Fixture::Open(kDir + name + ".safetensors");
  ASSERT_TRUE(fixture.ok()) << fixture.status();
  auto ctx = Context::Create({.num_threads = 2}).value();
  FavorAttentionOptions options;
  options.nb_features = fixture->MetaInt("nb_features");
  options.causal = fixture->MetaBool("causal");
  options.generalized_attention = fixture->MetaBool("generalized_attention");
  options.no_projection = fixture->MetaBool("no_projection");
  FavorAttention attention(options);
  const Tensor projection = fixture->Float("param.projection_matrix");
  ASSERT_TRUE(attention.SetProjection(projection.view<float>()).ok());

  const Tensor q = HeadsMajorToSequenceMajor(fixture->Float("input.q"));
  const Tensor k = HeadsMajorToSequenceMajor(fixture->Float("input.k"));
  const Tensor v = HeadsMajorToSequenceMajor(fixture->Float("input.v"));
  AttentionInputs inputs;
  inputs.queries = q.view<float>();
  inputs.keys = k.view<float>();
  inputs.values = v.view<float>();
  inputs.attn_mask = options.causal ? AttnMask::Causal() : AttnMask::All();
  Tensor out = Tensor::Create(DType::kF32, v.shape()).value();
  AttentionCache cache;
  ASSERT_TRUE(attention.Forward(*ctx, inputs, out.view<float>(), &cache).ok());
  Check(out.view<float>(),
        HeadsMajorToSequenceMajor(fixture->Float("output.out")).view<float>(),
        kForwardTolerance, name + " output");

  const Tensor d_out = HeadsMajorToSequenceMajor(fixture->Float("d_output"));
  Tensor d_q = Tensor::Create(DType::kF32, q.shape()).value();
  Tensor d_k = Tensor::Create(DType::kF32, k.shape()).value();
  Tensor d_v = Tensor::Create(DType::kF32, v.shape()).value();
  ASSERT_TRUE(attention
                  .Backward(*ctx, inputs, cache, d_out.view<float>(),
                            {.d_queries = d_q.view<float>(),
                             .d_keys = d_k.view<float>(),
                             .d_values = d_v.view<float>()})
                  .ok());
  for (const auto& [grad, key] :
       {std::pair<const Tensor*, const char*>{&d_q, "grad.input.q"},
        {&d_k, "grad.input.k"},
        {&d_v, "grad.input.v"}}) {
    Check(grad->view<float>(),
          HeadsMajorToSequenceMajor(fixture->Float(key)).view<float>(),
          kGradientTolerance, name + " " + key);
  }
}

TEST(PerformerParityTest, FastAttentionSoftmax) {
  RunFastAttention("fast_attention_softmax");
}
TEST(PerformerParityTest, FastAttentionCausal) {
  RunFastAttention("fast_attention_causal");
}
TEST(PerformerParityTest, FastAttentionGeneralized) {
  RunFastAttention("fast_attention_generalized");
}
TEST(PerformerParityTest, FastAttentionNoProjection) {
  RunFastAttention("fast_attention_no_projection");
}
TEST(PerformerParityTest, FastAttentionNoProjectionCausal) {
  RunFastAttention("fast_attention_no_projection_causal");
}

std::vector<int32_t> Tokens(const Fixture& fixture, const char* name) {
  const std::vector<int64_t> values = fixture.Int(name);
  return std::vector<int32_t>(values.begin(), values.end());
}

// Compares every parameter gradient the fixture holds; parameters PyTorch
// left without a gradient (the encoder's unused to_out) must have none here.
void ExpectGradients(const Fixture& fixture, ParamStore& store,
                     const std::string& what) {
  int compared = 0;
  store.ForEachParam([&](ParamSlot slot) {
    const std::string key = "grad.param." + slot.name;
    if (fixture.Has(key)) {
      Check(slot.grad, fixture.Float(key).view<float>(), kGradientTolerance,
            what + " " + key);
      ++compared;
    } else {
      for (int64_t i = 0; i < slot.grad.NumElements(); ++i) {
        ASSERT_EQ(slot.grad.data()[i], 0.0f) << slot.name;
      }
    }
  });
  EXPECT_EQ(compared,
            static_cast<int>(fixture.NamesWithPrefix("grad.param.").size()))
      << what;
}

void RunLanguageModel(const std::string& name) {
  SCOPED_TRACE(name);
  auto fixture = Fixture::Open(kDir + name + ".safetensors");
  ASSERT_TRUE(fixture.ok()) << fixture.status();
  auto ctx = Context::Create({.num_threads = 2}).value();
  auto config = PerformerLMConfigFromJson(fixture->Meta("config"));
  ASSERT_TRUE(config.ok()) << config.status();
  auto model = PerformerLM::Create(*config);
  ASSERT_TRUE(model.ok()) << model.status();
  auto store = ParamStore::Create((*model)->ParamShapes());
  ASSERT_TRUE(store.ok()) << store.status();
  auto map = PerformerStateDictMap(*config);
  ASSERT_TRUE(map.ok()) << map.status();
  const absl::Status loaded = LoadFixtureParams(*fixture, *map, *store);
  ASSERT_TRUE(loaded.ok()) << loaded;
  ExpectExportMatchesStateDict(*fixture, *map, *store,
                               PerformerReferenceShapes(*config).value());

  const Tensor expected = fixture->Float("output.logits");
  const int64_t B = expected.shape().dim(0), T = expected.shape().dim(1);
  const std::vector<int32_t> tokens = Tokens(*fixture, "input.tokens");
  PerformerLMInputs inputs;
  inputs.tokens = TensorView<const int32_t>(tokens.data(), {B, T});
  if (fixture->Has("input.lengths")) {
    inputs.mask.lengths = fixture->Int("input.lengths");
  }
  Tensor logits = Tensor::Create(DType::kF32, expected.shape()).value();
  const absl::Status forward =
      (*model)->Forward(*ctx, *store, inputs, logits.view<float>(), true);
  ASSERT_TRUE(forward.ok()) << forward;
  Check(logits.view<float>(), expected.view<float>(), kForwardTolerance,
        name + " logits");
  store->ZeroGrads();
  const Tensor d_logits = fixture->Float("d_output");
  const absl::Status backward =
      (*model)->Backward(*ctx, *store, d_logits.view<float>());
  ASSERT_TRUE(backward.ok()) << backward;
  ExpectGradients(*fixture, *store, name);
}

TEST(PerformerParityTest, LanguageModelLocalHeadsRotary) {
  RunLanguageModel("lm_local_rotary");
}
TEST(PerformerParityTest, LanguageModelCausalLocalHeads) {
  RunLanguageModel("lm_causal_local");
}
TEST(PerformerParityTest, LanguageModelAxialGeneralizedMask) {
  RunLanguageModel("lm_axial_generalized_mask");
}
TEST(PerformerParityTest, LanguageModelReversibleCausal) {
  RunLanguageModel("lm_reversible_causal");
}
TEST(PerformerParityTest, LanguageModelTiedEmbeddingNoProjection) {
  RunLanguageModel("lm_tie_embed_no_projection");
}

// PerformerEncDec's keyword arguments (dim, enc_*, dec_*) as two PerformerLM
// configs.
PerformerEncDecConfig EncDecConfigFromKwargs(const std::string& json) {
  const nlohmann::json kwargs = nlohmann::json::parse(json);
  nlohmann::json enc = nlohmann::json::object(), dec = nlohmann::json::object();
  for (const auto& [key, value] : kwargs.items()) {
    if (key.rfind("enc_", 0) == 0) {
      enc[key.substr(4)] = value;
    } else if (key.rfind("dec_", 0) == 0) {
      dec[key.substr(4)] = value;
    } else {
      enc[key] = value;
      dec[key] = value;
    }
  }
  PerformerEncDecConfig config;
  config.enc = PerformerLMConfigFromJson(enc.dump()).value();
  config.dec = PerformerLMConfigFromJson(dec.dump()).value();
  return config;
}

TEST(PerformerParityTest, EncoderDecoder) {
  auto fixture = Fixture::Open(std::string(kDir) + "enc_dec.safetensors");
  ASSERT_TRUE(fixture.ok()) << fixture.status();
  auto ctx = Context::Create({.num_threads = 2}).value();
  const PerformerEncDecConfig config =
      EncDecConfigFromKwargs(fixture->Meta("config"));
  auto model = PerformerEncDec::Create(config);
  ASSERT_TRUE(model.ok()) << model.status();
  auto store = ParamStore::Create((*model)->ParamShapes());
  ASSERT_TRUE(store.ok()) << store.status();
  auto map = PerformerEncDecStateDictMap(config);
  ASSERT_TRUE(map.ok()) << map.status();
  const absl::Status loaded = LoadFixtureParams(*fixture, *map, *store);
  ASSERT_TRUE(loaded.ok()) << loaded;

  const std::vector<int32_t> seq_in = Tokens(*fixture, "input.seq_in");
  const std::vector<int32_t> seq_out = Tokens(*fixture, "input.seq_out");
  const Tensor expected = fixture->Float("output.logits");
  const int64_t B = expected.shape().dim(0), T = expected.shape().dim(1);
  const int64_t S = static_cast<int64_t>(seq_in.size()) / B;
  // The decoder reads seq_out[:, :-1].
  std::vector<int32_t> decoder_in;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < T; ++t)
      decoder_in.push_back(seq_out[b * (T + 1) + t]);
  }
  PerformerEncDecInputs inputs;
  inputs.seq_in = TensorView<const int32_t>(seq_in.data(), {B, S});
  inputs.enc_mask.lengths = fixture->Int("input.enc_lengths");
  inputs.seq_out = TensorView<const int32_t>(decoder_in.data(), {B, T});
  Tensor logits = Tensor::Create(DType::kF32, expected.shape()).value();
  const absl::Status forward =
      (*model)->Forward(*ctx, *store, inputs, logits.view<float>(), true);
  ASSERT_TRUE(forward.ok()) << forward;
  Check(logits.view<float>(), expected.view<float>(), kForwardTolerance,
        "enc_dec logits");
  store->ZeroGrads();
  const Tensor d_logits = fixture->Float("d_output");
  const absl::Status backward =
      (*model)->Backward(*ctx, *store, d_logits.view<float>());
  ASSERT_TRUE(backward.ok()) << backward;
  ExpectGradients(*fixture, *store, "enc_dec");
}

}  // namespace
}  // namespace ftx::parity
