// Token shifting (RWKV's time-mix idea) as x-transformers ShiftTokens,
// performer-pytorch 1.1.4 PreShiftTokens and linear-attention-transformer
// 0.19.1 PreShiftTokens, applied to x [B, T, C] before the branch it wraps:
//   the channels split into S = len(shifts) chunks of W = C // S (chunk i is
//   channels [i W, (i + 1) W)); the remainder [S W, C) passes unchanged, as
//   torch's split does; chunk i with shift a = shifts[i] != 0 becomes
//     y[b, t] = x[b, t - a]  if 0 <= t - a < T and t - a < lengths[b], else 0
//   (F.pad(t, (0, 0, a, -a)), after masked positions are zeroed); a = 0 chunks
//   pass unchanged, masked positions included (the reference zeroes them only
//   when shifting).
// Shift sets: x-transformers shift_tokens = s gives range(-s, s + 1) in
// encoders and range(0, s + 1) in decoders; performer (0, 1) causal, (-1, 0, 1)
// otherwise; LAT (1, 0) causal, (1, 0, -1) otherwise. |a| >= T gives zeros
// (x-transformers 1.0 clamps positive shifts to T, which is the same; torch's
// F.pad would reject a <= -T). Masks: lengths as key lengths (x-transformers
// `mask`, padding at the end). LAT's quirk (PreShiftTokens reads `mask` but LAT
// passes `input_mask`, so nothing is zeroed) is an empty LengthMask;
// x-transformers feed-forward blocks get none either. No parameters. Gradient
// convention: d_x written (=).
#ifndef FTX_LAYERS_SHIFT_TOKENS_H_
#define FTX_LAYERS_SHIFT_TOKENS_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "attention/mask.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor_view.h"

namespace ftx {

struct ShiftTokensConfig {
  std::vector<int64_t>
      shifts;  // one per chunk, positive = towards later tokens
};

// x-transformers: range(-s, s + 1), or range(0, s + 1) when causal. s >= 0.
std::vector<int64_t> XTransformersShifts(int64_t shift_tokens, bool causal);
// performer-pytorch: (0, 1) when causal, (-1, 0, 1) otherwise.
std::vector<int64_t> PerformerShifts(bool causal);
// linear-attention-transformer: (1, 0) when causal, (1, 0, -1) otherwise.
std::vector<int64_t> LinearAttentionTransformerShifts(bool causal);

class ShiftTokens {
 public:
  // InvalidArgument for no shifts.
  static absl::StatusOr<ShiftTokens> Create(const ShiftTokensConfig& config);

  const ShiftTokensConfig& config() const { return config_; }

  // x, y: [B, T, C] with C >= len(shifts); y must not overlap x. lengths: [B]
  // or empty.
  absl::Status Forward(const Context& ctx, TensorView<const float> x,
                       const LengthMask& lengths, TensorView<float> y) const;

  // d_y, d_x: [B, T, C]; d_x written (=) and must not overlap d_y.
  absl::Status Backward(const Context& ctx, const LengthMask& lengths,
                        TensorView<const float> d_y,
                        TensorView<float> d_x) const;

 private:
  explicit ShiftTokens(const ShiftTokensConfig& config) : config_(config) {}

  ShiftTokensConfig config_;
};

}  // namespace ftx

#endif  // FTX_LAYERS_SHIFT_TOKENS_H_
