// Parity of entmax-1.5 attention with x-transformers 0.26.6's
// attn_use_entmax15 (the `entmax` package's entmax15 in place of the softmax),
// alone, causal, and after attn_sparse_topk's selection, against fixtures from
// tools/fixtures/make_entmax.py. ftx runs it as the "exact-topk" mechanism
// with use_entmax15 (topk = S selects every key; sparse_topk_ties gives
// x-transformers' "keep every score >= the k-th" rule). Output within 1e-4,
// dQ, dK, dV within 1e-3.
#include <cstdint>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "attention/attention.h"
#include "attention/builder.h"
#include "attention/builtin.h"
#include "attention/mask.h"
#include "attention/registry.h"
#include "gtest/gtest.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor.h"
#include "tests/parity/fixture.h"

namespace ftx::parity {
namespace {

void ExpectEntmaxCase(const std::string& name, int64_t topk, bool causal) {
  absl::StatusOr<Fixture> fixture = Fixture::Open(absl::StrCat(
      "tests/data/parity/x_transformers/entmax_", name, ".safetensors"));
  ASSERT_TRUE(fixture.ok()) << fixture.status();
  ASSERT_EQ(fixture->MetaBool("causal"), causal);
  auto ctx = Context::Create({.num_threads = 2}).value();
  AttentionRegistry registry;
  ASSERT_TRUE(RegisterBuiltinAttentions(registry).ok());
  AttentionBuilder builder(registry);
  ASSERT_TRUE(builder.Set("topk", topk).ok());
  ASSERT_TRUE(builder.Set("use_entmax15", true).ok());
  ASSERT_TRUE(builder.Set("sparse_topk_ties", true).ok());
  ASSERT_TRUE(builder.Set("attention_dropout", 0.0).ok());
  absl::StatusOr<std::unique_ptr<Attention>> attention =
      builder.Build("exact-topk");
  ASSERT_TRUE(attention.ok()) << attention.status();

  const Tensor queries = fixture->Float("input.queries");  // [N, L, H, E]
  const Tensor keys = fixture->Float("input.keys");
  const Tensor values = fixture->Float("input.values");
  AttentionInputs inputs;
  inputs.queries = queries.view<const float>();
  inputs.keys = keys.view<const float>();
  inputs.values = values.view<const float>();
  inputs.key_lengths.lengths = fixture->Int("input.key_lengths");
  if (causal) inputs.attn_mask = AttnMask::Causal();

  const Tensor expected = fixture->Float("output.values");
  Tensor out = Tensor::Create(DType::kF32, expected.shape()).value();
  AttentionCache cache;
  absl::Status status =
      (*attention)->Forward(*ctx, inputs, out.view<float>(), &cache);
  ASSERT_TRUE(status.ok()) << status;
  ExpectParity(out.view<const float>(), expected.view<const float>(),
               kForwardTolerance, name + " output");

  const Tensor d_out = fixture->Float("d_output");
  Tensor d_queries = Tensor::Create(DType::kF32, queries.shape()).value();
  Tensor d_keys = Tensor::Create(DType::kF32, keys.shape()).value();
  Tensor d_values = Tensor::Create(DType::kF32, values.shape()).value();
  status = (*attention)
               ->Backward(*ctx, inputs, cache, d_out.view<const float>(),
                          {d_queries.view<float>(), d_keys.view<float>(),
                           d_values.view<float>()});
  ASSERT_TRUE(status.ok()) << status;
  const struct {
    const Tensor& actual;
    const char* name;
  } gradients[] = {
      {d_queries, "queries"}, {d_keys, "keys"}, {d_values, "values"}};
  for (const auto& gradient : gradients) {
    ExpectParity(gradient.actual.view<const float>(),
                 fixture->Float(absl::StrCat("grad.input.", gradient.name))
                     .view<const float>(),
                 kGradientTolerance, absl::StrCat(name, " d_", gradient.name));
  }
}

TEST(EntmaxParityTest, MaskedKeys) {
  ExpectEntmaxCase("masked", /*topk=*/11, /*causal=*/false);
}

TEST(EntmaxParityTest, Causal) {
  ExpectEntmaxCase("causal", /*topk=*/11, /*causal=*/true);
}

TEST(EntmaxParityTest, AfterSparseTopK) {
  ExpectEntmaxCase("sparse_topk", /*topk=*/4, /*causal=*/false);
}

}  // namespace
}  // namespace ftx::parity
