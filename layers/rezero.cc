#include "layers/rezero.h"

#include "absl/strings/str_cat.h"
#include "kernels/elementwise/elementwise.h"

namespace ftx {
namespace {

absl::Status CheckScalar(const char* name, TensorView<const float> g) {
  if (g.NumElements() != 1 || g.data() == nullptr ||
      g.device().type != DeviceType::kCpu) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ReZero: ", name, " must be one CPU scalar, got ", g.shape().ToString()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ReZero::Forward(const Context& ctx, TensorView<const float> g,
                             TensorView<const float> branch, TensorView<float> y) const {
  if (absl::Status status = CheckScalar("g", g); !status.ok()) return status;
  return Scale(ctx, g.data()[0], branch, y);
}

absl::Status ReZero::Backward(const Context& ctx, TensorView<const float> g,
                              TensorView<const float> branch, TensorView<const float> d_y,
                              TensorView<float> d_branch, TensorView<float> d_g) const {
  if (absl::Status status = CheckScalar("g", g); !status.ok()) return status;
  return ScaleBackward(ctx, g.data()[0], branch, d_y, d_branch, d_g);
}

}  // namespace ftx
