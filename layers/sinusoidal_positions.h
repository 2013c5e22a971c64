// Fixed sinusoidal positions (Vaswani et al. 2017) in the concatenated
// [sin | cos] layout, added to the token embeddings:
//   pos[t, i]         = sin(p θ_i),
//   pos[t, C / 2 + i] = cos(p θ_i),    θ_i = base^(-2i / C), i < C / 2,
//   y[b, t] = x[b, t] + pos[t],        p = offset + t.
// Matches performer-pytorch's and linear-attention-transformer's
// FixedPositionalEmbedding (base 1e4, a table of max_seq_len rows),
// x-transformers' FixedPositionalEmbedding (PIA; base 1e4, with an offset) and
// linformer-pytorch's PositionalEmbedding (base 1e5). Computed in float32 as
// PyTorch does: θ_i = 1 / float(base^(float(2i) / C)), the angle float(p) θ_i
// rounded to float, then its sine and cosine (correctly rounded here).
//
// C must be even: the references build a table C + 1 wide for odd C, which
// then fails to add to the tokens. max_seq_len = 0 means no limit
// (x-transformers, linformer-pytorch); performer-pytorch's table stops at
// max_seq_len, so positions past it are InvalidArgument.
//
// No parameters; the input gradient is d_y itself (y = x + pos), so there is no
// Backward to run.
#ifndef FTX_LAYERS_SINUSOIDAL_POSITIONS_H_
#define FTX_LAYERS_SINUSOIDAL_POSITIONS_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor_view.h"

namespace ftx {

struct SinusoidalPositionsConfig {
  int64_t dim = 0;          // C, even
  double base = 10000.0;    // 1e5 for linformer-pytorch
  int64_t max_seq_len = 0;  // 0: no limit
};

class SinusoidalPositions {
 public:
  explicit SinusoidalPositions(const SinusoidalPositionsConfig& config);

  const SinusoidalPositionsConfig& config() const { return config_; }

  // θ_i for i < C / 2, as float32.
  float Frequency(int64_t i) const { return frequencies_[i]; }

  // table[t] = pos[offset + t]. table: [T, C].
  absl::Status Table(const Context& ctx, int64_t offset,
                     TensorView<float> table) const;

  // x[b, t] += pos[offset + t], in place. x: [B, T, C].
  absl::Status Forward(const Context& ctx, int64_t offset,
                       TensorView<float> x) const;

 private:
  absl::Status CheckArguments(const char* op, const Context& ctx,
                              int64_t offset, int64_t length) const;
  // Adds pos[offset + t] to x[b, t] for every b (x: [B, T, C], validated).
  void AddPositions(const Context& ctx, int64_t offset,
                    TensorView<float> x) const;

  SinusoidalPositionsConfig config_;
  std::vector<float> frequencies_;  // θ_i, [C / 2]
};

}  // namespace ftx

#endif  // FTX_LAYERS_SINUSOIDAL_POSITIONS_H_
