#include "layers/shift_tokens.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "kernels/base/validate.h"

namespace ftx {
namespace {

constexpr char kOp[] = "ShiftTokens";

// [first, last] addresses a view touches.
template <typename T>
std::pair<const float*, const float*> Extent(const TensorView<T>& view) {
  int64_t last = 0;
  for (int axis = 0; axis < view.rank(); ++axis) {
    last += (view.dim(axis) - 1) * view.stride(axis);
  }
  return {view.data(), view.data() + last};
}

template <typename A, typename B>
bool Overlap(const TensorView<A>& a, const TensorView<B>& b) {
  if (a.empty() || b.empty()) return false;
  const auto [a_first, a_last] = Extent(a);
  const auto [b_first, b_last] = Extent(b);
  return a_first <= b_last && b_first <= a_last;
}

absl::Status Validate(const Context& ctx, int64_t segments, const char* in_name,
                      TensorView<const float> in, const char* out_name,
                      TensorView<float> out, const LengthMask& lengths) {
  FTX_RETURN_IF_ERROR(
      CheckSameShapes(kOp, ctx, in_name, in, Named(out_name, out)));
  if (in.rank() != 3) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": ", in_name, " must be [B, T, C], got ", in.shape().ToString()));
  }
  if (in.dim(2) < segments) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": ", in_name, " has C = ", in.dim(2),
        " channels, fewer than the ", segments,
        " shifts (each chunk needs C / len(shifts) >= 1 channel)"));
  }
  if (Overlap(in, out)) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": ", out_name, " overlaps ", in_name, " (no in-place shifting)"));
  }
  return lengths.Validate(kOp, "lengths", in.dim(0), in.dim(1));
}

// out[b, t, chunk i] = in[b, source(b, t, i), chunk i], or 0 when source < 0;
// the channels past the chunks are copied from in[b, t].
template <typename Source>
void Gather(const Context& ctx, int64_t segments, TensorView<const float> in,
            TensorView<float> out, const Source& source) {
  const int64_t B = in.dim(0), T = in.dim(1), C = in.dim(2);
  const int64_t width = C / segments;
  ctx.pool().ParallelFor(B * T, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / T, t = row % T;
      float* target = &out.at(b, t);
      for (int64_t i = 0; i < segments; ++i) {
        const int64_t from = source(b, t, i);
        float* chunk = target + i * width;
        if (from < 0) {
          std::fill(chunk, chunk + width, 0.0f);
        } else {
          const float* src = &in.at(b, from) + i * width;
          std::copy(src, src + width, chunk);
        }
      }
      const float* rest = &in.at(b, t);
      std::copy(rest + segments * width, rest + C, target + segments * width);
    }
  });
}

}  // namespace

std::vector<int64_t> XTransformersShifts(int64_t shift_tokens, bool causal) {
  std::vector<int64_t> shifts;
  for (int64_t a = causal ? 0 : -shift_tokens; a <= shift_tokens; ++a)
    shifts.push_back(a);
  return shifts;
}

std::vector<int64_t> PerformerShifts(bool causal) {
  return causal ? std::vector<int64_t>{0, 1} : std::vector<int64_t>{-1, 0, 1};
}

std::vector<int64_t> LinearAttentionTransformerShifts(bool causal) {
  return causal ? std::vector<int64_t>{1, 0} : std::vector<int64_t>{1, 0, -1};
}

absl::StatusOr<ShiftTokens> ShiftTokens::Create(
    const ShiftTokensConfig& config) {
  if (config.shifts.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": needs at least one shift"));
  }
  return ShiftTokens(config);
}

absl::Status ShiftTokens::Forward(const Context& ctx, TensorView<const float> x,
                                  const LengthMask& lengths,
                                  TensorView<float> y) const {
  const int64_t segments = config_.shifts.size();
  FTX_RETURN_IF_ERROR(Validate(ctx, segments, "x", x, "y", y, lengths));
  const int64_t T = x.dim(1);
  Gather(ctx, segments, x, y, [&](int64_t b, int64_t t, int64_t i) -> int64_t {
    const int64_t shift = config_.shifts[i];
    if (shift == 0) return t;
    const int64_t from = t - shift;
    return from >= 0 && from < lengths.Length(b, T) ? from : -1;
  });
  return absl::OkStatus();
}

absl::Status ShiftTokens::Backward(const Context& ctx,
                                   const LengthMask& lengths,
                                   TensorView<const float> d_y,
                                   TensorView<float> d_x) const {
  const int64_t segments = config_.shifts.size();
  FTX_RETURN_IF_ERROR(Validate(ctx, segments, "d_y", d_y, "d_x", d_x, lengths));
  const int64_t T = d_y.dim(1);
  // x[b, s] reached y[b, s + a] unless s was masked or s + a falls outside [0,
  // T).
  Gather(ctx, segments, d_y, d_x,
         [&](int64_t b, int64_t s, int64_t i) -> int64_t {
           const int64_t shift = config_.shifts[i];
           if (shift == 0) return s;
           const int64_t to = s + shift;
           return s < lengths.Length(b, T) && to >= 0 && to < T ? to : -1;
         });
  return absl::OkStatus();
}

}  // namespace ftx
