// Attention masks with fast-transformers' semantics (masking.py): true/1 =
// keep.
//
// An attention call takes three masks, as fast-transformers does:
//   - attn_mask [L, S]: all-ones (kAll), lower-triangular (kCausal: key s <=
//   query l),
//     or an explicit additive matrix (0 keeps, -inf drops, finite values bias);
//   - query lengths [N] and key lengths [N]: positions >= length are padding.
// Padded keys are never attended; padded queries are computed as usual
// (fast-transformers ignores query lengths in "full" attention).
#ifndef FTX_ATTENTION_MASK_H_
#define FTX_ATTENTION_MASK_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "kernels/base/tensor_view.h"

namespace ftx {

class AttnMask {
 public:
  enum class Kind { kAll, kCausal, kAdditive };

  // Every query sees every key.
  static AttnMask All() { return AttnMask(Kind::kAll, {}); }
  // Query l sees keys s <= l + offset (fast-transformers' TriangularCausalMask
  // for offset 0; a positive offset keeps `offset` prepended keys, such as
  // persistent memory key/values, visible to every query).
  static AttnMask Causal(int64_t offset = 0) {
    AttnMask mask(Kind::kCausal, {});
    mask.causal_offset_ = offset;
    return mask;
  }
  // additive: [L, S], added to the scores before the softmax (0 keep, -inf
  // drop).
  static AttnMask Additive(TensorView<const float> additive) {
    return AttnMask(Kind::kAdditive, additive);
  }

  Kind kind() const { return kind_; }
  int64_t causal_offset() const { return causal_offset_; }
  TensorView<const float> additive() const { return additive_; }

  // Additive value at (l, s): 0 or -inf for kAll/kCausal, the matrix entry
  // otherwise.
  float At(int64_t l, int64_t s) const;

  // InvalidArgument unless an additive mask is a CPU [L, S] matrix.
  absl::Status Validate(absl::string_view op, int64_t queries,
                        int64_t keys) const;

 private:
  AttnMask(Kind kind, TensorView<const float> additive)
      : kind_(kind), additive_(additive) {}

  Kind kind_;
  TensorView<const float> additive_;
  int64_t causal_offset_ = 0;
};

// Per-batch sequence lengths; empty means every sequence is full length.
struct LengthMask {
  std::vector<int64_t> lengths;

  bool full() const { return lengths.empty(); }
  int64_t Length(int64_t batch, int64_t max_length) const {
    return lengths.empty() ? max_length : lengths[batch];
  }
  // InvalidArgument unless there are `batch` lengths in [0, max_length].
  absl::Status Validate(absl::string_view op, absl::string_view name,
                        int64_t batch, int64_t max_length) const;
};

}  // namespace ftx

#endif  // FTX_ATTENTION_MASK_H_
