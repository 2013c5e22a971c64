// ProductKeyMemory: forward against a double reference of lucidrains
// product-key-memory 0.3.0 PKM (LayerNorm queries, two sub-key top-k, top-k of
// the k^2 sums, softmax, EmbeddingBag sum) and of 0.1.10's BatchNorm1d
// queries in eval and training mode (batch statistics, running update, step
// counter), central-difference gradients of x and of every parameter,
// initialisation, bad arguments.
#include "layers/product_key_memory.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "gtest/gtest.h"
#include "tests/util/gradcheck.h"
#include "tests/util/random.h"
#include "tests/util/tolerance.h"

namespace ftx {
namespace {

constexpr int64_t kB = 2, kT = 3, kC = 6, kH = 2, kK = 5, kTop = 3, kDh = 4;

struct Weights {
  std::vector<double> to_queries, norm_weight, norm_bias, keys, values;
  // Present for the 0.1.10 batch norm (per channel of the 2 H Dh queries).
  std::vector<double> running_mean, running_var;
};

std::vector<int64_t> TopK(const std::vector<double>& s, int64_t k) {
  std::vector<int64_t> order(s.size());
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + k, order.end(),
                    [&](int64_t a, int64_t b) { return s[a] > s[b]; });
  order.resize(k);
  return order;
}

// With training, the batch norm uses the statistics of the kB * kT rows
// (biased variance) instead of the running ones.
std::vector<double> Reference(const Weights& w, const std::vector<double>& x,
                              bool training = false) {
  constexpr int64_t kWidth = 2 * kH * kDh;
  std::vector<double> queries(kB * kT * kWidth);
  for (int64_t r = 0; r < kB * kT; ++r) {
    for (int64_t o = 0; o < kWidth; ++o) {
      for (int64_t c = 0; c < kC; ++c)
        queries[r * kWidth + o] += x[r * kC + c] * w.to_queries[o * kC + c];
    }
  }
  std::vector<double> mean = w.running_mean, var = w.running_var;
  if (training && !w.running_mean.empty()) {
    for (int64_t o = 0; o < kWidth; ++o) {
      mean[o] = var[o] = 0;
      for (int64_t r = 0; r < kB * kT; ++r)
        mean[o] += queries[r * kWidth + o] / (kB * kT);
      for (int64_t r = 0; r < kB * kT; ++r)
        var[o] += std::pow(queries[r * kWidth + o] - mean[o], 2) / (kB * kT);
    }
  }
  std::vector<double> y(kB * kT * kC, 0.0);
  for (int64_t r = 0; r < kB * kT; ++r) {
    std::vector<double> q(queries.begin() + r * kWidth,
                          queries.begin() + (r + 1) * kWidth);
    if (!w.running_mean.empty()) {
      for (int64_t o = 0; o < kWidth; ++o) {
        q[o] = (q[o] - mean[o]) / std::sqrt(var[o] + 1e-5) * w.norm_weight[o] +
               w.norm_bias[o];
      }
    }
    for (int64_t v = 0; v < 2 * kH && w.running_mean.empty(); ++v) {
      double mean = 0, var = 0;
      for (int64_t d = 0; d < kDh; ++d) mean += q[v * kDh + d] / kDh;
      for (int64_t d = 0; d < kDh; ++d)
        var += std::pow(q[v * kDh + d] - mean, 2) / kDh;
      for (int64_t d = 0; d < kDh; ++d) {
        q[v * kDh + d] =
            (q[v * kDh + d] - mean) / std::sqrt(var + 1e-5) * w.norm_weight[d] +
            w.norm_bias[d];
      }
    }
    for (int64_t h = 0; h < kH; ++h) {
      std::vector<double> best[2];
      std::vector<int64_t> index[2];
      for (int64_t p = 0; p < 2; ++p) {
        std::vector<double> s(kK);
        for (int64_t n = 0; n < kK; ++n) {
          for (int64_t d = 0; d < kDh; ++d) {
            s[n] += q[(p * kH + h) * kDh + d] *
                    w.keys[((h * kK + n) * 2 + p) * kDh + d];
          }
        }
        index[p] = TopK(s, kTop);
        for (int64_t i : index[p]) best[p].push_back(s[i]);
      }
      std::vector<double> all(kTop * kTop);
      for (int64_t a = 0; a < kTop; ++a) {
        for (int64_t c = 0; c < kTop; ++c)
          all[a * kTop + c] = best[0][a] + best[1][c];
      }
      const std::vector<int64_t> picks = TopK(all, kTop);
      double total = 0;
      for (int64_t pick : picks) total += std::exp(all[pick]);
      for (int64_t pick : picks) {
        const int64_t memory =
            index[0][pick / kTop] * kK + index[1][pick % kTop];
        for (int64_t c = 0; c < kC; ++c) {
          y[r * kC + c] +=
              std::exp(all[pick]) / total * w.values[memory * kC + c];
        }
      }
    }
  }
  return y;
}

struct Floats {
  std::vector<float> to_queries, norm_weight, norm_bias, keys, values;
  std::vector<float> running_mean, running_var;
  std::vector<float> num_batches_tracked;  // {0} with the running statistics
  explicit Floats(const Weights& w)
      : to_queries(w.to_queries.begin(), w.to_queries.end()),
        norm_weight(w.norm_weight.begin(), w.norm_weight.end()),
        norm_bias(w.norm_bias.begin(), w.norm_bias.end()),
        keys(w.keys.begin(), w.keys.end()),
        values(w.values.begin(), w.values.end()),
        running_mean(w.running_mean.begin(), w.running_mean.end()),
        running_var(w.running_var.begin(), w.running_var.end()),
        num_batches_tracked(w.running_mean.empty() ? 0 : 1, 0.0f) {}
  ProductKeyMemoryGrads Views() {
    const int64_t norm = static_cast<int64_t>(norm_weight.size());
    auto optional = [](std::vector<float>& v) {
      return v.empty() ? TensorView<float>()
                       : TensorView<float>(v.data(),
                                           {static_cast<int64_t>(v.size())});
    };
    return {TensorView<float>(to_queries.data(), {2 * kH * kDh, kC}),
            TensorView<float>(norm_weight.data(), {norm}),
            TensorView<float>(norm_bias.data(), {norm}),
            TensorView<float>(keys.data(), {kH, kK, 2, kDh}),
            TensorView<float>(values.data(), {kK * kK, kC}),
            optional(running_mean),
            optional(running_var),
            optional(num_batches_tracked)};
  }
};

// torch's running update: momentum 0.1, the unbiased batch variance.
void ExpectRunningUpdate(const Weights& w, const std::vector<double>& x,
                         const std::vector<float>& running_mean,
                         const std::vector<float>& running_var) {
  constexpr int64_t kWidth = 2 * kH * kDh, kRows = kB * kT;
  std::vector<double> expected_mean(kWidth), expected_var(kWidth);
  for (int64_t o = 0; o < kWidth; ++o) {
    std::vector<double> column(kRows);
    double mean = 0;
    for (int64_t r = 0; r < kRows; ++r) {
      for (int64_t c = 0; c < kC; ++c)
        column[r] += x[r * kC + c] * w.to_queries[o * kC + c];
      mean += column[r] / kRows;
    }
    double unbiased = 0;
    for (double value : column) unbiased += std::pow(value - mean, 2);
    unbiased /= kRows - 1;
    expected_mean[o] = 0.9 * w.running_mean[o] + 0.1 * mean;
    expected_var[o] = 0.9 * w.running_var[o] + 0.1 * unbiased;
  }
  EXPECT_TRUE(testing::AllNear(running_mean, expected_mean, {1e-6, 1e-5}));
  EXPECT_TRUE(testing::AllNear(running_var, expected_var, {1e-6, 1e-5}));
}

ProductKeyMemoryParams AsParams(const ProductKeyMemoryGrads& g) {
  return {g.to_queries, g.norm_weight,  g.norm_bias,   g.keys,
          g.values,     g.running_mean, g.running_var, g.num_batches_tracked};
}

void CheckForwardBackward(PkmQueryNorm query_norm, bool training = false) {
  auto ctx = Context::Create({.num_threads = 1}).value();
  auto pkm = ProductKeyMemory::Create({.dim = kC,
                                       .heads = kH,
                                       .num_keys = kK,
                                       .topk = kTop,
                                       .key_dim = kDh,
                                       .query_norm = query_norm});
  ASSERT_TRUE(pkm.ok());
  const bool batch_norm = query_norm == PkmQueryNorm::kBatchNormRunning;
  const int64_t norm = batch_norm ? 2 * kH * kDh : kDh;
  Weights w;
  w.to_queries =
      testing::RandomNormalVector<double>(2 * kH * kDh * kC, 1, 0, 0.5);
  w.norm_weight = testing::RandomUniformVector<double>(norm, 2, 0.5, 1.5);
  w.norm_bias = testing::RandomUniformVector<double>(norm, 3, -0.2, 0.2);
  w.keys = testing::RandomNormalVector<double>(kH * kK * 2 * kDh, 4, 0, 0.5);
  w.values = testing::RandomNormalVector<double>(kK * kK * kC, 5);
  if (batch_norm) {
    w.running_mean = testing::RandomUniformVector<double>(norm, 8, -0.3, 0.3);
    w.running_var = testing::RandomUniformVector<double>(norm, 9, 0.5, 2.0);
  }
  Floats params(w);
  const std::vector<float> x = testing::RandomNormalVector(kB * kT * kC, 6);
  std::vector<float> y(x.size());
  ProductKeyMemoryCache cache;
  // Training updates a copy of the running statistics, so the parameters
  // below keep the values the reference reads.
  std::vector<float> running_mean = params.running_mean;
  std::vector<float> running_var = params.running_var;
  std::vector<float> num_batches_tracked = params.num_batches_tracked;
  ProductKeyMemoryTraining mode{.training = training};
  if (training && batch_norm) {
    mode.running_mean = TensorView<float>(running_mean.data(), {norm});
    mode.running_var = TensorView<float>(running_var.data(), {norm});
    mode.num_batches_tracked =
        TensorView<float>(num_batches_tracked.data(), {1});
  }
  ASSERT_TRUE(pkm->Forward(*ctx, AsParams(params.Views()),
                           TensorView<const float>(x.data(), {kB, kT, kC}),
                           TensorView<float>(y.data(), {kB, kT, kC}), &cache,
                           mode)
                  .ok());
  const auto x64 = testing::Cast<double>(x);
  EXPECT_TRUE(testing::AllNear(y, Reference(w, x64, training), {1e-5, 1e-4}));
  if (training && batch_norm) {
    ExpectRunningUpdate(w, x64, running_mean, running_var);
    EXPECT_EQ(num_batches_tracked, std::vector<float>{1.0f});
  }
  EXPECT_EQ(params.num_batches_tracked,
            std::vector<float>(batch_norm ? 1 : 0, 0.0f));

  const std::vector<float> d_y = testing::RandomUniformVector(y.size(), 7);
  std::vector<float> d_x(x.size());
  Weights zero{std::vector<double>(w.to_queries.size()),
               std::vector<double>(norm), std::vector<double>(norm),
               std::vector<double>(w.keys.size()),
               std::vector<double>(w.values.size())};
  Floats grads(zero);
  grads.running_mean = params.running_mean;  // read-only statistics
  grads.running_var = params.running_var;
  grads.num_batches_tracked = params.num_batches_tracked;
  ASSERT_TRUE(pkm->Backward(*ctx, AsParams(params.Views()), cache,
                            TensorView<const float>(x.data(), {kB, kT, kC}),
                            TensorView<const float>(d_y.data(), {kB, kT, kC}),
                            TensorView<float>(d_x.data(), {kB, kT, kC}),
                            grads.Views())
                  .ok());
  const auto dy = testing::Cast<double>(d_y);
  const testing::Tolerance tolerance{1e-5, 1e-3};
  EXPECT_TRUE(testing::GradientMatches(
      [&](const auto& v) {
        return testing::Dot(dy, Reference(w, v, training));
      },
      x64, testing::Cast<double>(d_x), tolerance));
  auto check = [&](std::vector<double> Weights::*member,
                   const std::vector<float>& grad) {
    EXPECT_TRUE(testing::GradientMatches(
        [&](const auto& v) {
          Weights varied = w;
          varied.*member = v;
          return testing::Dot(dy, Reference(varied, x64, training));
        },
        w.*member, testing::Cast<double>(grad), tolerance));
  };
  check(&Weights::to_queries, grads.to_queries);
  check(&Weights::norm_weight, grads.norm_weight);
  check(&Weights::norm_bias, grads.norm_bias);
  check(&Weights::keys, grads.keys);
  check(&Weights::values, grads.values);
}

TEST(ProductKeyMemoryTest, LayerNormQueriesForwardBackward) {
  CheckForwardBackward(PkmQueryNorm::kLayerNorm);
}

TEST(ProductKeyMemoryTest, RunningBatchNormQueriesForwardBackward) {
  CheckForwardBackward(PkmQueryNorm::kBatchNormRunning);
}

TEST(ProductKeyMemoryTest, TrainingBatchNormQueriesForwardBackward) {
  CheckForwardBackward(PkmQueryNorm::kBatchNormRunning, /*training=*/true);
}

TEST(ProductKeyMemoryTest, TrainingLayerNormQueriesMatchEval) {
  CheckForwardBackward(PkmQueryNorm::kLayerNorm, /*training=*/true);
}

TEST(ProductKeyMemoryTest, NamesAndInitialisation) {
  auto ctx = Context::Create({.num_threads = 1}).value();
  auto pkm = ProductKeyMemory::Create(
      {.dim = kC, .heads = kH, .num_keys = kK, .topk = kTop, .key_dim = kDh});
  ASSERT_TRUE(pkm.ok());
  const auto shapes = pkm->ParamShapes();
  ASSERT_EQ(shapes.size(), 5u);
  EXPECT_EQ(shapes[3].name, "keys");
  EXPECT_EQ(shapes[3].shape, (Shape{kH, kK, 2, kDh}));
  EXPECT_EQ(shapes[4].name, "values.weight");
  Weights zero{std::vector<double>(2 * kH * kDh * kC), std::vector<double>(kDh),
               std::vector<double>(kDh, 3.0),
               std::vector<double>(kH * kK * 2 * kDh),
               std::vector<double>(kK * kK * kC)};
  Floats params(zero);
  ASSERT_TRUE(pkm->InitParams(*ctx, 9, params.Views()).ok());
  EXPECT_EQ(params.norm_weight, std::vector<float>(kDh, 1.0f));
  EXPECT_EQ(params.norm_bias, std::vector<float>(kDh, 0.0f));
  double sum_sq = 0;
  for (float v : params.values) sum_sq += v * v;
  EXPECT_NEAR(sum_sq / params.values.size(), 1.0 / kC, 0.5 / kC);
  for (const ParamShape& shape : shapes) EXPECT_TRUE(shape.trainable);
}

TEST(ProductKeyMemoryTest, BatchNormBuffersAreNotTrainable) {
  auto ctx = Context::Create({.num_threads = 1}).value();
  auto pkm =
      ProductKeyMemory::Create({.dim = kC,
                                .heads = kH,
                                .num_keys = kK,
                                .topk = kTop,
                                .key_dim = kDh,
                                .query_norm = PkmQueryNorm::kBatchNormRunning});
  ASSERT_TRUE(pkm.ok());
  constexpr int64_t kWidth = 2 * kH * kDh;
  const auto shapes = pkm->ParamShapes();
  ASSERT_EQ(shapes.size(), 8u);
  const char* const names[] = {
      "to_queries.weight",   "norm.fn.weight",
      "norm.fn.bias",        "keys",
      "values.weight",       "norm.fn.running_mean",
      "norm.fn.running_var", "norm.fn.num_batches_tracked"};
  for (size_t i = 0; i < shapes.size(); ++i) {
    EXPECT_EQ(shapes[i].name, names[i]);
    EXPECT_EQ(shapes[i].trainable, i < 5) << shapes[i].name;
  }
  EXPECT_EQ(shapes[7].shape, Shape({1}));
  Weights w{
      std::vector<double>(kWidth * kC),  std::vector<double>(kWidth),
      std::vector<double>(kWidth),       std::vector<double>(kH * kK * 2 * kDh),
      std::vector<double>(kK * kK * kC), std::vector<double>(kWidth, 2.0),
      std::vector<double>(kWidth, 2.0)};
  Floats params(w);
  params.num_batches_tracked = {7.0f};
  ASSERT_TRUE(pkm->InitParams(*ctx, 9, params.Views()).ok());
  EXPECT_EQ(params.running_mean, std::vector<float>(kWidth, 0.0f));
  EXPECT_EQ(params.running_var, std::vector<float>(kWidth, 1.0f));
  EXPECT_EQ(params.num_batches_tracked, std::vector<float>{0.0f});
}

TEST(ProductKeyMemoryTest, BadArgumentsAreInvalidArgument) {
  EXPECT_EQ(ProductKeyMemory::Create({.dim = 4, .num_keys = 3, .topk = 4})
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ProductKeyMemory::Create({.dim = 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto ctx = Context::Create({.num_threads = 1}).value();
  auto pkm = ProductKeyMemory::Create(
      {.dim = kC, .heads = kH, .num_keys = kK, .topk = kTop, .key_dim = kDh});
  Weights zero{std::vector<double>(2 * kH * kDh * kC), std::vector<double>(kDh),
               std::vector<double>(kDh), std::vector<double>(kH * kK * 2 * kDh),
               std::vector<double>(kK * kK * kC)};
  Floats params(zero);
  std::vector<float> buffer(64);
  const auto status = pkm->Forward(
      *ctx, AsParams(params.Views()),
      TensorView<const float>(buffer.data(), {1, 2, kC + 1}),
      TensorView<float>(buffer.data() + 32, {1, 2, kC + 1}), nullptr);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("x must be"), std::string::npos);
  ProductKeyMemoryGrads wrong = params.Views();
  wrong.keys = TensorView<float>(params.keys.data(), {kH, kK, kDh, 2});
  EXPECT_EQ(
      pkm->Forward(*ctx, AsParams(wrong),
                   TensorView<const float>(buffer.data(), {1, 2, kC}),
                   TensorView<float>(buffer.data() + 32, {1, 2, kC}), nullptr)
          .code(),
      absl::StatusCode::kInvalidArgument);
}

TEST(ProductKeyMemoryTest, BadTrainingArgumentsAreInvalidArgument) {
  auto ctx = Context::Create({.num_threads = 1}).value();
  auto pkm =
      ProductKeyMemory::Create({.dim = kC,
                                .heads = kH,
                                .num_keys = kK,
                                .topk = kTop,
                                .key_dim = kDh,
                                .query_norm = PkmQueryNorm::kBatchNormRunning});
  ASSERT_TRUE(pkm.ok());
  constexpr int64_t kWidth = 2 * kH * kDh;
  Weights w{
      std::vector<double>(kWidth * kC),  std::vector<double>(kWidth, 1.0),
      std::vector<double>(kWidth),       std::vector<double>(kH * kK * 2 * kDh),
      std::vector<double>(kK * kK * kC), std::vector<double>(kWidth),
      std::vector<double>(kWidth, 1.0)};
  Floats params(w);
  std::vector<float> x(kB * kT * kC), y(x.size());
  auto run = [&](int64_t rows, const ProductKeyMemoryTraining& mode) {
    return pkm->Forward(*ctx, AsParams(params.Views()),
                        TensorView<const float>(x.data(), {1, rows, kC}),
                        TensorView<float>(y.data(), {1, rows, kC}), nullptr,
                        mode);
  };
  const ProductKeyMemoryTraining missing{.training = true};
  auto status = run(kT, missing);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("training.running_mean"), std::string::npos);
  std::vector<float> mean(kWidth), var(kWidth, 1.0f), counter(1);
  ProductKeyMemoryTraining given{
      .training = true,
      .running_mean = TensorView<float>(mean.data(), {kWidth}),
      .running_var = TensorView<float>(var.data(), {kWidth})};
  status = run(kT, given);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("training.num_batches_tracked"),
            std::string::npos);
  given.num_batches_tracked = TensorView<float>(counter.data(), {1});
  status = run(1, given);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("more than 1 row"), std::string::npos);
  EXPECT_TRUE(run(kT, given).ok());
  EXPECT_EQ(counter, std::vector<float>{1.0f});
  ProductKeyMemoryGrads no_counter = params.Views();
  no_counter.num_batches_tracked = TensorView<float>();
  status = pkm->Forward(*ctx, AsParams(no_counter),
                        TensorView<const float>(x.data(), {1, kT, kC}),
                        TensorView<float>(y.data(), {1, kT, kC}), nullptr);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("norm.fn.num_batches_tracked"),
            std::string::npos);
  ProductKeyMemoryTraining eval_with_statistics = given;
  eval_with_statistics.training = false;
  EXPECT_EQ(run(kT, eval_with_statistics).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ftx
