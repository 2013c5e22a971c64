// Causal product: the numerator of causal linear attention (Katharopoulos et
// al. 2020, "Transformers are RNNs", eq. 9), matching fast-transformers'
// causal_dot_product and causal_dot_backward:
//
//   out[n, i, h, :] = sum_{j <= i} (q[n, i, h, :] . k[n, j, h, :]) v[n, j, h,
//   :]
//
// without normalisation (the caller divides by the matching sum of keys). It
// is computed as a sweep over the sequence with the running state
// S_i = sum_{j <= i} k_j v_j^T [E, D] per (n, h), out_i = S_i^T q_i, so memory
// is O(E * D) per (n, h) and never O(L^2).
//
// Layout [N, L, H, E] as fast-transformers' attention inputs: queries, keys
// [N, L, H, E]; values, out [N, L, H, D]. Views may be strided in every leading
// axis (e.g. slices of a fused QKV projection) but need unit stride in the last
// axis. Outputs must not overlap inputs.
//
// Gradient convention (all of ftx): activation gradients are written (=),
// parameter gradients are accumulated (+=). The causal product has no
// parameters.
//
// Example:
//   FTX_RETURN_IF_ERROR(CausalProduct(ctx, q_features, k_features, v,
//   numerator));
#ifndef FTX_KERNELS_CAUSAL_PRODUCT_CAUSAL_PRODUCT_H_
#define FTX_KERNELS_CAUSAL_PRODUCT_CAUSAL_PRODUCT_H_

#include "absl/status/status.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor_view.h"

namespace ftx {

// out_i = sum_{j <= i} (q_i . k_j) v_j per (n, h).
// queries, keys: [N, L, H, E]; values, out: [N, L, H, D].
absl::Status CausalProduct(const Context& ctx, TensorView<const float> queries,
                           TensorView<const float> keys,
                           TensorView<const float> values,
                           TensorView<float> out);

// Backward of CausalProduct for d_out = g [N, L, H, D], with
// S_i = sum_{j <= i} k_j v_j^T and R_j = sum_{i >= j} q_i g_i^T ([E, D]):
//   d_queries_i = S_i g_i,  d_keys_j = R_j v_j,  d_values_j = R_j^T k_j.
// d_queries, d_keys: [N, L, H, E]; d_values: [N, L, H, D]. All three are
// activation gradients and are written (=).
absl::Status CausalProductBackward(
    const Context& ctx, TensorView<const float> queries,
    TensorView<const float> keys, TensorView<const float> values,
    TensorView<const float> d_out, TensorView<float> d_queries,
    TensorView<float> d_keys, TensorView<float> d_values);

}  // namespace ftx

#endif  // FTX_KERNELS_CAUSAL_PRODUCT_CAUSAL_PRODUCT_H_
