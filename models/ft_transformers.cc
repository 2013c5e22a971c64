#include "models/ft_transformers.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "attention/attention_layer.h"
#include "attention/builder.h"
#include "attention/conditional_full.h"
#include "attention/full.h"
#include "attention/recurrent_cross.h"
#include "kernels/base/rng.h"
#include "kernels/base/status_macros.h"
#include "kernels/dropout/dropout.h"
#include "kernels/linear/linear.h"
#include "layers/layernorm.h"

namespace ftx {
namespace {

// Philox streams of the stack's dropout sites: sublayer i uses
// kFtDropoutStream + 2 i for its residual branch and + 2 i + 1 for the
// feed-forward's hidden activations.
constexpr uint64_t kFtDropoutStream = 0xF7D0000;

absl::Status Bad(absl::string_view field, absl::string_view requirement,
                 const std::string& got) {
  return absl::InvalidArgumentError(absl::StrCat(
      "FtTransformerConfig.", field, " must be ", requirement, ", got ", got));
}

uint64_t SubSeed(uint64_t seed, uint64_t index) {
  return seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull * (index + 1);
}

absl::StatusOr<TensorView<float>> Buffer(Tensor& tensor, const Shape& shape) {
  FTX_RETURN_IF_ERROR(EnsureTensor(tensor, shape, Device::Cpu()));
  return tensor.view<float>();
}

void Copy(TensorView<const float> from, TensorView<float> to) {
  std::copy(from.data(), from.data() + from.NumElements(), to.data());
}

// out = a + b elementwise over contiguous tensors of one shape.
void Add(const Context& ctx, TensorView<const float> a,
         TensorView<const float> b, TensorView<float> out) {
  const float* x = a.data();
  const float* y = b.data();
  float* z = out.data();
  ctx.pool().ParallelFor(
      out.NumElements(),
      [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) z[i] = x[i] + y[i];
      },
      4096);
}

// Every mechanism name of a composition "a:b,c" is registered.
absl::Status CheckMechanismNames(const AttentionRegistry& registry,
                                 absl::string_view field,
                                 const std::string& type) {
  if (type.empty()) return Bad(field, "a mechanism name", "\"\"");
  for (absl::string_view level : absl::StrSplit(type, ':')) {
    for (absl::string_view name : absl::StrSplit(level, ',')) {
      if (registry.Find(name) == nullptr) {
        return Bad(field, "a registered attention (or a composition of them)",
                   absl::StrCat("\"", type, "\" (unknown \"", name, "\")"));
      }
    }
  }
  return absl::OkStatus();
}

// A builder with the config's options set. The transformer sizes that are
// also attention options (query_dimensions) are passed when some mechanism
// declares them, as fast-transformers' builders forward every attribute.
absl::StatusOr<AttentionBuilder> MakeAttentionBuilder(
    const FtTransformerConfig& config, const AttentionRegistry& registry,
    int64_t d_keys) {
  AttentionBuilder builder(registry);
  for (const auto& [name, value] : config.attention_options) {
    FTX_RETURN_IF_ERROR(builder.Set(name, value));
  }
  if (config.attention_options.count("query_dimensions") == 0) {
    builder.Set("query_dimensions", d_keys).IgnoreError();
  }
  return builder;
}

}  // namespace

absl::Status ValidateFtTransformerConfig(const FtTransformerConfig& c,
                                         bool decoder) {
  if (c.n_layers < 1) return Bad("n_layers", ">= 1", absl::StrCat(c.n_layers));
  if (c.n_heads < 1) return Bad("n_heads", ">= 1", absl::StrCat(c.n_heads));
  if (c.d_model < 1) return Bad("d_model", ">= 1", absl::StrCat(c.d_model));
  if (c.d_keys < 1) return Bad("d_keys", ">= 1", absl::StrCat(c.d_keys));
  if (c.d_values < 1) return Bad("d_values", ">= 1", absl::StrCat(c.d_values));
  if (c.d_ff < 1) return Bad("d_ff", ">= 1", absl::StrCat(c.d_ff));
  if (!(c.dropout >= 0.0f && c.dropout < 1.0f)) {
    return Bad("dropout", "in [0, 1)", absl::StrCat(c.dropout));
  }
  if (c.activation != Activation::kRelu && c.activation != Activation::kGelu) {
    return Bad("activation", "relu or gelu", ActivationName(c.activation));
  }
  if (!(c.layer_norm_eps >= 0.0f && std::isfinite(c.layer_norm_eps))) {
    return Bad("layer_norm_eps", ">= 0 and finite",
               absl::StrCat(c.layer_norm_eps));
  }
  if (decoder) {
    if (c.cross_n_heads < 0) {
      return Bad("cross_n_heads", ">= 0", absl::StrCat(c.cross_n_heads));
    }
    if (c.cross_d_keys < 0) {
      return Bad("cross_d_keys", ">= 0", absl::StrCat(c.cross_d_keys));
    }
    if (c.cross_d_values < 0) {
      return Bad("cross_d_values", ">= 0", absl::StrCat(c.cross_d_values));
    }
    if (c.memory_dim < 0) {
      return Bad("memory_dim", ">= 0", absl::StrCat(c.memory_dim));
    }
  }
  return absl::OkStatus();
}

// Sublayers in order; per layer 'a' (self-attention) ['c' (cross-attention)]
// 'f' (feed-forward), each followed by dropout, the residual and its norm.
class FtStack {
 public:
  enum class Kind { kSelf, kCross, kFeedForward };

  static absl::StatusOr<std::unique_ptr<FtStack>> Create(
      const FtTransformerConfig& config, const AttentionRegistry& registry,
      bool decoder, bool recurrent);

  const FtTransformerConfig& config() const { return config_; }
  bool decoder() const { return decoder_; }
  int64_t memory_dim() const {
    return config_.memory_dim > 0 ? config_.memory_dim : config_.d_model;
  }

  std::vector<ParamShape> ParamShapes() const;
  absl::Status InitParams(const Context& ctx, ParamStore& store) const;

  // memory: empty for encoders.
  absl::Status Forward(const Context& ctx, ParamStore& store,
                       TensorView<const float> x,
                       TensorView<const float> memory,
                       const FtDecoderInputs& inputs, TensorView<float> y,
                       bool save_for_backward);
  absl::Status Backward(const Context& ctx, ParamStore& store,
                        TensorView<const float> d_y, TensorView<float> d_x,
                        TensorView<float> d_memory);

  FtRecurrentState NewState() const;
  absl::Status Step(const Context& ctx, ParamStore& store,
                    TensorView<const float> x, TensorView<const float> memory,
                    const LengthMask& memory_lengths, FtRecurrentState& state,
                    TensorView<float> y);

  void SetEventDispatcher(std::shared_ptr<FtEventDispatcher> dispatcher) {
    ArmObservers(false);
    dispatcher_ = std::move(dispatcher);
  }
  const std::shared_ptr<FtEventDispatcher>& event_dispatcher() const {
    return dispatcher_;
  }

 private:
  struct Sublayer {
    Kind kind = Kind::kFeedForward;
    std::string block;  // "layers.{i}.attention." or "layers.{i}."
    std::string norm;   // "layers.{i}.norm{k}."
    std::unique_ptr<AttentionLayer> attention;
    std::unique_ptr<RecurrentAttention> recurrent;
    std::unique_ptr<RecurrentCrossAttention> recurrent_cross;
    // Event sources: the attention layer ("layers.{i}.attention") and its
    // mechanism ("layers.{i}.attention.inner_attention", with
    // ".full_attention" for "conditional-full"), and the "full" mechanisms
    // that dispatch attention events (null for other types).
    std::string layer_name, inner_name;
    FullAttention* full = nullptr;
    RecurrentFullAttention* recurrent_full = nullptr;
    RecurrentCrossFullAttention* recurrent_cross_full = nullptr;
    // Forward activations: the block output (after dropout), the residual
    // sum (norm input), the feed-forward's linear1 output and its activation
    // after dropout (linear2 input).
    Tensor branch, sum, hidden, activated;
    AttentionLayerCache attention_cache;
    LayerNormCache norm_cache;
  };

  FtStack(const FtTransformerConfig& config, bool decoder,
          LayerNormLayer layer_norm)
      : config_(config), decoder_(decoder), layer_norm_(layer_norm) {}

  // Whether this call dispatches events: there is a dispatcher with
  // listeners. Arms (or disarms) the attention observers to match.
  bool PrepareEvents();
  void ArmObservers(bool armed);
  void Dispatch(const FtEvent& event) const { dispatcher_->Dispatch(event); }
  void DispatchIntermediateOutput(TensorView<const float> x) const {
    FtEvent event;
    event.kind = FtEventKind::kIntermediateOutput;
    event.x = x;
    Dispatch(event);
  }

  bool DropoutActive(bool training) const {
    return training && config_.dropout > 0.0f;
  }
  bool HiddenDropoutActive(bool training) const {
    return DropoutActive(training) && config_.feed_forward_hidden_dropout;
  }
  void ApplyDropout(const Context& ctx, uint64_t seed, uint64_t stream,
                    TensorView<const float> in, TensorView<float> out) const {
    DropoutInto(ctx, {.p = config_.dropout, .seed = seed, .stream = stream},
                in.NumElements(), in.data(), out.data());
  }
  AttentionLayerMasks MasksOf(const Sublayer& sub, size_t index,
                              const FtDecoderInputs& inputs) const;
  absl::StatusOr<AttentionLayerParams> AttentionParams(ParamStore& store,
                                                       const Sublayer& sub);
  absl::StatusOr<AttentionLayerGrads> AttentionGrads(ParamStore& store,
                                                     const Sublayer& sub);
  absl::Status NormForward(const Context& ctx, ParamStore& store,
                           const std::string& prefix, TensorView<const float> x,
                           TensorView<float> y, LayerNormCache* cache) const;
  absl::Status NormBackward(const Context& ctx, ParamStore& store,
                            const std::string& prefix,
                            const LayerNormCache& cache,
                            TensorView<const float> x,
                            TensorView<const float> d_y,
                            TensorView<float> d_x) const;
  // linear2(dropout(act(linear1(x)))) of rows x [..., C] into out [..., C];
  // hidden and activated [..., F] receive the intermediate values.
  absl::Status FeedForward(const Context& ctx, ParamStore& store,
                           const Sublayer& sub, TensorView<const float> x,
                           bool dropout, uint64_t seed, uint64_t stream,
                           TensorView<float> hidden,
                           TensorView<float> activated,
                           TensorView<float> out) const;

  FtTransformerConfig config_;
  bool decoder_;
  LayerNormLayer layer_norm_;  // eps layer_norm_eps, shared by every norm
  std::vector<Sublayer> sublayers_;
  std::shared_ptr<FtEventDispatcher> dispatcher_ = FtEventDispatcher::Get();
  bool observers_armed_ = false;
  // Forward state: the input of every sublayer plus the stack output before
  // the final norm, [N, L, C] each; the last call's memory and inputs.
  std::vector<Tensor> activations_;
  LayerNormCache final_norm_cache_;
  TensorView<const float> memory_;
  FtDecoderInputs inputs_;
  bool saved_ = false;
  Tensor d_current_, d_sum_, d_branch_, d_block_, d_hidden_, d_memory_part_;
};

absl::StatusOr<std::unique_ptr<FtStack>> FtStack::Create(
    const FtTransformerConfig& config, const AttentionRegistry& registry,
    bool decoder, bool recurrent) {
  FTX_RETURN_IF_ERROR(ValidateFtTransformerConfig(config, decoder));
  FTX_RETURN_IF_ERROR(
      CheckMechanismNames(registry, "attention_type", config.attention_type));
  if (decoder) {
    FTX_RETURN_IF_ERROR(CheckMechanismNames(registry, "cross_attention_type",
                                            config.cross_attention_type));
  }
  FTX_ASSIGN_OR_RETURN(LayerNormLayer norm,
                       LayerNormLayer::Create({.dim = config.d_model,
                                               .eps = config.layer_norm_eps}));
  std::unique_ptr<FtStack> stack(new FtStack(config, decoder, norm));
  const int64_t cross_heads =
      config.cross_n_heads > 0 ? config.cross_n_heads : config.n_heads;
  const int64_t cross_keys =
      config.cross_d_keys > 0 ? config.cross_d_keys : config.d_keys;
  const int64_t cross_values =
      config.cross_d_values > 0 ? config.cross_d_values : config.d_values;
  for (int64_t layer = 0; layer < config.n_layers; ++layer) {
    const std::string prefix = absl::StrCat("layers.", layer, ".");
    std::vector<Kind> kinds = {Kind::kSelf};
    if (decoder) kinds.push_back(Kind::kCross);
    kinds.push_back(Kind::kFeedForward);
    for (size_t k = 0; k < kinds.size(); ++k) {
      Sublayer sub;
      sub.kind = kinds[k];
      sub.norm = absl::StrCat(prefix, "norm", k + 1, ".");
      if (sub.kind == Kind::kFeedForward) {
        sub.block = prefix;
        stack->sublayers_.push_back(std::move(sub));
        continue;
      }
      const bool cross = sub.kind == Kind::kCross;
      sub.block = prefix + (cross     ? "cross_attention."
                            : decoder ? "self_attention."
                                      : "attention.");
      sub.layer_name = sub.block.substr(0, sub.block.size() - 1);
      sub.inner_name = sub.layer_name + ".inner_attention";
      AttentionLayerConfig attention;
      attention.d_model = config.d_model;
      attention.n_heads = cross ? cross_heads : config.n_heads;
      attention.d_keys = cross ? cross_keys : config.d_keys;
      attention.d_values = cross ? cross_values : config.d_values;
      attention.d_model_keys = cross ? stack->memory_dim() : config.d_model;
      attention.bias = true;
      const std::string& type =
          cross ? config.cross_attention_type : config.attention_type;
      FTX_ASSIGN_OR_RETURN(
          AttentionBuilder builder,
          MakeAttentionBuilder(config, registry, attention.d_keys));
      FTX_ASSIGN_OR_RETURN(std::unique_ptr<Attention> inner,
                           builder.Build(type));
      if (recurrent && cross) {
        FTX_ASSIGN_OR_RETURN(sub.recurrent_cross,
                             builder.BuildRecurrentCross(type));
      } else if (recurrent) {
        FTX_ASSIGN_OR_RETURN(sub.recurrent, builder.BuildRecurrent(type));
      }
      FTX_ASSIGN_OR_RETURN(sub.attention,
                           AttentionLayer::Create(attention, std::move(inner)));
      sub.full = dynamic_cast<FullAttention*>(&sub.attention->inner());
      if (auto* conditional = dynamic_cast<ConditionalFullAttention*>(
              &sub.attention->inner())) {
        // Its exact branch dispatches, as fast-transformers' submodule.
        sub.full = &conditional->full();
        sub.inner_name += ".full_attention";
      }
      sub.recurrent_full =
          dynamic_cast<RecurrentFullAttention*>(sub.recurrent.get());
      sub.recurrent_cross_full =
          dynamic_cast<RecurrentCrossFullAttention*>(sub.recurrent_cross.get());
      stack->sublayers_.push_back(std::move(sub));
    }
  }
  return stack;
}

std::vector<ParamShape> FtStack::ParamShapes() const {
  const int64_t C = config_.d_model, F = config_.d_ff;
  // Per layer in state_dict order: the attention blocks, linear1, linear2,
  // then norm1..norm3 (the feed-forward is every layer's last sublayer).
  std::vector<ParamShape> shapes, layer_norms;
  for (const Sublayer& sub : sublayers_) {
    layer_norms.push_back({sub.norm + "weight", {C}});
    layer_norms.push_back({sub.norm + "bias", {C}});
    if (sub.kind != Kind::kFeedForward) {
      for (ParamShape& shape :
           WithPrefix(sub.block, sub.attention->ParamShapes())) {
        shapes.push_back(std::move(shape));
      }
      continue;
    }
    shapes.push_back({sub.block + "linear1.weight", {F, C}});
    shapes.push_back({sub.block + "linear1.bias", {F}});
    shapes.push_back({sub.block + "linear2.weight", {C, F}});
    shapes.push_back({sub.block + "linear2.bias", {C}});
    for (ParamShape& shape : layer_norms) shapes.push_back(std::move(shape));
    layer_norms.clear();
  }
  if (config_.final_normalization) {
    shapes.push_back({"norm.weight", {C}});
    shapes.push_back({"norm.bias", {C}});
  }
  return shapes;
}

absl::Status FtStack::InitParams(const Context& ctx, ParamStore& store) const {
  std::vector<std::string> norms = {"norm."};
  for (const Sublayer& sub : sublayers_) norms.push_back(sub.norm);
  auto is_norm_weight = [&](const std::string& name, bool& weight) {
    for (const std::string& norm : norms) {
      if (name == norm + "weight" || name == norm + "bias") {
        weight = name == norm + "weight";
        return true;
      }
    }
    return false;
  };
  uint64_t index = 0;
  int64_t fan_in = 1;
  for (const ParamShape& shape : ParamShapes()) {
    FTX_ASSIGN_OR_RETURN(TensorView<float> value, store.Value(shape.name));
    bool weight = false;
    if (is_norm_weight(shape.name, weight)) {
      std::fill(value.data(), value.data() + value.NumElements(),
                weight ? 1.0f : 0.0f);
      continue;
    }
    // torch Linear: weight and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)); each
    // bias follows its weight in ParamShapes.
    if (shape.shape.rank() == 2) fan_in = shape.shape.dim(1);
    const float bound = 1.0f / std::sqrt(static_cast<float>(fan_in));
    FTX_RETURN_IF_ERROR(FillUniform(ctx, value, -bound, bound,
                                    {.seed = SubSeed(config_.seed, index++)}));
  }
  return absl::OkStatus();
}

bool FtStack::PrepareEvents() {
  const bool observe = dispatcher_ != nullptr && dispatcher_->HasListeners();
  ArmObservers(observe);
  return observe;
}

void FtStack::ArmObservers(bool armed) {
  if (armed == observers_armed_) return;
  observers_armed_ = armed;
  for (const Sublayer& sub : sublayers_) {
    if (sub.kind == Kind::kFeedForward) continue;
    const Sublayer* source = &sub;
    auto on_probabilities = [this, source](TensorView<const float> matrix) {
      FtEvent event;
      event.kind = FtEventKind::kAttention;
      event.source = source->inner_name;
      event.attention_matrix = matrix;
      Dispatch(event);
    };
    if (!armed) {
      sub.attention->SetProjectionObserver(nullptr);
      if (sub.full != nullptr) sub.full->SetProbabilityObserver(nullptr);
      if (sub.recurrent_full != nullptr) {
        sub.recurrent_full->SetProbabilityObserver(nullptr);
      }
      if (sub.recurrent_cross_full != nullptr) {
        sub.recurrent_cross_full->SetProbabilityObserver(nullptr);
      }
      continue;
    }
    sub.attention->SetProjectionObserver(
        [this, source](TensorView<const float> queries,
                       TensorView<const float> keys,
                       TensorView<const float> values) {
          FtEvent event;
          event.kind = FtEventKind::kQkv;
          event.source = source->layer_name;
          event.queries = queries;
          event.keys = keys;
          event.values = values;
          Dispatch(event);
        });
    if (sub.full != nullptr) sub.full->SetProbabilityObserver(on_probabilities);
    if (sub.recurrent_full != nullptr) {
      sub.recurrent_full->SetProbabilityObserver(on_probabilities);
    }
    if (sub.recurrent_cross_full != nullptr) {
      sub.recurrent_cross_full->SetProbabilityObserver(on_probabilities);
    }
  }
}

AttentionLayerMasks FtStack::MasksOf(const Sublayer& sub, size_t index,
                                     const FtDecoderInputs& inputs) const {
  AttentionLayerMasks masks;
  const bool cross = sub.kind == Kind::kCross;
  masks.attn_mask = cross ? inputs.memory_mask : inputs.x_mask;
  masks.query_lengths = inputs.x_lengths;
  masks.key_lengths = cross ? inputs.memory_lengths : inputs.x_lengths;
  masks.training = inputs.training;
  masks.seed = inputs.seed * 1000003ull + index;
  return masks;
}

absl::StatusOr<AttentionLayerParams> FtStack::AttentionParams(
    ParamStore& store, const Sublayer& sub) {
  AttentionLayerParams p;
  const std::string& b = sub.block;
  FTX_ASSIGN_OR_RETURN(p.query_weight,
                       store.Value(b + "query_projection.weight"));
  FTX_ASSIGN_OR_RETURN(p.query_bias, store.Value(b + "query_projection.bias"));
  FTX_ASSIGN_OR_RETURN(p.key_weight, store.Value(b + "key_projection.weight"));
  FTX_ASSIGN_OR_RETURN(p.key_bias, store.Value(b + "key_projection.bias"));
  FTX_ASSIGN_OR_RETURN(p.value_weight,
                       store.Value(b + "value_projection.weight"));
  FTX_ASSIGN_OR_RETURN(p.value_bias, store.Value(b + "value_projection.bias"));
  FTX_ASSIGN_OR_RETURN(p.out_weight, store.Value(b + "out_projection.weight"));
  FTX_ASSIGN_OR_RETURN(p.out_bias, store.Value(b + "out_projection.bias"));
  return p;
}

absl::StatusOr<AttentionLayerGrads> FtStack::AttentionGrads(
    ParamStore& store, const Sublayer& sub) {
  AttentionLayerGrads g;
  const std::string& b = sub.block;
  FTX_ASSIGN_OR_RETURN(g.query_weight,
                       store.Grad(b + "query_projection.weight"));
  FTX_ASSIGN_OR_RETURN(g.query_bias, store.Grad(b + "query_projection.bias"));
  FTX_ASSIGN_OR_RETURN(g.key_weight, store.Grad(b + "key_projection.weight"));
  FTX_ASSIGN_OR_RETURN(g.key_bias, store.Grad(b + "key_projection.bias"));
  FTX_ASSIGN_OR_RETURN(g.value_weight,
                       store.Grad(b + "value_projection.weight"));
  FTX_ASSIGN_OR_RETURN(g.value_bias, store.Grad(b + "value_projection.bias"));
  FTX_ASSIGN_OR_RETURN(g.out_weight, store.Grad(b + "out_projection.weight"));
  FTX_ASSIGN_OR_RETURN(g.out_bias, store.Grad(b + "out_projection.bias"));
  return g;
}

absl::Status FtStack::NormForward(const Context& ctx, ParamStore& store,
                                  const std::string& prefix,
                                  TensorView<const float> x,
                                  TensorView<float> y,
                                  LayerNormCache* cache) const {
  FTX_ASSIGN_OR_RETURN(TensorView<float> weight,
                       store.Value(prefix + "weight"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> bias, store.Value(prefix + "bias"));
  return layer_norm_.Forward(ctx, weight, bias, x, y, cache);
}

absl::Status FtStack::NormBackward(const Context& ctx, ParamStore& store,
                                   const std::string& prefix,
                                   const LayerNormCache& cache,
                                   TensorView<const float> x,
                                   TensorView<const float> d_y,
                                   TensorView<float> d_x) const {
  FTX_ASSIGN_OR_RETURN(TensorView<float> weight,
                       store.Value(prefix + "weight"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_weight,
                       store.Grad(prefix + "weight"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_bias, store.Grad(prefix + "bias"));
  return layer_norm_.Backward(ctx, weight, cache, x, d_y, d_x, d_weight,
                              d_bias);
}

absl::Status FtStack::FeedForward(const Context& ctx, ParamStore& store,
                                  const Sublayer& sub,
                                  TensorView<const float> x, bool dropout,
                                  uint64_t seed, uint64_t stream,
                                  TensorView<float> hidden,
                                  TensorView<float> activated,
                                  TensorView<float> out) const {
  FTX_ASSIGN_OR_RETURN(TensorView<float> w1,
                       store.Value(sub.block + "linear1.weight"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> b1,
                       store.Value(sub.block + "linear1.bias"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> w2,
                       store.Value(sub.block + "linear2.weight"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> b2,
                       store.Value(sub.block + "linear2.bias"));
  FTX_RETURN_IF_ERROR(LinearForward(ctx, x, w1, b1, hidden));
  FTX_RETURN_IF_ERROR(Activate(ctx, config_.activation, hidden, activated));
  if (dropout) ApplyDropout(ctx, seed, stream, activated, activated);
  return LinearForward(ctx, activated, w2, b2, out);
}

absl::Status FtStack::Forward(const Context& ctx, ParamStore& store,
                              TensorView<const float> x,
                              TensorView<const float> memory,
                              const FtDecoderInputs& inputs,
                              TensorView<float> y, bool save_for_backward) {
  saved_ = false;
  const char* op = decoder_ ? "FtTransformerDecoder" : "FtTransformerEncoder";
  if (ctx.device().type != DeviceType::kCpu) {
    return absl::UnimplementedError(
        absl::StrCat(op, ": only CPU contexts are supported"));
  }
  const int64_t C = config_.d_model;
  if (x.rank() != 3 || x.dim(2) != C || x.dim(0) < 1 || x.dim(1) < 1 ||
      !x.IsContiguous() || x.data() == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": x must be a contiguous non-empty [N, L, ", C,
                     "] tensor, got ", x.shape().ToString()));
  }
  if (y.shape() != x.shape() || !y.IsContiguous() || y.data() == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": y must be contiguous and shaped like x ",
                     x.shape().ToString(), ", got ", y.shape().ToString()));
  }
  if (decoder_) {
    if (memory.rank() != 3 || memory.dim(0) != x.dim(0) || memory.dim(1) < 1 ||
        memory.dim(2) != memory_dim() || !memory.IsContiguous() ||
        memory.data() == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          op, ": memory must be a contiguous [", x.dim(0), ", S, ",
          memory_dim(), "] tensor, got ", memory.shape().ToString()));
    }
  }
  const bool events = PrepareEvents();
  const Shape shape = x.shape();
  const size_t count = sublayers_.size();
  activations_.resize(count + 1);
  FTX_ASSIGN_OR_RETURN(TensorView<float> first, Buffer(activations_[0], shape));
  Copy(x, first);
  const bool dropout = DropoutActive(inputs.training);
  for (size_t i = 0; i < count; ++i) {
    Sublayer& sub = sublayers_[i];
    TensorView<const float> input = activations_[i].view<float>();
    FTX_ASSIGN_OR_RETURN(TensorView<float> branch, Buffer(sub.branch, shape));
    const uint64_t stream = kFtDropoutStream + 2 * i;
    if (sub.kind == Kind::kFeedForward) {
      const Shape hidden_shape{shape.dim(0), shape.dim(1), config_.d_ff};
      FTX_ASSIGN_OR_RETURN(TensorView<float> hidden,
                           Buffer(sub.hidden, hidden_shape));
      FTX_ASSIGN_OR_RETURN(TensorView<float> activated,
                           Buffer(sub.activated, hidden_shape));
      FTX_RETURN_IF_ERROR(FeedForward(
          ctx, store, sub, input, HiddenDropoutActive(inputs.training),
          inputs.seed, stream + 1, hidden, activated, branch));
    } else {
      const bool cross = sub.kind == Kind::kCross;
      FTX_ASSIGN_OR_RETURN(AttentionLayerParams params,
                           AttentionParams(store, sub));
      FTX_RETURN_IF_ERROR(sub.attention->Forward(
          ctx, params, input, cross ? memory : TensorView<const float>(),
          MasksOf(sub, i, inputs), branch,
          save_for_backward ? &sub.attention_cache : nullptr));
    }
    if (dropout) ApplyDropout(ctx, inputs.seed, stream, branch, branch);
    FTX_ASSIGN_OR_RETURN(TensorView<float> sum, Buffer(sub.sum, shape));
    Add(ctx, input, branch, sum);
    FTX_ASSIGN_OR_RETURN(TensorView<float> output,
                         Buffer(activations_[i + 1], shape));
    FTX_RETURN_IF_ERROR(
        NormForward(ctx, store, sub.norm, sum, output, &sub.norm_cache));
    if (events && sub.kind == Kind::kFeedForward) {
      DispatchIntermediateOutput(output);
    }
  }
  TensorView<const float> stack_out = activations_[count].view<float>();
  if (config_.final_normalization) {
    FTX_RETURN_IF_ERROR(
        NormForward(ctx, store, "norm.", stack_out, y, &final_norm_cache_));
  } else {
    Copy(stack_out, y);
  }
  memory_ = memory;
  inputs_ = inputs;
  saved_ = save_for_backward;
  return absl::OkStatus();
}

absl::Status FtStack::Backward(const Context& ctx, ParamStore& store,
                               TensorView<const float> d_y,
                               TensorView<float> d_x,
                               TensorView<float> d_memory) {
  const char* op = decoder_ ? "FtTransformerDecoder::Backward"
                            : "FtTransformerEncoder::Backward";
  if (!saved_) {
    return absl::FailedPreconditionError(
        absl::StrCat(op, " needs a Forward with save_for_backward"));
  }
  const Shape shape = activations_[0].shape();
  if (d_y.shape() != shape || !d_y.IsContiguous() || d_y.data() == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": d_y must be contiguous ", shape.ToString(),
                     ", got ", d_y.shape().ToString()));
  }
  if (d_x.shape() != shape || !d_x.IsContiguous() || d_x.data() == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": d_x must be contiguous ", shape.ToString(),
                     ", got ", d_x.shape().ToString()));
  }
  const bool want_memory = d_memory.data() != nullptr;
  if (want_memory) {
    if (!decoder_ || d_memory.shape() != memory_.shape() ||
        !d_memory.IsContiguous()) {
      return absl::InvalidArgumentError(absl::StrCat(
          op, ": d_memory must be contiguous and shaped like the memory ",
          memory_.shape().ToString(), ", got ", d_memory.shape().ToString()));
    }
    std::fill(d_memory.data(), d_memory.data() + d_memory.NumElements(), 0.0f);
  }
  const size_t count = sublayers_.size();
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_current, Buffer(d_current_, shape));
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_sum, Buffer(d_sum_, shape));
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_branch, Buffer(d_branch_, shape));
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_block, Buffer(d_block_, shape));
  if (config_.final_normalization) {
    FTX_RETURN_IF_ERROR(NormBackward(ctx, store, "norm.", final_norm_cache_,
                                     activations_[count].view<float>(), d_y,
                                     d_current));
  } else {
    Copy(d_y, d_current);
  }
  const bool dropout = DropoutActive(inputs_.training);
  for (size_t i = count; i-- > 0;) {
    Sublayer& sub = sublayers_[i];
    TensorView<const float> input = activations_[i].view<float>();
    FTX_RETURN_IF_ERROR(NormBackward(ctx, store, sub.norm, sub.norm_cache,
                                     sub.sum.view<float>(), d_current, d_sum));
    const uint64_t stream = kFtDropoutStream + 2 * i;
    if (dropout) {
      ApplyDropout(ctx, inputs_.seed, stream, d_sum, d_branch);
    } else {
      Copy(d_sum, d_branch);
    }
    if (sub.kind == Kind::kFeedForward) {
      const std::string& b = sub.block;
      FTX_ASSIGN_OR_RETURN(TensorView<float> w1,
                           store.Value(b + "linear1.weight"));
      FTX_ASSIGN_OR_RETURN(TensorView<float> w2,
                           store.Value(b + "linear2.weight"));
      FTX_ASSIGN_OR_RETURN(TensorView<float> d_w1,
                           store.Grad(b + "linear1.weight"));
      FTX_ASSIGN_OR_RETURN(TensorView<float> d_b1,
                           store.Grad(b + "linear1.bias"));
      FTX_ASSIGN_OR_RETURN(TensorView<float> d_w2,
                           store.Grad(b + "linear2.weight"));
      FTX_ASSIGN_OR_RETURN(TensorView<float> d_b2,
                           store.Grad(b + "linear2.bias"));
      FTX_ASSIGN_OR_RETURN(TensorView<float> d_hidden,
                           Buffer(d_hidden_, sub.hidden.shape()));
      FTX_RETURN_IF_ERROR(LinearBackward(ctx, sub.activated.view<float>(), w2,
                                         d_branch, d_hidden, d_w2, d_b2));
      if (HiddenDropoutActive(inputs_.training)) {
        ApplyDropout(ctx, inputs_.seed, stream + 1, d_hidden, d_hidden);
      }
      FTX_RETURN_IF_ERROR(ActivateBackward(ctx, config_.activation,
                                           sub.hidden.view<float>(), d_hidden,
                                           d_hidden));
      FTX_RETURN_IF_ERROR(
          LinearBackward(ctx, input, w1, d_hidden, d_block, d_w1, d_b1));
    } else {
      const bool cross = sub.kind == Kind::kCross;
      FTX_ASSIGN_OR_RETURN(AttentionLayerParams params,
                           AttentionParams(store, sub));
      FTX_ASSIGN_OR_RETURN(AttentionLayerGrads grads,
                           AttentionGrads(store, sub));
      TensorView<float> d_memory_part;
      if (cross) {
        FTX_ASSIGN_OR_RETURN(d_memory_part,
                             Buffer(d_memory_part_, memory_.shape()));
      }
      FTX_RETURN_IF_ERROR(sub.attention->Backward(
          ctx, params, input, cross ? memory_ : TensorView<const float>(),
          MasksOf(sub, i, inputs_), sub.attention_cache, d_branch, d_block,
          d_memory_part, grads));
      if (cross && want_memory) Add(ctx, d_memory, d_memory_part, d_memory);
    }
    Add(ctx, d_sum, d_block, d_current);
  }
  Copy(d_current, d_x);
  return absl::OkStatus();
}

FtRecurrentState FtStack::NewState() const {
  FtRecurrentState state;
  for (const Sublayer& sub : sublayers_) {
    if (sub.recurrent) {
      state.states_.push_back(sub.recurrent->NewState());
    } else if (sub.recurrent_cross) {
      state.states_.push_back(sub.recurrent_cross->NewState());
    } else {
      state.states_.push_back(nullptr);
    }
  }
  state.memory_keys_.resize(sublayers_.size());
  state.memory_values_.resize(sublayers_.size());
  return state;
}

absl::Status FtStack::Step(const Context& ctx, ParamStore& store,
                           TensorView<const float> x,
                           TensorView<const float> memory,
                           const LengthMask& memory_lengths,
                           FtRecurrentState& state, TensorView<float> y) {
  saved_ = false;
  const char* op =
      decoder_ ? "FtRecurrentDecoder::Step" : "FtRecurrentEncoder::Step";
  if (ctx.device().type != DeviceType::kCpu) {
    return absl::UnimplementedError(
        absl::StrCat(op, ": only CPU contexts are supported"));
  }
  const int64_t C = config_.d_model;
  if (x.rank() != 2 || x.dim(1) != C || x.dim(0) < 1 || !x.IsContiguous() ||
      x.data() == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": x must be a contiguous [N, ", C, "] tensor, got ",
                     x.shape().ToString()));
  }
  const int64_t N = x.dim(0);
  if (state.states_.size() != sublayers_.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": the state was not made by this model's NewState"));
  }
  if (state.steps_ > 0 && state.batch_ != N) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": x has batch ", N,
                     " but the state's first step had ", state.batch_));
  }
  if (y.shape() != x.shape() || !y.IsContiguous() || y.data() == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": y must be contiguous and shaped like x ",
                     x.shape().ToString(), ", got ", y.shape().ToString()));
  }
  if (decoder_ && state.steps_ == 0) {
    if (memory.rank() != 3 || memory.dim(0) != N || memory.dim(1) < 1 ||
        memory.dim(2) != memory_dim() || !memory.IsContiguous() ||
        memory.data() == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          op, ": memory must be a contiguous [", N, ", S, ", memory_dim(),
          "] tensor on the first step, got ", memory.shape().ToString()));
    }
    FTX_RETURN_IF_ERROR(
        memory_lengths.Validate(op, "memory_lengths", N, memory.dim(1)));
  }
  const bool events = PrepareEvents();
  const Shape shape{N, C};
  FTX_ASSIGN_OR_RETURN(TensorView<float> current,
                       Buffer(state.current_, shape));
  FTX_ASSIGN_OR_RETURN(TensorView<float> sum, Buffer(state.sum_, shape));
  FTX_ASSIGN_OR_RETURN(TensorView<float> branch, Buffer(state.branch_, shape));
  Copy(x, current);
  for (size_t i = 0; i < sublayers_.size(); ++i) {
    Sublayer& sub = sublayers_[i];
    if (sub.kind == Kind::kFeedForward) {
      FTX_ASSIGN_OR_RETURN(TensorView<float> hidden,
                           Buffer(state.hidden_, {N, config_.d_ff}));
      FTX_RETURN_IF_ERROR(FeedForward(ctx, store, sub, current,
                                      /*dropout=*/false, 0, 0, hidden, hidden,
                                      branch));
    } else {
      const AttentionLayerConfig& a = sub.attention->config();
      const int64_t H = a.n_heads, E = a.d_keys, D = a.d_values;
      FTX_ASSIGN_OR_RETURN(AttentionLayerParams params,
                           AttentionParams(store, sub));
      FTX_ASSIGN_OR_RETURN(TensorView<float> query,
                           Buffer(state.query_, {N, H * E}));
      FTX_ASSIGN_OR_RETURN(TensorView<float> attended,
                           Buffer(state.attended_, {N, H * D}));
      FTX_RETURN_IF_ERROR(LinearForward(ctx, current, params.query_weight,
                                        params.query_bias, query));
      if (sub.kind == Kind::kSelf) {
        FTX_ASSIGN_OR_RETURN(TensorView<float> key,
                             Buffer(state.key_, {N, H * E}));
        FTX_ASSIGN_OR_RETURN(TensorView<float> value,
                             Buffer(state.value_, {N, H * D}));
        FTX_RETURN_IF_ERROR(LinearForward(ctx, current, params.key_weight,
                                          params.key_bias, key));
        FTX_RETURN_IF_ERROR(LinearForward(ctx, current, params.value_weight,
                                          params.value_bias, value));
        FTX_RETURN_IF_ERROR(sub.recurrent->Step(
            ctx, query.Reshape({N, H, E}), key.Reshape({N, H, E}),
            value.Reshape({N, H, D}), attended.Reshape({N, H, D}),
            *state.states_[i]));
      } else {
        Tensor& keys_tensor = state.memory_keys_[i];
        Tensor& values_tensor = state.memory_values_[i];
        if (state.steps_ == 0) {
          const int64_t S = memory.dim(1);
          FTX_ASSIGN_OR_RETURN(TensorView<float> keys,
                               Buffer(keys_tensor, {N, S, H * E}));
          FTX_ASSIGN_OR_RETURN(TensorView<float> values,
                               Buffer(values_tensor, {N, S, H * D}));
          FTX_RETURN_IF_ERROR(LinearForward(ctx, memory, params.key_weight,
                                            params.key_bias, keys));
          FTX_RETURN_IF_ERROR(LinearForward(ctx, memory, params.value_weight,
                                            params.value_bias, values));
        }
        const int64_t S = keys_tensor.shape().dim(1);
        FTX_RETURN_IF_ERROR(sub.recurrent_cross->Step(
            ctx, query.Reshape({N, H, E}),
            keys_tensor.view<float>().Reshape({N, S, H, E}),
            values_tensor.view<float>().Reshape({N, S, H, D}), memory_lengths,
            attended.Reshape({N, H, D}), *state.states_[i]));
      }
      FTX_RETURN_IF_ERROR(LinearForward(ctx, attended, params.out_weight,
                                        params.out_bias, branch));
    }
    Add(ctx, current, branch, sum);
    FTX_RETURN_IF_ERROR(NormForward(ctx, store, sub.norm, sum, current,
                                    /*cache=*/nullptr));
    if (events && sub.kind == Kind::kFeedForward) {
      DispatchIntermediateOutput(current);
    }
  }
  if (config_.final_normalization) {
    FTX_RETURN_IF_ERROR(
        NormForward(ctx, store, "norm.", current, y, /*cache=*/nullptr));
  } else {
    Copy(current, y);
  }
  state.batch_ = N;
  ++state.steps_;
  return absl::OkStatus();
}

FtRecurrentState::~FtRecurrentState() = default;

// Encoder.

FtTransformerEncoder::FtTransformerEncoder(std::unique_ptr<FtStack> stack)
    : stack_(std::move(stack)) {}
FtTransformerEncoder::~FtTransformerEncoder() = default;

absl::StatusOr<std::unique_ptr<FtTransformerEncoder>>
FtTransformerEncoder::Create(const FtTransformerConfig& config,
                             const AttentionRegistry& registry) {
  FTX_ASSIGN_OR_RETURN(std::unique_ptr<FtStack> stack,
                       FtStack::Create(config, registry, /*decoder=*/false,
                                       /*recurrent=*/false));
  return std::unique_ptr<FtTransformerEncoder>(
      new FtTransformerEncoder(std::move(stack)));
}

const FtTransformerConfig& FtTransformerEncoder::config() const {
  return stack_->config();
}
std::vector<ParamShape> FtTransformerEncoder::ParamShapes() const {
  return stack_->ParamShapes();
}
void FtTransformerEncoder::SetEventDispatcher(
    std::shared_ptr<FtEventDispatcher> dispatcher) {
  stack_->SetEventDispatcher(std::move(dispatcher));
}
const std::shared_ptr<FtEventDispatcher>&
FtTransformerEncoder::event_dispatcher() const {
  return stack_->event_dispatcher();
}
absl::Status FtTransformerEncoder::InitParams(const Context& ctx,
                                              ParamStore& store) const {
  return stack_->InitParams(ctx, store);
}

absl::Status FtTransformerEncoder::Forward(const Context& ctx,
                                           ParamStore& store,
                                           TensorView<const float> x,
                                           const FtEncoderInputs& inputs,
                                           TensorView<float> y,
                                           bool save_for_backward) {
  FtDecoderInputs stack_inputs;
  stack_inputs.x_mask = inputs.attn_mask;
  stack_inputs.x_lengths = inputs.lengths;
  stack_inputs.training = inputs.training;
  stack_inputs.seed = inputs.seed;
  return stack_->Forward(ctx, store, x, TensorView<const float>(), stack_inputs,
                         y, save_for_backward);
}

absl::Status FtTransformerEncoder::Backward(const Context& ctx,
                                            ParamStore& store,
                                            TensorView<const float> d_y,
                                            TensorView<float> d_x) {
  return stack_->Backward(ctx, store, d_y, d_x, TensorView<float>());
}

// Decoder.

FtTransformerDecoder::FtTransformerDecoder(std::unique_ptr<FtStack> stack)
    : stack_(std::move(stack)) {}
FtTransformerDecoder::~FtTransformerDecoder() = default;

absl::StatusOr<std::unique_ptr<FtTransformerDecoder>>
FtTransformerDecoder::Create(const FtTransformerConfig& config,
                             const AttentionRegistry& registry) {
  FTX_ASSIGN_OR_RETURN(std::unique_ptr<FtStack> stack,
                       FtStack::Create(config, registry, /*decoder=*/true,
                                       /*recurrent=*/false));
  return std::unique_ptr<FtTransformerDecoder>(
      new FtTransformerDecoder(std::move(stack)));
}

const FtTransformerConfig& FtTransformerDecoder::config() const {
  return stack_->config();
}
std::vector<ParamShape> FtTransformerDecoder::ParamShapes() const {
  return stack_->ParamShapes();
}
void FtTransformerDecoder::SetEventDispatcher(
    std::shared_ptr<FtEventDispatcher> dispatcher) {
  stack_->SetEventDispatcher(std::move(dispatcher));
}
const std::shared_ptr<FtEventDispatcher>&
FtTransformerDecoder::event_dispatcher() const {
  return stack_->event_dispatcher();
}
absl::Status FtTransformerDecoder::InitParams(const Context& ctx,
                                              ParamStore& store) const {
  return stack_->InitParams(ctx, store);
}

absl::Status FtTransformerDecoder::Forward(
    const Context& ctx, ParamStore& store, TensorView<const float> x,
    TensorView<const float> memory, const FtDecoderInputs& inputs,
    TensorView<float> y, bool save_for_backward) {
  return stack_->Forward(ctx, store, x, memory, inputs, y, save_for_backward);
}

absl::Status FtTransformerDecoder::Backward(const Context& ctx,
                                            ParamStore& store,
                                            TensorView<const float> d_y,
                                            TensorView<float> d_x,
                                            TensorView<float> d_memory) {
  return stack_->Backward(ctx, store, d_y, d_x, d_memory);
}

// Recurrent encoder.

FtRecurrentEncoder::FtRecurrentEncoder(std::unique_ptr<FtStack> stack)
    : stack_(std::move(stack)) {}
FtRecurrentEncoder::~FtRecurrentEncoder() = default;

absl::StatusOr<std::unique_ptr<FtRecurrentEncoder>> FtRecurrentEncoder::Create(
    const FtTransformerConfig& config, const AttentionRegistry& registry) {
  FTX_ASSIGN_OR_RETURN(std::unique_ptr<FtStack> stack,
                       FtStack::Create(config, registry, /*decoder=*/false,
                                       /*recurrent=*/true));
  return std::unique_ptr<FtRecurrentEncoder>(
      new FtRecurrentEncoder(std::move(stack)));
}

const FtTransformerConfig& FtRecurrentEncoder::config() const {
  return stack_->config();
}
std::vector<ParamShape> FtRecurrentEncoder::ParamShapes() const {
  return stack_->ParamShapes();
}
void FtRecurrentEncoder::SetEventDispatcher(
    std::shared_ptr<FtEventDispatcher> dispatcher) {
  stack_->SetEventDispatcher(std::move(dispatcher));
}
const std::shared_ptr<FtEventDispatcher>& FtRecurrentEncoder::event_dispatcher()
    const {
  return stack_->event_dispatcher();
}
absl::Status FtRecurrentEncoder::InitParams(const Context& ctx,
                                            ParamStore& store) const {
  return stack_->InitParams(ctx, store);
}
FtRecurrentState FtRecurrentEncoder::NewState() const {
  return stack_->NewState();
}

absl::Status FtRecurrentEncoder::Step(const Context& ctx, ParamStore& store,
                                      TensorView<const float> x,
                                      FtRecurrentState& state,
                                      TensorView<float> y) {
  return stack_->Step(ctx, store, x, TensorView<const float>(), LengthMask(),
                      state, y);
}

// Recurrent decoder.

FtRecurrentDecoder::FtRecurrentDecoder(std::unique_ptr<FtStack> stack)
    : stack_(std::move(stack)) {}
FtRecurrentDecoder::~FtRecurrentDecoder() = default;

absl::StatusOr<std::unique_ptr<FtRecurrentDecoder>> FtRecurrentDecoder::Create(
    const FtTransformerConfig& config, const AttentionRegistry& registry) {
  FTX_ASSIGN_OR_RETURN(std::unique_ptr<FtStack> stack,
                       FtStack::Create(config, registry, /*decoder=*/true,
                                       /*recurrent=*/true));
  return std::unique_ptr<FtRecurrentDecoder>(
      new FtRecurrentDecoder(std::move(stack)));
}

const FtTransformerConfig& FtRecurrentDecoder::config() const {
  return stack_->config();
}
std::vector<ParamShape> FtRecurrentDecoder::ParamShapes() const {
  return stack_->ParamShapes();
}
void FtRecurrentDecoder::SetEventDispatcher(
    std::shared_ptr<FtEventDispatcher> dispatcher) {
  stack_->SetEventDispatcher(std::move(dispatcher));
}
const std::shared_ptr<FtEventDispatcher>& FtRecurrentDecoder::event_dispatcher()
    const {
  return stack_->event_dispatcher();
}
absl::Status FtRecurrentDecoder::InitParams(const Context& ctx,
                                            ParamStore& store) const {
  return stack_->InitParams(ctx, store);
}
FtRecurrentState FtRecurrentDecoder::NewState() const {
  return stack_->NewState();
}

absl::Status FtRecurrentDecoder::Step(const Context& ctx, ParamStore& store,
                                      TensorView<const float> x,
                                      TensorView<const float> memory,
                                      const LengthMask& memory_lengths,
                                      FtRecurrentState& state,
                                      TensorView<float> y) {
  return stack_->Step(ctx, store, x, memory, memory_lengths, state, y);
}

}  // namespace ftx
