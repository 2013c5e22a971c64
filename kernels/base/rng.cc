#include "kernels/base/rng.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/base/philox.h"

namespace ftx {
namespace {

constexpr float kTwoPi = 6.283185307179586f;

absl::Status CheckFillTarget(const TensorView<float>& out, const char* op) {
  if (out.data() == nullptr && out.NumElements() > 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": output data is null"));
  }
  if (out.device().type != DeviceType::kCpu) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": output is on ", DeviceTypeName(out.device().type),
                     "; this function fills CPU tensors (see rng_cuda.h)"));
  }
  if (!out.IsContiguous()) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": output ", out.shape().ToString(), " must be contiguous"));
  }
  return absl::OkStatus();
}

}  // namespace

float RandomNormal(uint64_t seed, uint64_t stream, uint64_t index) {
  const PhiloxBlock block = PhiloxBlockFor(seed, stream, index);
  const int pair = (index & 3) >> 1;
  const float u1 = BitsToUniformPositive(block.word[2 * pair]);
  const float u2 = BitsToUniform(block.word[2 * pair + 1]);
  const float radius = std::sqrt(-2.0f * std::log(u1));
  const float angle = kTwoPi * u2;
  return (index & 1) ? radius * std::sin(angle) : radius * std::cos(angle);
}

absl::Status FillUniform(const Context& ctx, TensorView<float> out, float low,
                         float high, const RandomOptions& options) {
  if (absl::Status status = CheckFillTarget(out, "FillUniform"); !status.ok()) {
    return status;
  }
  float* data = out.data();
  const float scale = high - low;
  ctx.pool().ParallelFor(
      out.NumElements(),
      [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          data[i] = low + scale * RandomUniform(options.seed, options.stream,
                                                options.offset + i);
        }
      },
      4096);
  return absl::OkStatus();
}

absl::Status FillNormal(const Context& ctx, TensorView<float> out, float mean,
                        float stddev, const RandomOptions& options) {
  if (absl::Status status = CheckFillTarget(out, "FillNormal"); !status.ok()) {
    return status;
  }
  float* data = out.data();
  ctx.pool().ParallelFor(
      out.NumElements(),
      [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          data[i] = mean + stddev * RandomNormal(options.seed, options.stream,
                                                 options.offset + i);
        }
      },
      4096);
  return absl::OkStatus();
}

}  // namespace ftx
