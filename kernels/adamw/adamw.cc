#include "kernels/adamw/adamw.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "kernels/adamw/adamw_cpu.h"
#include "kernels/base/status_macros.h"
#include "kernels/base/validate.h"

#ifdef FTX_HAVE_CUDA
#include "kernels/adamw/adamw_cuda.h"
#endif

namespace ftx {
namespace {

constexpr absl::string_view kOp = "AdamWStep";

absl::Status CheckOptions(const AdamWOptions& options) {
  auto error = [](absl::string_view name, double value,
                  absl::string_view expected) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": options.", name, " must be ", expected, ", got ", value));
  };
  if (!(std::isfinite(options.lr) && options.lr >= 0.0)) {
    return error("lr", options.lr, "finite and >= 0");
  }
  if (!(options.beta1 >= 0.0 && options.beta1 < 1.0)) {
    return error("beta1", options.beta1, "in [0, 1)");
  }
  if (!(options.beta2 >= 0.0 && options.beta2 < 1.0)) {
    return error("beta2", options.beta2, "in [0, 1)");
  }
  if (!(std::isfinite(options.eps) && options.eps >= 0.0)) {
    return error("eps", options.eps, "finite and >= 0");
  }
  if (!(std::isfinite(options.weight_decay) && options.weight_decay >= 0.0)) {
    return error("weight_decay", options.weight_decay, "finite and >= 0");
  }
  if (options.step < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": options.step must be >= 1 (1-based), got ", options.step));
  }
  return absl::OkStatus();
}

// The per-step scalars as torch computes them: in double, each rounded to
// float once where it meets a float tensor.
cpu::AdamWCoefficients Coefficients(const AdamWOptions& options) {
  const double t = static_cast<double>(options.step);
  cpu::AdamWCoefficients c;
  c.decay_factor = static_cast<float>(1.0 - options.lr * options.weight_decay);
  c.one_minus_beta1 = static_cast<float>(1.0 - options.beta1);
  c.beta2 = static_cast<float>(options.beta2);
  c.one_minus_beta2 = static_cast<float>(1.0 - options.beta2);
  c.step_size =
      static_cast<float>(options.lr / (1.0 - std::pow(options.beta1, t)));
  c.bias_correction2_sqrt =
      static_cast<float>(std::sqrt(1.0 - std::pow(options.beta2, t)));
  c.eps = static_cast<float>(options.eps);
  return c;
}

}  // namespace

absl::Status AdamWStep(const Context& ctx, TensorView<float> params,
                       TensorView<const float> grads,
                       TensorView<float> first_moment,
                       TensorView<float> second_moment,
                       const AdamWOptions& options) {
  FTX_RETURN_IF_ERROR(CheckSameShapes(kOp, ctx, "params", params,
                                      Named("grads", grads),
                                      Named("first_moment", first_moment),
                                      Named("second_moment", second_moment)));
  FTX_RETURN_IF_ERROR(CheckOptions(options));
  const cpu::AdamWCoefficients c = Coefficients(options);
  const auto p = AsMatrix(params);
  const auto g = AsMatrix(grads);
  const auto m = AsMatrix(first_moment);
  const auto v = AsMatrix(second_moment);
  return RouteByDevice(
      kOp, ctx, [&] { cpu::AdamWStep(ctx, p, g, m, v, c); },
      FTX_CUDA_LAUNCH(cuda::LaunchAdamWStep(
          p.rows, p.cols, p.data, p.row_stride, g.data, g.row_stride, m.data,
          m.row_stride, v.data, v.row_stride,
          cuda::AdamWScalars{c.decay_factor, c.one_minus_beta1, c.beta2,
                             c.one_minus_beta2, c.step_size,
                             c.bias_correction2_sqrt, c.eps},
          ctx.cuda_stream())));
}

}  // namespace ftx
