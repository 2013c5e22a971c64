// CPU (Highway, dynamic dispatch) entry points of kernels/activation.
// Arguments are validated by the façade in activation.h; these only compute.
#ifndef FTX_KERNELS_ACTIVATION_ACTIVATION_CPU_H_
#define FTX_KERNELS_ACTIVATION_ACTIVATION_CPU_H_

#include "kernels/base/context.h"
#include "kernels/base/tensor_view.h"

namespace ftx::cpu {

// Same values as ftx::Activation and cuda::ActivationKind.
enum class ActivationKind : int {
  kIdentity = 0,
  kRelu = 1,
  kGelu = 2,
  kGeluTanh = 3,
  kSilu = 4,
  kEluPlusOne = 5,
  kReluSquared = 6,
  kSigmoid = 7,
  kTanh = 8,
};

// y = f(x); y may alias x.
void Activate(const Context& ctx, ActivationKind kind,
              MatrixView<const float> x, MatrixView<float> y);
// d_x = f'(x) * d_y; d_x may alias d_y.
void ActivateBackward(const Context& ctx, ActivationKind kind,
                      MatrixView<const float> x, MatrixView<const float> d_y,
                      MatrixView<float> d_x);
// x: [rows, 2 D]; y: [rows, D] = x[:, :D] * f(x[:, D:]).
void Glu(const Context& ctx, ActivationKind gate_kind,
         MatrixView<const float> x, MatrixView<float> y);
// x, d_x: [rows, 2 D]; d_y: [rows, D]. d_x may alias x.
void GluBackward(const Context& ctx, ActivationKind gate_kind,
                 MatrixView<const float> x, MatrixView<const float> d_y,
                 MatrixView<float> d_x);

}  // namespace ftx::cpu

#endif  // FTX_KERNELS_ACTIVATION_ACTIVATION_CPU_H_
