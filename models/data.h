// Training data generated or read on the fly, as next-token batches
// (tokens [B, T], targets [B, T]; targets equal to kIgnoreTarget carry no
// loss):
//
//   CopyTask     the copy task of "Transformers are RNNs" (Katharopoulos et
//                al. 2020, section 4.1): n random symbols from an alphabet of
//                A, a separator, then the same n symbols again. The sequence
//                s_1 .. s_n SEP s_1 .. s_n (length 2n + 1) is split into
//                tokens = its first 2n elements and targets = its last 2n,
//                and only the copied half is scored:
//                  tokens  = s_1 .. s_n SEP s_1 .. s_{n-1}
//                  targets = ign .. ign     s_1 .. s_n       (n ignored)
//                Symbols are tokens 0 .. A-1, SEP is A (vocabulary A + 1).
//                The paper uses sequences of varying length up to 128 with
//                10 symbols; here every sequence of a batch has n = T / 2.
//   ByteDataset  byte-level language modelling on a file: tokens are the bytes
//                0 .. 255; the first (1 - held_out_fraction) of the file is
//                the training split, the rest the held-out split; a batch is
//                B random windows of T + 1 bytes of one split (tokens = the
//                first T, targets = the last T).
//
// Batches are a pure function of (seed, step, batch size, length): symbols and
// window starts are Philox draws (kernels/base/philox.h) with the step as the
// stream, so a run can be resumed or repeated bit for bit.
//
// Example:
//   FTX_ASSIGN_OR_RETURN(CopyTask task, CopyTask::Create(10));
//   FTX_ASSIGN_OR_RETURN(TokenBatch batch, task.Batch(seed, step, 16, 64));
//   model.Forward(ctx, store, {.tokens = batch.tokens_view()}, ...);
#ifndef FTX_MODELS_DATA_H_
#define FTX_MODELS_DATA_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/base/tensor_view.h"

namespace ftx {

// The target of positions that carry no loss: CrossEntropyOptions' default
// ignore_index (torch's -100).
inline constexpr int32_t kIgnoreTarget = -100;

// B sequences of T next-token pairs, row-major.
struct TokenBatch {
  int64_t batch = 0;             // B
  int64_t length = 0;            // T
  std::vector<int32_t> tokens;   // [B, T]
  std::vector<int32_t> targets;  // [B, T], kIgnoreTarget where not scored

  TensorView<const int32_t> tokens_view() const {
    return TensorView<const int32_t>(tokens.data(), {batch, length});
  }
  TensorView<const int32_t> targets_view() const {
    return TensorView<const int32_t>(targets.data(), {batch, length});
  }
};

class CopyTask {
 public:
  // alphabet_size: A >= 1 symbols. InvalidArgument otherwise.
  static absl::StatusOr<CopyTask> Create(int64_t alphabet_size);

  int64_t alphabet_size() const { return alphabet_size_; }
  int32_t separator() const { return static_cast<int32_t>(alphabet_size_); }
  // A + 1: the symbols and the separator.
  int64_t vocab_size() const { return alphabet_size_ + 1; }

  // batch_size >= 1 sequences of length T (even, >= 2): n = T / 2 symbols.
  // InvalidArgument naming the bad argument.
  absl::StatusOr<TokenBatch> Batch(uint64_t seed, uint64_t step,
                                   int64_t batch_size, int64_t length) const;

 private:
  explicit CopyTask(int64_t alphabet_size) : alphabet_size_(alphabet_size) {}
  int64_t alphabet_size_;
};

enum class DataSplit { kTrain, kHeldOut };

class ByteDataset {
 public:
  // Reads the whole file. NotFound naming the path when it cannot be opened,
  // InvalidArgument when it is empty or held_out_fraction is outside [0, 1).
  static absl::StatusOr<ByteDataset> Open(const std::string& path,
                                          double held_out_fraction);
  // The same from bytes in memory; `source` names them in errors.
  static absl::StatusOr<ByteDataset> FromBytes(std::string bytes,
                                               double held_out_fraction,
                                               const std::string& source);

  static constexpr int64_t kVocabSize = 256;

  const std::string& source() const { return source_; }
  int64_t size() const { return static_cast<int64_t>(bytes_.size()); }
  // Bytes [0, train_size) train, [train_size, size) held out.
  int64_t train_size() const { return train_size_; }
  int64_t SplitSize(DataSplit split) const {
    return split == DataSplit::kTrain ? train_size_ : size() - train_size_;
  }

  // batch_size random windows of length + 1 bytes of `split`, each start
  // uniform over the windows that fit. InvalidArgument when the split is
  // shorter than length + 1 bytes (naming both sizes) or an argument is < 1.
  absl::StatusOr<TokenBatch> Batch(DataSplit split, uint64_t seed,
                                   uint64_t step, int64_t batch_size,
                                   int64_t length) const;

 private:
  ByteDataset(std::string bytes, int64_t train_size, std::string source)
      : bytes_(std::move(bytes)),
        train_size_(train_size),
        source_(std::move(source)) {}

  std::string bytes_;
  int64_t train_size_;
  std::string source_;
};

}  // namespace ftx

#endif  // FTX_MODELS_DATA_H_
