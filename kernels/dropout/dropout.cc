#include "kernels/dropout/dropout.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/base/philox.h"
#include "kernels/base/status_macros.h"
#include "kernels/base/validate.h"

namespace ftx {

bool DropoutKeeps(const DropoutOptions& options, uint64_t index) {
  return RandomUniform(options.seed, options.stream, options.offset + index) >=
         options.p;
}

absl::Status Dropout(const Context& ctx, const DropoutOptions& options,
                     TensorView<const float> x, TensorView<float> y) {
  constexpr char kOp[] = "Dropout";
  if (!(options.p >= 0.0f && options.p < 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": p must be in [0, 1), got ", options.p));
  }
  FTX_RETURN_IF_ERROR(CheckSameShapes(kOp, ctx, "x", x, Named("y", y)));
  if (!x.IsContiguous() || !y.IsContiguous()) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": x and y must be contiguous"));
  }
  if (ctx.device().type != DeviceType::kCpu) {
    return absl::UnimplementedError(
        absl::StrCat(kOp, ": only the CPU path exists so far"));
  }
  DropoutInto(ctx, options, x.NumElements(), x.data(), y.data());
  return absl::OkStatus();
}

void DropoutInto(const Context& ctx, const DropoutOptions& options,
                 int64_t count, const float* in, float* out) {
  const float keep_scale = 1.0f / (1.0f - options.p);
  ctx.pool().ParallelFor(
      count,
      [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          out[i] = DropoutKeeps(options, i) ? in[i] * keep_scale : 0.0f;
        }
      },
      4096);
}

}  // namespace ftx
