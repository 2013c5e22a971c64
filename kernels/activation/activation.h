// Pointwise activations y = f(x) and gated linear units y = value * f(gate),
// with their backward passes, matching PyTorch's torch.nn.functional values
// and autograd derivatives:
//   relu          max(x, 0); relu'(0) = 0
//   gelu          x Φ(x) = 0.5 x (1 + erf(x / √2)); F.gelu (exact, default)
//   gelu_tanh     0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)));
//                 F.gelu(approximate='tanh')
//   silu          x σ(x), a.k.a. swish; F.silu
//   elu+1         x > 0 ? x + 1 : exp(x), derivative x > 0 ? 1 : exp(x) (1 at
//                 0); F.elu(x) + 1, fast-transformers' linear-attention map
//   relu_squared  relu(x)², derivative 2 relu(x); x-transformers (Primer)
//   sigmoid       σ(x) = 1 / (1 + exp(-x))
//   tanh          tanh(x)
//   identity      x
// Gated linear units follow Shazeer 2020 ("GLU Variants Improve Transformer")
// in x-transformers' layout: x [..., 2 D] holds (value, gate) = (x[..., :D],
// x[..., D:]) and y [..., D] = value * f(gate). GEGLU = kGelu, SwiGLU = kSilu,
// ReGLU = kRelu, the original GLU = kSigmoid.
//
// Each view is read as rows of its last axis (leading axes must collapse to
// one row stride; the last axis must have unit stride). Results are finite
// for finite input (no overflow to NaN at |x| = 1e4 or beyond) and within
// 1e-6 relative + 1e-7 absolute of the exact function (2e-6 relative for
// derivatives) on the CPU, as activation_test checks.
//
// Gradient convention (all of ftx): activation gradients are written (=),
// parameter gradients are accumulated (+=); these ops have no parameters.
//
// Example:
//   FTX_ASSIGN_OR_RETURN(Activation f, ActivationFromName("gelu"));
//   FTX_RETURN_IF_ERROR(Activate(ctx, f, hidden, hidden));   // in place
//   FTX_RETURN_IF_ERROR(Glu(ctx, Activation::kSilu, x, y));  // SwiGLU
#ifndef FTX_KERNELS_ACTIVATION_ACTIVATION_H_
#define FTX_KERNELS_ACTIVATION_ACTIVATION_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor_view.h"

namespace ftx {

enum class Activation : int {
  kIdentity = 0,
  kRelu = 1,
  // Exact, erf form: 0.5 x (1 + erf(x / √2)); torch F.gelu's default.
  kGelu = 2,
  // Tanh approximation; torch F.gelu(approximate='tanh').
  kGeluTanh = 3,
  // x * sigmoid(x), a.k.a. swish.
  kSilu = 4,
  // elu(x) + 1: fast-transformers' default linear-attention feature map.
  kEluPlusOne = 5,
  // relu(x)²: x-transformers ff_relu_squared (Primer).
  kReluSquared = 6,
  kSigmoid = 7,
  kTanh = 8,
};

// Parses "identity", "relu", "gelu", "gelu_tanh", "silu", "swish" (= silu),
// "elu+1", "relu_squared", "sigmoid" or "tanh"; InvalidArgument listing the
// valid names otherwise.
absl::StatusOr<Activation> ActivationFromName(absl::string_view name);

// The canonical name ActivationFromName accepts ("silu" for kSilu); "invalid"
// for a value outside the enum.
const char* ActivationName(Activation activation);

// y = f(x). x, y: same shape; y may alias x exactly (in place).
absl::Status Activate(const Context& ctx, Activation activation,
                      TensorView<const float> x, TensorView<float> y);

// d_x = f'(x) * d_y, written (=). x, d_y, d_x: same shape; d_x may alias d_y
// exactly (in place).
absl::Status ActivateBackward(const Context& ctx, Activation activation,
                              TensorView<const float> x,
                              TensorView<const float> d_y,
                              TensorView<float> d_x);

// y = x[..., :D] * f(x[..., D:]). x: [..., 2 D]; y: [..., D] (must not overlap
// x).
absl::Status Glu(const Context& ctx, Activation gate_activation,
                 TensorView<const float> x, TensorView<float> y);

// d_x[..., :D] = d_y * f(gate); d_x[..., D:] = d_y * value * f'(gate),
// written (=). x, d_x: [..., 2 D]; d_y: [..., D]. d_x may alias x exactly;
// it must not overlap d_y.
absl::Status GluBackward(const Context& ctx, Activation gate_activation,
                         TensorView<const float> x, TensorView<const float> d_y,
                         TensorView<float> d_x);

}  // namespace ftx

#endif  // FTX_KERNELS_ACTIVATION_ACTIVATION_H_
