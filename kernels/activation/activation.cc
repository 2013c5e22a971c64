#include "kernels/activation/activation.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "kernels/activation/activation_cpu.h"
#include "kernels/base/status_macros.h"
#include "kernels/base/validate.h"

#ifdef FTX_HAVE_CUDA
#include "kernels/activation/activation_cuda.h"
#endif

namespace ftx {
namespace {

struct NamedActivation {
  const char* name;
  Activation activation;
};

// Canonical names first (ActivationName returns the first match), aliases
// after.
constexpr NamedActivation kActivationNames[] = {
    {"identity", Activation::kIdentity},
    {"relu", Activation::kRelu},
    {"gelu", Activation::kGelu},
    {"gelu_tanh", Activation::kGeluTanh},
    {"silu", Activation::kSilu},
    {"elu+1", Activation::kEluPlusOne},
    {"relu_squared", Activation::kReluSquared},
    {"sigmoid", Activation::kSigmoid},
    {"tanh", Activation::kTanh},
    {"swish", Activation::kSilu},
};

constexpr int kNumActivations = 9;

// The CPU and CUDA enums mirror Activation value for value (the façade casts).
template <typename Kind>
constexpr bool MirrorsActivation() {
  return static_cast<int>(Kind::kIdentity) ==
             static_cast<int>(Activation::kIdentity) &&
         static_cast<int>(Kind::kRelu) == static_cast<int>(Activation::kRelu) &&
         static_cast<int>(Kind::kGelu) == static_cast<int>(Activation::kGelu) &&
         static_cast<int>(Kind::kGeluTanh) ==
             static_cast<int>(Activation::kGeluTanh) &&
         static_cast<int>(Kind::kSilu) == static_cast<int>(Activation::kSilu) &&
         static_cast<int>(Kind::kEluPlusOne) ==
             static_cast<int>(Activation::kEluPlusOne) &&
         static_cast<int>(Kind::kReluSquared) ==
             static_cast<int>(Activation::kReluSquared) &&
         static_cast<int>(Kind::kSigmoid) ==
             static_cast<int>(Activation::kSigmoid) &&
         static_cast<int>(Kind::kTanh) == static_cast<int>(Activation::kTanh);
}
static_assert(MirrorsActivation<cpu::ActivationKind>());
#ifdef FTX_HAVE_CUDA
static_assert(MirrorsActivation<cuda::ActivationKind>());
#endif

absl::Status CheckActivation(absl::string_view op, absl::string_view name,
                             Activation activation) {
  const int value = static_cast<int>(activation);
  if (value < 0 || value >= kNumActivations) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": ", name, " has invalid value ", value, "; expected 0 to ",
        kNumActivations - 1, " (an ftx::Activation enumerator)"));
  }
  return absl::OkStatus();
}

// x: [..., 2 D] with an even last dimension; other: [..., D].
template <typename T>
absl::Status CheckGluShapes(absl::string_view op, const Context& ctx,
                            const TensorView<const float>& x,
                            absl::string_view other_name,
                            const TensorView<T>& other) {
  FTX_RETURN_IF_ERROR(CheckRowsView(op, "x", x, ctx));
  FTX_RETURN_IF_ERROR(CheckRowsView(op, other_name, other, ctx));
  const int64_t width = x.dim(x.rank() - 1);
  if (width % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": x ", x.shape().ToString(),
        " must have an even last dimension (value and gate halves), got ",
        width));
  }
  Shape expected = x.shape();
  expected.set_dim(x.rank() - 1, width / 2);
  if (other.shape() != expected) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": ", other_name, " has shape ", other.shape().ToString(),
        " but expected ", expected.ToString(), " (x ", x.shape().ToString(),
        " with its last dimension halved)"));
  }
  return absl::OkStatus();
}

cpu::ActivationKind CpuKind(Activation activation) {
  return static_cast<cpu::ActivationKind>(activation);
}

#ifdef FTX_HAVE_CUDA
cuda::ActivationKind CudaKind(Activation activation) {
  return static_cast<cuda::ActivationKind>(activation);
}
#endif

}  // namespace

absl::StatusOr<Activation> ActivationFromName(absl::string_view name) {
  std::string valid;
  for (const NamedActivation& entry : kActivationNames) {
    if (name == entry.name) return entry.activation;
    absl::StrAppend(&valid, valid.empty() ? "" : ", ", entry.name);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("ActivationFromName: unknown activation '", name,
                   "'; expected one of ", valid));
}

const char* ActivationName(Activation activation) {
  for (const NamedActivation& entry : kActivationNames) {
    if (entry.activation == activation) return entry.name;
  }
  return "invalid";
}

absl::Status Activate(const Context& ctx, Activation activation,
                      TensorView<const float> x, TensorView<float> y) {
  FTX_RETURN_IF_ERROR(CheckActivation("Activate", "activation", activation));
  FTX_RETURN_IF_ERROR(CheckSameShapes("Activate", ctx, "x", x, Named("y", y)));
  const auto in = AsMatrix(x);
  const auto out = AsMatrix(y);
  return RouteByDevice(
      "Activate", ctx,
      [&] { cpu::Activate(ctx, CpuKind(activation), in, out); },
      FTX_CUDA_LAUNCH(cuda::LaunchActivate(
          CudaKind(activation), out.rows, out.cols, in.data, in.row_stride,
          out.data, out.row_stride, ctx.cuda_stream())));
}

absl::Status ActivateBackward(const Context& ctx, Activation activation,
                              TensorView<const float> x,
                              TensorView<const float> d_y,
                              TensorView<float> d_x) {
  FTX_RETURN_IF_ERROR(
      CheckActivation("ActivateBackward", "activation", activation));
  FTX_RETURN_IF_ERROR(CheckSameShapes("ActivateBackward", ctx, "x", x,
                                      Named("d_y", d_y), Named("d_x", d_x)));
  const auto in = AsMatrix(x);
  const auto grad_out = AsMatrix(d_y);
  const auto grad_in = AsMatrix(d_x);
  return RouteByDevice(
      "ActivateBackward", ctx,
      [&] {
        cpu::ActivateBackward(ctx, CpuKind(activation), in, grad_out, grad_in);
      },
      FTX_CUDA_LAUNCH(cuda::LaunchActivateBackward(
          CudaKind(activation), grad_in.rows, grad_in.cols, in.data,
          in.row_stride, grad_out.data, grad_out.row_stride, grad_in.data,
          grad_in.row_stride, ctx.cuda_stream())));
}

absl::Status Glu(const Context& ctx, Activation gate_activation,
                 TensorView<const float> x, TensorView<float> y) {
  FTX_RETURN_IF_ERROR(
      CheckActivation("Glu", "gate_activation", gate_activation));
  FTX_RETURN_IF_ERROR(CheckGluShapes("Glu", ctx, x, "y", y));
  const auto in = AsMatrix(x);
  const auto out = AsMatrix(y);
  return RouteByDevice(
      "Glu", ctx, [&] { cpu::Glu(ctx, CpuKind(gate_activation), in, out); },
      FTX_CUDA_LAUNCH(cuda::LaunchGlu(
          CudaKind(gate_activation), out.rows, out.cols, in.data, in.row_stride,
          out.data, out.row_stride, ctx.cuda_stream())));
}

absl::Status GluBackward(const Context& ctx, Activation gate_activation,
                         TensorView<const float> x, TensorView<const float> d_y,
                         TensorView<float> d_x) {
  FTX_RETURN_IF_ERROR(
      CheckActivation("GluBackward", "gate_activation", gate_activation));
  FTX_RETURN_IF_ERROR(CheckGluShapes("GluBackward", ctx, x, "d_y", d_y));
  FTX_RETURN_IF_ERROR(
      CheckSameShapes("GluBackward", ctx, "x", x, Named("d_x", d_x)));
  const auto in = AsMatrix(x);
  const auto grad_out = AsMatrix(d_y);
  const auto grad_in = AsMatrix(d_x);
  return RouteByDevice(
      "GluBackward", ctx,
      [&] {
        cpu::GluBackward(ctx, CpuKind(gate_activation), in, grad_out, grad_in);
      },
      FTX_CUDA_LAUNCH(cuda::LaunchGluBackward(
          CudaKind(gate_activation), grad_out.rows, grad_out.cols, in.data,
          in.row_stride, grad_out.data, grad_out.row_stride, grad_in.data,
          grad_in.row_stride, ctx.cuda_stream())));
}

}  // namespace ftx
