#include "kernels/causal_product/causal_product.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "kernels/base/status_macros.h"
#include "kernels/base/validate.h"
#include "kernels/causal_product/causal_product_cpu.h"

#ifdef FTX_HAVE_CUDA
#include "kernels/causal_product/causal_product_cuda.h"
#endif

namespace ftx {
namespace {

// A usable [N, L, H, *] view: rank 4, data non-null unless empty, on the
// context's device type and with unit stride in the last axis. The leading
// axes may have any strides.
template <typename T>
absl::Status CheckSequenceView(absl::string_view op, absl::string_view name,
                               const TensorView<T>& view, const Context& ctx) {
  if (view.rank() != 4) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", name, " must have rank 4 [N, L, H, *], got ",
                     view.shape().ToString()));
  }
  if (view.data() == nullptr && view.NumElements() > 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": ", name, " has null data for shape ", view.shape().ToString()));
  }
  if (view.device().type != ctx.device().type) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": ", name, " is on ", DeviceTypeName(view.device().type),
        " but the context is ", DeviceTypeName(ctx.device().type)));
  }
  if (view.stride(3) != 1 && view.dim(3) > 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": ", name, " must have unit stride in its last axis, got stride ",
        view.stride(3)));
  }
  return absl::OkStatus();
}

// `view` must be [N, L, H, last_dim] with N, L, H those of `queries`.
template <typename T>
absl::Status CheckSequenceShape(absl::string_view op, absl::string_view name,
                                const TensorView<T>& view,
                                const TensorView<const float>& queries,
                                int64_t last_dim, const Context& ctx) {
  FTX_RETURN_IF_ERROR(CheckSequenceView(op, name, view, ctx));
  const Shape expected{queries.dim(0), queries.dim(1), queries.dim(2),
                       last_dim};
  if (view.shape() != expected) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", name, " must have shape ", expected.ToString(),
                     " (queries are ", queries.shape().ToString(), "), got ",
                     view.shape().ToString()));
  }
  return absl::OkStatus();
}

// Checks queries, keys and values and returns OK when they fit together:
// keys of the shape of queries, values [N, L, H, D] for any D.
absl::Status CheckInputs(absl::string_view op, const Context& ctx,
                         const TensorView<const float>& queries,
                         const TensorView<const float>& keys,
                         const TensorView<const float>& values) {
  FTX_RETURN_IF_ERROR(CheckSequenceView(op, "queries", queries, ctx));
  FTX_RETURN_IF_ERROR(CheckSequenceView(op, "keys", keys, ctx));
  FTX_RETURN_IF_ERROR(CheckSameShape(op, "keys", keys, "queries", queries));
  FTX_RETURN_IF_ERROR(CheckSequenceView(op, "values", values, ctx));
  return CheckSequenceShape(op, "values", values, queries, values.dim(3), ctx);
}

#ifdef FTX_HAVE_CUDA
cuda::ConstSequences DeviceSequencesOf(const TensorView<const float>& view) {
  return {view.data(), view.stride(0), view.stride(1), view.stride(2)};
}
cuda::Sequences DeviceSequencesOf(const TensorView<float>& view) {
  return {view.data(), view.stride(0), view.stride(1), view.stride(2)};
}
cuda::CausalProductDims DimsOf(const TensorView<const float>& queries,
                               const TensorView<const float>& values) {
  return {queries.dim(0), queries.dim(1), queries.dim(2), queries.dim(3),
          values.dim(3)};
}
#endif

}  // namespace

absl::Status CausalProduct(const Context& ctx, TensorView<const float> queries,
                           TensorView<const float> keys,
                           TensorView<const float> values,
                           TensorView<float> out) {
  constexpr absl::string_view kOp = "CausalProduct";
  FTX_RETURN_IF_ERROR(CheckInputs(kOp, ctx, queries, keys, values));
  FTX_RETURN_IF_ERROR(
      CheckSequenceShape(kOp, "out", out, queries, values.dim(3), ctx));
  return RouteByDevice(
      kOp, ctx, [&] { cpu::CausalProduct(ctx, queries, keys, values, out); },
      FTX_CUDA_LAUNCH(cuda::LaunchCausalProduct(
          DimsOf(queries, values), DeviceSequencesOf(queries),
          DeviceSequencesOf(keys), DeviceSequencesOf(values),
          DeviceSequencesOf(out), ctx.cuda_stream())));
}

absl::Status CausalProductBackward(
    const Context& ctx, TensorView<const float> queries,
    TensorView<const float> keys, TensorView<const float> values,
    TensorView<const float> d_out, TensorView<float> d_queries,
    TensorView<float> d_keys, TensorView<float> d_values) {
  constexpr absl::string_view kOp = "CausalProductBackward";
  FTX_RETURN_IF_ERROR(CheckInputs(kOp, ctx, queries, keys, values));
  const int64_t qk_dim = queries.dim(3), value_dim = values.dim(3);
  FTX_RETURN_IF_ERROR(
      CheckSequenceShape(kOp, "d_out", d_out, queries, value_dim, ctx));
  FTX_RETURN_IF_ERROR(
      CheckSequenceShape(kOp, "d_queries", d_queries, queries, qk_dim, ctx));
  FTX_RETURN_IF_ERROR(
      CheckSequenceShape(kOp, "d_keys", d_keys, queries, qk_dim, ctx));
  FTX_RETURN_IF_ERROR(
      CheckSequenceShape(kOp, "d_values", d_values, queries, value_dim, ctx));
  return RouteByDevice(
      kOp, ctx,
      [&] {
        cpu::CausalProductBackward(ctx, queries, keys, values, d_out, d_queries,
                                   d_keys, d_values);
      },
      FTX_CUDA_LAUNCH(cuda::LaunchCausalProductBackward(
          DimsOf(queries, values), DeviceSequencesOf(queries),
          DeviceSequencesOf(keys), DeviceSequencesOf(values),
          DeviceSequencesOf(d_out), DeviceSequencesOf(d_queries),
          DeviceSequencesOf(d_keys), DeviceSequencesOf(d_values),
          ctx.cuda_stream())));
}

}  // namespace ftx
