#include "models/linformer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/base/rng.h"
#include "kernels/base/status_macros.h"
#include "kernels/dropout/dropout.h"
#include "kernels/elementwise/elementwise.h"
#include "kernels/layernorm/layernorm.h"
#include "kernels/linear/linear.h"
#include "layers/sinusoidal_positions.h"
#include "nlohmann/json.hpp"

namespace ftx {
namespace {

// Philox streams of the dropout sites: sublayer s uses kDropoutStream + 4 s +
// site; the token dropout its own.
constexpr uint64_t kDropoutStream = 0x11F0000;
constexpr uint64_t kTokenDropoutStream = 0x11EFFFF;

enum class SublayerKind { kAttention, kContext, kFeedForward };

struct ParamView {
  TensorView<float> value;
  TensorView<float> grad;
};

absl::StatusOr<ParamView> Resolve(ParamStore& store, absl::string_view prefix,
                                  absl::string_view name) {
  const std::string full = absl::StrCat(prefix, name);
  ParamView view;
  FTX_ASSIGN_OR_RETURN(view.value, store.Value(full));
  FTX_ASSIGN_OR_RETURN(view.grad, store.Grad(full));
  return view;
}

// A stream index per parameter name, so initialisation does not depend on
// the order of the parameters.
uint64_t NameStream(absl::string_view name) {
  uint64_t hash = 1469598103934665603ull;
  for (char c : name) {
    hash ^= static_cast<unsigned char>(c);
    hash *= 1099511628211ull;
  }
  return hash;
}

absl::Status FillUniformNamed(const Context& ctx, TensorView<float> view,
                              float bound, uint64_t seed,
                              absl::string_view name) {
  return FillUniform(ctx, view, -bound, bound,
                     {.seed = seed, .stream = NameStream(name)});
}

float InvSqrt(int64_t fan_in) {
  return 1.0f / std::sqrt(static_cast<float>(fan_in));
}

void Fill(TensorView<float> view, float value) {
  std::fill(view.data(), view.data() + view.NumElements(), value);
}

// Training-mode dropout of `x` in place (nothing otherwise).
absl::Status MaybeDropout(const Context& ctx, float p, bool training,
                          uint64_t seed, uint64_t stream, TensorView<float> x) {
  if (!training || p <= 0.0f) return absl::OkStatus();
  return Dropout(ctx, {.p = p, .seed = seed, .stream = stream}, x, x);
}

// A per-sublayer seed of the attention dropout.
uint64_t SublayerSeed(uint64_t seed, int64_t sublayer) {
  return seed ^ (0x9E3779B97F4A7C15ull * static_cast<uint64_t>(sublayer + 1));
}

}  // namespace

// One post-norm residual sublayer: y = LayerNorm(resample(x) + fn(x)), fn an
// MHAttention (self or context) or a FeedForward.
class Linformer::Sublayer final : public Block {
 public:
  Sublayer(const LinformerConfig& config, SublayerKind kind, int64_t index,
           int64_t in, int64_t out)
      : config_(config), kind_(kind), index_(index), in_(in), out_(out) {}

  int64_t in() const { return in_; }
  int64_t out() const { return out_; }
  LinformerAttention* attention() { return attention_.get(); }
  const LinformerAttention* attention() const { return attention_.get(); }
  void set_attention(std::unique_ptr<LinformerAttention> attention) {
    attention_ = std::move(attention);
  }
  std::string Prefix() const { return absl::StrCat("seq.", index_, "."); }
  int64_t HeadDim() const {
    return config_.dim_d > 0 ? config_.dim_d : config_.channels / config_.nhead;
  }

  // The parameters besides the E / F projections, relative to the model, in
  // state_dict order: the fn's, then resample, then norm.
  std::vector<ParamShape> OwnParamShapes(bool fn_part) const {
    const std::string p = Prefix();
    const int64_t H = config_.nhead, d = HeadDim();
    std::vector<ParamShape> shapes;
    if (fn_part) {
      if (kind_ == SublayerKind::kFeedForward) {
        shapes.push_back({p + "fn.w_1.weight", {config_.dim_ff, in_}});
        shapes.push_back({p + "fn.w_1.bias", {config_.dim_ff}});
        shapes.push_back({p + "fn.w_2.weight", {out_, config_.dim_ff}});
        shapes.push_back({p + "fn.w_2.bias", {out_}});
        return shapes;
      }
      for (const char* which : {"to_q", "to_k", "to_v"}) {
        for (int64_t h = 0; h < H; ++h) {
          shapes.push_back(
              {absl::StrCat(p, "fn.", which, ".", h, ".weight"), {d, in_}});
        }
      }
      if (config_.w_o_intermediate_dim > 0) {
        const int64_t w = config_.w_o_intermediate_dim;
        shapes.push_back({p + "fn.w_o_1.weight", {w, H * d}});
        shapes.push_back({p + "fn.w_o_1.bias", {w}});
        shapes.push_back({p + "fn.w_o_2.weight", {in_, w}});
        shapes.push_back({p + "fn.w_o_2.bias", {in_}});
      } else {
        shapes.push_back({p + "fn.w_o.weight", {in_, H * d}});
        shapes.push_back({p + "fn.w_o.bias", {in_}});
      }
      return shapes;
    }
    if (in_ != out_) {
      shapes.push_back({p + "resample.weight", {out_, in_}});
      shapes.push_back({p + "resample.bias", {out_}});
    }
    shapes.push_back({p + "norm.weight", {out_}});
    shapes.push_back({p + "norm.bias", {out_}});
    return shapes;
  }

  absl::Status Bind(ParamStore& store, absl::string_view prefix) {
    const std::string p = absl::StrCat(prefix, Prefix());
    FTX_ASSIGN_OR_RETURN(norm_weight_, Resolve(store, p, "norm.weight"));
    FTX_ASSIGN_OR_RETURN(norm_bias_, Resolve(store, p, "norm.bias"));
    if (kind_ == SublayerKind::kFeedForward) {
      FTX_ASSIGN_OR_RETURN(w1_weight_, Resolve(store, p, "fn.w_1.weight"));
      FTX_ASSIGN_OR_RETURN(w1_bias_, Resolve(store, p, "fn.w_1.bias"));
      FTX_ASSIGN_OR_RETURN(w2_weight_, Resolve(store, p, "fn.w_2.weight"));
      FTX_ASSIGN_OR_RETURN(w2_bias_, Resolve(store, p, "fn.w_2.bias"));
      if (in_ != out_) {
        FTX_ASSIGN_OR_RETURN(resample_weight_,
                             Resolve(store, p, "resample.weight"));
        FTX_ASSIGN_OR_RETURN(resample_bias_,
                             Resolve(store, p, "resample.bias"));
      }
      return absl::OkStatus();
    }
    to_q_.clear();
    to_k_.clear();
    to_v_.clear();
    for (int64_t h = 0; h < config_.nhead; ++h) {
      FTX_ASSIGN_OR_RETURN(
          ParamView q,
          Resolve(store, p, absl::StrCat("fn.to_q.", h, ".weight")));
      FTX_ASSIGN_OR_RETURN(
          ParamView k,
          Resolve(store, p, absl::StrCat("fn.to_k.", h, ".weight")));
      FTX_ASSIGN_OR_RETURN(
          ParamView v,
          Resolve(store, p, absl::StrCat("fn.to_v.", h, ".weight")));
      to_q_.push_back(q);
      to_k_.push_back(k);
      to_v_.push_back(v);
    }
    if (config_.w_o_intermediate_dim > 0) {
      FTX_ASSIGN_OR_RETURN(wo1_weight_, Resolve(store, p, "fn.w_o_1.weight"));
      FTX_ASSIGN_OR_RETURN(wo1_bias_, Resolve(store, p, "fn.w_o_1.bias"));
      FTX_ASSIGN_OR_RETURN(wo2_weight_, Resolve(store, p, "fn.w_o_2.weight"));
      FTX_ASSIGN_OR_RETURN(wo2_bias_, Resolve(store, p, "fn.w_o_2.bias"));
    } else {
      FTX_ASSIGN_OR_RETURN(wo2_weight_, Resolve(store, p, "fn.w_o.weight"));
      FTX_ASSIGN_OR_RETURN(wo2_bias_, Resolve(store, p, "fn.w_o.bias"));
    }
    return absl::OkStatus();
  }

  // Per-call state: inputs (embeddings, masks, mode) and where the context
  // attention adds its embeddings gradient (empty: nowhere).
  void SetCall(const LinformerInputs* inputs, TensorView<float> d_embeddings) {
    inputs_ = inputs;
    d_embeddings_ = d_embeddings;
  }

  absl::Status Forward(const Context& ctx, TensorView<const float> x,
                       TensorView<float> y, BlockCache* cache) override {
    std::vector<Tensor>& buffers = cache != nullptr ? cache->saved : work_;
    if (kind_ == SublayerKind::kFeedForward) {
      return ForwardFeedForward(ctx, x, y, buffers);
    }
    return ForwardAttention(ctx, x, y, buffers, cache != nullptr);
  }

  absl::Status Backward(const Context& ctx, TensorView<const float> x,
                        const BlockCache& cache, TensorView<const float> d_y,
                        TensorView<float> d_x) override {
    absl::Status status =
        kind_ == SublayerKind::kFeedForward
            ? BackwardFeedForward(ctx, x, cache.saved, d_y, d_x)
            : BackwardAttention(ctx, x, cache.saved, d_y, d_x);
    // Checkpointed sublayers keep no activation between passes.
    if (config_.checkpoint_level != LinformerCheckpointLevel::kC0) {
      attention_cache_ = AttentionCache();
    }
    return status;
  }

 private:
  enum AttentionBuffer : int {
    kQ,     // [B, T, H, d]
    kK,     // [B, T, H, d]
    kV,     // [B, T, H, d]
    kA,     // [B, T, H, d] heads' outputs
    kWo1,   // [B, T, w] w_o_1's output (w_o_intermediate_dim)
    kSum,   // [B, T, C_out] residual sum (LayerNorm input)
    kMean,  // [B T]
    kRstd,  // [B T]
    kAttentionBuffers
  };
  enum FeedForwardBuffer : int {
    kHidden,     // [B, T, dim_ff] w_1's output
    kActivated,  // [B, T, dim_ff] after act and dropout
    kFfSum,      // [B, T, C_out]
    kFfMean,
    kFfRstd,
    kFeedForwardBuffers
  };

  uint64_t Stream(int site) const {
    return kDropoutStream + 4 * static_cast<uint64_t>(index_) + site;
  }

  AttentionInputs MechanismInputs(const std::vector<Tensor>& buffers) const {
    AttentionInputs inputs;
    inputs.queries = buffers[kQ].view<float>();
    inputs.keys = buffers[kK].view<float>();
    inputs.values = buffers[kV].view<float>();
    inputs.key_lengths = inputs_->input_lengths;
    inputs.query_lengths = inputs_->embeddings_lengths;
    inputs.training = inputs_->training;
    inputs.seed = SublayerSeed(inputs_->seed, index_);
    return inputs;
  }

  absl::Status ForwardAttention(const Context& ctx, TensorView<const float> x,
                                TensorView<float> y,
                                std::vector<Tensor>& buffers, bool save) {
    const int64_t B = x.dim(0), T = x.dim(1), H = config_.nhead, d = HeadDim();
    const int64_t w = std::max<int64_t>(config_.w_o_intermediate_dim, 1);
    buffers.resize(kAttentionBuffers);
    const Shape shapes[kAttentionBuffers] = {
        {B, T, H, d}, {B, T, H, d}, {B, T, H, d}, {B, T, H, d},
        {B, T, w},    {B, T, out_}, {B * T},      {B * T}};
    for (int i = 0; i < kAttentionBuffers; ++i) {
      FTX_RETURN_IF_ERROR(EnsureTensor(buffers[i], shapes[i], ctx.device()));
    }
    const TensorView<const float> kv =
        kind_ == SublayerKind::kContext ? inputs_->embeddings : x;
    for (int64_t h = 0; h < H; ++h) {
      FTX_RETURN_IF_ERROR(LinearForward(
          ctx, x, to_q_[h].value, {}, buffers[kQ].view<float>().Select(2, h)));
      FTX_RETURN_IF_ERROR(LinearForward(
          ctx, kv, to_k_[h].value, {}, buffers[kK].view<float>().Select(2, h)));
      FTX_RETURN_IF_ERROR(LinearForward(
          ctx, kv, to_v_[h].value, {}, buffers[kV].view<float>().Select(2, h)));
    }
    FTX_RETURN_IF_ERROR(attention_->Forward(
        ctx, MechanismInputs(buffers), buffers[kA].view<float>(),
        save ? &attention_cache_ : nullptr));
    const TensorView<const float> heads =
        buffers[kA].view<float>().Reshape({B, T, H * d});
    TensorView<float> sum = buffers[kSum].view<float>();
    if (config_.w_o_intermediate_dim > 0) {
      FTX_RETURN_IF_ERROR(LinearForward(ctx, heads, wo1_weight_.value,
                                        wo1_bias_.value,
                                        buffers[kWo1].view<float>()));
      FTX_RETURN_IF_ERROR(LinearForward(ctx, buffers[kWo1].view<float>(),
                                        wo2_weight_.value, wo2_bias_.value,
                                        sum));
    } else {
      FTX_RETURN_IF_ERROR(
          LinearForward(ctx, heads, wo2_weight_.value, wo2_bias_.value, sum));
    }
    FTX_RETURN_IF_ERROR(MaybeDropout(ctx, config_.dropout, inputs_->training,
                                     inputs_->seed, Stream(0), sum));
    FTX_RETURN_IF_ERROR(Axpy(ctx, 1.0f, x, sum));
    return LayerNorm(ctx, sum, norm_weight_.value, norm_bias_.value, y,
                     buffers[kMean].view<float>(),
                     buffers[kRstd].view<float>());
  }

  absl::Status BackwardAttention(const Context& ctx, TensorView<const float> x,
                                 const std::vector<Tensor>& buffers,
                                 TensorView<const float> d_y,
                                 TensorView<float> d_x) {
    const int64_t B = x.dim(0), T = x.dim(1), H = config_.nhead, d = HeadDim();
    if (buffers.size() != kAttentionBuffers) {
      return absl::FailedPreconditionError(
          "Linformer sublayer: Backward needs a saving Forward");
    }
    FTX_RETURN_IF_ERROR(EnsureTensor(d_sum_, {B, T, out_}, ctx.device()));
    FTX_RETURN_IF_ERROR(EnsureTensor(d_heads_, {B, T, H * d}, ctx.device()));
    FTX_RETURN_IF_ERROR(EnsureTensor(d_q_, {B, T, H, d}, ctx.device()));
    FTX_RETURN_IF_ERROR(EnsureTensor(d_k_, {B, T, H, d}, ctx.device()));
    FTX_RETURN_IF_ERROR(EnsureTensor(d_v_, {B, T, H, d}, ctx.device()));
    TensorView<float> d_sum = d_sum_.view<float>();
    FTX_RETURN_IF_ERROR(LayerNormBackward(
        ctx, buffers[kSum].view<float>(), norm_weight_.value,
        buffers[kMean].view<float>(), buffers[kRstd].view<float>(), d_y, d_sum,
        norm_weight_.grad, norm_bias_.grad));
    // Residual path, then the branch (d_sum becomes the branch gradient).
    std::memcpy(d_x.data(), d_sum.data(), sizeof(float) * d_sum.NumElements());
    FTX_RETURN_IF_ERROR(MaybeDropout(ctx, config_.dropout, inputs_->training,
                                     inputs_->seed, Stream(0), d_sum));
    const TensorView<const float> heads =
        buffers[kA].view<float>().Reshape({B, T, H * d});
    TensorView<float> d_heads = d_heads_.view<float>();
    if (config_.w_o_intermediate_dim > 0) {
      FTX_RETURN_IF_ERROR(EnsureTensor(
          d_wo1_, {B, T, config_.w_o_intermediate_dim}, ctx.device()));
      FTX_RETURN_IF_ERROR(LinearBackward(
          ctx, buffers[kWo1].view<float>(), wo2_weight_.value, d_sum,
          d_wo1_.view<float>(), wo2_weight_.grad, wo2_bias_.grad));
      FTX_RETURN_IF_ERROR(LinearBackward(ctx, heads, wo1_weight_.value,
                                         d_wo1_.view<float>(), d_heads,
                                         wo1_weight_.grad, wo1_bias_.grad));
    } else {
      FTX_RETURN_IF_ERROR(LinearBackward(ctx, heads, wo2_weight_.value, d_sum,
                                         d_heads, wo2_weight_.grad,
                                         wo2_bias_.grad));
    }
    FTX_RETURN_IF_ERROR(attention_->Backward(
        ctx, MechanismInputs(buffers), attention_cache_,
        d_heads.Reshape({B, T, H, d}),
        {d_q_.view<float>(), d_k_.view<float>(), d_v_.view<float>()}));
    const bool context = kind_ == SublayerKind::kContext;
    const TensorView<const float> kv = context ? inputs_->embeddings : x;
    const TensorView<float> d_kv = context ? d_embeddings_ : d_x;
    for (int64_t h = 0; h < H; ++h) {
      FTX_RETURN_IF_ERROR(LinearBackward(
          ctx, x, to_q_[h].value, d_q_.view<float>().Select(2, h), d_x,
          to_q_[h].grad, {}, {.accumulate_input_grad = true}));
      FTX_RETURN_IF_ERROR(LinearBackward(
          ctx, kv, to_k_[h].value, d_k_.view<float>().Select(2, h), d_kv,
          to_k_[h].grad, {}, {.accumulate_input_grad = true}));
      FTX_RETURN_IF_ERROR(LinearBackward(
          ctx, kv, to_v_[h].value, d_v_.view<float>().Select(2, h), d_kv,
          to_v_[h].grad, {}, {.accumulate_input_grad = true}));
    }
    return absl::OkStatus();
  }

  absl::Status ForwardFeedForward(const Context& ctx, TensorView<const float> x,
                                  TensorView<float> y,
                                  std::vector<Tensor>& buffers) {
    const int64_t B = x.dim(0), T = x.dim(1), F = config_.dim_ff;
    buffers.resize(kFeedForwardBuffers);
    const Shape shapes[kFeedForwardBuffers] = {
        {B, T, F}, {B, T, F}, {B, T, out_}, {B * T}, {B * T}};
    for (int i = 0; i < kFeedForwardBuffers; ++i) {
      FTX_RETURN_IF_ERROR(EnsureTensor(buffers[i], shapes[i], ctx.device()));
    }
    TensorView<float> hidden = buffers[kHidden].view<float>();
    TensorView<float> activated = buffers[kActivated].view<float>();
    TensorView<float> sum = buffers[kFfSum].view<float>();
    FTX_RETURN_IF_ERROR(
        LinearForward(ctx, x, w1_weight_.value, w1_bias_.value, hidden));
    FTX_RETURN_IF_ERROR(Activate(ctx, config_.activation, hidden, activated));
    FTX_RETURN_IF_ERROR(MaybeDropout(ctx, config_.dropout_ff, inputs_->training,
                                     inputs_->seed, Stream(1), activated));
    FTX_RETURN_IF_ERROR(
        LinearForward(ctx, activated, w2_weight_.value, w2_bias_.value, sum));
    FTX_RETURN_IF_ERROR(MaybeDropout(ctx, config_.dropout_ff, inputs_->training,
                                     inputs_->seed, Stream(2), sum));
    if (in_ != out_) {
      // y holds resample(x) for a moment.
      FTX_RETURN_IF_ERROR(LinearForward(ctx, x, resample_weight_.value,
                                        resample_bias_.value, y));
      FTX_RETURN_IF_ERROR(Axpy(ctx, 1.0f, y, sum));
    } else {
      FTX_RETURN_IF_ERROR(Axpy(ctx, 1.0f, x, sum));
    }
    return LayerNorm(ctx, sum, norm_weight_.value, norm_bias_.value, y,
                     buffers[kFfMean].view<float>(),
                     buffers[kFfRstd].view<float>());
  }

  absl::Status BackwardFeedForward(const Context& ctx,
                                   TensorView<const float> x,
                                   const std::vector<Tensor>& buffers,
                                   TensorView<const float> d_y,
                                   TensorView<float> d_x) {
    const int64_t B = x.dim(0), T = x.dim(1), F = config_.dim_ff;
    if (buffers.size() != kFeedForwardBuffers) {
      return absl::FailedPreconditionError(
          "Linformer sublayer: Backward needs a saving Forward");
    }
    FTX_RETURN_IF_ERROR(EnsureTensor(d_sum_, {B, T, out_}, ctx.device()));
    FTX_RETURN_IF_ERROR(EnsureTensor(d_hidden_, {B, T, F}, ctx.device()));
    TensorView<float> d_sum = d_sum_.view<float>();
    TensorView<float> d_hidden = d_hidden_.view<float>();
    FTX_RETURN_IF_ERROR(LayerNormBackward(
        ctx, buffers[kFfSum].view<float>(), norm_weight_.value,
        buffers[kFfMean].view<float>(), buffers[kFfRstd].view<float>(), d_y,
        d_sum, norm_weight_.grad, norm_bias_.grad));
    // Skip path first: d_x = d_sum (or through resample).
    if (in_ != out_) {
      FTX_RETURN_IF_ERROR(LinearBackward(ctx, x, resample_weight_.value, d_sum,
                                         d_x, resample_weight_.grad,
                                         resample_bias_.grad));
    } else {
      std::memcpy(d_x.data(), d_sum.data(),
                  sizeof(float) * d_sum.NumElements());
    }
    FTX_RETURN_IF_ERROR(MaybeDropout(ctx, config_.dropout_ff, inputs_->training,
                                     inputs_->seed, Stream(2), d_sum));
    FTX_RETURN_IF_ERROR(LinearBackward(ctx, buffers[kActivated].view<float>(),
                                       w2_weight_.value, d_sum, d_hidden,
                                       w2_weight_.grad, w2_bias_.grad));
    FTX_RETURN_IF_ERROR(MaybeDropout(ctx, config_.dropout_ff, inputs_->training,
                                     inputs_->seed, Stream(1), d_hidden));
    FTX_RETURN_IF_ERROR(ActivateBackward(ctx, config_.activation,
                                         buffers[kHidden].view<float>(),
                                         d_hidden, d_hidden));
    return LinearBackward(ctx, x, w1_weight_.value, d_hidden, d_x,
                          w1_weight_.grad, w1_bias_.grad,
                          {.accumulate_input_grad = true});
  }

  const LinformerConfig& config_;
  SublayerKind kind_;
  int64_t index_, in_, out_;
  std::unique_ptr<LinformerAttention> attention_;
  std::vector<ParamView> to_q_, to_k_, to_v_;
  ParamView wo1_weight_, wo1_bias_, wo2_weight_, wo2_bias_;
  ParamView w1_weight_, w1_bias_, w2_weight_, w2_bias_;
  ParamView resample_weight_, resample_bias_, norm_weight_, norm_bias_;
  const LinformerInputs* inputs_ = nullptr;
  TensorView<float> d_embeddings_;
  AttentionCache attention_cache_;
  std::vector<Tensor> work_;
  Tensor d_sum_, d_heads_, d_wo1_, d_q_, d_k_, d_v_, d_hidden_;
};

absl::Status ValidateLinformerConfig(const LinformerConfig& config) {
  auto bad = [](absl::string_view field, absl::string_view expected,
                auto value) {
    return absl::InvalidArgumentError(absl::StrCat(
        "LinformerConfig.", field, " must be ", expected, ", got ", value));
  };
  if (config.input_size < 1)
    return bad("input_size", ">= 1", config.input_size);
  if (config.channels < 1) return bad("channels", ">= 1", config.channels);
  if (config.dim_k < 1) return bad("dim_k", ">= 1", config.dim_k);
  if (config.dim_ff < 1) return bad("dim_ff", ">= 1", config.dim_ff);
  if (config.nhead < 1) return bad("nhead", ">= 1", config.nhead);
  if (config.depth < 1) return bad("depth", ">= 1", config.depth);
  if (config.dim_d < 0)
    return bad("dim_d", ">= 0 (0: channels / nhead)", config.dim_d);
  if (config.dim_d == 0 && config.channels % config.nhead != 0) {
    return bad("channels",
               absl::StrCat("divisible by nhead ", config.nhead,
                            " when dim_d is not set"),
               config.channels);
  }
  for (const auto& [name, p] :
       {std::pair<const char*, float>{"dropout", config.dropout},
        {"dropout_ff", config.dropout_ff}}) {
    if (!(p >= 0.0f && p < 1.0f)) return bad(name, "in [0, 1)", p);
  }
  if (config.activation != Activation::kGelu &&
      config.activation != Activation::kRelu) {
    return bad("activation", "gelu or relu", ActivationName(config.activation));
  }
  if (config.k_reduce_by_layer < 0) {
    return bad("k_reduce_by_layer", ">= 0", config.k_reduce_by_layer);
  }
  if (config.w_o_intermediate_dim < 0) {
    return bad("w_o_intermediate_dim", ">= 0 (0: none)",
               config.w_o_intermediate_dim);
  }
  if (config.ff_intermediate < 0) {
    return bad("ff_intermediate", ">= 0 (0: none)", config.ff_intermediate);
  }
  const bool layerwise =
      config.parameter_sharing == LinformerParameterSharing::kLayerwise;
  if (layerwise && config.k_reduce_by_layer > 0) {
    return bad("k_reduce_by_layer",
               "0 with parameter_sharing layerwise (one E for every layer)",
               config.k_reduce_by_layer);
  }
  if (config.ff_intermediate > 0 && layerwise) {
    return bad("ff_intermediate", "0 with parameter_sharing layerwise",
               config.ff_intermediate);
  }
  if (config.ff_intermediate > 0 && config.decoder_mode) {
    return bad("ff_intermediate", "0 with decoder_mode",
               config.ff_intermediate);
  }
  if (config.method == LinformerMethod::kConvolution &&
      config.dim_k > config.input_size) {
    return bad("dim_k",
               absl::StrCat("<= input_size ", config.input_size,
                            " with method convolution"),
               config.dim_k);
  }
  return absl::OkStatus();
}

Linformer::Linformer(const LinformerConfig& config) : config_(config) {}
Linformer::~Linformer() = default;

int64_t Linformer::head_dim() const {
  return config_.dim_d > 0 ? config_.dim_d : config_.channels / config_.nhead;
}

absl::StatusOr<std::unique_ptr<Linformer>> Linformer::Create(
    const LinformerConfig& config) {
  FTX_RETURN_IF_ERROR(ValidateLinformerConfig(config));
  std::unique_ptr<Linformer> model(new Linformer(config));
  FTX_RETURN_IF_ERROR(model->Build());
  return model;
}

absl::Status Linformer::Build() {
  const LinformerConfig& c = config_;
  const bool intermediate = c.ff_intermediate > 0 && !c.decoder_mode;
  const bool layerwise =
      c.parameter_sharing == LinformerParameterSharing::kLayerwise;
  LinformerSharing sharing = LinformerSharing::kKeyValue;
  if (c.parameter_sharing == LinformerParameterSharing::kNone) {
    sharing = LinformerSharing::kNone;
  } else if (c.parameter_sharing == LinformerParameterSharing::kHeadwise) {
    sharing = LinformerSharing::kHeadwise;
  }
  auto add = [&](SublayerKind kind, int64_t in, int64_t out) {
    sublayers_.push_back(std::make_unique<Sublayer>(
        config_, kind, static_cast<int64_t>(sublayers_.size()), in, out));
    return sublayers_.back().get();
  };
  auto add_attention = [&](SublayerKind kind, int64_t channels,
                           int64_t k) -> absl::Status {
    Sublayer* sublayer = add(kind, channels, channels);
    const bool causal =
        c.causal && (kind == SublayerKind::kContext || !c.decoder_mode);
    FTX_ASSIGN_OR_RETURN(
        std::unique_ptr<LinformerAttention> attention,
        LinformerAttention::Create({.seq_len = c.input_size,
                                    .k = k,
                                    .heads = c.nhead,
                                    .head_dim = head_dim(),
                                    .method = c.method,
                                    .sharing = sharing,
                                    .causal = causal,
                                    .full_attention = c.full_attention,
                                    .attention_dropout = c.dropout}));
    const std::string base = absl::StrCat(sublayer->Prefix(), "fn.heads.");
    const int64_t index = static_cast<int64_t>(sublayers_.size()) - 1;
    if (!layerwise || slots_.empty()) {
      for (int i = 0; i < attention->NumProjections(); ++i) {
        ProjectionSlot slot;
        slot.owner = index;
        slot.name = sharing == LinformerSharing::kNone
                        ? absl::StrCat(base, i / 2, i % 2 == 0 ? ".E" : ".F")
                        : absl::StrCat(base, "0", i == 0 ? ".E" : ".F");
        slots_.push_back(std::move(slot));
      }
    }
    sublayer->set_attention(std::move(attention));
    return absl::OkStatus();
  };
  for (int64_t i = 0; i < c.depth; ++i) {
    const int64_t in = intermediate && i != 0 ? c.ff_intermediate : c.channels;
    const int64_t out =
        intermediate && i != c.depth - 1 ? c.ff_intermediate : c.channels;
    const int64_t k = std::max<int64_t>(1, c.dim_k - i * c.k_reduce_by_layer);
    FTX_RETURN_IF_ERROR(add_attention(SublayerKind::kAttention, in, k));
    if (c.include_ff) add(SublayerKind::kFeedForward, in, out);
    if (!c.decoder_mode) continue;
    FTX_RETURN_IF_ERROR(add_attention(SublayerKind::kContext, c.channels, k));
    if (c.include_ff) add(SublayerKind::kFeedForward, c.channels, c.channels);
  }
  if (c.method == LinformerMethod::kNoParams) {
    FTX_ASSIGN_OR_RETURN(auto ctx, Context::Create({.num_threads = 1}));
    for (size_t i = 0; i < slots_.size(); ++i) {
      const LinformerAttention* attention =
          sublayers_[slots_[i].owner]->attention();
      const Shape shape = attention->ProjectionWeightShape();
      FTX_ASSIGN_OR_RETURN(slots_[i].fixed, Tensor::Create(DType::kF32, shape));
      FTX_RETURN_IF_ERROR(
          FillNormal(*ctx, slots_[i].fixed.view<float>(), 0.0f,
                     1.0f / static_cast<float>(shape.dim(0)),
                     {.seed = c.seed, .stream = NameStream(slots_[i].name)}));
    }
  }
  for (auto& sublayer : sublayers_) {
    caches_.emplace_back();
    recompute_.push_back(std::make_unique<RecomputeBlock>(*sublayer));
  }
  return absl::OkStatus();
}

std::vector<ParamShape> Linformer::ParamShapes() const {
  std::vector<ParamShape> shapes;
  const bool trainable = config_.method != LinformerMethod::kNoParams;
  for (size_t s = 0; s < sublayers_.size(); ++s) {
    const Sublayer& sublayer = *sublayers_[s];
    if (trainable) {
      for (const ProjectionSlot& slot : slots_) {
        if (slot.owner != static_cast<int64_t>(s)) continue;
        const LinformerAttention& attention = *sublayer.attention();
        shapes.push_back(
            {slot.name + ".weight", attention.ProjectionWeightShape()});
        const Shape bias = attention.ProjectionBiasShape();
        if (bias.NumElements() > 0)
          shapes.push_back({slot.name + ".bias", bias});
      }
    }
    for (bool fn_part : {true, false}) {
      for (ParamShape& shape : sublayer.OwnParamShapes(fn_part)) {
        shapes.push_back(std::move(shape));
      }
    }
  }
  return shapes;
}

std::vector<std::pair<std::string, std::string>>
Linformer::SharedProjectionAliases() const {
  std::vector<std::pair<std::string, std::string>> aliases;
  if (config_.method == LinformerMethod::kNoParams) return aliases;
  const bool layerwise =
      config_.parameter_sharing == LinformerParameterSharing::kLayerwise;
  int64_t first_slot = 0;
  for (size_t s = 0; s < sublayers_.size(); ++s) {
    const LinformerAttention* attention = sublayers_[s]->attention();
    if (attention == nullptr) continue;
    const bool has_bias = attention->ProjectionBiasShape().NumElements() > 0;
    const std::string base = absl::StrCat(sublayers_[s]->Prefix(), "fn.heads.");
    for (int64_t h = 0; h < config_.nhead; ++h) {
      for (int which = 0; which < 2; ++which) {
        int index = 0;
        switch (attention->options().sharing) {
          case LinformerSharing::kNone:
            index = static_cast<int>(2 * h + which);
            break;
          case LinformerSharing::kHeadwise:
            index = which;
            break;
          case LinformerSharing::kKeyValue:
            index = 0;
            break;
        }
        const std::string& target = slots_[first_slot + index].name;
        const std::string key = absl::StrCat(base, h, which == 0 ? ".E" : ".F");
        if (key == target) continue;
        aliases.push_back({key + ".weight", target + ".weight"});
        if (has_bias) aliases.push_back({key + ".bias", target + ".bias"});
      }
    }
    if (!layerwise) first_slot += attention->NumProjections();
  }
  return aliases;
}

absl::Status Linformer::InitParams(const Context& ctx, ParamStore& store,
                                   absl::string_view prefix) const {
  const uint64_t seed = config_.seed;
  const int64_t n = config_.input_size;
  const std::vector<ParamShape> shapes = ParamShapes();
  // fan_in of a torch Linear / Conv1d weight: every axis but the first.
  auto fan_in = [](const Shape& weight) {
    return weight.NumElements() / weight.dim(0);
  };
  for (size_t i = 0; i < shapes.size(); ++i) {
    const ParamShape& shape = shapes[i];
    const std::string name = absl::StrCat(prefix, shape.name);
    FTX_ASSIGN_OR_RETURN(TensorView<float> value, store.Value(name));
    const absl::string_view relative = shape.name;
    auto ends_with = [&](absl::string_view suffix) {
      return relative.size() >= suffix.size() &&
             relative.substr(relative.size() - suffix.size()) == suffix;
    };
    const bool projection = ends_with(".E.weight") || ends_with(".F.weight");
    if (ends_with("norm.weight")) {
      Fill(value, 1.0f);
    } else if (ends_with("norm.bias")) {
      Fill(value, 0.0f);
    } else if (projection && config_.method == LinformerMethod::kLearnable) {
      // xavier_normal_ of Linear(n, k).
      const int64_t k = shape.shape.dim(0);
      FTX_RETURN_IF_ERROR(FillNormal(
          ctx, value, 0.0f, std::sqrt(2.0f / static_cast<float>(n + k)),
          {.seed = seed, .stream = NameStream(name)}));
    } else if (ends_with(".bias")) {
      // A bias follows its weight in ParamShapes.
      FTX_RETURN_IF_ERROR(FillUniformNamed(
          ctx, value, InvSqrt(fan_in(shapes[i - 1].shape)), seed, name));
    } else {
      FTX_RETURN_IF_ERROR(FillUniformNamed(
          ctx, value, InvSqrt(fan_in(shape.shape)), seed, name));
    }
  }
  return absl::OkStatus();
}

std::vector<FixedProjection> Linformer::FixedProjections() {
  std::vector<FixedProjection> fixed;
  if (config_.method != LinformerMethod::kNoParams) return fixed;
  for (ProjectionSlot& slot : slots_) {
    fixed.push_back({slot.name, slot.fixed.view<float>()});
  }
  return fixed;
}

absl::Status Linformer::Bind(ParamStore& store, absl::string_view prefix) {
  const bool no_params = config_.method == LinformerMethod::kNoParams;
  const bool layerwise =
      config_.parameter_sharing == LinformerParameterSharing::kLayerwise;
  int64_t first_slot = 0;
  for (auto& sublayer : sublayers_) {
    FTX_RETURN_IF_ERROR(sublayer->Bind(store, prefix));
    LinformerAttention* attention = sublayer->attention();
    if (attention == nullptr) continue;
    const bool has_bias = attention->ProjectionBiasShape().NumElements() > 0;
    std::vector<LinformerProjection> projections;
    for (int i = 0; i < attention->NumProjections(); ++i) {
      ProjectionSlot& slot = slots_[first_slot + i];
      LinformerProjection projection;
      if (no_params) {
        projection.weight = slot.fixed.view<float>();
      } else {
        FTX_ASSIGN_OR_RETURN(ParamView weight,
                             Resolve(store, prefix, slot.name + ".weight"));
        projection.weight = weight.value;
        projection.d_weight = weight.grad;
        if (has_bias) {
          FTX_ASSIGN_OR_RETURN(ParamView bias,
                               Resolve(store, prefix, slot.name + ".bias"));
          projection.bias = bias.value;
          projection.d_bias = bias.grad;
        }
      }
      projections.push_back(projection);
    }
    FTX_RETURN_IF_ERROR(attention->BindProjections(projections));
    if (!layerwise) first_slot += attention->NumProjections();
  }
  return absl::OkStatus();
}

absl::Status Linformer::Forward(const Context& ctx, ParamStore& store,
                                absl::string_view prefix,
                                TensorView<const float> x,
                                const LinformerInputs& inputs,
                                TensorView<float> y, bool save_for_backward) {
  constexpr char kOp[] = "Linformer";
  saved_ = false;
  if (ctx.device().type != DeviceType::kCpu) {
    return absl::UnimplementedError(
        absl::StrCat(kOp, ": only the CPU path exists so far"));
  }
  if (x.rank() != 3 || !x.IsContiguous()) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": x must be a contiguous [B, n, C] view, got ",
                     x.shape().ToString()));
  }
  const int64_t B = x.dim(0), n = config_.input_size, C = config_.channels;
  if (x.dim(1) != n) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": x has length ", x.dim(1), " but input_size is ", n,
                     " (pad to input_size, e.g. with layers/padder.h)"));
  }
  if (x.dim(2) != C) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": x has ", x.dim(2), " channels, expected channels ", C));
  }
  if (y.shape() != x.shape() || !y.IsContiguous()) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": y must be a contiguous ", x.shape().ToString(),
                     " view, got ", y.shape().ToString()));
  }
  const bool has_embeddings = !IsAbsent(inputs.embeddings);
  if (config_.decoder_mode != has_embeddings) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": embeddings ",
                     config_.decoder_mode ? "are required in decoder_mode"
                                          : "need decoder_mode"));
  }
  if (has_embeddings && (inputs.embeddings.shape() != x.shape() ||
                         !inputs.embeddings.IsContiguous())) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": embeddings must be a contiguous view of x's shape ",
        x.shape().ToString(), ", got ", inputs.embeddings.shape().ToString()));
  }
  FTX_RETURN_IF_ERROR(
      inputs.input_lengths.Validate(kOp, "input_lengths", B, n));
  FTX_RETURN_IF_ERROR(
      inputs.embeddings_lengths.Validate(kOp, "embeddings_lengths", B, n));
  FTX_RETURN_IF_ERROR(Bind(store, prefix));
  last_inputs_ = inputs;
  const int64_t count = num_sublayers();
  activations_.resize(count + 1);
  for (int64_t s = 0; s < count; ++s) {
    FTX_RETURN_IF_ERROR(EnsureTensor(
        activations_[s], {B, n, sublayers_[s]->in()}, ctx.device()));
  }
  FTX_RETURN_IF_ERROR(
      EnsureTensor(activations_[count], {B, n, C}, ctx.device()));
  std::memcpy(activations_[0].data<float>(), x.data(),
              sizeof(float) * x.NumElements());
  const bool checkpoint =
      config_.checkpoint_level != LinformerCheckpointLevel::kC0;
  for (int64_t s = 0; s < count; ++s) {
    sublayers_[s]->SetCall(&last_inputs_, {});
    Block& block = checkpoint ? static_cast<Block&>(*recompute_[s])
                              : static_cast<Block&>(*sublayers_[s]);
    FTX_RETURN_IF_ERROR(block.Forward(
        ctx, activations_[s].view<float>(), activations_[s + 1].view<float>(),
        save_for_backward ? &caches_[s] : nullptr));
  }
  std::memcpy(y.data(), activations_[count].data<float>(),
              sizeof(float) * y.NumElements());
  last_x_ = x;
  saved_ = save_for_backward;
  return absl::OkStatus();
}

absl::Status Linformer::Backward(const Context& ctx, ParamStore& store,
                                 absl::string_view prefix,
                                 TensorView<const float> d_y,
                                 TensorView<float> d_x,
                                 TensorView<float> d_embeddings) {
  constexpr char kOp[] = "LinformerBackward";
  if (!saved_) {
    return absl::FailedPreconditionError(
        absl::StrCat(kOp, ": needs a Forward with save_for_backward"));
  }
  const Shape shape = last_x_.shape();
  for (const auto& [name, view] :
       {std::pair<const char*, TensorView<const float>>{"d_y", d_y},
        {"d_x", d_x}}) {
    if (view.shape() != shape || !view.IsContiguous()) {
      return absl::InvalidArgumentError(absl::StrCat(
          kOp, ": ", name, " must be a contiguous ", shape.ToString(),
          " view, got ", view.shape().ToString()));
    }
  }
  const bool want_embeddings = !IsAbsent(d_embeddings);
  if (want_embeddings &&
      (!config_.decoder_mode || d_embeddings.shape() != shape ||
       !d_embeddings.IsContiguous())) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": d_embeddings must be empty, or (decoder_mode) a contiguous ",
        shape.ToString(), " view"));
  }
  FTX_RETURN_IF_ERROR(Bind(store, prefix));
  if (want_embeddings) Fill(d_embeddings, 0.0f);
  const int64_t B = shape.dim(0), n = shape.dim(1);
  int64_t widest = config_.channels;
  for (const auto& sublayer : sublayers_) {
    widest = std::max({widest, sublayer->in(), sublayer->out()});
  }
  FTX_RETURN_IF_ERROR(EnsureTensor(d_current_, {B * n * widest}, ctx.device()));
  FTX_RETURN_IF_ERROR(EnsureTensor(d_next_, {B * n * widest}, ctx.device()));
  std::memcpy(d_next_.data<float>(), d_y.data(),
              sizeof(float) * d_y.NumElements());
  const bool checkpoint =
      config_.checkpoint_level != LinformerCheckpointLevel::kC0;
  for (int64_t s = num_sublayers() - 1; s >= 0; --s) {
    Sublayer& sublayer = *sublayers_[s];
    sublayer.SetCall(&last_inputs_, d_embeddings);
    Block& block = checkpoint ? static_cast<Block&>(*recompute_[s])
                              : static_cast<Block&>(sublayer);
    const TensorView<const float> d_out(d_next_.data<float>(),
                                        {B, n, sublayer.out()});
    const TensorView<float> d_in(d_current_.data<float>(),
                                 {B, n, sublayer.in()});
    FTX_RETURN_IF_ERROR(block.Backward(ctx, activations_[s].view<float>(),
                                       caches_[s], d_out, d_in));
    std::swap(d_current_, d_next_);
  }
  std::memcpy(d_x.data(), d_next_.data<float>(),
              sizeof(float) * d_x.NumElements());
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// LinformerLM

LinformerConfig LinformerLMConfig::LanguageModelStackDefaults() {
  LinformerConfig config;
  config.dim_k = 64;
  config.dim_ff = 1024;
  config.dropout_ff = 0.1f;
  config.nhead = 4;
  config.depth = 2;
  config.dropout = 0.05f;
  return config;
}

absl::Status ValidateLinformerLMConfig(const LinformerLMConfig& config) {
  if (config.num_tokens < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "LinformerLMConfig.num_tokens must be >= 1, got ", config.num_tokens));
  }
  if (!(config.dropout_tokens >= 0.0f && config.dropout_tokens < 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("LinformerLMConfig.dropout_tokens must be in [0, 1), got ",
                     config.dropout_tokens));
  }
  const int64_t emb =
      config.emb_dim > 0 ? config.emb_dim : config.linformer.channels;
  if (config.emb_dim < 0 || emb % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "LinformerLMConfig.emb_dim (or channels) must be even and >= 1 (the "
        "[sin | cos] positions), got ",
        emb));
  }
  return ValidateLinformerConfig(config.linformer);
}

absl::StatusOr<std::unique_ptr<LinformerLM>> LinformerLM::Create(
    const LinformerLMConfig& config) {
  FTX_RETURN_IF_ERROR(ValidateLinformerLMConfig(config));
  FTX_ASSIGN_OR_RETURN(auto linformer, Linformer::Create(config.linformer));
  return std::unique_ptr<LinformerLM>(
      new LinformerLM(config, std::move(linformer)));
}

int64_t LinformerLM::emb_dim() const {
  return config_.emb_dim > 0 ? config_.emb_dim : config_.linformer.channels;
}

int64_t LinformerLM::output_dim() const {
  return config_.return_emb ? emb_dim() : config_.num_tokens;
}

std::string LinformerLM::linformer_prefix() const {
  return projects() ? "linformer.fn." : "linformer.";
}

std::vector<ParamShape> LinformerLM::ParamShapes() const {
  const int64_t E = emb_dim(), C = config_.linformer.channels,
                V = config_.num_tokens;
  std::vector<ParamShape> shapes = {{"to_token_emb.weight", {V, E}}};
  for (ParamShape& shape :
       WithPrefix(linformer_prefix(), linformer_->ParamShapes())) {
    shapes.push_back(std::move(shape));
  }
  if (projects()) {
    shapes.push_back({"linformer.project_in.weight", {C, E}});
    shapes.push_back({"linformer.project_in.bias", {C}});
    shapes.push_back({"linformer.project_out.weight", {E, C}});
    shapes.push_back({"linformer.project_out.bias", {E}});
  }
  if (!config_.return_emb) {
    shapes.push_back({"to_logits.weight", {V, E}});
    shapes.push_back({"to_logits.bias", {V}});
  }
  return shapes;
}

std::vector<std::pair<std::string, std::string>>
LinformerLM::SharedProjectionAliases() const {
  std::vector<std::pair<std::string, std::string>> aliases;
  for (const auto& [alias, name] : linformer_->SharedProjectionAliases()) {
    aliases.push_back({linformer_prefix() + alias, linformer_prefix() + name});
  }
  return aliases;
}

absl::Status LinformerLM::InitParams(const Context& ctx, ParamStore& store,
                                     absl::string_view prefix) const {
  const uint64_t seed = config_.linformer.seed;
  FTX_RETURN_IF_ERROR(linformer_->InitParams(
      ctx, store, absl::StrCat(prefix, linformer_prefix())));
  const std::string emb = absl::StrCat(prefix, "to_token_emb.weight");
  FTX_ASSIGN_OR_RETURN(TensorView<float> table, store.Value(emb));
  FTX_RETURN_IF_ERROR(FillNormal(ctx, table, 0.0f, 1.0f,
                                 {.seed = seed, .stream = NameStream(emb)}));
  for (const char* linear :
       {"linformer.project_in", "linformer.project_out", "to_logits"}) {
    const std::string weight = absl::StrCat(prefix, linear, ".weight");
    if (!store.Contains(weight)) continue;
    FTX_ASSIGN_OR_RETURN(TensorView<float> w, store.Value(weight));
    FTX_ASSIGN_OR_RETURN(TensorView<float> b,
                         store.Value(absl::StrCat(prefix, linear, ".bias")));
    const float bound = InvSqrt(w.dim(1));
    FTX_RETURN_IF_ERROR(FillUniformNamed(ctx, w, bound, seed, weight));
    FTX_RETURN_IF_ERROR(
        FillUniformNamed(ctx, b, bound, seed, absl::StrCat(weight, ".bias")));
  }
  return absl::OkStatus();
}

absl::Status LinformerLM::Forward(const Context& ctx, ParamStore& store,
                                  const LinformerLMInputs& inputs,
                                  TensorView<float> out, bool save_for_backward,
                                  absl::string_view prefix) {
  constexpr char kOp[] = "LinformerLM";
  saved_ = false;
  if (ctx.device().type != DeviceType::kCpu) {
    return absl::UnimplementedError(
        absl::StrCat(kOp, ": only the CPU path exists so far"));
  }
  const TensorView<const int32_t> tokens = inputs.tokens;
  const int64_t n = config_.linformer.input_size, E = emb_dim(),
                C = config_.linformer.channels, V = config_.num_tokens;
  if (tokens.rank() != 2 || !tokens.IsContiguous()) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": tokens must be a contiguous [B, n] view, got ",
                     tokens.shape().ToString()));
  }
  if (tokens.dim(1) != n) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": tokens have length ", tokens.dim(1), " but input_size is ", n,
        " (pad to input_size, e.g. with layers/padder.h)"));
  }
  const int64_t B = tokens.dim(0);
  if (out.shape() != Shape{B, n, output_dim()} || !out.IsContiguous()) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": out must be a contiguous ",
                     Shape{B, n, output_dim()}.ToString(), " view, got ",
                     out.shape().ToString()));
  }
  for (int64_t i = 0; i < B * n; ++i) {
    if (tokens.data()[i] < 0 || tokens.data()[i] >= V) {
      return absl::InvalidArgumentError(
          absl::StrCat(kOp, ": token ", tokens.data()[i], " at index ", i,
                       " is outside [0, num_tokens ", V, ")"));
    }
  }
  const std::string p(prefix);
  FTX_ASSIGN_OR_RETURN(TensorView<float> table,
                       store.Value(p + "to_token_emb.weight"));
  FTX_RETURN_IF_ERROR(EnsureTensor(embedded_, {B, n, E}, ctx.device()));
  FTX_RETURN_IF_ERROR(EnsureTensor(stack_out_, {B, n, C}, ctx.device()));
  FTX_RETURN_IF_ERROR(EnsureTensor(hidden_, {B, n, E}, ctx.device()));
  TensorView<float> embedded = embedded_.view<float>();
  for (int64_t i = 0; i < B * n; ++i) {
    std::memcpy(embedded.data() + i * E, table.data() + tokens.data()[i] * E,
                sizeof(float) * E);
  }
  FTX_RETURN_IF_ERROR(SinusoidalPositions({.dim = E, .base = 100000.0})
                          .Forward(ctx, 0, embedded));
  FTX_RETURN_IF_ERROR(MaybeDropout(ctx, config_.dropout_tokens, inputs.training,
                                   inputs.seed, kTokenDropoutStream, embedded));
  const LinformerInputs stack_inputs{inputs.embeddings, inputs.input_lengths,
                                     inputs.embeddings_lengths, inputs.training,
                                     inputs.seed};
  const std::string stack_prefix = p + linformer_prefix();
  if (projects()) {
    FTX_RETURN_IF_ERROR(EnsureTensor(projected_in_, {B, n, C}, ctx.device()));
    FTX_ASSIGN_OR_RETURN(TensorView<float> w_in,
                         store.Value(p + "linformer.project_in.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> b_in,
                         store.Value(p + "linformer.project_in.bias"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> w_out,
                         store.Value(p + "linformer.project_out.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> b_out,
                         store.Value(p + "linformer.project_out.bias"));
    FTX_RETURN_IF_ERROR(
        LinearForward(ctx, embedded, w_in, b_in, projected_in_.view<float>()));
    FTX_RETURN_IF_ERROR(linformer_->Forward(
        ctx, store, stack_prefix, projected_in_.view<float>(), stack_inputs,
        stack_out_.view<float>(), save_for_backward));
    FTX_RETURN_IF_ERROR(LinearForward(ctx, stack_out_.view<float>(), w_out,
                                      b_out, hidden_.view<float>()));
  } else {
    FTX_RETURN_IF_ERROR(linformer_->Forward(ctx, store, stack_prefix, embedded,
                                            stack_inputs, hidden_.view<float>(),
                                            save_for_backward));
  }
  if (config_.return_emb) {
    std::memcpy(out.data(), hidden_.data<float>(),
                sizeof(float) * out.NumElements());
  } else {
    FTX_ASSIGN_OR_RETURN(TensorView<float> w,
                         store.Value(p + "to_logits.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> b,
                         store.Value(p + "to_logits.bias"));
    FTX_RETURN_IF_ERROR(LinearForward(ctx, hidden_.view<float>(), w, b, out));
  }
  tokens_.assign(tokens.data(), tokens.data() + B * n);
  batch_ = B;
  last_inputs_ = inputs;
  saved_ = save_for_backward;
  return absl::OkStatus();
}

absl::Status LinformerLM::Backward(const Context& ctx, ParamStore& store,
                                   TensorView<const float> d_out,
                                   TensorView<float> d_embeddings,
                                   absl::string_view prefix) {
  constexpr char kOp[] = "LinformerLMBackward";
  if (!saved_) {
    return absl::FailedPreconditionError(
        absl::StrCat(kOp, ": needs a Forward with save_for_backward"));
  }
  const int64_t B = batch_, n = config_.linformer.input_size, E = emb_dim(),
                C = config_.linformer.channels;
  if (d_out.shape() != Shape{B, n, output_dim()} || !d_out.IsContiguous()) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": d_out must be a contiguous ",
                     Shape{B, n, output_dim()}.ToString(), " view, got ",
                     d_out.shape().ToString()));
  }
  const std::string p(prefix);
  FTX_RETURN_IF_ERROR(EnsureTensor(d_hidden_, {B, n, E}, ctx.device()));
  FTX_RETURN_IF_ERROR(EnsureTensor(d_embedded_, {B, n, E}, ctx.device()));
  TensorView<float> d_hidden = d_hidden_.view<float>();
  if (config_.return_emb) {
    std::memcpy(d_hidden.data(), d_out.data(),
                sizeof(float) * d_out.NumElements());
  } else {
    FTX_ASSIGN_OR_RETURN(ParamView w, Resolve(store, p, "to_logits.weight"));
    FTX_ASSIGN_OR_RETURN(ParamView b, Resolve(store, p, "to_logits.bias"));
    FTX_RETURN_IF_ERROR(LinearBackward(ctx, hidden_.view<float>(), w.value,
                                       d_out, d_hidden, w.grad, b.grad));
  }
  const std::string stack_prefix = p + linformer_prefix();
  TensorView<float> d_embedded = d_embedded_.view<float>();
  if (projects()) {
    FTX_RETURN_IF_ERROR(EnsureTensor(d_stack_out_, {B, n, C}, ctx.device()));
    FTX_RETURN_IF_ERROR(EnsureTensor(d_projected_in_, {B, n, C}, ctx.device()));
    FTX_ASSIGN_OR_RETURN(ParamView w_in,
                         Resolve(store, p, "linformer.project_in.weight"));
    FTX_ASSIGN_OR_RETURN(ParamView b_in,
                         Resolve(store, p, "linformer.project_in.bias"));
    FTX_ASSIGN_OR_RETURN(ParamView w_out,
                         Resolve(store, p, "linformer.project_out.weight"));
    FTX_ASSIGN_OR_RETURN(ParamView b_out,
                         Resolve(store, p, "linformer.project_out.bias"));
    FTX_RETURN_IF_ERROR(
        LinearBackward(ctx, stack_out_.view<float>(), w_out.value, d_hidden,
                       d_stack_out_.view<float>(), w_out.grad, b_out.grad));
    FTX_RETURN_IF_ERROR(linformer_->Backward(
        ctx, store, stack_prefix, d_stack_out_.view<float>(),
        d_projected_in_.view<float>(), d_embeddings));
    FTX_RETURN_IF_ERROR(LinearBackward(ctx, embedded_.view<float>(), w_in.value,
                                       d_projected_in_.view<float>(),
                                       d_embedded, w_in.grad, b_in.grad));
  } else {
    FTX_RETURN_IF_ERROR(linformer_->Backward(ctx, store, stack_prefix, d_hidden,
                                             d_embedded, d_embeddings));
  }
  FTX_RETURN_IF_ERROR(MaybeDropout(ctx, config_.dropout_tokens,
                                   last_inputs_.training, last_inputs_.seed,
                                   kTokenDropoutStream, d_embedded));
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_table,
                       store.Grad(p + "to_token_emb.weight"));
  for (int64_t i = 0; i < B * n; ++i) {
    float* row = d_table.data() + static_cast<int64_t>(tokens_[i]) * E;
    const float* d_row = d_embedded.data() + i * E;
    for (int64_t e = 0; e < E; ++e) row[e] += d_row[e];
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// LinformerEncDec

absl::StatusOr<std::unique_ptr<LinformerEncDec>> LinformerEncDec::Create(
    const LinformerEncDecConfig& config) {
  LinformerLMConfig encoder = config.encoder;
  encoder.return_emb = true;
  LinformerLMConfig decoder = config.decoder;
  decoder.linformer.decoder_mode = true;
  decoder.linformer.causal = true;
  const int64_t encoder_emb =
      encoder.emb_dim > 0 ? encoder.emb_dim : encoder.linformer.channels;
  if (encoder.linformer.input_size != decoder.linformer.input_size ||
      encoder_emb != decoder.linformer.channels) {
    return absl::InvalidArgumentError(
        absl::StrCat("LinformerEncDecConfig: the encoder output [B, ",
                     encoder.linformer.input_size, ", ", encoder_emb,
                     "] must match the decoder's [B, input_size ",
                     decoder.linformer.input_size, ", channels ",
                     decoder.linformer.channels, "]"));
  }
  FTX_ASSIGN_OR_RETURN(auto encoder_lm, LinformerLM::Create(encoder));
  FTX_ASSIGN_OR_RETURN(auto decoder_lm, LinformerLM::Create(decoder));
  return std::unique_ptr<LinformerEncDec>(
      new LinformerEncDec(std::move(encoder_lm), std::move(decoder_lm)));
}

std::vector<ParamShape> LinformerEncDec::ParamShapes() const {
  std::vector<ParamShape> shapes =
      WithPrefix("encoder.", encoder_->ParamShapes());
  for (ParamShape& shape : WithPrefix("decoder.", decoder_->ParamShapes())) {
    shapes.push_back(std::move(shape));
  }
  return shapes;
}

std::vector<std::pair<std::string, std::string>>
LinformerEncDec::SharedProjectionAliases() const {
  std::vector<std::pair<std::string, std::string>> aliases;
  for (const char* half : {"encoder.", "decoder."}) {
    LinformerLM& lm = half[0] == 'e' ? *encoder_ : *decoder_;
    for (const auto& [alias, name] : lm.SharedProjectionAliases()) {
      aliases.push_back({half + alias, half + name});
    }
  }
  return aliases;
}

absl::Status LinformerEncDec::InitParams(const Context& ctx,
                                         ParamStore& store) const {
  FTX_RETURN_IF_ERROR(encoder_->InitParams(ctx, store, "encoder."));
  return decoder_->InitParams(ctx, store, "decoder.");
}

absl::Status LinformerEncDec::Forward(const Context& ctx, ParamStore& store,
                                      TensorView<const int32_t> source,
                                      TensorView<const int32_t> target,
                                      TensorView<float> logits,
                                      bool save_for_backward, bool training,
                                      uint64_t seed) {
  if (source.rank() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("LinformerEncDec: source must be [B, n], got ",
                     source.shape().ToString()));
  }
  const int64_t B = source.dim(0), n = source.dim(1);
  FTX_RETURN_IF_ERROR(
      EnsureTensor(encoded_, {B, n, encoder_->emb_dim()}, ctx.device()));
  FTX_RETURN_IF_ERROR(encoder_->Forward(
      ctx, store, {.tokens = source, .training = training, .seed = seed},
      encoded_.view<float>(), save_for_backward, "encoder."));
  LinformerLMInputs decoder_inputs;
  decoder_inputs.tokens = IsAbsent(target) ? source : target;
  decoder_inputs.embeddings = encoded_.view<float>();
  decoder_inputs.training = training;
  decoder_inputs.seed = seed + 1;
  return decoder_->Forward(ctx, store, decoder_inputs, logits,
                           save_for_backward, "decoder.");
}

absl::Status LinformerEncDec::Backward(const Context& ctx, ParamStore& store,
                                       TensorView<const float> d_logits) {
  FTX_RETURN_IF_ERROR(EnsureTensor(d_encoded_, encoded_.shape(), ctx.device()));
  FTX_RETURN_IF_ERROR(decoder_->Backward(ctx, store, d_logits,
                                         d_encoded_.view<float>(), "decoder."));
  return encoder_->Backward(ctx, store, d_encoded_.view<float>(), {},
                            "encoder.");
}

// ---------------------------------------------------------------------------
// JSON

absl::StatusOr<LinformerLMConfig> LinformerLMConfigFromJson(
    absl::string_view json) {
  const nlohmann::json root =
      nlohmann::json::parse(json.begin(), json.end(), nullptr, false);
  if (root.is_discarded() || !root.is_object()) {
    return absl::InvalidArgumentError(
        "LinformerLMConfigFromJson: the text is not a JSON object");
  }
  LinformerLMConfig config;
  LinformerConfig& s = config.linformer;
  auto bad = [](const std::string& key, absl::string_view expected) {
    return absl::InvalidArgumentError(absl::StrCat(
        "LinformerLMConfigFromJson: \"", key, "\" must be ", expected));
  };
  for (const auto& [key, value] : root.items()) {
    auto integer = [&](int64_t& field, bool nullable) -> absl::Status {
      if (nullable && value.is_null()) {
        field = 0;
        return absl::OkStatus();
      }
      if (!value.is_number_integer()) {
        return bad(key, nullable ? "an integer or null" : "an integer");
      }
      field = value.get<int64_t>();
      return absl::OkStatus();
    };
    auto number = [&](float& field) -> absl::Status {
      if (!value.is_number()) return bad(key, "a number");
      field = value.get<float>();
      return absl::OkStatus();
    };
    auto boolean = [&](bool& field) -> absl::Status {
      if (!value.is_boolean()) return bad(key, "true or false");
      field = value.get<bool>();
      return absl::OkStatus();
    };
    auto choice = [&](const std::vector<std::string>& names,
                      int& index) -> absl::Status {
      if (value.is_string()) {
        const std::string text = value.get<std::string>();
        for (size_t i = 0; i < names.size(); ++i) {
          if (names[i] == text) {
            index = static_cast<int>(i);
            return absl::OkStatus();
          }
        }
      }
      std::string expected = "one of";
      for (const std::string& name : names)
        absl::StrAppend(&expected, " \"", name, "\"");
      return bad(key, expected);
    };
    absl::Status status;
    int index = 0;
    if (key == "num_tokens") {
      status = integer(config.num_tokens, false);
    } else if (key == "input_size") {
      status = integer(s.input_size, false);
    } else if (key == "channels") {
      status = integer(s.channels, false);
    } else if (key == "dim_k") {
      status = integer(s.dim_k, false);
    } else if (key == "dim_ff") {
      status = integer(s.dim_ff, false);
    } else if (key == "dim_d") {
      status = integer(s.dim_d, true);
    } else if (key == "dropout_ff") {
      status = number(s.dropout_ff);
    } else if (key == "dropout_tokens") {
      status = number(config.dropout_tokens);
    } else if (key == "nhead") {
      status = integer(s.nhead, false);
    } else if (key == "depth") {
      status = integer(s.depth, false);
    } else if (key == "ff_intermediate") {
      status = integer(s.ff_intermediate, true);
    } else if (key == "dropout") {
      status = number(s.dropout);
    } else if (key == "activation") {
      status = choice({"gelu", "relu"}, index);
      s.activation = index == 0 ? Activation::kGelu : Activation::kRelu;
    } else if (key == "checkpoint_level") {
      status = choice({"C0", "C1", "C2"}, index);
      s.checkpoint_level = static_cast<LinformerCheckpointLevel>(index);
    } else if (key == "parameter_sharing") {
      status = choice({"none", "headwise", "kv", "layerwise"}, index);
      s.parameter_sharing = static_cast<LinformerParameterSharing>(index);
    } else if (key == "k_reduce_by_layer") {
      status = integer(s.k_reduce_by_layer, false);
    } else if (key == "full_attention") {
      status = boolean(s.full_attention);
    } else if (key == "include_ff") {
      status = boolean(s.include_ff);
    } else if (key == "w_o_intermediate_dim") {
      status = integer(s.w_o_intermediate_dim, true);
    } else if (key == "emb_dim") {
      status = integer(config.emb_dim, true);
    } else if (key == "return_emb") {
      status = boolean(config.return_emb);
    } else if (key == "decoder_mode") {
      status = boolean(s.decoder_mode);
    } else if (key == "causal") {
      status = boolean(s.causal);
    } else if (key == "method") {
      status = choice({"learnable", "convolution", "no_params"}, index);
      s.method = index == 0   ? LinformerMethod::kLearnable
                 : index == 1 ? LinformerMethod::kConvolution
                              : LinformerMethod::kNoParams;
    } else if (key == "seed") {
      int64_t seed = 0;
      status = integer(seed, false);
      s.seed = static_cast<uint64_t>(seed);
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("LinformerLMConfigFromJson: unknown key \"", key, "\""));
    }
    FTX_RETURN_IF_ERROR(status);
  }
  return config;
}

}  // namespace ftx
