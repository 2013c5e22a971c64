#include "attention/rotary.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"

namespace ftx {

absl::StatusOr<RotaryEmbedding> RotaryEmbedding::Create(
    const RotaryOptions& options) {
  if (options.rotary_dim <= 0 || options.rotary_dim % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "rotary_dim must be even and positive, got ", options.rotary_dim));
  }
  if (!(options.base > 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("rotary base must be > 1, got ", options.base));
  }
  return RotaryEmbedding(options);
}

int64_t RotaryEmbedding::XTransformersRotaryDim(int64_t dim_head,
                                                int64_t rotary_emb_dim) {
  return std::max<int64_t>(rotary_emb_dim > 0 ? rotary_emb_dim : dim_head / 2,
                           32);
}

absl::Status RotaryEmbedding::Rotate(const Context& ctx, TensorView<float> x,
                                     int64_t position_offset,
                                     double direction) const {
  if (x.rank() != 4 || !x.IsContiguous() ||
      x.device().type != DeviceType::kCpu ||
      (x.data() == nullptr && x.NumElements() > 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "RotaryEmbedding: expected a contiguous CPU [N, T, H, E] tensor, got ",
        x.shape().ToString()));
  }
  const int64_t rotary_dim = options_.rotary_dim;
  const int64_t N = x.dim(0), T = x.dim(1), H = x.dim(2), E = x.dim(3);
  if (E < rotary_dim) {
    return absl::InvalidArgumentError(
        absl::StrCat("RotaryEmbedding: head dimension ", E,
                     " is smaller than rotary_dim ", rotary_dim));
  }
  const int64_t pairs = rotary_dim / 2;
  std::vector<double> frequencies(pairs);
  for (int64_t i = 0; i < pairs; ++i) {
    frequencies[i] = std::pow(options_.base, -2.0 * i / rotary_dim);
  }
  const bool interleaved = options_.layout == RotaryLayout::kInterleaved;
  ctx.pool().ParallelFor(T, [&](int64_t begin, int64_t end) {
    std::vector<float> cosines(pairs), sines(pairs);
    for (int64_t t = begin; t < end; ++t) {
      const double position = static_cast<double>(position_offset + t);
      for (int64_t i = 0; i < pairs; ++i) {
        const double angle = direction * position * frequencies[i];
        cosines[i] = static_cast<float>(std::cos(angle));
        sines[i] = static_cast<float>(std::sin(angle));
      }
      for (int64_t n = 0; n < N; ++n) {
        for (int64_t h = 0; h < H; ++h) {
          float* row = x.data() + ((n * T + t) * H + h) * E;
          for (int64_t i = 0; i < pairs; ++i) {
            float& a = row[interleaved ? 2 * i : i];
            float& b = row[interleaved ? 2 * i + 1 : i + pairs];
            const float a0 = a, b0 = b;
            a = a0 * cosines[i] - b0 * sines[i];
            b = b0 * cosines[i] + a0 * sines[i];
          }
        }
      }
    }
  });
  return absl::OkStatus();
}

absl::Status RotaryEmbedding::Forward(const Context& ctx, TensorView<float> x,
                                      int64_t position_offset) const {
  return Rotate(ctx, x, position_offset, 1.0);
}

absl::Status RotaryEmbedding::Backward(const Context& ctx,
                                       TensorView<float> d_x,
                                       int64_t position_offset) const {
  // A rotation's transpose is the rotation by the opposite angle.
  return Rotate(ctx, d_x, position_offset, -1.0);
}

}  // namespace ftx
