// Argument checks shared by the op façades. Each returns InvalidArgument naming the op,
// the argument and what was expected, so callers see e.g.
//   "Softmax: input x is on cuda but the context is cpu".
#ifndef FTX_KERNELS_BASE_VALIDATE_H_
#define FTX_KERNELS_BASE_VALIDATE_H_

#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor_view.h"

namespace ftx {

// A usable view for `op` on `ctx`: data non-null unless empty, on the context's device
// type, unit stride in the last axis, and leading axes that collapse into rows.
template <typename T>
absl::Status CheckRowsView(absl::string_view op, absl::string_view name,
                           const TensorView<T>& view, const Context& ctx) {
  if (view.data() == nullptr && view.NumElements() > 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", name, " has null data for shape ",
                     view.shape().ToString()));
  }
  if (view.rank() < 1 || view.rank() > kMaxRank) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": ", name, " must have rank 1 to ", kMaxRank, ", got ", view.rank()));
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
        absl::StrCat(op, ": ", name_a, " has shape ", a.shape().ToString(), " but ",
                     name_b, " has shape ", b.shape().ToString()));
  }
  return absl::OkStatus();
}

}  // namespace ftx

#endif  // FTX_KERNELS_BASE_VALIDATE_H_
