// linformer-pytorch 0.19.3's Padder (padder.py): a Linformer accepts exactly
// input_size = n positions, so a shorter sequence is zero-padded to n before
// the net and its output cut back to the original length:
//   padded[b, t] = x[b, t] for t < T, 0 for T <= t < n     (Pad)
//   out[b, t]    = net_out[b, t] for t < T                  (Strip)
// Tokens are padded with token 0 (the reference fills with zeros of the token
// dtype). As in the reference no mask is passed: the padded positions take
// part in the Linformer's E / F projections, so the output for t < T is that
// of the zero-padded sequence, not of the short one (pass input_lengths to
// the model to zero the padded keys and values instead).
//
// Both maps are linear and their backwards are each other:
//   d_x = Strip(d_padded)     (Pad's backward, written =)
//   d_net_out = Pad(d_out)    (Strip's backward, written =)
//
// Example:
//   FTX_ASSIGN_OR_RETURN(Padder padder, Padder::Create(config.input_size));
//   FTX_RETURN_IF_ERROR(padder.Pad(ctx, x, padded));         // [B, T, C] ->
//   [B, n, C] FTX_RETURN_IF_ERROR(model.Forward(ctx, store, "", padded, {},
//   net_out, true)); FTX_RETURN_IF_ERROR(padder.Strip(ctx, net_out, y)); // [B,
//   n, C] -> [B, T, C]
#ifndef FTX_LAYERS_PADDER_H_
#define FTX_LAYERS_PADDER_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor_view.h"

namespace ftx {

class Padder {
 public:
  // InvalidArgument unless input_size >= 1.
  static absl::StatusOr<Padder> Create(int64_t input_size);

  int64_t input_size() const { return input_size_; }

  // x: [B, T, C] with 1 <= T <= n; padded: [B, n, C]. Contiguous CPU views.
  absl::Status Pad(const Context& ctx, TensorView<const float> x,
                   TensorView<float> padded) const;
  // tokens: [B, T]; padded: [B, n], filled with 0 past T.
  absl::Status PadTokens(const Context& ctx, TensorView<const int32_t> tokens,
                         TensorView<int32_t> padded) const;
  // padded: [B, n, C]; out: [B, T, C] with T <= n, the first T positions.
  absl::Status Strip(const Context& ctx, TensorView<const float> padded,
                     TensorView<float> out) const;

  // d_padded [B, n, C] -> d_x [B, T, C] (=).
  absl::Status PadBackward(const Context& ctx, TensorView<const float> d_padded,
                           TensorView<float> d_x) const {
    return Strip(ctx, d_padded, d_x);
  }
  // d_out [B, T, C] -> d_padded [B, n, C] (=; zero past T).
  absl::Status StripBackward(const Context& ctx, TensorView<const float> d_out,
                             TensorView<float> d_padded) const {
    return Pad(ctx, d_out, d_padded);
  }

 private:
  explicit Padder(int64_t input_size) : input_size_(input_size) {}
  // Checks short [B, T, ...] against long [B, n, ...] (rank 2 or 3).
  template <typename T>
  absl::Status Check(const char* op, const Context& ctx,
                     const TensorView<T>& short_view, const char* short_name,
                     const TensorView<T>& long_view,
                     const char* long_name) const;

  int64_t input_size_;
};

}  // namespace ftx

#endif  // FTX_LAYERS_PADDER_H_
