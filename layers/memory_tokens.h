// Memory tokens (x-transformers TransformerWrapper num_memory_tokens; Burtsev &
// Sapunov 2020, "Memory Transformer"): M learned vectors memory_tokens [M, C],
// initialised randn (torch.randn(num_memory_tokens, dim)), are prepended to
// every sequence after the embedding and stripped after the last layer (in
// x-transformers after the final LayerNorm):
//   Prepend: y[b, m] = memory_tokens[m] (m < M),  y[b, M + t] = x[b, t]
//   Strip:   y[b, t] = x[b, M + t]
// and the padding mask is left-padded with True (F.pad(mask, (M, 0),
// value=True)), i.e. key lengths grow by M (PadLengths). Parameter name
// "memory_tokens". Gradient convention: activation gradients written
// (=); d_memory_tokens accumulated (+=), summed over the batch.
#ifndef FTX_LAYERS_MEMORY_TOKENS_H_
#define FTX_LAYERS_MEMORY_TOKENS_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "attention/attention.h"
#include "attention/mask.h"
#include "kernels/base/context.h"

namespace ftx {

struct MemoryTokensConfig {
  int64_t num_memory_tokens = 0;  // M; 0 makes Prepend and Strip plain copies
  int64_t dim = 0;                // C
};

class MemoryTokens {
 public:
  // InvalidArgument unless num_memory_tokens >= 0 and dim > 0.
  static absl::StatusOr<MemoryTokens> Create(const MemoryTokensConfig& config);

  const MemoryTokensConfig& config() const { return config_; }

  std::vector<ParamShape> ParamShapes() const {
    return {{"memory_tokens", {config_.num_memory_tokens, config_.dim}}};
  }
  // memory_tokens ~ N(0, 1) from `seed`.
  absl::Status InitParams(const Context& ctx, TensorView<float> memory_tokens,
                          uint64_t seed) const;

  // memory_tokens: [M, C]; x: [B, T, C]; y: [B, M + T, C], not overlapping x.
  absl::Status Prepend(const Context& ctx,
                       TensorView<const float> memory_tokens,
                       TensorView<const float> x, TensorView<float> y) const;
  // d_y: [B, M + T, C]; d_x: [B, T, C] (=); d_memory_tokens: [M, C] (+=, summed
  // over b).
  absl::Status PrependBackward(const Context& ctx, TensorView<const float> d_y,
                               TensorView<float> d_x,
                               TensorView<float> d_memory_tokens) const;

  // x: [B, M + T, C]; y: [B, T, C], not overlapping x.
  absl::Status Strip(const Context& ctx, TensorView<const float> x,
                     TensorView<float> y) const;
  // d_y: [B, T, C]; d_x: [B, M + T, C] (=), zero on the memory positions.
  absl::Status StripBackward(const Context& ctx, TensorView<const float> d_y,
                             TensorView<float> d_x) const;

  // The mask after Prepend: lengths + M (an empty mask stays empty).
  LengthMask PadLengths(const LengthMask& lengths) const;

 private:
  explicit MemoryTokens(const MemoryTokensConfig& config) : config_(config) {}

  MemoryTokensConfig config_;
};

}  // namespace ftx

#endif  // FTX_LAYERS_MEMORY_TOKENS_H_
