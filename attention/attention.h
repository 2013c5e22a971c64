// The inner-attention interface shared by every mechanism (fast-transformers'
// "inner attention" contract, attention/attention_layer.py): given projected
// queries, keys and values per head, produce the attended values per head.
// Projections, heads splitting and output projection live in attention_layer.
//
// Layout (fast-transformers): queries [N, L, H, E], keys [N, S, H, E],
// values [N, S, H, D], output [N, L, H, D]. Views may be strided in their
// leading axes (e.g. Q/K/V slices of one fused projection) but need unit stride
// in the last axis.
//
// Backward convention: d_queries, d_keys and d_values are written (=), like
// every activation gradient in ftx; mechanisms with parameters accumulate those
// (+=).
#ifndef FTX_ATTENTION_ATTENTION_H_
#define FTX_ATTENTION_ATTENTION_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "attention/mask.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor.h"
#include "kernels/base/tensor_view.h"

namespace ftx {

struct AttentionInputs {
  TensorView<const float> queries;  // [N, L, H, E]
  TensorView<const float> keys;     // [N, S, H, E]
  TensorView<const float> values;   // [N, S, H, D]
  AttnMask attn_mask = AttnMask::All();
  LengthMask query_lengths;  // [N] or empty
  LengthMask key_lengths;    // [N] or empty
  // Training mode enables attention dropout; `seed` makes its mask reproducible
  // (the backward regenerates the same mask from it).
  bool training = false;
  uint64_t seed = 0;
};

struct AttentionGrads {
  TensorView<float> d_queries;  // [N, L, H, E], written
  TensorView<float> d_keys;     // [N, S, H, E], written
  TensorView<float> d_values;   // [N, S, H, D], written
};

// What a forward keeps for its backward. Mechanisms size the tensors on first
// use and reuse them while the shapes stay the same; mechanisms that wrap
// others keep the wrapped mechanism's cache in `children`.
struct AttentionCache {
  std::vector<Tensor> saved;
  std::vector<AttentionCache> children;
};

// One named parameter of a module: its state_dict name and shape.
struct ParamShape {
  std::string name;
  Shape shape;
};

// A trainable tensor owned by a mechanism (e.g. talking-heads mixing matrices,
// Linformer projections), with its gradient. Backward accumulates into `grad`
// (+=). Names follow the reference library's state_dict names relative to the
// mechanism.
struct ParamRef {
  std::string name;
  Tensor* value;
  Tensor* grad;
};

class Attention {
 public:
  virtual ~Attention() = default;

  // Registry name, e.g. "full".
  virtual const char* name() const = 0;

  // Trainable parameters; none for most mechanisms.
  virtual std::vector<ParamRef> Parameters() { return {}; }

  // out: [N, L, H, D]. `cache` may be null (inference); when given, it receives
  // what Backward needs.
  virtual absl::Status Forward(const Context& ctx,
                               const AttentionInputs& inputs,
                               TensorView<float> out,
                               AttentionCache* cache) = 0;

  // d_out: [N, L, H, D]. `cache` must come from Forward on the same inputs.
  virtual absl::Status Backward(const Context& ctx,
                                const AttentionInputs& inputs,
                                const AttentionCache& cache,
                                TensorView<const float> d_out,
                                const AttentionGrads& grads) = 0;
};

// Sizes read off validated inputs.
struct AttentionDims {
  int64_t batch = 0;      // N
  int64_t queries = 0;    // L
  int64_t keys = 0;       // S
  int64_t heads = 0;      // H
  int64_t qk_dim = 0;     // E
  int64_t value_dim = 0;  // D
};

// Checks ranks, shapes, devices, strides and masks of a forward call and
// returns the dimensions; InvalidArgument names the offending tensor otherwise.
absl::StatusOr<AttentionDims> ValidateAttentionForward(
    absl::string_view op, const Context& ctx, const AttentionInputs& inputs,
    TensorView<float> out);

// The same for a backward call (also checks d_out and the gradient views).
absl::StatusOr<AttentionDims> ValidateAttentionBackward(
    absl::string_view op, const Context& ctx, const AttentionInputs& inputs,
    TensorView<const float> d_out, const AttentionGrads& grads);

// Makes `tensor` a zero-filled f32 tensor of `shape` on `device`, reusing its
// memory when it already has that shape.
absl::Status EnsureTensor(Tensor& tensor, const Shape& shape, Device device);

}  // namespace ftx

#endif  // FTX_ATTENTION_ATTENTION_H_
