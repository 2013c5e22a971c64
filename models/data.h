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
//   ListOpsTask  ListOps (Nangia & Bowman 2018, the Long Range Arena variant
//                of Tay et al. 2021): nested prefix expressions such as
//                  [ MAX 4 3 [ MIN 2 3 ] 1 0 [ MED 1 5 8 9 2 ] ]  = 5
//                over the digits 0 .. 9 with the operators MAX, MIN, MED
//                (median) and SM (sum mod 10); the label is the value 0 .. 9.
//                As a language-model task the sequence is the expression, a
//                separator and the answer; tokens are the expression, SEP and
//                padding, and only the separator's position is scored:
//                  tokens  = e_1 .. e_m SEP PAD .. PAD
//                  targets = ign .. ign ans ign .. ign
//                so the answer is never among the tokens (no leakage, causal
//                or not), and token accuracy is answer accuracy.
//                Vocabulary: digits 0 .. 9 are tokens 0 .. 9, then '[' 10,
//                ']' 11, MAX 12, MIN 13, MED 14, SM 15, SEP 16, PAD 17.
//                LRA's quirks kept: MED of an even count is int(np.median),
//                the floor of the mean of the two middle values; operators
//                take 2 .. max_args arguments (LRA: 10). Unlike LRA's
//                rejection sampler, the generator spends a token budget: an
//                operator node splits what is left evenly over its arguments,
//                so every expression fits max_length without retries.
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
#include "absl/strings/string_view.h"
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

// ListOps tokens.
inline constexpr int32_t kListOpsOpen = 10;   // '['
inline constexpr int32_t kListOpsClose = 11;  // ']'
inline constexpr int32_t kListOpsMax = 12;
inline constexpr int32_t kListOpsMin = 13;
inline constexpr int32_t kListOpsMedian = 14;
inline constexpr int32_t kListOpsSumMod = 15;
inline constexpr int32_t kListOpsSeparator = 16;
inline constexpr int32_t kListOpsPad = 17;

// The value 0 .. 9 of one ListOps expression (a digit, or '[' op arg .. arg
// ']' with at least one argument). InvalidArgument naming the position of the
// first malformed token, or trailing tokens.
absl::StatusOr<int32_t> EvaluateListOps(const std::vector<int32_t>& tokens);

// Text <-> tokens, words separated by spaces: "[ MAX 4 [ SM 7 8 ] ]".
// InvalidArgument naming an unknown word.
absl::StatusOr<std::vector<int32_t>> ListOpsFromText(absl::string_view text);
std::string ListOpsToText(const std::vector<int32_t>& tokens);

struct ListOpsConfig {
  int64_t max_depth = 10;  // >= 1 nested operators (1: one flat operator)
  int64_t max_args = 10;   // >= 2 arguments per operator at most
  int64_t max_length = 0;  // >= 5 tokens per expression; 0: length - 1
};

class ListOpsTask {
 public:
  static constexpr int64_t kVocabSize = 18;

  // InvalidArgument naming a field outside its range.
  static absl::StatusOr<ListOpsTask> Create(const ListOpsConfig& config);

  const ListOpsConfig& config() const { return config_; }
  int64_t vocab_size() const { return kVocabSize; }

  // The expression of sequence `index` of batch (seed, step), at most
  // max_length tokens and max_depth operators deep; the root is an operator.
  std::vector<int32_t> Expression(uint64_t seed, uint64_t step, int64_t index,
                                  int64_t max_length) const;

  // batch_size >= 1 sequences of length T: expressions of at most
  // min(max_length, T - 1) >= 5 tokens, laid out as above. InvalidArgument
  // naming the bad argument.
  absl::StatusOr<TokenBatch> Batch(uint64_t seed, uint64_t step,
                                   int64_t batch_size, int64_t length) const;

 private:
  explicit ListOpsTask(const ListOpsConfig& config) : config_(config) {}
  ListOpsConfig config_;
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
