#include "models/performer.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "attention/favor.h"
#include "attention/local.h"
#include "attention/rotary.h"
#include "kernels/base/rng.h"
#include "kernels/base/status_macros.h"
#include "kernels/dropout/dropout.h"
#include "kernels/linear/linear.h"
#include "layers/absolute_positions.h"
#include "layers/axial_positions.h"
#include "layers/feed_forward.h"
#include "layers/reversible.h"
#include "layers/rezero.h"
#include "layers/scalenorm.h"
#include "layers/shift_tokens.h"
#include "layers/sinusoidal_positions.h"
#include "nlohmann/json.hpp"

namespace ftx {
namespace {

// Philox streams of the dropout masks (attention output: stream + branch).
constexpr uint64_t kAttentionOutputDropoutStream = 0x5045524641540000ull;
constexpr uint64_t kEmbeddingDropoutStream = 0x50455246454D4200ull;
// performer's ReZero gain at initialisation.
constexpr float kReZeroInitialGain = 1e-3f;
// The FAVOR projection buffer, relative to the attention module.
constexpr char kProjectionName[] = "fast_attention.projection_matrix";
// The redraw counter buffer [1], relative to the stack.
constexpr char kRedrawCounterName[] = "proj_updater.calls_since_last_redraw";

uint64_t SubSeed(uint64_t seed, uint64_t index) {
  return seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull * (index + 1);
}

absl::Status CheckCpu(const Context& ctx, absl::string_view op) {
  if (ctx.device().type != DeviceType::kCpu) {
    return absl::UnimplementedError(
        absl::StrCat(op, ": only the CPU path exists so far"));
  }
  return absl::OkStatus();
}

// dst = src for two rank-4 views of one shape (any strides, unit last axis).
void CopyView(TensorView<const float> src, TensorView<float> dst) {
  for (int64_t a = 0; a < src.dim(0); ++a) {
    for (int64_t b = 0; b < src.dim(1); ++b) {
      for (int64_t c = 0; c < src.dim(2); ++c) {
        std::copy_n(&src.at(a, b, c, 0), src.dim(3), &dst.at(a, b, c, 0));
      }
    }
  }
}

// dst += src over `count` contiguous floats.
void AddInto(float* dst, const float* src, int64_t count) {
  for (int64_t i = 0; i < count; ++i) dst[i] += src[i];
}

absl::Status EnsureLike(Tensor& tensor, const Shape& shape) {
  return EnsureTensor(tensor, shape, Device::Cpu());
}

TensorView<const float> ConstView(const Tensor& tensor) {
  return tensor.view<float>();
}

// torch.nn.Linear's initialisation: weight and bias U(-1/sqrt(fan_in),
// 1/sqrt(fan_in)).
absl::Status InitLinear(const Context& ctx, TensorView<float> weight,
                        TensorView<float> bias, uint64_t seed) {
  const float bound = 1.0f / std::sqrt(static_cast<float>(weight.dim(1)));
  FTX_RETURN_IF_ERROR(
      FillUniform(ctx, weight, -bound, bound, {.seed = seed, .stream = 0}));
  if (IsGiven(bias)) {
    FTX_RETURN_IF_ERROR(
        FillUniform(ctx, bias, -bound, bound, {.seed = seed, .stream = 1}));
  }
  return absl::OkStatus();
}

// The value and gradient views of one parameter, empty when it is absent.
struct ParamViews {
  TensorView<float> value;
  TensorView<float> grad;
};

absl::StatusOr<ParamViews> Lookup(ParamStore& store, const std::string& name,
                                  bool present = true) {
  if (!present) return ParamViews{};
  FTX_ASSIGN_OR_RETURN(TensorView<float> value, store.Value(name));
  FTX_ASSIGN_OR_RETURN(TensorView<float> grad, store.Grad(name));
  return ParamViews{value, grad};
}

// ----------------------------------------------------------------------------
// performer's Attention: projections, global FAVOR+ heads, local heads.

struct AttentionSetup {
  int64_t dim = 0;
  int64_t heads = 0;
  int64_t dim_head = 0;
  int64_t local_heads = 0;
  int64_t window = 0;
  bool causal = false;
  bool cross = false;
  bool qkv_bias = false;
  bool out_bias = false;
  float dropout = 0.0f;
  FavorAttentionOptions favor;
};

struct AttentionParams {
  ParamViews q_weight, q_bias, k_weight, k_bias, v_weight, v_bias;
  ParamViews out_weight, out_bias;
};

// The call arguments of one attention branch.
struct AttentionCall {
  TensorView<const float> x;             // [B, T, C]
  TensorView<const float> context;       // [B, S, C]; x for self-attention
  const LengthMask* mask = nullptr;      // local heads' input_mask
  const LengthMask* key_mask = nullptr;  // global heads' V mask
  bool rotary = false;
  bool training = false;
  uint64_t seed = 0;
  uint64_t dropout_stream = 0;
};

class PerformerAttention {
 public:
  static absl::StatusOr<std::unique_ptr<PerformerAttention>> Create(
      const AttentionSetup& setup) {
    FTX_ASSIGN_OR_RETURN(
        RotaryEmbedding global_rotary,
        RotaryEmbedding::Create({.rotary_dim = setup.dim_head,
                                 .layout = RotaryLayout::kInterleaved}));
    auto attention = std::unique_ptr<PerformerAttention>(
        new PerformerAttention(setup, std::move(global_rotary)));
    FTX_RETURN_IF_ERROR(attention->favor_.RedrawProjection(setup.dim_head));
    return attention;
  }

  FavorAttention& favor() { return favor_; }
  int64_t local_heads() const { return setup_.local_heads; }
  int64_t global_heads() const { return setup_.heads - setup_.local_heads; }

  std::vector<ParamShape> ParamShapes() const {
    const int64_t inner = setup_.heads * setup_.dim_head, C = setup_.dim;
    std::vector<ParamShape> shapes;
    for (const char* name : {"to_q", "to_k", "to_v"}) {
      shapes.push_back({absl::StrCat(name, ".weight"), {inner, C}});
      if (setup_.qkv_bias)
        shapes.push_back({absl::StrCat(name, ".bias"), {inner}});
    }
    shapes.push_back({"to_out.weight", {C, inner}});
    if (setup_.out_bias) shapes.push_back({"to_out.bias", {C}});
    shapes.push_back({kProjectionName, favor_.projection().shape(),
                      /*trainable=*/false});
    return shapes;
  }

  absl::StatusOr<AttentionParams> Params(ParamStore& store,
                                         const std::string& base) const {
    AttentionParams p;
    const bool qkv = setup_.qkv_bias;
    FTX_ASSIGN_OR_RETURN(p.q_weight, Lookup(store, base + "to_q.weight"));
    FTX_ASSIGN_OR_RETURN(p.q_bias, Lookup(store, base + "to_q.bias", qkv));
    FTX_ASSIGN_OR_RETURN(p.k_weight, Lookup(store, base + "to_k.weight"));
    FTX_ASSIGN_OR_RETURN(p.k_bias, Lookup(store, base + "to_k.bias", qkv));
    FTX_ASSIGN_OR_RETURN(p.v_weight, Lookup(store, base + "to_v.weight"));
    FTX_ASSIGN_OR_RETURN(p.v_bias, Lookup(store, base + "to_v.bias", qkv));
    FTX_ASSIGN_OR_RETURN(p.out_weight, Lookup(store, base + "to_out.weight"));
    FTX_ASSIGN_OR_RETURN(p.out_bias,
                         Lookup(store, base + "to_out.bias", setup_.out_bias));
    return p;
  }

  // out: [B, T, C].
  absl::Status Forward(const Context& ctx, const AttentionParams& p,
                       const AttentionCall& call, TensorView<float> out,
                       bool save) {
    const int64_t B = call.x.dim(0), T = call.x.dim(1);
    const int64_t S = call.context.dim(1);
    const int64_t H = setup_.heads, E = setup_.dim_head, gh = global_heads();
    FTX_RETURN_IF_ERROR(EnsureLike(q_, {B, T, H * E}));
    FTX_RETURN_IF_ERROR(EnsureLike(k_, {B, S, H * E}));
    FTX_RETURN_IF_ERROR(EnsureLike(v_, {B, S, H * E}));
    FTX_RETURN_IF_ERROR(EnsureLike(attended_, {B, T, H * E}));
    FTX_RETURN_IF_ERROR(LinearForward(ctx, call.x, p.q_weight.value,
                                      p.q_bias.value, q_.view<float>()));
    FTX_RETURN_IF_ERROR(LinearForward(ctx, call.context, p.k_weight.value,
                                      p.k_bias.value, k_.view<float>()));
    FTX_RETURN_IF_ERROR(LinearForward(ctx, call.context, p.v_weight.value,
                                      p.v_bias.value, v_.view<float>()));
    const TensorView<float> attended = Heads(attended_, B, T);
    if (gh > 0) {
      FTX_RETURN_IF_ERROR(PrepareGlobal(ctx, call, B, T, S));
      FTX_RETURN_IF_ERROR(favor_.Forward(ctx, GlobalInputs(call, B, S),
                                         attended.Slice(2, 0, gh),
                                         save ? &favor_cache_ : nullptr));
    }
    if (setup_.local_heads > 0) {
      FTX_RETURN_IF_ERROR(local_->Forward(ctx, LocalInputs(call, B, T),
                                          attended.Slice(2, gh, H),
                                          save ? &local_cache_ : nullptr));
    }
    FTX_RETURN_IF_ERROR(LinearForward(
        ctx, ConstView(attended_), p.out_weight.value, p.out_bias.value, out));
    if (DropoutActive(call)) {
      FTX_RETURN_IF_ERROR(Dropout(ctx, DropoutOf(call), out, out));
    }
    return absl::OkStatus();
  }

  // d_x: [B, T, C] (=); d_context: [B, S, C] (=), cross-attention only.
  absl::Status Backward(const Context& ctx, const AttentionParams& p,
                        const AttentionCall& call,
                        TensorView<const float> d_out, TensorView<float> d_x,
                        TensorView<float> d_context) {
    const int64_t B = call.x.dim(0), T = call.x.dim(1);
    const int64_t S = call.context.dim(1);
    const int64_t H = setup_.heads, E = setup_.dim_head, gh = global_heads();
    TensorView<const float> d_projected = d_out;
    if (DropoutActive(call)) {
      FTX_RETURN_IF_ERROR(EnsureLike(d_dropped_, d_out.shape()));
      FTX_RETURN_IF_ERROR(
          Dropout(ctx, DropoutOf(call), d_out, d_dropped_.view<float>()));
      d_projected = d_dropped_.view<float>();
    }
    FTX_RETURN_IF_ERROR(EnsureLike(d_attended_, {B, T, H * E}));
    FTX_RETURN_IF_ERROR(EnsureLike(d_q_, {B, T, H * E}));
    FTX_RETURN_IF_ERROR(EnsureLike(d_k_, {B, S, H * E}));
    FTX_RETURN_IF_ERROR(EnsureLike(d_v_, {B, S, H * E}));
    FTX_RETURN_IF_ERROR(LinearBackward(
        ctx, ConstView(attended_), p.out_weight.value, d_projected,
        d_attended_.view<float>(), p.out_weight.grad, p.out_bias.grad));
    const TensorView<const float> d_attended = Heads(d_attended_, B, T);
    const TensorView<float> d_q = Heads(d_q_, B, T), d_k = Heads(d_k_, B, S);
    const TensorView<float> d_v = Heads(d_v_, B, S);
    if (gh > 0) {
      FTX_RETURN_IF_ERROR(EnsureLike(d_global_q_, {B, T, gh, E}));
      FTX_RETURN_IF_ERROR(EnsureLike(d_global_k_, {B, S, gh, E}));
      FTX_RETURN_IF_ERROR(
          favor_.Backward(ctx, GlobalInputs(call, B, S), favor_cache_,
                          d_attended.Slice(2, 0, gh),
                          {.d_queries = d_global_q_.view<float>(),
                           .d_keys = d_global_k_.view<float>(),
                           .d_values = d_v.Slice(2, 0, gh)}));
      if (GlobalRotary(call)) {
        FTX_RETURN_IF_ERROR(
            global_rotary_.Backward(ctx, d_global_q_.view<float>(), 0));
        FTX_RETURN_IF_ERROR(
            global_rotary_.Backward(ctx, d_global_k_.view<float>(), 0));
      }
      CopyView(ConstView(d_global_q_), d_q.Slice(2, 0, gh));
      CopyView(ConstView(d_global_k_), d_k.Slice(2, 0, gh));
    }
    if (setup_.local_heads > 0) {
      FTX_RETURN_IF_ERROR(local_->Backward(ctx, LocalInputs(call, B, T),
                                           local_cache_,
                                           d_attended.Slice(2, gh, H),
                                           {.d_queries = d_q.Slice(2, gh, H),
                                            .d_keys = d_k.Slice(2, gh, H),
                                            .d_values = d_v.Slice(2, gh, H)}));
    }
    FTX_RETURN_IF_ERROR(LinearBackward(ctx, call.x, p.q_weight.value,
                                       ConstView(d_q_), d_x, p.q_weight.grad,
                                       p.q_bias.grad));
    const TensorView<float> d_source = setup_.cross ? d_context : d_x;
    FTX_RETURN_IF_ERROR(
        LinearBackward(ctx, call.context, p.k_weight.value, ConstView(d_k_),
                       d_source, p.k_weight.grad, p.k_bias.grad,
                       {.accumulate_input_grad = !setup_.cross}));
    return LinearBackward(ctx, call.context, p.v_weight.value, ConstView(d_v_),
                          d_source, p.v_weight.grad, p.v_bias.grad,
                          {.accumulate_input_grad = true});
  }

 private:
  PerformerAttention(const AttentionSetup& setup, RotaryEmbedding global_rotary)
      : setup_(setup),
        favor_(setup.favor),
        global_rotary_(std::move(global_rotary)) {
    if (setup.local_heads > 0) {
      local_.emplace(
          LocalWindowedAttentionOptions{.window_size = setup.window,
                                        .causal = setup.causal,
                                        .look_backward = 1,
                                        .look_forward = setup.causal ? 0 : 1,
                                        .autopad = true,
                                        .exact_windowsize = false,
                                        .rel_pos_emb = true,
                                        .attention_dropout = setup.dropout});
    }
  }

  // [B, T, H, E] view of a [B, T, H E] projection.
  TensorView<float> Heads(Tensor& projection, int64_t B, int64_t T) const {
    return projection.view<float>().Reshape(
        {B, T, setup_.heads, setup_.dim_head});
  }
  TensorView<const float> Heads(const Tensor& projection, int64_t B,
                                int64_t T) const {
    return projection.view<float>().Reshape(
        {B, T, setup_.heads, setup_.dim_head});
  }

  bool GlobalRotary(const AttentionCall& call) const {
    return call.rotary && !setup_.cross;
  }
  bool DropoutActive(const AttentionCall& call) const {
    return call.training && setup_.dropout > 0.0f;
  }
  DropoutOptions DropoutOf(const AttentionCall& call) const {
    return {
        .p = setup_.dropout, .seed = call.seed, .stream = call.dropout_stream};
  }

  // Global q and k heads copied out (and rotated).
  absl::Status PrepareGlobal(const Context& ctx, const AttentionCall& call,
                             int64_t B, int64_t T, int64_t S) {
    const int64_t gh = global_heads(), E = setup_.dim_head;
    FTX_RETURN_IF_ERROR(EnsureLike(global_q_, {B, T, gh, E}));
    FTX_RETURN_IF_ERROR(EnsureLike(global_k_, {B, S, gh, E}));
    CopyView(Heads(q_, B, T).Slice(2, 0, gh), global_q_.view<float>());
    CopyView(Heads(k_, B, S).Slice(2, 0, gh), global_k_.view<float>());
    if (GlobalRotary(call)) {
      FTX_RETURN_IF_ERROR(
          global_rotary_.Forward(ctx, global_q_.view<float>(), 0));
      FTX_RETURN_IF_ERROR(
          global_rotary_.Forward(ctx, global_k_.view<float>(), 0));
    }
    return absl::OkStatus();
  }

  AttentionInputs GlobalInputs(const AttentionCall& call, int64_t B,
                               int64_t S) const {
    AttentionInputs inputs;
    inputs.queries = global_q_.view<float>();
    inputs.keys = global_k_.view<float>();
    inputs.values = Heads(v_, B, S).Slice(2, 0, global_heads());
    inputs.attn_mask =
        setup_.favor.causal ? AttnMask::Causal() : AttnMask::All();
    inputs.key_lengths = *call.key_mask;
    return inputs;
  }

  AttentionInputs LocalInputs(const AttentionCall& call, int64_t B,
                              int64_t T) const {
    AttentionInputs inputs;
    const int64_t gh = global_heads(), H = setup_.heads;
    inputs.queries = Heads(q_, B, T).Slice(2, gh, H);
    inputs.keys = Heads(k_, B, T).Slice(2, gh, H);
    inputs.values = Heads(v_, B, T).Slice(2, gh, H);
    inputs.key_lengths = *call.mask;
    inputs.training = call.training;
    inputs.seed = SubSeed(call.seed, call.dropout_stream);
    return inputs;
  }

  AttentionSetup setup_;
  FavorAttention favor_;
  std::optional<LocalWindowedAttention> local_;
  RotaryEmbedding global_rotary_;
  // Forward: projections [B, T|S, H E], global head copies [B, T|S, h, E]
  // (rotated), attended heads [B, T, H E].
  Tensor q_, k_, v_, global_q_, global_k_, attended_;
  AttentionCache favor_cache_, local_cache_;
  // Backward scratch.
  Tensor d_dropped_, d_attended_, d_q_, d_k_, d_v_;
  Tensor d_global_q_, d_global_k_;
};

enum class BranchKind { kSelfAttention, kCrossAttention, kFeedForward };
enum class Wrapper { kLayerNorm, kScaleNorm, kReZero };

Wrapper WrapperOf(const PerformerConfig& config) {
  if (config.use_scalenorm) return Wrapper::kScaleNorm;
  if (config.use_rezero) return Wrapper::kReZero;
  return Wrapper::kLayerNorm;
}

FavorAttentionOptions FavorOptionsOf(const PerformerConfig& config, bool causal,
                                     uint64_t seed) {
  FavorAttentionOptions options;
  options.nb_features = config.nb_features;
  options.causal = causal;
  options.generalized_attention = config.generalized_attention;
  options.kernel_fn = config.kernel_fn;
  options.no_projection = config.no_projection;
  // The stack counts forwards and redraws every module at once.
  options.feature_redraw_interval = 0;
  options.seed = seed;
  return options;
}

}  // namespace

// ----------------------------------------------------------------------------
// The stack.

struct Performer::Call {
  ParamStore* store = nullptr;
  std::string prefix;
  const PerformerInputs* inputs = nullptr;
  Tensor d_context;  // [B, S, C] accumulated over cross-attention branches
};

// One wrapped branch: wrapper(shift(inner)) as a Block over [B, T, C].
class Performer::Branch final : public Block {
 public:
  Branch(BranchKind kind, Wrapper wrapper, bool shift, std::string base,
         int64_t index, const PerformerConfig& config)
      : kind_(kind),
        wrapper_(wrapper),
        base_(std::move(base)),
        index_(index),
        dim_(config.dim),
        scale_norm_(
            {.dim = config.dim, .variant = ScaleNormVariant::kPerformer}),
        rezero_({.initial_gain = kReZeroInitialGain}) {
    if (shift) {
      shift_.emplace(
          ShiftTokens::Create({PerformerShifts(config.causal)}).value());
    }
  }

  absl::Status Build(const PerformerConfig& config, int64_t local_heads) {
    if (wrapper_ == Wrapper::kLayerNorm) {
      FTX_ASSIGN_OR_RETURN(LayerNormLayer norm,
                           LayerNormLayer::Create({.dim = config.dim}));
      norm_.emplace(std::move(norm));
    }
    if (kind_ == BranchKind::kFeedForward) {
      FTX_ASSIGN_OR_RETURN(
          FeedForward ff,
          FeedForward::Create({.dim = config.dim,
                               .mult = static_cast<double>(config.ff_mult),
                               .activation = Activation::kGelu,
                               .glu = config.ff_glu,
                               .glu_activated_half = GluActivatedHalf::kFirst,
                               .dropout = config.ff_dropout,
                               .chunks = config.ff_chunks}));
      ff_.emplace(std::move(ff));
      return absl::OkStatus();
    }
    const bool cross = kind_ == BranchKind::kCrossAttention;
    // performer's CrossAttention keeps Attention's default causal = False.
    const bool causal = config.causal && !cross;
    AttentionSetup setup;
    setup.dim = config.dim;
    setup.heads = config.heads;
    setup.dim_head = config.dim_head;
    setup.local_heads = cross ? 0 : local_heads;
    setup.window = config.local_window_size;
    setup.causal = causal;
    setup.cross = cross;
    setup.qkv_bias = config.qkv_bias;
    setup.out_bias = config.attn_out_bias;
    setup.dropout = config.attn_dropout;
    setup.favor = FavorOptionsOf(config, causal, SubSeed(config.seed, index_));
    FTX_ASSIGN_OR_RETURN(attention_, PerformerAttention::Create(setup));
    return absl::OkStatus();
  }

  bool is_attention() const { return attention_ != nullptr; }
  PerformerAttention& attention() { return *attention_; }
  void set_call(Call* call) { call_ = call; }

  // Names of the inner module's parameters start here.
  std::string InnerBase() const {
    std::string inner = base_ + "fn.";
    if (shift_) inner += "fn.";
    if (ff_) inner += "fn.";  // Chunk
    return inner;
  }
  std::string ProjectionName() const { return InnerBase() + kProjectionName; }
  // The local heads' rotary table, or empty.
  std::string LocalRotaryName() const {
    if (!attention_ || attention_->local_heads() == 0) return "";
    return InnerBase() + "local_attn.rel_pos.inv_freq";
  }

  std::vector<ParamShape> ParamShapes() const {
    std::vector<ParamShape> shapes;
    if (wrapper_ == Wrapper::kLayerNorm) {
      shapes.push_back({base_ + "norm.weight", {dim_}});
      shapes.push_back({base_ + "norm.bias", {dim_}});
    } else {
      shapes.push_back({base_ + "g", {1}});
    }
    const std::string inner = InnerBase();
    if (ff_) {
      const int64_t hidden = ff_->inner_dim();
      const int64_t in_rows = ff_->config().glu ? 2 * hidden : hidden;
      shapes.push_back({inner + "w1.weight", {in_rows, dim_}});
      shapes.push_back({inner + "w1.bias", {in_rows}});
      shapes.push_back({inner + "w2.weight", {dim_, hidden}});
      shapes.push_back({inner + "w2.bias", {dim_}});
    } else {
      for (ParamShape& shape : attention_->ParamShapes()) {
        shapes.push_back({inner + shape.name, shape.shape, shape.trainable});
      }
    }
    return shapes;
  }

  absl::Status InitParams(const Context& ctx, ParamStore& store,
                          const std::string& prefix, uint64_t seed) const {
    const std::string base = prefix + base_;
    if (wrapper_ == Wrapper::kLayerNorm) {
      FTX_ASSIGN_OR_RETURN(TensorView<float> weight,
                           store.Value(base + "norm.weight"));
      FTX_ASSIGN_OR_RETURN(TensorView<float> bias,
                           store.Value(base + "norm.bias"));
      FTX_RETURN_IF_ERROR(norm_->InitParams(weight, bias));
    } else {
      FTX_ASSIGN_OR_RETURN(TensorView<float> g, store.Value(base + "g"));
      if (wrapper_ == Wrapper::kScaleNorm) {
        scale_norm_.InitParams(g);
      } else {
        rezero_.InitParams(g);
      }
    }
    const std::string inner = prefix + InnerBase();
    if (ff_) {
      FeedForwardTensors<float> views;
      FTX_ASSIGN_OR_RETURN(views.in_weight, store.Value(inner + "w1.weight"));
      FTX_ASSIGN_OR_RETURN(views.in_bias, store.Value(inner + "w1.bias"));
      FTX_ASSIGN_OR_RETURN(views.out_weight, store.Value(inner + "w2.weight"));
      FTX_ASSIGN_OR_RETURN(views.out_bias, store.Value(inner + "w2.bias"));
      return ff_->InitParams(ctx, seed, views);
    }
    uint64_t index = 0;
    for (const char* name : {"to_q", "to_k", "to_v", "to_out"}) {
      FTX_ASSIGN_OR_RETURN(TensorView<float> weight,
                           store.Value(absl::StrCat(inner, name, ".weight")));
      TensorView<float> bias;
      const std::string bias_name = absl::StrCat(inner, name, ".bias");
      if (store.Contains(bias_name)) {
        FTX_ASSIGN_OR_RETURN(bias, store.Value(bias_name));
      }
      FTX_RETURN_IF_ERROR(
          InitLinear(ctx, weight, bias, SubSeed(seed, index++)));
    }
    // The projection drawn at construction from the seed.
    FTX_ASSIGN_OR_RETURN(TensorView<float> projection,
                         store.Value(inner + kProjectionName));
    const Tensor& drawn = attention_->favor().projection();
    std::copy_n(drawn.data<float>(), drawn.NumElements(), projection.data());
    return absl::OkStatus();
  }

  absl::Status Forward(const Context& ctx, TensorView<const float> x,
                       TensorView<float> y, BlockCache* cache) override {
    const bool save = cache != nullptr;
    TensorView<const float> in = x;
    FTX_RETURN_IF_ERROR(WrapperForward(ctx, x, in));
    if (shift_) {
      FTX_RETURN_IF_ERROR(EnsureLike(shifted_, x.shape()));
      FTX_RETURN_IF_ERROR(
          shift_->Forward(ctx, in, ShiftMask(), shifted_.view<float>()));
      in = shifted_.view<float>();
    }
    TensorView<float> inner_out = y;
    if (wrapper_ == Wrapper::kReZero) {
      FTX_RETURN_IF_ERROR(EnsureLike(inner_out_, y.shape()));
      inner_out = inner_out_.view<float>();
    }
    FTX_RETURN_IF_ERROR(InnerForward(ctx, in, inner_out, save));
    if (wrapper_ == Wrapper::kReZero) {
      FTX_ASSIGN_OR_RETURN(ParamViews g, Param("g"));
      FTX_RETURN_IF_ERROR(
          rezero_.Forward(ctx, g.value, ConstView(inner_out_), y));
    }
    return absl::OkStatus();
  }

  absl::Status Backward(const Context& ctx, TensorView<const float> x,
                        const BlockCache& cache, TensorView<const float> d_y,
                        TensorView<float> d_x) override {
    TensorView<const float> in = x;
    if (wrapper_ != Wrapper::kReZero) in = ConstView(normed_);
    if (shift_) in = ConstView(shifted_);
    TensorView<const float> d_inner = d_y;
    if (wrapper_ == Wrapper::kReZero) {
      FTX_ASSIGN_OR_RETURN(ParamViews g, Param("g"));
      FTX_RETURN_IF_ERROR(EnsureLike(d_scaled_, d_y.shape()));
      FTX_RETURN_IF_ERROR(rezero_.Backward(ctx, g.value, ConstView(inner_out_),
                                           d_y, d_scaled_.view<float>(),
                                           g.grad));
      d_inner = ConstView(d_scaled_);
    }
    const bool normed = wrapper_ != Wrapper::kReZero;
    // Gradient of the inner input, then of the shift input.
    FTX_RETURN_IF_ERROR(EnsureLike(d_in_, x.shape()));
    FTX_RETURN_IF_ERROR(EnsureLike(d_shift_in_, x.shape()));
    TensorView<float> d_inner_in =
        (shift_ || normed) ? d_in_.view<float>() : d_x;
    FTX_RETURN_IF_ERROR(InnerBackward(ctx, in, d_inner, d_inner_in));
    TensorView<const float> d_wrapped = d_inner_in;
    if (shift_) {
      TensorView<float> d_shift_in = normed ? d_shift_in_.view<float>() : d_x;
      FTX_RETURN_IF_ERROR(
          shift_->Backward(ctx, ShiftMask(), d_inner_in, d_shift_in));
      d_wrapped = d_shift_in;
    }
    if (wrapper_ == Wrapper::kLayerNorm) {
      FTX_ASSIGN_OR_RETURN(ParamViews weight, Param("norm.weight"));
      FTX_ASSIGN_OR_RETURN(ParamViews bias, Param("norm.bias"));
      return norm_->Backward(ctx, weight.value, norm_cache_, x, d_wrapped, d_x,
                             weight.grad, bias.grad);
    }
    if (wrapper_ == Wrapper::kScaleNorm) {
      FTX_ASSIGN_OR_RETURN(ParamViews g, Param("g"));
      return scale_norm_.Backward(ctx, g.value, x, d_wrapped, d_x, g.grad);
    }
    return absl::OkStatus();
  }

 private:
  absl::StatusOr<ParamViews> Param(const std::string& name) const {
    return Lookup(*call_->store, call_->prefix + base_ + name);
  }

  // The mask reaches PreShiftTokens of the self-attention branch only.
  const LengthMask& ShiftMask() const {
    return kind_ == BranchKind::kSelfAttention ? call_->inputs->mask : no_mask_;
  }

  absl::Status WrapperForward(const Context& ctx, TensorView<const float> x,
                              TensorView<const float>& in) {
    if (wrapper_ == Wrapper::kReZero) return absl::OkStatus();
    FTX_RETURN_IF_ERROR(EnsureLike(normed_, x.shape()));
    if (wrapper_ == Wrapper::kLayerNorm) {
      FTX_ASSIGN_OR_RETURN(ParamViews weight, Param("norm.weight"));
      FTX_ASSIGN_OR_RETURN(ParamViews bias, Param("norm.bias"));
      FTX_RETURN_IF_ERROR(norm_->Forward(ctx, weight.value, bias.value, x,
                                         normed_.view<float>(), &norm_cache_));
    } else {
      FTX_ASSIGN_OR_RETURN(ParamViews g, Param("g"));
      FTX_RETURN_IF_ERROR(
          scale_norm_.Forward(ctx, g.value, x, normed_.view<float>()));
    }
    in = ConstView(normed_);
    return absl::OkStatus();
  }

  AttentionCall MakeCall(TensorView<const float> in) const {
    const PerformerInputs& inputs = *call_->inputs;
    AttentionCall call;
    call.x = in;
    const bool cross = kind_ == BranchKind::kCrossAttention;
    call.context = cross ? inputs.context : in;
    call.mask = &inputs.mask;
    call.key_mask = cross ? &inputs.context_mask : &inputs.mask;
    call.rotary = inputs.layer_rotary;
    call.training = inputs.training;
    call.seed = inputs.seed;
    call.dropout_stream = kAttentionOutputDropoutStream + index_;
    return call;
  }

  FeedForwardMode FeedForwardModeOf() const {
    return {.training = call_->inputs->training,
            .seed = SubSeed(call_->inputs->seed, index_)};
  }

  absl::StatusOr<FeedForwardParams> FeedForwardViews(
      FeedForwardGrads* grads) const {
    const std::string inner = call_->prefix + InnerBase();
    FeedForwardParams params;
    std::pair<const char*,
              std::pair<TensorView<const float>*, TensorView<float>*>>
        entries[] = {
            {"w1.weight",
             {&params.in_weight, grads ? &grads->in_weight : nullptr}},
            {"w1.bias", {&params.in_bias, grads ? &grads->in_bias : nullptr}},
            {"w2.weight",
             {&params.out_weight, grads ? &grads->out_weight : nullptr}},
            {"w2.bias",
             {&params.out_bias, grads ? &grads->out_bias : nullptr}}};
    for (auto& [name, targets] : entries) {
      FTX_ASSIGN_OR_RETURN(ParamViews views,
                           Lookup(*call_->store, inner + name));
      *targets.first = views.value;
      if (targets.second != nullptr) *targets.second = views.grad;
    }
    return params;
  }

  absl::Status InnerForward(const Context& ctx, TensorView<const float> in,
                            TensorView<float> out, bool save) {
    if (ff_) {
      FTX_ASSIGN_OR_RETURN(const FeedForwardParams params,
                           FeedForwardViews(nullptr));
      return ff_->Forward(ctx, params, in, FeedForwardModeOf(), out,
                          save ? &ff_cache_ : nullptr);
    }
    FTX_ASSIGN_OR_RETURN(
        const AttentionParams params,
        attention_->Params(*call_->store, call_->prefix + InnerBase()));
    return attention_->Forward(ctx, params, MakeCall(in), out, save);
  }

  absl::Status InnerBackward(const Context& ctx, TensorView<const float> in,
                             TensorView<const float> d_out,
                             TensorView<float> d_in) {
    if (ff_) {
      FeedForwardGrads grads;
      FTX_ASSIGN_OR_RETURN(const FeedForwardParams params,
                           FeedForwardViews(&grads));
      return ff_->Backward(ctx, params, ff_cache_, in, d_out, d_in, grads);
    }
    FTX_ASSIGN_OR_RETURN(
        const AttentionParams params,
        attention_->Params(*call_->store, call_->prefix + InnerBase()));
    const AttentionCall call = MakeCall(in);
    if (kind_ != BranchKind::kCrossAttention) {
      return attention_->Backward(ctx, params, call, d_out, d_in, {});
    }
    FTX_RETURN_IF_ERROR(EnsureLike(d_context_, call.context.shape()));
    FTX_RETURN_IF_ERROR(attention_->Backward(ctx, params, call, d_out, d_in,
                                             d_context_.view<float>()));
    AddInto(call_->d_context.data<float>(), d_context_.data<float>(),
            d_context_.NumElements());
    return absl::OkStatus();
  }

  BranchKind kind_;
  Wrapper wrapper_;
  std::string base_;
  int64_t index_;
  int64_t dim_;
  std::optional<LayerNormLayer> norm_;
  ScaleNorm scale_norm_;
  ReZero rezero_;
  std::optional<ShiftTokens> shift_;
  std::optional<FeedForward> ff_;
  std::unique_ptr<PerformerAttention> attention_;
  Call* call_ = nullptr;
  LengthMask no_mask_;
  // Forward state.
  Tensor normed_, shifted_, inner_out_;
  LayerNormCache norm_cache_;
  FeedForwardCache ff_cache_;
  // Backward scratch.
  Tensor d_scaled_, d_in_, d_shift_in_, d_context_;
};

absl::Status ValidatePerformerConfig(const PerformerConfig& c) {
  auto bad = [](absl::string_view field, absl::string_view expected,
                auto value) {
    return absl::InvalidArgumentError(absl::StrCat(
        "PerformerConfig.", field, " must be ", expected, ", got ", value));
  };
  if (c.dim < 1) return bad("dim", ">= 1", c.dim);
  if (c.depth < 1) return bad("depth", ">= 1", c.depth);
  if (c.heads < 1) return bad("heads", ">= 1", c.heads);
  if (c.dim % c.heads != 0) {
    return bad("dim", absl::StrCat("divisible by heads = ", c.heads), c.dim);
  }
  if (c.dim_head < 1) return bad("dim_head", ">= 1", c.dim_head);
  const size_t entries = c.local_attn_heads.size();
  if (entries != 1 && entries != static_cast<size_t>(c.depth)) {
    return bad("local_attn_heads",
               absl::StrCat("1 or depth = ", c.depth, " entries"), entries);
  }
  bool any_local = false;
  for (int64_t local : c.local_attn_heads) {
    if (local < 0 || local > c.heads) {
      return bad("local_attn_heads",
                 absl::StrCat("entries in [0, heads = ", c.heads, "]"), local);
    }
    any_local |= local > 0;
  }
  if (any_local && c.dim_head % 2 != 0) {
    return bad("dim_head", "even with local heads (their rotary)", c.dim_head);
  }
  if (c.local_window_size < 1) {
    return bad("local_window_size", ">= 1", c.local_window_size);
  }
  if (c.ff_mult < 1) return bad("ff_mult", ">= 1", c.ff_mult);
  if (c.nb_features.has_value() && *c.nb_features < 1) {
    return bad("nb_features", ">= 1", *c.nb_features);
  }
  if (c.feature_redraw_interval < 0) {
    return bad("feature_redraw_interval", ">= 0", c.feature_redraw_interval);
  }
  if (c.ff_chunks < 1) return bad("ff_chunks", ">= 1", c.ff_chunks);
  if (!(c.ff_dropout >= 0.0f && c.ff_dropout < 1.0f)) {
    return bad("ff_dropout", "in [0, 1)", c.ff_dropout);
  }
  if (!(c.attn_dropout >= 0.0f && c.attn_dropout < 1.0f)) {
    return bad("attn_dropout", "in [0, 1)", c.attn_dropout);
  }
  if (c.use_scalenorm && c.use_rezero) {
    return absl::InvalidArgumentError(
        "PerformerConfig: use_scalenorm and use_rezero exclude each other "
        "(performer picks ScaleNorm)");
  }
  return absl::OkStatus();
}

Performer::Performer(const PerformerConfig& config)
    : config_(config), call_(std::make_unique<Call>()) {}

Performer::~Performer() = default;

int64_t Performer::num_layers() const {
  return config_.depth * (config_.cross_attend ? 2 : 1);
}

int64_t Performer::LocalHeads(int64_t layer) const {
  return config_.local_attn_heads.size() == 1 ? config_.local_attn_heads[0]
                                              : config_.local_attn_heads[layer];
}

absl::StatusOr<std::unique_ptr<Performer>> Performer::Create(
    const PerformerConfig& config) {
  FTX_RETURN_IF_ERROR(ValidatePerformerConfig(config));
  auto performer = std::unique_ptr<Performer>(new Performer(config));
  FTX_RETURN_IF_ERROR(performer->Build());
  return performer;
}

absl::Status Performer::Build() {
  const Wrapper wrapper = WrapperOf(config_);
  for (int64_t layer = 0; layer < num_layers(); ++layer) {
    const bool cross_layer = config_.cross_attend && layer % 2 == 1;
    const int64_t depth_index = config_.cross_attend ? layer / 2 : layer;
    for (int branch = 0; branch < 2; ++branch) {
      const std::string base =
          config_.reversible
              ? absl::StrCat("net.blocks.", layer, ".", branch == 0 ? "f" : "g",
                             ".net.")
              : absl::StrCat("net.layers.", layer, ".", branch, ".");
      BranchKind kind = BranchKind::kFeedForward;
      if (branch == 0) {
        kind = cross_layer ? BranchKind::kCrossAttention
                           : BranchKind::kSelfAttention;
      }
      auto block = std::make_unique<Branch>(
          kind, wrapper, config_.shift_tokens && !cross_layer, base,
          static_cast<int64_t>(branches_.size()), config_);
      FTX_RETURN_IF_ERROR(block->Build(config_, LocalHeads(depth_index)));
      block->set_call(call_.get());
      branches_.push_back(std::move(block));
    }
  }
  if (config_.reversible) {
    std::vector<ReversiblePair> pairs;
    for (size_t i = 0; i < branches_.size(); i += 2) {
      pairs.push_back({branches_[i].get(), branches_[i + 1].get()});
    }
    FTX_ASSIGN_OR_RETURN(
        reversible_,
        ReversibleSequence::Create({.merge = ReversibleMerge::kSum,
                                    .memory = ReversibleMemory::kReconstruct},
                                   std::move(pairs)));
  }
  return absl::OkStatus();
}

std::vector<ParamShape> Performer::ParamShapes() const {
  std::vector<ParamShape> shapes;
  for (const auto& branch : branches_) {
    for (ParamShape& shape : branch->ParamShapes()) {
      shapes.push_back(std::move(shape));
    }
  }
  shapes.push_back({kRedrawCounterName, {1}, /*trainable=*/false});
  return shapes;
}

absl::Status Performer::InitParams(const Context& ctx, ParamStore& store,
                                   absl::string_view prefix) const {
  FTX_RETURN_IF_ERROR(CheckCpu(ctx, "Performer::InitParams"));
  for (size_t i = 0; i < branches_.size(); ++i) {
    FTX_RETURN_IF_ERROR(branches_[i]->InitParams(
        ctx, store, std::string(prefix), SubSeed(config_.seed, 1000 + i)));
  }
  FTX_ASSIGN_OR_RETURN(TensorView<float> counter,
                       store.Value(absl::StrCat(prefix, kRedrawCounterName)));
  counter.data()[0] = 0.0f;
  return absl::OkStatus();
}

std::vector<std::string> Performer::ProjectionNames() const {
  std::vector<std::string> names;
  for (const auto& branch : branches_) {
    if (branch->is_attention()) names.push_back(branch->ProjectionName());
  }
  return names;
}

std::vector<std::string> Performer::LocalRotaryNames() const {
  std::vector<std::string> names;
  for (const auto& branch : branches_) {
    std::string name = branch->LocalRotaryName();
    if (!name.empty()) names.push_back(std::move(name));
  }
  return names;
}

absl::Status Performer::Forward(const Context& ctx, ParamStore& store,
                                absl::string_view prefix,
                                TensorView<const float> x,
                                const PerformerInputs& inputs,
                                TensorView<float> y, bool save_for_backward) {
  constexpr char kOp[] = "Performer::Forward";
  saved_ = false;
  FTX_RETURN_IF_ERROR(CheckCpu(ctx, kOp));
  if (x.rank() != 3 || x.dim(2) != config_.dim || !x.IsContiguous() ||
      x.dim(0) < 1 || x.dim(1) < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": x must be a contiguous [B, T, ", config_.dim,
                     "], got ", x.shape().ToString()));
  }
  if (y.shape() != x.shape() || !y.IsContiguous()) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": y must be a contiguous ", x.shape().ToString(),
                     ", got ", y.shape().ToString()));
  }
  const int64_t B = x.dim(0), T = x.dim(1), C = config_.dim;
  FTX_RETURN_IF_ERROR(inputs.mask.Validate(kOp, "mask", B, T));
  if (config_.cross_attend) {
    const TensorView<const float>& context = inputs.context;
    if (context.rank() != 3 || context.dim(0) != B || context.dim(2) != C ||
        context.dim(1) < 1 || !context.IsContiguous()) {
      return absl::InvalidArgumentError(
          absl::StrCat(kOp, ": cross_attend needs a contiguous context [", B,
                       ", S, ", C, "], got ", context.shape().ToString()));
    }
    FTX_RETURN_IF_ERROR(
        inputs.context_mask.Validate(kOp, "context_mask", B, context.dim(1)));
  } else if (IsGiven(inputs.context)) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": context given to a stack without cross_attend"));
  }
  if (inputs.layer_rotary && config_.dim_head % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": layer rotary needs an even dim_head, got ", config_.dim_head));
  }
  // performer's ProjectionUpdater.redraw_projections.
  bool redraw = false;
  if (inputs.training && config_.auto_check_redraw) {
    FTX_ASSIGN_OR_RETURN(TensorView<float> counter,
                         store.Value(absl::StrCat(prefix, kRedrawCounterName)));
    float& calls_since_last_redraw = counter.data()[0];
    if (config_.feature_redraw_interval > 0 &&
        calls_since_last_redraw >= config_.feature_redraw_interval) {
      redraw = true;
      calls_since_last_redraw = 0.0f;
    } else {
      calls_since_last_redraw += 1.0f;
    }
  }
  // The projections live in the store (buffers): a redraw writes them there,
  // otherwise the modules take the store's values.
  for (auto& branch : branches_) {
    if (!branch->is_attention()) continue;
    FavorAttention& favor = branch->attention().favor();
    FTX_ASSIGN_OR_RETURN(
        TensorView<float> stored,
        store.Value(absl::StrCat(prefix, branch->ProjectionName())));
    if (redraw) {
      FTX_RETURN_IF_ERROR(favor.RedrawProjection(config_.dim_head));
      std::copy_n(favor.projection().data<float>(), stored.NumElements(),
                  stored.data());
    } else {
      FTX_RETURN_IF_ERROR(favor.SetProjection(stored));
    }
  }
  call_->store = &store;
  call_->prefix = std::string(prefix);
  call_->inputs = &inputs;
  const Shape shape = x.shape();
  if (config_.reversible) {
    activations_.resize(1);
    FTX_RETURN_IF_ERROR(EnsureLike(activations_[0], shape));
    std::copy_n(x.data(), x.NumElements(), activations_[0].data<float>());
    FTX_RETURN_IF_ERROR(reversible_->Forward(
        ctx, x, y, save_for_backward ? &reversible_cache_ : nullptr));
  } else {
    const size_t count = branches_.size();
    activations_.resize(count + 1);
    for (Tensor& tensor : activations_) {
      FTX_RETURN_IF_ERROR(EnsureLike(tensor, shape));
    }
    FTX_RETURN_IF_ERROR(EnsureLike(d_branch_, shape));
    std::copy_n(x.data(), x.NumElements(), activations_[0].data<float>());
    BlockCache marker;
    for (size_t i = 0; i < count; ++i) {
      float* branch_out = d_branch_.data<float>();
      FTX_RETURN_IF_ERROR(branches_[i]->Forward(
          ctx, ConstView(activations_[i]), d_branch_.view<float>(),
          save_for_backward ? &marker : nullptr));
      const float* in = activations_[i].data<float>();
      float* out = activations_[i + 1].data<float>();
      for (int64_t e = 0; e < x.NumElements(); ++e)
        out[e] = in[e] + branch_out[e];
    }
    std::copy_n(activations_[count].data<float>(), x.NumElements(), y.data());
  }
  call_->inputs = nullptr;
  last_inputs_ = inputs;
  saved_ = save_for_backward;
  return absl::OkStatus();
}

absl::Status Performer::Backward(const Context& ctx, ParamStore& store,
                                 absl::string_view prefix,
                                 TensorView<const float> d_y,
                                 TensorView<float> d_x,
                                 TensorView<float> d_context) {
  constexpr char kOp[] = "Performer::Backward";
  FTX_RETURN_IF_ERROR(CheckCpu(ctx, kOp));
  if (!saved_) {
    return absl::FailedPreconditionError(
        absl::StrCat(kOp, ": needs a Forward with save_for_backward first"));
  }
  const Shape& shape = activations_[0].shape();
  if (d_y.shape() != shape || d_x.shape() != shape || !d_y.IsContiguous() ||
      !d_x.IsContiguous()) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": d_y and d_x must be contiguous ", shape.ToString(), ", got ",
        d_y.shape().ToString(), " and ", d_x.shape().ToString()));
  }
  if (IsGiven(d_context) &&
      (!config_.cross_attend ||
       d_context.shape() != last_inputs_.context.shape() ||
       !d_context.IsContiguous())) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": d_context must be a contiguous ",
        last_inputs_.context.shape().ToString(),
        " for a cross_attend stack, got ", d_context.shape().ToString()));
  }
  call_->store = &store;
  call_->prefix = std::string(prefix);
  call_->inputs = &last_inputs_;
  if (config_.cross_attend) {
    FTX_RETURN_IF_ERROR(
        EnsureLike(call_->d_context, last_inputs_.context.shape()));
    std::fill_n(call_->d_context.data<float>(), call_->d_context.NumElements(),
                0.0f);
  }
  const int64_t n = shape.NumElements();
  if (config_.reversible) {
    FTX_RETURN_IF_ERROR(reversible_->Backward(ctx, ConstView(activations_[0]),
                                              reversible_cache_, d_y, d_x));
  } else {
    FTX_RETURN_IF_ERROR(EnsureLike(d_current_, shape));
    std::copy_n(d_y.data(), n, d_current_.data<float>());
    const BlockCache marker;
    for (size_t i = branches_.size(); i-- > 0;) {
      FTX_RETURN_IF_ERROR(branches_[i]->Backward(
          ctx, ConstView(activations_[i]), marker, ConstView(d_current_),
          d_branch_.view<float>()));
      AddInto(d_current_.data<float>(), d_branch_.data<float>(), n);
    }
    std::copy_n(d_current_.data<float>(), n, d_x.data());
  }
  if (IsGiven(d_context)) {
    std::copy_n(call_->d_context.data<float>(), d_context.NumElements(),
                d_context.data());
  }
  call_->inputs = nullptr;
  saved_ = false;
  return absl::OkStatus();
}

// ----------------------------------------------------------------------------
// PerformerLM.

PerformerConfig PerformerLMConfig::LanguageModelStackDefaults() {
  PerformerConfig config;
  config.qkv_bias = false;
  config.attn_out_bias = false;
  return config;
}

absl::Status ValidatePerformerLMConfig(const PerformerLMConfig& config) {
  FTX_RETURN_IF_ERROR(ValidatePerformerConfig(config.performer));
  if (config.num_tokens < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "PerformerLMConfig.num_tokens must be >= 1, got ", config.num_tokens));
  }
  if (config.max_seq_len < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("PerformerLMConfig.max_seq_len must be >= 1, got ",
                     config.max_seq_len));
  }
  if (!(config.emb_dropout >= 0.0f && config.emb_dropout < 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("PerformerLMConfig.emb_dropout must be in [0, 1), got ",
                     config.emb_dropout));
  }
  if (config.rotary_position_emb &&
      (config.performer.dim % 2 != 0 || config.performer.dim_head % 2 != 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "PerformerLMConfig.rotary_position_emb needs an even dim and dim_head, "
        "got ",
        config.performer.dim, " and ", config.performer.dim_head));
  }
  const auto& shape = config.axial_position_shape;
  const bool default_shape = shape[0] == 0 && shape[1] == 0;
  if (!config.rotary_position_emb && config.axial_position_emb &&
      !default_shape &&
      (shape[0] < 1 || shape[1] < 1 ||
       shape[0] * shape[1] < config.max_seq_len)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "PerformerLMConfig.axial_position_shape must be two positive sizes "
        "whose product is >= max_seq_len = ",
        config.max_seq_len, ", got (", shape[0], ", ", shape[1], ")"));
  }
  return absl::OkStatus();
}

PerformerLM::PerformerLM(const PerformerLMConfig& config,
                         absl::string_view prefix,
                         std::unique_ptr<Performer> performer)
    : config_(config), prefix_(prefix), performer_(std::move(performer)) {}

PerformerLM::~PerformerLM() = default;

absl::StatusOr<std::unique_ptr<PerformerLM>> PerformerLM::Create(
    const PerformerLMConfig& config, absl::string_view param_prefix) {
  FTX_RETURN_IF_ERROR(ValidatePerformerLMConfig(config));
  FTX_ASSIGN_OR_RETURN(std::unique_ptr<Performer> performer,
                       Performer::Create(config.performer));
  return std::unique_ptr<PerformerLM>(
      new PerformerLM(config, param_prefix, std::move(performer)));
}

PerformerLM::Positions PerformerLM::positions() const {
  if (config_.rotary_position_emb) return Positions::kRotary;
  if (config_.axial_position_emb) return Positions::kAxial;
  return Positions::kAbsolute;
}

std::array<int64_t, 2> PerformerLM::AxialShape() const {
  const auto& shape = config_.axial_position_shape;
  if (shape[0] != 0 || shape[1] != 0) return shape;
  return AxialPositionsConfig::Performer(config_.performer.dim,
                                         config_.max_seq_len)
      .shape;
}

namespace {

AxialPositions AxialOf(int64_t dim, const std::array<int64_t, 2>& shape) {
  return AxialPositions({.dim = dim, .shape = shape});
}

AbsolutePositions AbsoluteOf(const PerformerLMConfig& config) {
  return AbsolutePositions({.max_seq_len = config.max_seq_len,
                            .dim = config.performer.dim,
                            .scale = 1.0f});
}

}  // namespace

std::vector<ParamShape> PerformerLM::ParamShapes() const {
  const int64_t C = config_.performer.dim, V = config_.num_tokens;
  std::vector<ParamShape> shapes = {{"token_emb.weight", {V, C}}};
  if (positions() == Positions::kAxial) {
    const std::array<int64_t, 2> shape = AxialShape();
    shapes.push_back({"pos_emb.weights.0", {1, shape[0], 1, C}});
    shapes.push_back({"pos_emb.weights.1", {1, 1, shape[1], C}});
  } else if (positions() == Positions::kAbsolute) {
    shapes.push_back({"pos_emb.emb.weight", {config_.max_seq_len, C}});
  }
  for (ParamShape& shape : performer_->ParamShapes()) {
    shapes.push_back({"performer." + shape.name, shape.shape, shape.trainable});
  }
  shapes.push_back({"norm.weight", {C}});
  shapes.push_back({"norm.bias", {C}});
  if (!config_.tie_embed) {
    shapes.push_back({"to_out.weight", {V, C}});
    shapes.push_back({"to_out.bias", {V}});
  }
  return WithPrefix(prefix_, shapes);
}

absl::Status PerformerLM::InitParams(const Context& ctx,
                                     ParamStore& store) const {
  FTX_RETURN_IF_ERROR(CheckCpu(ctx, "PerformerLM::InitParams"));
  const uint64_t seed = config_.performer.seed;
  const std::string& p = prefix_;
  FTX_ASSIGN_OR_RETURN(TensorView<float> token,
                       store.Value(p + "token_emb.weight"));
  FTX_RETURN_IF_ERROR(
      FillNormal(ctx, token, 0.0f, 1.0f, {.seed = SubSeed(seed, 1u << 20)}));
  if (positions() == Positions::kAxial) {
    FTX_ASSIGN_OR_RETURN(TensorView<float> w0,
                         store.Value(p + "pos_emb.weights.0"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> w1,
                         store.Value(p + "pos_emb.weights.1"));
    FTX_RETURN_IF_ERROR(
        AxialOf(config_.performer.dim, AxialShape())
            .InitParams(ctx, w0, w1, SubSeed(seed, (1u << 20) + 1)));
  } else if (positions() == Positions::kAbsolute) {
    FTX_ASSIGN_OR_RETURN(TensorView<float> weight,
                         store.Value(p + "pos_emb.emb.weight"));
    FTX_RETURN_IF_ERROR(AbsoluteOf(config_).InitParams(
        ctx, weight, SubSeed(seed, (1u << 20) + 1)));
  }
  FTX_RETURN_IF_ERROR(performer_->InitParams(ctx, store, p + "performer."));
  FTX_ASSIGN_OR_RETURN(TensorView<float> norm_weight,
                       store.Value(p + "norm.weight"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> norm_bias,
                       store.Value(p + "norm.bias"));
  std::fill_n(norm_weight.data(), norm_weight.NumElements(), 1.0f);
  std::fill_n(norm_bias.data(), norm_bias.NumElements(), 0.0f);
  if (!config_.tie_embed) {
    FTX_ASSIGN_OR_RETURN(TensorView<float> w, store.Value(p + "to_out.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> b, store.Value(p + "to_out.bias"));
    FTX_RETURN_IF_ERROR(InitLinear(ctx, w, b, SubSeed(seed, (1u << 20) + 2)));
  }
  return absl::OkStatus();
}

absl::Status PerformerLM::Forward(const Context& ctx, ParamStore& store,
                                  const PerformerLMInputs& inputs,
                                  TensorView<float> out,
                                  bool save_for_backward) {
  constexpr char kOp[] = "PerformerLM::Forward";
  saved_ = false;
  FTX_RETURN_IF_ERROR(CheckCpu(ctx, kOp));
  const TensorView<const int32_t>& tokens = inputs.tokens;
  if (tokens.rank() != 2 || tokens.data() == nullptr ||
      !tokens.IsContiguous() || tokens.dim(0) < 1 || tokens.dim(1) < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": tokens must be a contiguous [B, T] with B, T >= 1, got ",
        tokens.shape().ToString()));
  }
  const int64_t B = tokens.dim(0), T = tokens.dim(1);
  const int64_t C = config_.performer.dim, V = config_.num_tokens;
  if (T > config_.max_seq_len) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": sequence length ", T,
                     " must be <= max_seq_len = ", config_.max_seq_len));
  }
  for (int64_t i = 0; i < B * T; ++i) {
    if (tokens.data()[i] < 0 || tokens.data()[i] >= V) {
      return absl::InvalidArgumentError(
          absl::StrCat(kOp, ": tokens[", i, "] = ", tokens.data()[i],
                       " is outside [0, num_tokens = ", V, ")"));
    }
  }
  const int64_t width = inputs.return_encodings ? C : V;
  if (out.rank() != 3 || out.dim(0) != B || out.dim(1) != T ||
      out.dim(2) != width || !out.IsContiguous()) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": out must be a contiguous [", B, ", ", T, ", ",
                     width, "], got ", out.shape().ToString()));
  }
  const std::string& p = prefix_;
  FTX_ASSIGN_OR_RETURN(TensorView<float> token_emb,
                       store.Value(p + "token_emb.weight"));
  FTX_RETURN_IF_ERROR(EnsureLike(embedded_, {B, T, C}));
  float* embedded = embedded_.data<float>();
  for (int64_t i = 0; i < B * T; ++i) {
    std::copy_n(token_emb.data() + tokens.data()[i] * C, C, embedded + i * C);
  }
  switch (positions()) {
    case Positions::kRotary:
      FTX_RETURN_IF_ERROR(
          SinusoidalPositions({.dim = C, .max_seq_len = config_.max_seq_len})
              .Forward(ctx, 0, embedded_.view<float>()));
      break;
    case Positions::kAxial: {
      FTX_ASSIGN_OR_RETURN(TensorView<float> w0,
                           store.Value(p + "pos_emb.weights.0"));
      FTX_ASSIGN_OR_RETURN(TensorView<float> w1,
                           store.Value(p + "pos_emb.weights.1"));
      FTX_RETURN_IF_ERROR(
          AxialOf(C, AxialShape())
              .Forward(ctx, w0, w1, 0, embedded_.view<float>()));
      break;
    }
    case Positions::kAbsolute: {
      FTX_ASSIGN_OR_RETURN(TensorView<float> weight,
                           store.Value(p + "pos_emb.emb.weight"));
      FTX_RETURN_IF_ERROR(
          AbsoluteOf(config_).Forward(ctx, weight, 0, embedded_.view<float>()));
      break;
    }
  }
  const DropoutOptions emb_dropout = {.p = config_.emb_dropout,
                                      .seed = inputs.seed,
                                      .stream = kEmbeddingDropoutStream};
  if (inputs.training && config_.emb_dropout > 0.0f) {
    FTX_RETURN_IF_ERROR(Dropout(ctx, emb_dropout, embedded_.view<float>(),
                                embedded_.view<float>()));
  }
  PerformerInputs stack_inputs;
  stack_inputs.mask = inputs.mask;
  stack_inputs.context = inputs.context;
  stack_inputs.context_mask = inputs.context_mask;
  stack_inputs.layer_rotary = positions() == Positions::kRotary;
  stack_inputs.training = inputs.training;
  stack_inputs.seed = SubSeed(inputs.seed, 7);
  FTX_RETURN_IF_ERROR(EnsureLike(stack_out_, {B, T, C}));
  FTX_RETURN_IF_ERROR(performer_->Forward(
      ctx, store, p + "performer.", ConstView(embedded_), stack_inputs,
      stack_out_.view<float>(), save_for_backward));
  FTX_ASSIGN_OR_RETURN(const LayerNormLayer norm,
                       LayerNormLayer::Create({.dim = C}));
  FTX_ASSIGN_OR_RETURN(TensorView<float> norm_weight,
                       store.Value(p + "norm.weight"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> norm_bias,
                       store.Value(p + "norm.bias"));
  FTX_RETURN_IF_ERROR(EnsureLike(normed_, {B, T, C}));
  TensorView<float> normed =
      inputs.return_encodings ? out : normed_.view<float>();
  FTX_RETURN_IF_ERROR(norm.Forward(ctx, norm_weight, norm_bias,
                                   ConstView(stack_out_), normed,
                                   &norm_cache_));
  if (!inputs.return_encodings) {
    if (config_.tie_embed) {
      FTX_RETURN_IF_ERROR(
          LinearForward(ctx, ConstView(normed_), token_emb, {}, out));
    } else {
      FTX_ASSIGN_OR_RETURN(TensorView<float> w,
                           store.Value(p + "to_out.weight"));
      FTX_ASSIGN_OR_RETURN(TensorView<float> b, store.Value(p + "to_out.bias"));
      FTX_RETURN_IF_ERROR(LinearForward(ctx, ConstView(normed_), w, b, out));
    }
  } else {
    std::copy_n(out.data(), out.NumElements(), normed_.data<float>());
  }
  tokens_.assign(tokens.data(), tokens.data() + B * T);
  batch_ = B;
  length_ = T;
  return_encodings_ = inputs.return_encodings;
  last_inputs_ = inputs;
  saved_ = save_for_backward;
  return absl::OkStatus();
}

absl::Status PerformerLM::Backward(const Context& ctx, ParamStore& store,
                                   TensorView<const float> d_out,
                                   TensorView<float> d_context) {
  constexpr char kOp[] = "PerformerLM::Backward";
  FTX_RETURN_IF_ERROR(CheckCpu(ctx, kOp));
  if (!saved_) {
    return absl::FailedPreconditionError(
        absl::StrCat(kOp, ": needs a Forward with save_for_backward first"));
  }
  const int64_t B = batch_, T = length_, C = config_.performer.dim;
  const int64_t width = return_encodings_ ? C : config_.num_tokens;
  if (d_out.rank() != 3 || d_out.dim(0) != B || d_out.dim(1) != T ||
      d_out.dim(2) != width || !d_out.IsContiguous()) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": d_out must be a contiguous [", B, ", ", T, ", ",
                     width, "], got ", d_out.shape().ToString()));
  }
  const std::string& p = prefix_;
  FTX_ASSIGN_OR_RETURN(ParamViews token_emb,
                       Lookup(store, p + "token_emb.weight"));
  TensorView<const float> d_normed = d_out;
  if (!return_encodings_) {
    FTX_RETURN_IF_ERROR(EnsureLike(d_normed_, {B, T, C}));
    ParamViews w = token_emb, b;
    if (!config_.tie_embed) {
      FTX_ASSIGN_OR_RETURN(w, Lookup(store, p + "to_out.weight"));
      FTX_ASSIGN_OR_RETURN(b, Lookup(store, p + "to_out.bias"));
    }
    FTX_RETURN_IF_ERROR(LinearBackward(ctx, ConstView(normed_), w.value, d_out,
                                       d_normed_.view<float>(), w.grad,
                                       b.grad));
    d_normed = ConstView(d_normed_);
  }
  FTX_ASSIGN_OR_RETURN(const LayerNormLayer norm,
                       LayerNormLayer::Create({.dim = C}));
  FTX_ASSIGN_OR_RETURN(ParamViews norm_weight,
                       Lookup(store, p + "norm.weight"));
  FTX_ASSIGN_OR_RETURN(ParamViews norm_bias, Lookup(store, p + "norm.bias"));
  FTX_RETURN_IF_ERROR(EnsureLike(d_stack_out_, {B, T, C}));
  FTX_RETURN_IF_ERROR(norm.Backward(
      ctx, norm_weight.value, norm_cache_, ConstView(stack_out_), d_normed,
      d_stack_out_.view<float>(), norm_weight.grad, norm_bias.grad));
  FTX_RETURN_IF_ERROR(EnsureLike(d_embedded_, {B, T, C}));
  FTX_RETURN_IF_ERROR(performer_->Backward(
      ctx, store, p + "performer.", ConstView(d_stack_out_),
      d_embedded_.view<float>(), d_context));
  if (last_inputs_.training && config_.emb_dropout > 0.0f) {
    FTX_RETURN_IF_ERROR(Dropout(ctx,
                                {.p = config_.emb_dropout,
                                 .seed = last_inputs_.seed,
                                 .stream = kEmbeddingDropoutStream},
                                d_embedded_.view<float>(),
                                d_embedded_.view<float>()));
  }
  if (positions() == Positions::kAxial) {
    FTX_ASSIGN_OR_RETURN(ParamViews w0, Lookup(store, p + "pos_emb.weights.0"));
    FTX_ASSIGN_OR_RETURN(ParamViews w1, Lookup(store, p + "pos_emb.weights.1"));
    FTX_RETURN_IF_ERROR(
        AxialOf(C, AxialShape())
            .Backward(ctx, 0, ConstView(d_embedded_), w0.grad, w1.grad));
  } else if (positions() == Positions::kAbsolute) {
    FTX_ASSIGN_OR_RETURN(ParamViews weight,
                         Lookup(store, p + "pos_emb.emb.weight"));
    FTX_RETURN_IF_ERROR(AbsoluteOf(config_).Backward(
        ctx, weight.value, 0, ConstView(d_embedded_), weight.grad));
  }
  const float* d_embedded = d_embedded_.data<float>();
  for (int64_t i = 0; i < B * T; ++i) {
    AddInto(token_emb.grad.data() + tokens_[i] * C, d_embedded + i * C, C);
  }
  saved_ = false;
  return absl::OkStatus();
}

// ----------------------------------------------------------------------------
// JSON.

namespace {

using Json = nlohmann::json;

absl::Status JsonTypeError(const std::string& key, const char* expected) {
  return absl::InvalidArgumentError(
      absl::StrCat("PerformerLMConfig JSON: \"", key, "\" must be ", expected));
}

}  // namespace

absl::StatusOr<PerformerLMConfig> PerformerLMConfigFromJson(
    absl::string_view json) {
  const Json root = Json::parse(json.begin(), json.end(), nullptr,
                                /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object()) {
    return absl::InvalidArgumentError(
        "PerformerLMConfig JSON: expected a JSON object");
  }
  PerformerLMConfig c;
  PerformerConfig& s = c.performer;
  const std::map<std::string, int64_t*> ints = {
      {"num_tokens", &c.num_tokens},
      {"max_seq_len", &c.max_seq_len},
      {"dim", &s.dim},
      {"depth", &s.depth},
      {"heads", &s.heads},
      {"dim_head", &s.dim_head},
      {"local_window_size", &s.local_window_size},
      {"ff_mult", &s.ff_mult},
      {"ff_chunks", &s.ff_chunks}};
  const std::map<std::string, bool*> bools = {
      {"causal", &s.causal},
      {"reversible", &s.reversible},
      {"generalized_attention", &s.generalized_attention},
      {"use_scalenorm", &s.use_scalenorm},
      {"use_rezero", &s.use_rezero},
      {"ff_glu", &s.ff_glu},
      {"cross_attend", &s.cross_attend},
      {"no_projection", &s.no_projection},
      {"auto_check_redraw", &s.auto_check_redraw},
      {"qkv_bias", &s.qkv_bias},
      {"attn_out_bias", &s.attn_out_bias},
      {"shift_tokens", &s.shift_tokens},
      {"tie_embed", &c.tie_embed},
      {"rotary_position_emb", &c.rotary_position_emb},
      {"axial_position_emb", &c.axial_position_emb}};
  const std::map<std::string, float*> floats = {
      {"emb_dropout", &c.emb_dropout},
      {"ff_dropout", &s.ff_dropout},
      {"attn_dropout", &s.attn_dropout}};
  for (const auto& [key, value] : root.items()) {
    if (auto it = ints.find(key); it != ints.end()) {
      if (!value.is_number_integer()) return JsonTypeError(key, "an integer");
      *it->second = value.get<int64_t>();
    } else if (auto it = bools.find(key); it != bools.end()) {
      if (!value.is_boolean()) return JsonTypeError(key, "a boolean");
      *it->second = value.get<bool>();
    } else if (auto it = floats.find(key); it != floats.end()) {
      if (!value.is_number()) return JsonTypeError(key, "a number");
      *it->second = value.get<float>();
    } else if (key == "local_attn_heads") {
      if (value.is_number_integer()) {
        s.local_attn_heads = {value.get<int64_t>()};
      } else if (value.is_array() && !value.empty()) {
        s.local_attn_heads.clear();
        for (const Json& entry : value) {
          if (!entry.is_number_integer()) {
            return JsonTypeError(key, "an integer or an array of integers");
          }
          s.local_attn_heads.push_back(entry.get<int64_t>());
        }
      } else {
        return JsonTypeError(key, "an integer or an array of integers");
      }
    } else if (key == "nb_features") {
      if (value.is_null()) {
        s.nb_features.reset();
      } else if (value.is_number_integer()) {
        s.nb_features = value.get<int64_t>();
      } else {
        return JsonTypeError(key, "an integer or null");
      }
    } else if (key == "feature_redraw_interval") {
      if (value.is_null()) {
        s.feature_redraw_interval = 0;
      } else if (value.is_number_integer()) {
        s.feature_redraw_interval = value.get<int64_t>();
      } else {
        return JsonTypeError(key, "an integer or null");
      }
    } else if (key == "kernel_fn") {
      if (!value.is_string()) return JsonTypeError(key, "a string");
      absl::StatusOr<Activation> activation =
          ActivationFromName(value.get<std::string>());
      if (!activation.ok()) {
        return JsonTypeError(key, "a kernels/activation name");
      }
      s.kernel_fn = *activation;
    } else if (key == "axial_position_shape") {
      if (value.is_null()) {
        c.axial_position_shape = {0, 0};
      } else if (value.is_array() && value.size() == 2 &&
                 value[0].is_number_integer() && value[1].is_number_integer()) {
        c.axial_position_shape = {value[0].get<int64_t>(),
                                  value[1].get<int64_t>()};
      } else {
        return JsonTypeError(key, "an array of two integers or null");
      }
    } else if (key == "seed") {
      if (!value.is_number_unsigned()) {
        return JsonTypeError(key, "a non-negative integer");
      }
      s.seed = value.get<uint64_t>();
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("PerformerLMConfig JSON: unknown key \"", key, "\""));
    }
  }
  return c;
}

// ----------------------------------------------------------------------------
// PerformerEncDec.

absl::Status ValidatePerformerEncDecConfig(
    const PerformerEncDecConfig& config) {
  FTX_RETURN_IF_ERROR(ValidatePerformerLMConfig(config.enc));
  FTX_RETURN_IF_ERROR(ValidatePerformerLMConfig(config.dec));
  if (config.enc.performer.dim != config.dec.performer.dim) {
    return absl::InvalidArgumentError(absl::StrCat(
        "PerformerEncDecConfig: enc and dec share dim, got ",
        config.enc.performer.dim, " and ", config.dec.performer.dim));
  }
  if (config.enc.performer.no_projection !=
      config.dec.performer.no_projection) {
    return absl::InvalidArgumentError(
        "PerformerEncDecConfig: enc and dec share no_projection");
  }
  if (config.enc.performer.cross_attend) {
    return absl::InvalidArgumentError(
        "PerformerEncDecConfig: the encoder cannot cross_attend");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<PerformerEncDec>> PerformerEncDec::Create(
    const PerformerEncDecConfig& config) {
  PerformerEncDecConfig fixed = config;
  fixed.dec.performer.causal = true;
  fixed.dec.performer.cross_attend = true;
  if (fixed.dec.performer.seed == fixed.enc.performer.seed) {
    fixed.dec.performer.seed = SubSeed(fixed.enc.performer.seed, 1);
  }
  FTX_RETURN_IF_ERROR(ValidatePerformerEncDecConfig(fixed));
  auto model = std::unique_ptr<PerformerEncDec>(new PerformerEncDec());
  model->config_ = fixed;
  FTX_ASSIGN_OR_RETURN(model->enc_, PerformerLM::Create(fixed.enc, "enc."));
  FTX_ASSIGN_OR_RETURN(model->dec_, PerformerLM::Create(fixed.dec, "dec.net."));
  return model;
}

std::vector<ParamShape> PerformerEncDec::ParamShapes() const {
  std::vector<ParamShape> shapes = enc_->ParamShapes();
  for (ParamShape& shape : dec_->ParamShapes()) {
    shapes.push_back(std::move(shape));
  }
  return shapes;
}

absl::Status PerformerEncDec::InitParams(const Context& ctx,
                                         ParamStore& store) const {
  FTX_RETURN_IF_ERROR(enc_->InitParams(ctx, store));
  return dec_->InitParams(ctx, store);
}

absl::Status PerformerEncDec::Forward(const Context& ctx, ParamStore& store,
                                      const PerformerEncDecInputs& inputs,
                                      TensorView<float> logits,
                                      bool save_for_backward) {
  const TensorView<const int32_t>& seq_in = inputs.seq_in;
  if (seq_in.rank() != 2 || seq_in.dim(0) < 1 || seq_in.dim(1) < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("PerformerEncDec::Forward: seq_in must be [B, S], got ",
                     seq_in.shape().ToString()));
  }
  const int64_t B = seq_in.dim(0), S = seq_in.dim(1);
  const int64_t C = config_.enc.performer.dim;
  FTX_RETURN_IF_ERROR(EnsureLike(encodings_, {B, S, C}));
  PerformerLMInputs enc_inputs;
  enc_inputs.tokens = seq_in;
  enc_inputs.mask = inputs.enc_mask;
  enc_inputs.return_encodings = true;
  enc_inputs.training = inputs.training;
  enc_inputs.seed = SubSeed(inputs.seed, 1);
  FTX_RETURN_IF_ERROR(enc_->Forward(
      ctx, store, enc_inputs, encodings_.view<float>(), save_for_backward));
  PerformerLMInputs dec_inputs;
  dec_inputs.tokens = inputs.seq_out;
  dec_inputs.context = ConstView(encodings_);
  dec_inputs.context_mask = inputs.enc_mask;
  dec_inputs.training = inputs.training;
  dec_inputs.seed = SubSeed(inputs.seed, 2);
  return dec_->Forward(ctx, store, dec_inputs, logits, save_for_backward);
}

absl::Status PerformerEncDec::Backward(const Context& ctx, ParamStore& store,
                                       TensorView<const float> d_logits) {
  FTX_RETURN_IF_ERROR(EnsureLike(d_encodings_, encodings_.shape()));
  FTX_RETURN_IF_ERROR(
      dec_->Backward(ctx, store, d_logits, d_encodings_.view<float>()));
  return enc_->Backward(ctx, store, ConstView(d_encodings_));
}

}  // namespace ftx
