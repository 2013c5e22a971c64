// CopyTask and ByteDataset: the layout of copy sequences (separator, copied
// half scored, the rest ignored), symbol range and rough uniformity,
// determinism in (seed, step) and variation across steps and seeds; byte
// windows are contiguous slices of the right split; errors for bad
// arguments, a missing file, an empty file and splits shorter than a window.
#include "models/data.h"

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace ftx {
namespace {

TEST(CopyTaskTest, LayoutIsSymbolsSeparatorCopy) {
  const CopyTask task = CopyTask::Create(10).value();
  EXPECT_EQ(task.vocab_size(), 11);
  EXPECT_EQ(task.separator(), 10);
  const int64_t batch_size = 5, length = 14, n = 7;
  const TokenBatch batch = task.Batch(3, 4, batch_size, length).value();
  ASSERT_EQ(batch.tokens.size(), static_cast<size_t>(batch_size * length));
  ASSERT_EQ(batch.targets.size(), static_cast<size_t>(batch_size * length));
  for (int64_t b = 0; b < batch_size; ++b) {
    const int32_t* tokens = batch.tokens.data() + b * length;
    const int32_t* targets = batch.targets.data() + b * length;
    for (int64_t i = 0; i < n; ++i) {
      EXPECT_GE(tokens[i], 0);
      EXPECT_LT(tokens[i], 10);
      EXPECT_EQ(targets[i], kIgnoreTarget) << "position " << i;
      // The copied half predicts s_i at position n + i.
      EXPECT_EQ(targets[n + i], tokens[i]) << "b " << b << " i " << i;
    }
    EXPECT_EQ(tokens[n], 10);
    for (int64_t i = 1; i < n; ++i) EXPECT_EQ(tokens[n + i], tokens[i - 1]);
  }
  EXPECT_EQ(batch.tokens_view().shape(), Shape({batch_size, length}));
}

TEST(CopyTaskTest, DeterministicInSeedAndStep) {
  const CopyTask task = CopyTask::Create(10).value();
  const TokenBatch a = task.Batch(1, 2, 8, 32).value();
  EXPECT_EQ(a.tokens, task.Batch(1, 2, 8, 32).value().tokens);
  EXPECT_NE(a.tokens, task.Batch(1, 3, 8, 32).value().tokens);
  EXPECT_NE(a.tokens, task.Batch(2, 2, 8, 32).value().tokens);
}

TEST(CopyTaskTest, SymbolsRoughlyUniform) {
  const CopyTask task = CopyTask::Create(4).value();
  const TokenBatch batch = task.Batch(0, 0, 400, 100).value();
  std::vector<int> counts(4, 0);
  for (int64_t b = 0; b < 400; ++b) {
    for (int64_t i = 0; i < 50; ++i) ++counts[batch.tokens[b * 100 + i]];
  }
  // 20000 draws: expected 5000 each, standard deviation about 61.
  for (int count : counts) EXPECT_NEAR(count, 5000, 400);
}

TEST(CopyTaskTest, BadArguments) {
  EXPECT_EQ(CopyTask::Create(0).status().code(),
            absl::StatusCode::kInvalidArgument);
  const CopyTask task = CopyTask::Create(3).value();
  absl::Status odd = task.Batch(0, 0, 2, 7).status();
  EXPECT_EQ(odd.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(odd.message().find("length must be even"), absl::string_view::npos)
      << odd;
  absl::Status empty = task.Batch(0, 0, 0, 8).status();
  EXPECT_NE(empty.message().find("batch_size"), absl::string_view::npos)
      << empty;
}

std::string Text() {
  std::string text;
  for (int i = 0; i < 1000; ++i) text.push_back(static_cast<char>(i * 7 % 256));
  return text;
}

TEST(ByteDatasetTest, WindowsAreSlicesOfTheirSplit) {
  const std::string text = Text();
  const ByteDataset data = ByteDataset::FromBytes(text, 0.2, "mem").value();
  EXPECT_EQ(data.size(), 1000);
  EXPECT_EQ(data.train_size(), 800);
  EXPECT_EQ(data.SplitSize(DataSplit::kHeldOut), 200);
  for (DataSplit split : {DataSplit::kTrain, DataSplit::kHeldOut}) {
    const int64_t first = split == DataSplit::kTrain ? 0 : 800;
    const int64_t end = split == DataSplit::kTrain ? 800 : 1000;
    const int64_t length = 16;
    const TokenBatch batch = data.Batch(split, 5, 9, 64, length).value();
    for (int64_t b = 0; b < 64; ++b) {
      // Find the window start from its first byte's position pattern.
      const int32_t* tokens = batch.tokens.data() + b * length;
      const int32_t* targets = batch.targets.data() + b * length;
      int64_t start = -1;
      for (int64_t s = first; s + length + 1 <= end; ++s) {
        bool match = true;
        for (int64_t t = 0; t < length && match; ++t) {
          match = tokens[t] == static_cast<unsigned char>(text[s + t]) &&
                  targets[t] == static_cast<unsigned char>(text[s + t + 1]);
        }
        if (match) {
          start = s;
          break;
        }
      }
      EXPECT_GE(start, first) << "window " << b << " is not in its split";
    }
    EXPECT_EQ(batch.tokens, data.Batch(split, 5, 9, 64, length).value().tokens);
    EXPECT_NE(batch.tokens,
              data.Batch(split, 5, 10, 64, length).value().tokens);
  }
}

TEST(ByteDatasetTest, ReadsAFile) {
  const std::string path =
      std::string(std::getenv("TEST_TMPDIR")) + "/bytes.txt";
  {
    std::ofstream file(path, std::ios::binary);
    file << "hello, world";
  }
  const ByteDataset data = ByteDataset::Open(path, 0.0).value();
  EXPECT_EQ(data.size(), 12);
  const TokenBatch batch = data.Batch(DataSplit::kTrain, 0, 0, 1, 11).value();
  EXPECT_EQ(batch.tokens[0], 'h');
  EXPECT_EQ(batch.targets[10], 'd');
}

TEST(ByteDatasetTest, Errors) {
  const std::string dir = std::getenv("TEST_TMPDIR");
  absl::Status missing = ByteDataset::Open(dir + "/absent.txt", 0.1).status();
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.message().find("cannot open"), absl::string_view::npos)
      << missing;
  EXPECT_NE(missing.message().find("absent.txt"), absl::string_view::npos);
  { std::ofstream empty(dir + "/empty.txt"); }
  absl::Status empty = ByteDataset::Open(dir + "/empty.txt", 0.1).status();
  EXPECT_EQ(empty.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(empty.message().find("is empty"), absl::string_view::npos) << empty;
  EXPECT_EQ(ByteDataset::FromBytes("abc", 1.0, "mem").status().code(),
            absl::StatusCode::kInvalidArgument);
  const ByteDataset data =
      ByteDataset::FromBytes("abcdefghij", 0.5, "mem").value();
  absl::Status short_split =
      data.Batch(DataSplit::kHeldOut, 0, 0, 1, 5).status();
  EXPECT_EQ(short_split.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(short_split.message().find("held-out split"),
            absl::string_view::npos)
      << short_split;
  EXPECT_TRUE(data.Batch(DataSplit::kHeldOut, 0, 0, 1, 4).ok());
}

}  // namespace
}  // namespace ftx

namespace ftx {
namespace {

int32_t Evaluate(const char* text) {
  const absl::StatusOr<std::vector<int32_t>> tokens = ListOpsFromText(text);
  EXPECT_TRUE(tokens.ok()) << tokens.status();
  const absl::StatusOr<int32_t> value = EvaluateListOps(tokens.value());
  EXPECT_TRUE(value.ok()) << text << ": " << value.status();
  return value.ok() ? *value : -1;
}

TEST(ListOpsTest, EvaluatesHandComputedExpressions) {
  EXPECT_EQ(Evaluate("7"), 7);
  EXPECT_EQ(Evaluate("[ MAX 2 9 4 ]"), 9);
  EXPECT_EQ(Evaluate("[ MIN 5 3 8 ]"), 3);
  EXPECT_EQ(Evaluate("[ MED 9 1 5 ]"), 5);
  // Even count: int(np.median([1, 2, 6, 9])) = int(4.0) = 4.
  EXPECT_EQ(Evaluate("[ MED 9 1 6 2 ]"), 4);
  // int(np.median([3, 6])) = int(4.5) = 4.
  EXPECT_EQ(Evaluate("[ MED 6 3 ]"), 4);
  EXPECT_EQ(Evaluate("[ SM 7 8 9 ]"), 4);  // 24 mod 10
  EXPECT_EQ(Evaluate("[ SM 0 0 ]"), 0);
  // [MIN 2 3] = 2, [MED 1 5 8 9 2] = 5: MAX(4, 3, 2, 1, 0, 5) = 5.
  EXPECT_EQ(Evaluate("[ MAX 4 3 [ MIN 2 3 ] 1 0 [ MED 1 5 8 9 2 ] ]"), 5);
  // [SM 9 [MAX 1 8] 5] = (9 + 8 + 5) mod 10 = 2; MIN(2, 7) = 2.
  EXPECT_EQ(Evaluate("[ MIN [ SM 9 [ MAX 1 8 ] 5 ] 7 ]"), 2);
  // Three levels: [SM [SM [SM 9 9] 9] 9] = ((18 % 10 + 9) % 10 + 9) % 10 = 6.
  EXPECT_EQ(Evaluate("[ SM [ SM [ SM 9 9 ] 9 ] 9 ]"), 6);
}

TEST(ListOpsTest, MalformedExpressionsAreErrors) {
  for (const char* text : {"", "[ MAX 1 2", "[ 1 2 ]", "[ MAX ]", "1 2", "]",
                           "[ MAX 1 ] 3", "SEP", "[ MIN 1 [ MAX ] ]"}) {
    const std::vector<int32_t> tokens = ListOpsFromText(text).value();
    const absl::StatusOr<int32_t> value = EvaluateListOps(tokens);
    EXPECT_EQ(value.status().code(), absl::StatusCode::kInvalidArgument)
        << text;
    EXPECT_NE(value.status().message().find("EvaluateListOps"),
              absl::string_view::npos);
  }
  EXPECT_EQ(ListOpsFromText("[ MAX 1 X ]").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_NE(ListOpsFromText("[ MAX 1 X ]").status().message().find("\"X\""),
            absl::string_view::npos);
}

TEST(ListOpsTest, TextRoundTrips) {
  const char* text = "[ MED 1 [ SM 2 3 ] ] SEP PAD";
  EXPECT_EQ(ListOpsToText(ListOpsFromText(text).value()), text);
}

// The deepest operator nesting of a valid expression.
int64_t NestingDepth(const std::vector<int32_t>& tokens) {
  int64_t depth = 0, deepest = 0;
  for (int32_t token : tokens) {
    if (token == kListOpsOpen) deepest = std::max(deepest, ++depth);
    if (token == kListOpsClose) --depth;
  }
  return deepest;
}

TEST(ListOpsTest, BatchLayoutScoresOnlyTheAnswer) {
  const ListOpsTask task =
      ListOpsTask::Create({.max_depth = 4, .max_args = 5}).value();
  EXPECT_EQ(task.vocab_size(), 18);
  const int64_t batch_size = 32, length = 50;
  const TokenBatch batch = task.Batch(5, 6, batch_size, length).value();
  ASSERT_EQ(batch.tokens.size(), static_cast<size_t>(batch_size * length));
  std::vector<int> answers(10, 0);
  for (int64_t b = 0; b < batch_size; ++b) {
    const int32_t* tokens = batch.tokens.data() + b * length;
    const int32_t* targets = batch.targets.data() + b * length;
    const int64_t separator =
        std::find(tokens, tokens + length, kListOpsSeparator) - tokens;
    ASSERT_LT(separator, length) << "no separator in sequence " << b;
    const std::vector<int32_t> expression(tokens, tokens + separator);
    EXPECT_EQ(expression.front(), kListOpsOpen);
    const int32_t value = EvaluateListOps(expression).value();
    for (int64_t t = 0; t < length; ++t) {
      if (t == separator) {
        EXPECT_EQ(targets[t], value) << ListOpsToText(expression);
      } else {
        EXPECT_EQ(targets[t], kIgnoreTarget) << "b " << b << " t " << t;
      }
      if (t > separator) {
        EXPECT_EQ(tokens[t], kListOpsPad);
      }
      EXPECT_GE(tokens[t], 0);
      EXPECT_LT(tokens[t], task.vocab_size());
    }
    ++answers[value];
  }
  // Not all answers the same.
  EXPECT_LT(*std::max_element(answers.begin(), answers.end()), batch_size);
}

TEST(ListOpsTest, LengthsAndDepthsWithinLimits) {
  for (const ListOpsConfig& config :
       {ListOpsConfig{.max_depth = 1, .max_args = 10, .max_length = 0},
        ListOpsConfig{.max_depth = 3, .max_args = 4, .max_length = 40},
        ListOpsConfig{.max_depth = 10, .max_args = 10, .max_length = 0}}) {
    const ListOpsTask task = ListOpsTask::Create(config).value();
    const int64_t length = 200;
    const int64_t limit =
        config.max_length == 0 ? length - 1 : config.max_length;
    int64_t longest = 0, deepest = 0;
    for (uint64_t step = 0; step < 20; ++step) {
      for (int64_t b = 0; b < 16; ++b) {
        const std::vector<int32_t> expression =
            task.Expression(9, step, b, limit);
        ASSERT_TRUE(EvaluateListOps(expression).ok())
            << ListOpsToText(expression);
        EXPECT_LE(static_cast<int64_t>(expression.size()), limit);
        EXPECT_LE(NestingDepth(expression), config.max_depth);
        longest = std::max<int64_t>(longest, expression.size());
        deepest = std::max(deepest, NestingDepth(expression));
      }
    }
    // The limits are used, not just respected.
    EXPECT_GT(longest, std::min(limit / 2, config.max_args + 2))
        << "max_depth " << config.max_depth;
    EXPECT_GE(deepest, std::min<int64_t>(config.max_depth, 3));
  }
}

TEST(ListOpsTest, DeterministicInSeedAndStep) {
  const ListOpsTask task = ListOpsTask::Create({}).value();
  const TokenBatch a = task.Batch(1, 2, 8, 64).value();
  EXPECT_EQ(a.tokens, task.Batch(1, 2, 8, 64).value().tokens);
  EXPECT_EQ(a.targets, task.Batch(1, 2, 8, 64).value().targets);
  EXPECT_NE(a.tokens, task.Batch(1, 3, 8, 64).value().tokens);
  EXPECT_NE(a.tokens, task.Batch(2, 2, 8, 64).value().tokens);
  // Row b does not depend on the batch size.
  const TokenBatch larger = task.Batch(1, 2, 12, 64).value();
  EXPECT_TRUE(
      std::equal(a.tokens.begin(), a.tokens.end(), larger.tokens.begin()));
}

TEST(ListOpsTest, BadArgumentsAreErrors) {
  EXPECT_EQ(ListOpsTask::Create({.max_depth = 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ListOpsTask::Create({.max_args = 1}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ListOpsTask::Create({.max_length = 4}).status().code(),
            absl::StatusCode::kInvalidArgument);
  const ListOpsTask task = ListOpsTask::Create({}).value();
  const absl::Status short_length = task.Batch(0, 0, 2, 5).status();
  EXPECT_EQ(short_length.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(short_length.message().find("length"), absl::string_view::npos);
  EXPECT_EQ(task.Batch(0, 0, 0, 16).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ftx
