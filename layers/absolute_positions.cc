#include "layers/absolute_positions.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/base/rng.h"
#include "kernels/base/status_macros.h"

namespace ftx {
namespace {

// F.normalize's eps.
constexpr double kL2NormEps = 1e-12;

// A [T, C] view as [1, T, C], so both layouts take one code path.
template <typename T>
TensorView<T> AsBatched(const TensorView<T>& view) {
  if (view.rank() != 2) return view;
  return TensorView<T>(view.data(), {1, view.dim(0), view.dim(1)},
                       {view.dim(0) * view.stride(0), view.stride(0), 1},
                       view.device());
}

// A [B, T, C] activation view: rank 3, C wide, CPU, unit stride in C.
template <typename T>
absl::Status CheckActivation(const char* op, const char* name,
                             const TensorView<T>& view, int64_t dim) {
  if (view.rank() != 3 || view.dim(2) != dim) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", name, " must be [B, T, C = ", dim, "], got ",
                     view.shape().ToString()));
  }
  if (view.data() == nullptr && view.NumElements() > 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", name, " has null data"));
  }
  if (view.device().type != DeviceType::kCpu) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", name, " must be on the CPU"));
  }
  if (view.stride(2) != 1 && dim > 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": ", name, " must have unit stride in its last axis"));
  }
  return absl::OkStatus();
}

// max(|e|, eps), F.normalize's divisor for one embedding row.
double ClampedNorm(const float* row, int64_t dim) {
  double sum = 0;
  for (int64_t c = 0; c < dim; ++c) sum += double(row[c]) * row[c];
  return std::max(std::sqrt(sum), kL2NormEps);
}

}  // namespace

float AbsolutePositions::Scale() const {
  if (config_.l2norm_embed) return 1.0f;
  if (config_.scale.has_value()) return *config_.scale;
  return static_cast<float>(std::pow(static_cast<double>(config_.dim), -0.5));
}

absl::Status AbsolutePositions::CheckArguments(
    const char* op, const Context& ctx, const char* weight_name,
    TensorView<const float> weight, int64_t offset, int64_t length) const {
  if (config_.max_seq_len < 1 || config_.dim < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": max_seq_len and dim must be >= 1, got ",
                     config_.max_seq_len, " and ", config_.dim));
  }
  if (ctx.device().type != DeviceType::kCpu) {
    return absl::UnimplementedError(
        absl::StrCat(op, ": only the CPU path exists"));
  }
  const Shape expected{config_.max_seq_len, config_.dim};
  if (weight.shape() != expected || !weight.IsContiguous() ||
      weight.data() == nullptr || weight.device().type != DeviceType::kCpu) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": ", weight_name, " must be a contiguous CPU ",
        expected.ToString(), " tensor, got ", weight.shape().ToString()));
  }
  if (offset < 0 || offset + length > config_.max_seq_len) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": positions [", offset, ", ", offset + length,
                     ") do not fit max_seq_len = ", config_.max_seq_len));
  }
  return absl::OkStatus();
}

absl::Status AbsolutePositions::InitParams(const Context& ctx,
                                           TensorView<float> weight,
                                           uint64_t seed) const {
  return FillNormal(ctx, weight, 0.0f, config_.l2norm_embed ? 1e-5f : 1.0f,
                    {.seed = seed});
}

absl::Status AbsolutePositions::Table(const Context& ctx,
                                      TensorView<const float> weight,
                                      int64_t offset,
                                      TensorView<float> table) const {
  if (table.rank() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("AbsolutePositions: table must be [T, C], got ",
                     table.shape().ToString()));
  }
  const TensorView<float> batched = AsBatched(table);
  FTX_RETURN_IF_ERROR(
      CheckActivation("AbsolutePositions", "table", batched, config_.dim));
  FTX_RETURN_IF_ERROR(CheckArguments("AbsolutePositions", ctx, "emb.weight",
                                     weight, offset, table.dim(0)));
  for (int64_t t = 0; t < table.dim(0); ++t) {
    std::fill(&table.at(t, 0), &table.at(t, 0) + config_.dim, 0.0f);
  }
  return Forward(ctx, weight, offset, batched);
}

absl::Status AbsolutePositions::Forward(const Context& ctx,
                                        TensorView<const float> weight,
                                        int64_t offset,
                                        TensorView<float> x) const {
  FTX_RETURN_IF_ERROR(
      CheckActivation("AbsolutePositions", "x", x, config_.dim));
  FTX_RETURN_IF_ERROR(CheckArguments("AbsolutePositions", ctx, "emb.weight",
                                     weight, offset, x.dim(1)));
  const int64_t dim = config_.dim;
  const float scale = Scale();
  const bool l2norm = config_.l2norm_embed;
  ctx.pool().ParallelFor(x.dim(1), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* e = weight.data() + (offset + t) * dim;
      // As PyTorch: e * scale, or e / max(|e|, eps) with l2norm_embed.
      const float divisor =
          l2norm ? static_cast<float>(ClampedNorm(e, dim)) : 1.0f;
      for (int64_t b = 0; b < x.dim(0); ++b) {
        float* row = &x.at(b, t);
        if (l2norm) {
          for (int64_t c = 0; c < dim; ++c) row[c] += e[c] / divisor;
        } else {
          for (int64_t c = 0; c < dim; ++c) row[c] += e[c] * scale;
        }
      }
    }
  });
  return absl::OkStatus();
}

absl::Status AbsolutePositions::Backward(const Context& ctx,
                                         TensorView<const float> weight,
                                         int64_t offset,
                                         TensorView<const float> d_y,
                                         TensorView<float> d_weight) const {
  const TensorView<const float> d_out = AsBatched(d_y);
  FTX_RETURN_IF_ERROR(
      CheckActivation("AbsolutePositionsBackward", "d_y", d_out, config_.dim));
  FTX_RETURN_IF_ERROR(CheckArguments("AbsolutePositionsBackward", ctx,
                                     "emb.weight", weight, offset,
                                     d_out.dim(1)));
  FTX_RETURN_IF_ERROR(CheckArguments("AbsolutePositionsBackward", ctx,
                                     "d_weight", d_weight, offset,
                                     d_out.dim(1)));
  const int64_t dim = config_.dim;
  const float scale = Scale();
  const bool l2norm = config_.l2norm_embed;
  ctx.pool().ParallelFor(d_out.dim(1), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t p = offset + t;
      const float* e = weight.data() + p * dim;
      float* d_e = d_weight.data() + p * dim;
      if (!l2norm) {
        for (int64_t b = 0; b < d_out.dim(0); ++b) {
          const float* g = &d_out.at(b, t);
          for (int64_t c = 0; c < dim; ++c) d_e[c] += scale * g[c];
        }
        continue;
      }
      // y = e / max(|e|, eps): d_e = (g - u (u . g)) / |e| with u = e / |e|,
      // or g / eps inside the clamp; g = sum_b d_y[b, t].
      const double norm = ClampedNorm(e, dim);
      const bool clamped = norm <= kL2NormEps;
      const double inverse = 1.0 / norm;
      double e_dot_g = 0;
      for (int64_t c = 0; c < dim; ++c) {
        double g = 0;
        for (int64_t b = 0; b < d_out.dim(0); ++b) g += d_out.at(b, t, c);
        e_dot_g += e[c] * g;
      }
      const double projection = clamped ? 0.0 : e_dot_g * inverse * inverse;
      for (int64_t c = 0; c < dim; ++c) {
        double g = 0;
        for (int64_t b = 0; b < d_out.dim(0); ++b) g += d_out.at(b, t, c);
        d_e[c] += static_cast<float>((g - e[c] * projection) * inverse);
      }
    }
  });
  return absl::OkStatus();
}

}  // namespace ftx
