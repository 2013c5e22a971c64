// Parity of ftx's "aft-full" and "aft-simple" (attention/aft.h) with
// fast-transformers' AFTFullAttention and AFTSimpleAttention
// (fast_transformers/attention/aft_attention.py of the GitHub HEAD, commit
// 2ad36b9; the PyPI release 0.4.0 does not contain it), against the fixtures
// that tools/fixtures/make_fast_transformers_aft.py wrote with that file
// (tests/data/parity/fast_transformers/aft_*.safetensors).
//
// Each case builds the mechanism, copies the fixture's u and v
// ([max_sequence_length, 64], aft-full), feeds it Q [N, L, H, E],
// K [N, S, H, E], V [N, S, H, E] and masks, and compares the output
// [N, L, H, E] (relative error 1e-4) and the gradients of
// sum(output * d_output) (1e-3) with torch autograd's. Both quirks of the
// reference are reproduced by ftx and matched here: aft-full multiplies the
// keys by the position bias (softmax_s(K * w), not exp(K + w)), and causal
// aft-simple normalises key s over the prefix up to s, not up to the query.
//
// Deliberate differences, kept out of the fixtures: fast-transformers masks
// with -inf and then multiplies by w, so a masked key only drops out where the
// product is -inf (w > 0 for a padded key, K > 0 for a -inf attn_mask entry);
// elsewhere it gives +inf or NaN, where ftx always drops the masked key. The
// masked cases therefore use positive u, v (and positive keys with an
// attn_mask), where both agree. Even there torch's product rule meets 0 * inf
// at the masked entries: d_keys with an attn_mask (or the causal mask) and
// d_u, d_v with key lengths are NaN in the reference, so those fixtures do not
// store them and only the gradients present are compared. A query with no
// usable key (ftx: zero output; reference: NaN) does not occur in them.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "attention/aft.h"
#include "attention/attention.h"
#include "attention/mask.h"
#include "gtest/gtest.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor.h"
#include "tests/parity/fixture.h"

namespace ftx::parity {
namespace {

constexpr double kForwardTolerance = 1e-4;
constexpr double kGradientTolerance = 1e-3;

Fixture OpenCase(absl::string_view name) {
  const std::string path = absl::StrCat(
      "tests/data/parity/fast_transformers/aft_", name, ".safetensors");
  absl::StatusOr<Fixture> fixture = Fixture::Open(path);
  EXPECT_TRUE(fixture.ok()) << fixture.status();
  return std::move(fixture).value();
}

Tensor Zeros(const Shape& shape) {
  return Tensor::Create(DType::kF32, shape).value();
}

// The fixture's Q, K, V and masks, and the AttentionInputs that view them.
struct CaseInputs {
  Tensor queries, keys, values;  // [N, L, H, E], [N, S, H, E], [N, S, H, E]
  Tensor additive_mask;          // [L, S] when the fixture has an attn_mask
  AttentionInputs inputs;
};

CaseInputs LoadInputs(const Fixture& fixture) {
  CaseInputs c;
  c.queries = fixture.Float("input.queries");
  c.keys = fixture.Float("input.keys");
  c.values = fixture.Float("input.values");
  c.inputs.queries = c.queries.view<const float>();
  c.inputs.keys = c.keys.view<const float>();
  c.inputs.values = c.values.view<const float>();
  if (fixture.Has("input.attn_mask")) {
    const int64_t queries = c.queries.shape()[1], keys = c.keys.shape()[1];
    const std::vector<int64_t> keep = fixture.Int("input.attn_mask");
    c.additive_mask = Zeros({queries, keys});
    float* additive = c.additive_mask.data<float>();
    for (int64_t i = 0; i < queries * keys; ++i) {
      additive[i] = keep[i] ? 0.0f : -std::numeric_limits<float>::infinity();
    }
    c.inputs.attn_mask =
        AttnMask::Additive(c.additive_mask.view<const float>());
  } else if (fixture.MetaBool("causal")) {
    c.inputs.attn_mask = AttnMask::Causal();
  }
  if (fixture.Has("input.key_lengths")) {
    c.inputs.key_lengths.lengths = fixture.Int("input.key_lengths");
  }
  return c;
}

class FastTransformersAftParity : public ::testing::Test {
 protected:
  void SetUp() override { ctx_ = Context::Create({.num_threads = 2}).value(); }

  // Forward against "output.values", then backward against every
  // "grad.input.*" and "grad.param.*" the fixture stores.
  void ExpectMatches(Attention& attention, const Fixture& fixture,
                     const std::string& what) {
    const CaseInputs c = LoadInputs(fixture);
    std::vector<ParamRef> params = attention.Parameters();
    for (const ParamRef& param : params) {
      const Tensor value = fixture.Float(absl::StrCat("param.", param.name));
      ASSERT_EQ(value.shape(), param.value->shape()) << param.name;
      std::copy_n(value.data<float>(), value.NumElements(),
                  param.value->data<float>());
      std::fill_n(param.grad->data<float>(), param.grad->NumElements(), 0.0f);
    }
    const Tensor expected = fixture.Float("output.values");
    Tensor out = Zeros(expected.shape());
    AttentionCache cache;
    absl::Status status =
        attention.Forward(*ctx_, c.inputs, out.view<float>(), &cache);
    ASSERT_TRUE(status.ok()) << status;
    ExpectParity(out.view<const float>(), expected.view<const float>(),
                 kForwardTolerance, what + " output");

    const Tensor d_out = fixture.Float("d_output");
    Tensor d_queries = Zeros(c.queries.shape());
    Tensor d_keys = Zeros(c.keys.shape());
    Tensor d_values = Zeros(c.values.shape());
    status =
        attention.Backward(*ctx_, c.inputs, cache, d_out.view<const float>(),
                           {d_queries.view<float>(), d_keys.view<float>(),
                            d_values.view<float>()});
    ASSERT_TRUE(status.ok()) << status;
    std::vector<std::pair<std::string, const Tensor*>> gradients = {
        {"grad.input.queries", &d_queries},
        {"grad.input.keys", &d_keys},
        {"grad.input.values", &d_values}};
    for (const ParamRef& param : params) {
      gradients.emplace_back(absl::StrCat("grad.param.", param.name),
                             param.grad);
    }
    int compared = 0;
    for (const auto& [name, actual] : gradients) {
      if (!fixture.Has(name)) continue;
      ExpectParity(actual->view<const float>(),
                   fixture.Float(name).view<const float>(), kGradientTolerance,
                   absl::StrCat(what, " ", name));
      ++compared;
    }
    EXPECT_GE(compared, 2) << what;
  }

  void ExpectFullCase(absl::string_view name) {
    const Fixture fixture = OpenCase(name);
    ASSERT_EQ(fixture.Meta("mechanism"), "aft-full");
    absl::StatusOr<std::unique_ptr<AftFullAttention>> attention =
        AftFullAttention::Create(
            {.max_sequence_length = fixture.MetaInt("max_sequence_length"),
             .aft_parameterization = fixture.MetaInt("aft_parameterization")});
    ASSERT_TRUE(attention.ok()) << attention.status();
    ExpectMatches(**attention, fixture, std::string(name));
  }

  void ExpectSimpleCase(absl::string_view name) {
    const Fixture fixture = OpenCase(name);
    ASSERT_EQ(fixture.Meta("mechanism"), "aft-simple");
    AftSimpleAttention attention;
    ExpectMatches(attention, fixture, std::string(name));
  }

  std::unique_ptr<Context> ctx_;
};

// L = 11 != S = 13, no masks; every gradient including d_u and d_v.
TEST_F(FastTransformersAftParity, FullUnmasked) { ExpectFullCase("full"); }

// A random -inf attn_mask (positive u, v and keys); d_keys is NaN in the
// reference and not compared.
TEST_F(FastTransformersAftParity, FullWithAttnMask) {
  ExpectFullCase("full_masked");
}

// TriangularCausalMask (positive u, v and keys); d_keys is NaN in the
// reference and not compared.
TEST_F(FastTransformersAftParity, FullCausal) { ExpectFullCase("full_causal"); }

// Key lengths [14, 9] with positive u, v; d_u and d_v are NaN in the reference
// and not compared.
TEST_F(FastTransformersAftParity, FullWithKeyLengths) {
  ExpectFullCase("full_key_lengths");
}

// Non-causal, L = 11 != S = 17, key lengths [17, 10].
TEST_F(FastTransformersAftParity, SimpleWithKeyLengths) {
  ExpectSimpleCase("simple");
}

// Causal with the prefix-normalisation quirk, key lengths [19, 14].
TEST_F(FastTransformersAftParity, SimpleCausalWithKeyLengths) {
  ExpectSimpleCase("simple_causal");
}

}  // namespace
}  // namespace ftx::parity
