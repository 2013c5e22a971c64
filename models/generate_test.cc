// Generation: every filter against hand-computed expectations, sampling
// against the inverse CDF and against long-run frequencies, Generate's
// determinism, batched prompts of different lengths against one-by-one runs,
// eos, the max_seq_len window against a loop over the model's own Forward,
// generation with a source (cross-attention context) against a greedy loop
// over Forward and batched against one-by-one, a model trained on the copy task
// copying greedily, checkpoint loading and bad input.
#include "models/generate.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "attention/builtin.h"
#include "gtest/gtest.h"
#include "kernels/base/philox.h"
#include "models/data.h"
#include "models/trainer.h"

namespace ftx {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

std::vector<float> LogProbs(const std::vector<double>& probs) {
  std::vector<float> logits;
  for (double prob : probs)
    logits.push_back(static_cast<float>(std::log(prob)));
  return logits;
}

TEST(TopKTest, KeepsTheKLargestAndTheLowerIndexOnTies) {
  std::vector<float> logits = {1.0f, 3.0f, 2.0f, 3.0f, 0.0f};
  ASSERT_TRUE(TopKFilter(3, absl::MakeSpan(logits)).ok());
  EXPECT_EQ(logits, (std::vector<float>{-kInf, 3.0f, 2.0f, 3.0f, -kInf}));

  std::vector<float> ties = {1.0f, 1.0f, 1.0f};
  ASSERT_TRUE(TopKFilter(2, absl::MakeSpan(ties)).ok());
  EXPECT_EQ(ties, (std::vector<float>{1.0f, 1.0f, -kInf}));

  std::vector<float> all = {0.5f, -0.5f};
  ASSERT_TRUE(TopKFilter(5, absl::MakeSpan(all)).ok());
  EXPECT_EQ(all, (std::vector<float>{0.5f, -0.5f}));
}

// Python: int((1 - 0.9) * 25) = 2, ceil(...) = 3; int((1 - 0.9) * 20) = 1
// because 1 - 0.9 = 0.09999999999999998; int((1 - 0.9) * 10) = 0.
TEST(TopKTest, KFromThresholdMatchesTheReferencesRounding) {
  EXPECT_EQ(TopKFromThreshold(0.9, 25, TopKRounding::kFloor), 2);
  EXPECT_EQ(TopKFromThreshold(0.9, 25, TopKRounding::kCeil), 3);
  EXPECT_EQ(TopKFromThreshold(0.9, 20, TopKRounding::kFloor), 1);
  EXPECT_EQ(TopKFromThreshold(0.9, 20, TopKRounding::kCeil), 2);
  EXPECT_EQ(TopKFromThreshold(0.9, 10, TopKRounding::kFloor), 1);
  EXPECT_EQ(TopKFromThreshold(0.5, 256, TopKRounding::kFloor), 128);
  EXPECT_EQ(TopKFromThreshold(0.0, 7, TopKRounding::kCeil), 7);
}

// Probabilities 0.15 0.5 0.05 0.3: sorted 0.5 0.3 0.15 0.05 with preceding
// cumulative sums 0, 0.5, 0.8, 0.95.
TEST(TopPTest, RemovesTokensAfterTheNucleus) {
  const std::vector<float> logits = LogProbs({0.15, 0.5, 0.05, 0.3});
  struct Case {
    double p;
    std::vector<bool> kept;
  };
  for (const Case& c : std::vector<Case>{{0.6, {false, true, false, true}},
                                         {0.4, {false, true, false, false}},
                                         {0.01, {false, true, false, false}},
                                         {0.9, {true, true, false, true}},
                                         {1.0, {true, true, true, true}}}) {
    std::vector<float> filtered = logits;
    ASSERT_TRUE(TopPFilter(c.p, absl::MakeSpan(filtered)).ok());
    for (size_t i = 0; i < logits.size(); ++i) {
      EXPECT_EQ(filtered[i], c.kept[i] ? logits[i] : -kInf)
          << "p " << c.p << " token " << i;
    }
  }
}

// max prob 0.5: limit = 0.5^2 * ratio.
TEST(TopATest, RemovesBelowTheLimitAndSetsTheRestToOne) {
  const std::vector<float> logits = LogProbs({0.15, 0.5, 0.05, 0.3});
  std::vector<float> filtered = logits;
  ASSERT_TRUE(TopAFilter(2.0, 0.4, absl::MakeSpan(filtered)).ok());  // 0.1
  EXPECT_EQ(filtered, (std::vector<float>{1.0f, 1.0f, -kInf, 1.0f}));
  filtered = logits;
  ASSERT_TRUE(TopAFilter(2.0, 1.0, absl::MakeSpan(filtered)).ok());  // 0.25
  EXPECT_EQ(filtered, (std::vector<float>{-kInf, 1.0f, -kInf, 1.0f}));
  filtered = logits;
  ASSERT_TRUE(TopAFilter(2.0, 0.02, absl::MakeSpan(filtered)).ok());
  EXPECT_EQ(filtered, (std::vector<float>{1.0f, 1.0f, 1.0f, 1.0f}));
}

TEST(RepetitionPenaltyTest, DividesSeenTokensOnce) {
  std::vector<float> logits = {2.0f, -2.0f, 1.0f, 4.0f};
  const std::vector<int32_t> context = {0, 1, 0};
  ASSERT_TRUE(RepetitionPenalty(2.0, context, absl::MakeSpan(logits)).ok());
  EXPECT_EQ(logits, (std::vector<float>{1.0f, -1.0f, 1.0f, 4.0f}));

  const std::vector<int32_t> outside = {4};
  const absl::Status status =
      RepetitionPenalty(2.0, outside, absl::MakeSpan(logits));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("outside [0, 4)"), std::string::npos)
      << status;
}

int32_t Sample(const SamplingOptions& options, std::vector<float> logits,
               float uniform, const std::vector<int32_t>& context = {}) {
  absl::StatusOr<int32_t> token =
      SampleToken(options, context, uniform, absl::MakeSpan(logits));
  EXPECT_TRUE(token.ok()) << token.status();
  return token.ok() ? *token : -1;
}

TEST(SampleTokenTest, InverseCdfWithTemperatureAndFilters) {
  SamplingOptions options;
  const std::vector<float> logits = LogProbs({0.5, 0.3, 0.2});
  EXPECT_EQ(Sample(options, logits, 0.1f), 0);
  EXPECT_EQ(Sample(options, logits, 0.6f), 1);
  EXPECT_EQ(Sample(options, logits, 0.85f), 2);

  // logits {0, ln 3} at temperature 0.5: probabilities 1/10 and 9/10.
  options.temperature = 0.5;
  const std::vector<float> two = {0.0f, static_cast<float>(std::log(3.0))};
  EXPECT_EQ(Sample(options, two, 0.05f), 0);
  EXPECT_EQ(Sample(options, two, 0.15f), 1);

  // top-k 2 leaves 0.5 and 0.3: renormalised 0.625 and 0.375.
  options.temperature = 1.0;
  options.top_k = 2;
  EXPECT_EQ(Sample(options, logits, 0.6f), 0);
  EXPECT_EQ(Sample(options, logits, 0.7f), 1);
  EXPECT_EQ(Sample(options, logits, 0.999f), 1);

  // Greedy after the penalty: {4, 3} -> {2, 3}.
  SamplingOptions greedy;
  greedy.greedy = true;
  greedy.repetition_penalty = 2.0;
  EXPECT_EQ(Sample(greedy, {4.0f, 3.0f}, 0.0f, {1}), 0);
  EXPECT_EQ(Sample(greedy, {4.0f, 3.0f}, 0.0f, {0}), 1);
  // Only the last repetition_context tokens count.
  greedy.repetition_context = 1;
  EXPECT_EQ(Sample(greedy, {4.0f, 3.0f}, 0.0f, {0, 1}), 0);
}

TEST(SampleTokenTest, FrequenciesFollowTheFilteredDistribution) {
  SamplingOptions options;
  options.top_p = 0.7;  // keeps 0.4 and 0.35 -> 8/15 and 7/15
  const std::vector<float> logits = LogProbs({0.1, 0.4, 0.15, 0.35});
  std::vector<int> counts(4, 0);
  constexpr int kDraws = 20000;
  for (int i = 0; i < kDraws; ++i) {
    ++counts[Sample(options, logits, RandomUniform(5, 0, i))];
  }
  EXPECT_EQ(counts[0], 0);
  EXPECT_EQ(counts[2], 0);
  EXPECT_NEAR(counts[1] / static_cast<double>(kDraws), 8.0 / 15.0, 0.015);
  EXPECT_NEAR(counts[3] / static_cast<double>(kDraws), 7.0 / 15.0, 0.015);
}

TEST(SampleTokenTest, BadInputIsInvalidArgument) {
  struct Case {
    SamplingOptions options;
    std::vector<float> logits;
    const char* message;
  };
  SamplingOptions cold;
  cold.temperature = 0.0;
  SamplingOptions negative_k;
  negative_k.top_k = -1;
  SamplingOptions zero_p;
  zero_p.top_p = 0.0;
  SamplingOptions zero_theta;
  zero_theta.repetition_penalty = 0.0;
  const std::vector<Case> cases = {
      {cold, {0.0f}, "temperature must be > 0"},
      {negative_k, {0.0f}, "top_k must be >= 0"},
      {zero_p, {0.0f}, "top_p must be in (0, 1]"},
      {zero_theta, {0.0f}, "repetition_penalty must be > 0"},
      {SamplingOptions(), {}, "at least one token"},
      {SamplingOptions(), {0.0f, std::nanf("")}, "finite or -inf"},
  };
  for (const Case& c : cases) {
    std::vector<float> logits = c.logits;
    const absl::StatusOr<int32_t> token =
        SampleToken(c.options, {}, 0.5f, absl::MakeSpan(logits));
    ASSERT_FALSE(token.ok()) << c.message;
    EXPECT_EQ(token.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(token.status().message().find(c.message), std::string::npos)
        << token.status();
  }
  std::vector<float> logits = {0.0f};
  EXPECT_EQ(TopKFilter(0, absl::MakeSpan(logits)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(TopPFilter(1.5, absl::MakeSpan(logits)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(TopAFilter(2.0, -1.0, absl::MakeSpan(logits)).code(),
            absl::StatusCode::kInvalidArgument);
}

// A random (untrained) causal model; `attention` is a registered name.
class GenerateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ctx_ = Context::Create({.num_threads = 2}).value();
    ASSERT_TRUE(RegisterBuiltinAttentions(registry_).ok());
  }

  // context_dim > 0: a cross-attending decoder over a context that wide.
  void MakeModel(const std::string& attention, int64_t max_seq_len,
                 int64_t context_dim = 0) {
    TransformerConfig config;
    config.cross_attend = context_dim > 0;
    config.context_dim = context_dim;
    config.dim = 16;
    config.depth = 2;
    config.heads = 2;
    config.dim_head = 8;
    config.causal = true;
    config.attention = attention;
    config.num_tokens = 7;
    config.max_seq_len = max_seq_len;
    config.seed = 3;
    auto model = TransformerWrapper::Create(config, registry_);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(model).value();
    auto store = ParamStore::Create(model_->ParamShapes());
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::make_unique<ParamStore>(std::move(store).value());
    ASSERT_TRUE(model_->InitParams(*ctx_, *store_).ok());
    // Sharpen the random model so that its predictions are far from ties.
    TensorView<float> head = store_->Value("to_logits.weight").value();
    for (int64_t i = 0; i < head.dim(0); ++i) {
      for (int64_t j = 0; j < head.dim(1); ++j) head.at(i, j) *= 8.0f;
    }
  }

  std::vector<std::vector<int32_t>> Run(
      const std::vector<std::vector<int32_t>>& prompts,
      const GenerateOptions& options) {
    int64_t width = 0;
    LengthMask lengths;
    for (const auto& prompt : prompts) {
      width = std::max<int64_t>(width, prompt.size());
      lengths.lengths.push_back(static_cast<int64_t>(prompt.size()));
    }
    std::vector<int32_t> packed(prompts.size() * width, 6);
    for (size_t b = 0; b < prompts.size(); ++b) {
      std::copy(prompts[b].begin(), prompts[b].end(),
                packed.begin() + b * width);
    }
    auto result = Generate(
        *ctx_, *model_, *store_,
        TensorView<const int32_t>(
            packed.data(), {static_cast<int64_t>(prompts.size()), width}),
        lengths, options);
    EXPECT_TRUE(result.ok()) << result.status();
    return result.ok() ? *std::move(result)
                       : std::vector<std::vector<int32_t>>();
  }

  // The argmax of the model's logits at the last position of `tokens`.
  int32_t NextGreedy(const std::vector<int32_t>& tokens) {
    const int64_t length = static_cast<int64_t>(tokens.size());
    const int64_t vocab = model_->config().num_tokens;
    std::vector<float> logits(length * vocab);
    TransformerInputs inputs;
    inputs.tokens = TensorView<const int32_t>(tokens.data(), {1, length});
    EXPECT_TRUE(
        model_
            ->Forward(*ctx_, *store_, inputs,
                      TensorView<float>(logits.data(), {1, length, vocab}),
                      false)
            .ok());
    const float* last = logits.data() + (length - 1) * vocab;
    return static_cast<int32_t>(std::max_element(last, last + vocab) - last);
  }

  std::unique_ptr<Context> ctx_;
  AttentionRegistry registry_;
  std::unique_ptr<TransformerWrapper> model_;
  std::unique_ptr<ParamStore> store_;
};

TEST_F(GenerateTest, GreedyFollowsTheModelsArgmax) {
  MakeModel("full", 32);
  GenerateOptions options;
  options.max_new_tokens = 6;
  options.sampling.greedy = true;
  std::vector<int32_t> sequence = {1, 4, 2};
  const std::vector<std::vector<int32_t>> generated = Run({sequence}, options);
  ASSERT_EQ(generated.size(), 1u);
  std::vector<int32_t> expected;
  for (int i = 0; i < 6; ++i) {
    expected.push_back(NextGreedy(sequence));
    sequence.push_back(expected.back());
  }
  EXPECT_EQ(generated[0], expected);
}

TEST_F(GenerateTest, SeedDeterminesTheSample) {
  MakeModel("causal-linear", 32);
  GenerateOptions options;
  options.max_new_tokens = 12;
  options.sampling.temperature = 4.0;  // spread the sharpened model out
  options.seed = 17;
  const auto first = Run({{1, 2, 3}, {4}}, options);
  const auto second = Run({{1, 2, 3}, {4}}, options);
  EXPECT_EQ(first, second);
  options.seed = 18;
  const auto other = Run({{1, 2, 3}, {4}}, options);
  EXPECT_NE(first, other);
}

TEST_F(GenerateTest, BatchedPromptsEqualOneByOne) {
  for (const char* attention : {"full", "causal-linear"}) {
    SCOPED_TRACE(attention);
    MakeModel(attention, 32);
    const std::vector<std::vector<int32_t>> prompts = {
        {1, 2, 3}, {5, 0, 4, 4, 2}, {3}};
    for (bool greedy : {true, false}) {
      GenerateOptions options;
      options.max_new_tokens = 7;
      options.sampling.greedy = greedy;
      options.sampling.temperature = 3.0;
      options.sampling.top_k = 4;
      options.seed = 9;
      const auto batched = Run(prompts, options);
      ASSERT_EQ(batched.size(), prompts.size());
      for (size_t b = 0; b < prompts.size(); ++b) {
        GenerateOptions single = options;
        single.stream = b;
        const auto alone = Run({prompts[b]}, single);
        ASSERT_EQ(alone.size(), 1u);
        EXPECT_EQ(batched[b], alone[0]) << "greedy " << greedy << " row " << b;
        EXPECT_EQ(batched[b].size(), 7u);
      }
    }
  }
}

TEST_F(GenerateTest, EosStopsEachSequence) {
  MakeModel("full", 32);
  GenerateOptions options;
  options.max_new_tokens = 8;
  options.sampling.greedy = true;
  const std::vector<std::vector<int32_t>> prompts = {{1, 2}, {6, 6, 0}};
  const auto free_run = Run(prompts, options);
  ASSERT_EQ(free_run.size(), 2u);
  // Stop at the token row 0 emits third: each row ends at its first one.
  options.eos_token = free_run[0][2];
  const auto stopped = Run(prompts, options);
  ASSERT_EQ(stopped.size(), 2u);
  for (size_t b = 0; b < prompts.size(); ++b) {
    const auto& row = free_run[b];
    const auto first_eos =
        std::find(row.begin(), row.end(), *options.eos_token);
    const std::vector<int32_t> expected(
        row.begin(), first_eos == row.end() ? row.end() : first_eos + 1);
    EXPECT_EQ(stopped[b], expected) << "row " << b;
  }
  EXPECT_LE(stopped[0].size(), 3u);
}

TEST_F(GenerateTest, WindowIsTheLastMaxSeqLenTokens) {
  for (const char* attention : {"full", "causal-linear"}) {
    SCOPED_TRACE(attention);
    MakeModel(attention, 6);
    const std::vector<int32_t> prompt = {0, 1, 2, 3, 4, 5, 6, 1, 3};
    GenerateOptions options;
    options.max_new_tokens = 5;
    options.sampling.greedy = true;
    const auto generated = Run({prompt, {2, 5}}, options);
    ASSERT_EQ(generated.size(), 2u);
    std::vector<int32_t> sequence = prompt;
    std::vector<int32_t> expected;
    for (int i = 0; i < 5; ++i) {
      expected.push_back(
          NextGreedy(std::vector<int32_t>(sequence.end() - 6, sequence.end())));
      sequence.push_back(expected.back());
    }
    EXPECT_EQ(generated[0], expected);
  }
}

TEST_F(GenerateTest, ZeroNewTokensGivesEmptyRows) {
  MakeModel("full", 8);
  GenerateOptions options;
  options.max_new_tokens = 0;
  const auto generated = Run({{1}, {2, 3}}, options);
  EXPECT_EQ(generated, (std::vector<std::vector<int32_t>>{{}, {}}));
}

TEST_F(GenerateTest, BadInputIsInvalidArgument) {
  MakeModel("full", 8);
  const std::vector<int32_t> tokens = {1, 2, 7, 0};
  const TensorView<const int32_t> prompts(tokens.data(), {2, 2});
  struct Case {
    LengthMask lengths;
    GenerateOptions options;
    const char* message;
  };
  GenerateOptions negative;
  negative.max_new_tokens = -1;
  GenerateOptions bad_eos;
  bad_eos.eos_token = 7;
  GenerateOptions cold;
  cold.sampling.temperature = -1.0;
  const std::vector<Case> cases = {
      {LengthMask(), GenerateOptions(), "prompts[1, 0] = 7 is outside [0, 7)"},
      {LengthMask{{2, 0}}, GenerateOptions(), "lengths[1] is 0"},
      {LengthMask{{2, 3}}, GenerateOptions(), "lengths"},
      {LengthMask{{2, 1}}, negative, "max_new_tokens must be >= 0"},
      {LengthMask{{2, 1}}, bad_eos, "eos_token must be in [0, 7)"},
      {LengthMask{{2, 1}}, cold, "temperature must be > 0"},
  };
  for (const Case& c : cases) {
    const auto result =
        Generate(*ctx_, *model_, *store_, prompts, c.lengths, c.options);
    ASSERT_FALSE(result.ok()) << c.message;
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(result.status().message().find(c.message), std::string::npos)
        << result.status();
  }
  const auto flat = Generate(*ctx_, *model_, *store_,
                             TensorView<const int32_t>(tokens.data(), {4}),
                             LengthMask(), GenerateOptions());
  EXPECT_EQ(flat.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(flat.status().message().find("[B, P]"), std::string::npos);
}

TrainConfig CopyConfig() {
  TrainConfig config;
  config.model.dim = 32;
  config.model.depth = 2;
  config.model.heads = 4;
  config.model.dim_head = 8;
  config.model.causal = true;
  config.model.attention = "full";
  config.model.seed = 1;
  config.task = TrainTask::kCopy;
  config.copy_alphabet = 5;
  config.batch_size = 16;
  config.seq_len = 12;
  config.steps = 300;
  config.lr = 5e-3;
  config.warmup = 20;
  config.min_lr = 5e-4;
  config.seed = 2;
  return config;
}

// A model trained on the copy task, given s_1 .. s_n SEP, greedily generates
// s_1 .. s_n; the same after a checkpoint round trip.
TEST(GenerateCopyTaskTest, TrainedModelCopiesAndSurvivesACheckpoint) {
  auto ctx = Context::Create({.num_threads = 2}).value();
  AttentionRegistry registry;
  ASSERT_TRUE(RegisterBuiltinAttentions(registry).ok());
  const TrainConfig config = CopyConfig();
  auto trainer = Trainer::Create(*ctx, registry, config);
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  for (int64_t i = 0; i < config.steps; ++i) {
    ASSERT_TRUE((*trainer)->Step().ok());
  }

  const int64_t n = config.seq_len / 2;
  const CopyTask task = CopyTask::Create(config.copy_alphabet).value();
  const TokenBatch batch =
      task.Batch(/*seed=*/99, 0, 16, config.seq_len).value();
  // tokens = s_1 .. s_n SEP s_1 .. s_{n-1}: the prompt is the first n + 1.
  const TensorView<const int32_t> prompts(
      batch.tokens.data(), {batch.batch, n + 1}, {config.seq_len, 1});
  GenerateOptions options;
  options.max_new_tokens = n;
  options.sampling.greedy = true;
  const auto generated =
      Generate(*ctx, (*trainer)->model(), (*trainer)->params(), prompts,
               LengthMask(), options);
  ASSERT_TRUE(generated.ok()) << generated.status();
  int copied = 0;
  for (int64_t b = 0; b < batch.batch; ++b) {
    const std::vector<int32_t> symbols(
        batch.tokens.begin() + b * config.seq_len,
        batch.tokens.begin() + b * config.seq_len + n);
    copied += (*generated)[b] == symbols;
  }
  EXPECT_GE(copied, 15) << "of " << batch.batch;

  const std::string dir =
      std::string(std::getenv("TEST_TMPDIR")) + "/copy_checkpoint";
  ASSERT_TRUE((*trainer)->SaveCheckpoint(dir).ok());
  auto loaded = LoadGenerationModel(dir, registry);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->task, "copy");
  EXPECT_EQ(loaded->copy_alphabet, config.copy_alphabet);
  EXPECT_EQ(loaded->step, config.steps);
  const auto reloaded = Generate(*ctx, *loaded->model, loaded->store, prompts,
                                 LengthMask(), options);
  ASSERT_TRUE(reloaded.ok()) << reloaded.status();
  EXPECT_EQ(*reloaded, *generated);
}

TEST(LoadGenerationModelTest, MissingOrCorruptCheckpointsAreErrors) {
  AttentionRegistry registry;
  ASSERT_TRUE(RegisterBuiltinAttentions(registry).ok());
  const std::string root = std::string(std::getenv("TEST_TMPDIR"));
  EXPECT_EQ(LoadGenerationModel(root + "/absent", registry).status().code(),
            absl::StatusCode::kNotFound);

  auto ctx = Context::Create({.num_threads = 1}).value();
  TrainConfig config = CopyConfig();
  config.model.dim = 8;
  config.model.depth = 1;
  config.model.heads = 1;
  auto trainer = Trainer::Create(*ctx, registry, config);
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  const std::string dir = root + "/corrupt";
  ASSERT_TRUE((*trainer)->SaveCheckpoint(dir).ok());
  ASSERT_TRUE(LoadGenerationModel(dir, registry).ok());

  std::filesystem::resize_file(dir + "/model.safetensors", 40);
  const absl::Status truncated = LoadGenerationModel(dir, registry).status();
  EXPECT_EQ(truncated.code(), absl::StatusCode::kInvalidArgument) << truncated;
  EXPECT_NE(truncated.message().find("model.safetensors"), std::string::npos)
      << truncated;

  std::ofstream(dir + "/checkpoint.json") << "{\"step\": 1, \"model\": {}}";
  const absl::Status no_task = LoadGenerationModel(dir, registry).status();
  EXPECT_EQ(no_task.code(), absl::StatusCode::kInvalidArgument) << no_task;
  EXPECT_NE(no_task.message().find("checkpoint.json"), std::string::npos)
      << no_task;

  std::ofstream(dir + "/checkpoint.json") << "not json";
  EXPECT_EQ(LoadGenerationModel(dir, registry).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ftx

namespace ftx {
namespace {

// The step form against the re-run form on random decoders: ragged prompts,
// greedy and sampled, eos.
TEST_F(GenerateTest, SteppingEqualsRerunning) {
  for (const char* attention : {"full", "causal-linear"}) {
    SCOPED_TRACE(attention);
    MakeModel(attention, 16);
    ASSERT_TRUE(model_->StepSupport().ok()) << model_->StepSupport();
    const std::vector<std::vector<int32_t>> prompts = {
        {1, 4, 2}, {5}, {0, 3, 3, 6, 2}};
    for (bool greedy : {true, false}) {
      GenerateOptions options;
      options.max_new_tokens = 8;
      options.sampling.greedy = greedy;
      options.seed = 11;
      options.eos_token = 6;
      options.decode = DecodeMode::kRerun;
      const auto rerun = Run(prompts, options);
      options.decode = DecodeMode::kStep;
      const auto stepped = Run(prompts, options);
      options.decode = DecodeMode::kAuto;
      const auto automatic = Run(prompts, options);
      EXPECT_EQ(stepped, rerun) << "greedy " << greedy;
      EXPECT_EQ(automatic, rerun) << "greedy " << greedy;
      ASSERT_EQ(rerun.size(), 3u);
      EXPECT_FALSE(rerun[1].empty());
    }
  }
}

TEST_F(GenerateTest, StepModeErrorsAndAutoFallsBack) {
  MakeModel("full", 6);
  GenerateOptions options;
  options.max_new_tokens = 5;
  options.sampling.greedy = true;
  const std::vector<int32_t> prompt = {1, 2, 3};
  const TensorView<const int32_t> prompts(prompt.data(), {1, 3});
  // 3 + 5 - 1 = 7 positions > max_seq_len 6: only the sliding re-run fits.
  options.decode = DecodeMode::kStep;
  const auto too_long =
      Generate(*ctx_, *model_, *store_, prompts, LengthMask(), options);
  ASSERT_FALSE(too_long.ok());
  EXPECT_EQ(too_long.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(too_long.status().message().find("max_seq_len"), std::string::npos)
      << too_long.status();
  options.decode = DecodeMode::kAuto;
  const auto automatic =
      Generate(*ctx_, *model_, *store_, prompts, LengthMask(), options);
  options.decode = DecodeMode::kRerun;
  const auto rerun =
      Generate(*ctx_, *model_, *store_, prompts, LengthMask(), options);
  ASSERT_TRUE(automatic.ok() && rerun.ok());
  EXPECT_EQ(*automatic, *rerun);
  // 3 + 4 - 1 = 6 positions fit.
  options.max_new_tokens = 4;
  options.decode = DecodeMode::kStep;
  const auto fits =
      Generate(*ctx_, *model_, *store_, prompts, LengthMask(), options);
  ASSERT_TRUE(fits.ok()) << fits.status();
  EXPECT_EQ((*fits)[0].size(), 4u);

  // An encoder has no step form: kStep says why, kAuto re-runs.
  TransformerConfig config = model_->config();
  config.causal = false;
  auto encoder = TransformerWrapper::Create(config, registry_);
  ASSERT_TRUE(encoder.ok());
  options.decode = DecodeMode::kStep;
  const auto refused =
      Generate(*ctx_, **encoder, *store_, prompts, LengthMask(), options);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("not causal"), std::string::npos)
      << refused.status();
  options.decode = DecodeMode::kAuto;
  EXPECT_TRUE(
      Generate(*ctx_, **encoder, *store_, prompts, LengthMask(), options).ok());
}

// A model trained on the copy task generates the same greedy tokens step-wise
// as by re-running, and copies.
TEST(GenerateCopyTaskTest, SteppingEqualsRerunningOnATrainedModel) {
  auto ctx = Context::Create({.num_threads = 2}).value();
  AttentionRegistry registry;
  ASSERT_TRUE(RegisterBuiltinAttentions(registry).ok());
  const TrainConfig config = CopyConfig();
  auto trainer = Trainer::Create(*ctx, registry, config);
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  for (int64_t i = 0; i < config.steps; ++i) {
    ASSERT_TRUE((*trainer)->Step().ok());
  }
  const int64_t n = config.seq_len / 2;
  const CopyTask task = CopyTask::Create(config.copy_alphabet).value();
  const TokenBatch batch =
      task.Batch(/*seed=*/7, 0, 16, config.seq_len).value();
  const TensorView<const int32_t> prompts(
      batch.tokens.data(), {batch.batch, n + 1}, {config.seq_len, 1});
  ASSERT_TRUE((*trainer)->model().StepSupport().ok());
  GenerateOptions options;
  options.max_new_tokens = n;
  options.sampling.greedy = true;
  options.decode = DecodeMode::kRerun;
  const auto rerun = Generate(*ctx, (*trainer)->model(), (*trainer)->params(),
                              prompts, LengthMask(), options);
  options.decode = DecodeMode::kStep;
  const auto stepped = Generate(*ctx, (*trainer)->model(), (*trainer)->params(),
                                prompts, LengthMask(), options);
  ASSERT_TRUE(rerun.ok() && stepped.ok());
  EXPECT_EQ(*stepped, *rerun);
  int copied = 0;
  for (int64_t b = 0; b < batch.batch; ++b) {
    const std::vector<int32_t> symbols(
        batch.tokens.begin() + b * config.seq_len,
        batch.tokens.begin() + b * config.seq_len + n);
    copied += (*stepped)[b] == symbols;
  }
  EXPECT_GE(copied, 15) << "of " << batch.batch;
}

// Generation from a [B, S, 5] source.
class GenerateWithSourceTest : public GenerateTest {
 protected:
  void SetUp() override {
    GenerateTest::SetUp();
    MakeModel("full", 16, /*context_dim=*/5);
    context_ = std::vector<float>(3 * 4 * 5);
    for (size_t i = 0; i < context_.size(); ++i) {
      context_[i] = 3.0f * std::sin(0.7f * static_cast<float>(i) + 0.3f);
    }
    context_lengths_.lengths = {4, 2, 3};
  }

  // Rows `rows` of the source, with their prompts (one token each).
  absl::StatusOr<std::vector<std::vector<int32_t>>> RunRows(
      const std::vector<int64_t>& rows, const std::vector<int32_t>& prompts,
      const GenerateOptions& options) {
    const int64_t count = static_cast<int64_t>(rows.size());
    std::vector<float> context;
    GenerationSource source;
    for (int64_t row : rows) {
      context.insert(context.end(), context_.begin() + row * 20,
                     context_.begin() + row * 20 + 20);
      source.context_lengths.lengths.push_back(context_lengths_.lengths[row]);
    }
    source.context = TensorView<const float>(context.data(), {count, 4, 5});
    return Generate(*ctx_, *model_, *store_,
                    TensorView<const int32_t>(prompts.data(), {count, 1}),
                    LengthMask(), options, source);
  }

  std::vector<float> context_;
  LengthMask context_lengths_;
};

TEST_F(GenerateWithSourceTest, GreedyFollowsTheModelsArgmaxWithTheContext) {
  GenerateOptions options;
  options.max_new_tokens = 5;
  options.sampling.greedy = true;
  auto generated = RunRows({1}, {3}, options);
  ASSERT_TRUE(generated.ok()) << generated.status();
  std::vector<int32_t> sequence = {3};
  std::vector<int32_t> expected;
  for (int step = 0; step < 5; ++step) {
    const int64_t length = static_cast<int64_t>(sequence.size());
    std::vector<float> logits(length * 7);
    TransformerInputs inputs;
    inputs.tokens = TensorView<const int32_t>(sequence.data(), {1, length});
    inputs.context = TensorView<const float>(context_.data() + 20, {1, 4, 5});
    inputs.context_lengths.lengths = {2};
    ASSERT_TRUE(model_
                    ->Forward(*ctx_, *store_, inputs,
                              TensorView<float>(logits.data(), {1, length, 7}),
                              false)
                    .ok());
    const float* last = logits.data() + (length - 1) * 7;
    expected.push_back(
        static_cast<int32_t>(std::max_element(last, last + 7) - last));
    sequence.push_back(expected.back());
  }
  EXPECT_EQ((*generated)[0], expected);
}

// Rows stop at different steps (eos), so later steps run on a subset of the
// source rows; the result equals generating each row alone.
TEST_F(GenerateWithSourceTest, BatchedEqualsOneByOne) {
  GenerateOptions options;
  options.max_new_tokens = 6;
  options.sampling.greedy = true;
  const std::vector<int32_t> prompts = {3, 0, 6};
  auto free_run = RunRows({0}, {3}, options);
  ASSERT_TRUE(free_run.ok()) << free_run.status();
  options.eos_token = (*free_run)[0][0];
  auto batched = RunRows({0, 1, 2}, prompts, options);
  ASSERT_TRUE(batched.ok()) << batched.status();
  ASSERT_EQ(batched->size(), 3u);
  for (int64_t b = 0; b < 3; ++b) {
    auto alone = RunRows({b}, {prompts[b]}, options);
    ASSERT_TRUE(alone.ok()) << alone.status();
    EXPECT_EQ((*batched)[b], (*alone)[0]) << "row " << b;
  }
  // Row 0 stops after its first token; the scenario needs a row that goes on.
  EXPECT_EQ((*batched)[0].size(), 1u);
  EXPECT_TRUE((*batched)[1].size() > 1 || (*batched)[2].size() > 1);
}

TEST_F(GenerateWithSourceTest, BadSourceIsInvalidArgument) {
  const std::vector<int32_t> prompts = {1, 2, 3};
  GenerateOptions options;
  auto expect_error = [&](const GenerationSource& source,
                          const GenerateOptions& options, const char* needle) {
    auto result = Generate(*ctx_, *model_, *store_,
                           TensorView<const int32_t>(prompts.data(), {3, 1}),
                           LengthMask(), options, source);
    ASSERT_FALSE(result.ok()) << needle;
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(result.status().message().find(needle), std::string::npos)
        << result.status();
  };
  GenerationSource source;
  source.context = TensorView<const float>(context_.data(), {3, 4, 5});
  GenerateOptions step = options;
  step.decode = DecodeMode::kStep;
  expect_error(source, step, "kStep");
  source.context = TensorView<const float>(context_.data(), {2, 4, 5});
  expect_error(source, options, "source context must be");
  source.context = TensorView<const float>(context_.data(), {3, 5, 4});
  expect_error(source, options, "source context must be");
  source.context = TensorView<const float>(nullptr, {3, 4, 5});
  expect_error(source, options, "non-null");
  source.context = TensorView<const float>(context_.data(), {3, 4, 5});
  source.context_lengths.lengths = {4, 5, 1};
  expect_error(source, options, "context_lengths");
  // A model without cross-attention takes no source.
  MakeModel("full", 16);
  source.context_lengths.lengths.clear();
  expect_error(source, options, "cross_attend");
}

}  // namespace
}  // namespace ftx
