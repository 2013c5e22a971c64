#include "layers/memory_tokens.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/base/rng.h"
#include "kernels/base/status_macros.h"
#include "kernels/base/validate.h"

namespace ftx {
namespace {

constexpr char kOp[] = "MemoryTokens";

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
absl::Status CheckNoOverlap(const char* name_a, const TensorView<A>& a,
                            const char* name_b, const TensorView<B>& b) {
  if (a.empty() || b.empty()) return absl::OkStatus();
  const auto [a_first, a_last] = Extent(a);
  const auto [b_first, b_last] = Extent(b);
  if (a_first <= b_last && b_first <= a_last) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": ", name_b, " overlaps ", name_a));
  }
  return absl::OkStatus();
}

// `view` must be a usable [B, T, channels] view; returns (B, T).
template <typename T>
absl::StatusOr<std::pair<int64_t, int64_t>> SequenceDims(
    const Context& ctx, const char* name, const TensorView<T>& view,
    int64_t channels) {
  FTX_RETURN_IF_ERROR(CheckRowsView(kOp, name, view, ctx));
  if (view.rank() != 3 || view.dim(2) != channels) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": ", name, " must be [B, T, ", channels, "], got ",
                     view.shape().ToString()));
  }
  return std::make_pair(view.dim(0), view.dim(1));
}

// `view` must be a usable [batch, length, channels] view.
template <typename T>
absl::Status CheckSequence(const Context& ctx, const char* name,
                           const TensorView<T>& view, int64_t batch,
                           int64_t length, int64_t channels) {
  FTX_RETURN_IF_ERROR(CheckRowsView(kOp, name, view, ctx));
  if (view.rank() != 3 || view.dim(0) != batch || view.dim(1) != length ||
      view.dim(2) != channels) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": ", name, " must be [", batch, ", ", length, ", ",
                     channels, "], got ", view.shape().ToString()));
  }
  return absl::OkStatus();
}

template <typename T>
absl::Status CheckTokens(const Context& ctx, const char* name,
                         const TensorView<T>& view, int64_t count,
                         int64_t channels) {
  FTX_RETURN_IF_ERROR(CheckRowsView(kOp, name, view, ctx));
  if (view.rank() != 2 || view.dim(0) != count || view.dim(1) != channels) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": ", name, " must be [", count, ", ", channels,
                     "], got ", view.shape().ToString()));
  }
  return absl::OkStatus();
}

// out[b, t] = in[b, t + offset] for t in [0, out length) where the source row
// exists, zeros otherwise; parallel over (b, t).
void CopyShifted(const Context& ctx, TensorView<const float> in,
                 TensorView<float> out, int64_t offset) {
  const int64_t B = out.dim(0), T_out = out.dim(1), T_in = in.dim(1),
                C = out.dim(2);
  ctx.pool().ParallelFor(B * T_out, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / T_out, t = row % T_out, from = t + offset;
      float* target = &out.at(b, t);
      if (from >= 0 && from < T_in) {
        const float* source = &in.at(b, from);
        std::copy(source, source + C, target);
      } else {
        std::fill(target, target + C, 0.0f);
      }
    }
  });
}

}  // namespace

absl::StatusOr<MemoryTokens> MemoryTokens::Create(
    const MemoryTokensConfig& config) {
  if (config.num_memory_tokens < 0 || config.dim <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp,
        ": needs num_memory_tokens >= 0 and dim > 0, got num_memory_tokens = ",
        config.num_memory_tokens, ", dim = ", config.dim));
  }
  return MemoryTokens(config);
}

absl::Status MemoryTokens::InitParams(const Context& ctx,
                                      TensorView<float> memory_tokens,
                                      uint64_t seed) const {
  FTX_RETURN_IF_ERROR(CheckTokens(ctx, "memory_tokens", memory_tokens,
                                  config_.num_memory_tokens, config_.dim));
  if (memory_tokens.empty()) return absl::OkStatus();
  return FillNormal(ctx, memory_tokens, 0.0f, 1.0f, {.seed = seed});
}

absl::Status MemoryTokens::Prepend(const Context& ctx,
                                   TensorView<const float> memory_tokens,
                                   TensorView<const float> x,
                                   TensorView<float> y) const {
  const int64_t M = config_.num_memory_tokens, C = config_.dim;
  FTX_RETURN_IF_ERROR(CheckTokens(ctx, "memory_tokens", memory_tokens, M, C));
  FTX_ASSIGN_OR_RETURN(const auto dims, SequenceDims(ctx, "x", x, C));
  const int64_t B = dims.first, T = dims.second;
  FTX_RETURN_IF_ERROR(CheckSequence(ctx, "y", y, B, M + T, C));
  FTX_RETURN_IF_ERROR(CheckNoOverlap("x", x, "y", y));
  FTX_RETURN_IF_ERROR(CheckNoOverlap("memory_tokens", memory_tokens, "y", y));
  ctx.pool().ParallelFor(B * (M + T), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / (M + T), position = row % (M + T);
      const float* source =
          position < M ? &memory_tokens.at(position) : &x.at(b, position - M);
      std::copy(source, source + C, &y.at(b, position));
    }
  });
  return absl::OkStatus();
}

absl::Status MemoryTokens::PrependBackward(
    const Context& ctx, TensorView<const float> d_y, TensorView<float> d_x,
    TensorView<float> d_memory_tokens) const {
  const int64_t M = config_.num_memory_tokens, C = config_.dim;
  FTX_RETURN_IF_ERROR(
      CheckTokens(ctx, "d_memory_tokens", d_memory_tokens, M, C));
  FTX_ASSIGN_OR_RETURN(const auto dims, SequenceDims(ctx, "d_x", d_x, C));
  const int64_t B = dims.first, T = dims.second;
  FTX_RETURN_IF_ERROR(CheckSequence(ctx, "d_y", d_y, B, M + T, C));
  FTX_RETURN_IF_ERROR(CheckNoOverlap("d_y", d_y, "d_x", d_x));
  FTX_RETURN_IF_ERROR(
      CheckNoOverlap("d_y", d_y, "d_memory_tokens", d_memory_tokens));
  CopyShifted(ctx, d_y, d_x, M);
  // Summed over the batch in order, so the result does not depend on the
  // threads.
  ctx.pool().ParallelFor(M, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      float* d_token = &d_memory_tokens.at(m);
      for (int64_t c = 0; c < C; ++c) {
        double sum = 0.0;
        for (int64_t b = 0; b < B; ++b) sum += d_y.at(b, m, c);
        d_token[c] += static_cast<float>(sum);
      }
    }
  });
  return absl::OkStatus();
}

absl::Status MemoryTokens::Strip(const Context& ctx, TensorView<const float> x,
                                 TensorView<float> y) const {
  const int64_t M = config_.num_memory_tokens, C = config_.dim;
  FTX_ASSIGN_OR_RETURN(const auto dims, SequenceDims(ctx, "y", y, C));
  const int64_t B = dims.first, T = dims.second;
  FTX_RETURN_IF_ERROR(CheckSequence(ctx, "x", x, B, M + T, C));
  FTX_RETURN_IF_ERROR(CheckNoOverlap("x", x, "y", y));
  CopyShifted(ctx, x, y, M);
  return absl::OkStatus();
}

absl::Status MemoryTokens::StripBackward(const Context& ctx,
                                         TensorView<const float> d_y,
                                         TensorView<float> d_x) const {
  const int64_t M = config_.num_memory_tokens, C = config_.dim;
  FTX_ASSIGN_OR_RETURN(const auto dims, SequenceDims(ctx, "d_y", d_y, C));
  const int64_t B = dims.first, T = dims.second;
  FTX_RETURN_IF_ERROR(CheckSequence(ctx, "d_x", d_x, B, M + T, C));
  FTX_RETURN_IF_ERROR(CheckNoOverlap("d_y", d_y, "d_x", d_x));
  CopyShifted(ctx, d_y, d_x, -M);
  return absl::OkStatus();
}

LengthMask MemoryTokens::PadLengths(const LengthMask& lengths) const {
  LengthMask padded = lengths;
  for (int64_t& length : padded.lengths) length += config_.num_memory_tokens;
  return padded;
}

}  // namespace ftx
