// linear-attention-transformer 0.19.1 (lucidrains; SEMANTICS.md sections 4
// and 7): LinearAttentionTransformer, the block stack, and
// LinearAttentionTransformerLM, the language model around it, with the
// Autopadder of autopadder.py built in; and ImageLinearAttention (images.py,
// at the end of this file). CPU only (a CUDA context is Unimplemented).
//
// LM (tokens [B, T] -> logits [B, T, V]):
//   x = token_emb[tokens] + pos[t]                     [B, T', emb_dim]
//       pos: axial (default; AxialPositionalEmbedding(emb_dim,
//            (ceil(max_seq_len / window), window)), summed), the
//            [sin | cos] table of FixedPositionalEmbedding with
//            use_rotary_emb (and interleaved rotary over dim_head of every
//            self-attention), or a learned table (scale 1)
//   x = project_in(x)                                   emb_dim != dim only
//   x = LinearAttentionTransformer(x, input_mask, context, context_mask)
//   x = project_out(x)                                  emb_dim != dim and
//                                                       not return_embeddings
//   logits = LayerNorm(x) W_out^T + b_out              or LayerNorm(x) with
//                                                       return_embeddings
// Autopadder: T' = T rounded up to pad_to_multiple = lcm(blindspot_size if
// causal else 1, local_attn_window_size if any layer has local heads else 1);
// padded tokens are 0, the input mask becomes the given lengths (all T when
// none is given) padded with false, and the output keeps the first T
// positions. Without padding the mask stays as given (none stays none).
//
// Stack: per depth a pair (f = PreNorm(attention), g = PreNorm(FF)), with
// attend_axially an axial pair (PreNorm(axial attention), PreNorm(context
// FF)) and, with receives_context, a context pair (PreNorm(context
// attention), PreNorm(context FF)), in that order. PreNorm is LayerNorm(dim)
// (eps 1e-5) on the branch input; shift_tokens puts PreShiftTokens((1, 0, -1),
// or (1, 0) causal) between the norm and the main pair's branches (LAT passes
// `input_mask`, which PreShiftTokens does not read, so nothing is zeroed before
// a shift). Sequential: x = x + f(x); x = x + g(x). Reversible:
// ReversibleSequence with the mean merge (layers/reversible.h), which rebuilds
// activations in backward.
//   attention: SelfAttention = to_q, to_k, to_v (no bias), heads split
//     [N, T, H, dim_head], rotary (use_rotary_emb), mixed local / global
//     heads (attention/mixed_heads.h, causal, blindspot_size, the layer's
//     n_local_attn_heads, local_attn_window_size, attn_dropout on the local
//     heads), to_out (with bias), dropout(attn_layer_dropout). The input mask
//     reaches both head kinds as key lengths.
//     With linformer_k > 0 (LinformerSettings(k)): lucidrains linformer 0.2.3
//     LinformerSelfAttention(dim, max_seq_len, k, heads, dim_head):
//     K' = P_k[:T]^T K, V' = P_v[:T]^T V (P [max_seq_len, k], shared by the
//     heads), softmax(Q K'^T dim_head^-0.5) with dropout(attn_dropout), V',
//     to_out with bias; masks and rotary are ignored, as in LAT. Computed
//     here with attention/full.h rather than attention/linformer.h, whose
//     mechanism needs T == seq_len and keeps [k, n] projections outside the
//     ParamStore, where LAT slices its [max_seq_len, k] parameters for
//     shorter inputs.
//   FF: FeedForward(dim) = w1 (dim -> 4 dim), GELU (erf), w2, applied in
//     ff_chunks pieces along the sequence; LAT ignores ff_glu and ff_dropout
//     here (SEMANTICS.md 4.4 quirk 1).
//   context attention: SelfAttention(receives_context) = global non-causal
//     linear attention (no local heads, no rotary) of x over the context
//     [B, S, dim], context lengths as its key mask.
//     With context_linformer_k > 0 (LinformerContextSettings(seq_len, k)):
//     LinformerSelfAttention(dim, seq_len, k, heads, dim_head) of x over the
//     context: K' = P_k[:S]^T to_k(context), V' = P_v[:S]^T to_v(context)
//     (P [seq_len, k], S <= seq_len), then as the Linformer above; the
//     context mask is ignored, as in LAT.
//   axial attention (attend_axially): FoldAxially(local_attn_window_size =
//     W, SelfAttention(dim, heads, causal)): x [B, T, dim] is folded into W
//     sequences [B W, T / W, dim], column c holding the positions c, c + W,
//     c + 2 W, ..., and attended by global linear attention (causal: causal
//     linear attention with blindspot 1) with dim / heads per head, no local
//     heads and no rotary; the input mask folds into per-column lengths
//     ceil((L - c) / W). T' must be a multiple of W (LAT's reshape; its
//     Autopadder pads to W only with local heads). to_out bias and
//     dropout(attn_layer_dropout) as the self-attention.
//   context FF (also the axial pair's): FeedForward(dim, glu = ff_glu
//     (act(first half) * second), dropout = ff_dropout), chunked.
//   PKM: the main pair's FF of every layer numbered in pkm_layers (LAT counts
//     layers from 1) is product-key-memory 0.1.10's PKM(dim)
//     (layers/product_key_memory.h, PkmQueryNorm::kBatchNormRunning: the
//     query BatchNorm1d; see training mode below), not
//     chunked, and without the input mask (LAT routes input_mask to the
//     attention branches only). LAT builds PKM(dim) with the package defaults
//     (heads 4, num_keys 128, topk 32, dim_head 256) and does not pass its
//     own pkm_num_keys argument on; ftx's pkm_heads, pkm_num_keys, pkm_topk
//     and pkm_dim_head default to those values and match LAT at their
//     defaults (a LAT config setting pkm_num_keys still has 128 keys).
//     Training mode (LatInputs.training, LAT's module.train()) normalises the
//     PKM queries with the batch statistics of the B T' rows (padding
//     included, as in LAT), updates running_mean / running_var in the
//     ParamStore in place (momentum 0.1, unbiased variance) and adds 1 to
//     num_batches_tracked; eval mode uses them. Reversible stacks re-run the
//     PKM branch in backward, which, as in LAT's reversible.py, updates the
//     running statistics and the counter a second time.
//
// Local heads follow local-attention 1.4.4 (attention/local.h; the parity
// fixtures pin it), which masks padded queries as well as padded keys.
// local-attention >= 1.5 masks keys only: outputs at unpadded positions agree
// with it, except that shift_tokens in a non-causal model moves a padded
// position's features (which then differ) into the last unpadded one.
//
// Parameter names are LAT's state_dict keys, e.g.
//   token_emb.weight [V, emb_dim]                        N(0, 1)
//   pos_emb.weights.0 [1, R, 1, emb_dim], pos_emb.weights.1 [1, 1, W, emb_dim]
//                                                        N(0, 1) (axial)
//   pos_emb.emb.weight [max_seq_len, emb_dim]            N(0, 1) (learned)
//   transformer.project_in.{weight,bias}, transformer.project_out.*
//   transformer[.fn].layers.layers.{j}.0.norm.{weight,bias}
//   transformer[.fn].layers.layers.{j}.0.fn[.fn].to_q.weight ... to_out.bias
//   transformer[.fn].layers.layers.{j}.0.fn.proj_k, proj_v [max_seq_len, k]
//     (context Linformer: [seq_len, k])
//   transformer[.fn].layers.layers.{j}.0.fn.fn.to_q.weight ... to_out.bias
//     axial attention ([dim, dim] projections), the extra ".fn" FoldAxially
//   transformer[.fn].layers.layers.{j}.1.fn[.fn].fn.w1.{weight,bias}, w2.*
//   transformer[.fn].layers.layers.{j}.1.fn[.fn].to_queries.weight,
//     norm.fn.{weight,bias}, keys, values.weight          PKM layers, and
//     the buffers (ParamShape::trainable false) norm.fn.running_mean,
//     norm.fn.running_var [2 H d] and norm.fn.num_batches_tracked [1]
//     (torch's int64 scalar; models/lat_state_dict.h converts it)
//   (reversible: layers.blocks.{j}.f.net.* and layers.blocks.{j}.g.net.*)
//   norm.{weight,bias}, out.{weight,bias}
// where j counts pairs (one to three per depth: main, axial, context) and the
// extra ".fn" is PreShiftTokens. Linears use torch's U(+-1/sqrt(fan_in)) and
// the Linformer projections U(+-1/sqrt(k)). The rotary tables (pos_emb.emb,
// layer_pos_emb.emb) are buffers LAT saves; ftx recomputes them (the
// state-dict map writes them on export).
//
// Gradient convention: Backward accumulates every parameter gradient into the
// ParamStore (+=); the context gradient is written (=).
//
// Example:
//   FTX_ASSIGN_OR_RETURN(auto model, LinearAttentionTransformerLM::Create(c));
//   FTX_ASSIGN_OR_RETURN(ParamStore store,
//                        ParamStore::Create(model->ParamShapes()));
//   FTX_RETURN_IF_ERROR(model->InitParams(ctx, store));
//   FTX_RETURN_IF_ERROR(model->Forward(ctx, store, {.tokens = tokens}, logits,
//                                      /*save_for_backward=*/true));
//   FTX_RETURN_IF_ERROR(model->Backward(ctx, store, d_logits));
#ifndef FTX_MODELS_LAT_H_
#define FTX_MODELS_LAT_H_

#include <algorithm>
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
#include "kernels/base/context.h"
#include "kernels/base/tensor.h"
#include "kernels/base/tensor_view.h"
#include "layers/layernorm.h"
#include "layers/recompute.h"
#include "models/param_store.h"

namespace ftx {

struct LatConfig {
  int64_t num_tokens = 0;  // V
  int64_t dim = 0;         // C
  int64_t depth = 0;
  int64_t max_seq_len = 0;
  int64_t heads = 8;      // H
  int64_t dim_head = 64;  // E = D per head
  bool causal = false;
  int64_t emb_dim = 0;  // 0 means dim
  bool reversible = false;
  int64_t ff_chunks = 1;
  bool ff_glu = false;      // context FF only (LAT quirk)
  float ff_dropout = 0.0f;  // context FF only (LAT quirk)
  float attn_layer_dropout = 0.0f;
  float attn_dropout = 0.0f;
  int64_t blindspot_size = 1;
  // One entry for every layer, or one entry per layer (LAT's int or tuple).
  std::vector<int64_t> n_local_attn_heads = {0};
  int64_t local_attn_window_size = 128;
  bool return_embeddings = false;
  bool receives_context = false;
  // Layers (numbered from 1) whose FF is a PKM, and PKM(dim)'s sizes.
  std::vector<int64_t> pkm_layers;
  int64_t pkm_heads = 4;
  int64_t pkm_num_keys = 128;
  int64_t pkm_topk = 32;
  int64_t pkm_dim_head = 256;  // sub-keys of dim_head / 2
  // Per layer, an extra pair of axial attention and FF (see the top).
  bool attend_axially = false;
  int64_t linformer_k = 0;  // LinformerSettings(k); 0 = none
  // LinformerContextSettings(seq_len, k) of the context attention; k = 0 =
  // none.
  int64_t context_linformer_seq_len = 0;
  int64_t context_linformer_k = 0;
  bool use_axial_pos_emb = true;
  bool use_rotary_emb = false;
  bool shift_tokens = false;
  bool autopad = true;  // the Autopadder (AutoregressiveWrapper's default)
  uint64_t seed = 0;    // initialisation

  int64_t EmbDim() const { return emb_dim > 0 ? emb_dim : dim; }
  // Whether layer `layer` (from 0) has a PKM instead of its FF.
  bool UsesPkm(int64_t layer) const {
    return std::find(pkm_layers.begin(), pkm_layers.end(), layer + 1) !=
           pkm_layers.end();
  }
  int64_t LocalHeads(int64_t layer) const {
    return n_local_attn_heads.size() == 1 ? n_local_attn_heads[0]
                                          : n_local_attn_heads[layer];
  }
};

// InvalidArgument naming the first bad field (as LAT's asserts: heads and
// local heads, max_seq_len divisible by the window when there are local
// heads, no Linformer in causal models, pkm_layers in [1, depth], dim
// divisible by pkm_heads, dim divisible by heads with attend_axially or
// context_linformer_k, no rotary with attend_axially, ...).
absl::Status ValidateLatConfig(const LatConfig& config);

// Reads a config from a JSON object whose keys are the LatConfig field names
// (models/configs/linear_attention_lm.json); n_local_attn_heads and
// pkm_layers take an integer or an array of integers; pkm_heads,
// pkm_num_keys, pkm_topk and pkm_dim_head are integers. LAT's
// "linformer_settings" {"k": k} and "context_linformer_settings"
// {"seq_len": s, "k": k} (or null) set linformer_k and
// context_linformer_seq_len / context_linformer_k. InvalidArgument for
// malformed JSON, unknown keys or wrongly typed values, naming the key; the
// result is not validated.
absl::StatusOr<LatConfig> LatConfigFromJson(absl::string_view json);

// pad_to_multiple of LAT's LinearAttentionTransformer (see the top).
int64_t LatPadToMultiple(const LatConfig& config);

// Per-call inputs of the stack (already padded to pad_to_multiple).
struct LatStackInputs {
  LengthMask lengths;               // input_mask as lengths [B], or empty
  TensorView<const float> context;  // [B, S, dim], receives_context only
  LengthMask context_lengths;       // context_mask as lengths [B], or empty
  bool training = false;
  uint64_t seed = 0;
};

class LatBranch;
class ReversibleSequence;

// The block stack; parameter names relative to it ("layers.layers....").
class LinearAttentionTransformer {
 public:
  // ValidateLatConfig's errors.
  static absl::StatusOr<std::unique_ptr<LinearAttentionTransformer>> Create(
      const LatConfig& config);
  ~LinearAttentionTransformer();

  std::vector<ParamShape> ParamShapes() const;
  absl::Status InitParams(const Context& ctx, ParamStore& store,
                          absl::string_view prefix) const;

  // x, y: [B, T, dim] contiguous (y may not alias x); T a multiple of the
  // window (local heads) and blindspot (causal), T <= max_seq_len.
  absl::Status Forward(const Context& ctx, ParamStore& store,
                       absl::string_view prefix, TensorView<const float> x,
                       const LatStackInputs& inputs, TensorView<float> y,
                       bool save_for_backward);
  // d_y, d_x: [B, T, dim] (=); d_context (=) or empty to skip; parameter
  // gradients (+=). Needs a saving Forward just before, whose x and context
  // views must still be alive.
  absl::Status Backward(const Context& ctx, ParamStore& store,
                        TensorView<const float> d_y, TensorView<float> d_x,
                        TensorView<float> d_context);

 private:
  explicit LinearAttentionTransformer(const LatConfig& config);
  absl::Status Build();
  absl::Status BindBranches(ParamStore& store, absl::string_view prefix,
                            const LatStackInputs& inputs);

  LatConfig config_;
  // Two per pair (f, g); pairs in stack order.
  std::vector<std::unique_ptr<LatBranch>> branches_;
  std::unique_ptr<ReversibleSequence> reversible_;
  BlockCache reversible_cache_;
  // Saved forward state.
  bool saved_ = false;
  std::string prefix_;
  ParamStore* store_ = nullptr;
  TensorView<const float> input_;
  LatStackInputs inputs_;
  std::vector<Tensor> activations_;  // sequential: every branch input and y
  Tensor d_current_, d_branch_, branch_out_;
};

struct LatInputs {
  TensorView<const int32_t> tokens;  // [B, T], each in [0, num_tokens)
  LengthMask lengths;                // input_mask as lengths [B], or empty
  TensorView<const float> context;   // [B, S, dim], receives_context only
  LengthMask context_lengths;        // [B] or empty
  bool training = false;  // dropout; PKM batch statistics and running update
  uint64_t seed = 0;      // dropout masks
};

class LinearAttentionTransformerLM {
 public:
  // ValidateLatConfig's errors; InvalidArgument for return_embeddings with
  // emb_dim != dim (LAT's final LayerNorm(emb_dim) cannot take it).
  static absl::StatusOr<std::unique_ptr<LinearAttentionTransformerLM>> Create(
      const LatConfig& config);

  const LatConfig& config() const { return config_; }
  int64_t pad_to_multiple() const { return LatPadToMultiple(config_); }
  // Width of Forward's output: num_tokens, or emb_dim with return_embeddings.
  int64_t OutputDim() const;
  LinearAttentionTransformer& transformer() { return *transformer_; }

  std::vector<ParamShape> ParamShapes() const;
  absl::Status InitParams(const Context& ctx, ParamStore& store) const;

  // out: [B, T, OutputDim()] contiguous. InvalidArgument for bad shapes,
  // tokens out of range, a padded length past max_seq_len, lengths outside
  // [0, T], or a missing / extra context. CPU only.
  absl::Status Forward(const Context& ctx, ParamStore& store,
                       const LatInputs& inputs, TensorView<float> out,
                       bool save_for_backward);
  // d_out: Forward's out shape; d_context: [B, S, dim] (=) or empty.
  // Parameter gradients accumulate (+=). FailedPrecondition without a saving
  // Forward just before.
  absl::Status Backward(const Context& ctx, ParamStore& store,
                        TensorView<const float> d_out,
                        TensorView<float> d_context = {});

 private:
  explicit LinearAttentionTransformerLM(const LatConfig& config)
      : config_(config) {}
  std::string StackPrefix() const;

  LatConfig config_;
  std::unique_ptr<LinearAttentionTransformer> transformer_;
  std::optional<LayerNormLayer> norm_;  // LayerNorm(emb_dim)
  // Forward state.
  bool saved_ = false;
  int64_t batch_ = 0, length_ = 0, padded_length_ = 0;
  std::vector<int32_t> tokens_;  // padded [B, T']
  TensorView<const float> context_;
  Tensor embedded_, projected_in_, stack_out_, projected_out_, normed_;
  LayerNormCache norm_cache_;
  Tensor d_full_, d_normed_, d_projected_out_, d_stack_out_, d_projected_in_,
      d_embedded_;
};

// ImageLinearAttention (images.py): linear attention over the pixels of
// x [B, C, H, W] (N = H W), per head h of `heads`:
//   q, k = (1x1 conv of x) * key_dim^-0.25        [key_dim, N] each
//   v = 1x1 conv of x                             [value_dim, N]
//   with a context [B, C, ...] (M positions, LAT's reshape (b, c, 1, -1)):
//     k, v get to_k / to_v of the context appended along the positions
//     (the context keys are not scaled by key_dim^-0.25, as in LAT)
//   k = softmax over the positions of k;  q = softmax over key_dim of q
//   (norm_queries)
//   out = q^T (k v^T)  per pixel -> [value_dim, N], heads concatenated
//   y = 1x1 conv to_out of out                    [B, chan_out, H, W]
// Channel c of a projection belongs to head c / key_dim (or / value_dim).
// Only kernel_size 1, padding 0 and stride 1 (the defaults) are supported:
// LAT's reshape to (b, heads, -1, h w) assumes outputs of the input's size.
// With a context, value_dim must equal key_dim (LAT reshapes the context
// values with key_dim).
// Parameters (torch Conv2d names and init U(+-1/sqrt(fan_in))):
//   to_q.weight [heads key_dim, C, 1, 1], to_q.bias; to_k.*; to_v.weight
//   [heads value_dim, C, 1, 1], to_v.bias; to_out.weight [chan_out,
//   heads value_dim, 1, 1], to_out.bias.
// Gradient convention: d_x and d_context written (=), parameters (+=).
struct ImageLinearAttentionConfig {
  int64_t chan = 0;      // C
  int64_t chan_out = 0;  // 0 means chan
  int64_t kernel_size = 1;
  int64_t padding = 0;
  int64_t stride = 1;
  int64_t key_dim = 64;
  int64_t value_dim = 64;
  int64_t heads = 8;
  bool norm_queries = true;
  uint64_t seed = 0;
};

class ImageLinearAttention {
 public:
  // InvalidArgument for sizes < 1; Unimplemented for kernel_size != 1,
  // padding != 0 or stride != 1.
  static absl::StatusOr<std::unique_ptr<ImageLinearAttention>> Create(
      const ImageLinearAttentionConfig& config);

  const ImageLinearAttentionConfig& config() const { return config_; }
  std::vector<ParamShape> ParamShapes() const;
  absl::Status InitParams(const Context& ctx, ParamStore& store,
                          absl::string_view prefix) const;

  // x: contiguous [B, C, H, W]; context: contiguous [B, C, ...] (rank 3 or
  // 4) or empty; y: contiguous [B, chan_out, H, W].
  absl::Status Forward(const Context& ctx, ParamStore& store,
                       absl::string_view prefix, TensorView<const float> x,
                       TensorView<const float> context, TensorView<float> y,
                       bool save_for_backward);
  // d_y: y's shape; d_x (=); d_context (=) or empty. Needs a saving Forward
  // just before, whose x and context views are still alive.
  absl::Status Backward(const Context& ctx, ParamStore& store,
                        TensorView<const float> d_y, TensorView<float> d_x,
                        TensorView<float> d_context);

 private:
  explicit ImageLinearAttention(const ImageLinearAttentionConfig& config)
      : config_(config) {}
  int64_t ChanOut() const {
    return config_.chan_out > 0 ? config_.chan_out : config_.chan;
  }

  ImageLinearAttentionConfig config_;
  bool saved_ = false;
  std::string prefix_;
  TensorView<const float> x_, context_;
  int64_t batch_ = 0, pixels_ = 0, positions_ = 0;
  // [B, heads key_dim, N] softmaxed q; [B, heads key_dim, N + M] softmaxed
  // k; [B, heads value_dim, N + M] v; [B heads, key_dim, value_dim] k v^T;
  // [B, heads value_dim, N] attended.
  Tensor q_, k_, v_, kv_, attended_;
  Tensor projected_, d_attended_, d_q_, d_k_, d_v_, d_kv_, d_projected_;
};

}  // namespace ftx

#endif  // FTX_MODELS_LAT_H_
