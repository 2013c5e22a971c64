// Parity of product-key-memory 0.1.10 PKM in training mode (the release
// linear-attention-transformer 0.19.1 uses) with the fixture written by
// tools/fixtures/make_pkm_train.py: PKM(dim=8, heads=2, num_keys=6, topk=3,
// dim_head=8) in train() mode, as ProductKeyMemory with kBatchNormRunning,
// key_dim 4 and training = true: the output (batch statistics), the running
// statistics after the forward, and the gradients of x and of every parameter
// through the batch statistics. BatchNorm1d's num_batches_tracked (0 -> 1) is
// not kept by ftx (unused with momentum 0.1).
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor.h"
#include "layers/product_key_memory.h"
#include "tests/parity/fixture.h"

namespace ftx::parity {
namespace {

constexpr char kFixture[] = "tests/data/parity/lat/pkm_train.safetensors";

Tensor Zeros(const Shape& shape) {
  return Tensor::Create(DType::kF32, shape).value();
}

void Check(const Tensor& actual, const Tensor& expected, double tolerance,
           const std::string& what) {
  ExpectParity(actual.view<const float>(), expected.view<const float>(),
               tolerance, what);
  ::testing::Test::RecordProperty(
      what, absl::StrCat(RelativeError(actual.view<const float>(),
                                       expected.view<const float>())));
}

TEST(PkmTrainParityTest, BatchStatisticsRunningUpdateAndGradients) {
  auto fixture = Fixture::Open(kFixture);
  ASSERT_TRUE(fixture.ok()) << fixture.status();
  auto ctx = Context::Create({.num_threads = 1}).value();
  auto pkm =
      ProductKeyMemory::Create({.dim = 8,
                                .heads = 2,
                                .num_keys = 6,
                                .topk = 3,
                                .key_dim = 4,
                                .query_norm = PkmQueryNorm::kBatchNormRunning});
  ASSERT_TRUE(pkm.ok()) << pkm.status();
  const Tensor x = fixture->Float("input.x");
  const char* const names[] = {
      "to_queries.weight", "norm.fn.weight",       "norm.fn.bias",       "keys",
      "values.weight",     "norm.fn.running_mean", "norm.fn.running_var"};
  std::vector<Tensor> params, grads;
  for (const char* name : names) {
    params.push_back(fixture->Float(absl::StrCat("param.", name)));
    grads.push_back(Zeros(params.back().shape()));
  }
  const ProductKeyMemoryParams views{
      params[0].view<const float>(), params[1].view<const float>(),
      params[2].view<const float>(), params[3].view<const float>(),
      params[4].view<const float>(), params[5].view<const float>(),
      params[6].view<const float>()};
  Tensor y = Zeros(x.shape());
  ProductKeyMemoryCache cache;
  ASSERT_TRUE(pkm->Forward(*ctx, views, x.view<const float>(), y.view<float>(),
                           &cache,
                           {.training = true,
                            .running_mean = params[5].view<float>(),
                            .running_var = params[6].view<float>()})
                  .ok());
  Check(y, fixture->Float("output.out"), kForwardTolerance, "pkm output");
  Check(params[5], fixture->Float("output.running_mean"), kForwardTolerance,
        "pkm running_mean");
  Check(params[6], fixture->Float("output.running_var"), kForwardTolerance,
        "pkm running_var");
  Tensor d_x = Zeros(x.shape());
  const ProductKeyMemoryGrads grad_views{
      grads[0].view<float>(), grads[1].view<float>(), grads[2].view<float>(),
      grads[3].view<float>(), grads[4].view<float>(), params[5].view<float>(),
      params[6].view<float>()};
  ASSERT_TRUE(pkm->Backward(*ctx, views, cache, x.view<const float>(),
                            fixture->Float("d_output").view<const float>(),
                            d_x.view<float>(), grad_views)
                  .ok());
  Check(d_x, fixture->Float("grad.input.x"), kGradientTolerance,
        "pkm grad.input.x");
  for (int i = 0; i < 5; ++i) {
    const std::string name = absl::StrCat("grad.param.", names[i]);
    Check(grads[i], fixture->Float(name), kGradientTolerance,
          absl::StrCat("pkm ", name));
  }
}

}  // namespace
}  // namespace ftx::parity
