// An x-transformers-style language model (SEMANTICS.md sections 6.1, 6.4, 6.6),
// assembled from ftx's layers and any registered attention mechanism:
//
//   e = token_emb[tokens] + pos_emb[t] * emb_dim^-0.5  (TransformerWrapper)
//   x = project_emb(e)                     Linear(emb_dim, dim), when emb_dim
//                                          != dim
//   x = cat(memory_tokens, x)              num_memory_tokens > 0 (masks are
//                                          left-padded with True)
//   bias = rel_pos()                       T5, ALiBi or dynamic (MLP) score
//                                          bias [H, T, T], one module shared
//                                          by every 'a'
//   outer = s x                            resi_dual
//   for each sublayer i (layer_types, see XTransformersLayerTypes):
//     residual = x
//     x = norm_i(x)                        pre-norm only (not on attention
//                                          sublayers with use_qk_norm_attn)
//     x = shift_tokens(x)                  shift_tokens > 0 (the padding mask
//                                          only for attention blocks)
//     out = block_i(x[, context])          self-attention (+ bias, + the
//                                          previous scores with residual_attn,
//                                          keys/values from cat(mems[k], x)
//                                          with Transformer-XL memories, the
//                                          forgetful causal mask of each row
//                                          with mask_prob in training),
//                                          cross-attention (+ the previous
//                                          cross scores with
//                                          cross_residual_attn) or
//                                          feed-forward; with
//                                          weight_tie_layers block i shares
//                                          the parameters of block
//                                          i % len(block)
//     out = 0.5 out                        macaron, feed-forward blocks
//     out = g_i * out                      ReZero only (g_i initialised to 0)
//     outer += s out                       resi_dual
//     out = post_branch_norm_i(out)        sandwich_norm, or attention
//                                          sublayers with use_qk_norm_attn
//     x = residual_fn(out, residual)       out + residual; GRU gating
//                                          (gate_residual) and/or a scaled
//                                          skip path (scale_residual)
//     x = norm_i(x)                        post-norm, except the last sublayer
//                                          (unless resi_dual)
//   x = x + LayerNorm(outer)               resi_dual (stack's final_norm.*)
//   x = LayerNorm(x)                       final norm (a LayerNorm; off with
//                                          final_norm = false)
//   x = x[:, num_memory_tokens:]           memory tokens stripped
//   logits = x W^T + b                     to_logits; x token_emb^T with
//                                          tie_embedding; x itself with
//                                          return_embeddings
//
// This is x-transformers 0.26.6's AttentionLayers / TransformerWrapper order of
// operations: the post-norm stack skips the last sublayer's norm because the
// wrapper's final LayerNorm follows; use_rezero replaces every sublayer norm by
// the identity, as 0.26.6 does (so at initialisation every sublayer is the
// identity). Encoder: causal = false; Decoder: causal = true (AttnMask::Causal
// in every self-attention). Learned absolute positions are turned off when
// rotary_pos_emb or rel_pos_bias is set (x-transformers' has_pos_emb; ALiBi
// keeps them). The position biases are x-transformers 0.26.6's: T5
// (layers/t5_relative_bias.h, scale sqrt(dim_head)) and ALiBi
// (layers/alibi.h, version 0.26.6: causal stacks a fixed key-index bias,
// non-causal stacks the learned bidirectional form); ScaleNorm is the 0.26.6
// variant. The models/x_state_dict.h maps move weights to and from
// x-transformers 0.26.6 state_dicts; tests/parity/x_transformers_test.cc
// checks logits and every parameter gradient against it.
//
// Deliberate differences from x-transformers: the attention projections are
// fast-transformers' AttentionLayer (attention/attention_layer.h) without
// biases, as x-transformers' to_q / to_k / to_v / to_out; rotary turns Q and
// K, and V too with rotary_rotate_values (0.26.6's behaviour and the default;
// the quirk was removed in 1.20); the inner attention is any registered
// mechanism built by name (attention/builder.h), and a mechanism with a
// "causal" option gets the stack's causal flag unless the options set it
// (x-transformers' attn_sparse_topk is "exact-topk" with sparse_topk_ties).
// Mechanisms that own trainable parameters keep them (and their gradients)
// inside the mechanism, outside the ParamStore, except talking heads
// (attn_talking_heads), whose mixings the stack keeps in the ParamStore and
// copies into the mechanism on every Forward (gradients back on Backward).
// Masked scores are -inf, not -finfo.max: a padded query row (all keys masked)
// gives 0 here and a uniform average there. The position biases cannot be
// combined with attn_num_mem_kv (0.26.6 biases the memory columns as key
// positions 0 .. M-1 and shifts the sequence's; ftx would leave them unbiased).
// Later x-transformers options without 0.26.6 parity: weight_tie_layers
// (ALBERT-style tying, 1.21+) and mask_prob (forgetful causal masking,
// AutoregressiveWrapper 1.2.1+, here a stack option). dynamic_pos_bias and
// cross_residual_attn are 0.26.6's (tests/parity/x_stack_extra_test.cc).
// Not available: position_infused_attn; Transformer-XL
// memories with rotary or the position biases (0.26.6 offsets their
// positions by the memory length).
//
// Parameter names (hierarchical, regular; state_dict maps to the reference
// libraries are separate):
//   token_emb.weight [V, E]                         kaiming_normal (fan_in E)
//   pos_emb.emb.weight [max_seq_len, E]              N(0, 1), when used
//   project_emb.weight [C, E], project_emb.bias [C]  emb_dim E != dim C
//   memory_tokens [M, C]                             N(0, 1), M > 0
//   attn_layers.rel_pos.relative_attention_bias.weight [buckets, H]  T5
//   attn_layers.rel_pos.learned_logslopes ...        learned ALiBi
//   attn_layers.rel_pos.mlp.{k}.0.weight ...         dynamic_pos_bias MLP
//   attn_layers.layers.{i}.norm.{weight,bias|g}      pre-norm or post-norm
//   attn_layers.layers.{i}.post_branch_norm.*        sandwich_norm
//   attn_layers.layers.{i}.rezero.g [1]              use_rezero
//   attn_layers.layers.{i}.residual.residual_scale, .gru.* scale_residual,
//                                                    gate_residual
//   attn_layers.layers.{i}.attn.head_scale_params, to_v_gate.*,
//     qk_norm_scale, pre/post_softmax_talking_heads.weight  attn_* options
//   attn_layers.layers.{i}.attn.query_projection.weight ... out_projection,
//     memory_keys, memory_values                     'a' sublayers
//   attn_layers.layers.{i}.cross_attn.*              'c' sublayers
//   attn_layers.layers.{i}.ff.net.0.0.weight ...     'f' sublayers
//   norm.weight, norm.bias [C]                       final LayerNorm
//   to_logits.weight [V, C], to_logits.bias [V]      torch Linear init;
//                                                    none with tie_embedding
//
// Gradient convention: Backward accumulates every parameter gradient into the
// ParamStore (+=); the context gradient is written (=).
//
// Example:
//   FTX_ASSIGN_OR_RETURN(auto model, TransformerWrapper::Create(config,
//                                                               registry));
//   FTX_ASSIGN_OR_RETURN(ParamStore store,
//                        ParamStore::Create(model->ParamShapes()));
//   FTX_RETURN_IF_ERROR(model->InitParams(ctx, store));
//   FTX_RETURN_IF_ERROR(model->Forward(ctx, store, {.tokens = tokens},
//                                      logits, /*save_for_backward=*/true));
//   FTX_RETURN_IF_ERROR(model->Backward(ctx, store, d_logits));
//
// Step-wise decoding (decoder-only stacks whose self-attention has a recurrent
// form, attention/recurrent.h: "full" keeps a KV cache, "causal-linear" and
// "favor" running sums ("linear" too, whose step form is causal linear
// attention), "local" a ring buffer): Step consumes one token per sequence
// at position t = state.position() and returns the logits Forward gives at
// position t of the same prefix. Per
// sublayer it runs the norm, the Q/K/V projections of the single token,
// rotary at position t, the mechanism's RecurrentAttention::Step, the out
// projection, ReZero and the residual, or the feed-forward in eval mode.
// Grouped kv heads are expanded per step (query head h reads kv head
// h % attn_kv_heads, as AttentionLayer). Not supported (InvalidArgument
// naming why, from StepSupport): encoders, cross_attend, attn_num_mem_kv > 0,
// mechanisms without a recurrent form, and "favor" unless its key_stabilizer
// is "zero" (the sequence-max stabiliser looks at future keys). A "favor"
// decoder copies the parallel mechanism's current projection when the state
// is created. Also not step-wise: shift_tokens, rel_pos_bias,
// alibi_pos_bias, dynamic_pos_bias, num_memory_tokens, residual_attn,
// resi_dual, attn_qk_norm, attn_talking_heads, attn_head_scale,
// attn_gate_values, attn_on_attn, use_qk_norm_attn, gate_residual and
// scale_residual.
//
//   FTX_ASSIGN_OR_RETURN(DecodeState state, model->NewDecodeState(batch));
//   for (...) FTX_RETURN_IF_ERROR(model->Step(ctx, store, tokens, state,
//                                             logits));  // [B] -> [B, V]
#ifndef FTX_MODELS_TRANSFORMER_H_
#define FTX_MODELS_TRANSFORMER_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "attention/attention.h"
#include "attention/attention_layer.h"
#include "attention/mask.h"
#include "attention/recurrent.h"
#include "attention/registry.h"
#include "kernels/activation/activation.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor.h"
#include "kernels/base/tensor_view.h"
#include "layers/alibi.h"
#include "layers/dynamic_position_bias.h"
#include "layers/feed_forward.h"
#include "layers/layernorm.h"
#include "layers/memory_tokens.h"
#include "layers/resi_dual.h"
#include "layers/residual.h"
#include "layers/t5_relative_bias.h"
#include "models/param_store.h"

namespace ftx {

enum class NormType { kLayerNorm, kRMSNorm, kScaleNorm };

struct TransformerConfig {
  // AttentionLayers.
  int64_t dim = 0;        // C
  int64_t depth = 0;      // blocks of ('a', ['c',] 'f')
  int64_t heads = 8;      // H
  int64_t dim_head = 64;  // E = D per head
  bool causal = false;    // Decoder (true) or Encoder (false)
  bool cross_attend = false;
  // x-transformers CrossAttender (only_cross): blocks ('c', 'f') without
  // self-attention; needs cross_attend.
  bool only_cross = false;
  int64_t context_dim = 0;  // width of the cross-attention context; 0 = dim
  // Inner attention of the self-attention sublayers: a registered name and
  // builder options (attention/builder.h).
  std::string attention = "full";
  std::map<std::string, OptionValue> attention_options;
  // Inner attention of the cross-attention sublayers (same options).
  std::string cross_attention = "full";
  NormType norm = NormType::kLayerNorm;
  bool pre_norm = true;
  bool use_rezero = false;
  bool sandwich_norm = false;  // a norm after every branch (pre_norm only)
  // Layer sequence (XTransformersLayerTypes): custom_layers ("a", "c", "f"
  // characters) wins over par_ratio, which wins over sandwich_coef; 0 / ""
  // are off. macaron prepends 'f' to the block and halves every
  // feed-forward branch.
  std::string custom_layers;
  int64_t par_ratio = 0;
  int64_t sandwich_coef = 0;
  bool macaron = false;
  // Token shifting before every branch: range(-s, s + 1) in encoders,
  // range(0, s + 1) in decoders (layers/shift_tokens.h); 0 is off.
  int64_t shift_tokens = 0;
  // T5 relative position bias shared by the self-attention sublayers.
  bool rel_pos_bias = false;
  int64_t rel_pos_num_buckets = 32;
  int64_t rel_pos_max_distance = 128;
  // ALiBi (x-transformers 0.26.6 forms, layers/alibi.h).
  bool alibi_pos_bias = false;
  int64_t alibi_num_heads = 0;  // 0: heads
  bool alibi_learned = false;
  // Dynamic position bias (layers/dynamic_position_bias.h) shared by the
  // self-attention sublayers: an MLP of width dim / 4 (integer division, >= 1)
  // and dynamic_pos_bias_mlp_depth hidden layers maps every distance i - j
  // (sign(d) log(|d| + 1) with dynamic_pos_bias_log_distance) to one score
  // bias per head, LayerNorm after each hidden Linear with
  // dynamic_pos_bias_norm. Parameters "rel_pos.mlp.*" (0.26.6 names). Not
  // with rel_pos_bias or alibi_pos_bias (0.26.6 silently prefers
  // rel_pos_bias); absolute positions stay on (0.26.6's has_pos_emb ignores
  // it).
  bool dynamic_pos_bias = false;
  bool dynamic_pos_bias_log_distance = false;
  int64_t dynamic_pos_bias_mlp_depth = 2;
  bool dynamic_pos_bias_norm = false;
  // FeedForward (ff_*).
  double ff_mult = 4.0;
  bool ff_glu = false;
  Activation ff_activation = Activation::kGelu;
  bool ff_swish = false;
  bool ff_relu_squared = false;
  // Attention (attn_*).
  bool rotary_pos_emb = false;
  int64_t rotary_emb_dim = 0;        // 0: x-transformers' max(dim_head / 2, 32)
  bool rotary_rotate_values = true;  // 0.26.6 rotates v as well
  int64_t attn_kv_heads = 0;         // 0: heads
  int64_t attn_num_mem_kv = 0;
  // x-transformers 0.26.6 Attention options, on every 'a' and 'c' sublayer.
  // attn_talking_heads runs the "talking-heads" mechanism (needs attention
  // and cross_attention "full"); its mixing weights live in the ParamStore
  // ("attn.pre_softmax_talking_heads.weight", "attn.post_softmax_talking_
  // heads.weight", [H, H, 1, 1]).
  bool attn_talking_heads = false;
  bool attn_head_scale = false;   // head_scale_params [1, H, 1, 1]
  bool attn_gate_values = false;  // to_v_gate, init weight 0, bias 1
  bool attn_on_attn = false;      // to_out = Linear(H * D, 2C) + GLU
  // Cosine-sim attention (0.26.6 use_qk_norm_attn): l2-normalised q and k,
  // learned temperature "attn.qk_norm_scale" [1, H, 1, 1] initialised to -3,
  // or -log(log2(n^2 - n)) with qk_norm_attn_seq_len n > 0; the attention
  // sublayers then have no pre-branch norm and always a post-branch norm
  // (0.26.6's layer_uses_qk_norm). Needs "full" attention.
  bool use_qk_norm_attn = false;
  int64_t qk_norm_attn_seq_len = 0;
  // RealFormer (0.26.6 residual_attn): every self-attention sublayer adds the
  // previous one's pre-softmax scores (t q.k + its own previous, before the
  // position bias and masks; memory kv columns included) to its own. Needs
  // "full" attention without attn_talking_heads.
  bool residual_attn = false;
  // The same for the cross-attention sublayers (0.26.6 cross_residual_attn):
  // every 'c' sublayer adds the previous 'c' sublayer's pre-softmax scores
  // [H, B, T, S + attn_num_mem_kv] to its own. Needs cross_attention "full"
  // without attn_talking_heads.
  bool cross_residual_attn = false;
  // ALBERT-style weight tying (x-transformers 1.21+ weight_tie_layers, no
  // 0.26.6 parity): the stack runs one block (('a', 'f'), ('a', 'c', 'f'),
  // with 'f' prepended for macaron) depth times, so sublayer i uses the
  // parameters of sublayer i % len(block) ("layers.{i % len(block)}.*"; e.g.
  // every 'a' uses layers.0.* and every 'f' layers.1.* for ('a', 'f')), and
  // every use adds its gradient to the shared parameters. ParamShapes lists
  // the first block only. Not with custom_layers, par_ratio or sandwich_coef
  // (their layer sequences have no repeated block; x-transformers asserts
  // the same). With post-norm the last sublayer still skips its norm and
  // reads the shared parameters of the others.
  bool weight_tie_layers = false;
  // Forgetful causal masking (Liu et al. 2022; x-transformers 1.2.1+
  // AutoregressiveWrapper(mask_prob), attention/forgetful_mask.h): in
  // training, every batch row hides min(int((T + 1) mask_prob), T - 1) random
  // keys among positions 1 .. T - 1 from every query of every self-attention
  // sublayer, on top of the causal mask (one draw per Forward from
  // StackInputs::seed, shared by the sublayers). Eval runs the plain causal
  // stack. The mask differs per row, so those sublayers run their attention
  // one batch row at a time. Needs a causal stack, "full" attention, and no
  // attn_num_mem_kv, residual_attn, num_memory_tokens or Transformer-XL
  // mems. In [0, 1); 0 is off. The drawn positions are Philox's, not
  // torch's (attention/forgetful_mask.h).
  double mask_prob = 0.0;
  // ResiDual (x-transformers 1.15+, layers/resi_dual.h; no 0.26.6 parity):
  // needs pre_norm = false (every sublayer, the last too, then ends with its
  // norm) and final_norm = false (the stack ends with
  // x_L + LayerNorm(outer) instead, "attn_layers.final_norm.*").
  bool resi_dual = false;
  double resi_dual_scale = 1.0;  // in (0, 1]
  // x-transformers >= 1.0 qk_norm (attention/qk_norm.h kFixedScale; no
  // 0.26.6 parity): l2norm over attn_qk_norm_groups groups, score scale
  // attn_qk_norm_scale, learned per-dimension scales "attn.qk_norm_q_scale" /
  // "attn.qk_norm_k_scale" [H, 1, E] with attn_qk_norm_dim_scale. Applied
  // after rotary (0.26.6's place; 2.x normalises before, which differs with
  // groups > 1 or the dim scale). Not with use_qk_norm_attn; needs "full".
  bool attn_qk_norm = false;
  int64_t attn_qk_norm_groups = 1;
  double attn_qk_norm_scale = 10.0;
  bool attn_qk_norm_dim_scale = false;
  // Residual connections (layers/residual.h), "layers.{i}.residual.*":
  // GRU gating, and/or a learned [C] scale of the skip path times
  // scale_residual_constant (the constant is ignored with gate_residual, as in
  // 0.26.6).
  bool gate_residual = false;
  bool scale_residual = false;
  double scale_residual_constant = 1.0;
  // TransformerWrapper.
  int64_t num_tokens = 0;  // V
  int64_t max_seq_len = 0;
  bool use_abs_pos_emb = true;  // ignored (off) with rotary_pos_emb or
                                // rel_pos_bias
  bool final_norm = true;       // the wrapper's LayerNorm
  int64_t emb_dim = 0;          // E, 0: dim; E != dim adds project_emb
  int64_t num_memory_tokens = 0;
  // Transformer-XL recurrence (layers/xl_memory.h): the memories returned
  // keep the last max_mem_len positions (0 keeps all, as 0.26.6's default);
  // shift_mem_down = k rotates the given memories left by k first.
  int64_t max_mem_len = 0;
  int64_t shift_mem_down = 0;
  bool tie_embedding = false;  // logits = x token_emb^T (needs E = dim)
  uint64_t seed = 0;           // initialisation
};

// InvalidArgument naming the first bad field ("TransformerConfig.heads must be
// >= 1, got 0"). `require_wrapper` also checks num_tokens and max_seq_len.
absl::Status ValidateTransformerConfig(const TransformerConfig& config,
                                       bool require_wrapper);

// x-transformers 0.26.6 AttentionLayers.layer_types as a string of 'a', 'c'
// and 'f': the block ('a', 'f'), ('a', 'c', 'f') with cross_attend, with 'f'
// prepended for macaron, repeated depth times; or custom_layers; or the PAR
// sequence of par_ratio; or ('a',) * s + block * (depth - s) + ('f',) * s
// for sandwich_coef = s. InvalidArgument for par_ratio outside (1, depth *
// len(block)] or too small a PAR width, sandwich_coef outside [1, depth], or
// characters other than a, c, f in custom_layers.
absl::StatusOr<std::string> XTransformersLayerTypes(
    const TransformerConfig& config);

// Reads a config from a JSON object whose keys are the TransformerConfig field
// names (models/configs/*.json); "norm" is "layernorm", "rmsnorm" or
// "scalenorm", "ff_activation" a kernels/activation name, and
// "attention_options" an object of builder options (bool, integer, float or
// string). Absent keys keep their defaults. InvalidArgument for malformed
// JSON, unknown keys or wrongly typed values, naming the key; the result is
// not validated (ValidateTransformerConfig does that).
absl::StatusOr<TransformerConfig> TransformerConfigFromJson(
    absl::string_view json);

// Per-call inputs of the stack.
struct StackInputs {
  LengthMask lengths;  // [B] self-attention padding, or empty
  // [B, S, context_dim] for cross_attend stacks; empty otherwise.
  TensorView<const float> context;
  LengthMask context_lengths;  // [B] or empty
  bool training = false;       // dropout in attention and feed-forward
  uint64_t seed = 0;           // dropout masks
  // Transformer-XL memories, one [B, M_k, C] per self-attention sublayer k
  // (empty for none): sublayer k's keys and values come from
  // cat(mems[k], its normalised input), causal stacks see all M_k memory
  // positions (AttnMask::Causal(M_k)). The memories get no gradient. Not with
  // lengths, rotary_pos_emb, rel_pos_bias, alibi_pos_bias or residual_attn
  // (InvalidArgument naming "mems").
  std::vector<TensorView<const float>> mems;
};

// The history of a step-wise decoding run of one TransformerWrapper (see
// TransformerWrapper::Step): per self-attention sublayer the mechanism's
// recurrent state, plus step buffers. Create it with NewDecodeState; it is
// tied to the model that made it.
class DecodeState {
 public:
  DecodeState(DecodeState&&) = default;
  DecodeState& operator=(DecodeState&&) = default;

  int64_t batch() const { return batch_; }
  // Tokens consumed so far: the position of the next Step's token.
  int64_t position() const { return position_; }

 private:
  friend class AttentionLayers;
  friend class TransformerWrapper;
  DecodeState() = default;

  int64_t batch_ = 0;
  int64_t position_ = 0;
  // One per sublayer; null for feed-forward sublayers.
  std::vector<std::unique_ptr<RecurrentState>> attention_states_;
  // [B, 1, C] activations (ping-pong), block input and output, post-norm sum.
  Tensor embedded_, current_, next_, normed_, branch_, sum_, stack_out_;
  Tensor final_normed_;
  // [B, 1, H * E] query; [B, 1, Hkv * E] key and value; [B, H, E] expanded
  // key and value; [B, H, E] attention output.
  Tensor query_, key_, value_, expanded_key_, expanded_value_, attended_;
  // [B, 1, E] token embedding before project_emb.
  Tensor token_embedded_;
};

// The block stack (x-transformers AttentionLayers). Parameter names are
// relative ("layers.{i}...."); Bind resolves them in a ParamStore under a
// prefix.
class AttentionLayers {
 public:
  static absl::StatusOr<std::unique_ptr<AttentionLayers>> Create(
      const TransformerConfig& config, const AttentionRegistry& registry);
  ~AttentionLayers();

  // 'a', 'c' or 'f' for every sublayer, in order.
  const std::string& layer_types() const { return layer_types_; }
  std::vector<ParamShape> ParamShapes() const;
  // Initialises this stack's parameters in `store` (named prefix + relative
  // name) from config.seed.
  absl::Status InitParams(const Context& ctx, ParamStore& store,
                          absl::string_view prefix) const;

  // x, y: [B, T, C] (y may not alias x). save_for_backward keeps what
  // Backward needs.
  absl::Status Forward(const Context& ctx, ParamStore& store,
                       absl::string_view prefix, TensorView<const float> x,
                       const StackInputs& inputs, TensorView<float> y,
                       bool save_for_backward);
  // d_y, d_x: [B, T, C] (=); d_context: [B, S, context_dim] (=) or empty to
  // skip; parameter gradients (+=). Needs a saving Forward just before,
  // whose context view must still be alive.
  absl::Status Backward(const Context& ctx, ParamStore& store,
                        absl::string_view prefix, TensorView<const float> d_y,
                        TensorView<float> d_x, TensorView<float> d_context);

  // Introspection of the last Forward (x-transformers return_hiddens): the
  // input of every self-attention ('a') sublayer, [B, T, C] each, in order.
  // Empty before a Forward.
  std::vector<TensorView<const float>> Hiddens() const;
  // x-transformers return_attn: the post-softmax attention maps [B, H, L, S]
  // of every 'a' and 'c' sublayer of the last Forward with
  // save_for_backward. FailedPrecondition without one; Unimplemented unless
  // the sublayer's mechanism is "full" (the others keep no probabilities).
  absl::StatusOr<std::vector<Tensor>> AttentionMaps() const;

  // OK when Step can run this stack; otherwise InvalidArgument naming why.
  const absl::Status& StepSupport() const { return step_support_; }
  // Fresh recurrent states for every self-attention sublayer.
  absl::Status StartDecode(DecodeState& state) const;
  // One position of every sequence: x, y [B, 1, C] (y may not alias x), at
  // position state.position() (not advanced here). Eval mode, no padding.
  // Invalidates a saved Forward.
  absl::Status Step(const Context& ctx, ParamStore& store,
                    absl::string_view prefix, TensorView<const float> x,
                    DecodeState& state, TensorView<float> y);

 private:
  struct Sublayer;
  AttentionLayers(const TransformerConfig& config, std::string layer_types);

  // The shared score bias of the self-attention sublayers [H, T, T] for the
  // forward's T (T5, ALiBi or the dynamic MLP), and its gradient; absent
  // without one.
  absl::Status PositionBiasForward(const Context& ctx, ParamStore& store,
                                   const std::string& base, int64_t length);
  absl::Status PositionBiasBackward(const Context& ctx, ParamStore& store,
                                    const std::string& base);
  // The dynamic position bias MLP's parameter views (Value) or gradient
  // views (Grad) under base + "rel_pos.".
  absl::StatusOr<DynamicPositionBiasGrads> DynamicBiasViews(
      ParamStore& store, const std::string& base, bool gradients) const;
  // mask_prob in training: draws the forgetful key masks of the B rows of
  // length T into forgetful_masks_ (sets forgetful_active_).
  absl::Status DrawForgetfulMasks(const StackInputs& inputs, int64_t batch,
                                  int64_t length);
  // Runs the attention block of self-attention sublayer `sub` one batch row
  // at a time under that row's forgetful causal mask; the backward takes the
  // forward's arguments.
  absl::Status ForgetfulAttentionForward(const Context& ctx, Sublayer& sub,
                                         const AttentionLayerParams& params,
                                         const AttentionLayerMasks& masks,
                                         TensorView<const float> hidden,
                                         TensorView<float> branch);
  absl::Status ForgetfulAttentionBackward(const Context& ctx, Sublayer& sub,
                                          const AttentionLayerParams& params,
                                          const AttentionLayerMasks& masks,
                                          TensorView<const float> hidden,
                                          TensorView<const float> d_branch,
                                          TensorView<float> d_hidden,
                                          const AttentionLayerGrads& grads);
  // InvalidArgument for memories that do not fit x or the config.
  absl::Status CheckMems(TensorView<const float> x,
                         const StackInputs& inputs) const;

  TransformerConfig config_;
  std::string layer_types_;
  std::vector<std::unique_ptr<Sublayer>> sublayers_;
  std::optional<T5RelativeBias> t5_bias_;
  std::optional<ResiDual> resi_dual_;
  // resi_dual: the outer stream [B, T, C], its final-norm statistics and
  // gradient.
  Tensor outer_, d_outer_, d_resi_branch_;
  LayerNormCache resi_dual_cache_;
  std::optional<Alibi> alibi_;
  std::optional<DynamicPositionBias> dynamic_bias_;
  DynamicPositionBiasCache dynamic_bias_cache_;
  Tensor position_bias_, d_position_bias_;
  // mask_prob in training: the forgetful causal masks of the last Forward,
  // one additive [T, T] matrix per batch row ([B, T, T]), when
  // forgetful_active_.
  Tensor forgetful_masks_;
  bool forgetful_active_ = false;
  absl::Status step_support_;
  // Forward state: the input of every sublayer plus the output, [B, T, C]
  // each; the inputs of the last call.
  std::vector<Tensor> activations_;
  StackInputs last_inputs_;
  bool saved_ = false;
  // Backward scratch, [B, T, C] each, and the context gradient of one
  // cross-attention sublayer.
  Tensor d_current_, d_sum_, d_branch_, d_hidden_, d_normed_, d_shifted_;
  Tensor d_skip_, d_combined_;  // residual function gradients
  Tensor d_context_scratch_;
};

// Per-call inputs of the wrapper.
struct TransformerInputs {
  TensorView<const int32_t> tokens;  // [B, T], each in [0, num_tokens)
  LengthMask lengths;                // [B] or empty
  TensorView<const float> context;   // cross_attend only
  LengthMask context_lengths;
  // x-transformers mems / return_mems: one memory per self-attention
  // sublayer (StackInputs::mems), or empty; shifted by shift_mem_down. With
  // return_mems, Forward leaves the next memories in mems() (the views need
  // to stay alive only during Forward).
  std::vector<TensorView<const float>> mems;
  bool return_mems = false;
  bool return_embeddings = false;  // output [B, T, C] instead of logits
  bool training = false;
  uint64_t seed = 0;
};

class TransformerWrapper {
 public:
  // InvalidArgument for a bad config (ValidateTransformerConfig) or attention
  // options the builder rejects.
  static absl::StatusOr<std::unique_ptr<TransformerWrapper>> Create(
      const TransformerConfig& config, const AttentionRegistry& registry);

  const TransformerConfig& config() const { return config_; }
  bool uses_abs_pos_emb() const {
    return config_.use_abs_pos_emb && !config_.rotary_pos_emb &&
           !config_.rel_pos_bias;
  }
  // E: the embedding width (emb_dim, or dim).
  int64_t emb_dim() const {
    return config_.emb_dim > 0 ? config_.emb_dim : config_.dim;
  }
  bool projects_emb() const { return emb_dim() != config_.dim; }
  AttentionLayers& attn_layers() { return *layers_; }
  const AttentionLayers& attn_layers() const { return *layers_; }

  std::vector<ParamShape> ParamShapes() const;
  absl::Status InitParams(const Context& ctx, ParamStore& store) const;

  // out: logits [B, T, V], or [B, T, C] with return_embeddings.
  // InvalidArgument for T > max_seq_len, tokens out of range, or bad shapes.
  absl::Status Forward(const Context& ctx, ParamStore& store,
                       const TransformerInputs& inputs, TensorView<float> out,
                       bool save_for_backward);
  // The memories after the last Forward with return_mems: per self-attention
  // sublayer k, cat(mems[k] (shifted), its input)[:, -max_mem_len:] as a new
  // [B, M', C] tensor (0.26.6 new_mems, detached).
  const std::vector<Tensor>& mems() const { return new_mems_; }

  // d_out: the shape of Forward's out. Parameter gradients accumulate in the
  // store (+=); d_context (=) or empty.
  absl::Status Backward(const Context& ctx, ParamStore& store,
                        TensorView<const float> d_out,
                        TensorView<float> d_context = {});

  // OK when the model can decode step-wise; otherwise InvalidArgument naming
  // why (see the top of this file).
  const absl::Status& StepSupport() const { return layers_->StepSupport(); }
  // A state at position 0 for `batch` sequences; StepSupport's error, or
  // InvalidArgument for batch < 1.
  absl::StatusOr<DecodeState> NewDecodeState(int64_t batch) const;
  // tokens: [B] (B = state.batch()), each in [0, num_tokens); logits: [B, V]
  // contiguous. Consumes tokens at position state.position() and advances
  // it; logits equal Forward's at that position for the same prefix.
  // InvalidArgument for bad shapes or tokens, a state of another batch size,
  // or a position at max_seq_len; Unimplemented for a CUDA context. On error
  // the state is unchanged. Invalidates a saved Forward.
  absl::Status Step(const Context& ctx, ParamStore& store,
                    TensorView<const int32_t> tokens, DecodeState& state,
                    TensorView<float> logits);

 private:
  TransformerWrapper(const TransformerConfig& config,
                     std::unique_ptr<AttentionLayers> layers,
                     MemoryTokens memory_tokens)
      : config_(config),
        layers_(std::move(layers)),
        memory_tokens_(memory_tokens) {}

  // The output projection's weight and bias: to_logits, or token_emb.weight
  // and no bias with tie_embedding.
  absl::Status LogitsParams(ParamStore& store, TensorView<float>& weight,
                            TensorView<float>& bias, bool gradients) const;

  TransformerConfig config_;
  std::unique_ptr<AttentionLayers> layers_;
  MemoryTokens memory_tokens_;
  // Forward state: tokens, embeddings [B, T, E], projected embeddings
  // [B, T, C], stack input and output [B, M + T, C], final norm output
  // [B, M + T, C] and its statistics, memory-stripped rows [B, T, C].
  std::vector<int32_t> tokens_;
  int64_t batch_ = 0, length_ = 0;
  bool return_embeddings_ = false;
  bool saved_ = false;
  LengthMask stack_lengths_;
  Tensor embedded_, projected_, stack_in_, stack_out_, normed_, stripped_;
  LayerNormCache final_norm_cache_;
  std::vector<Tensor> new_mems_;
  Tensor d_stripped_, d_normed_, d_stack_out_, d_stack_in_, d_projected_,
      d_embedded_;
};

}  // namespace ftx

#endif  // FTX_MODELS_TRANSFORMER_H_
