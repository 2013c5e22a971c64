#include "models/data.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "kernels/base/philox.h"

namespace ftx {
namespace {

// A uniform integer in [0, count) from 32 random bits (Lemire's multiply-shift;
// the bias is below count / 2^32).
int64_t UniformBelow(uint32_t bits, int64_t count) {
  return static_cast<int64_t>(
      (static_cast<uint64_t>(bits) * static_cast<uint64_t>(count)) >> 32);
}

// 64 random bits: elements 2 index and 2 index + 1 of (seed, stream).
uint64_t RandomBits64(uint64_t seed, uint64_t stream, uint64_t index) {
  return (static_cast<uint64_t>(RandomBits(seed, stream, 2 * index)) << 32) |
         RandomBits(seed, stream, 2 * index + 1);
}

constexpr const char* kListOpsWords[] = {
    "0", "1", "2", "3",   "4",   "5",   "6",  "7",   "8",
    "9", "[", "]", "MAX", "MIN", "MED", "SM", "SEP", "PAD"};

bool IsListOpsOperator(int32_t token) {
  return token >= kListOpsMax && token <= kListOpsSumMod;
}

int32_t ApplyListOps(int32_t op, std::vector<int32_t>& args) {
  switch (op) {
    case kListOpsMax:
      return *std::max_element(args.begin(), args.end());
    case kListOpsMin:
      return *std::min_element(args.begin(), args.end());
    case kListOpsMedian: {
      std::sort(args.begin(), args.end());
      const size_t n = args.size();
      return n % 2 == 1 ? args[n / 2] : (args[n / 2 - 1] + args[n / 2]) / 2;
    }
    default: {
      int32_t sum = 0;
      for (int32_t arg : args) sum += arg;
      return sum % 10;
    }
  }
}

// Parses the expression starting at tokens[position] and advances position
// past it.
absl::StatusOr<int32_t> ParseListOps(const std::vector<int32_t>& tokens,
                                     size_t& position) {
  if (position >= tokens.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("EvaluateListOps: expected a digit or '[' at position ",
                     position, ", got the end of the expression"));
  }
  const int32_t token = tokens[position++];
  if (token >= 0 && token <= 9) return token;
  if (token != kListOpsOpen) {
    return absl::InvalidArgumentError(
        absl::StrCat("EvaluateListOps: expected a digit or '[' at position ",
                     position - 1, ", got token ", token));
  }
  if (position >= tokens.size() || !IsListOpsOperator(tokens[position])) {
    return absl::InvalidArgumentError(absl::StrCat(
        "EvaluateListOps: expected an operator (MAX, MIN, MED, SM) after '[' "
        "at position ",
        position));
  }
  const int32_t op = tokens[position++];
  std::vector<int32_t> args;
  while (position < tokens.size() && tokens[position] != kListOpsClose) {
    absl::StatusOr<int32_t> arg = ParseListOps(tokens, position);
    if (!arg.ok()) return arg.status();
    args.push_back(*arg);
  }
  if (position >= tokens.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("EvaluateListOps: missing ']' at position ", position));
  }
  if (args.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "EvaluateListOps: operator without arguments before ']' at position ",
        position));
  }
  ++position;
  return ApplyListOps(op, args);
}

// Appends a random ListOps node of at most `budget` tokens at operator
// nesting level `level` (the root is level 1), drawing 32-bit words from
// Philox counter (index << 32) + draw.
class ListOpsGenerator {
 public:
  ListOpsGenerator(const ListOpsConfig& config, uint64_t seed, uint64_t step,
                   int64_t index, std::vector<int32_t>& out)
      : config_(config), seed_(seed), step_(step), index_(index), out_(out) {}

  void Node(int64_t level, int64_t budget, bool root) {
    // The smallest operator node is "[ op d d ]".
    const bool can_nest = level <= config_.max_depth && budget >= 5;
    // LRA's generator makes an argument a plain value with probability 1/4.
    if (!can_nest || (!root && Below(4) == 0)) {
      out_.push_back(static_cast<int32_t>(Below(10)));
      return;
    }
    out_.push_back(kListOpsOpen);
    out_.push_back(kListOpsMax + static_cast<int32_t>(Below(4)));
    const int64_t args = std::min(2 + Below(config_.max_args - 1), budget - 3);
    int64_t remaining = budget - 3;
    for (int64_t i = 0; i < args; ++i) {
      const size_t before = out_.size();
      Node(level + 1, remaining / (args - i), /*root=*/false);
      remaining -= static_cast<int64_t>(out_.size() - before);
    }
    out_.push_back(kListOpsClose);
  }

 private:
  int64_t Below(int64_t count) {
    return UniformBelow(
        RandomBits(seed_, step_,
                   (static_cast<uint64_t>(index_) << 32) + draws_++),
        count);
  }

  const ListOpsConfig& config_;
  uint64_t seed_, step_;
  int64_t index_;
  std::vector<int32_t>& out_;
  uint64_t draws_ = 0;
};

}  // namespace

absl::StatusOr<int32_t> EvaluateListOps(const std::vector<int32_t>& tokens) {
  size_t position = 0;
  absl::StatusOr<int32_t> value = ParseListOps(tokens, position);
  if (value.ok() && position != tokens.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("EvaluateListOps: trailing tokens from position ",
                     position, " of ", tokens.size()));
  }
  return value;
}

absl::StatusOr<std::vector<int32_t>> ListOpsFromText(absl::string_view text) {
  std::vector<int32_t> tokens;
  for (absl::string_view word : absl::StrSplit(text, ' ', absl::SkipEmpty())) {
    const auto* found =
        std::find(std::begin(kListOpsWords), std::end(kListOpsWords), word);
    if (found == std::end(kListOpsWords)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "ListOpsFromText: unknown word \"", word,
          "\"; expected 0-9, [, ], MAX, MIN, MED, SM, SEP or PAD"));
    }
    tokens.push_back(static_cast<int32_t>(found - std::begin(kListOpsWords)));
  }
  return tokens;
}

std::string ListOpsToText(const std::vector<int32_t>& tokens) {
  std::string text;
  for (int32_t token : tokens) {
    absl::StrAppend(&text, text.empty() ? "" : " ",
                    token >= 0 && token < ListOpsTask::kVocabSize
                        ? kListOpsWords[token]
                        : absl::StrCat("<", token, ">"));
  }
  return text;
}

absl::StatusOr<ListOpsTask> ListOpsTask::Create(const ListOpsConfig& config) {
  if (config.max_depth < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ListOpsTask: max_depth must be >= 1, got ", config.max_depth));
  }
  if (config.max_args < 2 || config.max_args > 1000) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ListOpsTask: max_args must be in [2, 1000], got ", config.max_args));
  }
  if (config.max_length != 0 && config.max_length < 5) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ListOpsTask: max_length must be 0 (the sequence length - 1) or >= 5 "
        "(\"[ op d d ]\"), got ",
        config.max_length));
  }
  return ListOpsTask(config);
}

std::vector<int32_t> ListOpsTask::Expression(uint64_t seed, uint64_t step,
                                             int64_t index,
                                             int64_t max_length) const {
  std::vector<int32_t> expression;
  ListOpsGenerator(config_, seed, step, index, expression)
      .Node(/*level=*/1, max_length, /*root=*/true);
  return expression;
}

absl::StatusOr<TokenBatch> ListOpsTask::Batch(uint64_t seed, uint64_t step,
                                              int64_t batch_size,
                                              int64_t length) const {
  if (batch_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ListOpsTask::Batch: batch_size must be >= 1, got ", batch_size));
  }
  if (length < 6) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ListOpsTask::Batch: length must be >= 6 (an expression of >= 5 "
        "tokens and the separator), got ",
        length));
  }
  const int64_t max_length = config_.max_length == 0
                                 ? length - 1
                                 : std::min(config_.max_length, length - 1);
  TokenBatch batch;
  batch.batch = batch_size;
  batch.length = length;
  batch.tokens.assign(batch_size * length, kListOpsPad);
  batch.targets.assign(batch_size * length, kIgnoreTarget);
  for (int64_t b = 0; b < batch_size; ++b) {
    const std::vector<int32_t> expression =
        Expression(seed, step, b, max_length);
    const absl::StatusOr<int32_t> value = EvaluateListOps(expression);
    if (!value.ok()) return value.status();
    const int64_t m = static_cast<int64_t>(expression.size());
    std::copy(expression.begin(), expression.end(),
              batch.tokens.begin() + b * length);
    batch.tokens[b * length + m] = kListOpsSeparator;
    batch.targets[b * length + m] = *value;
  }
  return batch;
}

absl::StatusOr<CopyTask> CopyTask::Create(int64_t alphabet_size) {
  if (alphabet_size < 1 || alphabet_size >= (int64_t{1} << 30)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "CopyTask: alphabet_size must be in [1, 2^30), got ", alphabet_size));
  }
  return CopyTask(alphabet_size);
}

absl::StatusOr<TokenBatch> CopyTask::Batch(uint64_t seed, uint64_t step,
                                           int64_t batch_size,
                                           int64_t length) const {
  if (batch_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "CopyTask::Batch: batch_size must be >= 1, got ", batch_size));
  }
  if (length < 2 || length % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "CopyTask::Batch: length must be even and >= 2 (n symbols, the "
        "separator and n - 1 copied symbols), got ",
        length));
  }
  const int64_t n = length / 2;
  TokenBatch batch;
  batch.batch = batch_size;
  batch.length = length;
  batch.tokens.resize(batch_size * length);
  batch.targets.resize(batch_size * length);
  std::vector<int32_t> symbols(n);
  for (int64_t b = 0; b < batch_size; ++b) {
    for (int64_t i = 0; i < n; ++i) {
      symbols[i] = static_cast<int32_t>(
          UniformBelow(RandomBits(seed, step, static_cast<uint64_t>(b * n + i)),
                       alphabet_size_));
    }
    int32_t* tokens = batch.tokens.data() + b * length;
    int32_t* targets = batch.targets.data() + b * length;
    for (int64_t i = 0; i < n; ++i) {
      tokens[i] = symbols[i];
      targets[i] = kIgnoreTarget;
    }
    tokens[n] = separator();
    for (int64_t i = 1; i < n; ++i) tokens[n + i] = symbols[i - 1];
    for (int64_t i = 0; i < n; ++i) targets[n + i] = symbols[i];
  }
  return batch;
}

absl::StatusOr<ByteDataset> ByteDataset::Open(const std::string& path,
                                              double held_out_fraction) {
  std::ifstream file(path, std::ios::binary);
  if (!file) {
    return absl::NotFoundError(
        absl::StrCat("ByteDataset: cannot open \"", path, "\""));
  }
  std::ostringstream contents;
  contents << file.rdbuf();
  if (file.bad()) {
    return absl::DataLossError(
        absl::StrCat("ByteDataset: cannot read \"", path, "\""));
  }
  return FromBytes(contents.str(), held_out_fraction, path);
}

absl::StatusOr<ByteDataset> ByteDataset::FromBytes(std::string bytes,
                                                   double held_out_fraction,
                                                   const std::string& source) {
  if (!(held_out_fraction >= 0.0 && held_out_fraction < 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("ByteDataset: held_out_fraction must be in [0, 1), got ",
                     held_out_fraction));
  }
  if (bytes.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("ByteDataset: \"", source, "\" is empty"));
  }
  const int64_t size = static_cast<int64_t>(bytes.size());
  const int64_t held_out = static_cast<int64_t>(
      std::floor(static_cast<double>(size) * held_out_fraction));
  return ByteDataset(std::move(bytes), size - held_out, source);
}

absl::StatusOr<TokenBatch> ByteDataset::Batch(DataSplit split, uint64_t seed,
                                              uint64_t step, int64_t batch_size,
                                              int64_t length) const {
  if (batch_size < 1 || length < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ByteDataset::Batch: batch_size and length must be >= 1, got ",
        batch_size, " and ", length));
  }
  const int64_t split_size = SplitSize(split);
  const char* split_name = split == DataSplit::kTrain ? "training" : "held-out";
  if (split_size < length + 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ByteDataset: the ", split_name, " split of \"", source_, "\" has ",
        split_size,
        " bytes, fewer than a window of length + 1 = ", length + 1));
  }
  const int64_t first = split == DataSplit::kTrain ? 0 : train_size_;
  const uint64_t windows = static_cast<uint64_t>(split_size - length);
  TokenBatch batch;
  batch.batch = batch_size;
  batch.length = length;
  batch.tokens.resize(batch_size * length);
  batch.targets.resize(batch_size * length);
  for (int64_t b = 0; b < batch_size; ++b) {
    const int64_t start =
        first +
        static_cast<int64_t>(
            RandomBits64(seed, step, static_cast<uint64_t>(b)) % windows);
    for (int64_t t = 0; t < length; ++t) {
      batch.tokens[b * length + t] =
          static_cast<unsigned char>(bytes_[start + t]);
      batch.targets[b * length + t] =
          static_cast<unsigned char>(bytes_[start + t + 1]);
    }
  }
  return batch;
}

}  // namespace ftx
