// Rotary position embedding (Su et al. 2021, "RoFormer", eq. 34): each pair of
// features (a, b) of a query or key at position p is rotated by the angle p *
// theta_i,
//   a' = a cos(p theta_i) - b sin(p theta_i),  b' = b cos(p theta_i) + a sin(p
//   theta_i), theta_i = base^(-2i / rotary_dim),  i < rotary_dim / 2,
// so q_p . k_s depends on p - s only. Two pairings, as the reference libraries
// use:
//   - kHalfSplit: (x_i, x_{i + rotary_dim/2}) — x-transformers 0.26 / 1.0
//     (rotate_half), partial rotary over the first rotary_dim features;
//   - kInterleaved: (x_{2i}, x_{2i+1}) — performer-pytorch (rotate_every_two).
// Features past rotary_dim pass through unchanged. A QKTransform, so it
// composes with every attention mechanism through AttentionLayer.
#ifndef FTX_ATTENTION_ROTARY_H_
#define FTX_ATTENTION_ROTARY_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "attention/qk_transform.h"

namespace ftx {

enum class RotaryLayout { kHalfSplit, kInterleaved };

struct RotaryOptions {
  int64_t rotary_dim = 0;  // even, > 0
  RotaryLayout layout = RotaryLayout::kHalfSplit;
  double base = 10000.0;
};

class RotaryEmbedding : public QKTransform {
 public:
  // InvalidArgument for an odd or non-positive rotary_dim.
  static absl::StatusOr<RotaryEmbedding> Create(const RotaryOptions& options);

  // x-transformers' rotary width: max(rotary_emb_dim or dim_head / 2, 32).
  static int64_t XTransformersRotaryDim(int64_t dim_head,
                                        int64_t rotary_emb_dim);

  const char* name() const override { return "rotary"; }
  const RotaryOptions& options() const { return options_; }

  // x: [N, T, H, E], contiguous, E >= rotary_dim; position of step t = offset +
  // t.
  absl::Status Forward(const Context& ctx, TensorView<float> x,
                       int64_t position_offset) const override;
  absl::Status Backward(const Context& ctx, TensorView<float> d_x,
                        int64_t position_offset) const override;

 private:
  explicit RotaryEmbedding(const RotaryOptions& options) : options_(options) {}
  absl::Status Rotate(const Context& ctx, TensorView<float> x,
                      int64_t position_offset, double direction) const;

  RotaryOptions options_;
};

}  // namespace ftx

#endif  // FTX_ATTENTION_ROTARY_H_
