// Transformer-XL recurrence memory (Dai et al. 2019, "Transformer-XL"), the
// bookkeeping of x-transformers TransformerWrapper(max_mem_len,
// shift_mem_down) and AttentionLayers.forward(mems) (0.26.6; same in 2.x
// except where noted):
//   - one memory per self-attention ('a') layer, mems[l] [B, M, C];
//   - hidden[l] = the input of 'a' layer l before its pre-norm (the residual
//     stream), [B, T, C];
//   - return_mems: new_mems[l] = cat(mems[l], hidden[l], dim=T)[:,
//   -max_mem_len:]
//     detached (no gradient flows into a memory); max_mem_len = 0 keeps
//     everything (the reference slices [-0:]);
//   - shift_mem_down = k: before the layers run, mems = mems[k:] + mems[:k]
//     (the memory of layer l + k feeds layer l; unchanged when k >= depth);
//   - in 'a' layer l, keys and values are computed from cat(mem, x) where x
//     is the layer's (normalised) input; queries from x only. 0.26.6
//     concatenates the raw memory with the normalised x (SEMANTICS 6.6
//     quirk); 2.x applies the pre-norm to the memory too: normalise the
//     memory before ConcatKeyValueInput to get 2.x;
//   - causal attention over the M + T keys lets query i see keys
//     j <= i + M: AttnMask::Causal(M) (x-transformers pads its causal mask
//     on the left by j - i columns).
// Rotary positions then use the last M + T positions of the table.
//
// Gradient convention: ConcatKeyValueInputBackward writes d_x (=); memories
// get no gradient (stop-gradient).
#ifndef FTX_LAYERS_XL_MEMORY_H_
#define FTX_LAYERS_XL_MEMORY_H_

#include <algorithm>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "attention/mask.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor.h"
#include "kernels/base/tensor_view.h"

namespace ftx {

struct XlMemoryConfig {
  int64_t max_mem_len = 0;     // 0 keeps all
  int64_t shift_mem_down = 0;  // k >= 0
};

class XlMemory {
 public:
  // InvalidArgument for a negative max_mem_len or shift_mem_down.
  static absl::StatusOr<XlMemory> Create(const XlMemoryConfig& config);

  const XlMemoryConfig& config() const { return config_; }

  // Length of cat(memory of M, hidden of T) after truncation.
  int64_t UpdatedLength(int64_t memory_length, int64_t hidden_length) const;

  // new_memory = cat(memory, hidden)[:, -max_mem_len:], a new CPU tensor
  // [B, UpdatedLength(M, T), C]. memory: [B, M, C] or absent (no memory yet);
  // hidden: [B, T, C].
  absl::StatusOr<Tensor> Update(const Context& ctx,
                                TensorView<const float> memory,
                                TensorView<const float> hidden) const;

  // x-transformers shift_mem_down: rotates `mems` left by shift_mem_down
  // (no change when shift_mem_down >= mems.size()).
  template <typename T>
  void ShiftDown(std::vector<T>& mems) const {
    if (config_.shift_mem_down >= static_cast<int64_t>(mems.size())) return;
    std::rotate(mems.begin(), mems.begin() + config_.shift_mem_down,
                mems.end());
  }

  // The mask of causal attention from the T queries of x to the M + T keys
  // of cat(memory, x).
  static AttnMask CausalMask(int64_t memory_length) {
    return AttnMask::Causal(memory_length);
  }

  // out = cat(memory, x) along T: memory [B, M, C] or absent, x [B, T, C],
  // out [B, M + T, C].
  static absl::Status ConcatKeyValueInput(const Context& ctx,
                                          TensorView<const float> memory,
                                          TensorView<const float> x,
                                          TensorView<float> out);

  // d_x = d_out[:, M:] (=); d_out [B, M + T, C], d_x [B, T, C]. The memory
  // part of d_out is dropped (stop-gradient).
  static absl::Status ConcatKeyValueInputBackward(const Context& ctx,
                                                  int64_t memory_length,
                                                  TensorView<const float> d_out,
                                                  TensorView<float> d_x);

 private:
  explicit XlMemory(const XlMemoryConfig& config) : config_(config) {}

  XlMemoryConfig config_;
};

}  // namespace ftx

#endif  // FTX_LAYERS_XL_MEMORY_H_
