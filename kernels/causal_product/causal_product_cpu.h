// CPU (Highway, dynamic dispatch) entry points of kernels/causal_product.
// Arguments are validated by the façade in causal_product.h; these only
// compute. Every view is rank 4 in the layout [N, L, H, *] with unit stride in
// the last axis; outputs do not overlap inputs.
#ifndef FTX_KERNELS_CAUSAL_PRODUCT_CAUSAL_PRODUCT_CPU_H_
#define FTX_KERNELS_CAUSAL_PRODUCT_CAUSAL_PRODUCT_CPU_H_

#include "kernels/base/context.h"
#include "kernels/base/tensor_view.h"

namespace ftx::cpu {

// out_i = sum_{j <= i} (q_i . k_j) v_j per (n, h).
// queries, keys: [N, L, H, E]; values, out: [N, L, H, D].
void CausalProduct(const Context& ctx, TensorView<const float> queries,
                   TensorView<const float> keys, TensorView<const float> values,
                   TensorView<float> out);

// d_queries_i = sum_{j <= i} (g_i . v_j) k_j,
// d_keys_j = sum_{i >= j} (v_j . g_i) q_i,
// d_values_j = sum_{i >= j} (k_j . q_i) g_i, with g = d_out (all written).
void CausalProductBackward(const Context& ctx, TensorView<const float> queries,
                           TensorView<const float> keys,
                           TensorView<const float> values,
                           TensorView<const float> d_out,
                           TensorView<float> d_queries,
                           TensorView<float> d_keys,
                           TensorView<float> d_values);

}  // namespace ftx::cpu

#endif  // FTX_KERNELS_CAUSAL_PRODUCT_CAUSAL_PRODUCT_CPU_H_
