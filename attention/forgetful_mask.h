// Forgetful causal masking (Liu et al. 2022, "Forgetful Causal Masking Makes
// Causal Language Models Better Zero-Shot Learners"), as x-transformers
// AutoregressiveWrapper(mask_prob = p) (1.2.1+): during training, each
// sequence hides a random set of past tokens from every query, as keys.
// x-transformers draws, per batch row of the n input tokens,
//   num_mask = min(int((n + 1) * p), n)      (it counts the n + 1 tokens
//                                             before the input/target shift)
// distinct positions among 1..n-1 (token 0 is never masked), and passes
// the keep mask [N, n] to every self-attention layer as a key mask
// (self_attn_kv_mask), combined there with the causal mask: query i sees key
// j iff j <= i and keep[j].
//
// Randomness: x-transformers ranks torch.randn scores with topk; ftx ranks
// Philox uniforms (kernels/base/philox.h, stream kForgetfulMaskStream, element
// b * n + j), so a seed gives the same mask everywhere, but not torch's mask.
// Deliberate differences: ftx masks at most n - 1 tokens, so token 0 always
// stays (x-transformers masks all n when int((n + 1) p) = n, i.e.
// p >= n / (n + 1)); keep_diagonal = true additionally lets every query see
// itself (not in x-transformers, where a masked token is hidden from its own
// query too).
//
// The mask is per batch row; AttnMask is shared by the batch, so
// ForgetfulCausalAdditiveMask writes one row's [n, n] additive matrix (0 keep,
// -inf drop) for AttnMask::Additive, and the "full" mechanism runs per batch
// item (views sliced on N). No backward: the mask has no differentiable input.
#ifndef FTX_ATTENTION_FORGETFUL_MASK_H_
#define FTX_ATTENTION_FORGETFUL_MASK_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/base/tensor_view.h"

namespace ftx {

inline constexpr uint64_t kForgetfulMaskStream = 0xF0C0;

struct ForgetfulMaskConfig {
  float mask_prob = 0.0f;  // p in [0, 1)
  bool keep_diagonal = false;
};

// Number of masked keys for n input tokens: min(int((n + 1) p), n - 1).
int64_t ForgetfulMaskCount(const ForgetfulMaskConfig& config, int64_t seq_len);

// keep [N * n], row-major [N, n], 1 = key kept. All ones unless `training`.
// InvalidArgument for mask_prob outside [0, 1), batch < 1 or seq_len < 1.
absl::StatusOr<std::vector<uint8_t>> ForgetfulKeyMask(
    const ForgetfulMaskConfig& config, int64_t batch, int64_t seq_len,
    bool training, uint64_t seed);

// additive [n, n]: 0 where j <= i and (keep_row[j] or (keep_diagonal and
// i == j)), -inf elsewhere. keep_row: n entries (one row of ForgetfulKeyMask).
absl::Status ForgetfulCausalAdditiveMask(const ForgetfulMaskConfig& config,
                                         const std::vector<uint8_t>& keep_row,
                                         TensorView<float> additive);

}  // namespace ftx

#endif  // FTX_ATTENTION_FORGETFUL_MASK_H_
