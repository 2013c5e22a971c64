// Scalar reference of kernels/adamw (the oracle for the Highway and CUDA
// versions): one AdamW step (Loshchilov & Hutter 2019) over flat arrays, in
// the order torch.optim.AdamW (amsgrad=False, maximize=False) applies it.
// Templated on the element type so tests can run it in double.
//
//   p = p * (1 - lr * weight_decay)                  (decoupled decay first)
//   m = beta1 * m + (1 - beta1) * g
//   v = beta2 * v + (1 - beta2) * g^2
//   p = p - (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
//
// with t the 1-based step number.
#ifndef FTX_KERNELS_REFERENCE_ADAMW_REF_H_
#define FTX_KERNELS_REFERENCE_ADAMW_REF_H_

#include <cmath>
#include <cstdint>

namespace ftx::reference {

// Updates params, m and v (each [n]) in place for step t >= 1.
template <typename T>
void AdamWStep(int64_t n, T* params, const T* grads, T* m, T* v, T lr, T beta1,
               T beta2, T eps, T weight_decay, int64_t t) {
  const T bias_correction1 = 1 - std::pow(beta1, static_cast<T>(t));
  const T bias_correction2 = 1 - std::pow(beta2, static_cast<T>(t));
  const T step_size = lr / bias_correction1;
  const T bias_correction2_sqrt = std::sqrt(bias_correction2);
  for (int64_t i = 0; i < n; ++i) {
    params[i] *= 1 - lr * weight_decay;
    m[i] = beta1 * m[i] + (1 - beta1) * grads[i];
    v[i] = beta2 * v[i] + (1 - beta2) * grads[i] * grads[i];
    const T denominator = std::sqrt(v[i]) / bias_correction2_sqrt + eps;
    params[i] -= step_size * m[i] / denominator;
  }
}

}  // namespace ftx::reference

#endif  // FTX_KERNELS_REFERENCE_ADAMW_REF_H_
