// fast-transformers 0.4.0 transformer stacks (Katharopoulos et al. 2020,
// "Transformers are RNNs"; fast_transformers/transformers.py and
// recurrent/transformers.py), built from ftx's AttentionLayer
// (attention/attention_layer.h, biased projections) around any registered
// mechanism. The layers are post-norm, as torch.nn.TransformerEncoderLayer:
//
//   encoder layer:  x = norm1(x + dropout(attention(x, x, x)))
//                   y = dropout(linear2(dropout(act(linear1(x)))))
//                     (the inner dropout unless !feed_forward_hidden_dropout)
//                   out = norm2(x + y)
//   decoder layer:  x = norm1(x + dropout(self_attention(x, x, x)))
//                   x = norm2(x + dropout(cross_attention(x, mem, mem)))
//                   out = norm3(x + dropout(linear2(dropout(act(linear1(x))))))
//   stack:          the layers in turn, then the optional final LayerNorm
//
// act is relu or gelu (the erf form, torch F.gelu); every LayerNorm has eps
// config.layer_norm_eps (fast-transformers' 1e-5 by default; Hugging Face
// BERT, models/bert.h, uses its config's layer_norm_eps, 1e-12). Dropout
// (probability config.dropout, training only) uses kernels/dropout with one
// Philox stream per site, so Backward regenerates the masks; attention dropout
// is the mechanism's own (its attention_dropout option).
//
// Masks follow fast-transformers: the encoder's attn_mask [L, L] and length
// mask [N] (used for queries and keys); the decoder's x_mask [L, L], x lengths,
// memory_mask [L, S] and memory lengths. Additive masks are views the caller
// keeps alive until Backward.
//
// The recurrent twins (RecurrentTransformerEncoder / Decoder) run one position
// per Step with the mechanism's recurrent form (attention/recurrent.h,
// attention/recurrent_cross.h); they have the same parameters, so one
// ParamStore serves both (fast-transformers' make_mirror). Stepping through a
// sequence gives the batch model's outputs under a causal x mask, position by
// position (tested). The recurrent cross-attention projects the memory on the
// first step only, as RecurrentCrossAttentionLayer does.
//
// Parameter names are fast-transformers' state_dict keys (shapes for
// C = d_model, H = n_heads, E = d_keys, D = d_values, F = d_ff):
//   layers.{i}.attention.{query,key,value}_projection.{weight,bias}   encoder
//   layers.{i}.attention.out_projection.{weight,bias}
//   layers.{i}.self_attention.*, layers.{i}.cross_attention.*        decoder
//     (cross key/value projections read memory_dim-wide rows)
//   layers.{i}.linear1.weight [F, C], .bias [F]
//   layers.{i}.linear2.weight [C, F], .bias [C]
//   layers.{i}.norm1.{weight,bias} [C], norm2, (decoder) norm3
//   norm.{weight,bias} [C]                                  final_normalization
// Mechanisms that own parameters keep them inside the mechanism, outside the
// ParamStore. InitParams follows torch: Linear weights and biases
// U(-1/sqrt(fan_in), 1/sqrt(fan_in)), LayerNorm ones / zeros.
//
// Events (fast-transformers' event system, models/ft_events.h): every model
// dispatches to an FtEventDispatcher, by default the shared
// FtEventDispatcher::Get("") as fast-transformers' modules do
// (SetEventDispatcher replaces it; null turns events off). While the
// dispatcher has listeners, Forward dispatches per attention sublayer a kQkv
// event from "layers.{i}.attention" ("layers.{i}.self_attention",
// "layers.{i}.cross_attention" in decoders) after the projections, then, where
// the mechanism is "full", a kAttention event with its [N, H, L, S] matrix from
// "<that name>.inner_attention"; Step dispatches the kAttention events of the
// recurrent "full" mechanisms ([N, H, steps] self, [N, S, H] cross; 0.4.0's
// recurrent attention layers dispatch no QKV event). After every layer both
// dispatch a kIntermediateOutput event from "" with the layer output ([N, L, C]
// or [N, C]), as fast-transformers' GitHub HEAD does (0.4.0 has no such
// event). Mechanisms other than a plain "full" dispatch no attention event
// (fast-transformers' "conditional-full" would dispatch from its full
// branch). Without listeners nothing is materialised or dispatched.
//
// Gradient convention: Backward writes d_x and d_memory (=) and accumulates
// every parameter gradient into the ParamStore (+=). CPU contexts only
// (Unimplemented otherwise).
//
// Example:
//   FTX_ASSIGN_OR_RETURN(auto encoder, FtTransformerEncoder::Create(config,
//                                                                   registry));
//   FTX_ASSIGN_OR_RETURN(ParamStore store,
//                        ParamStore::Create(encoder->ParamShapes()));
//   FTX_RETURN_IF_ERROR(encoder->InitParams(ctx, store));
//   FTX_RETURN_IF_ERROR(encoder->Forward(ctx, store, x, {}, y, true));
//   FTX_RETURN_IF_ERROR(encoder->Backward(ctx, store, d_y, d_x));
#ifndef FTX_MODELS_FT_TRANSFORMERS_H_
#define FTX_MODELS_FT_TRANSFORMERS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "attention/attention.h"
#include "attention/mask.h"
#include "attention/recurrent.h"
#include "attention/registry.h"
#include "kernels/activation/activation.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor.h"
#include "kernels/base/tensor_view.h"
#include "models/ft_events.h"
#include "models/param_store.h"

namespace ftx {

// Resolved sizes and options of a fast-transformers stack (the builders in
// models/ft_builders.h fill it from fast-transformers' keyword names).
struct FtTransformerConfig {
  int64_t n_layers = 4;
  int64_t n_heads = 4;                        // H
  int64_t d_model = 256;                      // C
  int64_t d_keys = 64;                        // E per head (query_dimensions)
  int64_t d_values = 64;                      // D per head (value_dimensions)
  int64_t d_ff = 1024;                        // F (feed_forward_dimensions)
  float dropout = 0.1f;                       // in [0, 1)
  Activation activation = Activation::kRelu;  // kRelu or kGelu
  bool final_normalization = true;
  float layer_norm_eps = 1e-5f;  // every LayerNorm; >= 0 and finite
  // Dropout on act(linear1(x)) as fast-transformers; Hugging Face BERT has
  // none there (false), only on the residual branches.
  bool feed_forward_hidden_dropout = true;
  // Self-attention mechanism (registry name or "a:b" composition) and the
  // builder options of every mechanism (self and cross, as fast-transformers
  // forwards unknown builder attributes to both attention builders).
  std::string attention_type = "full";
  std::map<std::string, OptionValue> attention_options;
  // Decoders: the cross-attention mechanism and its sizes; 0 falls back to
  // n_heads, d_keys, d_values and d_model (the memory width).
  std::string cross_attention_type = "full";
  int64_t cross_n_heads = 0;
  int64_t cross_d_keys = 0;
  int64_t cross_d_values = 0;
  int64_t memory_dim = 0;
  uint64_t seed = 0;  // InitParams
};

// InvalidArgument naming the first bad field.
absl::Status ValidateFtTransformerConfig(const FtTransformerConfig& config,
                                         bool decoder);

struct FtEncoderInputs {
  AttnMask attn_mask = AttnMask::All();  // [L, L]
  LengthMask lengths;                    // [N] or empty
  bool training = false;                 // dropout
  uint64_t seed = 0;                     // dropout masks
};

struct FtDecoderInputs {
  AttnMask x_mask = AttnMask::All();       // [L, L]
  LengthMask x_lengths;                    // [N] or empty
  AttnMask memory_mask = AttnMask::All();  // [L, S]
  LengthMask memory_lengths;               // [N] or empty
  bool training = false;
  uint64_t seed = 0;
};

// The shared layer stack behind the four public classes (defined in the .cc).
class FtStack;

class FtTransformerEncoder {
 public:
  // InvalidArgument for a bad config or attention the builder rejects.
  static absl::StatusOr<std::unique_ptr<FtTransformerEncoder>> Create(
      const FtTransformerConfig& config, const AttentionRegistry& registry);
  ~FtTransformerEncoder();

  const FtTransformerConfig& config() const;
  std::vector<ParamShape> ParamShapes() const;
  absl::Status InitParams(const Context& ctx, ParamStore& store) const;
  // The dispatcher of this model's events (see the top of this file); null
  // turns events off.
  void SetEventDispatcher(std::shared_ptr<FtEventDispatcher> dispatcher);
  const std::shared_ptr<FtEventDispatcher>& event_dispatcher() const;

  // x, y: contiguous [N, L, C] (y may not overlap x).
  absl::Status Forward(const Context& ctx, ParamStore& store,
                       TensorView<const float> x, const FtEncoderInputs& inputs,
                       TensorView<float> y, bool save_for_backward);
  // d_y, d_x: [N, L, C]; needs a saving Forward just before.
  absl::Status Backward(const Context& ctx, ParamStore& store,
                        TensorView<const float> d_y, TensorView<float> d_x);

 private:
  explicit FtTransformerEncoder(std::unique_ptr<FtStack> stack);
  std::unique_ptr<FtStack> stack_;
};

class FtTransformerDecoder {
 public:
  static absl::StatusOr<std::unique_ptr<FtTransformerDecoder>> Create(
      const FtTransformerConfig& config, const AttentionRegistry& registry);
  ~FtTransformerDecoder();

  const FtTransformerConfig& config() const;
  std::vector<ParamShape> ParamShapes() const;
  absl::Status InitParams(const Context& ctx, ParamStore& store) const;
  // The dispatcher of this model's events (see the top of this file); null
  // turns events off.
  void SetEventDispatcher(std::shared_ptr<FtEventDispatcher> dispatcher);
  const std::shared_ptr<FtEventDispatcher>& event_dispatcher() const;

  // x, y: [N, L, C]; memory: [N, S, memory_dim], kept alive until Backward.
  absl::Status Forward(const Context& ctx, ParamStore& store,
                       TensorView<const float> x,
                       TensorView<const float> memory,
                       const FtDecoderInputs& inputs, TensorView<float> y,
                       bool save_for_backward);
  // d_x: [N, L, C] (=); d_memory: [N, S, memory_dim] (=), or empty to skip.
  absl::Status Backward(const Context& ctx, ParamStore& store,
                        TensorView<const float> d_y, TensorView<float> d_x,
                        TensorView<float> d_memory);

 private:
  explicit FtTransformerDecoder(std::unique_ptr<FtStack> stack);
  std::unique_ptr<FtStack> stack_;
};

// Per-layer recurrent attention states and step buffers of one decoding run;
// made by a recurrent model's NewState and tied to it.
class FtRecurrentState {
 public:
  FtRecurrentState(FtRecurrentState&&) = default;
  FtRecurrentState& operator=(FtRecurrentState&&) = default;
  ~FtRecurrentState();

  // Steps taken so far.
  int64_t steps() const { return steps_; }
  // The batch size fixed by the first step (0 before it).
  int64_t batch() const { return batch_; }

 private:
  friend class FtStack;
  FtRecurrentState() = default;

  int64_t steps_ = 0;
  int64_t batch_ = 0;
  // One per sublayer (null where the sublayer has no state of that kind).
  std::vector<std::unique_ptr<RecurrentState>> states_;
  // Cross-attention sublayers: projected memory keys [N, S, H * E] and values
  // [N, S, H * D], computed on the first step.
  std::vector<Tensor> memory_keys_, memory_values_;
  // [N, C] activations, [N, H * E] projections, [N, F] hidden, [N, H * D].
  Tensor current_, sum_, branch_, query_, key_, value_, attended_, hidden_;
};

class FtRecurrentEncoder {
 public:
  // InvalidArgument also when attention_type has no recurrent form.
  static absl::StatusOr<std::unique_ptr<FtRecurrentEncoder>> Create(
      const FtTransformerConfig& config, const AttentionRegistry& registry);
  ~FtRecurrentEncoder();

  const FtTransformerConfig& config() const;
  std::vector<ParamShape> ParamShapes() const;
  absl::Status InitParams(const Context& ctx, ParamStore& store) const;
  // The dispatcher of this model's events (see the top of this file); null
  // turns events off.
  void SetEventDispatcher(std::shared_ptr<FtEventDispatcher> dispatcher);
  const std::shared_ptr<FtEventDispatcher>& event_dispatcher() const;

  FtRecurrentState NewState() const;
  // x, y: contiguous [N, C], one position of every sequence (eval mode).
  // InvalidArgument for bad shapes or a batch other than the first step's.
  absl::Status Step(const Context& ctx, ParamStore& store,
                    TensorView<const float> x, FtRecurrentState& state,
                    TensorView<float> y);

 private:
  explicit FtRecurrentEncoder(std::unique_ptr<FtStack> stack);
  std::unique_ptr<FtStack> stack_;
};

class FtRecurrentDecoder {
 public:
  // InvalidArgument also when a mechanism has no recurrent (self) or
  // recurrent cross form.
  static absl::StatusOr<std::unique_ptr<FtRecurrentDecoder>> Create(
      const FtTransformerConfig& config, const AttentionRegistry& registry);
  ~FtRecurrentDecoder();

  const FtTransformerConfig& config() const;
  std::vector<ParamShape> ParamShapes() const;
  absl::Status InitParams(const Context& ctx, ParamStore& store) const;
  // The dispatcher of this model's events (see the top of this file); null
  // turns events off.
  void SetEventDispatcher(std::shared_ptr<FtEventDispatcher> dispatcher);
  const std::shared_ptr<FtEventDispatcher>& event_dispatcher() const;

  FtRecurrentState NewState() const;
  // x, y: [N, C]; memory: [N, S, memory_dim] and memory_lengths, read on the
  // first step of `state` only.
  absl::Status Step(const Context& ctx, ParamStore& store,
                    TensorView<const float> x, TensorView<const float> memory,
                    const LengthMask& memory_lengths, FtRecurrentState& state,
                    TensorView<float> y);

 private:
  explicit FtRecurrentDecoder(std::unique_ptr<FtStack> stack);
  std::unique_ptr<FtStack> stack_;
};

}  // namespace ftx

#endif  // FTX_MODELS_FT_TRANSFORMERS_H_
