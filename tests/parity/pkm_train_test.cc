// Parity of product-key-memory 0.1.10 PKM in training mode (the release
// linear-attention-transformer 0.19.1 uses) with the fixture written by
// tools/fixtures/make_pkm_train.py: PKM(dim=8, heads=2, num_keys=6, topk=3,
// dim_head=8) in train() mode, as ProductKeyMemory with kBatchNormRunning,
// key_dim 4 and training = true: the output (batch statistics), the buffers
// after the forward (running statistics and BatchNorm1d's num_batches_tracked,
// 0 -> 1), and the gradients of x and of every parameter through the batch
// statistics. The weights and buffers go through a ParamStore with PKM's
// state_dict keys, and its export must equal the fixture's state_dict.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor.h"
#include "layers/product_key_memory.h"
#include "models/param_store.h"
#include "models/state_dict_map.h"
#include "tests/parity/fixture.h"

namespace ftx::parity {
namespace {

constexpr char kFixture[] = "tests/data/parity/lat/pkm_train.safetensors";

Tensor Zeros(const Shape& shape) {
  return Tensor::Create(DType::kF32, shape).value();
}

void Check(TensorView<const float> actual, const Tensor& expected,
           double tolerance, const std::string& what) {
  ExpectParity(actual, expected.view<const float>(), tolerance, what);
  ::testing::Test::RecordProperty(
      what, absl::StrCat(RelativeError(actual, expected.view<const float>())));
}

TEST(PkmTrainParityTest, BatchStatisticsBufferUpdateAndGradients) {
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
  const std::vector<ParamShape> shapes = pkm->ParamShapes();
  auto store = ParamStore::Create(shapes);
  ASSERT_TRUE(store.ok()) << store.status();
  const StateDictMap map = ProductKeyMemoryStateDictMap(shapes);
  const absl::Status loaded = LoadFixtureParams(*fixture, map, *store);
  ASSERT_TRUE(loaded.ok()) << loaded;
  ExpectExportMatchesStateDict(*fixture, map, *store,
                               ProductKeyMemoryReferenceShapes(shapes));

  // Values (and gradients of the trainable ones) in ParamShapes order, the
  // order of ProductKeyMemoryTensors.
  std::vector<TensorView<float>> values, grads;
  for (const ParamShape& shape : shapes) {
    values.push_back(store->Value(shape.name).value());
    grads.push_back(shape.trainable ? store->Grad(shape.name).value()
                                    : values.back());
  }
  ASSERT_EQ(values.size(), 8u);
  const ProductKeyMemoryParams params{values[0], values[1], values[2],
                                      values[3], values[4], values[5],
                                      values[6], values[7]};
  const Tensor x = fixture->Float("input.x");
  Tensor y = Zeros(x.shape());
  ProductKeyMemoryCache cache;
  ASSERT_TRUE(pkm->Forward(*ctx, params, x.view<const float>(), y.view<float>(),
                           &cache,
                           {.training = true,
                            .running_mean = values[5],
                            .running_var = values[6],
                            .num_batches_tracked = values[7]})
                  .ok());
  Check(y.view<const float>(), fixture->Float("output.out"), kForwardTolerance,
        "pkm output");
  Check(values[5], fixture->Float("output.running_mean"), kForwardTolerance,
        "pkm running_mean");
  Check(values[6], fixture->Float("output.running_var"), kForwardTolerance,
        "pkm running_var");
  const std::vector<int64_t> steps = fixture->Int("output.num_batches_tracked");
  ASSERT_EQ(steps.size(), 1u);
  EXPECT_EQ(values[7].data()[0], static_cast<float>(steps[0]));

  store->ZeroGrads();
  Tensor d_x = Zeros(x.shape());
  ASSERT_TRUE(pkm->Backward(*ctx, params, cache, x.view<const float>(),
                            fixture->Float("d_output").view<const float>(),
                            d_x.view<float>(),
                            {grads[0], grads[1], grads[2], grads[3], grads[4],
                             grads[5], grads[6], grads[7]})
                  .ok());
  Check(d_x.view<const float>(), fixture->Float("grad.input.x"),
        kGradientTolerance, "pkm grad.input.x");
  for (size_t i = 0; i < shapes.size(); ++i) {
    if (!shapes[i].trainable) continue;
    const std::string name = absl::StrCat("grad.param.", shapes[i].name);
    Check(grads[i], fixture->Float(name), kGradientTolerance,
          absl::StrCat("pkm ", name));
  }
}

}  // namespace
}  // namespace ftx::parity
