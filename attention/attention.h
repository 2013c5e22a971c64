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
// (+=), and so does d_head_bias (the gradient of an additive per-head score
// bias, which belongs to a position-bias module's parameters).
//
// A per-head score bias (x-transformers' T5 relative bias, ALiBi, dynamic
// position bias; layers/t5_relative_bias.h, layers/alibi.h,
// layers/dynamic_position_bias.h) reaches the mechanism through
// AttentionInputs::head_bias. Only mechanisms whose SupportsHeadBias() is true
// accept one; the others return InvalidArgument for it.
#ifndef FTX_ATTENTION_ATTENTION_H_
#define FTX_ATTENTION_ATTENTION_H_

#include <cmath>
#include <cstdint>
#include <optional>
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
  // Optional per-head additive score bias [H, L, S], the same for every batch
  // item, added to the scaled scores t * Q K^T before the masks
  // (x-transformers' rel_pos(dots)). Default-constructed (absent) for none.
  // Last axis unit stride.
  TensorView<const float> head_bias;
};

struct AttentionGrads {
  TensorView<float> d_queries;  // [N, L, H, E], written
  TensorView<float> d_keys;     // [N, S, H, E], written
  TensorView<float> d_values;   // [N, S, H, D], written
  // [H, L, S], accumulated (+=) with the gradient of AttentionInputs::head_bias
  // (summed over the batch). Optional: default-constructed skips it; given,
  // it requires a head_bias.
  TensorView<float> d_head_bias;
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
  // false for a buffer: state saved and loaded with the weights (performer's
  // FAVOR projections, BatchNorm running statistics) that the optimizer never
  // updates and no gradient reaches.
  bool trainable = true;
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

  // Whether Forward and Backward accept AttentionInputs::head_bias (and
  // AttentionGrads::d_head_bias). Mechanisms that do not return
  // InvalidArgument when one is given.
  virtual bool SupportsHeadBias() const { return false; }

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

// True unless `view` is default-constructed: how optional tensors (a head
// bias, its gradient) are left out.
template <typename T>
bool IsGiven(const TensorView<T>& view) {
  return view.data() != nullptr || view.rank() > 0;
}

// The optional inputs a mechanism implements. ValidateAttentionForward and
// ValidateAttentionBackward reject the others with InvalidArgument, so a
// mechanism that passes nothing here never silently ignores a head bias.
struct AttentionSupport {
  // AttentionInputs::head_bias and AttentionGrads::d_head_bias.
  bool head_bias = false;
};

// Checks ranks, shapes, devices, strides and masks of a forward call (and the
// head bias: [H, L, S] where supported, absent otherwise) and returns the
// dimensions; InvalidArgument names the offending tensor otherwise.
absl::StatusOr<AttentionDims> ValidateAttentionForward(
    absl::string_view op, const Context& ctx, const AttentionInputs& inputs,
    TensorView<float> out, const AttentionSupport& support = {});

// The same for a backward call (also checks d_out and the gradient views; a
// given d_head_bias must be [H, L, S] and needs a head_bias).
absl::StatusOr<AttentionDims> ValidateAttentionBackward(
    absl::string_view op, const Context& ctx, const AttentionInputs& inputs,
    TensorView<const float> d_out, const AttentionGrads& grads,
    const AttentionSupport& support = {});

// The softmax temperature t of the softmax-family mechanisms: the given value,
// or fast-transformers' default 1/sqrt(E).
inline float SoftmaxTemperature(const std::optional<float>& softmax_temp,
                                int64_t qk_dim) {
  return softmax_temp.has_value()
             ? *softmax_temp
             : 1.0f / std::sqrt(static_cast<float>(qk_dim));
}

// Makes `tensor` a zero-filled f32 tensor of `shape` on `device`, reusing its
// memory when it already has that shape.
absl::Status EnsureTensor(Tensor& tensor, const Shape& shape, Device device);

}  // namespace ftx

#endif  // FTX_ATTENTION_ATTENTION_H_
