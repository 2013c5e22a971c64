#include "layers/sinusoidal_positions.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"

namespace ftx {

SinusoidalPositions::SinusoidalPositions(
    const SinusoidalPositionsConfig& config)
    : config_(config) {
  // 1. / (base ** (arange(0, dim, 2).float() / dim)), each step in float32.
  for (int64_t i = 0; 2 * i < config_.dim; ++i) {
    const float exponent =
        static_cast<float>(2 * i) / static_cast<float>(config_.dim);
    const float power = static_cast<float>(std::pow(config_.base, exponent));
    frequencies_.push_back(1.0f / power);
  }
}

absl::Status SinusoidalPositions::CheckArguments(const char* op,
                                                 const Context& ctx,
                                                 int64_t offset,
                                                 int64_t length) const {
  if (config_.dim < 2 || config_.dim % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": dim must be even and >= 2, got ", config_.dim));
  }
  if (!(config_.base > 0.0) || config_.max_seq_len < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": base must be > 0 and max_seq_len >= 0, got ",
                     config_.base, " and ", config_.max_seq_len));
  }
  if (ctx.device().type != DeviceType::kCpu) {
    return absl::UnimplementedError(
        absl::StrCat(op, ": only the CPU path exists"));
  }
  if (offset < 0 ||
      (config_.max_seq_len > 0 && offset + length > config_.max_seq_len)) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": positions [", offset, ", ", offset + length,
                     ") do not fit max_seq_len = ", config_.max_seq_len));
  }
  return absl::OkStatus();
}

void SinusoidalPositions::AddPositions(const Context& ctx, int64_t offset,
                                       TensorView<float> x) const {
  const int64_t half = config_.dim / 2;
  ctx.pool().ParallelFor(x.dim(1), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float position = static_cast<float>(offset + t);
      for (int64_t i = 0; i < half; ++i) {
        const float angle = position * frequencies_[i];  // float32 product
        const float sine = static_cast<float>(std::sin(double{angle}));
        const float cosine = static_cast<float>(std::cos(double{angle}));
        for (int64_t b = 0; b < x.dim(0); ++b) {
          float* row = &x.at(b, t);
          row[i] += sine;
          row[half + i] += cosine;
        }
      }
    }
  });
}

absl::Status SinusoidalPositions::Table(const Context& ctx, int64_t offset,
                                        TensorView<float> table) const {
  if (table.rank() != 2 || table.dim(1) != config_.dim ||
      (table.data() == nullptr && table.NumElements() > 0) ||
      table.device().type != DeviceType::kCpu ||
      (table.stride(1) != 1 && table.dim(1) > 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "SinusoidalPositions: table must be a CPU [T, C = ", config_.dim,
        "] view with unit stride in C, got ", table.shape().ToString()));
  }
  FTX_RETURN_IF_ERROR(
      CheckArguments("SinusoidalPositions", ctx, offset, table.dim(0)));
  for (int64_t t = 0; t < table.dim(0); ++t) {
    std::fill(&table.at(t, 0), &table.at(t, 0) + config_.dim, 0.0f);
  }
  AddPositions(
      ctx, offset,
      TensorView<float>(table.data(), {1, table.dim(0), table.dim(1)},
                        {table.dim(0) * table.stride(0), table.stride(0), 1}));
  return absl::OkStatus();
}

absl::Status SinusoidalPositions::Forward(const Context& ctx, int64_t offset,
                                          TensorView<float> x) const {
  if (x.rank() != 3 || x.dim(2) != config_.dim ||
      (x.data() == nullptr && x.NumElements() > 0) ||
      x.device().type != DeviceType::kCpu ||
      (x.stride(2) != 1 && x.dim(2) > 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "SinusoidalPositions: x must be a CPU [B, T, C = ", config_.dim,
        "] view with unit stride in C, got ", x.shape().ToString()));
  }
  FTX_RETURN_IF_ERROR(
      CheckArguments("SinusoidalPositions", ctx, offset, x.dim(1)));
  AddPositions(ctx, offset, x);
  return absl::OkStatus();
}

}  // namespace ftx
