// performer-pytorch 1.1.4 models (Choromanski et al. 2020, "Rethinking
// Attention with Performers"; SEMANTICS.md sections 3.1-3.3):
// Performer (the block stack), PerformerLM (token model) and PerformerEncDec
// (performer_enc_dec.py), assembled from ftx's attention and layers.
//
// Stack (Performer): for every layer a pair of branches (f, g), both
// [B, T, C] -> [B, T, C]:
//   f = wrap(shift(SelfAttention(x)))   g = wrap(shift(FeedForward(x)))
//   cross_attend: each pair is followed by (wrap(CrossAttention), wrap(FF)).
//   wrap: PreLayerNorm fn(LayerNorm(x)) (default), PreScaleNorm
//         fn(x / max(|x|, 1e-5) * g) with g = 1 (use_scalenorm), or ReZero
//         g * fn(x) with g = 1e-3 (use_rezero).
//   shift (shift_tokens): PreShiftTokens with shifts (0, 1) causal or
//         (-1, 0, 1); masked positions zeroed in the attention branch only
//         (the mask is routed to f).
//   Sequential: x += f(x); x += g(x). Reversible (layers/reversible.h):
//   x1 = x2 = x; y1 = x1 + f(x2); y2 = x2 + g(y1); out = y1 + y2.
//
// SelfAttention / CrossAttention (performer's Attention):
//   q = x Wq^T (+ bq), k = c Wk^T (+ bk), v = c Wv^T (+ bv), c = context or x,
//   heads [0, H - local) (global): with a mask (self: `mask`, cross:
//     `context_mask`) V rows of padded keys are zeroed; with layer positions
//     (PerformerLM's rotary, self-attention only) q and k get the interleaved
//     rotary at positions 0 .. T-1 (rotate_every_two); then FAVOR+
//     (attention/favor.h: softmax or generalized kernel, no_projection,
//     causal as configured; cross-attention is never causal).
//   heads [H - local, H) (local, self-attention only): local-attention
//     1.4.4's LocalAttention(window_size, causal, autopad, look_backward 1,
//     look_forward = not causal, rel_pos_emb_config) with `mask` as its
//     input_mask: attention/local.h's "local-windowed" with rel_pos_emb (the
//     half-split rotary over E at positions 0 .. T-1, scale E^-1/2).
//   out = dropout(concat_heads(global, local) Wo^T (+ bo)).
//
// PerformerLM:
//   x = token_emb[tokens] + positions; x = dropout(x)   (emb_dropout)
//   positions: rotary_position_emb (default): the [sin | cos] sinusoid of
//     width C (layers/sinusoidal_positions.h) and the layer rotary above;
//     axial_position_emb: layers/axial_positions.h, summed, shape default
//     (ceil(max_seq_len / 64), 64); otherwise learned absolute positions.
//   x = Performer(x); x = LayerNorm(x)
//   logits = x Wout^T + bout, or x token_emb^T with tie_embed.
//
// Projection redraw (performer's ProjectionUpdater): every training Forward
// of the stack first checks calls_since_last_redraw >= interval; if so every
// FAVOR module redraws its projection and the counter resets to 0, otherwise
// the counter goes up by 1. feature_redraw_interval = 0 never redraws
// (fix_projection_matrices_). The projections [nb_features, dim_head] are
// ParamStore buffers (ParamShape::trainable false) under their state_dict
// keys (".fast_attention.projection_matrix"): InitParams writes the draw of
// config.seed, every Forward reads them from the store (a redraw writes the
// new ones back), so they are saved, loaded and converted with the weights;
// so is the counter, a buffer [1] "proj_updater.calls_since_last_redraw" of
// the stack (an int64 scalar in the reference).
//
// Parameter names are performer-pytorch's state_dict keys ("token_emb.weight",
// "performer.net.layers.0.0.norm.weight",
// "performer.net.layers.0.0.fn.to_q.weight", reversible
// "performer.net.blocks.0.f.net.fn.to_q.weight", ...), so the state-dict map
// (models/performer_state_dict.h) is an identity plus ignored buffers. ReZero's
// g is a scalar there and [1] here.
//
// Deliberate differences from the reference:
//   - The local heads follow local-attention 1.4.4 (the version pinned for
//     the fixtures; performer-pytorch leaves it unpinned). Later versions
//     (>= 1.5) mask keys only, and 1.11 rotates queries inside the window
//     block, which shifts the rotary of non-causal windows by window_size.
//   - Dropout masks come from ftx's Philox streams (seeded per call), not
//     torch's generator; eval-mode results are unaffected.
//   - The reversible stack's backward rebuilds activations as performer does;
//     nothing needs RNG replay because ftx dropout is a function of its seed.
//
// Gradient convention: Backward writes activation gradients (=) and
// accumulates parameter gradients in the ParamStore (+=). CPU only; a CUDA
// context is Unimplemented.
#ifndef FTX_MODELS_PERFORMER_H_
#define FTX_MODELS_PERFORMER_H_

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "attention/attention.h"
#include "attention/mask.h"
#include "kernels/activation/activation.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor.h"
#include "kernels/base/tensor_view.h"
#include "layers/layernorm.h"
#include "layers/recompute.h"
#include "models/param_store.h"

namespace ftx {

// performer-pytorch's Performer(...) arguments, with its defaults.
struct PerformerConfig {
  int64_t dim = 0;        // C
  int64_t depth = 0;      // layers (pairs of branches)
  int64_t heads = 8;      // H
  int64_t dim_head = 64;  // E = D per head
  // Local heads per layer: one value for every layer or one per layer.
  std::vector<int64_t> local_attn_heads = {0};
  int64_t local_window_size = 256;
  bool causal = false;
  int64_t ff_mult = 4;
  std::optional<int64_t> nb_features;      // default int(E ln E)
  int64_t feature_redraw_interval = 1000;  // training forwards; 0 never
  bool reversible = false;
  int64_t ff_chunks = 1;
  bool generalized_attention = false;
  Activation kernel_fn = Activation::kRelu;
  bool use_scalenorm = false;
  bool use_rezero = false;
  bool ff_glu = false;
  float ff_dropout = 0.0f;
  float attn_dropout = 0.0f;
  bool cross_attend = false;
  bool no_projection = false;
  bool auto_check_redraw = true;
  bool qkv_bias = true;
  bool attn_out_bias = true;
  bool shift_tokens = false;
  uint64_t seed = 0;  // initialisation and projection draws
};

// InvalidArgument naming the first bad field.
absl::Status ValidatePerformerConfig(const PerformerConfig& config);

// Per-call inputs of the stack.
struct PerformerInputs {
  LengthMask mask;  // [B] lengths of x (performer's `mask`), or empty
  // [B, S, C] for cross_attend stacks; empty otherwise.
  TensorView<const float> context;
  LengthMask context_mask;    // [B] lengths of the context, or empty
  bool layer_rotary = false;  // PerformerLM's layer_pos_emb (rotary)
  bool training = false;      // dropout and projection redraw
  uint64_t seed = 0;          // dropout masks
};

class Performer {
 public:
  static absl::StatusOr<std::unique_ptr<Performer>> Create(
      const PerformerConfig& config);
  ~Performer();

  const PerformerConfig& config() const { return config_; }
  // Branch pairs: depth, or 2 depth with cross_attend.
  int64_t num_layers() const;
  // Local heads of layer `layer` (< depth).
  int64_t LocalHeads(int64_t layer) const;

  // Names relative to the stack ("net.layers.0.0.norm.weight"), in
  // state_dict order.
  std::vector<ParamShape> ParamShapes() const;
  // torch's initialisation (Linear U(+-1/sqrt(fan_in)), LayerNorm 1 / 0,
  // ScaleNorm g = 1, ReZero g = 1e-3) from config.seed.
  absl::Status InitParams(const Context& ctx, ParamStore& store,
                          absl::string_view prefix) const;

  // The FAVOR projection buffers (in ParamShapes, not trainable): names
  // relative to the stack
  // ("net.layers.0.0.fn.fast_attention.projection_matrix"), one per attention
  // branch in order.
  std::vector<std::string> ProjectionNames() const;
  // The local heads' rotary tables "...local_attn.rel_pos.inv_freq"
  // [dim_head / 2] of the reference state_dict, relative to the stack; ftx
  // recomputes them.
  std::vector<std::string> LocalRotaryNames() const;

  // performer's fix_projection_matrices_: never redraw again.
  void FixProjectionMatrices() { config_.feature_redraw_interval = 0; }

  // x, y: [B, T, C], contiguous, not overlapping.
  absl::Status Forward(const Context& ctx, ParamStore& store,
                       absl::string_view prefix, TensorView<const float> x,
                       const PerformerInputs& inputs, TensorView<float> y,
                       bool save_for_backward);
  // d_y, d_x: [B, T, C] (=); d_context: [B, S, C] (=) for cross_attend stacks,
  // or empty to skip. Needs a saving Forward just before, whose input views
  // must still be alive.
  absl::Status Backward(const Context& ctx, ParamStore& store,
                        absl::string_view prefix, TensorView<const float> d_y,
                        TensorView<float> d_x, TensorView<float> d_context);

 private:
  class Branch;
  struct Call;
  explicit Performer(const PerformerConfig& config);
  absl::Status Build();

  PerformerConfig config_;
  std::vector<std::unique_ptr<Branch>> branches_;  // f0, g0, f1, g1, ...
  std::unique_ptr<Block> reversible_;
  BlockCache reversible_cache_;
  std::unique_ptr<Call> call_;
  bool saved_ = false;
  PerformerInputs last_inputs_;
  // Sequential: the input of every branch plus the output; reversible: x.
  std::vector<Tensor> activations_;
  Tensor d_current_, d_branch_;
};

// performer-pytorch's PerformerLM(...) arguments. `performer` holds the stack
// arguments with PerformerLM's defaults (qkv_bias and attn_out_bias false).
struct PerformerLMConfig {
  int64_t num_tokens = 0;   // V
  int64_t max_seq_len = 0;  // T <= max_seq_len
  PerformerConfig performer = LanguageModelStackDefaults();
  float emb_dropout = 0.0f;
  bool tie_embed = false;
  bool rotary_position_emb = true;
  bool axial_position_emb = false;
  // {0, 0}: (ceil(max_seq_len / 64), 64).
  std::array<int64_t, 2> axial_position_shape = {0, 0};

  static PerformerConfig LanguageModelStackDefaults();
};

absl::Status ValidatePerformerLMConfig(const PerformerLMConfig& config);

// Reads a config from a JSON object whose keys are PerformerLM's argument
// names (models/configs/performer_lm.json): num_tokens, max_seq_len, dim,
// depth, heads, dim_head, local_attn_heads (integer or array), ...,
// kernel_fn (a kernels/activation name), nb_features and
// feature_redraw_interval (integer or null), axial_position_shape (array of
// two integers), plus "seed". InvalidArgument naming the key for malformed
// JSON, unknown keys or wrong types; the result is not validated.
absl::StatusOr<PerformerLMConfig> PerformerLMConfigFromJson(
    absl::string_view json);

struct PerformerLMInputs {
  TensorView<const int32_t> tokens;  // [B, T], each in [0, num_tokens)
  LengthMask mask;                   // [B] or empty
  TensorView<const float> context;   // [B, S, C], cross_attend only
  LengthMask context_mask;
  bool return_encodings = false;  // output [B, T, C] after the final norm
  bool training = false;
  uint64_t seed = 0;
};

class PerformerLM {
 public:
  // Every parameter name gets `param_prefix` (PerformerEncDec uses "enc." and
  // "dec.net.").
  static absl::StatusOr<std::unique_ptr<PerformerLM>> Create(
      const PerformerLMConfig& config, absl::string_view param_prefix = "");
  ~PerformerLM();

  const PerformerLMConfig& config() const { return config_; }
  const std::string& param_prefix() const { return prefix_; }
  Performer& performer() { return *performer_; }
  const Performer& performer() const { return *performer_; }

  std::vector<ParamShape> ParamShapes() const;
  // token_emb and positions N(0, 1) (nn.Embedding, axial), Linear U(+-1 /
  // sqrt(fan_in)), the stack as Performer::InitParams.
  absl::Status InitParams(const Context& ctx, ParamStore& store) const;

  // out: logits [B, T, V], or [B, T, C] with return_encodings.
  // InvalidArgument for T > max_seq_len, tokens out of range or bad shapes.
  absl::Status Forward(const Context& ctx, ParamStore& store,
                       const PerformerLMInputs& inputs, TensorView<float> out,
                       bool save_for_backward);
  // d_out: the shape of Forward's out. d_context (=) or empty.
  absl::Status Backward(const Context& ctx, ParamStore& store,
                        TensorView<const float> d_out,
                        TensorView<float> d_context = {});

 private:
  PerformerLM(const PerformerLMConfig& config, absl::string_view prefix,
              std::unique_ptr<Performer> performer);
  // The positions added to the token embeddings, by kind.
  enum class Positions { kRotary, kAxial, kAbsolute };
  Positions positions() const;
  std::array<int64_t, 2> AxialShape() const;

  PerformerLMConfig config_;
  std::string prefix_;
  std::unique_ptr<Performer> performer_;
  std::vector<int32_t> tokens_;
  int64_t batch_ = 0, length_ = 0;
  bool return_encodings_ = false;
  bool saved_ = false;
  PerformerLMInputs last_inputs_;
  Tensor embedded_, stack_out_, normed_;
  LayerNormCache norm_cache_;
  Tensor d_normed_, d_stack_out_, d_embedded_;
};

// performer_enc_dec.py's PerformerEncDec: an encoder PerformerLM and a
// decoder PerformerLM forced to causal = true, cross_attend = true, sharing
// dim and no_projection. Parameter names "enc.*" and "dec.net.*" (the decoder
// sits in an AutoregressiveWrapper). Forward gives the decoder logits of
// `seq_out` (the wrapper's net(seq_out[:, :-1], ...) before its cross-entropy)
// with the encodings (enc(seq_in, mask = enc_mask, return_encodings)) as
// context and enc_mask as context_mask. tie_token_embeds is not supported.
struct PerformerEncDecConfig {
  PerformerLMConfig enc;
  PerformerLMConfig dec;
};

absl::Status ValidatePerformerEncDecConfig(const PerformerEncDecConfig& config);

struct PerformerEncDecInputs {
  TensorView<const int32_t> seq_in;   // [B, S]
  LengthMask enc_mask;                // [B] or empty
  TensorView<const int32_t> seq_out;  // [B, T] decoder input
  bool training = false;
  uint64_t seed = 0;
};

class PerformerEncDec {
 public:
  static absl::StatusOr<std::unique_ptr<PerformerEncDec>> Create(
      const PerformerEncDecConfig& config);

  const PerformerEncDecConfig& config() const { return config_; }
  PerformerLM& enc() { return *enc_; }
  PerformerLM& dec() { return *dec_; }
  const PerformerLM& enc() const { return *enc_; }
  const PerformerLM& dec() const { return *dec_; }

  std::vector<ParamShape> ParamShapes() const;
  absl::Status InitParams(const Context& ctx, ParamStore& store) const;

  // logits: [B, T, V_dec].
  absl::Status Forward(const Context& ctx, ParamStore& store,
                       const PerformerEncDecInputs& inputs,
                       TensorView<float> logits, bool save_for_backward);
  // Parameter gradients of both models (+=).
  absl::Status Backward(const Context& ctx, ParamStore& store,
                        TensorView<const float> d_logits);

 private:
  PerformerEncDecConfig config_;
  std::unique_ptr<PerformerLM> enc_, dec_;
  Tensor encodings_, d_encodings_;
};

}  // namespace ftx

#endif  // FTX_MODELS_PERFORMER_H_
