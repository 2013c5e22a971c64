// models/optimizer: AdamW over a ParamStore against the double reference per
// parameter (with and without weight decay by rule), runs merged into one
// kernel call, the step counter, gradient clipping and averaging, a small
// convergence check, bad input.
#include "models/optimizer.h"

#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/adamw/adamw.h"
#include "kernels/reference/adamw_ref.h"
#include "tests/util/random.h"
#include "tests/util/tolerance.h"

namespace ftx {
namespace {

using ::ftx::testing::AllNear;
using ::ftx::testing::Cast;

// Runs: [weight], [bias, norm gain], [logits weight] under
// NoDecayBiasesAndNorms.
std::vector<ParamShape> ExampleShapes() {
  return {{"layers.0.proj.weight", {4, 5}},
          {"layers.0.proj.bias", {5}},
          {"layers.0.norm.g", {7}},
          {"to_logits.weight", {3, 7}}};
}

ParamStore MakeStore(const std::vector<ParamShape>& shapes, uint64_t seed) {
  ParamStore store = ParamStore::Create(shapes).value();
  const std::vector<float> values =
      testing::RandomUniformVector(store.NumParams(), seed, -1.0, 1.0);
  std::copy(values.begin(), values.end(), store.values().data());
  return store;
}

void SetGradients(ParamStore& store, uint64_t seed, double low = -1.0,
                  double high = 1.0) {
  const std::vector<float> grads =
      testing::RandomUniformVector(store.NumParams(), seed, low, high);
  std::copy(grads.begin(), grads.end(), store.grads().data());
}

std::vector<float> Gradients(ParamStore& store) {
  return std::vector<float>(store.grads().data(),
                            store.grads().data() + store.NumParams());
}

class OptimizerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto ctx = Context::Create({.num_threads = 2});
    ASSERT_TRUE(ctx.ok());
    ctx_ = std::move(ctx).value();
  }
  std::unique_ptr<Context> ctx_;
};

TEST(NoDecayRulesTest, ChooseBiasesNormsAndVectors) {
  EXPECT_TRUE(NoDecayBiasesAndNorms("layers.0.proj.bias", {5}));
  EXPECT_TRUE(NoDecayBiasesAndNorms("norm.weight", {5}));
  EXPECT_TRUE(NoDecayBiasesAndNorms("attn_layers.layers.3.norm.g", {5}));
  EXPECT_TRUE(NoDecayBiasesAndNorms("final_norm.gamma", {5}));
  EXPECT_FALSE(NoDecayBiasesAndNorms("to_logits.weight", {3, 5}));
  EXPECT_FALSE(NoDecayBiasesAndNorms("layers.0.biased.weight", {3, 5}));
  EXPECT_FALSE(NoDecayBiasesAndNorms("token_emb.weight", {3, 5}));

  EXPECT_TRUE(NoDecayBelowRank2("layers.0.rezero.g", {1}));
  EXPECT_TRUE(NoDecayBelowRank2("norm.weight", {5}));
  EXPECT_FALSE(NoDecayBelowRank2("token_emb.weight", {3, 5}));
}

TEST_F(OptimizerTest, AdamWMatchesReferencePerParameter) {
  ParamStore store = MakeStore(ExampleShapes(), 1);
  AdamWConfig config;
  config.weight_decay = 0.1;
  config.no_decay = NoDecayBiasesAndNorms;
  auto optimizer = AdamW::Create(config);
  ASSERT_TRUE(optimizer.ok()) << optimizer.status();

  // Per parameter: value, m, v in double, and whether it decays.
  struct Expected {
    std::vector<double> value, m, v;
    bool decay;
  };
  std::vector<Expected> expected;
  store.ForEachParam([&](const ParamSlot& slot) {
    const int64_t n = slot.value.NumElements();
    expected.push_back({Cast<double>(std::vector<float>(slot.value.data(),
                                                        slot.value.data() + n)),
                        std::vector<double>(n, 0.0),
                        std::vector<double>(n, 0.0),
                        slot.name.find("bias") == std::string::npos &&
                            slot.name.find("norm") == std::string::npos});
  });
  const double learning_rates[] = {1e-2, 2e-2, 5e-3, 1e-2};
  for (int64_t step = 1; step <= 4; ++step) {
    SetGradients(store, 10 + step);
    ASSERT_TRUE(optimizer->Step(*ctx_, store, learning_rates[step - 1]).ok());
    EXPECT_EQ(optimizer->step(), step);
    size_t index = 0;
    store.ForEachParam([&](const ParamSlot& slot) {
      Expected& e = expected[index++];
      const int64_t n = slot.value.NumElements();
      const std::vector<double> grads = Cast<double>(
          std::vector<float>(slot.grad.data(), slot.grad.data() + n));
      reference::AdamWStep<double>(n, e.value.data(), grads.data(), e.m.data(),
                                   e.v.data(), learning_rates[step - 1],
                                   config.beta1, config.beta2, config.eps,
                                   e.decay ? config.weight_decay : 0.0, step);
      EXPECT_TRUE(AllNear(slot.value.data(), e.value.data(), n, {1e-6, 1e-5}))
          << slot.name << " step " << step;
      EXPECT_TRUE(
          AllNear(slot.first_moment.data(), e.m.data(), n, {5e-8, 1e-5}))
          << slot.name;
      EXPECT_TRUE(
          AllNear(slot.second_moment.data(), e.v.data(), n, {5e-8, 1e-5}))
          << slot.name;
    });
  }
}

// The store's arenas are laid out in the same order, so without a rule the
// optimizer is one kernel call over the whole arena, bit for bit.
TEST_F(OptimizerTest, WithoutRuleIsOneCallOverTheArena) {
  const std::vector<ParamShape> shapes = {
      {"a", {3, 3000}}, {"b", {7}}, {"c", {5000}}};
  ParamStore store = MakeStore(shapes, 2);
  ParamStore twin = MakeStore(shapes, 2);
  auto optimizer = AdamW::Create(AdamWConfig());
  ASSERT_TRUE(optimizer.ok());
  const int64_t n = store.NumParams();
  float* twin_m = nullptr;
  float* twin_v = nullptr;
  twin.ForEachParam([&](const ParamSlot& slot) {
    if (twin_m == nullptr) {
      twin_m = slot.first_moment.data();
      twin_v = slot.second_moment.data();
    }
  });
  for (int64_t step = 1; step <= 3; ++step) {
    SetGradients(store, 20 + step);
    SetGradients(twin, 20 + step);
    ASSERT_TRUE(optimizer->Step(*ctx_, store, 1e-3).ok());
    AdamWOptions options;
    options.lr = 1e-3;
    options.step = step;
    ASSERT_TRUE(AdamWStep(*ctx_, TensorView<float>(twin.values().data(), {n}),
                          TensorView<const float>(twin.grads().data(), {n}),
                          TensorView<float>(twin_m, {n}),
                          TensorView<float>(twin_v, {n}), options)
                    .ok());
  }
  EXPECT_EQ(std::memcmp(store.values().data(), twin.values().data(),
                        n * sizeof(float)),
            0);
}

TEST_F(OptimizerTest, BuffersAreLeftAlone) {
  // A buffer between two weights, with a gradient and moments that are not
  // zero, keeps its value and moments; the weights get exactly the update of
  // a store without the buffer.
  const std::vector<ParamShape> shapes = {
      {"a", {6}}, {"running_mean", {4}, /*trainable=*/false}, {"c", {5}}};
  ParamStore store = MakeStore(shapes, 4);
  SetGradients(store, 5);
  store.ForEachParam([](const ParamSlot& slot) {
    std::fill(slot.first_moment.data(),
              slot.first_moment.data() + slot.first_moment.NumElements(),
              0.25f);
  });
  ParamStore weights_only =
      ParamStore::Create({{"a", {6}}, {"c", {5}}}).value();
  std::vector<float> buffer_before;
  store.ForEachParam([&](const ParamSlot& slot) {
    if (!slot.trainable) {
      buffer_before.assign(slot.value.data(),
                           slot.value.data() + slot.value.NumElements());
      return;
    }
    const int64_t n = slot.value.NumElements();
    std::copy(slot.value.data(), slot.value.data() + n,
              weights_only.Value(slot.name).value().data());
    std::copy(slot.grad.data(), slot.grad.data() + n,
              weights_only.Grad(slot.name).value().data());
  });
  weights_only.ForEachParam([](const ParamSlot& slot) {
    std::fill(slot.first_moment.data(),
              slot.first_moment.data() + slot.first_moment.NumElements(),
              0.25f);
  });
  auto optimizer = AdamW::Create(AdamWConfig());
  auto twin_optimizer = AdamW::Create(AdamWConfig());
  ASSERT_TRUE(optimizer.ok() && twin_optimizer.ok());
  ASSERT_TRUE(optimizer->Step(*ctx_, store, 1e-2).ok());
  ASSERT_TRUE(twin_optimizer->Step(*ctx_, weights_only, 1e-2).ok());
  store.ForEachParam([&](const ParamSlot& slot) {
    const int64_t n = slot.value.NumElements();
    if (slot.trainable) {
      const TensorView<float> expected = weights_only.Value(slot.name).value();
      EXPECT_EQ(
          std::memcmp(slot.value.data(), expected.data(), n * sizeof(float)), 0)
          << slot.name;
      return;
    }
    for (int64_t i = 0; i < n; ++i) {
      EXPECT_EQ(slot.value.data()[i], buffer_before[i]);
      EXPECT_EQ(slot.first_moment.data()[i], 0.25f);
      EXPECT_EQ(slot.second_moment.data()[i], 0.0f);
    }
  });
}

TEST_F(OptimizerTest, SetStepResumesTheBiasCorrection) {
  ParamStore store = MakeStore({{"w", {9}}}, 3);
  SetGradients(store, 4);
  auto optimizer = AdamW::Create(AdamWConfig());
  ASSERT_TRUE(optimizer.ok());
  ASSERT_TRUE(optimizer->set_step(9).ok());
  std::vector<double> value = Cast<double>(
      std::vector<float>(store.values().data(), store.values().data() + 9));
  std::vector<double> m(9, 0.0), v(9, 0.0);
  const std::vector<double> grads = Cast<double>(Gradients(store));
  ASSERT_TRUE(optimizer->Step(*ctx_, store, 0.1).ok());
  EXPECT_EQ(optimizer->step(), 10);
  reference::AdamWStep<double>(9, value.data(), grads.data(), m.data(),
                               v.data(), 0.1, 0.9, 0.999, 1e-8, 0.01, 10);
  EXPECT_TRUE(AllNear(store.values().data(), value.data(), 9, {1e-6, 1e-5}));
  EXPECT_EQ(optimizer->set_step(-1).code(), absl::StatusCode::kInvalidArgument);
}

// 0.5 ||p - target||^2 has gradient p - target; AdamW walks p to the target.
TEST_F(OptimizerTest, AdamWMinimisesAQuadratic) {
  ParamStore store = MakeStore({{"w", {4, 6}}, {"b", {6}}}, 5);
  const int64_t n = store.NumParams();
  const std::vector<float> target = testing::RandomUniformVector(n, 6, -2, 2);
  AdamWConfig config;
  config.weight_decay = 0.0;
  auto optimizer = AdamW::Create(config);
  ASSERT_TRUE(optimizer.ok());
  for (int step = 0; step < 400; ++step) {
    for (int64_t i = 0; i < n; ++i) {
      store.grads().data()[i] = store.values().data()[i] - target[i];
    }
    ASSERT_TRUE(optimizer->Step(*ctx_, store, 0.05).ok());
  }
  EXPECT_TRUE(AllNear(store.values().data(), target.data(), n, {2e-2, 0}));
}

TEST_F(OptimizerTest, ClipGradNormScalesWhenAboveTheLimit) {
  // More gradients than one block of the norm's partial sums.
  ParamStore store = MakeStore({{"a", {40000}}, {"b", {17}}}, 7);
  SetGradients(store, 8);
  const std::vector<float> before = Gradients(store);
  double sum = 0;
  for (float g : before) sum += static_cast<double>(g) * g;
  const double expected_total = std::sqrt(sum);

  // Under the limit: nothing changes.
  auto total = ClipGradNorm(*ctx_, store, 2 * expected_total);
  ASSERT_TRUE(total.ok()) << total.status();
  EXPECT_NEAR(*total, expected_total, 1e-6 * expected_total);
  EXPECT_TRUE(AllNear(Gradients(store), before, {0, 0}));

  // Over the limit: scaled by max_norm / (total + 1e-6).
  const double max_norm = 0.25 * expected_total;
  total = ClipGradNorm(*ctx_, store, max_norm);
  ASSERT_TRUE(total.ok());
  EXPECT_NEAR(*total, expected_total, 1e-6 * expected_total);
  const double coefficient = max_norm / (expected_total + 1e-6);
  std::vector<double> expected(before.size());
  for (size_t i = 0; i < before.size(); ++i) {
    expected[i] = before[i] * coefficient;
  }
  EXPECT_TRUE(AllNear(Gradients(store), expected, {1e-9, 1e-6}));
  auto clipped_total = ClipGradNorm(*ctx_, store, 1e9);
  ASSERT_TRUE(clipped_total.ok());
  EXPECT_NEAR(*clipped_total, max_norm, 1e-5 * max_norm);
}

TEST(ClipGradNormThreadsTest, TotalDoesNotDependOnTheThreadCount) {
  ParamStore store = MakeStore({{"a", {100003}}}, 9);
  SetGradients(store, 10, -3, 3);
  std::vector<float> totals;
  for (int threads : {1, 2, 5}) {
    auto ctx = Context::Create({.num_threads = threads}).value();
    auto total = ClipGradNorm(*ctx, store, 1e9);
    ASSERT_TRUE(total.ok());
    totals.push_back(*total);
  }
  EXPECT_EQ(totals[0], totals[1]);
  EXPECT_EQ(totals[0], totals[2]);
}

TEST_F(OptimizerTest, ClipGradNormLeavesNonFiniteGradientsAlone) {
  ParamStore store = MakeStore({{"a", {10}}}, 11);
  SetGradients(store, 12);
  store.grads().data()[3] = INFINITY;
  const std::vector<float> before = Gradients(store);
  auto total = ClipGradNorm(*ctx_, store, 1.0);
  ASSERT_TRUE(total.ok());
  EXPECT_TRUE(std::isinf(*total));
  EXPECT_TRUE(AllNear(Gradients(store), before, {0, 0}));
}

TEST_F(OptimizerTest, AverageGradientsDividesByTheMicroBatchCount) {
  ParamStore store = MakeStore({{"a", {3, 11}}, {"b", {11}}}, 13);
  SetGradients(store, 14);
  const std::vector<float> before = Gradients(store);
  ASSERT_TRUE(AverageGradients(*ctx_, store, 1).ok());
  EXPECT_TRUE(AllNear(Gradients(store), before, {0, 0}));
  ASSERT_TRUE(AverageGradients(*ctx_, store, 4).ok());
  std::vector<double> expected(before.size());
  for (size_t i = 0; i < before.size(); ++i) expected[i] = before[i] / 4.0;
  EXPECT_TRUE(AllNear(Gradients(store), expected, {0, 0}));
}

TEST_F(OptimizerTest, BadInputIsAnErrorNamingTheProblem) {
  auto expect_error = [](const absl::Status& status, const char* needle) {
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_NE(status.message().find(needle), std::string::npos) << status;
  };
  AdamWConfig config;
  config.beta1 = 1.0;
  expect_error(AdamW::Create(config).status(), "beta1");
  config = AdamWConfig();
  config.beta2 = -0.1;
  expect_error(AdamW::Create(config).status(), "beta2");
  config = AdamWConfig();
  config.eps = NAN;
  expect_error(AdamW::Create(config).status(), "eps");
  config = AdamWConfig();
  config.weight_decay = -1.0;
  expect_error(AdamW::Create(config).status(), "weight_decay");

  ParamStore store = MakeStore(ExampleShapes(), 15);
  SetGradients(store, 16);
  const std::vector<float> values(store.values().data(),
                                  store.values().data() + store.NumParams());
  auto optimizer = AdamW::Create(AdamWConfig()).value();
  expect_error(optimizer.Step(*ctx_, store, -1e-3), "lr");
  expect_error(optimizer.Step(*ctx_, store, NAN), "lr");
  EXPECT_EQ(optimizer.step(), 0);
  EXPECT_TRUE(
      AllNear(store.values().data(), values.data(), store.NumParams(), {0, 0}));

  expect_error(ClipGradNorm(*ctx_, store, 0.0).status(), "max_norm");
  expect_error(ClipGradNorm(*ctx_, store, INFINITY).status(), "max_norm");
  expect_error(AverageGradients(*ctx_, store, 0), "num_micro_batches");
}

}  // namespace
}  // namespace ftx
