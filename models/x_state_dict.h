// State-dict maps of x-transformers 0.26.6 (models/state_dict_map.h):
// TransformerWrapper(attn_layers = Encoder | Decoder), XTransformer and
// ViTransformerWrapper, to and from ftx's models/transformer.h,
// models/xtransformer.h and models/vit.h.
//
// 0.26.6 nests every sublayer i of AttentionLayers as
// ModuleList([norms, block, residual]) with norms = ModuleList([pre_branch,
// post_branch, post_main]) (absent norms are None and keep their index). With
// R = "attn_layers.layers.{i}." on the reference side and F the same prefix
// on the ftx side:
//   R0.0.*  pre-branch norm                 F norm.*
//   R0.1.*  post-branch norm (sandwich)     F post_branch_norm.*
//   R0.2.*  post-main norm (post-norm, all  F norm.*
//           but the last sublayer)
//   R1.g    ReZero gain                     F rezero.g
//   R1.<fn.>to_q.weight                     F attn.query_projection.weight
//           (to_k / key_projection, to_v / value_projection, to_out /
//           out_projection, mem_k / memory_keys, mem_v / memory_values;
//           'c' sublayers use cross_attn.)
//   R1.<fn.>to_out.0.weight (attn_on_attn)  F attn.out_projection.weight
//   R1.<fn.>scale (use_qk_norm_attn)        F attn.qk_norm_scale
//   R1.<fn.>to_v_gate.*, head_scale_params, pre_softmax_talking_heads.weight,
//           post_softmax_talking_heads.weight   F attn.<same>
//   R2.residual_scale, R2.gru.*             F residual.<same>
//   R1.<fn.>net.0.0.* | net.0.proj.* | net.3.*   F ff.net.<same>
// where one "fn." is inserted per wrapper around the block, outermost first:
// Rezero (use_rezero), ShiftTokens (shift_tokens > 0), Scale (macaron, 'f'
// only). Norm tensors are weight and bias (LayerNorm) or g (RMSNorm,
// ScaleNorm). Shared position biases: attn_layers.rel_pos.
// relative_attention_bias.weight (T5) and attn_layers.rel_pos.
// learned_logslopes[_future] (learned ALiBi, reference shape [A, 1, 1], ftx
// [1, A, 1, 1]). Wrapper: token_emb.emb.weight <-> token_emb.weight, and
// pos_emb.emb.weight, project_emb.*, memory_tokens, norm.*, to_logits.* under
// their own names. The rotary buffer attn_layers.rotary_pos_emb.inv_freq
// [rotary dim / 2] (recomputed by ftx) is a fixed tensor: skipped on import,
// written on export, so exports load with strict=True.
//
// XTransformer keeps its halves in two ParamStores, so it has two maps: the
// encoder's ("encoder." + the wrapper names) ignores the decoder's tensors
// and the decoder's ("decoder.net." + the wrapper names; 0.26.6 wraps the
// decoder in AutoregressiveWrapper) ignores the encoder's. ViT names are
// 0.26.6's own (models/vit.h) plus the stack rules above.
//
// Example:
//   FTX_ASSIGN_OR_RETURN(StateDictMap map, XTransformersStateDictMap(config));
//   FTX_RETURN_IF_ERROR(ImportStateDict(file, map, store));
#ifndef FTX_MODELS_X_STATE_DICT_H_
#define FTX_MODELS_X_STATE_DICT_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "models/state_dict_map.h"
#include "models/transformer.h"
#include "models/vit.h"
#include "models/xtransformer.h"

namespace ftx {

inline constexpr char kXTransformersLibrary[] = "x-transformers";

// The TransformerWrapper map for `config` (ValidateTransformerConfig's errors
// otherwise; InvalidArgument for options 0.26.6 lacks: resi_dual,
// attn_qk_norm).
absl::StatusOr<StateDictMap> XTransformersStateDictMap(
    const TransformerConfig& config);

// x-transformers' tensor shapes of that map, for ExportStateDict.
absl::StatusOr<std::map<std::string, std::vector<int64_t>>>
XTransformersReferenceShapes(const TransformerConfig& config);

// The two maps of an XTransformer (see the top of this file); the decoder's
// config is completed as XTransformer does (causal, cross_attend,
// context_dim).
struct XTransformerStateDictMaps {
  StateDictMap encoder;
  StateDictMap decoder;
};
absl::StatusOr<XTransformerStateDictMaps> XTransformerStateDictMapsFor(
    const XTransformerConfig& config);

// The ViTransformerWrapper map.
absl::StatusOr<StateDictMap> XTransformersViTStateDictMap(
    const ViTConfig& config);

// Registers "x-transformers" (TransformerWrapper; its JSON is a
// TransformerConfig, TransformerConfigFromJson) for `ftx convert`.
// AlreadyExists when registered twice.
absl::Status RegisterXTransformersConverter(
    StateDictConverterRegistry& registry);

}  // namespace ftx

#endif  // FTX_MODELS_X_STATE_DICT_H_
