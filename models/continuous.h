// Transformer over continuous vectors, as x-transformers 0.26.6
// ContinuousTransformerWrapper (SEMANTICS.md sections 6.1 and 6.6):
//   x = x W_in^T + b_in          project_in, [B, T, dim_in] -> [B, T, C]
//                                (the identity when dim_in = 0, i.e. None)
//   x = x + pos_emb[t] * C^-0.5  AbsolutePositionalEmbedding, unless
//                                use_abs_pos_emb is false or the stack uses
//                                rotary positions (x-transformers has_pos_emb)
//   x = AttentionLayers(x)       models/transformer.h (Encoder or Decoder)
//   x = LayerNorm(x)             norm
//   y = x W_out^T + b_out        project_out, -> [B, T, dim_out] (the
//                                identity when dim_out = 0)
// Not supported: emb_dropout, emb_dim, return_embeddings (use dim_out = 0),
// memory and returned attention.
//
// Parameter names (x-transformers 0.26.6 state_dict keys) and initialisation:
//   pos_emb.emb.weight [max_seq_len, C]       N(0, 1), when used
//   project_in.weight [C, dim_in], .bias [C]  torch Linear, dim_in > 0
//   attn_layers.*                             models/transformer.h
//   norm.weight, norm.bias [C]                ones, zeros
//   project_out.weight [dim_out, C], .bias    torch Linear, dim_out > 0
//
// Gradient convention: Backward accumulates every parameter gradient into the
// ParamStore (+=); the input and context gradients are written (=).
//
// Example:
//   FTX_ASSIGN_OR_RETURN(auto model,
//                        ContinuousTransformerWrapper::Create(config,
//                        registry));
//   FTX_ASSIGN_OR_RETURN(ParamStore store,
//                        ParamStore::Create(model->ParamShapes()));
//   FTX_RETURN_IF_ERROR(model->InitParams(ctx, store));
//   FTX_RETURN_IF_ERROR(model->Forward(ctx, store, x, {}, y, true));
//   FTX_RETURN_IF_ERROR(model->Backward(ctx, store, d_y, d_x));
#ifndef FTX_MODELS_CONTINUOUS_H_
#define FTX_MODELS_CONTINUOUS_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "attention/attention.h"
#include "attention/registry.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor.h"
#include "kernels/base/tensor_view.h"
#include "layers/absolute_positions.h"
#include "layers/layernorm.h"
#include "models/param_store.h"
#include "models/transformer.h"

namespace ftx {

struct ContinuousConfig {
  int64_t max_seq_len = 0;
  int64_t dim_in = 0;   // 0: no project_in (x is [B, T, C])
  int64_t dim_out = 0;  // 0: no project_out (y is [B, T, C])
  bool use_abs_pos_emb = true;
  // The stack (its num_tokens and max_seq_len are ignored). Its seed
  // initialises the whole model.
  TransformerConfig attn_layers;
};

class ContinuousTransformerWrapper {
 public:
  // InvalidArgument for max_seq_len < 1, dim_in or dim_out < 0, or a bad
  // stack config.
  static absl::StatusOr<std::unique_ptr<ContinuousTransformerWrapper>> Create(
      const ContinuousConfig& config, const AttentionRegistry& registry);

  const ContinuousConfig& config() const { return config_; }
  bool uses_abs_pos_emb() const {
    return config_.use_abs_pos_emb && !config_.attn_layers.rotary_pos_emb;
  }
  int64_t input_width() const;   // dim_in, or C
  int64_t output_width() const;  // dim_out, or C

  std::vector<ParamShape> ParamShapes() const;
  absl::Status InitParams(const Context& ctx, ParamStore& store) const;

  // x: contiguous [B, T, input_width()], T <= max_seq_len; y: contiguous
  // [B, T, output_width()]. inputs: padding lengths, cross-attention context,
  // training mode of the stack. CPU context.
  absl::Status Forward(const Context& ctx, ParamStore& store,
                       TensorView<const float> x, const StackInputs& inputs,
                       TensorView<float> y, bool save_for_backward);
  // d_y: y's shape; d_x: x's shape (=) or empty to skip; d_context: the
  // context's shape (=) or empty; parameter gradients (+=). Needs a saving
  // Forward just before, whose x and context views must still be alive.
  absl::Status Backward(const Context& ctx, ParamStore& store,
                        TensorView<const float> d_y, TensorView<float> d_x,
                        TensorView<float> d_context = {});

 private:
  ContinuousTransformerWrapper(const ContinuousConfig& config,
                               std::unique_ptr<AttentionLayers> layers,
                               LayerNormLayer norm)
      : config_(config), layers_(std::move(layers)), norm_(norm) {}

  AbsolutePositions Positions() const;

  ContinuousConfig config_;
  std::unique_ptr<AttentionLayers> layers_;
  LayerNormLayer norm_;
  // Forward state: the input view, stack input and output, norm output
  // [B, T, C] each.
  TensorView<const float> x_;
  bool saved_ = false;
  Tensor embedded_, stack_out_, normed_;
  LayerNormCache norm_cache_;
  Tensor d_normed_, d_stack_out_, d_embedded_;
};

}  // namespace ftx

#endif  // FTX_MODELS_CONTINUOUS_H_
