// Argument checks shared by the op façades. Each returns InvalidArgument naming
// the op, the argument and what was expected, so callers see e.g.
//   "Softmax: input x is on cuda but the context is cpu".
#ifndef FTX_KERNELS_BASE_VALIDATE_H_
#define FTX_KERNELS_BASE_VALIDATE_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "kernels/base/context.h"
#include "kernels/base/status_macros.h"
#include "kernels/base/tensor_view.h"

#ifdef FTX_HAVE_CUDA
#include "kernels/base/cuda_memory.h"
#endif

namespace ftx {

// A usable view for `op` on `ctx`: data non-null unless empty, on the context's
// device type, unit stride in the last axis, and leading axes that collapse
// into rows.
template <typename T>
absl::Status CheckRowsView(absl::string_view op, absl::string_view name,
                           const TensorView<T>& view, const Context& ctx) {
  if (view.data() == nullptr && view.NumElements() > 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": ", name, " has null data for shape ", view.shape().ToString()));
  }
  if (view.rank() < 1 || view.rank() > kMaxRank) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", name, " must have rank 1 to ", kMaxRank,
                     ", got ", view.rank()));
  }
  if (view.device().type != ctx.device().type) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": ", name, " is on ", DeviceTypeName(view.device().type),
        " but the context is ", DeviceTypeName(ctx.device().type)));
  }
  if (view.stride(view.rank() - 1) != 1 && view.dim(view.rank() - 1) > 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": ", name, " must have unit stride in its last axis, got stride ",
        view.stride(view.rank() - 1)));
  }
  if (!LeadingAxesCollapse(view)) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": ", name, " ", view.shape().ToString(),
        " has leading axes that do not collapse into evenly strided rows"));
  }
  return absl::OkStatus();
}

template <typename A, typename B>
absl::Status CheckSameShape(absl::string_view op, absl::string_view name_a,
                            const TensorView<A>& a, absl::string_view name_b,
                            const TensorView<B>& b) {
  if (a.shape() != b.shape()) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", name_a, " has shape ", a.shape().ToString(),
                     " but ", name_b, " has shape ", b.shape().ToString()));
  }
  return absl::OkStatus();
}

// Checks `reference` and every named view with CheckRowsView, and that each
// named view has the shape of `reference`.
//
// Example:
//   FTX_RETURN_IF_ERROR(CheckSameShapes("Add", ctx, "x", x, Named("y", y),
//   Named("out", out)));
template <typename R, typename... Views>
absl::Status CheckSameShapes(
    absl::string_view op, const Context& ctx, absl::string_view reference_name,
    const TensorView<R>& reference,
    const std::pair<absl::string_view, Views>&... views) {
  FTX_RETURN_IF_ERROR(CheckRowsView(op, reference_name, reference, ctx));
  absl::Status status = absl::OkStatus();
  (
      [&] {
        if (!status.ok()) return;
        status = CheckRowsView(op, views.first, views.second, ctx);
        if (status.ok()) {
          status = CheckSameShape(op, reference_name, reference, views.first,
                                  views.second);
        }
      }(),
      ...);
  return status;
}

template <typename T>
std::pair<absl::string_view, TensorView<T>> Named(absl::string_view name,
                                                  TensorView<T> view) {
  return {name, view};
}

// A view that must hold exactly `count` elements (e.g. a bias or a scalar).
template <typename T>
absl::Status CheckVector(absl::string_view op, absl::string_view name,
                         const TensorView<T>& view, int64_t count,
                         const Context& ctx) {
  if (absl::Status status = CheckRowsView(op, name, view, ctx); !status.ok()) {
    return status;
  }
  if (view.NumElements() != count || view.dim(view.rank() - 1) != count) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": ", name, " must hold ", count,
        " contiguous elements, got shape ", view.shape().ToString()));
  }
  return absl::OkStatus();
}

// The error for a CUDA tensor in a build without --config=cuda.
inline absl::Status CudaNotBuilt(absl::string_view op) {
  return absl::UnimplementedError(
      absl::StrCat(op, ": CUDA kernels need a build with --config=cuda"));
}

#ifdef FTX_HAVE_CUDA
// Converts a launcher's cudaError_t (as int) into a Status.
inline absl::Status CudaLaunchStatus(absl::string_view op, int error) {
  if (error == 0) return absl::OkStatus();
  return absl::InternalError(
      absl::StrCat(op, ": CUDA launch failed: ", cuda::ErrorString(error)));
}
#endif

// Routes an op by the context's device: cpu_fn() runs the Highway kernel;
// cuda_fn() launches the CUDA kernel and returns its cudaError_t as int. Wrap
// the CUDA call in FTX_CUDA_LAUNCH so that builds without --config=cuda never
// reference it.
//
// Example:
//   return RouteByDevice("Add", ctx, [&] { cpu::Add(...); },
//                        FTX_CUDA_LAUNCH(cuda::LaunchAdd(...)));
template <class CpuFn, class CudaFn>
absl::Status RouteByDevice(absl::string_view op, const Context& ctx,
                           CpuFn&& cpu_fn, CudaFn&& cuda_fn) {
  switch (ctx.device().type) {
    case DeviceType::kCpu:
      cpu_fn();
      return absl::OkStatus();
    case DeviceType::kCuda:
#ifdef FTX_HAVE_CUDA
      return CudaLaunchStatus(op, cuda_fn());
#else
      (void)cuda_fn;
      return CudaNotBuilt(op);
#endif
  }
  return absl::InvalidArgumentError(absl::StrCat(op, ": unknown device type"));
}

}  // namespace ftx

#ifdef FTX_HAVE_CUDA
#define FTX_CUDA_LAUNCH(call) [&]() -> int { return (call); }
#else
#define FTX_CUDA_LAUNCH(call) []() -> int { return 0; }
#endif

#endif  // FTX_KERNELS_BASE_VALIDATE_H_
