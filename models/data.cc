#include "models/data.h"

#include <cmath>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
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

}  // namespace

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
