#include "models/transformer.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <variant>

#include "absl/strings/str_cat.h"
#include "attention/builder.h"
#include "attention/favor.h"
#include "attention/rotary.h"
#include "kernels/base/rng.h"
#include "kernels/base/status_macros.h"
#include "kernels/linear/linear.h"
#include "layers/absolute_positions.h"
#include "layers/rezero.h"
#include "layers/rmsnorm.h"
#include "layers/scalenorm.h"
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

// One sublayer: its norm, its block ('a', 'c' or 'f'), ReZero gain, and the
// activations its backward needs.
struct AttentionLayers::Sublayer {
  char type = 'f';
  std::string prefix;  // "layers.{i}."
  bool has_norm = true;
  std::optional<LayerNormLayer> layer_norm;
  std::optional<RMSNorm> rms_norm;
  std::optional<ScaleNorm> scale_norm;
  std::unique_ptr<AttentionLayer> attention;
  // Step-wise form of a self-attention sublayer and its rotary, when the stack
  // can decode step-wise.
  std::unique_ptr<RecurrentAttention> recurrent;
  std::optional<RotaryEmbedding> step_rotary;
  std::optional<FeedForward> feed_forward;
  std::optional<ReZero> rezero;

  LayerNormCache norm_cache;
  AttentionLayerCache attention_cache;
  FeedForwardCache ff_cache;
  Tensor normed;  // pre-norm: norm(x_i), the block input
  Tensor branch;  // block output
  Tensor sum;     // post-norm: branch + residual, the norm input

  std::vector<ParamShape> NormShapes() const {
    if (layer_norm) return layer_norm->ParamShapes();
    if (rms_norm) return rms_norm->ParamShapes();
    if (scale_norm) return scale_norm->ParamShapes();
    return {};
  }

  absl::Status NormForward(const Context& ctx, ParamStore& store,
                           const std::string& base, TensorView<const float> x,
                           TensorView<float> y) {
    const std::string name = base + prefix + "norm.";
    if (layer_norm) {
      FTX_ASSIGN_OR_RETURN(TensorView<float> weight,
                           store.Value(name + "weight"));
      FTX_ASSIGN_OR_RETURN(TensorView<float> bias, store.Value(name + "bias"));
      return layer_norm->Forward(ctx, weight, bias, x, y, &norm_cache);
    }
    FTX_ASSIGN_OR_RETURN(TensorView<float> g, store.Value(name + "g"));
    if (rms_norm) return rms_norm->Forward(ctx, g, x, y);
    return scale_norm->Forward(ctx, g, x, y);
  }

  absl::Status NormBackward(const Context& ctx, ParamStore& store,
                            const std::string& base, TensorView<const float> x,
                            TensorView<const float> d_y,
                            TensorView<float> d_x) {
    const std::string name = base + prefix + "norm.";
    if (layer_norm) {
      FTX_ASSIGN_OR_RETURN(TensorView<float> weight,
                           store.Value(name + "weight"));
      FTX_ASSIGN_OR_RETURN(TensorView<float> d_weight,
                           store.Grad(name + "weight"));
      FTX_ASSIGN_OR_RETURN(TensorView<float> d_bias, store.Grad(name + "bias"));
      return layer_norm->Backward(ctx, weight, norm_cache, x, d_y, d_x,
                                  d_weight, d_bias);
    }
    FTX_ASSIGN_OR_RETURN(TensorView<float> g, store.Value(name + "g"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_g, store.Grad(name + "g"));
    if (rms_norm) return rms_norm->Backward(ctx, g, x, d_y, d_x, d_g);
    return scale_norm->Backward(ctx, g, x, d_y, d_x, d_g);
  }

  std::string BlockPrefix(const std::string& base) const {
    return base + prefix + BlockName(type);
  }

  // The attention block's views, looked up with `find` (Value or Grad) and
  // `find_optional` (memory kv, absent unless configured).
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
    FTX_ASSIGN_OR_RETURN(views.memory_keys, find_optional(p + "memory_keys"));
    FTX_ASSIGN_OR_RETURN(views.memory_values,
                         find_optional(p + "memory_values"));
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

// Builds the inner mechanism `type` (see ConfigureBuilder).
absl::StatusOr<std::unique_ptr<Attention>> BuildMechanism(
    const TransformerConfig& config, const AttentionRegistry& registry,
    const std::string& type, bool causal) {
  AttentionBuilder builder(registry);
  FTX_RETURN_IF_ERROR(
      ConfigureBuilder(config, registry, type, causal, builder));
  return builder.Build(type);
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
  const std::string block = config.cross_attend ? "acf" : "af";
  std::string types;
  for (int64_t d = 0; d < config.depth; ++d) types += block;
  std::unique_ptr<AttentionLayers> layers(new AttentionLayers(config, types));
  layers->step_support_ = StepShapeSupport(config);
  for (size_t i = 0; i < types.size(); ++i) {
    auto sub = std::make_unique<Sublayer>();
    sub->type = types[i];
    sub->prefix = SublayerPrefix(static_cast<int64_t>(i));
    sub->has_norm = !config.use_rezero;
    if (sub->has_norm) {
      switch (config.norm) {
        case NormType::kLayerNorm: {
          FTX_ASSIGN_OR_RETURN(LayerNormLayer norm,
                               LayerNormLayer::Create({.dim = config.dim}));
          sub->layer_norm.emplace(std::move(norm));
          break;
        }
        case NormType::kRMSNorm:
          sub->rms_norm.emplace(RMSNormConfig{.dim = config.dim});
          break;
        case NormType::kScaleNorm:
          sub->scale_norm.emplace(ScaleNormConfig{.dim = config.dim});
          break;
      }
    } else {
      sub->rezero.emplace(ReZeroConfig{.initial_gain = 0.0f});
    }
    if (sub->type == 'f') {
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
      FTX_ASSIGN_OR_RETURN(
          std::unique_ptr<Attention> inner,
          BuildMechanism(config, registry,
                         cross ? config.cross_attention : config.attention,
                         !cross && config.causal));
      std::unique_ptr<QKTransform> rotary;
      if (config.rotary_pos_emb && !cross) {
        FTX_ASSIGN_OR_RETURN(
            RotaryEmbedding embedding,
            RotaryEmbedding::Create(
                {.rotary_dim = RotaryEmbedding::XTransformersRotaryDim(
                     config.dim_head, config.rotary_emb_dim)}));
        sub->step_rotary.emplace(embedding);
        rotary = std::make_unique<RotaryEmbedding>(std::move(embedding));
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
  for (const auto& sub : sublayers_) {
    append(sub->prefix + "norm.", sub->NormShapes());
    if (sub->rezero)
      append(sub->prefix + "rezero.", sub->rezero->ParamShapes());
    if (sub->attention) {
      append(sub->prefix + BlockName(sub->type), sub->attention->ParamShapes());
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
  for (const auto& sub : sublayers_) {
    const std::string norm = base + sub->prefix + "norm.";
    if (sub->layer_norm) {
      FTX_ASSIGN_OR_RETURN(TensorView<float> weight,
                           store.Value(norm + "weight"));
      FTX_ASSIGN_OR_RETURN(TensorView<float> bias, store.Value(norm + "bias"));
      FTX_RETURN_IF_ERROR(sub->layer_norm->InitParams(weight, bias));
    } else if (sub->rms_norm) {
      FTX_ASSIGN_OR_RETURN(TensorView<float> g, store.Value(norm + "g"));
      RMSNorm::InitParams(g);
    } else if (sub->scale_norm) {
      FTX_ASSIGN_OR_RETURN(TensorView<float> g, store.Value(norm + "g"));
      sub->scale_norm->InitParams(g);
    }
    if (sub->rezero) {
      FTX_ASSIGN_OR_RETURN(TensorView<float> g,
                           store.Value(base + sub->prefix + "rezero.g"));
      sub->rezero->InitParams(g);
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
    for (const ParamShape& shape : sub->attention->ParamShapes()) {
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
  const size_t count = sublayers_.size();
  activations_.resize(count + 1);
  FTX_ASSIGN_OR_RETURN(TensorView<float> first, Buffer(activations_[0], shape));
  Copy(ctx, x, first);
  for (size_t i = 0; i < count; ++i) {
    Sublayer& sub = *sublayers_[i];
    const bool last = i + 1 == count;
    TensorView<const float> input = activations_[i].view<float>();
    FTX_ASSIGN_OR_RETURN(TensorView<float> output,
                         Buffer(activations_[i + 1], shape));
    TensorView<const float> hidden = input;
    if (config_.pre_norm && sub.has_norm) {
      FTX_ASSIGN_OR_RETURN(TensorView<float> normed, Buffer(sub.normed, shape));
      FTX_RETURN_IF_ERROR(sub.NormForward(ctx, store, base, input, normed));
      hidden = normed;
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
      FTX_ASSIGN_OR_RETURN(AttentionLayerParams params,
                           sub.AttentionParams(store, base));
      FTX_RETURN_IF_ERROR(sub.attention->Forward(
          ctx, params, hidden,
          cross ? inputs.context : TensorView<const float>(), masks, branch,
          &sub.attention_cache));
    }
    TensorView<float> target = output;
    const bool post_norm = !config_.pre_norm && sub.has_norm && !last;
    if (post_norm) {
      FTX_ASSIGN_OR_RETURN(target, Buffer(sub.sum, shape));
    }
    if (sub.rezero) {
      FTX_ASSIGN_OR_RETURN(TensorView<float> g,
                           store.Value(base + sub.prefix + "rezero.g"));
      FTX_RETURN_IF_ERROR(sub.rezero->Forward(ctx, g, branch, target));
    } else {
      Copy(ctx, branch, target);
    }
    AddInto(ctx, target, input);
    if (post_norm) {
      FTX_RETURN_IF_ERROR(sub.NormForward(ctx, store, base, target, output));
    }
  }
  Copy(ctx, activations_[count].view<float>(), y);
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
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_current, Buffer(d_current_, shape));
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_hidden, Buffer(d_hidden_, shape));
  Copy(ctx, d_y, d_current);
  const size_t count = sublayers_.size();
  for (size_t i = count; i-- > 0;) {
    Sublayer& sub = *sublayers_[i];
    const bool last = i + 1 == count;
    TensorView<const float> input = activations_[i].view<float>();
    // d of branch + residual.
    TensorView<float> d_sum = d_current;
    if (!config_.pre_norm && sub.has_norm && !last) {
      FTX_ASSIGN_OR_RETURN(d_sum, Buffer(d_sum_, shape));
      FTX_RETURN_IF_ERROR(sub.NormBackward(
          ctx, store, base, sub.sum.view<float>(), d_current, d_sum));
    }
    TensorView<float> d_branch = d_sum;
    if (sub.rezero) {
      FTX_ASSIGN_OR_RETURN(d_branch, Buffer(d_branch_, shape));
      const std::string name = base + sub.prefix + "rezero.g";
      FTX_ASSIGN_OR_RETURN(TensorView<float> g, store.Value(name));
      FTX_ASSIGN_OR_RETURN(TensorView<float> d_g, store.Grad(name));
      FTX_RETURN_IF_ERROR(sub.rezero->Backward(ctx, g, sub.branch.view<float>(),
                                               d_sum, d_branch, d_g));
    }
    const bool pre_norm = config_.pre_norm && sub.has_norm;
    TensorView<const float> hidden =
        pre_norm ? TensorView<const float>(sub.normed.view<float>()) : input;
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
      TensorView<float> d_context_part;
      if (cross) {
        FTX_ASSIGN_OR_RETURN(
            d_context_part,
            Buffer(d_context_scratch_, last_inputs_.context.shape()));
      }
      FTX_RETURN_IF_ERROR(sub.attention->Backward(
          ctx, params, hidden,
          cross ? last_inputs_.context : TensorView<const float>(), masks,
          sub.attention_cache, d_branch, d_hidden, d_context_part, grads));
      if (cross && want_context) AddInto(ctx, d_context, d_context_part);
    }
    // d_x_i = d_sum (skip path) + d_block_input (through the pre-norm).
    TensorView<const float> d_block_input = d_hidden;
    if (pre_norm) {
      FTX_ASSIGN_OR_RETURN(TensorView<float> d_normed,
                           Buffer(d_normed_, shape));
      FTX_RETURN_IF_ERROR(
          sub.NormBackward(ctx, store, base, input, d_hidden, d_normed));
      d_block_input = d_normed;
    }
    if (d_sum.data() != d_current.data()) Copy(ctx, d_sum, d_current);
    AddInto(ctx, d_current, d_block_input);
  }
  Copy(ctx, d_current, d_x);
  return absl::OkStatus();
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
    const bool last = i + 1 == count;
    TensorView<const float> hidden = current;
    if (config_.pre_norm && sub.has_norm) {
      FTX_ASSIGN_OR_RETURN(TensorView<float> normed,
                           Buffer(state.normed_, shape));
      FTX_RETURN_IF_ERROR(sub.NormForward(ctx, store, base, current, normed));
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
                                        params.out_weight,
                                        TensorView<const float>(), branch));
    }
    TensorView<float> target = next;
    const bool post_norm = !config_.pre_norm && sub.has_norm && !last;
    if (post_norm) {
      FTX_ASSIGN_OR_RETURN(target, Buffer(state.sum_, shape));
    }
    if (sub.rezero) {
      FTX_ASSIGN_OR_RETURN(TensorView<float> g,
                           store.Value(base + sub.prefix + "rezero.g"));
      FTX_RETURN_IF_ERROR(sub.rezero->Forward(ctx, g, branch, target));
    } else {
      Copy(ctx, branch, target);
    }
    AddInto(ctx, target, current);
    if (post_norm) {
      FTX_RETURN_IF_ERROR(sub.NormForward(ctx, store, base, target, next));
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
  return std::unique_ptr<TransformerWrapper>(
      new TransformerWrapper(config, std::move(layers)));
}

std::vector<ParamShape> TransformerWrapper::ParamShapes() const {
  const int64_t V = config_.num_tokens, C = config_.dim;
  std::vector<ParamShape> shapes = {{"token_emb.weight", {V, C}}};
  if (uses_abs_pos_emb()) {
    shapes.push_back({"pos_emb.emb.weight", {config_.max_seq_len, C}});
  }
  for (ParamShape& shape : WithPrefix("attn_layers.", layers_->ParamShapes())) {
    shapes.push_back(std::move(shape));
  }
  if (config_.final_norm) {
    shapes.push_back({"norm.weight", {C}});
    shapes.push_back({"norm.bias", {C}});
  }
  shapes.push_back({"to_logits.weight", {V, C}});
  shapes.push_back({"to_logits.bias", {V}});
  return shapes;
}

namespace {

AbsolutePositions PositionsOf(const TransformerConfig& config) {
  return AbsolutePositions(
      {.max_seq_len = config.max_seq_len, .dim = config.dim});
}

LayerNormLayer FinalNorm(const TransformerConfig& config) {
  return LayerNormLayer::Create({.dim = config.dim}).value();
}

}  // namespace

absl::Status TransformerWrapper::InitParams(const Context& ctx,
                                            ParamStore& store) const {
  const uint64_t seed = config_.seed;
  // kaiming_normal_ (fan_in = C, gain sqrt(2)), as x-transformers.
  FTX_ASSIGN_OR_RETURN(TensorView<float> token,
                       store.Value("token_emb.weight"));
  FTX_RETURN_IF_ERROR(FillNormal(
      ctx, token, 0.0f, std::sqrt(2.0f / static_cast<float>(config_.dim)),
      {.seed = SubSeed(seed, 1u << 20)}));
  if (uses_abs_pos_emb()) {
    FTX_ASSIGN_OR_RETURN(TensorView<float> pos,
                         store.Value("pos_emb.emb.weight"));
    FTX_RETURN_IF_ERROR(PositionsOf(config_).InitParams(
        ctx, pos, SubSeed(seed, (1u << 20) + 1)));
  }
  FTX_RETURN_IF_ERROR(layers_->InitParams(ctx, store, "attn_layers."));
  if (config_.final_norm) {
    FTX_ASSIGN_OR_RETURN(TensorView<float> weight, store.Value("norm.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> bias, store.Value("norm.bias"));
    FTX_RETURN_IF_ERROR(FinalNorm(config_).InitParams(weight, bias));
  }
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
                V = config_.num_tokens;
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
                       Buffer(embedded_, {B, T, C}));
  FTX_ASSIGN_OR_RETURN(TensorView<float> token,
                       store.Value("token_emb.weight"));
  ctx.pool().ParallelFor(B * T, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* row = token.data() + tokens.data()[r] * C;
      float* target = embedded.data() + r * C;
      for (int64_t c = 0; c < C; ++c) target[c] = row[c];
    }
  });
  if (uses_abs_pos_emb()) {
    FTX_ASSIGN_OR_RETURN(TensorView<float> pos,
                         store.Value("pos_emb.emb.weight"));
    FTX_RETURN_IF_ERROR(PositionsOf(config_).Forward(ctx, pos, 0, embedded));
  }
  FTX_ASSIGN_OR_RETURN(TensorView<float> stack_out,
                       Buffer(stack_out_, {B, T, C}));
  StackInputs stack_inputs{inputs.lengths, inputs.context,
                           inputs.context_lengths, inputs.training,
                           inputs.seed};
  FTX_RETURN_IF_ERROR(layers_->Forward(ctx, store, "attn_layers.", embedded,
                                       stack_inputs, stack_out,
                                       save_for_backward));
  TensorView<float> normed = stack_out;
  if (config_.final_norm) {
    FTX_ASSIGN_OR_RETURN(normed, Buffer(normed_, {B, T, C}));
    FTX_ASSIGN_OR_RETURN(TensorView<float> weight, store.Value("norm.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> bias, store.Value("norm.bias"));
    FTX_RETURN_IF_ERROR(FinalNorm(config_).Forward(ctx, weight, bias, stack_out,
                                                   normed, &final_norm_cache_));
  }
  if (inputs.return_embeddings) {
    Copy(ctx, normed, out);
  } else {
    FTX_ASSIGN_OR_RETURN(TensorView<float> w, store.Value("to_logits.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> b, store.Value("to_logits.bias"));
    FTX_RETURN_IF_ERROR(LinearForward(ctx, normed, w, b, out));
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
                V = config_.num_tokens;
  const int64_t out_width = return_embeddings_ ? C : V;
  if (d_out.rank() != 3 || d_out.dim(0) != B || d_out.dim(1) != T ||
      d_out.dim(2) != out_width || !d_out.IsContiguous()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "TransformerWrapper::Backward: d_out must be a contiguous [", B, ", ",
        T, ", ", out_width, "] tensor"));
  }
  TensorView<const float> normed =
      config_.final_norm ? normed_.view<float>() : stack_out_.view<float>();
  TensorView<const float> d_normed = d_out;
  if (!return_embeddings_) {
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_normed_view,
                         Buffer(d_normed_, {B, T, C}));
    FTX_ASSIGN_OR_RETURN(TensorView<float> w, store.Value("to_logits.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_w, store.Grad("to_logits.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_b, store.Grad("to_logits.bias"));
    FTX_RETURN_IF_ERROR(
        LinearBackward(ctx, normed, w, d_out, d_normed_view, d_w, d_b));
    d_normed = d_normed_view;
  }
  TensorView<const float> d_stack_out = d_normed;
  if (config_.final_norm) {
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_stack,
                         Buffer(d_stack_out_, {B, T, C}));
    FTX_ASSIGN_OR_RETURN(TensorView<float> weight, store.Value("norm.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_weight, store.Grad("norm.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_bias, store.Grad("norm.bias"));
    FTX_RETURN_IF_ERROR(FinalNorm(config_).Backward(
        ctx, weight, final_norm_cache_, stack_out_.view<float>(), d_normed,
        d_stack, d_weight, d_bias));
    d_stack_out = d_stack;
  }
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_embedded,
                       Buffer(d_embedded_, {B, T, C}));
  FTX_RETURN_IF_ERROR(layers_->Backward(ctx, store, "attn_layers.", d_stack_out,
                                        d_embedded, d_context));
  if (uses_abs_pos_emb()) {
    FTX_ASSIGN_OR_RETURN(TensorView<float> pos,
                         store.Value("pos_emb.emb.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_pos,
                         store.Grad("pos_emb.emb.weight"));
    FTX_RETURN_IF_ERROR(
        PositionsOf(config_).Backward(ctx, pos, 0, d_embedded, d_pos));
  }
  // Token rows may repeat: parallel over feature columns, serial over tokens.
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_token,
                       store.Grad("token_emb.weight"));
  ctx.pool().ParallelFor(C, [&](int64_t begin, int64_t end) {
    for (int64_t r = 0; r < B * T; ++r) {
      float* target = d_token.data() + tokens_[r] * C;
      const float* source = d_embedded.data() + r * C;
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
  const int64_t B = state.batch_, C = config_.dim, V = config_.num_tokens;
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
  FTX_ASSIGN_OR_RETURN(TensorView<float> embedded,
                       Buffer(state.embedded_, {B, 1, C}));
  FTX_ASSIGN_OR_RETURN(TensorView<float> token,
                       store.Value("token_emb.weight"));
  for (int64_t b = 0; b < B; ++b) {
    const float* row = token.data() + tokens.data()[b] * C;
    std::copy(row, row + C, embedded.data() + b * C);
  }
  if (uses_abs_pos_emb()) {
    FTX_ASSIGN_OR_RETURN(TensorView<float> pos,
                         store.Value("pos_emb.emb.weight"));
    FTX_RETURN_IF_ERROR(
        PositionsOf(config_).Forward(ctx, pos, state.position_, embedded));
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
  FTX_ASSIGN_OR_RETURN(TensorView<float> w, store.Value("to_logits.weight"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> b, store.Value("to_logits.bias"));
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
      {"max_seq_len", &c.max_seq_len}};
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
      {"final_norm", &c.final_norm}};
  const std::map<std::string, std::string*> strings = {
      {"attention", &c.attention}, {"cross_attention", &c.cross_attention}};
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
