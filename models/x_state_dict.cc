#include "models/x_state_dict.h"

#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "attention/builtin.h"
#include "attention/registry.h"
#include "attention/rotary.h"
#include "kernels/base/status_macros.h"

namespace ftx {
namespace {

void Add(std::vector<StateDictRule>& rules, std::string reference,
         std::string ftx) {
  rules.push_back({std::move(reference), std::move(ftx)});
}

// The tensors of one norm of `type`: weight and bias, or g.
std::vector<std::string> NormTensors(NormType type) {
  if (type == NormType::kLayerNorm) return {"weight", "bias"};
  return {"g"};
}

// Whether 0.26.6 builds ALiBi as LearnedAlibiPositionalBias, and with the
// future slopes (bidirectional).
bool AlibiLearned(const TransformerConfig& c) {
  return c.alibi_pos_bias && (c.alibi_learned || !c.causal);
}

// Rules of an AttentionLayers stack: reference names under `reference`
// ("attn_layers."), ftx names under `ftx` ("attn_layers.").
absl::StatusOr<std::vector<StateDictRule>> StackRules(
    const TransformerConfig& c, const std::string& reference,
    const std::string& ftx) {
  FTX_RETURN_IF_ERROR(ValidateTransformerConfig(c, /*require_wrapper=*/false));
  if (c.resi_dual || c.attn_qk_norm || c.weight_tie_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("x-transformers 0.26.6 has no ",
                     c.resi_dual      ? "resi_dual"
                     : c.attn_qk_norm ? "attn_qk_norm"
                                      : "weight_tie_layers",
                     " (a later release's option): no state_dict map"));
  }
  FTX_ASSIGN_OR_RETURN(const std::string types, XTransformersLayerTypes(c));
  std::vector<StateDictRule> rules;
  if (c.rel_pos_bias) {
    Add(rules, reference + "rel_pos.relative_attention_bias.weight",
        ftx + "rel_pos.relative_attention_bias.weight");
  }
  if (AlibiLearned(c)) {
    Add(rules, reference + "rel_pos.learned_logslopes",
        ftx + "rel_pos.learned_logslopes");
    if (!c.causal) {
      Add(rules, reference + "rel_pos.learned_logslopes_future",
          ftx + "rel_pos.learned_logslopes_future");
    }
  }
  if (c.dynamic_pos_bias) {
    // DynamicPositionBias(dim // 4, ...): mlp.{k}.0 Linear, mlp.{k}.1
    // LayerNorm (norm only), mlp.{depth} the output Linear.
    for (int64_t k = 0; k < c.dynamic_pos_bias_mlp_depth; ++k) {
      std::vector<std::string> names = {"0.weight", "0.bias"};
      if (c.dynamic_pos_bias_norm) {
        names.push_back("1.weight");
        names.push_back("1.bias");
      }
      for (const std::string& name : names) {
        const std::string tensor = absl::StrCat("rel_pos.mlp.", k, ".", name);
        Add(rules, reference + tensor, ftx + tensor);
      }
    }
    for (const char* name : {"weight", "bias"}) {
      const std::string tensor =
          absl::StrCat("rel_pos.mlp.", c.dynamic_pos_bias_mlp_depth, ".", name);
      Add(rules, reference + tensor, ftx + tensor);
    }
  }
  for (size_t i = 0; i < types.size(); ++i) {
    const char type = types[i];
    const bool last = i + 1 == types.size();
    const std::string ref_layer = absl::StrCat(reference, "layers.", i, ".");
    const std::string ftx_layer = absl::StrCat(ftx, "layers.", i, ".");
    // 0.26.6 layer_uses_qk_norm: no pre-branch norm, a post-branch norm.
    const bool qk_norm_layer = c.use_qk_norm_attn && type != 'f';
    if (!c.use_rezero) {
      // Slot 0: pre-branch norm; slot 2: post-main norm (ftx "norm." holds
      // whichever exists); slot 1: the sandwich post-branch norm.
      const char* main_slot = c.pre_norm ? (qk_norm_layer ? nullptr : "0.0.")
                                         : (last ? nullptr : "0.2.");
      for (const std::string& tensor : NormTensors(c.norm)) {
        if (main_slot != nullptr) {
          Add(rules, ref_layer + main_slot + tensor,
              ftx_layer + "norm." + tensor);
        }
        if (c.sandwich_norm || qk_norm_layer) {
          Add(rules, ref_layer + "0.1." + tensor,
              ftx_layer + "post_branch_norm." + tensor);
        }
      }
    }
    // Slot 2: the residual function (Residual or GRUGating).
    if (c.scale_residual) {
      Add(rules, ref_layer + "2.residual_scale",
          ftx_layer + "residual.residual_scale");
    }
    if (c.gate_residual) {
      for (const char* name :
           {"gru.weight_ih", "gru.weight_hh", "gru.bias_ih", "gru.bias_hh"}) {
        Add(rules, ref_layer + "2." + name, ftx_layer + "residual." + name);
      }
    }
    std::string block = ref_layer + "1.";
    if (c.use_rezero) {
      Add(rules, block + "g", ftx_layer + "rezero.g");
      block += "fn.";
    }
    if (c.shift_tokens > 0) block += "fn.";
    if (type == 'f') {
      if (c.macaron) block += "fn.";
      const std::string in = c.ff_glu ? "net.0.proj." : "net.0.0.";
      for (const std::string& name :
           {in + "weight", in + "bias", std::string("net.3.weight"),
            std::string("net.3.bias")}) {
        Add(rules, block + name, ftx_layer + "ff." + name);
      }
      continue;
    }
    const std::string attn =
        ftx_layer + (type == 'c' ? "cross_attn." : "attn.");
    Add(rules, block + "to_q.weight", attn + "query_projection.weight");
    Add(rules, block + "to_k.weight", attn + "key_projection.weight");
    Add(rules, block + "to_v.weight", attn + "value_projection.weight");
    Add(rules, block + (c.attn_on_attn ? "to_out.0.weight" : "to_out.weight"),
        attn + "out_projection.weight");
    if (c.attn_num_mem_kv > 0) {
      Add(rules, block + "mem_k", attn + "memory_keys");
      Add(rules, block + "mem_v", attn + "memory_values");
    }
    if (c.attn_gate_values) {
      Add(rules, block + "to_v_gate.weight", attn + "to_v_gate.weight");
      Add(rules, block + "to_v_gate.bias", attn + "to_v_gate.bias");
    }
    if (c.use_qk_norm_attn) Add(rules, block + "scale", attn + "qk_norm_scale");
    if (c.attn_talking_heads) {
      for (const char* name : {"pre_softmax_talking_heads.weight",
                               "post_softmax_talking_heads.weight"}) {
        Add(rules, block + name, attn + name);
      }
    }
    if (c.attn_head_scale) {
      Add(rules, block + "head_scale_params", attn + "head_scale_params");
    }
  }
  return rules;
}

// Buffers of the stack that ftx recomputes: the rotary table.
std::vector<StateDictFixedTensor> StackFixed(const TransformerConfig& c,
                                             const std::string& reference) {
  if (!c.rotary_pos_emb) return {};
  return {InverseFrequencies(
      reference + "rotary_pos_emb.inv_freq",
      RotaryEmbedding::XTransformersRotaryDim(c.dim_head, c.rotary_emb_dim))};
}

// The TransformerWrapper map with reference names under `reference`.
absl::StatusOr<StateDictMap> WrapperMap(const TransformerConfig& c,
                                        const std::string& reference) {
  FTX_RETURN_IF_ERROR(ValidateTransformerConfig(c, /*require_wrapper=*/true));
  StateDictMap map;
  map.library = kXTransformersLibrary;
  Add(map.rules, reference + "token_emb.emb.weight", "token_emb.weight");
  if (c.use_abs_pos_emb && !c.rotary_pos_emb && !c.rel_pos_bias) {
    Add(map.rules, reference + "pos_emb.emb.weight", "pos_emb.emb.weight");
  }
  if (c.emb_dim != 0 && c.emb_dim != c.dim) {
    Add(map.rules, reference + "project_emb.weight", "project_emb.weight");
    Add(map.rules, reference + "project_emb.bias", "project_emb.bias");
  }
  if (c.num_memory_tokens > 0) {
    Add(map.rules, reference + "memory_tokens", "memory_tokens");
  }
  FTX_ASSIGN_OR_RETURN(
      std::vector<StateDictRule> stack,
      StackRules(c, reference + "attn_layers.", "attn_layers."));
  for (StateDictRule& rule : stack) map.rules.push_back(std::move(rule));
  map.fixed = StackFixed(c, reference + "attn_layers.");
  if (c.final_norm) {
    Add(map.rules, reference + "norm.weight", "norm.weight");
    Add(map.rules, reference + "norm.bias", "norm.bias");
  }
  if (!c.tie_embedding) {
    Add(map.rules, reference + "to_logits.weight", "to_logits.weight");
    Add(map.rules, reference + "to_logits.bias", "to_logits.bias");
  }
  return map;
}

// Reference shapes: the ftx shapes under the reference names, except the
// learned ALiBi slopes ([A, 1, 1] in 0.26.6).
std::map<std::string, std::vector<int64_t>> ReferenceShapesOf(
    const StateDictMap& map, const std::vector<ParamShape>& ftx_shapes) {
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const StateDictRule& rule : map.rules) {
    for (const ParamShape& shape : ftx_shapes) {
      if (shape.name != rule.ftx) continue;
      std::vector<int64_t> dims;
      for (int64_t d = 0; d < shape.shape.rank(); ++d) {
        dims.push_back(shape.shape.dim(d));
      }
      const bool log_slopes =
          rule.ftx.find("rel_pos.learned_logslopes") != std::string::npos;
      if (log_slopes && dims.size() == 4) dims.erase(dims.begin());
      shapes[rule.reference] = dims;
    }
  }
  return shapes;
}

}  // namespace

absl::StatusOr<StateDictMap> XTransformersStateDictMap(
    const TransformerConfig& config) {
  return WrapperMap(config, "");
}

absl::StatusOr<std::map<std::string, std::vector<int64_t>>>
XTransformersReferenceShapes(const TransformerConfig& config) {
  FTX_ASSIGN_OR_RETURN(StateDictMap map, XTransformersStateDictMap(config));
  AttentionRegistry registry;
  FTX_RETURN_IF_ERROR(RegisterBuiltinAttentions(registry));
  FTX_ASSIGN_OR_RETURN(std::unique_ptr<TransformerWrapper> model,
                       TransformerWrapper::Create(config, registry));
  return ReferenceShapesOf(map, model->ParamShapes());
}

absl::StatusOr<XTransformerStateDictMaps> XTransformerStateDictMapsFor(
    const XTransformerConfig& config) {
  FTX_RETURN_IF_ERROR(ValidateXTransformerConfig(config));
  TransformerConfig decoder = config.decoder;
  decoder.causal = true;
  decoder.cross_attend = true;
  decoder.context_dim = config.encoder.dim;
  XTransformerStateDictMaps maps;
  FTX_ASSIGN_OR_RETURN(maps.encoder, WrapperMap(config.encoder, "encoder."));
  FTX_ASSIGN_OR_RETURN(maps.decoder, WrapperMap(decoder, "decoder.net."));
  // Each half skips the other half's keys of the shared file.
  auto ignore_other = [](const StateDictMap& other, StateDictMap& map) {
    for (const StateDictRule& rule : other.rules) {
      map.ignored.push_back(rule.reference);
    }
    for (const StateDictFixedTensor& fixed : other.fixed) {
      map.ignored.push_back(fixed.reference);
    }
  };
  const StateDictMap encoder = maps.encoder;
  ignore_other(maps.decoder, maps.encoder);
  ignore_other(encoder, maps.decoder);
  return maps;
}

absl::StatusOr<StateDictMap> XTransformersViTStateDictMap(
    const ViTConfig& config) {
  StateDictMap map;
  map.library = kXTransformersLibrary;
  for (const char* name : {"pos_embedding", "patch_to_embedding.weight",
                           "patch_to_embedding.bias", "cls_token"}) {
    Add(map.rules, name, name);
  }
  FTX_ASSIGN_OR_RETURN(
      std::vector<StateDictRule> stack,
      StackRules(config.attn_layers, "attn_layers.", "attn_layers."));
  for (StateDictRule& rule : stack) map.rules.push_back(std::move(rule));
  map.fixed = StackFixed(config.attn_layers, "attn_layers.");
  Add(map.rules, "norm.weight", "norm.weight");
  Add(map.rules, "norm.bias", "norm.bias");
  if (config.num_classes > 0) {
    for (const char* name : {"mlp_head.net.0.0.weight", "mlp_head.net.0.0.bias",
                             "mlp_head.net.3.weight", "mlp_head.net.3.bias"}) {
      Add(map.rules, name, name);
    }
  }
  return map;
}

absl::Status RegisterXTransformersConverter(
    StateDictConverterRegistry& registry) {
  StateDictConverter converter;
  converter.library = kXTransformersLibrary;
  converter.description =
      "x-transformers 0.26.6 TransformerWrapper (Encoder / Decoder); config: "
      "a TransformerConfig JSON";
  converter.param_shapes =
      [](absl::string_view json) -> absl::StatusOr<std::vector<ParamShape>> {
    FTX_ASSIGN_OR_RETURN(TransformerConfig config,
                         TransformerConfigFromJson(json));
    AttentionRegistry attentions;
    FTX_RETURN_IF_ERROR(RegisterBuiltinAttentions(attentions));
    FTX_ASSIGN_OR_RETURN(std::unique_ptr<TransformerWrapper> model,
                         TransformerWrapper::Create(config, attentions));
    return model->ParamShapes();
  };
  converter.make_map =
      [](absl::string_view json) -> absl::StatusOr<StateDictMap> {
    FTX_ASSIGN_OR_RETURN(TransformerConfig config,
                         TransformerConfigFromJson(json));
    return XTransformersStateDictMap(config);
  };
  converter.reference_shapes = [](absl::string_view json)
      -> absl::StatusOr<std::map<std::string, std::vector<int64_t>>> {
    FTX_ASSIGN_OR_RETURN(TransformerConfig config,
                         TransformerConfigFromJson(json));
    return XTransformersReferenceShapes(config);
  };
  return registry.Register(std::move(converter));
}

}  // namespace ftx
