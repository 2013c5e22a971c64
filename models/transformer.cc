#include "models/transformer.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <variant>

#include "absl/strings/str_cat.h"
#include "attention/builder.h"
#include "attention/favor.h"
#include "attention/forgetful_mask.h"
#include "attention/full.h"
#include "attention/qk_norm.h"
#include "attention/rotary.h"
#include "kernels/base/rng.h"
#include "kernels/base/status_macros.h"
#include "kernels/linear/linear.h"
#include "layers/absolute_positions.h"
#include "layers/rezero.h"
#include "layers/rmsnorm.h"
#include "layers/scalenorm.h"
#include "layers/shift_tokens.h"
#include "layers/xl_memory.h"
#include "nlohmann/json.hpp"

namespace ftx {
namespace {

absl::Status Bad(absl::string_view field, absl::string_view requirement,
                 const std::string& got) {
  return absl::InvalidArgumentError(absl::StrCat(
      "TransformerConfig.", field, " must be ", requirement, ", got ", got));
}

// A distinct initialisation seed per tensor of the model.
uint64_t SubSeed(uint64_t seed, uint64_t index) {
  return seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull * (index + 1);
}

std::string SublayerPrefix(int64_t index) {
  return absl::StrCat("layers.", index, ".");
}

const char* BlockName(char type) {
  switch (type) {
    case 'a':
      return "attn.";
    case 'c':
      return "cross_attn.";
    default:
      return "ff.";
  }
}

// The view of `name`, or an empty view when the store has no such parameter.
absl::StatusOr<TensorView<float>> OptionalValue(ParamStore& store,
                                                const std::string& name) {
  if (!store.Contains(name)) return TensorView<float>();
  return store.Value(name);
}
absl::StatusOr<TensorView<float>> OptionalGrad(ParamStore& store,
                                               const std::string& name) {
  if (!store.Contains(name)) return TensorView<float>();
  return store.Grad(name);
}

ResidualParams ToConst(const ResidualTensors<float>& t) {
  return {t.residual_scale, t.gru_weight_ih, t.gru_weight_hh, t.gru_bias_ih,
          t.gru_bias_hh};
}

// a[i] += b[i] over [B, T, C] (or any contiguous) tensors.
void AddInto(const Context& ctx, TensorView<float> a,
             TensorView<const float> b) {
  float* out = a.data();
  const float* in = b.data();
  ctx.pool().ParallelFor(
      a.NumElements(),
      [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) out[i] += in[i];
      },
      4096);
}

void Copy(const Context& ctx, TensorView<const float> from,
          TensorView<float> to) {
  const float* in = from.data();
  float* out = to.data();
  ctx.pool().ParallelFor(
      from.NumElements(),
      [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) out[i] = in[i];
      },
      4096);
}

// Contiguous CPU float tensor of `shape`, reused while the shape stays.
absl::StatusOr<TensorView<float>> Buffer(Tensor& tensor, const Shape& shape) {
  FTX_RETURN_IF_ERROR(EnsureTensor(tensor, shape, Device::Cpu()));
  return tensor.view<float>();
}

}  // namespace

absl::Status ValidateTransformerConfig(const TransformerConfig& c,
                                       bool require_wrapper) {
  if (c.dim < 1) return Bad("dim", ">= 1", absl::StrCat(c.dim));
  if (c.depth < 1) return Bad("depth", ">= 1", absl::StrCat(c.depth));
  if (c.heads < 1) return Bad("heads", ">= 1", absl::StrCat(c.heads));
  if (c.dim_head < 1) return Bad("dim_head", ">= 1", absl::StrCat(c.dim_head));
  if (c.context_dim < 0) {
    return Bad("context_dim", ">= 0", absl::StrCat(c.context_dim));
  }
  if (c.attention.empty()) return Bad("attention", "a mechanism name", "\"\"");
  if (c.cross_attend && c.cross_attention.empty()) {
    return Bad("cross_attention", "a mechanism name", "\"\"");
  }
  if (c.norm != NormType::kLayerNorm && c.norm != NormType::kRMSNorm &&
      c.norm != NormType::kScaleNorm) {
    return Bad("norm", "layernorm, rmsnorm or scalenorm",
               absl::StrCat(static_cast<int>(c.norm)));
  }
  if (!(c.ff_mult > 0) || static_cast<int64_t>(c.dim * c.ff_mult) < 1) {
    return Bad("ff_mult", "> 0 with int(dim * ff_mult) >= 1",
               absl::StrCat(c.ff_mult));
  }
  if (c.attn_kv_heads < 0 ||
      (c.attn_kv_heads > 0 && c.heads % c.attn_kv_heads != 0)) {
    return Bad("attn_kv_heads",
               absl::StrCat("0 or a divisor of heads (", c.heads, ")"),
               absl::StrCat(c.attn_kv_heads));
  }
  if (c.attn_num_mem_kv < 0) {
    return Bad("attn_num_mem_kv", ">= 0", absl::StrCat(c.attn_num_mem_kv));
  }
  if (c.rotary_emb_dim < 0 || c.rotary_emb_dim % 2 != 0) {
    return Bad("rotary_emb_dim", "even and >= 0",
               absl::StrCat(c.rotary_emb_dim));
  }
  if (c.rotary_pos_emb) {
    const int64_t rotary_dim =
        RotaryEmbedding::XTransformersRotaryDim(c.dim_head, c.rotary_emb_dim);
    if (rotary_dim > c.dim_head) {
      return Bad("dim_head",
                 absl::StrCat(">= the rotary width max(rotary_emb_dim or "
                              "dim_head / 2, 32) = ",
                              rotary_dim, " with rotary_pos_emb"),
                 absl::StrCat(c.dim_head));
    }
  }
  if (c.shift_tokens < 0) {
    return Bad("shift_tokens", ">= 0", absl::StrCat(c.shift_tokens));
  }
  if (c.attn_talking_heads &&
      (c.attention != "full" ||
       (c.cross_attend && c.cross_attention != "full"))) {
    return Bad("attn_talking_heads",
               "false unless attention (and cross_attention) is \"full\"",
               "true");
  }
  if (c.use_qk_norm_attn && (c.attention != "full" ||
                             (c.cross_attend && c.cross_attention != "full"))) {
    return Bad("use_qk_norm_attn",
               "false unless attention (and cross_attention) is \"full\"",
               "true");
  }
  if (c.residual_attn && (c.attention != "full" || c.attn_talking_heads)) {
    return Bad("residual_attn",
               "false unless attention is \"full\" without "
               "attn_talking_heads",
               "true");
  }
  if (c.resi_dual && (c.pre_norm || c.final_norm)) {
    return Bad("resi_dual", "false unless pre_norm and final_norm are false",
               "true");
  }
  if (c.resi_dual && !(c.resi_dual_scale > 0.0 && c.resi_dual_scale <= 1.0)) {
    return Bad("resi_dual_scale", "in (0, 1]", absl::StrCat(c.resi_dual_scale));
  }
  if (c.attn_qk_norm) {
    if (c.use_qk_norm_attn) {
      return Bad("attn_qk_norm", "false with use_qk_norm_attn", "true");
    }
    if (c.attention != "full" ||
        (c.cross_attend && c.cross_attention != "full")) {
      return Bad("attn_qk_norm",
                 "false unless attention (and cross_attention) is \"full\"",
                 "true");
    }
    if (c.attn_qk_norm_groups < 1 || c.dim_head % c.attn_qk_norm_groups != 0) {
      return Bad("attn_qk_norm_groups",
                 absl::StrCat("a divisor of dim_head (", c.dim_head, ")"),
                 absl::StrCat(c.attn_qk_norm_groups));
    }
    if (!(c.attn_qk_norm_scale > 0.0) || !std::isfinite(c.attn_qk_norm_scale)) {
      return Bad("attn_qk_norm_scale", "finite and > 0",
                 absl::StrCat(c.attn_qk_norm_scale));
    }
  }
  if (c.qk_norm_attn_seq_len != 0 && c.qk_norm_attn_seq_len < 2) {
    return Bad("qk_norm_attn_seq_len", "0 or >= 2",
               absl::StrCat(c.qk_norm_attn_seq_len));
  }
  if (!std::isfinite(c.scale_residual_constant) ||
      c.scale_residual_constant == 0.0) {
    return Bad("scale_residual_constant", "finite and non-zero",
               absl::StrCat(c.scale_residual_constant));
  }
  if (c.sandwich_norm && !c.pre_norm) {
    return Bad("sandwich_norm", "false when pre_norm is false", "true");
  }
  if (c.rel_pos_bias && c.alibi_pos_bias) {
    return Bad("alibi_pos_bias", "false when rel_pos_bias is set", "true");
  }
  if (c.dynamic_pos_bias && (c.rel_pos_bias || c.alibi_pos_bias)) {
    return Bad("dynamic_pos_bias",
               "false when rel_pos_bias or alibi_pos_bias is set", "true");
  }
  if (c.dynamic_pos_bias && c.dim / 4 < 1) {
    return Bad("dim", ">= 4 with dynamic_pos_bias (MLP width dim / 4)",
               absl::StrCat(c.dim));
  }
  if (c.dynamic_pos_bias && c.dynamic_pos_bias_mlp_depth < 1) {
    return Bad("dynamic_pos_bias_mlp_depth", ">= 1",
               absl::StrCat(c.dynamic_pos_bias_mlp_depth));
  }
  if ((c.rel_pos_bias || c.alibi_pos_bias || c.dynamic_pos_bias) &&
      c.attn_num_mem_kv > 0) {
    return Bad("attn_num_mem_kv",
               "0 with rel_pos_bias, alibi_pos_bias or dynamic_pos_bias "
               "(x-transformers 0.26.6 biases the memory columns as key "
               "positions)",
               absl::StrCat(c.attn_num_mem_kv));
  }
  if (c.cross_residual_attn && c.cross_attend &&
      (c.cross_attention != "full" || c.attn_talking_heads)) {
    return Bad("cross_residual_attn",
               "false unless cross_attention is \"full\" without "
               "attn_talking_heads",
               "true");
  }
  if (c.weight_tie_layers &&
      (!c.custom_layers.empty() || c.par_ratio != 0 || c.sandwich_coef != 0)) {
    return Bad("weight_tie_layers",
               "false with custom_layers, par_ratio or sandwich_coef (no "
               "repeated block to tie)",
               "true");
  }
  if (!(c.mask_prob >= 0.0 && c.mask_prob < 1.0)) {
    return Bad("mask_prob", "in [0, 1)", absl::StrCat(c.mask_prob));
  }
  if (c.mask_prob > 0.0) {
    if (!c.causal) return Bad("mask_prob", "0 unless causal", "> 0");
    if (c.attention != "full" || c.attn_talking_heads || c.residual_attn ||
        c.attn_num_mem_kv > 0 || c.num_memory_tokens > 0) {
      return Bad("mask_prob",
                 "0 unless attention is \"full\" without attn_talking_heads, "
                 "residual_attn, attn_num_mem_kv and num_memory_tokens",
                 absl::StrCat(c.mask_prob));
    }
  }
  if (c.rel_pos_bias) {
    const absl::Status t5 =
        T5RelativeBias::Create({.heads = c.heads,
                                .causal = c.causal,
                                .num_buckets = c.rel_pos_num_buckets,
                                .max_distance = c.rel_pos_max_distance})
            .status();
    if (!t5.ok()) {
      return Bad("rel_pos_num_buckets",
                 "valid with rel_pos_max_distance for the T5 bias",
                 absl::StrCat(c.rel_pos_num_buckets, " (", t5.message(), ")"));
    }
  }
  if (c.alibi_num_heads < 0 || c.alibi_num_heads > c.heads) {
    return Bad("alibi_num_heads", absl::StrCat("in [0, heads = ", c.heads, "]"),
               absl::StrCat(c.alibi_num_heads));
  }
  FTX_ASSIGN_OR_RETURN(const std::string layer_types,
                       XTransformersLayerTypes(c));
  if (c.only_cross && !c.cross_attend) {
    return Bad("only_cross", "false unless cross_attend is set", "true");
  }
  if (!c.cross_attend && layer_types.find('c') != std::string::npos) {
    return Bad("custom_layers", "free of 'c' unless cross_attend is set",
               absl::StrCat("\"", c.custom_layers, "\""));
  }
  if (c.emb_dim < 0) return Bad("emb_dim", ">= 0", absl::StrCat(c.emb_dim));
  if (c.num_memory_tokens < 0) {
    return Bad("num_memory_tokens", ">= 0", absl::StrCat(c.num_memory_tokens));
  }
  if (c.max_mem_len < 0) {
    return Bad("max_mem_len", ">= 0", absl::StrCat(c.max_mem_len));
  }
  if (c.shift_mem_down < 0) {
    return Bad("shift_mem_down", ">= 0", absl::StrCat(c.shift_mem_down));
  }
  if (c.tie_embedding && c.emb_dim != 0 && c.emb_dim != c.dim) {
    return Bad("emb_dim",
               absl::StrCat("0 or dim (", c.dim, ") with tie_embedding"),
               absl::StrCat(c.emb_dim));
  }
  if (require_wrapper) {
    if (c.num_tokens < 1) {
      return Bad("num_tokens", ">= 1", absl::StrCat(c.num_tokens));
    }
    if (c.max_seq_len < 1) {
      return Bad("max_seq_len", ">= 1", absl::StrCat(c.max_seq_len));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> XTransformersLayerTypes(
    const TransformerConfig& c) {
  std::string block = c.cross_attend ? (c.only_cross ? "cf" : "acf") : "af";
  if (c.macaron) block = "f" + block;
  if (!c.custom_layers.empty()) {
    if (c.custom_layers.find_first_not_of("acf") != std::string::npos) {
      return Bad("custom_layers", "made of 'a', 'c' and 'f'",
                 absl::StrCat("\"", c.custom_layers, "\""));
    }
    return c.custom_layers;
  }
  const int64_t depth = c.depth;
  if (c.par_ratio != 0) {
    const int64_t par_depth = depth * static_cast<int64_t>(block.size());
    if (c.par_ratio <= 1 || c.par_ratio > par_depth) {
      return Bad("par_ratio",
                 absl::StrCat("in (1, depth * block length = ", par_depth, "]"),
                 absl::StrCat(c.par_ratio));
    }
    std::string attention_block;
    for (char type : block) {
      if (type != 'f') attention_block += type;
    }
    const int64_t par_attn = par_depth / c.par_ratio;
    const int64_t depth_cut = par_depth * 2 / 3;
    const int64_t par_width = (depth_cut + depth_cut / par_attn) / par_attn;
    if (static_cast<int64_t>(attention_block.size()) > par_width) {
      return Bad("par_ratio",
                 absl::StrCat("small enough for a PAR width >= ",
                              attention_block.size()),
                 absl::StrCat(c.par_ratio));
    }
    std::string par_block = attention_block;
    par_block.append(par_width - attention_block.size(), 'f');
    std::string types;
    for (int64_t i = 0; i < par_attn; ++i) types += par_block;
    types.append(par_depth - static_cast<int64_t>(types.size()), 'f');
    return types;
  }
  if (c.sandwich_coef != 0) {
    if (c.sandwich_coef < 1 || c.sandwich_coef > depth) {
      return Bad("sandwich_coef", absl::StrCat("in [1, depth = ", depth, "]"),
                 absl::StrCat(c.sandwich_coef));
    }
    std::string types(c.sandwich_coef, 'a');
    for (int64_t i = 0; i < depth - c.sandwich_coef; ++i) types += block;
    types.append(c.sandwich_coef, 'f');
    return types;
  }
  std::string types;
  for (int64_t i = 0; i < depth; ++i) types += block;
  return types;
}

namespace {

// One norm position of a sublayer (pre-norm or post-norm "norm.", or the
// sandwich "post_branch_norm."): the configured norm kind and the LayerNorm
// statistics its backward needs. Absent when no norm sits there.
struct NormSlot {
  std::string name;  // "norm." or "post_branch_norm."
  std::optional<LayerNormLayer> layer_norm;
  std::optional<RMSNorm> rms_norm;
  std::optional<ScaleNorm> scale_norm;
  LayerNormCache cache;

  bool present() const { return layer_norm || rms_norm || scale_norm; }

  absl::Status Configure(NormType type, int64_t dim) {
    switch (type) {
      case NormType::kLayerNorm: {
        FTX_ASSIGN_OR_RETURN(LayerNormLayer norm,
                             LayerNormLayer::Create({.dim = dim}));
        layer_norm.emplace(std::move(norm));
        break;
      }
      case NormType::kRMSNorm:
        rms_norm.emplace(RMSNormConfig{.dim = dim});
        break;
      case NormType::kScaleNorm:
        scale_norm.emplace(ScaleNormConfig{.dim = dim});
        break;
    }
    return absl::OkStatus();
  }

  std::vector<ParamShape> ParamShapes() const {
    if (layer_norm) return layer_norm->ParamShapes();
    if (rms_norm) return rms_norm->ParamShapes();
    if (scale_norm) return scale_norm->ParamShapes();
    return {};
  }

  // `base` ends at the sublayer ("attn_layers.layers.{i}.").
  absl::Status InitParams(ParamStore& store, const std::string& base) const {
    if (layer_norm) {
      FTX_ASSIGN_OR_RETURN(TensorView<float> weight,
                           store.Value(base + name + "weight"));
      FTX_ASSIGN_OR_RETURN(TensorView<float> bias,
                           store.Value(base + name + "bias"));
      return layer_norm->InitParams(weight, bias);
    }
    if (!present()) return absl::OkStatus();
    FTX_ASSIGN_OR_RETURN(TensorView<float> g, store.Value(base + name + "g"));
    if (rms_norm) {
      RMSNorm::InitParams(g);
    } else {
      scale_norm->InitParams(g);
    }
    return absl::OkStatus();
  }

  absl::Status Forward(const Context& ctx, ParamStore& store,
                       const std::string& base, TensorView<const float> x,
                       TensorView<float> y, bool keep_statistics) {
    if (layer_norm) {
      FTX_ASSIGN_OR_RETURN(TensorView<float> weight,
                           store.Value(base + name + "weight"));
      FTX_ASSIGN_OR_RETURN(TensorView<float> bias,
                           store.Value(base + name + "bias"));
      return layer_norm->Forward(ctx, weight, bias, x, y,
                                 keep_statistics ? &cache : nullptr);
    }
    FTX_ASSIGN_OR_RETURN(TensorView<float> g, store.Value(base + name + "g"));
    if (rms_norm) return rms_norm->Forward(ctx, g, x, y);
    return scale_norm->Forward(ctx, g, x, y);
  }

  absl::Status Backward(const Context& ctx, ParamStore& store,
                        const std::string& base, TensorView<const float> x,
                        TensorView<const float> d_y, TensorView<float> d_x) {
    if (layer_norm) {
      FTX_ASSIGN_OR_RETURN(TensorView<float> weight,
                           store.Value(base + name + "weight"));
      FTX_ASSIGN_OR_RETURN(TensorView<float> d_weight,
                           store.Grad(base + name + "weight"));
      FTX_ASSIGN_OR_RETURN(TensorView<float> d_bias,
                           store.Grad(base + name + "bias"));
      return layer_norm->Backward(ctx, weight, cache, x, d_y, d_x, d_weight,
                                  d_bias);
    }
    FTX_ASSIGN_OR_RETURN(TensorView<float> g, store.Value(base + name + "g"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_g, store.Grad(base + name + "g"));
    if (rms_norm) return rms_norm->Backward(ctx, g, x, d_y, d_x, d_g);
    return scale_norm->Backward(ctx, g, x, d_y, d_x, d_g);
  }
};

}  // namespace

// One sublayer: its norms, its block ('a', 'c' or 'f'), token shift, branch
// scale, ReZero gain, and the activations its backward needs.
struct AttentionLayers::Sublayer {
  char type = 'f';
  std::string prefix;                              // "layers.{i}."
  NormSlot norm{"norm."};                          // pre-norm or post-norm
  NormSlot post_branch_norm{"post_branch_norm."};  // sandwich_norm
  std::optional<ShiftTokens> shift;
  float branch_scale = 1.0f;  // macaron: 0.5 on feed-forward branches
  std::unique_ptr<AttentionLayer> attention;
  // Step-wise form of a self-attention sublayer and its rotary, when the stack
  // can decode step-wise.
  std::unique_ptr<RecurrentAttention> recurrent;
  std::optional<RotaryEmbedding> step_rotary;
  std::optional<FeedForward> feed_forward;
  std::optional<ReZero> rezero;
  // gate_residual / scale_residual: the residual function (plain sum
  // otherwise).
  std::optional<Residual> residual;
  // attn_talking_heads: the mechanism's parameters, mirrored in the store.
  bool mirrors_inner_params = false;

  AttentionLayerCache attention_cache;
  // mask_prob in training: one attention cache per batch row.
  std::vector<AttentionLayerCache> row_caches;
  FeedForwardCache ff_cache;
  Tensor normed;       // pre-norm: norm(x_i)
  Tensor shifted;      // shift_tokens: the block input
  Tensor branch;       // block output (times branch_scale)
  Tensor sum;          // post-norm: branch + residual, the norm input
  Tensor residual_in;  // residual: the branch output it combines
  // residual_attn ('a' sublayers): the pre-softmax scores handed on
  // [H, B, T, M + T], whether the sublayer received its predecessor's, and
  // the gradient of those it received.
  Tensor residual_scores;
  bool has_previous_scores = false;
  Tensor d_previous_scores;
  // Transformer-XL ('a' sublayers with a memory): the memory length, the
  // key/value input cat(memory, hidden) [B, M + T, C] and its gradient.
  int64_t memory_length = 0;
  Tensor kv_input, d_kv_input;
  ResidualCache residual_cache;

  std::string Base(const std::string& base) const { return base + prefix; }

  std::string BlockPrefix(const std::string& base) const {
    return base + prefix + BlockName(type);
  }

  // The padding mask the token shift zeroes: attention blocks get the
  // stack's mask, feed-forward blocks none (as x-transformers passes it).
  LengthMask ShiftLengths(const StackInputs& inputs) const {
    return type == 'f' ? LengthMask() : inputs.lengths;
  }

  // The attention block's views, looked up with `find` (Value or Grad) and
  // `find_optional` (memory kv and the out bias, absent unless configured).
  template <typename Views, typename Find, typename FindOptional>
  absl::StatusOr<Views> CollectAttentionViews(
      const std::string& base, Find find, FindOptional find_optional) const {
    const std::string p = BlockPrefix(base);
    Views views;
    FTX_ASSIGN_OR_RETURN(views.query_weight,
                         find(p + "query_projection.weight"));
    FTX_ASSIGN_OR_RETURN(views.key_weight, find(p + "key_projection.weight"));
    FTX_ASSIGN_OR_RETURN(views.value_weight,
                         find(p + "value_projection.weight"));
    FTX_ASSIGN_OR_RETURN(views.out_weight, find(p + "out_projection.weight"));
    FTX_ASSIGN_OR_RETURN(views.out_bias,
                         find_optional(p + "out_projection.bias"));
    FTX_ASSIGN_OR_RETURN(views.memory_keys, find_optional(p + "memory_keys"));
    FTX_ASSIGN_OR_RETURN(views.memory_values,
                         find_optional(p + "memory_values"));
    FTX_ASSIGN_OR_RETURN(views.head_scale,
                         find_optional(p + "head_scale_params"));
    FTX_ASSIGN_OR_RETURN(views.value_gate_weight,
                         find_optional(p + "to_v_gate.weight"));
    FTX_ASSIGN_OR_RETURN(views.value_gate_bias,
                         find_optional(p + "to_v_gate.bias"));
    FTX_ASSIGN_OR_RETURN(views.qk_norm_scale,
                         find_optional(p + "qk_norm_scale"));
    FTX_ASSIGN_OR_RETURN(views.qk_norm_q_scale,
                         find_optional(p + "qk_norm_q_scale"));
    FTX_ASSIGN_OR_RETURN(views.qk_norm_k_scale,
                         find_optional(p + "qk_norm_k_scale"));
    return views;
  }

  absl::StatusOr<AttentionLayerParams> AttentionParams(
      ParamStore& store, const std::string& base) const {
    return CollectAttentionViews<AttentionLayerParams>(
        base, [&](const std::string& name) { return store.Value(name); },
        [&](const std::string& name) { return OptionalValue(store, name); });
  }

  absl::StatusOr<AttentionLayerGrads> AttentionGradViews(
      ParamStore& store, const std::string& base) const {
    return CollectAttentionViews<AttentionLayerGrads>(
        base, [&](const std::string& name) { return store.Grad(name); },
        [&](const std::string& name) { return OptionalGrad(store, name); });
  }

  // Writable views of the option parameters, for InitOptionParams.
  absl::StatusOr<AttentionLayerGrads> AttentionInitViews(
      ParamStore& store, const std::string& base) const {
    return CollectAttentionViews<AttentionLayerGrads>(
        base, [&](const std::string& name) { return store.Value(name); },
        [&](const std::string& name) { return OptionalValue(store, name); });
  }

  // Parameter views (Value) or gradient views (Grad) of the residual.
  ResidualTensors<float> ResidualViews(ParamStore& store,
                                       const std::string& base,
                                       bool gradients) const {
    const std::string p = base + prefix + "residual.";
    auto view = [&](const char* name) -> TensorView<float> {
      absl::StatusOr<TensorView<float>> found =
          gradients ? OptionalGrad(store, p + name)
                    : OptionalValue(store, p + name);
      return found.ok() ? *found : TensorView<float>();
    };
    return {view("residual_scale"), view("gru.weight_ih"),
            view("gru.weight_hh"), view("gru.bias_ih"), view("gru.bias_hh")};
  }

  // The "full" mechanism of a residual_attn stack (validated at Create).
  FullAttention& FullInner() {
    return static_cast<FullAttention&>(attention->inner());
  }

  // attn_talking_heads: the store's mixing weights into the mechanism.
  absl::Status LoadInnerParams(ParamStore& store, const std::string& base) {
    if (!mirrors_inner_params) return absl::OkStatus();
    for (const ParamRef& ref : attention->inner().Parameters()) {
      FTX_ASSIGN_OR_RETURN(TensorView<float> value,
                           store.Value(BlockPrefix(base) + ref.name));
      std::copy(value.data(), value.data() + value.NumElements(),
                ref.value->data<float>());
    }
    return absl::OkStatus();
  }

  // Zeroes the mechanism's gradients (before its Backward).
  void ClearInnerGrads() {
    if (!mirrors_inner_params) return;
    for (const ParamRef& ref : attention->inner().Parameters()) {
      if (ref.grad->NumElements() == 0) continue;
      std::fill_n(ref.grad->data<float>(), ref.grad->NumElements(), 0.0f);
    }
  }

  // Adds the mechanism's gradients into the store (after its Backward).
  absl::Status StoreInnerGrads(ParamStore& store, const std::string& base) {
    if (!mirrors_inner_params) return absl::OkStatus();
    for (const ParamRef& ref : attention->inner().Parameters()) {
      FTX_ASSIGN_OR_RETURN(TensorView<float> grad,
                           store.Grad(BlockPrefix(base) + ref.name));
      if (ref.grad->NumElements() != grad.NumElements()) {
        return absl::InternalError(absl::StrCat(
            "AttentionLayers: no gradient for ", BlockPrefix(base), ref.name));
      }
      const float* source = ref.grad->data<float>();
      for (int64_t i = 0; i < grad.NumElements(); ++i) {
        grad.data()[i] += source[i];
      }
    }
    return absl::OkStatus();
  }

  // Parameter views (Value) or gradient views (Grad) of the feed-forward.
  absl::StatusOr<FeedForwardTensors<float>> FeedForwardViews(
      ParamStore& store, const std::string& base, bool gradients) const {
    const std::string p = BlockPrefix(base);
    auto view = [&](const char* name) {
      return gradients ? OptionalGrad(store, p + name)
                       : OptionalValue(store, p + name);
    };
    const bool glu = feed_forward->config().glu;
    FeedForwardTensors<float> t;
    FTX_ASSIGN_OR_RETURN(t.in_weight,
                         view(glu ? "net.0.proj.weight" : "net.0.0.weight"));
    FTX_ASSIGN_OR_RETURN(t.in_bias,
                         view(glu ? "net.0.proj.bias" : "net.0.0.bias"));
    FTX_ASSIGN_OR_RETURN(t.norm_weight, view("net.1.weight"));
    FTX_ASSIGN_OR_RETURN(t.norm_bias, view("net.1.bias"));
    FTX_ASSIGN_OR_RETURN(t.out_weight, view("net.3.weight"));
    FTX_ASSIGN_OR_RETURN(t.out_bias, view("net.3.bias"));
    return t;
  }
};

AttentionLayers::AttentionLayers(const TransformerConfig& config,
                                 std::string layer_types)
    : config_(config), layer_types_(std::move(layer_types)) {}

AttentionLayers::~AttentionLayers() = default;

namespace {

// Sets the config's options on `builder`; a mechanism `type` with a "causal"
// option gets `causal` unless the options set it.
absl::Status ConfigureBuilder(const TransformerConfig& config,
                              const AttentionRegistry& registry,
                              const std::string& type, bool causal,
                              AttentionBuilder& builder) {
  for (const auto& [name, value] : config.attention_options) {
    FTX_RETURN_IF_ERROR(builder.Set(name, value));
  }
  const AttentionSpec* spec = registry.Find(type);
  if (spec != nullptr && config.attention_options.count("causal") == 0) {
    for (const OptionSpec& option : spec->options) {
      if (option.name == "causal") {
        FTX_RETURN_IF_ERROR(builder.Set("causal", causal));
      }
    }
  }
  return absl::OkStatus();
}

// Builds the inner mechanism `type` (see ConfigureBuilder); with
// attn_talking_heads "talking-heads" over config.heads instead (the
// validated type is "full"). use_qk_norm_attn runs it at softmax_temp 1 (the
// qk norm carries the scale).
absl::StatusOr<std::unique_ptr<Attention>> BuildMechanism(
    const TransformerConfig& config, const AttentionRegistry& registry,
    const std::string& type, bool causal) {
  AttentionBuilder builder(registry);
  if (config.attn_talking_heads) {
    // The talking-heads options among the stack's (dropout, top-k, ...).
    const AttentionSpec* spec = registry.Find("talking-heads");
    if (spec == nullptr) {
      return Bad("attn_talking_heads",
                 "false unless \"talking-heads\" is registered", "true");
    }
    for (const auto& [name, value] : config.attention_options) {
      for (const OptionSpec& option : spec->options) {
        if (option.name == name) FTX_RETURN_IF_ERROR(builder.Set(name, value));
      }
    }
    FTX_RETURN_IF_ERROR(builder.Set("n_heads", config.heads));
  } else {
    FTX_RETURN_IF_ERROR(
        ConfigureBuilder(config, registry, type, causal, builder));
  }
  if (config.use_qk_norm_attn || config.attn_qk_norm) {
    FTX_RETURN_IF_ERROR(builder.Set("softmax_temp", 1.0));
  }
  return builder.Build(config.attn_talking_heads ? "talking-heads" : type);
}

absl::Status NoStepForm(absl::string_view why) {
  return absl::InvalidArgumentError(
      absl::StrCat("TransformerWrapper: no step-wise decoding: ", why));
}

// OK when the config's stack shape allows step-wise decoding (the mechanism
// is checked by building its recurrent form).
absl::Status StepShapeSupport(const TransformerConfig& config) {
  if (!config.causal) {
    return NoStepForm("the stack is not causal (an encoder)");
  }
  if (config.cross_attend) {
    return NoStepForm("cross_attend stacks are not supported");
  }
  if (config.attn_num_mem_kv > 0) {
    return NoStepForm("persistent memory key/values (attn_num_mem_kv = " +
                      std::to_string(config.attn_num_mem_kv) +
                      ") are not supported");
  }
  if (config.shift_tokens > 0) {
    return NoStepForm("shift_tokens is not supported");
  }
  if (config.rel_pos_bias || config.alibi_pos_bias || config.dynamic_pos_bias) {
    return NoStepForm(
        "rel_pos_bias, alibi_pos_bias and dynamic_pos_bias are not "
        "supported");
  }
  if (config.num_memory_tokens > 0) {
    return NoStepForm("memory tokens (num_memory_tokens) are not supported");
  }
  const std::pair<bool, const char*> options[] = {
      {config.attn_talking_heads, "attn_talking_heads"},
      {config.attn_head_scale, "attn_head_scale"},
      {config.attn_gate_values, "attn_gate_values"},
      {config.attn_on_attn, "attn_on_attn"},
      {config.use_qk_norm_attn, "use_qk_norm_attn"},
      {config.residual_attn, "residual_attn"},
      {config.resi_dual, "resi_dual"},
      {config.attn_qk_norm, "attn_qk_norm"},
      {config.gate_residual, "gate_residual"},
      {config.scale_residual, "scale_residual"}};
  for (const auto& [set, name] : options) {
    if (set) return NoStepForm(absl::StrCat(name, " is not supported"));
  }
  if (config.attention == "favor") {
    const auto it = config.attention_options.find("key_stabilizer");
    const std::string* stabilizer = it == config.attention_options.end()
                                        ? nullptr
                                        : std::get_if<std::string>(&it->second);
    if (stabilizer == nullptr || *stabilizer != "zero") {
      return NoStepForm(
          "\"favor\" decodes only with key_stabilizer = \"zero\" (the "
          "sequence-max stabiliser looks at future keys)");
    }
  }
  return absl::OkStatus();
}

// The recurrent form of the self-attention mechanism, or why there is none.
absl::StatusOr<std::unique_ptr<RecurrentAttention>> BuildStepMechanism(
    const TransformerConfig& config, const AttentionRegistry& registry) {
  AttentionBuilder builder(registry);
  FTX_RETURN_IF_ERROR(ConfigureBuilder(config, registry, config.attention,
                                       /*causal=*/true, builder));
  absl::StatusOr<std::unique_ptr<RecurrentAttention>> recurrent =
      builder.BuildRecurrent(config.attention);
  if (!recurrent.ok()) return NoStepForm(recurrent.status().message());
  return recurrent;
}

}  // namespace

absl::StatusOr<std::unique_ptr<AttentionLayers>> AttentionLayers::Create(
    const TransformerConfig& config, const AttentionRegistry& registry) {
  FTX_RETURN_IF_ERROR(
      ValidateTransformerConfig(config, /*require_wrapper=*/false));
  FTX_ASSIGN_OR_RETURN(std::string types, XTransformersLayerTypes(config));
  std::unique_ptr<AttentionLayers> layers(new AttentionLayers(config, types));
  layers->step_support_ = StepShapeSupport(config);
  const bool position_bias =
      config.rel_pos_bias || config.alibi_pos_bias || config.dynamic_pos_bias;
  // weight_tie_layers: sublayer i reads the parameters of i % block_size.
  const size_t block_size =
      config.weight_tie_layers ? types.size() / config.depth : types.size();
  if (config.rel_pos_bias) {
    FTX_ASSIGN_OR_RETURN(
        T5RelativeBias bias,
        T5RelativeBias::Create(
            {.heads = config.heads,
             .causal = config.causal,
             .num_buckets = config.rel_pos_num_buckets,
             .max_distance = config.rel_pos_max_distance,
             .scale = T5RelativeBias::XTransformersScale(config.dim_head)}));
    layers->t5_bias_.emplace(std::move(bias));
  }
  if (config.alibi_pos_bias) {
    FTX_ASSIGN_OR_RETURN(
        Alibi alibi,
        Alibi::Create({.heads = config.heads,
                       .alibi_heads = config.alibi_num_heads,
                       .causal = config.causal,
                       .learned = config.alibi_learned,
                       .version = AlibiVersion::kXTransformers0_26_6}));
    layers->alibi_.emplace(std::move(alibi));
  }
  if (config.dynamic_pos_bias) {
    FTX_ASSIGN_OR_RETURN(
        DynamicPositionBias bias,
        DynamicPositionBias::Create(
            {.dim = config.dim / 4,
             .heads = config.heads,
             .depth = config.dynamic_pos_bias_mlp_depth,
             .log_distance = config.dynamic_pos_bias_log_distance,
             .norm = config.dynamic_pos_bias_norm}));
    layers->dynamic_bias_.emplace(std::move(bias));
  }
  if (config.resi_dual) {
    FTX_ASSIGN_OR_RETURN(ResiDual resi_dual,
                         ResiDual::Create({.dim = config.dim,
                                           .scale = static_cast<float>(
                                               config.resi_dual_scale)}));
    layers->resi_dual_.emplace(std::move(resi_dual));
  }
  for (size_t i = 0; i < types.size(); ++i) {
    auto sub = std::make_unique<Sublayer>();
    sub->type = types[i];
    sub->prefix = SublayerPrefix(static_cast<int64_t>(i % block_size));
    const bool last = i + 1 == types.size();
    // 0.26.6 layer_uses_qk_norm: no pre-branch norm, always a post-branch one.
    const bool qk_norm_layer = config.use_qk_norm_attn && sub->type != 'f';
    if (config.use_rezero) {
      sub->rezero.emplace(ReZeroConfig{.initial_gain = 0.0f});
    } else {
      if ((config.pre_norm && !qk_norm_layer) ||
          (!config.pre_norm && (!last || config.resi_dual))) {
        FTX_RETURN_IF_ERROR(sub->norm.Configure(config.norm, config.dim));
      }
      if (config.sandwich_norm || qk_norm_layer) {
        FTX_RETURN_IF_ERROR(
            sub->post_branch_norm.Configure(config.norm, config.dim));
      }
    }
    if (config.gate_residual || config.scale_residual) {
      FTX_ASSIGN_OR_RETURN(
          Residual residual,
          Residual::Create({.dim = config.dim,
                            .scale_residual = config.scale_residual,
                            .scale_residual_constant = static_cast<float>(
                                config.scale_residual_constant),
                            .gate_residual = config.gate_residual}));
      sub->residual.emplace(std::move(residual));
    }
    if (config.shift_tokens > 0) {
      FTX_ASSIGN_OR_RETURN(
          ShiftTokens shift,
          ShiftTokens::Create({.shifts = XTransformersShifts(
                                   config.shift_tokens, config.causal)}));
      sub->shift.emplace(std::move(shift));
    }
    if (sub->type == 'f') {
      sub->branch_scale = config.macaron ? 0.5f : 1.0f;
      FeedForwardConfig ff;
      ff.dim = config.dim;
      ff.mult = config.ff_mult;
      ff.activation = config.ff_activation;
      ff.swish = config.ff_swish;
      ff.relu_squared = config.ff_relu_squared;
      ff.glu = config.ff_glu;
      FTX_ASSIGN_OR_RETURN(FeedForward feed_forward, FeedForward::Create(ff));
      sub->feed_forward.emplace(std::move(feed_forward));
    } else {
      const bool cross = sub->type == 'c';
      AttentionLayerConfig attn;
      attn.d_model = config.dim;
      attn.n_heads = config.heads;
      attn.d_keys = config.dim_head;
      attn.d_values = config.dim_head;
      attn.kv_heads = config.attn_kv_heads;
      attn.d_model_keys =
          cross && config.context_dim > 0 ? config.context_dim : config.dim;
      attn.bias = false;
      attn.num_memory_kv = config.attn_num_mem_kv;
      attn.head_scale = config.attn_head_scale;
      attn.gate_values = config.attn_gate_values;
      attn.on_attn = config.attn_on_attn;
      if (config.attn_qk_norm) {
        attn.qk_norm = QkNormConfig{
            .variant = QkNormVariant::kFixedScale,
            .groups = config.attn_qk_norm_groups,
            .fixed_scale = static_cast<float>(config.attn_qk_norm_scale),
            .dim_scale = config.attn_qk_norm_dim_scale};
      }
      if (config.use_qk_norm_attn) {
        attn.qk_norm = QkNormConfig{
            .variant = QkNormVariant::kLearnedTemperature,
            .scale_init_value =
                config.qk_norm_attn_seq_len > 0
                    ? QkNormTemperatureInit(config.qk_norm_attn_seq_len)
                    : -3.0f};
      }
      sub->mirrors_inner_params = config.attn_talking_heads;
      FTX_ASSIGN_OR_RETURN(
          std::unique_ptr<Attention> inner,
          BuildMechanism(config, registry,
                         cross ? config.cross_attention : config.attention,
                         !cross && config.causal));
      if ((cross ? config.cross_residual_attn : config.residual_attn) &&
          dynamic_cast<FullAttention*>(inner.get()) == nullptr) {
        return Bad(cross ? "cross_residual_attn" : "residual_attn",
                   "false unless \"full\" builds FullAttention", "true");
      }
      if (!cross && position_bias && !inner->SupportsHeadBias()) {
        return Bad("attention",
                   "a mechanism that takes a score bias (e.g. \"full\") with "
                   "rel_pos_bias, alibi_pos_bias or dynamic_pos_bias",
                   absl::StrCat("\"", config.attention, "\""));
      }
      std::unique_ptr<QKTransform> rotary;
      if (config.rotary_pos_emb && !cross) {
        FTX_ASSIGN_OR_RETURN(
            RotaryEmbedding embedding,
            RotaryEmbedding::Create(
                {.rotary_dim = RotaryEmbedding::XTransformersRotaryDim(
                     config.dim_head, config.rotary_emb_dim)}));
        sub->step_rotary.emplace(embedding);
        rotary = std::make_unique<RotaryEmbedding>(std::move(embedding));
        attn.transform_values = config.rotary_rotate_values;
      }
      if (!cross && layers->step_support_.ok()) {
        absl::StatusOr<std::unique_ptr<RecurrentAttention>> recurrent =
            BuildStepMechanism(config, registry);
        if (recurrent.ok()) {
          sub->recurrent = *std::move(recurrent);
        } else {
          layers->step_support_ = recurrent.status();
        }
      }
      FTX_ASSIGN_OR_RETURN(
          sub->attention,
          AttentionLayer::Create(attn, std::move(inner), std::move(rotary)));
    }
    layers->sublayers_.push_back(std::move(sub));
  }
  return layers;
}

std::vector<ParamShape> AttentionLayers::ParamShapes() const {
  std::vector<ParamShape> shapes;
  auto append = [&shapes](const std::string& prefix,
                          const std::vector<ParamShape>& more) {
    for (ParamShape& shape : WithPrefix(prefix, more)) {
      shapes.push_back(std::move(shape));
    }
  };
  if (t5_bias_) append("rel_pos.", t5_bias_->ParamShapes());
  if (alibi_) append("rel_pos.", alibi_->ParamShapes());
  if (dynamic_bias_) append("rel_pos.", dynamic_bias_->ParamShapes());
  if (resi_dual_) {
    shapes.push_back({"final_norm.weight", {config_.dim}});
    shapes.push_back({"final_norm.bias", {config_.dim}});
  }
  std::set<std::string> listed;  // weight_tie_layers: first use only
  for (const auto& sub : sublayers_) {
    if (!listed.insert(sub->prefix).second) continue;
    append(sub->prefix + sub->norm.name, sub->norm.ParamShapes());
    append(sub->prefix + sub->post_branch_norm.name,
           sub->post_branch_norm.ParamShapes());
    if (sub->rezero)
      append(sub->prefix + "rezero.", sub->rezero->ParamShapes());
    if (sub->residual) {
      append(sub->prefix + "residual.", sub->residual->ParamShapes());
    }
    if (sub->attention) {
      append(sub->prefix + BlockName(sub->type), sub->attention->ParamShapes());
      if (sub->mirrors_inner_params) {
        std::vector<ParamShape> inner;
        for (const ParamRef& ref : sub->attention->inner().Parameters()) {
          inner.push_back({ref.name, ref.value->shape()});
        }
        append(sub->prefix + BlockName(sub->type), inner);
      }
    } else {
      append(sub->prefix + BlockName(sub->type),
             sub->feed_forward->ParamShapes());
    }
  }
  return shapes;
}

absl::Status AttentionLayers::InitParams(const Context& ctx, ParamStore& store,
                                         absl::string_view prefix) const {
  const std::string base(prefix);
  uint64_t tensor_index = 0;
  if (t5_bias_) {
    FTX_ASSIGN_OR_RETURN(
        TensorView<float> weight,
        store.Value(base + "rel_pos.relative_attention_bias.weight"));
    FTX_RETURN_IF_ERROR(t5_bias_->InitParams(
        ctx, weight, SubSeed(config_.seed, (1u << 20) + 16)));
  }
  if (alibi_ && alibi_->learned()) {
    FTX_ASSIGN_OR_RETURN(
        TensorView<float> log_slopes,
        OptionalValue(store, base + "rel_pos.learned_logslopes"));
    FTX_ASSIGN_OR_RETURN(
        TensorView<float> log_slopes_future,
        OptionalValue(store, base + "rel_pos.learned_logslopes_future"));
    FTX_RETURN_IF_ERROR(alibi_->InitParams(log_slopes, log_slopes_future));
  }
  if (dynamic_bias_) {
    FTX_ASSIGN_OR_RETURN(const DynamicPositionBiasGrads views,
                         DynamicBiasViews(store, base, /*gradients=*/false));
    FTX_RETURN_IF_ERROR(dynamic_bias_->InitParams(
        ctx, views, SubSeed(config_.seed, (1u << 20) + 17)));
  }
  if (resi_dual_) {
    FTX_ASSIGN_OR_RETURN(TensorView<float> weight,
                         store.Value(base + "final_norm.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> bias,
                         store.Value(base + "final_norm.bias"));
    FTX_RETURN_IF_ERROR(resi_dual_->final_norm().InitParams(weight, bias));
  }
  std::set<std::string> initialised;  // weight_tie_layers: first use only
  for (const auto& sub : sublayers_) {
    if (!initialised.insert(sub->prefix).second) continue;
    FTX_RETURN_IF_ERROR(sub->norm.InitParams(store, sub->Base(base)));
    FTX_RETURN_IF_ERROR(
        sub->post_branch_norm.InitParams(store, sub->Base(base)));
    if (sub->rezero) {
      FTX_ASSIGN_OR_RETURN(TensorView<float> g,
                           store.Value(sub->Base(base) + "rezero.g"));
      sub->rezero->InitParams(g);
    }
    if (sub->residual) {
      FTX_RETURN_IF_ERROR(sub->residual->InitParams(
          ctx, sub->ResidualViews(store, base, /*gradients=*/false),
          SubSeed(config_.seed, (1u << 21) + tensor_index++)));
    }
    if (sub->feed_forward) {
      FTX_ASSIGN_OR_RETURN(FeedForwardTensors<float> views,
                           sub->FeedForwardViews(store, base, false));
      FTX_RETURN_IF_ERROR(sub->feed_forward->InitParams(
          ctx, SubSeed(config_.seed, tensor_index++), views));
      continue;
    }
    // torch Linear weights U(-1/sqrt(fan_in), 1/sqrt(fan_in)); memory
    // key/values randn, as x-transformers.
    FTX_ASSIGN_OR_RETURN(AttentionLayerGrads option_views,
                         sub->AttentionInitViews(store, base));
    FTX_RETURN_IF_ERROR(sub->attention->InitOptionParams(option_views));
    // Talking-heads mixings: the mechanism's own initialisation.
    if (sub->mirrors_inner_params) {
      for (const ParamRef& ref : sub->attention->inner().Parameters()) {
        FTX_ASSIGN_OR_RETURN(TensorView<float> value,
                             store.Value(sub->BlockPrefix(base) + ref.name));
        std::copy(ref.value->data<float>(),
                  ref.value->data<float>() + value.NumElements(), value.data());
      }
    }
    for (const ParamShape& shape : sub->attention->ParamShapes()) {
      if (AttentionLayer::IsOptionParam(shape.name)) continue;
      FTX_ASSIGN_OR_RETURN(TensorView<float> value,
                           store.Value(sub->BlockPrefix(base) + shape.name));
      const RandomOptions random{.seed = SubSeed(config_.seed, tensor_index++)};
      if (shape.shape.rank() == 2) {
        const float bound =
            1.0f / std::sqrt(static_cast<float>(shape.shape.dim(1)));
        FTX_RETURN_IF_ERROR(FillUniform(ctx, value, -bound, bound, random));
      } else {
        FTX_RETURN_IF_ERROR(FillNormal(ctx, value, 0.0f, 1.0f, random));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status AttentionLayers::PositionBiasForward(const Context& ctx,
                                                  ParamStore& store,
                                                  const std::string& base,
                                                  int64_t length) {
  if (!t5_bias_ && !alibi_ && !dynamic_bias_) return absl::OkStatus();
  FTX_ASSIGN_OR_RETURN(TensorView<float> bias,
                       Buffer(position_bias_, {config_.heads, length, length}));
  if (dynamic_bias_) {
    FTX_ASSIGN_OR_RETURN(const DynamicPositionBiasGrads views,
                         DynamicBiasViews(store, base, /*gradients=*/false));
    return dynamic_bias_->Forward(ctx, AsParams(views), bias,
                                  &dynamic_bias_cache_);
  }
  if (t5_bias_) {
    FTX_ASSIGN_OR_RETURN(
        TensorView<float> weight,
        store.Value(base + "rel_pos.relative_attention_bias.weight"));
    return t5_bias_->Forward(ctx, weight, bias);
  }
  FTX_ASSIGN_OR_RETURN(
      TensorView<float> log_slopes,
      OptionalValue(store, base + "rel_pos.learned_logslopes"));
  FTX_ASSIGN_OR_RETURN(
      TensorView<float> log_slopes_future,
      OptionalValue(store, base + "rel_pos.learned_logslopes_future"));
  return alibi_->Forward(ctx, log_slopes, log_slopes_future, bias);
}

absl::Status AttentionLayers::PositionBiasBackward(const Context& ctx,
                                                   ParamStore& store,
                                                   const std::string& base) {
  if (dynamic_bias_) {
    FTX_ASSIGN_OR_RETURN(const DynamicPositionBiasGrads params,
                         DynamicBiasViews(store, base, /*gradients=*/false));
    FTX_ASSIGN_OR_RETURN(const DynamicPositionBiasGrads grads,
                         DynamicBiasViews(store, base, /*gradients=*/true));
    return dynamic_bias_->Backward(ctx, AsParams(params), dynamic_bias_cache_,
                                   d_position_bias_.view<float>(), grads);
  }
  if (t5_bias_) {
    FTX_ASSIGN_OR_RETURN(
        TensorView<float> d_weight,
        store.Grad(base + "rel_pos.relative_attention_bias.weight"));
    return t5_bias_->Backward(ctx, d_position_bias_.view<float>(), d_weight);
  }
  if (alibi_ && alibi_->learned()) {
    FTX_ASSIGN_OR_RETURN(
        TensorView<float> log_slopes,
        OptionalValue(store, base + "rel_pos.learned_logslopes"));
    FTX_ASSIGN_OR_RETURN(
        TensorView<float> log_slopes_future,
        OptionalValue(store, base + "rel_pos.learned_logslopes_future"));
    FTX_ASSIGN_OR_RETURN(
        TensorView<float> d_log_slopes,
        OptionalGrad(store, base + "rel_pos.learned_logslopes"));
    FTX_ASSIGN_OR_RETURN(
        TensorView<float> d_log_slopes_future,
        OptionalGrad(store, base + "rel_pos.learned_logslopes_future"));
    return alibi_->Backward(ctx, log_slopes, log_slopes_future,
                            d_position_bias_.view<float>(), d_log_slopes,
                            d_log_slopes_future);
  }
  return absl::OkStatus();
}

absl::StatusOr<DynamicPositionBiasGrads> AttentionLayers::DynamicBiasViews(
    ParamStore& store, const std::string& base, bool gradients) const {
  auto find = [&](const std::string& name) {
    return gradients ? store.Grad(base + "rel_pos." + name)
                     : store.Value(base + "rel_pos." + name);
  };
  const DynamicPositionBiasConfig& config = dynamic_bias_->config();
  DynamicPositionBiasGrads views;
  views.hidden.resize(config.depth);
  for (int64_t k = 0; k < config.depth; ++k) {
    const std::string layer = absl::StrCat("mlp.", k, ".");
    DynamicPositionBiasGrads::Hidden& hidden = views.hidden[k];
    FTX_ASSIGN_OR_RETURN(hidden.weight, find(layer + "0.weight"));
    FTX_ASSIGN_OR_RETURN(hidden.bias, find(layer + "0.bias"));
    if (config.norm) {
      FTX_ASSIGN_OR_RETURN(hidden.norm_weight, find(layer + "1.weight"));
      FTX_ASSIGN_OR_RETURN(hidden.norm_bias, find(layer + "1.bias"));
    }
  }
  const std::string out = absl::StrCat("mlp.", config.depth, ".");
  FTX_ASSIGN_OR_RETURN(views.out_weight, find(out + "weight"));
  FTX_ASSIGN_OR_RETURN(views.out_bias, find(out + "bias"));
  return views;
}

absl::Status AttentionLayers::DrawForgetfulMasks(const StackInputs& inputs,
                                                 int64_t batch,
                                                 int64_t length) {
  forgetful_active_ = config_.mask_prob > 0.0 && inputs.training;
  if (!forgetful_active_) return absl::OkStatus();
  const ForgetfulMaskConfig forgetful{
      .mask_prob = static_cast<float>(config_.mask_prob)};
  FTX_ASSIGN_OR_RETURN(const std::vector<uint8_t> keep,
                       ForgetfulKeyMask(forgetful, batch, length,
                                        /*training=*/true, inputs.seed));
  FTX_ASSIGN_OR_RETURN(TensorView<float> masks,
                       Buffer(forgetful_masks_, {batch, length, length}));
  for (int64_t b = 0; b < batch; ++b) {
    const std::vector<uint8_t> row(keep.begin() + b * length,
                                   keep.begin() + (b + 1) * length);
    FTX_RETURN_IF_ERROR(ForgetfulCausalAdditiveMask(
        forgetful, row,
        TensorView<float>(masks.data() + b * length * length,
                          {length, length})));
  }
  return absl::OkStatus();
}

namespace {

// Row b of the masks: its forgetful causal mask, its padding length and a
// dropout seed of its own.
AttentionLayerMasks RowMasks(const AttentionLayerMasks& masks,
                             const Tensor& forgetful_masks, int64_t b) {
  const int64_t T = forgetful_masks.shape().dim(1);
  AttentionLayerMasks row = masks;
  row.attn_mask = AttnMask::Additive(TensorView<const float>(
      forgetful_masks.data<float>() + b * T * T, {T, T}));
  if (!masks.query_lengths.full()) {
    row.query_lengths.lengths = {masks.query_lengths.lengths[b]};
  }
  if (!masks.key_lengths.full()) {
    row.key_lengths.lengths = {masks.key_lengths.lengths[b]};
  }
  row.seed = masks.seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(b);
  return row;
}

}  // namespace

absl::Status AttentionLayers::ForgetfulAttentionForward(
    const Context& ctx, Sublayer& sub, const AttentionLayerParams& params,
    const AttentionLayerMasks& masks, TensorView<const float> hidden,
    TensorView<float> branch) {
  const int64_t B = hidden.dim(0), T = hidden.dim(1), C = hidden.dim(2);
  sub.row_caches.resize(B);
  for (int64_t b = 0; b < B; ++b) {
    FTX_RETURN_IF_ERROR(sub.attention->Forward(
        ctx, params,
        TensorView<const float>(hidden.data() + b * T * C, {1, T, C}),
        TensorView<const float>(), RowMasks(masks, forgetful_masks_, b),
        TensorView<float>(branch.data() + b * T * C, {1, T, C}),
        &sub.row_caches[b]));
  }
  return absl::OkStatus();
}

absl::Status AttentionLayers::ForgetfulAttentionBackward(
    const Context& ctx, Sublayer& sub, const AttentionLayerParams& params,
    const AttentionLayerMasks& masks, TensorView<const float> hidden,
    TensorView<const float> d_branch, TensorView<float> d_hidden,
    const AttentionLayerGrads& grads) {
  const int64_t B = hidden.dim(0), T = hidden.dim(1), C = hidden.dim(2);
  for (int64_t b = 0; b < B; ++b) {
    FTX_RETURN_IF_ERROR(sub.attention->Backward(
        ctx, params,
        TensorView<const float>(hidden.data() + b * T * C, {1, T, C}),
        TensorView<const float>(), RowMasks(masks, forgetful_masks_, b),
        sub.row_caches[b],
        TensorView<const float>(d_branch.data() + b * T * C, {1, T, C}),
        TensorView<float>(d_hidden.data() + b * T * C, {1, T, C}),
        TensorView<float>(), grads));
  }
  return absl::OkStatus();
}

absl::Status AttentionLayers::CheckMems(TensorView<const float> x,
                                        const StackInputs& inputs) const {
  if (inputs.mems.empty()) return absl::OkStatus();
  const int64_t self_attention =
      std::count(layer_types_.begin(), layer_types_.end(), 'a');
  auto bad = [](const std::string& why) {
    return absl::InvalidArgumentError(
        absl::StrCat("AttentionLayers: mems ", why));
  };
  if (static_cast<int64_t>(inputs.mems.size()) != self_attention) {
    return bad(
        absl::StrCat("must hold one memory per self-attention "
                     "sublayer (",
                     self_attention, "), got ", inputs.mems.size()));
  }
  for (size_t k = 0; k < inputs.mems.size(); ++k) {
    const TensorView<const float>& memory = inputs.mems[k];
    if (memory.data() == nullptr) continue;
    if (memory.rank() != 3 || memory.dim(0) != x.dim(0) ||
        memory.dim(2) != config_.dim || !memory.IsContiguous()) {
      return bad(absl::StrCat("[", k, "] must be a contiguous [", x.dim(0),
                              ", M, ", config_.dim, "] tensor, got ",
                              memory.shape().ToString()));
    }
  }
  if (!inputs.lengths.lengths.empty()) {
    return bad(
        "cannot be combined with padding lengths (x-transformers "
        "0.26.6 fails there too)");
  }
  if (config_.rotary_pos_emb || config_.rel_pos_bias ||
      config_.alibi_pos_bias || config_.dynamic_pos_bias ||
      config_.residual_attn || config_.mask_prob > 0.0) {
    return bad(
        "cannot be combined with rotary_pos_emb, rel_pos_bias, "
        "alibi_pos_bias, dynamic_pos_bias, residual_attn or mask_prob");
  }
  return absl::OkStatus();
}

namespace {

// x *= scale over a contiguous tensor.
void ScaleInPlace(const Context& ctx, TensorView<float> x, float scale) {
  float* data = x.data();
  ctx.pool().ParallelFor(
      x.NumElements(),
      [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) data[i] *= scale;
      },
      4096);
}

}  // namespace

absl::Status AttentionLayers::Forward(const Context& ctx, ParamStore& store,
                                      absl::string_view prefix,
                                      TensorView<const float> x,
                                      const StackInputs& inputs,
                                      TensorView<float> y,
                                      bool save_for_backward) {
  saved_ = false;
  const std::string base(prefix);
  if (x.rank() != 3 || x.dim(2) != config_.dim || !x.IsContiguous() ||
      x.data() == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("AttentionLayers: x must be a contiguous [B, T, ",
                     config_.dim, "] tensor"));
  }
  if (y.shape() != x.shape() || !y.IsContiguous() || y.data() == nullptr) {
    return absl::InvalidArgumentError(
        "AttentionLayers: y must be contiguous and shaped like x");
  }
  if (config_.cross_attend) {
    const int64_t context_dim =
        config_.context_dim > 0 ? config_.context_dim : config_.dim;
    if (inputs.context.rank() != 3 || inputs.context.dim(0) != x.dim(0) ||
        inputs.context.dim(2) != context_dim) {
      return absl::InvalidArgumentError(
          absl::StrCat("AttentionLayers: cross_attend needs a context [B, S, ",
                       context_dim, "] with B = ", x.dim(0)));
    }
  } else if (inputs.context.data() != nullptr) {
    return absl::InvalidArgumentError(
        "AttentionLayers: a context was given but cross_attend is false");
  }
  const Shape shape = x.shape();
  FTX_RETURN_IF_ERROR(CheckMems(x, inputs));
  FTX_RETURN_IF_ERROR(PositionBiasForward(ctx, store, base, x.dim(1)));
  const size_t count = sublayers_.size();
  // residual_attn / cross_residual_attn: the last self-attention and the last
  // cross-attention sublayer's pre-softmax scores.
  TensorView<const float> previous_scores, previous_cross_scores;
  size_t self_attention_index = 0;  // k of mems[k]
  FTX_RETURN_IF_ERROR(DrawForgetfulMasks(inputs, x.dim(0), x.dim(1)));
  activations_.resize(count + 1);
  FTX_ASSIGN_OR_RETURN(TensorView<float> first, Buffer(activations_[0], shape));
  Copy(ctx, x, first);
  if (resi_dual_) {
    FTX_ASSIGN_OR_RETURN(TensorView<float> outer, Buffer(outer_, shape));
    FTX_RETURN_IF_ERROR(resi_dual_->Begin(ctx, x, outer));
  }
  for (size_t i = 0; i < count; ++i) {
    Sublayer& sub = *sublayers_[i];
    const bool post_norm = !config_.pre_norm && sub.norm.present();
    TensorView<const float> input = activations_[i].view<float>();
    FTX_ASSIGN_OR_RETURN(TensorView<float> output,
                         Buffer(activations_[i + 1], shape));
    TensorView<const float> hidden = input;
    if (config_.pre_norm && sub.norm.present()) {
      FTX_ASSIGN_OR_RETURN(TensorView<float> normed, Buffer(sub.normed, shape));
      FTX_RETURN_IF_ERROR(
          sub.norm.Forward(ctx, store, sub.Base(base), input, normed, true));
      hidden = normed;
    }
    if (sub.shift) {
      FTX_ASSIGN_OR_RETURN(TensorView<float> shifted,
                           Buffer(sub.shifted, shape));
      FTX_RETURN_IF_ERROR(
          sub.shift->Forward(ctx, hidden, sub.ShiftLengths(inputs), shifted));
      hidden = shifted;
    }
    FTX_ASSIGN_OR_RETURN(TensorView<float> branch, Buffer(sub.branch, shape));
    const uint64_t seed = inputs.seed * 1000003ull + i;
    if (sub.feed_forward) {
      FTX_ASSIGN_OR_RETURN(FeedForwardTensors<float> params,
                           sub.FeedForwardViews(store, base, false));
      FeedForwardParams const_params{params.in_weight,   params.in_bias,
                                     params.norm_weight, params.norm_bias,
                                     params.out_weight,  params.out_bias};
      FTX_RETURN_IF_ERROR(sub.feed_forward->Forward(
          ctx, const_params, hidden,
          {.training = inputs.training, .seed = seed}, branch, &sub.ff_cache));
    } else {
      const bool cross = sub.type == 'c';
      AttentionLayerMasks masks;
      masks.attn_mask =
          !cross && config_.causal ? AttnMask::Causal() : AttnMask::All();
      masks.query_lengths = inputs.lengths;
      masks.key_lengths = cross ? inputs.context_lengths : inputs.lengths;
      masks.training = inputs.training;
      masks.seed = seed;
      if (!cross && position_bias_.NumElements() > 0) {
        masks.head_bias = position_bias_.view<float>();
      }
      FTX_ASSIGN_OR_RETURN(AttentionLayerParams params,
                           sub.AttentionParams(store, base));
      FTX_RETURN_IF_ERROR(sub.LoadInnerParams(store, base));
      if (cross ? config_.cross_residual_attn : config_.residual_attn) {
        const int64_t keys = cross ? inputs.context.dim(1) : x.dim(1);
        FTX_ASSIGN_OR_RETURN(
            TensorView<float> current,
            Buffer(sub.residual_scores, {config_.heads, x.dim(0), x.dim(1),
                                         keys + config_.attn_num_mem_kv}));
        TensorView<const float>& previous =
            cross ? previous_cross_scores : previous_scores;
        sub.has_previous_scores = previous.data() != nullptr;
        sub.FullInner().SetResidualScores(previous, current);
        previous = current;
      }
      TensorView<const float> kv_source =
          cross ? inputs.context : TensorView<const float>();
      sub.memory_length = 0;
      if (!cross && !inputs.mems.empty()) {
        const TensorView<const float> memory =
            inputs.mems[self_attention_index];
        sub.memory_length = memory.data() == nullptr ? 0 : memory.dim(1);
        if (sub.memory_length > 0) {
          FTX_ASSIGN_OR_RETURN(
              TensorView<float> kv_input,
              Buffer(sub.kv_input,
                     {x.dim(0), sub.memory_length + x.dim(1), config_.dim}));
          FTX_RETURN_IF_ERROR(
              XlMemory::ConcatKeyValueInput(ctx, memory, hidden, kv_input));
          kv_source = kv_input;
          if (config_.causal) {
            masks.attn_mask = XlMemory::CausalMask(sub.memory_length);
          }
        }
      }
      if (!cross) ++self_attention_index;
      if (!cross && forgetful_active_) {
        FTX_RETURN_IF_ERROR(
            ForgetfulAttentionForward(ctx, sub, params, masks, hidden, branch));
      } else {
        FTX_RETURN_IF_ERROR(sub.attention->Forward(ctx, params, hidden,
                                                   kv_source, masks, branch,
                                                   &sub.attention_cache));
      }
    }
    if (sub.branch_scale != 1.0f) ScaleInPlace(ctx, branch, sub.branch_scale);
    TensorView<float> target = output;
    if (post_norm) {
      FTX_ASSIGN_OR_RETURN(target, Buffer(sub.sum, shape));
    }
    // The branch output the residual function combines with the skip path.
    TensorView<float> combined = target;
    if (sub.residual) {
      FTX_ASSIGN_OR_RETURN(combined, Buffer(sub.residual_in, shape));
    }
    if (sub.post_branch_norm.present()) {
      FTX_RETURN_IF_ERROR(sub.post_branch_norm.Forward(
          ctx, store, sub.Base(base), branch, combined, true));
    } else if (sub.rezero) {
      FTX_ASSIGN_OR_RETURN(TensorView<float> g,
                           store.Value(sub.Base(base) + "rezero.g"));
      FTX_RETURN_IF_ERROR(sub.rezero->Forward(ctx, g, branch, combined));
    } else {
      Copy(ctx, branch, combined);
    }
    if (resi_dual_) {
      // The outer stream takes the branch output before any post-branch
      // norm (after ReZero's gain).
      FTX_RETURN_IF_ERROR(resi_dual_->Accumulate(
          ctx, sub.post_branch_norm.present() ? branch : combined,
          outer_.view<float>()));
    }
    if (sub.residual) {
      FTX_RETURN_IF_ERROR(sub.residual->Forward(
          ctx, ToConst(sub.ResidualViews(store, base, /*gradients=*/false)),
          combined, input, target, &sub.residual_cache));
    } else {
      AddInto(ctx, target, input);
    }
    if (post_norm) {
      FTX_RETURN_IF_ERROR(
          sub.norm.Forward(ctx, store, sub.Base(base), target, output, true));
    }
  }
  if (resi_dual_) {
    FTX_ASSIGN_OR_RETURN(TensorView<float> weight,
                         store.Value(base + "final_norm.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> bias,
                         store.Value(base + "final_norm.bias"));
    FTX_RETURN_IF_ERROR(
        resi_dual_->Finish(ctx, weight, bias, activations_[count].view<float>(),
                           outer_.view<float>(), y, &resi_dual_cache_));
  } else {
    Copy(ctx, activations_[count].view<float>(), y);
  }
  last_inputs_ = inputs;
  saved_ = save_for_backward;
  return absl::OkStatus();
}

absl::Status AttentionLayers::Backward(const Context& ctx, ParamStore& store,
                                       absl::string_view prefix,
                                       TensorView<const float> d_y,
                                       TensorView<float> d_x,
                                       TensorView<float> d_context) {
  if (!saved_) {
    return absl::FailedPreconditionError(
        "AttentionLayers::Backward needs a Forward with save_for_backward");
  }
  const std::string base(prefix);
  const Shape shape = activations_[0].shape();
  if (d_y.shape() != shape || !d_y.IsContiguous() || d_x.shape() != shape ||
      !d_x.IsContiguous()) {
    return absl::InvalidArgumentError(
        "AttentionLayers::Backward: d_y and d_x must be contiguous and shaped "
        "like the forward's x");
  }
  const bool want_context = d_context.data() != nullptr;
  if (want_context) {
    if (!config_.cross_attend ||
        d_context.shape() != last_inputs_.context.shape() ||
        !d_context.IsContiguous()) {
      return absl::InvalidArgumentError(
          "AttentionLayers::Backward: d_context must be contiguous and shaped "
          "like the forward's context (cross_attend only)");
    }
    for (int64_t i = 0; i < d_context.NumElements(); ++i) {
      d_context.data()[i] = 0.0f;
    }
  }
  const bool position_bias = position_bias_.NumElements() > 0;
  if (position_bias) {
    // Zero-filled: every self-attention sublayer adds its part.
    FTX_RETURN_IF_ERROR(
        EnsureTensor(d_position_bias_, position_bias_.shape(), Device::Cpu()));
    std::fill(d_position_bias_.data<float>(),
              d_position_bias_.data<float>() + d_position_bias_.NumElements(),
              0.0f);
  }
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_current, Buffer(d_current_, shape));
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_hidden, Buffer(d_hidden_, shape));
  Copy(ctx, d_y, d_current);
  if (resi_dual_) {
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_outer, Buffer(d_outer_, shape));
    FTX_ASSIGN_OR_RETURN(TensorView<float> weight,
                         store.Value(base + "final_norm.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_weight,
                         store.Grad(base + "final_norm.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_bias,
                         store.Grad(base + "final_norm.bias"));
    FTX_RETURN_IF_ERROR(resi_dual_->FinishBackward(
        ctx, weight, resi_dual_cache_, outer_.view<float>(), d_y, d_outer,
        d_weight, d_bias));
  }
  // residual_attn / cross_residual_attn: the gradient of the scores the next
  // self-attention (cross-attention) sublayer received from this one.
  TensorView<const float> d_later_scores, d_later_cross_scores;
  const size_t count = sublayers_.size();
  for (size_t i = count; i-- > 0;) {
    Sublayer& sub = *sublayers_[i];
    const std::string sub_base = sub.Base(base);
    TensorView<const float> input = activations_[i].view<float>();
    // d of branch + residual.
    TensorView<float> d_sum = d_current;
    if (!config_.pre_norm && sub.norm.present()) {
      FTX_ASSIGN_OR_RETURN(d_sum, Buffer(d_sum_, shape));
      FTX_RETURN_IF_ERROR(sub.norm.Backward(
          ctx, store, sub_base, sub.sum.view<float>(), d_current, d_sum));
    }
    // The residual function's gradients: d_skip for the skip path and
    // d_combined for the branch output it combined (both d_sum for the plain
    // sum).
    TensorView<float> d_skip = d_sum;
    TensorView<float> d_combined = d_sum;
    if (sub.residual) {
      FTX_ASSIGN_OR_RETURN(d_skip, Buffer(d_skip_, shape));
      FTX_ASSIGN_OR_RETURN(d_combined, Buffer(d_combined_, shape));
      FTX_RETURN_IF_ERROR(sub.residual->Backward(
          ctx, ToConst(sub.ResidualViews(store, base, /*gradients=*/false)),
          sub.residual_cache, sub.residual_in.view<float>(), input, d_sum,
          d_combined, d_skip, sub.ResidualViews(store, base, true)));
    }
    // resi_dual: the outer stream's share of the combined branch output
    // (without a post-branch norm), kept apart from the skip path.
    if (resi_dual_ && !sub.post_branch_norm.present()) {
      if (d_combined.data() == d_skip.data()) {
        FTX_ASSIGN_OR_RETURN(TensorView<float> d_total,
                             Buffer(d_resi_branch_, shape));
        Copy(ctx, d_combined, d_total);
        d_combined = d_total;
      }
      FTX_RETURN_IF_ERROR(resi_dual_->AddOuterGradient(
          ctx, d_outer_.view<float>(), d_combined));
    }
    // d of the (scaled) block output; never aliases d_skip when it is scaled
    // below.
    TensorView<float> d_branch = d_combined;
    if (sub.post_branch_norm.present() || sub.rezero ||
        sub.branch_scale != 1.0f) {
      FTX_ASSIGN_OR_RETURN(d_branch, Buffer(d_branch_, shape));
      if (sub.post_branch_norm.present()) {
        FTX_RETURN_IF_ERROR(sub.post_branch_norm.Backward(
            ctx, store, sub_base, sub.branch.view<float>(), d_combined,
            d_branch));
        if (resi_dual_) {
          FTX_RETURN_IF_ERROR(resi_dual_->AddOuterGradient(
              ctx, d_outer_.view<float>(), d_branch));
        }
      } else if (sub.rezero) {
        const std::string name = sub_base + "rezero.g";
        FTX_ASSIGN_OR_RETURN(TensorView<float> g, store.Value(name));
        FTX_ASSIGN_OR_RETURN(TensorView<float> d_g, store.Grad(name));
        FTX_RETURN_IF_ERROR(sub.rezero->Backward(
            ctx, g, sub.branch.view<float>(), d_combined, d_branch, d_g));
      } else {
        Copy(ctx, d_combined, d_branch);
      }
      if (sub.branch_scale != 1.0f) {
        ScaleInPlace(ctx, d_branch, sub.branch_scale);
      }
    }
    const bool pre_norm = config_.pre_norm && sub.norm.present();
    TensorView<const float> normed =
        pre_norm ? TensorView<const float>(sub.normed.view<float>()) : input;
    TensorView<const float> hidden =
        sub.shift ? TensorView<const float>(sub.shifted.view<float>()) : normed;
    if (sub.feed_forward) {
      FTX_ASSIGN_OR_RETURN(FeedForwardTensors<float> params,
                           sub.FeedForwardViews(store, base, false));
      FTX_ASSIGN_OR_RETURN(FeedForwardTensors<float> grads,
                           sub.FeedForwardViews(store, base, true));
      FeedForwardParams const_params{params.in_weight,   params.in_bias,
                                     params.norm_weight, params.norm_bias,
                                     params.out_weight,  params.out_bias};
      FTX_RETURN_IF_ERROR(sub.feed_forward->Backward(
          ctx, const_params, sub.ff_cache, hidden, d_branch, d_hidden, grads));
    } else {
      const bool cross = sub.type == 'c';
      AttentionLayerMasks masks;
      masks.attn_mask =
          !cross && config_.causal ? AttnMask::Causal() : AttnMask::All();
      masks.query_lengths = last_inputs_.lengths;
      masks.key_lengths =
          cross ? last_inputs_.context_lengths : last_inputs_.lengths;
      masks.training = last_inputs_.training;
      masks.seed = last_inputs_.seed * 1000003ull + i;
      FTX_ASSIGN_OR_RETURN(AttentionLayerParams params,
                           sub.AttentionParams(store, base));
      FTX_ASSIGN_OR_RETURN(AttentionLayerGrads grads,
                           sub.AttentionGradViews(store, base));
      if (!cross && position_bias) {
        masks.head_bias = position_bias_.view<float>();
        grads.head_bias = d_position_bias_.view<float>();
      }
      TensorView<float> d_context_part;
      TensorView<const float> kv_source =
          cross ? last_inputs_.context : TensorView<const float>();
      if (cross) {
        FTX_ASSIGN_OR_RETURN(
            d_context_part,
            Buffer(d_context_scratch_, last_inputs_.context.shape()));
      } else if (sub.memory_length > 0) {
        kv_source = sub.kv_input.view<float>();
        FTX_ASSIGN_OR_RETURN(d_context_part,
                             Buffer(sub.d_kv_input, sub.kv_input.shape()));
        if (config_.causal) {
          masks.attn_mask = XlMemory::CausalMask(sub.memory_length);
        }
      }
      sub.ClearInnerGrads();
      if (cross ? config_.cross_residual_attn : config_.residual_attn) {
        TensorView<float> d_previous;
        if (sub.has_previous_scores) {
          FTX_ASSIGN_OR_RETURN(d_previous, Buffer(sub.d_previous_scores,
                                                  sub.residual_scores.shape()));
        }
        TensorView<const float>& d_later =
            cross ? d_later_cross_scores : d_later_scores;
        sub.FullInner().SetResidualScoreGrads(d_later, d_previous);
        d_later = d_previous;
      }
      if (!cross && forgetful_active_) {
        FTX_RETURN_IF_ERROR(ForgetfulAttentionBackward(
            ctx, sub, params, masks, hidden, d_branch, d_hidden, grads));
      } else {
        FTX_RETURN_IF_ERROR(sub.attention->Backward(
            ctx, params, hidden, kv_source, masks, sub.attention_cache,
            d_branch, d_hidden, d_context_part, grads));
      }
      FTX_RETURN_IF_ERROR(sub.StoreInnerGrads(store, base));
      if (cross && want_context) AddInto(ctx, d_context, d_context_part);
      if (!cross && sub.memory_length > 0) {
        // The hidden rows of cat(memory, hidden) also fed keys and values;
        // the memory rows get no gradient.
        const int64_t rows = sub.memory_length * config_.dim;
        const int64_t per_batch = hidden.dim(1) * config_.dim;
        for (int64_t b = 0; b < hidden.dim(0); ++b) {
          float* target = d_hidden.data() + b * per_batch;
          const float* source =
              d_context_part.data() + b * (rows + per_batch) + rows;
          for (int64_t i = 0; i < per_batch; ++i) target[i] += source[i];
        }
      }
    }
    TensorView<const float> d_normed_input = d_hidden;
    if (sub.shift) {
      FTX_ASSIGN_OR_RETURN(TensorView<float> d_shifted,
                           Buffer(d_shifted_, shape));
      FTX_RETURN_IF_ERROR(sub.shift->Backward(
          ctx, sub.ShiftLengths(last_inputs_), d_hidden, d_shifted));
      d_normed_input = d_shifted;
    }
    // d_x_i = d_sum (skip path) + d_block_input (through the pre-norm).
    TensorView<const float> d_block_input = d_normed_input;
    if (pre_norm) {
      FTX_ASSIGN_OR_RETURN(TensorView<float> d_normed,
                           Buffer(d_normed_, shape));
      FTX_RETURN_IF_ERROR(sub.norm.Backward(ctx, store, sub_base, input,
                                            d_normed_input, d_normed));
      d_block_input = d_normed;
    }
    if (d_skip.data() != d_current.data()) Copy(ctx, d_skip, d_current);
    AddInto(ctx, d_current, d_block_input);
  }
  Copy(ctx, d_current, d_x);
  if (resi_dual_) {
    FTX_RETURN_IF_ERROR(
        resi_dual_->AddOuterGradient(ctx, d_outer_.view<float>(), d_x));
  }
  if (position_bias) {
    FTX_RETURN_IF_ERROR(PositionBiasBackward(ctx, store, base));
  }
  return absl::OkStatus();
}

std::vector<TensorView<const float>> AttentionLayers::Hiddens() const {
  std::vector<TensorView<const float>> hiddens;
  if (activations_.size() != sublayers_.size() + 1) return hiddens;
  for (size_t i = 0; i < sublayers_.size(); ++i) {
    if (sublayers_[i]->type == 'a') {
      hiddens.push_back(activations_[i].view<float>());
    }
  }
  return hiddens;
}

absl::StatusOr<std::vector<Tensor>> AttentionLayers::AttentionMaps() const {
  if (!saved_) {
    return absl::FailedPreconditionError(
        "AttentionLayers::AttentionMaps needs a Forward with "
        "save_for_backward");
  }
  std::vector<Tensor> maps;
  for (const auto& sub : sublayers_) {
    if (!sub->attention) continue;
    const auto* full =
        dynamic_cast<const FullAttention*>(&sub->attention->inner());
    const AttentionCache& inner = sub->attention_cache.inner;
    if (full == nullptr || inner.saved.empty()) {
      return absl::UnimplementedError(absl::StrCat(
          "AttentionLayers::AttentionMaps: sublayer ", sub->prefix,
          " does not use \"full\" attention, which alone keeps its maps"));
    }
    // "full" keeps the probabilities as [H, N, L, S] (attention/full.cc).
    const TensorView<const float> probabilities = inner.saved[0].view<float>();
    const int64_t H = probabilities.dim(0), N = probabilities.dim(1),
                  L = probabilities.dim(2), S = probabilities.dim(3);
    FTX_ASSIGN_OR_RETURN(
        Tensor map, Tensor::Create(DType::kF32, {N, H, L, S}, Device::Cpu()));
    float* out = map.data<float>();
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t h = 0; h < H; ++h) {
        const float* source = &probabilities.at(h, n, 0, 0);
        std::copy(source, source + L * S, out + (n * H + h) * L * S);
      }
    }
    maps.push_back(std::move(map));
  }
  return maps;
}

absl::Status AttentionLayers::StartDecode(DecodeState& state) const {
  FTX_RETURN_IF_ERROR(step_support_);
  state.attention_states_.clear();
  for (const auto& sub : sublayers_) {
    if (sub->recurrent == nullptr) {
      state.attention_states_.push_back(nullptr);
      continue;
    }
    // A decoder with random features decodes with the projection its parallel
    // twin uses now.
    auto* favor = dynamic_cast<FavorAttention*>(&sub->attention->inner());
    auto* step_favor =
        dynamic_cast<RecurrentFavorAttention*>(sub->recurrent.get());
    if (favor != nullptr && step_favor != nullptr &&
        favor->projection().NumElements() > 0) {
      FTX_RETURN_IF_ERROR(
          step_favor->SetProjection(favor->projection().view<float>()));
    }
    state.attention_states_.push_back(sub->recurrent->NewState());
  }
  return absl::OkStatus();
}

namespace {

// expanded[n, h] = compact[n, h % kv_heads]: compact [N, Hkv * X] rows,
// expanded [N, H, X].
void ExpandStepHeads(const Context& ctx, TensorView<const float> compact,
                     int64_t kv_heads, TensorView<float> expanded) {
  const int64_t N = expanded.dim(0), H = expanded.dim(1), X = expanded.dim(2);
  ctx.pool().ParallelFor(N * H, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t n = i / H, h = i % H;
      const float* source = compact.data() + (n * kv_heads + h % kv_heads) * X;
      std::copy(source, source + X, expanded.data() + i * X);
    }
  });
}

}  // namespace

absl::Status AttentionLayers::Step(const Context& ctx, ParamStore& store,
                                   absl::string_view prefix,
                                   TensorView<const float> x,
                                   DecodeState& state, TensorView<float> y) {
  saved_ = false;
  FTX_RETURN_IF_ERROR(step_support_);
  const std::string base(prefix);
  const int64_t B = state.batch_, C = config_.dim;
  const Shape shape{B, 1, C};
  if (x.shape() != shape || !x.IsContiguous() || x.data() == nullptr ||
      y.shape() != shape || !y.IsContiguous() || y.data() == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("AttentionLayers::Step: x and y must be contiguous [", B,
                     ", 1, ", C, "] tensors"));
  }
  if (state.attention_states_.size() != sublayers_.size()) {
    return absl::InvalidArgumentError(
        "AttentionLayers::Step: the state was not started by this stack");
  }
  const int64_t H = config_.heads, E = config_.dim_head;
  const int64_t kv_heads =
      config_.attn_kv_heads > 0 ? config_.attn_kv_heads : H;
  const int64_t position = state.position_;
  FTX_ASSIGN_OR_RETURN(TensorView<float> current,
                       Buffer(state.current_, shape));
  FTX_ASSIGN_OR_RETURN(TensorView<float> next, Buffer(state.next_, shape));
  Copy(ctx, x, current);
  const size_t count = sublayers_.size();
  for (size_t i = 0; i < count; ++i) {
    Sublayer& sub = *sublayers_[i];
    const std::string sub_base = sub.Base(base);
    TensorView<const float> hidden = current;
    if (config_.pre_norm && sub.norm.present()) {
      FTX_ASSIGN_OR_RETURN(TensorView<float> normed,
                           Buffer(state.normed_, shape));
      FTX_RETURN_IF_ERROR(
          sub.norm.Forward(ctx, store, sub_base, current, normed, false));
      hidden = normed;
    }
    FTX_ASSIGN_OR_RETURN(TensorView<float> branch,
                         Buffer(state.branch_, shape));
    if (sub.feed_forward) {
      FTX_ASSIGN_OR_RETURN(FeedForwardTensors<float> params,
                           sub.FeedForwardViews(store, base, false));
      FeedForwardParams const_params{params.in_weight,   params.in_bias,
                                     params.norm_weight, params.norm_bias,
                                     params.out_weight,  params.out_bias};
      FTX_RETURN_IF_ERROR(sub.feed_forward->Forward(
          ctx, const_params, hidden, {.training = false}, branch, nullptr));
    } else {
      FTX_ASSIGN_OR_RETURN(AttentionLayerParams params,
                           sub.AttentionParams(store, base));
      FTX_ASSIGN_OR_RETURN(TensorView<float> query,
                           Buffer(state.query_, {B, 1, H * E}));
      FTX_ASSIGN_OR_RETURN(TensorView<float> key,
                           Buffer(state.key_, {B, 1, kv_heads * E}));
      FTX_ASSIGN_OR_RETURN(TensorView<float> value,
                           Buffer(state.value_, {B, 1, kv_heads * E}));
      FTX_RETURN_IF_ERROR(LinearForward(ctx, hidden, params.query_weight,
                                        TensorView<const float>(), query));
      FTX_RETURN_IF_ERROR(LinearForward(ctx, hidden, params.key_weight,
                                        TensorView<const float>(), key));
      FTX_RETURN_IF_ERROR(LinearForward(ctx, hidden, params.value_weight,
                                        TensorView<const float>(), value));
      if (sub.step_rotary) {
        FTX_RETURN_IF_ERROR(sub.step_rotary->Forward(
            ctx, query.Reshape({B, 1, H, E}), position));
        FTX_RETURN_IF_ERROR(sub.step_rotary->Forward(
            ctx, key.Reshape({B, 1, kv_heads, E}), position));
        if (sub.attention->config().transform_values) {
          FTX_RETURN_IF_ERROR(sub.step_rotary->Forward(
              ctx, value.Reshape({B, 1, kv_heads, E}), position));
        }
      }
      TensorView<const float> step_key = key.Reshape({B, kv_heads, E});
      TensorView<const float> step_value = value.Reshape({B, kv_heads, E});
      if (kv_heads != H) {
        FTX_ASSIGN_OR_RETURN(TensorView<float> expanded_key,
                             Buffer(state.expanded_key_, {B, H, E}));
        FTX_ASSIGN_OR_RETURN(TensorView<float> expanded_value,
                             Buffer(state.expanded_value_, {B, H, E}));
        ExpandStepHeads(ctx, key, kv_heads, expanded_key);
        ExpandStepHeads(ctx, value, kv_heads, expanded_value);
        step_key = expanded_key;
        step_value = expanded_value;
      }
      FTX_ASSIGN_OR_RETURN(TensorView<float> attended,
                           Buffer(state.attended_, {B, H, E}));
      FTX_RETURN_IF_ERROR(sub.recurrent->Step(ctx, query.Reshape({B, H, E}),
                                              step_key, step_value, attended,
                                              *state.attention_states_[i]));
      FTX_RETURN_IF_ERROR(LinearForward(ctx, attended.Reshape({B, 1, H * E}),
                                        params.out_weight, params.out_bias,
                                        branch));
    }
    if (sub.branch_scale != 1.0f) ScaleInPlace(ctx, branch, sub.branch_scale);
    TensorView<float> target = next;
    const bool post_norm = !config_.pre_norm && sub.norm.present();
    if (post_norm) {
      FTX_ASSIGN_OR_RETURN(target, Buffer(state.sum_, shape));
    }
    if (sub.post_branch_norm.present()) {
      FTX_RETURN_IF_ERROR(sub.post_branch_norm.Forward(ctx, store, sub_base,
                                                       branch, target, false));
    } else if (sub.rezero) {
      FTX_ASSIGN_OR_RETURN(TensorView<float> g,
                           store.Value(sub_base + "rezero.g"));
      FTX_RETURN_IF_ERROR(sub.rezero->Forward(ctx, g, branch, target));
    } else {
      Copy(ctx, branch, target);
    }
    AddInto(ctx, target, current);
    if (post_norm) {
      FTX_RETURN_IF_ERROR(
          sub.norm.Forward(ctx, store, sub_base, target, next, false));
    }
    std::swap(current, next);
  }
  Copy(ctx, current, y);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<TransformerWrapper>> TransformerWrapper::Create(
    const TransformerConfig& config, const AttentionRegistry& registry) {
  FTX_RETURN_IF_ERROR(
      ValidateTransformerConfig(config, /*require_wrapper=*/true));
  FTX_ASSIGN_OR_RETURN(std::unique_ptr<AttentionLayers> layers,
                       AttentionLayers::Create(config, registry));
  FTX_ASSIGN_OR_RETURN(
      MemoryTokens memory_tokens,
      MemoryTokens::Create(
          {.num_memory_tokens = config.num_memory_tokens, .dim = config.dim}));
  return std::unique_ptr<TransformerWrapper>(
      new TransformerWrapper(config, std::move(layers), memory_tokens));
}

std::vector<ParamShape> TransformerWrapper::ParamShapes() const {
  const int64_t V = config_.num_tokens, C = config_.dim, E = emb_dim();
  std::vector<ParamShape> shapes = {{"token_emb.weight", {V, E}}};
  if (uses_abs_pos_emb()) {
    shapes.push_back({"pos_emb.emb.weight", {config_.max_seq_len, E}});
  }
  if (projects_emb()) {
    shapes.push_back({"project_emb.weight", {C, E}});
    shapes.push_back({"project_emb.bias", {C}});
  }
  if (config_.num_memory_tokens > 0) {
    shapes.push_back({"memory_tokens", {config_.num_memory_tokens, C}});
  }
  for (ParamShape& shape : WithPrefix("attn_layers.", layers_->ParamShapes())) {
    shapes.push_back(std::move(shape));
  }
  if (config_.final_norm) {
    shapes.push_back({"norm.weight", {C}});
    shapes.push_back({"norm.bias", {C}});
  }
  if (!config_.tie_embedding) {
    shapes.push_back({"to_logits.weight", {V, C}});
    shapes.push_back({"to_logits.bias", {V}});
  }
  return shapes;
}

namespace {

AbsolutePositions PositionsOf(const TransformerConfig& config, int64_t dim) {
  return AbsolutePositions({.max_seq_len = config.max_seq_len, .dim = dim});
}

LayerNormLayer FinalNorm(const TransformerConfig& config) {
  return LayerNormLayer::Create({.dim = config.dim}).value();
}

}  // namespace

absl::Status TransformerWrapper::LogitsParams(ParamStore& store,
                                              TensorView<float>& weight,
                                              TensorView<float>& bias,
                                              bool gradients) const {
  auto find = [&](const std::string& name) {
    return gradients ? store.Grad(name) : store.Value(name);
  };
  if (config_.tie_embedding) {
    FTX_ASSIGN_OR_RETURN(weight, find("token_emb.weight"));
    bias = TensorView<float>();
    return absl::OkStatus();
  }
  FTX_ASSIGN_OR_RETURN(weight, find("to_logits.weight"));
  FTX_ASSIGN_OR_RETURN(bias, find("to_logits.bias"));
  return absl::OkStatus();
}

absl::Status TransformerWrapper::InitParams(const Context& ctx,
                                            ParamStore& store) const {
  const uint64_t seed = config_.seed;
  const int64_t E = emb_dim();
  // kaiming_normal_ (fan_in = E, gain sqrt(2)), as x-transformers.
  FTX_ASSIGN_OR_RETURN(TensorView<float> token,
                       store.Value("token_emb.weight"));
  FTX_RETURN_IF_ERROR(FillNormal(ctx, token, 0.0f,
                                 std::sqrt(2.0f / static_cast<float>(E)),
                                 {.seed = SubSeed(seed, 1u << 20)}));
  if (uses_abs_pos_emb()) {
    FTX_ASSIGN_OR_RETURN(TensorView<float> pos,
                         store.Value("pos_emb.emb.weight"));
    FTX_RETURN_IF_ERROR(
        PositionsOf(config_, E)
            .InitParams(ctx, pos, SubSeed(seed, (1u << 20) + 1)));
  }
  if (projects_emb()) {
    const float bound = 1.0f / std::sqrt(static_cast<float>(E));
    FTX_ASSIGN_OR_RETURN(TensorView<float> w,
                         store.Value("project_emb.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> b, store.Value("project_emb.bias"));
    FTX_RETURN_IF_ERROR(FillUniform(ctx, w, -bound, bound,
                                    {.seed = SubSeed(seed, (1u << 20) + 4)}));
    FTX_RETURN_IF_ERROR(FillUniform(ctx, b, -bound, bound,
                                    {.seed = SubSeed(seed, (1u << 20) + 5)}));
  }
  if (config_.num_memory_tokens > 0) {
    FTX_ASSIGN_OR_RETURN(TensorView<float> memory,
                         store.Value("memory_tokens"));
    FTX_RETURN_IF_ERROR(
        memory_tokens_.InitParams(ctx, memory, SubSeed(seed, (1u << 20) + 6)));
  }
  FTX_RETURN_IF_ERROR(layers_->InitParams(ctx, store, "attn_layers."));
  if (config_.final_norm) {
    FTX_ASSIGN_OR_RETURN(TensorView<float> weight, store.Value("norm.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> bias, store.Value("norm.bias"));
    FTX_RETURN_IF_ERROR(FinalNorm(config_).InitParams(weight, bias));
  }
  if (config_.tie_embedding) return absl::OkStatus();
  const float bound = 1.0f / std::sqrt(static_cast<float>(config_.dim));
  FTX_ASSIGN_OR_RETURN(TensorView<float> w, store.Value("to_logits.weight"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> b, store.Value("to_logits.bias"));
  FTX_RETURN_IF_ERROR(FillUniform(ctx, w, -bound, bound,
                                  {.seed = SubSeed(seed, (1u << 20) + 2)}));
  return FillUniform(ctx, b, -bound, bound,
                     {.seed = SubSeed(seed, (1u << 20) + 3)});
}

absl::Status TransformerWrapper::Forward(const Context& ctx, ParamStore& store,
                                         const TransformerInputs& inputs,
                                         TensorView<float> out,
                                         bool save_for_backward) {
  saved_ = false;
  const TensorView<const int32_t>& tokens = inputs.tokens;
  if (tokens.rank() != 2 || tokens.data() == nullptr ||
      !tokens.IsContiguous() || tokens.dim(0) < 1 || tokens.dim(1) < 1) {
    return absl::InvalidArgumentError(
        "TransformerWrapper: tokens must be a contiguous non-empty [B, T] "
        "int32 tensor");
  }
  const int64_t B = tokens.dim(0), T = tokens.dim(1), C = config_.dim,
                V = config_.num_tokens, E = emb_dim(),
                M = config_.num_memory_tokens;
  if (T > config_.max_seq_len) {
    return absl::InvalidArgumentError(
        absl::StrCat("TransformerWrapper: sequence length ", T,
                     " exceeds max_seq_len ", config_.max_seq_len));
  }
  for (int64_t i = 0; i < B * T; ++i) {
    if (tokens.data()[i] < 0 || tokens.data()[i] >= V) {
      return absl::InvalidArgumentError(absl::StrCat(
          "TransformerWrapper: token ", tokens.data()[i], " at flat index ", i,
          " is outside [0, num_tokens = ", V, ")"));
    }
  }
  const int64_t out_width = inputs.return_embeddings ? C : V;
  if (out.rank() != 3 || out.dim(0) != B || out.dim(1) != T ||
      out.dim(2) != out_width || !out.IsContiguous() || out.data() == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("TransformerWrapper: out must be a contiguous [", B, ", ",
                     T, ", ", out_width, "] tensor (",
                     inputs.return_embeddings ? "embeddings" : "logits", ")"));
  }
  FTX_ASSIGN_OR_RETURN(TensorView<float> embedded,
                       Buffer(embedded_, {B, T, E}));
  FTX_ASSIGN_OR_RETURN(TensorView<float> token,
                       store.Value("token_emb.weight"));
  ctx.pool().ParallelFor(B * T, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* row = token.data() + tokens.data()[r] * E;
      std::copy(row, row + E, embedded.data() + r * E);
    }
  });
  if (uses_abs_pos_emb()) {
    FTX_ASSIGN_OR_RETURN(TensorView<float> pos,
                         store.Value("pos_emb.emb.weight"));
    FTX_RETURN_IF_ERROR(PositionsOf(config_, E).Forward(ctx, pos, 0, embedded));
  }
  TensorView<float> projected = embedded;
  if (projects_emb()) {
    FTX_ASSIGN_OR_RETURN(projected, Buffer(projected_, {B, T, C}));
    FTX_ASSIGN_OR_RETURN(TensorView<float> w,
                         store.Value("project_emb.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> b, store.Value("project_emb.bias"));
    FTX_RETURN_IF_ERROR(LinearForward(ctx, embedded, w, b, projected));
  }
  TensorView<float> stack_in = projected;
  stack_lengths_ = inputs.lengths;
  if (M > 0) {
    FTX_ASSIGN_OR_RETURN(stack_in, Buffer(stack_in_, {B, M + T, C}));
    FTX_ASSIGN_OR_RETURN(TensorView<float> memory,
                         store.Value("memory_tokens"));
    FTX_RETURN_IF_ERROR(
        memory_tokens_.Prepend(ctx, memory, projected, stack_in));
    stack_lengths_ = memory_tokens_.PadLengths(inputs.lengths);
  }
  FTX_ASSIGN_OR_RETURN(TensorView<float> stack_out,
                       Buffer(stack_out_, {B, M + T, C}));
  StackInputs stack_inputs{
      stack_lengths_,  inputs.context, inputs.context_lengths,
      inputs.training, inputs.seed,    inputs.mems};
  FTX_ASSIGN_OR_RETURN(
      const XlMemory xl_memory,
      XlMemory::Create({.max_mem_len = config_.max_mem_len,
                        .shift_mem_down = config_.shift_mem_down}));
  xl_memory.ShiftDown(stack_inputs.mems);
  FTX_RETURN_IF_ERROR(layers_->Forward(ctx, store, "attn_layers.", stack_in,
                                       stack_inputs, stack_out,
                                       save_for_backward));
  new_mems_.clear();
  if (inputs.return_mems) {
    const std::vector<TensorView<const float>> hiddens = layers_->Hiddens();
    for (size_t k = 0; k < hiddens.size(); ++k) {
      FTX_ASSIGN_OR_RETURN(
          Tensor memory,
          xl_memory.Update(ctx,
                           stack_inputs.mems.empty() ? TensorView<const float>()
                                                     : stack_inputs.mems[k],
                           hiddens[k]));
      new_mems_.push_back(std::move(memory));
    }
  }
  TensorView<float> normed = stack_out;
  if (config_.final_norm) {
    FTX_ASSIGN_OR_RETURN(normed, Buffer(normed_, {B, M + T, C}));
    FTX_ASSIGN_OR_RETURN(TensorView<float> weight, store.Value("norm.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> bias, store.Value("norm.bias"));
    FTX_RETURN_IF_ERROR(FinalNorm(config_).Forward(ctx, weight, bias, stack_out,
                                                   normed, &final_norm_cache_));
  }
  TensorView<float> stripped = normed;
  if (M > 0) {
    FTX_ASSIGN_OR_RETURN(stripped, Buffer(stripped_, {B, T, C}));
    FTX_RETURN_IF_ERROR(memory_tokens_.Strip(ctx, normed, stripped));
  }
  if (inputs.return_embeddings) {
    Copy(ctx, stripped, out);
  } else {
    TensorView<float> w, b;
    FTX_RETURN_IF_ERROR(LogitsParams(store, w, b, /*gradients=*/false));
    FTX_RETURN_IF_ERROR(LinearForward(ctx, stripped, w, b, out));
  }
  tokens_.assign(tokens.data(), tokens.data() + B * T);
  batch_ = B;
  length_ = T;
  return_embeddings_ = inputs.return_embeddings;
  saved_ = save_for_backward;
  return absl::OkStatus();
}

absl::Status TransformerWrapper::Backward(const Context& ctx, ParamStore& store,
                                          TensorView<const float> d_out,
                                          TensorView<float> d_context) {
  if (!saved_) {
    return absl::FailedPreconditionError(
        "TransformerWrapper::Backward needs a Forward with save_for_backward");
  }
  const int64_t B = batch_, T = length_, C = config_.dim,
                V = config_.num_tokens, E = emb_dim(),
                M = config_.num_memory_tokens;
  const int64_t out_width = return_embeddings_ ? C : V;
  if (d_out.rank() != 3 || d_out.dim(0) != B || d_out.dim(1) != T ||
      d_out.dim(2) != out_width || !d_out.IsContiguous()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "TransformerWrapper::Backward: d_out must be a contiguous [", B, ", ",
        T, ", ", out_width, "] tensor"));
  }
  TensorView<const float> normed =
      config_.final_norm ? normed_.view<float>() : stack_out_.view<float>();
  TensorView<const float> stripped =
      M > 0 ? TensorView<const float>(stripped_.view<float>()) : normed;
  TensorView<const float> d_stripped = d_out;
  if (!return_embeddings_) {
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_stripped_view,
                         Buffer(d_stripped_, {B, T, C}));
    TensorView<float> w, b, d_w, d_b;
    FTX_RETURN_IF_ERROR(LogitsParams(store, w, b, /*gradients=*/false));
    FTX_RETURN_IF_ERROR(LogitsParams(store, d_w, d_b, /*gradients=*/true));
    FTX_RETURN_IF_ERROR(
        LinearBackward(ctx, stripped, w, d_out, d_stripped_view, d_w, d_b));
    d_stripped = d_stripped_view;
  }
  TensorView<const float> d_normed = d_stripped;
  if (M > 0) {
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_normed_view,
                         Buffer(d_normed_, {B, M + T, C}));
    FTX_RETURN_IF_ERROR(
        memory_tokens_.StripBackward(ctx, d_stripped, d_normed_view));
    d_normed = d_normed_view;
  }
  TensorView<const float> d_stack_out = d_normed;
  if (config_.final_norm) {
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_stack,
                         Buffer(d_stack_out_, {B, M + T, C}));
    FTX_ASSIGN_OR_RETURN(TensorView<float> weight, store.Value("norm.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_weight, store.Grad("norm.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_bias, store.Grad("norm.bias"));
    FTX_RETURN_IF_ERROR(FinalNorm(config_).Backward(
        ctx, weight, final_norm_cache_, stack_out_.view<float>(), d_normed,
        d_stack, d_weight, d_bias));
    d_stack_out = d_stack;
  }
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_stack_in,
                       Buffer(d_stack_in_, {B, M + T, C}));
  FTX_RETURN_IF_ERROR(layers_->Backward(ctx, store, "attn_layers.", d_stack_out,
                                        d_stack_in, d_context));
  TensorView<float> d_projected = d_stack_in;
  if (M > 0) {
    FTX_ASSIGN_OR_RETURN(d_projected, Buffer(d_projected_, {B, T, C}));
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_memory,
                         store.Grad("memory_tokens"));
    FTX_RETURN_IF_ERROR(
        memory_tokens_.PrependBackward(ctx, d_stack_in, d_projected, d_memory));
  }
  TensorView<float> d_embedded = d_projected;
  if (projects_emb()) {
    FTX_ASSIGN_OR_RETURN(d_embedded, Buffer(d_embedded_, {B, T, E}));
    FTX_ASSIGN_OR_RETURN(TensorView<float> w,
                         store.Value("project_emb.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_w,
                         store.Grad("project_emb.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_b, store.Grad("project_emb.bias"));
    FTX_RETURN_IF_ERROR(LinearBackward(ctx, embedded_.view<float>(), w,
                                       d_projected, d_embedded, d_w, d_b));
  }
  if (uses_abs_pos_emb()) {
    FTX_ASSIGN_OR_RETURN(TensorView<float> pos,
                         store.Value("pos_emb.emb.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_pos,
                         store.Grad("pos_emb.emb.weight"));
    FTX_RETURN_IF_ERROR(
        PositionsOf(config_, E).Backward(ctx, pos, 0, d_embedded, d_pos));
  }
  // Token rows may repeat: parallel over feature columns, serial over tokens.
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_token,
                       store.Grad("token_emb.weight"));
  ctx.pool().ParallelFor(E, [&](int64_t begin, int64_t end) {
    for (int64_t r = 0; r < B * T; ++r) {
      float* target = d_token.data() + tokens_[r] * E;
      const float* source = d_embedded.data() + r * E;
      for (int64_t c = begin; c < end; ++c) target[c] += source[c];
    }
  });
  return absl::OkStatus();
}

absl::StatusOr<DecodeState> TransformerWrapper::NewDecodeState(
    int64_t batch) const {
  FTX_RETURN_IF_ERROR(StepSupport());
  if (batch < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "TransformerWrapper::NewDecodeState: batch must be >= 1, got ", batch));
  }
  DecodeState state;
  state.batch_ = batch;
  FTX_RETURN_IF_ERROR(layers_->StartDecode(state));
  return state;
}

absl::Status TransformerWrapper::Step(const Context& ctx, ParamStore& store,
                                      TensorView<const int32_t> tokens,
                                      DecodeState& state,
                                      TensorView<float> logits) {
  FTX_RETURN_IF_ERROR(StepSupport());
  if (ctx.device().type != DeviceType::kCpu) {
    return absl::UnimplementedError(
        "TransformerWrapper::Step: only CPU contexts are supported");
  }
  const int64_t B = state.batch_, C = config_.dim, V = config_.num_tokens,
                E = emb_dim();
  if (tokens.rank() != 1 || tokens.dim(0) != B || tokens.data() == nullptr ||
      !tokens.IsContiguous()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "TransformerWrapper::Step: tokens must be a contiguous [", B,
        "] int32 tensor (the state's batch), got ", tokens.shape().ToString()));
  }
  for (int64_t b = 0; b < B; ++b) {
    if (tokens.data()[b] < 0 || tokens.data()[b] >= V) {
      return absl::InvalidArgumentError(absl::StrCat(
          "TransformerWrapper::Step: token ", tokens.data()[b], " at index ", b,
          " is outside [0, num_tokens = ", V, ")"));
    }
  }
  if (logits.rank() != 2 || logits.dim(0) != B || logits.dim(1) != V ||
      logits.data() == nullptr || !logits.IsContiguous()) {
    return absl::InvalidArgumentError(
        absl::StrCat("TransformerWrapper::Step: logits must be a contiguous [",
                     B, ", ", V, "] tensor, got ", logits.shape().ToString()));
  }
  if (state.position_ >= config_.max_seq_len) {
    return absl::InvalidArgumentError(
        absl::StrCat("TransformerWrapper::Step: position ", state.position_,
                     " is past max_seq_len ", config_.max_seq_len));
  }
  saved_ = false;
  FTX_ASSIGN_OR_RETURN(TensorView<float> token_embedded,
                       Buffer(state.token_embedded_, {B, 1, E}));
  FTX_ASSIGN_OR_RETURN(TensorView<float> token,
                       store.Value("token_emb.weight"));
  for (int64_t b = 0; b < B; ++b) {
    const float* row = token.data() + tokens.data()[b] * E;
    std::copy(row, row + E, token_embedded.data() + b * E);
  }
  if (uses_abs_pos_emb()) {
    FTX_ASSIGN_OR_RETURN(TensorView<float> pos,
                         store.Value("pos_emb.emb.weight"));
    FTX_RETURN_IF_ERROR(
        PositionsOf(config_, E)
            .Forward(ctx, pos, state.position_, token_embedded));
  }
  FTX_ASSIGN_OR_RETURN(TensorView<float> embedded,
                       Buffer(state.embedded_, {B, 1, C}));
  if (projects_emb()) {
    FTX_ASSIGN_OR_RETURN(TensorView<float> w,
                         store.Value("project_emb.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> b, store.Value("project_emb.bias"));
    FTX_RETURN_IF_ERROR(LinearForward(ctx, token_embedded, w, b, embedded));
  } else {
    Copy(ctx, token_embedded, embedded);
  }
  FTX_ASSIGN_OR_RETURN(TensorView<float> stack_out,
                       Buffer(state.stack_out_, {B, 1, C}));
  FTX_RETURN_IF_ERROR(
      layers_->Step(ctx, store, "attn_layers.", embedded, state, stack_out));
  TensorView<float> normed = stack_out;
  if (config_.final_norm) {
    FTX_ASSIGN_OR_RETURN(normed, Buffer(state.final_normed_, {B, 1, C}));
    FTX_ASSIGN_OR_RETURN(TensorView<float> weight, store.Value("norm.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> bias, store.Value("norm.bias"));
    FTX_RETURN_IF_ERROR(FinalNorm(config_).Forward(ctx, weight, bias, stack_out,
                                                   normed, nullptr));
  }
  TensorView<float> w, b;
  FTX_RETURN_IF_ERROR(LogitsParams(store, w, b, /*gradients=*/false));
  FTX_RETURN_IF_ERROR(
      LinearForward(ctx, normed, w, b, logits.Reshape({B, 1, V})));
  ++state.position_;
  return absl::OkStatus();
}

namespace {

using Json = nlohmann::json;

absl::Status JsonTypeError(const std::string& key, const char* expected) {
  return absl::InvalidArgumentError(
      absl::StrCat("TransformerConfig JSON: \"", key, "\" must be ", expected));
}

absl::Status ReadInt(const Json& value, const std::string& key,
                     int64_t& target) {
  if (!value.is_number_integer()) return JsonTypeError(key, "an integer");
  target = value.get<int64_t>();
  return absl::OkStatus();
}

absl::Status ReadBool(const Json& value, const std::string& key, bool& target) {
  if (!value.is_boolean()) return JsonTypeError(key, "a boolean");
  target = value.get<bool>();
  return absl::OkStatus();
}

absl::Status ReadString(const Json& value, const std::string& key,
                        std::string& target) {
  if (!value.is_string()) return JsonTypeError(key, "a string");
  target = value.get<std::string>();
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<TransformerConfig> TransformerConfigFromJson(
    absl::string_view json) {
  const Json root = Json::parse(json.begin(), json.end(), nullptr,
                                /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object()) {
    return absl::InvalidArgumentError(
        "TransformerConfig JSON: expected a JSON object");
  }
  TransformerConfig c;
  const std::map<std::string, int64_t*> ints = {
      {"dim", &c.dim},
      {"depth", &c.depth},
      {"heads", &c.heads},
      {"dim_head", &c.dim_head},
      {"context_dim", &c.context_dim},
      {"rotary_emb_dim", &c.rotary_emb_dim},
      {"attn_kv_heads", &c.attn_kv_heads},
      {"attn_num_mem_kv", &c.attn_num_mem_kv},
      {"num_tokens", &c.num_tokens},
      {"max_seq_len", &c.max_seq_len},
      {"par_ratio", &c.par_ratio},
      {"sandwich_coef", &c.sandwich_coef},
      {"shift_tokens", &c.shift_tokens},
      {"rel_pos_num_buckets", &c.rel_pos_num_buckets},
      {"rel_pos_max_distance", &c.rel_pos_max_distance},
      {"alibi_num_heads", &c.alibi_num_heads},
      {"emb_dim", &c.emb_dim},
      {"num_memory_tokens", &c.num_memory_tokens},
      {"qk_norm_attn_seq_len", &c.qk_norm_attn_seq_len},
      {"max_mem_len", &c.max_mem_len},
      {"shift_mem_down", &c.shift_mem_down},
      {"attn_qk_norm_groups", &c.attn_qk_norm_groups},
      {"dynamic_pos_bias_mlp_depth", &c.dynamic_pos_bias_mlp_depth}};
  const std::map<std::string, bool*> bools = {
      {"causal", &c.causal},
      {"cross_attend", &c.cross_attend},
      {"pre_norm", &c.pre_norm},
      {"use_rezero", &c.use_rezero},
      {"ff_glu", &c.ff_glu},
      {"ff_swish", &c.ff_swish},
      {"ff_relu_squared", &c.ff_relu_squared},
      {"rotary_pos_emb", &c.rotary_pos_emb},
      {"use_abs_pos_emb", &c.use_abs_pos_emb},
      {"final_norm", &c.final_norm},
      {"sandwich_norm", &c.sandwich_norm},
      {"macaron", &c.macaron},
      {"only_cross", &c.only_cross},
      {"rel_pos_bias", &c.rel_pos_bias},
      {"alibi_pos_bias", &c.alibi_pos_bias},
      {"alibi_learned", &c.alibi_learned},
      {"rotary_rotate_values", &c.rotary_rotate_values},
      {"tie_embedding", &c.tie_embedding},
      {"attn_talking_heads", &c.attn_talking_heads},
      {"attn_head_scale", &c.attn_head_scale},
      {"attn_gate_values", &c.attn_gate_values},
      {"attn_on_attn", &c.attn_on_attn},
      {"use_qk_norm_attn", &c.use_qk_norm_attn},
      {"residual_attn", &c.residual_attn},
      {"resi_dual", &c.resi_dual},
      {"attn_qk_norm", &c.attn_qk_norm},
      {"attn_qk_norm_dim_scale", &c.attn_qk_norm_dim_scale},
      {"gate_residual", &c.gate_residual},
      {"scale_residual", &c.scale_residual},
      {"dynamic_pos_bias", &c.dynamic_pos_bias},
      {"dynamic_pos_bias_log_distance", &c.dynamic_pos_bias_log_distance},
      {"dynamic_pos_bias_norm", &c.dynamic_pos_bias_norm},
      {"cross_residual_attn", &c.cross_residual_attn},
      {"weight_tie_layers", &c.weight_tie_layers}};
  const std::map<std::string, std::string*> strings = {
      {"attention", &c.attention},
      {"cross_attention", &c.cross_attention},
      {"custom_layers", &c.custom_layers}};
  for (const auto& [key, value] : root.items()) {
    if (auto it = ints.find(key); it != ints.end()) {
      FTX_RETURN_IF_ERROR(ReadInt(value, key, *it->second));
    } else if (auto it = bools.find(key); it != bools.end()) {
      FTX_RETURN_IF_ERROR(ReadBool(value, key, *it->second));
    } else if (auto it = strings.find(key); it != strings.end()) {
      FTX_RETURN_IF_ERROR(ReadString(value, key, *it->second));
    } else if (key == "ff_mult") {
      if (!value.is_number()) return JsonTypeError(key, "a number");
      c.ff_mult = value.get<double>();
    } else if (key == "scale_residual_constant" || key == "resi_dual_scale" ||
               key == "attn_qk_norm_scale" || key == "mask_prob") {
      if (!value.is_number()) return JsonTypeError(key, "a number");
      (key == "resi_dual_scale"      ? c.resi_dual_scale
       : key == "attn_qk_norm_scale" ? c.attn_qk_norm_scale
       : key == "mask_prob"          ? c.mask_prob
                            : c.scale_residual_constant) = value.get<double>();
    } else if (key == "seed") {
      if (!value.is_number_unsigned()) {
        return JsonTypeError(key, "a non-negative integer");
      }
      c.seed = value.get<uint64_t>();
    } else if (key == "norm") {
      std::string norm;
      FTX_RETURN_IF_ERROR(ReadString(value, key, norm));
      if (norm == "layernorm") {
        c.norm = NormType::kLayerNorm;
      } else if (norm == "rmsnorm") {
        c.norm = NormType::kRMSNorm;
      } else if (norm == "scalenorm") {
        c.norm = NormType::kScaleNorm;
      } else {
        return JsonTypeError(key,
                             "\"layernorm\", \"rmsnorm\" or \"scalenorm\"");
      }
    } else if (key == "ff_activation") {
      std::string name;
      FTX_RETURN_IF_ERROR(ReadString(value, key, name));
      absl::StatusOr<Activation> activation = ActivationFromName(name);
      if (!activation.ok()) {
        return JsonTypeError(key, "a kernels/activation name");
      }
      c.ff_activation = *activation;
    } else if (key == "attention_options") {
      if (!value.is_object()) return JsonTypeError(key, "an object");
      for (const auto& [option, option_value] : value.items()) {
        const std::string name = absl::StrCat(key, ".", option);
        if (option_value.is_boolean()) {
          c.attention_options[option] = option_value.get<bool>();
        } else if (option_value.is_number_integer()) {
          c.attention_options[option] = option_value.get<int64_t>();
        } else if (option_value.is_number()) {
          c.attention_options[option] = option_value.get<double>();
        } else if (option_value.is_string()) {
          c.attention_options[option] = option_value.get<std::string>();
        } else {
          return JsonTypeError(name, "a bool, number or string");
        }
      }
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("TransformerConfig JSON: unknown key \"", key, "\""));
    }
  }
  return c;
}

}  // namespace ftx
