// Learned absolute positional embedding (Gehring et al. 2017; GPT), added to
// the token embeddings:
//   pos[t] = scale * E[offset + t]          scale = dim^-0.5: x-transformers'
//                                            AbsolutePositionalEmbedding;
//                                            scale = 1: performer-pytorch and
//                                            linear-attention-transformer
//   pos[t] = E[p] / max(|E[p]|_2, 1e-12)    x-transformers l2norm_embed
//                                            (F.normalize; the scale is 1 then)
//   y[b, t] = x[b, t] + pos[t],             p = offset + t < max_seq_len.
// E is "emb.weight" [max_seq_len, C] (an nn.Embedding), initialised N(0, 1) as
// nn.Embedding does (x-transformers 0.26.6, performer-pytorch 1.1.4), or
// N(0, 1e-5^2) with l2norm_embed (x-transformers TransformerWrapper.init_).
// The references always start at position 0; `offset` lets cached generation
// continue a sequence. Positions past max_seq_len are InvalidArgument, where
// x-transformers asserts.
//
// Gradient convention: the input gradient is d_y itself (y = x + pos), so
// Backward only accumulates d_E (+=).
#ifndef FTX_LAYERS_ABSOLUTE_POSITIONS_H_
#define FTX_LAYERS_ABSOLUTE_POSITIONS_H_

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "attention/attention.h"
#include "kernels/base/context.h"

namespace ftx {

struct AbsolutePositionsConfig {
  int64_t max_seq_len = 0;
  int64_t dim = 0;  // C
  // Multiplies the embedding; default dim^-0.5 (x-transformers). Set 1 for
  // performer-pytorch and linear-attention-transformer. Ignored with
  // l2norm_embed.
  std::optional<float> scale;
  bool l2norm_embed = false;
};

class AbsolutePositions {
 public:
  explicit AbsolutePositions(const AbsolutePositionsConfig& config)
      : config_(config) {}

  const AbsolutePositionsConfig& config() const { return config_; }
  std::vector<ParamShape> ParamShapes() const {
    return {{"emb.weight", {config_.max_seq_len, config_.dim}}};
  }
  // The factor applied to E (1 with l2norm_embed).
  float Scale() const;

  // E ~ N(0, 1), or N(0, 1e-5^2) with l2norm_embed, from the Philox stream of
  // `seed`. weight: [max_seq_len, C].
  absl::Status InitParams(const Context& ctx, TensorView<float> weight,
                          uint64_t seed) const;

  // table[t] = pos[offset + t]. weight: [max_seq_len, C]; table: [T, C].
  absl::Status Table(const Context& ctx, TensorView<const float> weight,
                     int64_t offset, TensorView<float> table) const;

  // x[b, t] += pos[offset + t], in place. x: [B, T, C].
  absl::Status Forward(const Context& ctx, TensorView<const float> weight,
                       int64_t offset, TensorView<float> x) const;

  // d_weight[offset + t] += (d pos[t] / d E)^T sum_b d_y[b, t] (+=).
  // d_y: [B, T, C] (the gradient of Forward's output) or [T, C] (of Table's).
  absl::Status Backward(const Context& ctx, TensorView<const float> weight,
                        int64_t offset, TensorView<const float> d_y,
                        TensorView<float> d_weight) const;

 private:
  // Checks the config, the weight shape and that [offset, offset + T) fits.
  absl::Status CheckArguments(const char* op, const Context& ctx,
                              const char* weight_name,
                              TensorView<const float> weight, int64_t offset,
                              int64_t length) const;

  AbsolutePositionsConfig config_;
};

}  // namespace ftx

#endif  // FTX_LAYERS_ABSOLUTE_POSITIONS_H_
