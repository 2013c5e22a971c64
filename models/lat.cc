#include "models/lat.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <optional>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "attention/attention_layer.h"
#include "attention/full.h"
#include "attention/mixed_heads.h"
#include "attention/rotary.h"
#include "kernels/base/rng.h"
#include "kernels/base/status_macros.h"
#include "kernels/dropout/dropout.h"
#include "kernels/linear/linear.h"
#include "kernels/matmul/matmul.h"
#include "layers/absolute_positions.h"
#include "layers/axial_positions.h"
#include "layers/feed_forward.h"
#include "layers/product_key_memory.h"
#include "layers/recompute.h"
#include "layers/reversible.h"
#include "layers/shift_tokens.h"
#include "layers/sinusoidal_positions.h"
#include "nlohmann/json.hpp"

namespace ftx {
namespace {

// Philox stream of the dropout after to_out; the branch index is added.
constexpr uint64_t kOutDropoutStream = 0x1A7D0000;

absl::Status Bad(absl::string_view field, absl::string_view requirement,
                 const std::string& got) {
  return absl::InvalidArgumentError(absl::StrCat(
      "LatConfig.", field, " must be ", requirement, ", got ", got));
}

// A distinct initialisation seed per tensor of the model.
uint64_t SubSeed(uint64_t seed, uint64_t index) {
  return seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull * (index + 1);
}

absl::StatusOr<TensorView<float>> Buffer(Tensor& tensor, const Shape& shape) {
  FTX_RETURN_IF_ERROR(EnsureTensor(tensor, shape, Device::Cpu()));
  return tensor.view<float>();
}

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

void CopyInto(TensorView<const float> from, TensorView<float> to) {
  std::copy(from.data(), from.data() + from.NumElements(), to.data());
}

// y[r, :] += bias over the rows of y [..., C].
void AddBias(TensorView<const float> bias, TensorView<float> y) {
  const int64_t columns = bias.NumElements();
  const int64_t rows = y.NumElements() / columns;
  float* out = y.data();
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < columns; ++c)
      out[r * columns + c] += bias.data()[c];
  }
}

// d_bias += sum over the rows of d_y [..., C].
void AccumulateBiasGrad(TensorView<const float> d_y, TensorView<float> d_bias) {
  const int64_t columns = d_bias.NumElements();
  const int64_t rows = d_y.NumElements() / columns;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < columns; ++c) {
      d_bias.data()[c] += d_y.data()[r * columns + c];
    }
  }
}

absl::Status FillLinear(const Context& ctx, TensorView<float> value,
                        int64_t fan_in, uint64_t seed) {
  const float bound = 1.0f / std::sqrt(static_cast<float>(fan_in));
  return FillUniform(ctx, value, -bound, bound, {.seed = seed});
}

int64_t Lcm(int64_t a, int64_t b) { return a / std::gcd(a, b) * b; }

bool AnyLocalHeads(const LatConfig& config) {
  for (int64_t heads : config.n_local_attn_heads) {
    if (heads > 0) return true;
  }
  return false;
}

}  // namespace

int64_t LatPadToMultiple(const LatConfig& config) {
  return Lcm(config.causal ? std::max<int64_t>(config.blindspot_size, 1) : 1,
             AnyLocalHeads(config) ? config.local_attn_window_size : 1);
}

absl::Status ValidateLatConfig(const LatConfig& c) {
  if (c.num_tokens < 1)
    return Bad("num_tokens", ">= 1", absl::StrCat(c.num_tokens));
  if (c.dim < 1) return Bad("dim", ">= 1", absl::StrCat(c.dim));
  if (c.depth < 1) return Bad("depth", ">= 1", absl::StrCat(c.depth));
  if (c.max_seq_len < 1) {
    return Bad("max_seq_len", ">= 1", absl::StrCat(c.max_seq_len));
  }
  if (c.heads < 1) return Bad("heads", ">= 1", absl::StrCat(c.heads));
  if (c.dim_head < 1) return Bad("dim_head", ">= 1", absl::StrCat(c.dim_head));
  if (c.emb_dim < 0) return Bad("emb_dim", ">= 0", absl::StrCat(c.emb_dim));
  if (c.ff_chunks < 1)
    return Bad("ff_chunks", ">= 1", absl::StrCat(c.ff_chunks));
  const std::pair<const char*, float> dropouts[] = {
      {"ff_dropout", c.ff_dropout},
      {"attn_layer_dropout", c.attn_layer_dropout},
      {"attn_dropout", c.attn_dropout}};
  for (const auto& [name, p] : dropouts) {
    if (!(p >= 0.0f && p < 1.0f))
      return Bad(name, "in [0, 1)", absl::StrCat(p));
  }
  if (c.blindspot_size < 1) {
    return Bad("blindspot_size", ">= 1", absl::StrCat(c.blindspot_size));
  }
  if (c.local_attn_window_size < 1) {
    return Bad("local_attn_window_size", ">= 1",
               absl::StrCat(c.local_attn_window_size));
  }
  const size_t entries = c.n_local_attn_heads.size();
  if (entries != 1 && entries != static_cast<size_t>(c.depth)) {
    return Bad("n_local_attn_heads",
               absl::StrCat("one entry or depth (", c.depth, ") entries"),
               absl::StrCat(entries, " entries"));
  }
  for (int64_t heads : c.n_local_attn_heads) {
    if (heads < 0 || heads > c.heads) {
      return Bad("n_local_attn_heads",
                 absl::StrCat("in [0, heads = ", c.heads, "]"),
                 absl::StrCat(heads));
    }
  }
  if (AnyLocalHeads(c) && c.max_seq_len % c.local_attn_window_size != 0) {
    return Bad("max_seq_len",
               absl::StrCat("divisible by local_attn_window_size (",
                            c.local_attn_window_size, ") with local heads"),
               absl::StrCat(c.max_seq_len));
  }
  if (c.linformer_k < 0) {
    return Bad("linformer_k", ">= 0", absl::StrCat(c.linformer_k));
  }
  if (c.linformer_k > 0 && c.causal) {
    return Bad("linformer_k",
               "0 in a causal model (LAT: Linformer self "
               "attention can only be used for non-causal networks)",
               absl::StrCat(c.linformer_k));
  }
  if (c.linformer_k > 0 && c.dim % c.heads != 0) {
    return Bad("dim",
               absl::StrCat("divisible by heads (", c.heads,
                            ") with linformer_k (linformer asserts it)"),
               absl::StrCat(c.dim));
  }
  for (int64_t layer : c.pkm_layers) {
    if (layer < 1 || layer > c.depth) {
      return Bad("pkm_layers",
                 absl::StrCat("layer numbers in [1, depth = ", c.depth,
                              "] (LAT counts layers from 1)"),
                 absl::StrCat(layer));
    }
  }
  if (!c.pkm_layers.empty()) {
    if (c.pkm_heads < 1 || c.dim % c.pkm_heads != 0) {
      return Bad("pkm_heads",
                 absl::StrCat(">= 1 and divide dim (", c.dim,
                              ") with pkm_layers (PKM asserts it)"),
                 absl::StrCat(c.pkm_heads));
    }
    if (c.pkm_dim_head < 2 || c.pkm_dim_head % 2 != 0) {
      return Bad("pkm_dim_head", "even and >= 2 (two sub-keys of half of it)",
                 absl::StrCat(c.pkm_dim_head));
    }
    if (c.pkm_num_keys < 1) {
      return Bad("pkm_num_keys", ">= 1", absl::StrCat(c.pkm_num_keys));
    }
    if (c.pkm_topk < 1 || c.pkm_topk > c.pkm_num_keys) {
      return Bad("pkm_topk",
                 absl::StrCat("in [1, pkm_num_keys = ", c.pkm_num_keys, "]"),
                 absl::StrCat(c.pkm_topk));
    }
  }
  if (c.attend_axially && c.dim % c.heads != 0) {
    return Bad("dim",
               absl::StrCat("divisible by heads (", c.heads,
                            ") with attend_axially (LAT's axial "
                            "SelfAttention uses dim / heads per head)"),
               absl::StrCat(c.dim));
  }
  if (c.attend_axially && c.use_rotary_emb) {
    return Bad("use_rotary_emb",
               "false with attend_axially (LAT hands the [T, dim_head] rotary "
               "table to the folded [T / window, dim / heads] axial attention, "
               "which fails)",
               "true");
  }
  if (c.context_linformer_k < 0) {
    return Bad("context_linformer_k", ">= 0",
               absl::StrCat(c.context_linformer_k));
  }
  if (c.context_linformer_k > 0) {
    if (c.context_linformer_seq_len < 1) {
      return Bad("context_linformer_seq_len",
                 ">= 1 with context_linformer_k (LinformerContextSettings)",
                 absl::StrCat(c.context_linformer_seq_len));
    }
    if (c.dim % c.heads != 0) {
      return Bad("dim",
                 absl::StrCat("divisible by heads (", c.heads,
                              ") with context_linformer_k (linformer "
                              "asserts it)"),
                 absl::StrCat(c.dim));
    }
  }
  return absl::OkStatus();
}

// One branch of the stack: PreNorm(LayerNorm(dim), [PreShiftTokens,] fn).
// The branch reads its parameters from the ParamStore bound before each call
// and keeps its forward state itself: one Forward / Backward at a time.
class LatBranch final : public Block {
 public:
  enum class Kind {
    kSelfAttention,
    kLinformer,
    kContextAttention,
    kFeedForward,
    kContextFeedForward,  // also the FF of the attend_axially pair
    kProductKeyMemory,
    kAxialAttention,   // FoldAxially(window, SelfAttention(dim, heads, causal))
    kContextLinformer  // LinformerSelfAttention over the context
  };

  LatBranch(const LatConfig& config, Kind kind, int64_t layer, int64_t index,
            std::string relative_prefix)
      : config_(config),
        kind_(kind),
        layer_(layer),
        index_(index),
        relative_prefix_(std::move(relative_prefix)) {}

  absl::Status Build() {
    FTX_ASSIGN_OR_RETURN(LayerNormLayer norm,
                         LayerNormLayer::Create({.dim = config_.dim}));
    norm_.emplace(norm);
    const bool main_pair =
        kind_ == Kind::kSelfAttention || kind_ == Kind::kLinformer ||
        kind_ == Kind::kFeedForward || kind_ == Kind::kProductKeyMemory;
    if (config_.shift_tokens && main_pair) {
      FTX_ASSIGN_OR_RETURN(
          ShiftTokens shift,
          ShiftTokens::Create(
              {LinearAttentionTransformerShifts(config_.causal)}));
      shift_.emplace(shift);
    }
    switch (kind_) {
      case Kind::kSelfAttention:
      case Kind::kContextAttention:
      case Kind::kAxialAttention: {
        MixedLocalLinearOptions options;
        if (kind_ == Kind::kSelfAttention) {
          options.n_local_attn_heads = config_.LocalHeads(layer_);
          options.causal = config_.causal;
          options.blindspot_size = config_.blindspot_size;
        } else if (kind_ == Kind::kAxialAttention) {
          options.causal = config_.causal;  // LAT passes no blindspot_size
        }
        options.local_attn_window_size = config_.local_attn_window_size;
        options.attention_dropout = config_.attn_dropout;
        FTX_RETURN_IF_ERROR(ValidateMixedLocalLinearOptions(options));
        std::unique_ptr<QKTransform> rotary;
        if (config_.use_rotary_emb && kind_ == Kind::kSelfAttention) {
          FTX_ASSIGN_OR_RETURN(
              RotaryEmbedding embedding,
              RotaryEmbedding::Create({.rotary_dim = config_.dim_head,
                                       .layout = RotaryLayout::kInterleaved}));
          rotary = std::make_unique<RotaryEmbedding>(std::move(embedding));
        }
        FTX_ASSIGN_OR_RETURN(
            attention_,
            AttentionLayer::Create(
                {.d_model = config_.dim,
                 .n_heads = config_.heads,
                 .d_keys = HeadDim(),
                 .d_values = HeadDim(),
                 .bias = false},
                std::make_unique<MixedLocalLinearAttention>(options),
                std::move(rotary)));
        break;
      }
      case Kind::kLinformer:
      case Kind::kContextLinformer:
        full_.emplace(FullAttentionOptions{
            .softmax_temp =
                1.0f / std::sqrt(static_cast<float>(config_.dim_head)),
            .attention_dropout = config_.attn_dropout});
        break;
      case Kind::kFeedForward:
      case Kind::kContextFeedForward: {
        FeedForwardConfig ff{.dim = config_.dim, .chunks = config_.ff_chunks};
        if (kind_ == Kind::kContextFeedForward) {
          ff.glu = config_.ff_glu;
          ff.glu_activated_half = GluActivatedHalf::kFirst;
          ff.dropout = config_.ff_dropout;
        }
        FTX_ASSIGN_OR_RETURN(FeedForward block, FeedForward::Create(ff));
        ff_.emplace(std::move(block));
        break;
      }
      case Kind::kProductKeyMemory: {
        FTX_ASSIGN_OR_RETURN(
            ProductKeyMemory pkm,
            ProductKeyMemory::Create(
                {.dim = config_.dim,
                 .heads = config_.pkm_heads,
                 .num_keys = config_.pkm_num_keys,
                 .topk = config_.pkm_topk,
                 .key_dim = config_.pkm_dim_head / 2,
                 .query_norm = PkmQueryNorm::kBatchNormRunning}));
        pkm_.emplace(std::move(pkm));
        break;
      }
    }
    return absl::OkStatus();
  }

  bool is_context_attention() const {
    return kind_ == Kind::kContextAttention || kind_ == Kind::kContextLinformer;
  }

  // Parameter names relative to the stack.
  std::vector<ParamShape> ParamShapes() const {
    const int64_t inner = config_.heads * HeadDim();
    const int64_t c = config_.dim;
    std::vector<ParamShape> shapes = {{NormName("weight"), {c}},
                                      {NormName("bias"), {c}}};
    auto add = [&](const std::string& name, Shape shape,
                   bool trainable = true) {
      shapes.push_back({FnName(name), shape, trainable});
    };
    switch (kind_) {
      case Kind::kLinformer:
      case Kind::kContextLinformer:
        add("proj_k", {LinformerSeqLen(), LinformerK()});
        add("proj_v", {LinformerSeqLen(), LinformerK()});
        [[fallthrough]];
      case Kind::kSelfAttention:
      case Kind::kContextAttention:
      case Kind::kAxialAttention:
        add("to_q.weight", {inner, c});
        add("to_k.weight", {inner, c});
        add("to_v.weight", {inner, c});
        add("to_out.weight", {c, inner});
        add("to_out.bias", {c});
        break;
      case Kind::kFeedForward:
      case Kind::kContextFeedForward: {
        const int64_t hidden = ff_->inner_dim();
        const int64_t in_rows = ff_->config().glu ? 2 * hidden : hidden;
        add("w1.weight", {in_rows, c});
        add("w1.bias", {in_rows});
        add("w2.weight", {c, hidden});
        add("w2.bias", {c});
        break;
      }
      case Kind::kProductKeyMemory:
        for (const ParamShape& shape : pkm_->ParamShapes()) {
          add(shape.name, shape.shape, shape.trainable);
        }
        break;
    }
    return shapes;
  }

  absl::Status InitParams(const Context& ctx, ParamStore& store,
                          const std::string& prefix, uint64_t& tensor_index) {
    Bind(&store, prefix, nullptr);
    FTX_ASSIGN_OR_RETURN(TensorView<float> weight,
                         store.Value(prefix + NormName("weight")));
    FTX_ASSIGN_OR_RETURN(TensorView<float> bias,
                         store.Value(prefix + NormName("bias")));
    FTX_RETURN_IF_ERROR(norm_->InitParams(weight, bias));
    const uint64_t seed = config_.seed;
    if (ff_.has_value()) {
      FTX_ASSIGN_OR_RETURN(FeedForwardTensors<float> views,
                           FeedForwardViews(false));
      return ff_->InitParams(ctx, SubSeed(seed, tensor_index++), views);
    }
    if (pkm_.has_value()) {
      FTX_ASSIGN_OR_RETURN(ProductKeyMemoryGrads views, PkmViews(false));
      return pkm_->InitParams(ctx, SubSeed(seed, tensor_index++), views);
    }
    if (kind_ == Kind::kLinformer || kind_ == Kind::kContextLinformer) {
      for (const char* name : {"proj_k", "proj_v"}) {
        FTX_ASSIGN_OR_RETURN(TensorView<float> value, Value(name));
        FTX_RETURN_IF_ERROR(FillLinear(ctx, value, LinformerK(),
                                       SubSeed(seed, tensor_index++)));
      }
    }
    const int64_t inner = config_.heads * HeadDim();
    for (const char* name : {"to_q.weight", "to_k.weight", "to_v.weight"}) {
      FTX_ASSIGN_OR_RETURN(TensorView<float> value, Value(name));
      FTX_RETURN_IF_ERROR(
          FillLinear(ctx, value, config_.dim, SubSeed(seed, tensor_index++)));
    }
    for (const char* name : {"to_out.weight", "to_out.bias"}) {
      FTX_ASSIGN_OR_RETURN(TensorView<float> value, Value(name));
      FTX_RETURN_IF_ERROR(
          FillLinear(ctx, value, inner, SubSeed(seed, tensor_index++)));
    }
    return absl::OkStatus();
  }

  // Sets the store, the full name prefix and the per-call inputs (null for
  // parameter initialisation).
  void Bind(ParamStore* store, const std::string& prefix,
            const LatStackInputs* inputs) {
    store_ = store;
    prefix_ = prefix + relative_prefix_;
    inputs_ = inputs;
  }

  TensorView<const float> d_context() const { return d_context_.view<float>(); }

  absl::Status Forward(const Context& ctx, TensorView<const float> x,
                       TensorView<float> y, BlockCache* cache) override {
    FTX_ASSIGN_OR_RETURN(TensorView<float> normed, Buffer(normed_, x.shape()));
    FTX_ASSIGN_OR_RETURN(TensorView<float> norm_weight,
                         Value(NormSuffix("weight")));
    FTX_ASSIGN_OR_RETURN(TensorView<float> norm_bias,
                         Value(NormSuffix("bias")));
    FTX_RETURN_IF_ERROR(
        norm_->Forward(ctx, norm_weight, norm_bias, x, normed, &norm_cache_));
    TensorView<const float> h = normed;
    if (shift_.has_value()) {
      FTX_ASSIGN_OR_RETURN(TensorView<float> shifted,
                           Buffer(shifted_, x.shape()));
      FTX_RETURN_IF_ERROR(shift_->Forward(ctx, normed, LengthMask(), shifted));
      h = shifted;
    }
    const bool save = cache != nullptr;
    switch (kind_) {
      case Kind::kSelfAttention:
      case Kind::kContextAttention:
        FTX_RETURN_IF_ERROR(AttentionForward(ctx, h, y, save));
        break;
      case Kind::kLinformer:
      case Kind::kContextLinformer:
        FTX_RETURN_IF_ERROR(LinformerForward(ctx, h, y, save));
        break;
      case Kind::kAxialAttention:
        FTX_RETURN_IF_ERROR(AxialForward(ctx, h, y, save));
        break;
      case Kind::kFeedForward:
      case Kind::kContextFeedForward: {
        FTX_ASSIGN_OR_RETURN(FeedForwardTensors<float> views,
                             FeedForwardViews(false));
        FTX_RETURN_IF_ERROR(ff_->Forward(ctx, ConstViews(views), h, Mode(), y,
                                         save ? &ff_cache_ : nullptr));
        break;
      }
      case Kind::kProductKeyMemory: {
        FTX_ASSIGN_OR_RETURN(ProductKeyMemoryGrads views, PkmViews(false));
        // Training mode normalises the queries with the batch statistics and
        // updates the running ones and the step counter in the store (LAT's
        // module.train()).
        ProductKeyMemoryTraining mode;
        if (inputs_ != nullptr && inputs_->training) {
          mode = {.training = true,
                  .running_mean = views.running_mean,
                  .running_var = views.running_var,
                  .num_batches_tracked = views.num_batches_tracked};
        }
        FTX_RETURN_IF_ERROR(pkm_->Forward(ctx, ConstViews(views), h, y,
                                          save ? &pkm_cache_ : nullptr, mode));
        break;
      }
    }
    return absl::OkStatus();
  }

  absl::Status Backward(const Context& ctx, TensorView<const float> x,
                        const BlockCache& cache, TensorView<const float> d_y,
                        TensorView<float> d_x) override {
    const TensorView<const float> h =
        shift_.has_value() ? shifted_.view<float>() : normed_.view<float>();
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_h, Buffer(d_h_, x.shape()));
    switch (kind_) {
      case Kind::kSelfAttention:
      case Kind::kContextAttention:
        FTX_RETURN_IF_ERROR(AttentionBackward(ctx, h, d_y, d_h));
        break;
      case Kind::kLinformer:
      case Kind::kContextLinformer:
        FTX_RETURN_IF_ERROR(LinformerBackward(ctx, h, d_y, d_h));
        break;
      case Kind::kAxialAttention:
        FTX_RETURN_IF_ERROR(AxialBackward(ctx, h, d_y, d_h));
        break;
      case Kind::kFeedForward:
      case Kind::kContextFeedForward: {
        FTX_ASSIGN_OR_RETURN(FeedForwardTensors<float> views,
                             FeedForwardViews(false));
        FTX_ASSIGN_OR_RETURN(FeedForwardTensors<float> grads,
                             FeedForwardViews(true));
        FTX_RETURN_IF_ERROR(ff_->Backward(ctx, ConstViews(views), ff_cache_, h,
                                          d_y, d_h, grads));
        break;
      }
      case Kind::kProductKeyMemory: {
        FTX_ASSIGN_OR_RETURN(ProductKeyMemoryGrads views, PkmViews(false));
        FTX_ASSIGN_OR_RETURN(ProductKeyMemoryGrads grads, PkmViews(true));
        FTX_RETURN_IF_ERROR(pkm_->Backward(ctx, ConstViews(views), pkm_cache_,
                                           h, d_y, d_h, grads));
        break;
      }
    }
    TensorView<const float> d_normed = d_h;
    if (shift_.has_value()) {
      FTX_ASSIGN_OR_RETURN(TensorView<float> d_unshifted,
                           Buffer(d_unshifted_, x.shape()));
      FTX_RETURN_IF_ERROR(
          shift_->Backward(ctx, LengthMask(), d_h, d_unshifted));
      d_normed = d_unshifted;
    }
    FTX_ASSIGN_OR_RETURN(TensorView<float> norm_weight,
                         Value(NormSuffix("weight")));
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_norm_weight,
                         Grad(NormSuffix("weight")));
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_norm_bias,
                         Grad(NormSuffix("bias")));
    return norm_->Backward(ctx, norm_weight, norm_cache_, x, d_normed, d_x,
                           d_norm_weight, d_norm_bias);
  }

 private:
  std::string NormSuffix(const char* name) const {
    return absl::StrCat("norm.", name);
  }
  std::string NormName(const char* name) const {
    return relative_prefix_ + NormSuffix(name);
  }
  // "fn." (PreNorm) [+ "fn." (PreShiftTokens)] [+ "fn." (Chunk or
  // FoldAxially)] + name.
  std::string FnSuffix(const std::string& name) const {
    const bool chunked = kind_ == Kind::kFeedForward ||
                         kind_ == Kind::kContextFeedForward ||
                         kind_ == Kind::kAxialAttention;
    return absl::StrCat("fn.", shift_.has_value() ? "fn." : "",
                        chunked ? "fn." : "", name);
  }
  std::string FnName(const std::string& name) const {
    return relative_prefix_ + FnSuffix(name);
  }
  // `suffix` is "norm.*" or a name FnSuffix completes.
  absl::StatusOr<TensorView<float>> Value(const std::string& suffix) const {
    return store_->Value(prefix_ + Resolve(suffix));
  }
  absl::StatusOr<TensorView<float>> Grad(const std::string& suffix) const {
    return store_->Grad(prefix_ + Resolve(suffix));
  }
  std::string Resolve(const std::string& suffix) const {
    return suffix.rfind("norm.", 0) == 0 ? suffix : FnSuffix(suffix);
  }

  // The PKM's parameters (or their gradients) in ProductKeyMemory's
  // ParamShapes order. Its names ("norm.fn.weight", ...) are resolved under
  // the branch's fn, never as the PreNorm's norm. The running statistics and
  // the step counter are buffers: their gradient views are the values
  // (Backward does not write them).
  absl::StatusOr<ProductKeyMemoryGrads> PkmViews(bool gradients) const {
    auto view = [&](const char* name, bool buffer) {
      const std::string full = prefix_ + FnSuffix(name);
      return gradients && !buffer ? store_->Grad(full) : store_->Value(full);
    };
    ProductKeyMemoryGrads t;
    FTX_ASSIGN_OR_RETURN(t.to_queries, view("to_queries.weight", false));
    FTX_ASSIGN_OR_RETURN(t.norm_weight, view("norm.fn.weight", false));
    FTX_ASSIGN_OR_RETURN(t.norm_bias, view("norm.fn.bias", false));
    FTX_ASSIGN_OR_RETURN(t.keys, view("keys", false));
    FTX_ASSIGN_OR_RETURN(t.values, view("values.weight", false));
    FTX_ASSIGN_OR_RETURN(t.running_mean, view("norm.fn.running_mean", true));
    FTX_ASSIGN_OR_RETURN(t.running_var, view("norm.fn.running_var", true));
    FTX_ASSIGN_OR_RETURN(t.num_batches_tracked,
                         view("norm.fn.num_batches_tracked", true));
    return t;
  }
  static ProductKeyMemoryParams ConstViews(const ProductKeyMemoryGrads& v) {
    return {v.to_queries, v.norm_weight,  v.norm_bias,   v.keys,
            v.values,     v.running_mean, v.running_var, v.num_batches_tracked};
  }

  FeedForwardMode Mode() const {
    return {.training = inputs_ != nullptr && inputs_->training,
            .seed = inputs_ != nullptr ? SubSeed(inputs_->seed, index_) : 0};
  }

  absl::StatusOr<FeedForwardTensors<float>> FeedForwardViews(
      bool gradients) const {
    auto view = [&](const char* name) {
      return gradients ? Grad(name) : Value(name);
    };
    FeedForwardTensors<float> t;
    FTX_ASSIGN_OR_RETURN(t.in_weight, view("w1.weight"));
    FTX_ASSIGN_OR_RETURN(t.in_bias, view("w1.bias"));
    FTX_ASSIGN_OR_RETURN(t.out_weight, view("w2.weight"));
    FTX_ASSIGN_OR_RETURN(t.out_bias, view("w2.bias"));
    return t;
  }
  static FeedForwardParams ConstViews(const FeedForwardTensors<float>& v) {
    return {v.in_weight, v.in_bias,    v.norm_weight,
            v.norm_bias, v.out_weight, v.out_bias};
  }

  template <typename Views>
  absl::StatusOr<Views> AttentionViews(bool gradients) const {
    auto view = [&](const char* name) {
      return gradients ? Grad(name) : Value(name);
    };
    Views views;
    FTX_ASSIGN_OR_RETURN(views.query_weight, view("to_q.weight"));
    FTX_ASSIGN_OR_RETURN(views.key_weight, view("to_k.weight"));
    FTX_ASSIGN_OR_RETURN(views.value_weight, view("to_v.weight"));
    FTX_ASSIGN_OR_RETURN(views.out_weight, view("to_out.weight"));
    return views;
  }

  // Per-head width: LAT's axial SelfAttention gets no dim_head.
  int64_t HeadDim() const {
    return kind_ == Kind::kAxialAttention ? config_.dim / config_.heads
                                          : config_.dim_head;
  }
  int64_t LinformerK() const {
    return kind_ == Kind::kContextLinformer ? config_.context_linformer_k
                                            : config_.linformer_k;
  }
  // Rows of proj_k / proj_v: the longest key / value sequence.
  int64_t LinformerSeqLen() const {
    return kind_ == Kind::kContextLinformer ? config_.context_linformer_seq_len
                                            : config_.max_seq_len;
  }

  AttentionLayerMasks Masks() const {
    AttentionLayerMasks masks;
    if (inputs_ != nullptr) {
      masks.key_lengths = kind_ == Kind::kContextAttention
                              ? inputs_->context_lengths
                              : inputs_->lengths;
      if (kind_ == Kind::kAxialAttention && !masks.key_lengths.full()) {
        // FoldAxially folds a length-L mask of position t = j * window + c
        // into a prefix of ceil((L - c) / window) positions of column c.
        const int64_t window = config_.local_attn_window_size;
        std::vector<int64_t> folded;
        for (int64_t length : inputs_->lengths.lengths) {
          for (int64_t column = 0; column < window; ++column) {
            folded.push_back(
                std::max<int64_t>(0, (length - column + window - 1) / window));
          }
        }
        masks.key_lengths.lengths = std::move(folded);
      }
      masks.training = inputs_->training;
      masks.seed = SubSeed(inputs_->seed, index_);
    }
    return masks;
  }

  TensorView<const float> ContextView() const {
    return kind_ == Kind::kContextAttention && inputs_ != nullptr
               ? inputs_->context
               : TensorView<const float>();
  }

  // LinformerSelfAttention has no dropout after to_out (LAT hands it
  // attn_dropout, for the attention weights).
  bool OutDropoutActive() const {
    return inputs_ != nullptr && inputs_->training &&
           config_.attn_layer_dropout > 0.0f && kind_ != Kind::kLinformer &&
           kind_ != Kind::kContextLinformer;
  }
  DropoutOptions OutDropout() const {
    return {.p = config_.attn_layer_dropout,
            .seed = inputs_->seed,
            .stream = kOutDropoutStream + static_cast<uint64_t>(index_)};
  }

  // to_out bias and dropout(attn_layer_dropout) on y.
  absl::Status FinishOutput(const Context& ctx, TensorView<float> y) {
    FTX_ASSIGN_OR_RETURN(TensorView<float> out_bias, Value("to_out.bias"));
    AddBias(out_bias, y);
    if (OutDropoutActive())
      FTX_RETURN_IF_ERROR(Dropout(ctx, OutDropout(), y, y));
    return absl::OkStatus();
  }

  // d_y through the dropout into d_pre (returned), with the bias gradient.
  absl::StatusOr<TensorView<const float>> StartBackward(
      const Context& ctx, TensorView<const float> d_y) {
    TensorView<const float> d_pre = d_y;
    if (OutDropoutActive()) {
      FTX_ASSIGN_OR_RETURN(TensorView<float> d_dropped,
                           Buffer(d_dropped_, d_y.shape()));
      FTX_RETURN_IF_ERROR(Dropout(ctx, OutDropout(), d_y, d_dropped));
      d_pre = d_dropped;
    }
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_out_bias, Grad("to_out.bias"));
    AccumulateBiasGrad(d_pre, d_out_bias);
    return d_pre;
  }

  absl::Status AttentionForward(const Context& ctx, TensorView<const float> h,
                                TensorView<float> y, bool save) {
    FTX_ASSIGN_OR_RETURN(AttentionLayerParams params,
                         AttentionViews<AttentionLayerParams>(false));
    FTX_RETURN_IF_ERROR(
        attention_->Forward(ctx, params, h, ContextView(), Masks(), y,
                            save ? &attention_cache_ : nullptr));
    return FinishOutput(ctx, y);
  }

  absl::Status AttentionBackward(const Context& ctx, TensorView<const float> h,
                                 TensorView<const float> d_y,
                                 TensorView<float> d_h) {
    FTX_ASSIGN_OR_RETURN(TensorView<const float> d_pre,
                         StartBackward(ctx, d_y));
    FTX_ASSIGN_OR_RETURN(AttentionLayerParams params,
                         AttentionViews<AttentionLayerParams>(false));
    FTX_ASSIGN_OR_RETURN(AttentionLayerGrads grads,
                         AttentionViews<AttentionLayerGrads>(true));
    TensorView<float> d_context;
    const TensorView<const float> context = ContextView();
    if (kind_ == Kind::kContextAttention) {
      FTX_ASSIGN_OR_RETURN(d_context, Buffer(d_context_, context.shape()));
    }
    return attention_->Backward(ctx, params, h, context, Masks(),
                                attention_cache_, d_pre, d_h, d_context, grads);
  }

  // FoldAxially: from[b, j * window + c] <-> to[b * window + c, j] for
  // from [B, T, C] and to [B window, T / window, C] (unfold: the reverse).
  void Fold(TensorView<const float> from, TensorView<float> to,
            bool unfold) const {
    const int64_t window = config_.local_attn_window_size;
    const int64_t batch = unfold ? from.dim(0) / window : from.dim(0);
    const int64_t rows = unfold ? from.dim(1) : from.dim(1) / window;
    const int64_t c = config_.dim;
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t j = 0; j < rows; ++j) {
        for (int64_t column = 0; column < window; ++column) {
          const int64_t sequence = (b * rows + j) * window + column;
          const int64_t folded = (b * window + column) * rows + j;
          const float* source = from.data() + (unfold ? folded : sequence) * c;
          std::copy(source, source + c,
                    to.data() + (unfold ? sequence : folded) * c);
        }
      }
    }
  }

  absl::Status AxialForward(const Context& ctx, TensorView<const float> h,
                            TensorView<float> y, bool save) {
    const int64_t window = config_.local_attn_window_size;
    const int64_t batch = h.dim(0), length = h.dim(1);
    if (length % window != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "LinearAttentionTransformer: attend_axially folds the sequence into "
          "local_attn_window_size = ",
          window, " columns; the (padded) length ", length,
          " is not a multiple of it"));
    }
    const Shape folded_shape({batch * window, length / window, config_.dim});
    FTX_ASSIGN_OR_RETURN(TensorView<float> folded_h,
                         Buffer(axial_[0], folded_shape));
    FTX_ASSIGN_OR_RETURN(TensorView<float> folded_y,
                         Buffer(axial_[1], folded_shape));
    Fold(h, folded_h, /*unfold=*/false);
    FTX_ASSIGN_OR_RETURN(AttentionLayerParams params,
                         AttentionViews<AttentionLayerParams>(false));
    FTX_RETURN_IF_ERROR(
        attention_->Forward(ctx, params, folded_h, {}, Masks(), folded_y,
                            save ? &attention_cache_ : nullptr));
    Fold(folded_y, y, /*unfold=*/true);
    return FinishOutput(ctx, y);
  }

  absl::Status AxialBackward(const Context& ctx, TensorView<const float> h,
                             TensorView<const float> d_y,
                             TensorView<float> d_h) {
    FTX_ASSIGN_OR_RETURN(TensorView<const float> d_pre,
                         StartBackward(ctx, d_y));
    FTX_ASSIGN_OR_RETURN(AttentionLayerParams params,
                         AttentionViews<AttentionLayerParams>(false));
    FTX_ASSIGN_OR_RETURN(AttentionLayerGrads grads,
                         AttentionViews<AttentionLayerGrads>(true));
    const TensorView<const float> folded_h = axial_[0].view<float>();
    FTX_ASSIGN_OR_RETURN(TensorView<float> folded_d_y,
                         Buffer(axial_[1], folded_h.shape()));
    FTX_ASSIGN_OR_RETURN(TensorView<float> folded_d_h,
                         Buffer(axial_[2], folded_h.shape()));
    Fold(d_pre, folded_d_y, /*unfold=*/false);
    FTX_RETURN_IF_ERROR(attention_->Backward(ctx, params, folded_h, {}, Masks(),
                                             attention_cache_, folded_d_y,
                                             folded_d_h, {}, grads));
    Fold(folded_d_h, d_h, /*unfold=*/true);
    return absl::OkStatus();
  }

  // The keys / values input of a Linformer branch: the context or h.
  TensorView<const float> LinformerSource(TensorView<const float> h) const {
    return kind_ == Kind::kContextLinformer ? inputs_->context : h;
  }

  // LinformerSelfAttention (lucidrains linformer 0.2.3), see lat.h.
  absl::Status LinformerForward(const Context& ctx, TensorView<const float> h,
                                TensorView<float> y, bool save) {
    const int64_t batch = h.dim(0), length = h.dim(1);
    const int64_t heads = config_.heads, dh = config_.dim_head;
    const int64_t k = LinformerK();
    const TensorView<const float> source = LinformerSource(h);
    const int64_t kv_length = source.dim(1);
    if (kv_length > LinformerSeqLen()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "LinformerSelfAttention: the sequence length of the key / values ",
          "must be at most ",
          kind_ == Kind::kContextLinformer ? "context_linformer_seq_len"
                                           : "max_seq_len",
          " = ", LinformerSeqLen(), ", got ", kv_length));
    }
    FTX_ASSIGN_OR_RETURN(
        TensorView<float> q,
        Buffer(linformer_[0], Shape({batch, length, heads * dh})));
    FTX_ASSIGN_OR_RETURN(
        TensorView<float> keys,
        Buffer(linformer_[1], Shape({batch, kv_length, heads * dh})));
    FTX_ASSIGN_OR_RETURN(
        TensorView<float> values,
        Buffer(linformer_[2], Shape({batch, kv_length, heads * dh})));
    FTX_ASSIGN_OR_RETURN(TensorView<float> projected_keys,
                         Buffer(linformer_[3], Shape({batch, k, heads * dh})));
    FTX_ASSIGN_OR_RETURN(TensorView<float> projected_values,
                         Buffer(linformer_[4], Shape({batch, k, heads * dh})));
    FTX_ASSIGN_OR_RETURN(
        TensorView<float> attended,
        Buffer(linformer_[5], Shape({batch, length, heads * dh})));
    FTX_ASSIGN_OR_RETURN(TensorView<float> wq, Value("to_q.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> wk, Value("to_k.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> wv, Value("to_v.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> wo, Value("to_out.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> proj_k, Value("proj_k"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> proj_v, Value("proj_v"));
    FTX_RETURN_IF_ERROR(LinearForward(ctx, h, wq, {}, q));
    FTX_RETURN_IF_ERROR(LinearForward(ctx, source, wk, {}, keys));
    FTX_RETURN_IF_ERROR(LinearForward(ctx, source, wv, {}, values));
    // K' = P[:S]^T K per batch item: [k, S] x [S, H dh].
    FTX_RETURN_IF_ERROR(MatMul(ctx, proj_k.Slice(0, 0, kv_length), keys,
                               projected_keys, {.transpose_a = true}));
    FTX_RETURN_IF_ERROR(MatMul(ctx, proj_v.Slice(0, 0, kv_length), values,
                               projected_values, {.transpose_a = true}));
    const AttentionInputs inputs = LinformerInputs();
    FTX_RETURN_IF_ERROR(full_->Forward(
        ctx, inputs, attended.Reshape(Shape({batch, length, heads, dh})),
        save ? &full_cache_ : nullptr));
    FTX_RETURN_IF_ERROR(LinearForward(ctx, attended, wo, {}, y));
    return FinishOutput(ctx, y);
  }

  AttentionInputs LinformerInputs() const {
    const TensorView<const float> q = linformer_[0].view<float>();
    const int64_t batch = q.dim(0), length = q.dim(1);
    const int64_t heads = config_.heads, dh = config_.dim_head;
    const int64_t k = LinformerK();
    AttentionInputs inputs;
    inputs.queries = q.Reshape(Shape({batch, length, heads, dh}));
    inputs.keys =
        linformer_[3].view<float>().Reshape(Shape({batch, k, heads, dh}));
    inputs.values =
        linformer_[4].view<float>().Reshape(Shape({batch, k, heads, dh}));
    inputs.training = inputs_ != nullptr && inputs_->training;
    inputs.seed = inputs_ != nullptr ? SubSeed(inputs_->seed, index_) : 0;
    return inputs;
  }

  absl::Status LinformerBackward(const Context& ctx, TensorView<const float> h,
                                 TensorView<const float> d_y,
                                 TensorView<float> d_h) {
    FTX_ASSIGN_OR_RETURN(TensorView<const float> d_pre,
                         StartBackward(ctx, d_y));
    const int64_t batch = h.dim(0), length = h.dim(1);
    const int64_t heads = config_.heads, dh = config_.dim_head;
    const int64_t k = LinformerK();
    const TensorView<const float> source = LinformerSource(h);
    const int64_t kv_length = source.dim(1);
    const Shape rows({batch, length, heads * dh});
    const Shape kv_rows({batch, kv_length, heads * dh});
    const Shape projected({batch, k, heads * dh});
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_attended,
                         Buffer(linformer_grads_[0], rows));
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_q,
                         Buffer(linformer_grads_[1], rows));
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_keys,
                         Buffer(linformer_grads_[2], kv_rows));
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_values,
                         Buffer(linformer_grads_[3], kv_rows));
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_projected_keys,
                         Buffer(linformer_grads_[4], projected));
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_projected_values,
                         Buffer(linformer_grads_[5], projected));
    FTX_ASSIGN_OR_RETURN(TensorView<float> wq, Value("to_q.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> wk, Value("to_k.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> wv, Value("to_v.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> wo, Value("to_out.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> proj_k, Value("proj_k"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> proj_v, Value("proj_v"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_wq, Grad("to_q.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_wk, Grad("to_k.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_wv, Grad("to_v.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_wo, Grad("to_out.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_proj_k, Grad("proj_k"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_proj_v, Grad("proj_v"));
    FTX_RETURN_IF_ERROR(LinearBackward(ctx, linformer_[5].view<float>(), wo,
                                       d_pre, d_attended, d_wo, {}));
    const Shape heads_shape({batch, length, heads, dh});
    const Shape projected_heads({batch, k, heads, dh});
    FTX_RETURN_IF_ERROR(full_->Backward(
        ctx, LinformerInputs(), full_cache_, d_attended.Reshape(heads_shape),
        {.d_queries = d_q.Reshape(heads_shape),
         .d_keys = d_projected_keys.Reshape(projected_heads),
         .d_values = d_projected_values.Reshape(projected_heads)}));
    FTX_RETURN_IF_ERROR(MatMulBackward(
        ctx, proj_k.Slice(0, 0, kv_length), linformer_[1].view<float>(),
        d_projected_keys, d_proj_k.Slice(0, 0, kv_length), d_keys,
        {.transpose_a = true}, {.accumulate_a = true}));
    FTX_RETURN_IF_ERROR(MatMulBackward(
        ctx, proj_v.Slice(0, 0, kv_length), linformer_[2].view<float>(),
        d_projected_values, d_proj_v.Slice(0, 0, kv_length), d_values,
        {.transpose_a = true}, {.accumulate_a = true}));
    FTX_RETURN_IF_ERROR(LinearBackward(ctx, h, wq, d_q, d_h, d_wq, {}));
    // Keys and values come from the context (d_context_, =) or from h (+=).
    const bool context = kind_ == Kind::kContextLinformer;
    TensorView<float> d_source = d_h;
    if (context) {
      FTX_ASSIGN_OR_RETURN(d_source, Buffer(d_context_, source.shape()));
    }
    FTX_RETURN_IF_ERROR(LinearBackward(ctx, source, wk, d_keys, d_source, d_wk,
                                       {},
                                       {.accumulate_input_grad = !context}));
    return LinearBackward(ctx, source, wv, d_values, d_source, d_wv, {},
                          {.accumulate_input_grad = true});
  }

  LatConfig config_;
  Kind kind_;
  int64_t layer_;
  int64_t index_;
  std::string relative_prefix_;
  std::optional<LayerNormLayer> norm_;
  std::optional<ShiftTokens> shift_;
  std::unique_ptr<AttentionLayer> attention_;
  std::optional<FeedForward> ff_;
  std::optional<ProductKeyMemory> pkm_;
  std::optional<FullAttention> full_;
  // Bound per call.
  ParamStore* store_ = nullptr;
  std::string prefix_;
  const LatStackInputs* inputs_ = nullptr;
  // Forward state and backward scratch.
  Tensor normed_, shifted_;
  LayerNormCache norm_cache_;
  AttentionLayerCache attention_cache_;
  FeedForwardCache ff_cache_;
  ProductKeyMemoryCache pkm_cache_;
  AttentionCache full_cache_;
  // Linformer: q, keys, values, projected keys and values, attended.
  Tensor linformer_[6];
  Tensor linformer_grads_[6];
  // Axial: folded h, folded y (then folded d_y), folded d_h.
  Tensor axial_[3];
  Tensor d_h_, d_unshifted_, d_dropped_, d_context_;
};

LinearAttentionTransformer::LinearAttentionTransformer(const LatConfig& config)
    : config_(config) {}

LinearAttentionTransformer::~LinearAttentionTransformer() = default;

absl::StatusOr<std::unique_ptr<LinearAttentionTransformer>>
LinearAttentionTransformer::Create(const LatConfig& config) {
  FTX_RETURN_IF_ERROR(ValidateLatConfig(config));
  std::unique_ptr<LinearAttentionTransformer> stack(
      new LinearAttentionTransformer(config));
  FTX_RETURN_IF_ERROR(stack->Build());
  return stack;
}

absl::Status LinearAttentionTransformer::Build() {
  using Kind = LatBranch::Kind;
  int64_t pair = 0;
  auto add_pair = [&](int64_t layer, Kind f, Kind g) -> absl::Status {
    for (int side = 0; side < 2; ++side) {
      const std::string prefix =
          config_.reversible
              ? absl::StrCat("layers.blocks.", pair, side == 0 ? ".f" : ".g",
                             ".net.")
              : absl::StrCat("layers.layers.", pair, ".", side, ".");
      auto branch = std::make_unique<LatBranch>(
          config_, side == 0 ? f : g, layer,
          static_cast<int64_t>(branches_.size()), prefix);
      FTX_RETURN_IF_ERROR(branch->Build());
      branches_.push_back(std::move(branch));
    }
    ++pair;
    return absl::OkStatus();
  };
  for (int64_t layer = 0; layer < config_.depth; ++layer) {
    FTX_RETURN_IF_ERROR(add_pair(
        layer,
        config_.linformer_k > 0 ? Kind::kLinformer : Kind::kSelfAttention,
        config_.UsesPkm(layer) ? Kind::kProductKeyMemory : Kind::kFeedForward));
    if (config_.attend_axially) {
      FTX_RETURN_IF_ERROR(
          add_pair(layer, Kind::kAxialAttention, Kind::kContextFeedForward));
    }
    if (config_.receives_context) {
      FTX_RETURN_IF_ERROR(add_pair(layer,
                                   config_.context_linformer_k > 0
                                       ? Kind::kContextLinformer
                                       : Kind::kContextAttention,
                                   Kind::kContextFeedForward));
    }
  }
  if (config_.reversible) {
    std::vector<ReversiblePair> pairs;
    for (size_t i = 0; i < branches_.size(); i += 2) {
      pairs.push_back({branches_[i].get(), branches_[i + 1].get()});
    }
    FTX_ASSIGN_OR_RETURN(
        reversible_,
        ReversibleSequence::Create({.merge = ReversibleMerge::kMean,
                                    .memory = ReversibleMemory::kReconstruct},
                                   std::move(pairs)));
  }
  return absl::OkStatus();
}

std::vector<ParamShape> LinearAttentionTransformer::ParamShapes() const {
  std::vector<ParamShape> shapes;
  for (const auto& branch : branches_) {
    for (ParamShape& shape : branch->ParamShapes()) {
      shapes.push_back(std::move(shape));
    }
  }
  return shapes;
}

absl::Status LinearAttentionTransformer::InitParams(
    const Context& ctx, ParamStore& store, absl::string_view prefix) const {
  uint64_t tensor_index = 1000;
  for (const auto& branch : branches_) {
    FTX_RETURN_IF_ERROR(
        branch->InitParams(ctx, store, std::string(prefix), tensor_index));
  }
  return absl::OkStatus();
}

absl::Status LinearAttentionTransformer::BindBranches(
    ParamStore& store, absl::string_view prefix, const LatStackInputs& inputs) {
  inputs_ = inputs;
  prefix_ = std::string(prefix);
  store_ = &store;
  for (auto& branch : branches_) branch->Bind(&store, prefix_, &inputs_);
  return absl::OkStatus();
}

absl::Status LinearAttentionTransformer::Forward(
    const Context& ctx, ParamStore& store, absl::string_view prefix,
    TensorView<const float> x, const LatStackInputs& inputs,
    TensorView<float> y, bool save_for_backward) {
  saved_ = false;
  if (ctx.device().type == DeviceType::kCuda) {
    return absl::UnimplementedError(
        "LinearAttentionTransformer: CUDA is not supported");
  }
  if (x.rank() != 3 || x.dim(2) != config_.dim || !x.IsContiguous() ||
      x.data() == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "LinearAttentionTransformer: x must be a contiguous [B, T, dim = ",
        config_.dim, "] tensor"));
  }
  if (y.shape() != x.shape() || !y.IsContiguous() || y.data() == nullptr) {
    return absl::InvalidArgumentError(
        "LinearAttentionTransformer: y must be contiguous and shaped like x");
  }
  if (config_.receives_context) {
    const TensorView<const float>& c = inputs.context;
    if (c.rank() != 3 || c.dim(0) != x.dim(0) || c.dim(2) != config_.dim ||
        !c.IsContiguous() || c.data() == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "LinearAttentionTransformer: context must be a contiguous [B, S, "
          "dim = ",
          config_.dim, "] tensor with receives_context"));
    }
  } else if (IsGiven(inputs.context)) {
    return absl::InvalidArgumentError(
        "LinearAttentionTransformer: context given without receives_context");
  }
  FTX_RETURN_IF_ERROR(BindBranches(store, prefix, inputs));
  input_ = x;
  if (config_.reversible) {
    FTX_RETURN_IF_ERROR(reversible_->Forward(
        ctx, x, y, save_for_backward ? &reversible_cache_ : nullptr));
  } else {
    const size_t n = branches_.size();
    activations_.resize(n + 1);
    FTX_ASSIGN_OR_RETURN(TensorView<float> out, Buffer(branch_out_, x.shape()));
    for (size_t i = 0; i <= n; ++i) {
      FTX_RETURN_IF_ERROR(
          EnsureTensor(activations_[i], x.shape(), Device::Cpu()));
    }
    CopyInto(x, activations_[0].view<float>());
    BlockCache marker;
    for (size_t i = 0; i < n; ++i) {
      const TensorView<float> current = activations_[i].view<float>();
      FTX_RETURN_IF_ERROR(branches_[i]->Forward(
          ctx, current, out, save_for_backward ? &marker : nullptr));
      const TensorView<float> next = activations_[i + 1].view<float>();
      CopyInto(current, next);
      AddInto(ctx, next, out);
    }
    CopyInto(activations_[n].view<float>(), y);
  }
  saved_ = save_for_backward;
  return absl::OkStatus();
}

absl::Status LinearAttentionTransformer::Backward(const Context& ctx,
                                                  ParamStore& store,
                                                  TensorView<const float> d_y,
                                                  TensorView<float> d_x,
                                                  TensorView<float> d_context) {
  if (!saved_ || store_ != &store) {
    return absl::FailedPreconditionError(
        "LinearAttentionTransformer::Backward needs a saving Forward on the "
        "same store just before");
  }
  if (d_y.shape() != input_.shape() || d_x.shape() != input_.shape() ||
      !d_y.IsContiguous() || !d_x.IsContiguous()) {
    return absl::InvalidArgumentError(
        "LinearAttentionTransformer: d_y and d_x must be contiguous [B, T, "
        "dim] like Forward's x");
  }
  if (IsGiven(d_context) && d_context.shape() != inputs_.context.shape()) {
    return absl::InvalidArgumentError(
        "LinearAttentionTransformer: d_context must be shaped like the "
        "context");
  }
  if (config_.reversible) {
    FTX_RETURN_IF_ERROR(
        reversible_->Backward(ctx, input_, reversible_cache_, d_y, d_x));
  } else {
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_current,
                         Buffer(d_current_, input_.shape()));
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_branch,
                         Buffer(d_branch_, input_.shape()));
    CopyInto(d_y, d_current);
    const BlockCache marker;
    for (size_t i = branches_.size(); i-- > 0;) {
      FTX_RETURN_IF_ERROR(branches_[i]->Backward(
          ctx, activations_[i].view<float>(), marker, d_current, d_branch));
      AddInto(ctx, d_current, d_branch);
    }
    CopyInto(d_current, d_x);
  }
  if (IsGiven(d_context)) {
    std::fill(d_context.data(), d_context.data() + d_context.NumElements(),
              0.0f);
    for (const auto& branch : branches_) {
      if (branch->is_context_attention()) {
        AddInto(ctx, d_context, branch->d_context());
      }
    }
  }
  saved_ = false;
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// LinearAttentionTransformerLM.

absl::StatusOr<std::unique_ptr<LinearAttentionTransformerLM>>
LinearAttentionTransformerLM::Create(const LatConfig& config) {
  FTX_RETURN_IF_ERROR(ValidateLatConfig(config));
  if (config.return_embeddings && config.EmbDim() != config.dim) {
    return Bad("return_embeddings",
               "false when emb_dim != dim (LAT's final LayerNorm(emb_dim) "
               "would get dim features)",
               "true");
  }
  std::unique_ptr<LinearAttentionTransformerLM> model(
      new LinearAttentionTransformerLM(config));
  FTX_ASSIGN_OR_RETURN(model->transformer_,
                       LinearAttentionTransformer::Create(config));
  FTX_ASSIGN_OR_RETURN(LayerNormLayer norm,
                       LayerNormLayer::Create({.dim = config.EmbDim()}));
  model->norm_.emplace(norm);
  return model;
}

int64_t LinearAttentionTransformerLM::OutputDim() const {
  return config_.return_embeddings ? config_.EmbDim() : config_.num_tokens;
}

std::string LinearAttentionTransformerLM::StackPrefix() const {
  return config_.EmbDim() != config_.dim ? "transformer.fn." : "transformer.";
}

namespace {

// ceil(max_seq_len / window) x window, LAT's axial shape.
AxialPositions LatAxial(const LatConfig& c) {
  const int64_t window = c.local_attn_window_size;
  return AxialPositions(AxialPositionsConfig{
      .dim = c.EmbDim(),
      .shape = {(c.max_seq_len + window - 1) / window, window}});
}

AbsolutePositions LatAbsolute(const LatConfig& c) {
  return AbsolutePositions(AbsolutePositionsConfig{
      .max_seq_len = c.max_seq_len, .dim = c.EmbDim(), .scale = 1.0f});
}

}  // namespace

std::vector<ParamShape> LinearAttentionTransformerLM::ParamShapes() const {
  const LatConfig& c = config_;
  const int64_t e = c.EmbDim();
  std::vector<ParamShape> shapes = {{"token_emb.weight", {c.num_tokens, e}}};
  if (c.use_rotary_emb) {
    // Fixed tables: no parameters.
  } else if (c.use_axial_pos_emb) {
    const AxialPositions axial = LatAxial(c);
    shapes.push_back({"pos_emb.weights.0", axial.ParamShapes()[0].shape});
    shapes.push_back({"pos_emb.weights.1", axial.ParamShapes()[1].shape});
  } else {
    shapes.push_back({"pos_emb.emb.weight", {c.max_seq_len, e}});
  }
  for (ParamShape& shape :
       WithPrefix(StackPrefix(), transformer_->ParamShapes())) {
    shapes.push_back(std::move(shape));
  }
  if (e != c.dim) {
    shapes.push_back({"transformer.project_in.weight", {c.dim, e}});
    shapes.push_back({"transformer.project_in.bias", {c.dim}});
    if (!c.return_embeddings) {
      shapes.push_back({"transformer.project_out.weight", {e, c.dim}});
      shapes.push_back({"transformer.project_out.bias", {e}});
    }
  }
  shapes.push_back({"norm.weight", {e}});
  shapes.push_back({"norm.bias", {e}});
  if (!c.return_embeddings) {
    shapes.push_back({"out.weight", {c.num_tokens, e}});
    shapes.push_back({"out.bias", {c.num_tokens}});
  }
  return shapes;
}

absl::Status LinearAttentionTransformerLM::InitParams(const Context& ctx,
                                                      ParamStore& store) const {
  const LatConfig& c = config_;
  const int64_t e = c.EmbDim();
  uint64_t index = 0;
  FTX_ASSIGN_OR_RETURN(TensorView<float> token_emb,
                       store.Value("token_emb.weight"));
  FTX_RETURN_IF_ERROR(FillNormal(ctx, token_emb, 0.0f, 1.0f,
                                 {.seed = SubSeed(c.seed, index++)}));
  if (!c.use_rotary_emb && c.use_axial_pos_emb) {
    FTX_ASSIGN_OR_RETURN(TensorView<float> w0,
                         store.Value("pos_emb.weights.0"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> w1,
                         store.Value("pos_emb.weights.1"));
    FTX_RETURN_IF_ERROR(
        LatAxial(c).InitParams(ctx, w0, w1, SubSeed(c.seed, index++)));
  } else if (!c.use_rotary_emb) {
    FTX_ASSIGN_OR_RETURN(TensorView<float> weight,
                         store.Value("pos_emb.emb.weight"));
    FTX_RETURN_IF_ERROR(
        LatAbsolute(c).InitParams(ctx, weight, SubSeed(c.seed, index++)));
  }
  FTX_RETURN_IF_ERROR(transformer_->InitParams(ctx, store, StackPrefix()));
  auto linear = [&](const std::string& name, int64_t fan_in) -> absl::Status {
    for (const char* part : {".weight", ".bias"}) {
      FTX_ASSIGN_OR_RETURN(TensorView<float> value,
                           store.Value(absl::StrCat(name, part)));
      FTX_RETURN_IF_ERROR(
          FillLinear(ctx, value, fan_in, SubSeed(c.seed, index++)));
    }
    return absl::OkStatus();
  };
  if (e != c.dim) {
    FTX_RETURN_IF_ERROR(linear("transformer.project_in", e));
    if (!c.return_embeddings) {
      FTX_RETURN_IF_ERROR(linear("transformer.project_out", c.dim));
    }
  }
  FTX_ASSIGN_OR_RETURN(TensorView<float> norm_weight,
                       store.Value("norm.weight"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> norm_bias, store.Value("norm.bias"));
  FTX_RETURN_IF_ERROR(norm_->InitParams(norm_weight, norm_bias));
  if (!c.return_embeddings) FTX_RETURN_IF_ERROR(linear("out", e));
  return absl::OkStatus();
}

absl::Status LinearAttentionTransformerLM::Forward(const Context& ctx,
                                                   ParamStore& store,
                                                   const LatInputs& inputs,
                                                   TensorView<float> out,
                                                   bool save_for_backward) {
  saved_ = false;
  const LatConfig& c = config_;
  if (ctx.device().type == DeviceType::kCuda) {
    return absl::UnimplementedError(
        "LinearAttentionTransformerLM: CUDA is not supported");
  }
  const TensorView<const int32_t>& tokens = inputs.tokens;
  if (tokens.rank() != 2 || tokens.dim(0) < 1 || tokens.dim(1) < 1 ||
      !tokens.IsContiguous() || tokens.data() == nullptr ||
      tokens.device().type == DeviceType::kCuda) {
    return absl::InvalidArgumentError(
        "LinearAttentionTransformerLM: tokens must be a contiguous CPU [B, T] "
        "tensor with B, T >= 1");
  }
  const int64_t batch = tokens.dim(0), length = tokens.dim(1);
  const int64_t e = c.EmbDim();
  if (out.shape() != Shape({batch, length, OutputDim()}) ||
      !out.IsContiguous() || out.data() == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "LinearAttentionTransformerLM: out must be a contiguous [B = ", batch,
        ", T = ", length, ", ", OutputDim(), "] tensor"));
  }
  for (int64_t i = 0; i < batch * length; ++i) {
    if (tokens.data()[i] < 0 || tokens.data()[i] >= c.num_tokens) {
      return absl::InvalidArgumentError(absl::StrCat(
          "LinearAttentionTransformerLM: tokens must be in [0, num_tokens = ",
          c.num_tokens, "), got ", tokens.data()[i], " at index ", i));
    }
  }
  FTX_RETURN_IF_ERROR(inputs.lengths.Validate("LinearAttentionTransformerLM",
                                              "lengths", batch, length));
  const int64_t pad_to = c.autopad ? pad_to_multiple() : 1;
  const int64_t padded = (length + pad_to - 1) / pad_to * pad_to;
  if (padded > c.max_seq_len) {
    return absl::InvalidArgumentError(absl::StrCat(
        "LinearAttentionTransformerLM: the sequence length ", length,
        " (padded to ", padded, ") exceeds max_seq_len = ", c.max_seq_len));
  }
  LatStackInputs stack_inputs{.context = inputs.context,
                              .context_lengths = inputs.context_lengths,
                              .training = inputs.training,
                              .seed = inputs.seed};
  if (padded != length) {
    stack_inputs.lengths.lengths = inputs.lengths.full()
                                       ? std::vector<int64_t>(batch, length)
                                       : inputs.lengths.lengths;
  } else {
    stack_inputs.lengths = inputs.lengths;
  }
  if (c.receives_context && IsGiven(inputs.context)) {
    FTX_RETURN_IF_ERROR(inputs.context_lengths.Validate(
        "LinearAttentionTransformerLM", "context_lengths", batch,
        inputs.context.rank() == 3 ? inputs.context.dim(1) : 0));
  }

  batch_ = batch;
  length_ = length;
  padded_length_ = padded;
  tokens_.assign(batch * padded, 0);
  for (int64_t b = 0; b < batch; ++b) {
    std::copy(tokens.data() + b * length, tokens.data() + (b + 1) * length,
              tokens_.begin() + b * padded);
  }
  const Shape emb_shape({batch, padded, e});
  const Shape dim_shape({batch, padded, c.dim});
  FTX_ASSIGN_OR_RETURN(TensorView<float> embedded,
                       Buffer(embedded_, emb_shape));
  FTX_ASSIGN_OR_RETURN(TensorView<float> token_emb,
                       store.Value("token_emb.weight"));
  for (int64_t r = 0; r < batch * padded; ++r) {
    std::copy(token_emb.data() + tokens_[r] * e,
              token_emb.data() + (tokens_[r] + 1) * e, embedded.data() + r * e);
  }
  if (c.use_rotary_emb) {
    const SinusoidalPositions positions(
        {.dim = e, .max_seq_len = c.max_seq_len});
    FTX_RETURN_IF_ERROR(positions.Forward(ctx, 0, embedded));
  } else if (c.use_axial_pos_emb) {
    FTX_ASSIGN_OR_RETURN(TensorView<float> w0,
                         store.Value("pos_emb.weights.0"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> w1,
                         store.Value("pos_emb.weights.1"));
    FTX_RETURN_IF_ERROR(LatAxial(c).Forward(ctx, w0, w1, 0, embedded));
  } else {
    FTX_ASSIGN_OR_RETURN(TensorView<float> weight,
                         store.Value("pos_emb.emb.weight"));
    FTX_RETURN_IF_ERROR(LatAbsolute(c).Forward(ctx, weight, 0, embedded));
  }
  TensorView<const float> stack_in = embedded;
  if (e != c.dim) {
    FTX_ASSIGN_OR_RETURN(TensorView<float> projected,
                         Buffer(projected_in_, dim_shape));
    FTX_ASSIGN_OR_RETURN(TensorView<float> w,
                         store.Value("transformer.project_in.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> b,
                         store.Value("transformer.project_in.bias"));
    FTX_RETURN_IF_ERROR(LinearForward(ctx, embedded, w, b, projected));
    stack_in = projected;
  }
  FTX_ASSIGN_OR_RETURN(TensorView<float> stack_out,
                       Buffer(stack_out_, dim_shape));
  FTX_RETURN_IF_ERROR(transformer_->Forward(ctx, store, StackPrefix(), stack_in,
                                            stack_inputs, stack_out,
                                            save_for_backward));
  TensorView<const float> final_in = stack_out;
  if (e != c.dim) {
    FTX_ASSIGN_OR_RETURN(TensorView<float> projected,
                         Buffer(projected_out_, emb_shape));
    FTX_ASSIGN_OR_RETURN(TensorView<float> w,
                         store.Value("transformer.project_out.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> b,
                         store.Value("transformer.project_out.bias"));
    FTX_RETURN_IF_ERROR(LinearForward(ctx, stack_out, w, b, projected));
    final_in = projected;
  }
  FTX_ASSIGN_OR_RETURN(TensorView<float> normed, Buffer(normed_, emb_shape));
  FTX_ASSIGN_OR_RETURN(TensorView<float> norm_weight,
                       store.Value("norm.weight"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> norm_bias, store.Value("norm.bias"));
  FTX_RETURN_IF_ERROR(norm_->Forward(ctx, norm_weight, norm_bias, final_in,
                                     normed, &norm_cache_));
  const int64_t width = OutputDim();
  TensorView<float> full_out = out;
  if (padded != length) {
    FTX_ASSIGN_OR_RETURN(full_out,
                         Buffer(d_full_, Shape({batch, padded, width})));
  }
  if (c.return_embeddings) {
    CopyInto(normed, full_out);
  } else {
    FTX_ASSIGN_OR_RETURN(TensorView<float> w, store.Value("out.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> b, store.Value("out.bias"));
    FTX_RETURN_IF_ERROR(LinearForward(ctx, normed, w, b, full_out));
  }
  if (padded != length) {
    for (int64_t b = 0; b < batch; ++b) {
      std::copy(full_out.data() + b * padded * width,
                full_out.data() + (b * padded + length) * width,
                out.data() + b * length * width);
    }
  }
  context_ = inputs.context;
  saved_ = save_for_backward;
  return absl::OkStatus();
}

absl::Status LinearAttentionTransformerLM::Backward(
    const Context& ctx, ParamStore& store, TensorView<const float> d_out,
    TensorView<float> d_context) {
  if (!saved_) {
    return absl::FailedPreconditionError(
        "LinearAttentionTransformerLM::Backward needs a saving Forward just "
        "before");
  }
  saved_ = false;
  const LatConfig& c = config_;
  const int64_t batch = batch_, length = length_, padded = padded_length_;
  const int64_t e = c.EmbDim(), width = OutputDim();
  if (d_out.shape() != Shape({batch, length, width}) || !d_out.IsContiguous() ||
      d_out.data() == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "LinearAttentionTransformerLM: d_out must be a contiguous [", batch,
        ", ", length, ", ", width, "] tensor"));
  }
  if (IsGiven(d_context) && d_context.shape() != context_.shape()) {
    return absl::InvalidArgumentError(
        "LinearAttentionTransformerLM: d_context must be shaped like the "
        "context");
  }
  const Shape emb_shape({batch, padded, e});
  const Shape dim_shape({batch, padded, c.dim});
  TensorView<const float> d_full = d_out;
  if (padded != length) {
    FTX_ASSIGN_OR_RETURN(TensorView<float> buffer,
                         Buffer(d_full_, Shape({batch, padded, width})));
    std::fill(buffer.data(), buffer.data() + buffer.NumElements(), 0.0f);
    for (int64_t b = 0; b < batch; ++b) {
      std::copy(d_out.data() + b * length * width,
                d_out.data() + (b + 1) * length * width,
                buffer.data() + b * padded * width);
    }
    d_full = buffer;
  }
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_normed,
                       Buffer(d_normed_, emb_shape));
  if (c.return_embeddings) {
    CopyInto(d_full, d_normed);
  } else {
    FTX_ASSIGN_OR_RETURN(TensorView<float> w, store.Value("out.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_w, store.Grad("out.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_b, store.Grad("out.bias"));
    FTX_RETURN_IF_ERROR(LinearBackward(ctx, normed_.view<float>(), w, d_full,
                                       d_normed, d_w, d_b));
  }
  const bool projected = e != c.dim;
  const TensorView<const float> final_in =
      projected ? projected_out_.view<float>() : stack_out_.view<float>();
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_final_in,
                       Buffer(d_projected_out_, emb_shape));
  FTX_ASSIGN_OR_RETURN(TensorView<float> norm_weight,
                       store.Value("norm.weight"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_norm_weight,
                       store.Grad("norm.weight"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_norm_bias, store.Grad("norm.bias"));
  FTX_RETURN_IF_ERROR(norm_->Backward(ctx, norm_weight, norm_cache_, final_in,
                                      d_normed, d_final_in, d_norm_weight,
                                      d_norm_bias));
  // Backward of the emb_dim projection `name` (project_in / project_out):
  // d_input (=) from d_output, weight and bias gradients (+=).
  const auto projection_backward =
      [&](const char* name, TensorView<const float> input,
          TensorView<const float> d_output,
          TensorView<float> d_input) -> absl::Status {
    const std::string prefix = absl::StrCat("transformer.", name);
    FTX_ASSIGN_OR_RETURN(TensorView<float> w,
                         store.Value(absl::StrCat(prefix, ".weight")));
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_w,
                         store.Grad(absl::StrCat(prefix, ".weight")));
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_b,
                         store.Grad(absl::StrCat(prefix, ".bias")));
    return LinearBackward(ctx, input, w, d_output, d_input, d_w, d_b);
  };
  TensorView<const float> d_stack_out = d_final_in;
  if (projected) {
    FTX_ASSIGN_OR_RETURN(TensorView<float> buffer,
                         Buffer(d_stack_out_, dim_shape));
    FTX_RETURN_IF_ERROR(projection_backward(
        "project_out", stack_out_.view<float>(), d_final_in, buffer));
    d_stack_out = buffer;
  }
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_stack_in,
                       Buffer(d_projected_in_, dim_shape));
  FTX_RETURN_IF_ERROR(
      transformer_->Backward(ctx, store, d_stack_out, d_stack_in, d_context));
  TensorView<const float> d_embedded = d_stack_in;
  if (projected) {
    FTX_ASSIGN_OR_RETURN(TensorView<float> buffer,
                         Buffer(d_embedded_, emb_shape));
    FTX_RETURN_IF_ERROR(projection_backward(
        "project_in", embedded_.view<float>(), d_stack_in, buffer));
    d_embedded = buffer;
  }
  if (!c.use_rotary_emb && c.use_axial_pos_emb) {
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_w0,
                         store.Grad("pos_emb.weights.0"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_w1,
                         store.Grad("pos_emb.weights.1"));
    FTX_RETURN_IF_ERROR(LatAxial(c).Backward(ctx, 0, d_embedded, d_w0, d_w1));
  } else if (!c.use_rotary_emb) {
    FTX_ASSIGN_OR_RETURN(TensorView<float> weight,
                         store.Value("pos_emb.emb.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_weight,
                         store.Grad("pos_emb.emb.weight"));
    FTX_RETURN_IF_ERROR(
        LatAbsolute(c).Backward(ctx, weight, 0, d_embedded, d_weight));
  }
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_token_emb,
                       store.Grad("token_emb.weight"));
  for (int64_t r = 0; r < batch * padded; ++r) {
    float* row = d_token_emb.data() + tokens_[r] * e;
    const float* d_row = d_embedded.data() + r * e;
    for (int64_t i = 0; i < e; ++i) row[i] += d_row[i];
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// ImageLinearAttention.

namespace {

// x [B, C, N] -> y [B, O, N] = W x + b (a 1x1 convolution), W [O, C, 1, 1].
absl::Status PointwiseConv(const Context& ctx, TensorView<const float> weight,
                           TensorView<const float> bias,
                           TensorView<const float> x, TensorView<float> y) {
  const int64_t out = weight.dim(0), in = weight.dim(1);
  FTX_RETURN_IF_ERROR(MatMul(ctx, weight.Reshape(Shape({out, in})), x, y));
  const int64_t batch = y.dim(0), positions = y.dim(2);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t o = 0; o < out; ++o) {
      float* row = y.data() + (b * out + o) * positions;
      for (int64_t n = 0; n < positions; ++n) row[n] += bias.data()[o];
    }
  }
  return absl::OkStatus();
}

// Its backward: d_weight, d_bias (+=); d_x (= or += with accumulate).
absl::Status PointwiseConvBackward(const Context& ctx,
                                   TensorView<const float> weight,
                                   TensorView<const float> x,
                                   TensorView<const float> d_y,
                                   TensorView<float> d_x,
                                   TensorView<float> d_weight,
                                   TensorView<float> d_bias, bool accumulate) {
  const int64_t out = weight.dim(0), in = weight.dim(1);
  FTX_RETURN_IF_ERROR(
      MatMulBackward(ctx, weight.Reshape(Shape({out, in})), x, d_y,
                     d_weight.Reshape(Shape({out, in})), d_x, {},
                     {.accumulate_a = true, .accumulate_b = accumulate}));
  const int64_t batch = d_y.dim(0), positions = d_y.dim(2);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t o = 0; o < out; ++o) {
      const float* row = d_y.data() + (b * out + o) * positions;
      for (int64_t n = 0; n < positions; ++n) d_bias.data()[o] += row[n];
    }
  }
  return absl::OkStatus();
}

// Softmax of `count` values at stride `stride` starting at `x`, in place.
void StridedSoftmax(float* x, int64_t count, int64_t stride) {
  float max = x[0];
  for (int64_t i = 1; i < count; ++i) max = std::max(max, x[i * stride]);
  float sum = 0;
  for (int64_t i = 0; i < count; ++i) {
    x[i * stride] = std::exp(x[i * stride] - max);
    sum += x[i * stride];
  }
  for (int64_t i = 0; i < count; ++i) x[i * stride] /= sum;
}

// d_z = scale * y (d_y - sum(d_y y)) over the same strided values, in place
// on d_y.
void StridedSoftmaxBackward(const float* y, float* d_y, int64_t count,
                            int64_t stride, float scale) {
  float dot = 0;
  for (int64_t i = 0; i < count; ++i) dot += d_y[i * stride] * y[i * stride];
  for (int64_t i = 0; i < count; ++i) {
    d_y[i * stride] = scale * y[i * stride] * (d_y[i * stride] - dot);
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<ImageLinearAttention>>
ImageLinearAttention::Create(const ImageLinearAttentionConfig& config) {
  const std::pair<const char*, int64_t> sizes[] = {
      {"chan", config.chan},
      {"key_dim", config.key_dim},
      {"value_dim", config.value_dim},
      {"heads", config.heads}};
  for (const auto& [name, value] : sizes) {
    if (value < 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "ImageLinearAttentionConfig.", name, " must be >= 1, got ", value));
    }
  }
  if (config.chan_out < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("ImageLinearAttentionConfig.chan_out must be >= 0, got ",
                     config.chan_out));
  }
  if (config.kernel_size != 1 || config.padding != 0 || config.stride != 1) {
    return absl::UnimplementedError(absl::StrCat(
        "ImageLinearAttentionConfig: only kernel_size 1, padding 0 and stride "
        "1 are supported, got kernel_size ",
        config.kernel_size, ", padding ", config.padding, ", stride ",
        config.stride));
  }
  return std::unique_ptr<ImageLinearAttention>(
      new ImageLinearAttention(config));
}

std::vector<ParamShape> ImageLinearAttention::ParamShapes() const {
  const ImageLinearAttentionConfig& c = config_;
  const int64_t hk = c.heads * c.key_dim, hv = c.heads * c.value_dim;
  return {
      {"to_q.weight", {hk, c.chan, 1, 1}},      {"to_q.bias", {hk}},
      {"to_k.weight", {hk, c.chan, 1, 1}},      {"to_k.bias", {hk}},
      {"to_v.weight", {hv, c.chan, 1, 1}},      {"to_v.bias", {hv}},
      {"to_out.weight", {ChanOut(), hv, 1, 1}}, {"to_out.bias", {ChanOut()}}};
}

absl::Status ImageLinearAttention::InitParams(const Context& ctx,
                                              ParamStore& store,
                                              absl::string_view prefix) const {
  uint64_t index = 0;
  for (const ParamShape& shape : ParamShapes()) {
    FTX_ASSIGN_OR_RETURN(TensorView<float> value,
                         store.Value(absl::StrCat(prefix, shape.name)));
    const bool is_out = shape.name.rfind("to_out", 0) == 0;
    const int64_t fan_in =
        is_out ? config_.heads * config_.value_dim : config_.chan;
    FTX_RETURN_IF_ERROR(
        FillLinear(ctx, value, fan_in, SubSeed(config_.seed, index++)));
  }
  return absl::OkStatus();
}

absl::Status ImageLinearAttention::Forward(
    const Context& ctx, ParamStore& store, absl::string_view prefix,
    TensorView<const float> x, TensorView<const float> context,
    TensorView<float> y, bool save_for_backward) {
  saved_ = false;
  const ImageLinearAttentionConfig& c = config_;
  if (ctx.device().type == DeviceType::kCuda) {
    return absl::UnimplementedError(
        "ImageLinearAttention: CUDA is not supported");
  }
  if (x.rank() != 4 || x.dim(1) != c.chan || !x.IsContiguous() ||
      x.data() == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ImageLinearAttention: x must be a contiguous [B, C = ", c.chan,
        ", H, W] tensor"));
  }
  const int64_t batch = x.dim(0), pixels = x.dim(2) * x.dim(3);
  int64_t positions = 0;
  if (IsGiven(context)) {
    if ((context.rank() != 3 && context.rank() != 4) ||
        context.dim(0) != batch || context.dim(1) != c.chan ||
        !context.IsContiguous() || context.data() == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "ImageLinearAttention: context must be a contiguous [B, C = ", c.chan,
          ", ...] tensor of rank 3 or 4"));
    }
    if (c.value_dim != c.key_dim) {
      return absl::InvalidArgumentError(
          "ImageLinearAttention: a context needs value_dim == key_dim (LAT "
          "reshapes the context values with key_dim)");
    }
    positions = context.NumElements() / (batch * c.chan);
  }
  if (y.shape() != Shape({batch, ChanOut(), x.dim(2), x.dim(3)}) ||
      !y.IsContiguous() || y.data() == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ImageLinearAttention: y must be a contiguous [B, chan_out = ",
        ChanOut(), ", H, W] tensor"));
  }
  auto param = [&](const char* name) {
    return store.Value(absl::StrCat(prefix, name));
  };
  FTX_ASSIGN_OR_RETURN(TensorView<float> wq, param("to_q.weight"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> bq, param("to_q.bias"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> wk, param("to_k.weight"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> bk, param("to_k.bias"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> wv, param("to_v.weight"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> bv, param("to_v.bias"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> wo, param("to_out.weight"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> bo, param("to_out.bias"));
  const int64_t heads = c.heads, dk = c.key_dim, dv = c.value_dim;
  const int64_t hk = heads * dk, hv = heads * dv;
  const int64_t total = pixels + positions;
  const float scale = std::pow(static_cast<float>(dk), -0.25f);
  const TensorView<const float> x3 = x.Reshape(Shape({batch, c.chan, pixels}));
  FTX_ASSIGN_OR_RETURN(TensorView<float> q,
                       Buffer(q_, Shape({batch, hk, pixels})));
  FTX_ASSIGN_OR_RETURN(TensorView<float> k,
                       Buffer(k_, Shape({batch, hk, total})));
  FTX_ASSIGN_OR_RETURN(TensorView<float> v,
                       Buffer(v_, Shape({batch, hv, total})));
  FTX_RETURN_IF_ERROR(PointwiseConv(ctx, wq, bq, x3, q));
  for (int64_t i = 0; i < q.NumElements(); ++i) q.data()[i] *= scale;
  // k and v: the pixels' projections, then the context's, along the
  // positions.
  auto project_into = [&](TensorView<const float> w, TensorView<const float> b,
                          TensorView<const float> source, int64_t count,
                          int64_t offset, TensorView<float> target,
                          float factor) -> absl::Status {
    const int64_t rows = w.dim(0);
    FTX_ASSIGN_OR_RETURN(TensorView<float> projected,
                         Buffer(projected_, Shape({batch, rows, count})));
    FTX_RETURN_IF_ERROR(PointwiseConv(ctx, w, b, source, projected));
    for (int64_t r = 0; r < batch * rows; ++r) {
      for (int64_t n = 0; n < count; ++n) {
        target.data()[r * total + offset + n] =
            factor * projected.data()[r * count + n];
      }
    }
    return absl::OkStatus();
  };
  FTX_RETURN_IF_ERROR(project_into(wk, bk, x3, pixels, 0, k, scale));
  FTX_RETURN_IF_ERROR(project_into(wv, bv, x3, pixels, 0, v, 1.0f));
  if (positions > 0) {
    const TensorView<const float> c3 =
        context.Reshape(Shape({batch, c.chan, positions}));
    FTX_RETURN_IF_ERROR(project_into(wk, bk, c3, positions, pixels, k, 1.0f));
    FTX_RETURN_IF_ERROR(project_into(wv, bv, c3, positions, pixels, v, 1.0f));
  }
  for (int64_t r = 0; r < batch * hk; ++r) {
    StridedSoftmax(k.data() + r * total, total, 1);
  }
  if (c.norm_queries) {
    for (int64_t bh = 0; bh < batch * heads; ++bh) {
      for (int64_t n = 0; n < pixels; ++n) {
        StridedSoftmax(q.data() + bh * dk * pixels + n, dk, pixels);
      }
    }
  }
  FTX_ASSIGN_OR_RETURN(TensorView<float> kv,
                       Buffer(kv_, Shape({batch * heads, dk, dv})));
  FTX_RETURN_IF_ERROR(MatMul(ctx, k.Reshape(Shape({batch * heads, dk, total})),
                             v.Reshape(Shape({batch * heads, dv, total})), kv,
                             {.transpose_b = true}));
  FTX_ASSIGN_OR_RETURN(TensorView<float> attended,
                       Buffer(attended_, Shape({batch, hv, pixels})));
  FTX_RETURN_IF_ERROR(
      MatMul(ctx, kv, q.Reshape(Shape({batch * heads, dk, pixels})),
             attended.Reshape(Shape({batch * heads, dv, pixels})),
             {.transpose_a = true}));
  FTX_RETURN_IF_ERROR(PointwiseConv(
      ctx, wo, bo, attended, y.Reshape(Shape({batch, ChanOut(), pixels}))));
  prefix_ = std::string(prefix);
  x_ = x;
  context_ = context;
  batch_ = batch;
  pixels_ = pixels;
  positions_ = positions;
  saved_ = save_for_backward;
  return absl::OkStatus();
}

absl::Status ImageLinearAttention::Backward(const Context& ctx,
                                            ParamStore& store,
                                            TensorView<const float> d_y,
                                            TensorView<float> d_x,
                                            TensorView<float> d_context) {
  if (!saved_) {
    return absl::FailedPreconditionError(
        "ImageLinearAttention::Backward needs a saving Forward just before");
  }
  const ImageLinearAttentionConfig& c = config_;
  const int64_t batch = batch_, pixels = pixels_, positions = positions_;
  const int64_t heads = c.heads, dk = c.key_dim, dv = c.value_dim;
  const int64_t hk = heads * dk, hv = heads * dv;
  const int64_t total = pixels + positions;
  const float scale = std::pow(static_cast<float>(dk), -0.25f);
  if (d_y.shape() != Shape({batch, ChanOut(), x_.dim(2), x_.dim(3)}) ||
      !d_y.IsContiguous() || d_x.shape() != x_.shape() || !d_x.IsContiguous()) {
    return absl::InvalidArgumentError(
        "ImageLinearAttention: d_y must be shaped like y and d_x like x, "
        "contiguous");
  }
  if (IsGiven(d_context) &&
      (positions == 0 || d_context.shape() != context_.shape())) {
    return absl::InvalidArgumentError(
        "ImageLinearAttention: d_context must be shaped like the context of "
        "the forward (and needs one)");
  }
  auto value = [&](const char* name) {
    return store.Value(absl::StrCat(prefix_, name));
  };
  auto grad = [&](const char* name) {
    return store.Grad(absl::StrCat(prefix_, name));
  };
  FTX_ASSIGN_OR_RETURN(TensorView<float> wq, value("to_q.weight"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> wk, value("to_k.weight"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> wv, value("to_v.weight"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> wo, value("to_out.weight"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_wq, grad("to_q.weight"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_bq, grad("to_q.bias"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_wk, grad("to_k.weight"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_bk, grad("to_k.bias"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_wv, grad("to_v.weight"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_bv, grad("to_v.bias"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_wo, grad("to_out.weight"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_bo, grad("to_out.bias"));

  FTX_ASSIGN_OR_RETURN(TensorView<float> d_attended,
                       Buffer(d_attended_, Shape({batch, hv, pixels})));
  FTX_RETURN_IF_ERROR(
      PointwiseConvBackward(ctx, wo, attended_.view<float>(),
                            d_y.Reshape(Shape({batch, ChanOut(), pixels})),
                            d_attended, d_wo, d_bo, false));
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_kv,
                       Buffer(d_kv_, Shape({batch * heads, dk, dv})));
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_q,
                       Buffer(d_q_, Shape({batch, hk, pixels})));
  const TensorView<float> q = q_.view<float>();
  FTX_RETURN_IF_ERROR(MatMulBackward(
      ctx, kv_.view<float>(), q.Reshape(Shape({batch * heads, dk, pixels})),
      d_attended.Reshape(Shape({batch * heads, dv, pixels})), d_kv,
      d_q.Reshape(Shape({batch * heads, dk, pixels})), {.transpose_a = true}));
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_k,
                       Buffer(d_k_, Shape({batch, hk, total})));
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_v,
                       Buffer(d_v_, Shape({batch, hv, total})));
  const TensorView<float> k = k_.view<float>();
  FTX_RETURN_IF_ERROR(MatMulBackward(
      ctx, k.Reshape(Shape({batch * heads, dk, total})),
      v_.view<float>().Reshape(Shape({batch * heads, dv, total})), d_kv,
      d_k.Reshape(Shape({batch * heads, dk, total})),
      d_v.Reshape(Shape({batch * heads, dv, total})), {.transpose_b = true}));
  if (c.norm_queries) {
    for (int64_t bh = 0; bh < batch * heads; ++bh) {
      for (int64_t n = 0; n < pixels; ++n) {
        StridedSoftmaxBackward(q.data() + bh * dk * pixels + n,
                               d_q.data() + bh * dk * pixels + n, dk, pixels,
                               scale);
      }
    }
  } else {
    for (int64_t i = 0; i < d_q.NumElements(); ++i) d_q.data()[i] *= scale;
  }
  for (int64_t r = 0; r < batch * hk; ++r) {
    StridedSoftmaxBackward(k.data() + r * total, d_k.data() + r * total, total,
                           1, 1.0f);
  }
  const TensorView<const float> x3 = x_.Reshape(Shape({batch, c.chan, pixels}));
  const TensorView<float> d_x3 = d_x.Reshape(Shape({batch, c.chan, pixels}));
  FTX_RETURN_IF_ERROR(
      PointwiseConvBackward(ctx, wq, x3, d_q, d_x3, d_wq, d_bq, false));
  // The columns [offset, offset + count) of d_k / d_v, times `factor`, back
  // through to_k / to_v into d_source (= or += with accumulate).
  auto back_columns =
      [&](TensorView<const float> w, TensorView<const float> d, float factor,
          TensorView<const float> source, int64_t count, int64_t offset,
          TensorView<float> d_source, TensorView<float> d_w,
          TensorView<float> d_b, bool accumulate) -> absl::Status {
    const int64_t rows = w.dim(0);
    FTX_ASSIGN_OR_RETURN(TensorView<float> columns,
                         Buffer(d_projected_, Shape({batch, rows, count})));
    for (int64_t r = 0; r < batch * rows; ++r) {
      for (int64_t n = 0; n < count; ++n) {
        columns.data()[r * count + n] =
            factor * d.data()[r * total + offset + n];
      }
    }
    return PointwiseConvBackward(ctx, w, source, columns, d_source, d_w, d_b,
                                 accumulate);
  };
  FTX_RETURN_IF_ERROR(
      back_columns(wk, d_k, scale, x3, pixels, 0, d_x3, d_wk, d_bk, true));
  FTX_RETURN_IF_ERROR(
      back_columns(wv, d_v, 1.0f, x3, pixels, 0, d_x3, d_wv, d_bv, true));
  if (positions > 0) {
    const TensorView<const float> c3 =
        context_.Reshape(Shape({batch, c.chan, positions}));
    Tensor discard;
    TensorView<float> d_c3;
    if (IsGiven(d_context)) {
      d_c3 = d_context.Reshape(Shape({batch, c.chan, positions}));
    } else {
      FTX_ASSIGN_OR_RETURN(d_c3,
                           Buffer(discard, Shape({batch, c.chan, positions})));
    }
    FTX_RETURN_IF_ERROR(back_columns(wk, d_k, 1.0f, c3, positions, pixels, d_c3,
                                     d_wk, d_bk, false));
    FTX_RETURN_IF_ERROR(back_columns(wv, d_v, 1.0f, c3, positions, pixels, d_c3,
                                     d_wv, d_bv, true));
  }
  saved_ = false;
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// JSON.

namespace {

using Json = nlohmann::json;

absl::Status JsonTypeError(const std::string& key, const char* expected) {
  return absl::InvalidArgumentError(
      absl::StrCat("LatConfig JSON: \"", key, "\" must be ", expected));
}

// An integer or an array of integers.
absl::Status ReadIntList(const Json& value, const std::string& key,
                         std::vector<int64_t>& target) {
  target.clear();
  if (value.is_number_integer()) {
    target.push_back(value.get<int64_t>());
    return absl::OkStatus();
  }
  if (!value.is_array()) {
    return JsonTypeError(key, "an integer or an array of integers");
  }
  for (const Json& item : value) {
    if (!item.is_number_integer()) {
      return JsonTypeError(key, "an integer or an array of integers");
    }
    target.push_back(item.get<int64_t>());
  }
  return absl::OkStatus();
}

// LAT's LinformerSettings(k) / LinformerContextSettings(seq_len, k): an
// object with those fields, or null for none.
absl::Status ReadLinformerSettings(const Json& value, const std::string& key,
                                   LatConfig& c) {
  const bool context = key == "context_linformer_settings";
  int64_t& k = context ? c.context_linformer_k : c.linformer_k;
  if (value.is_null()) {
    k = 0;
    return absl::OkStatus();
  }
  const char* expected =
      context ? "null or an object {\"seq_len\": int, \"k\": int}"
              : "null or an object {\"k\": int}";
  if (!value.is_object()) return JsonTypeError(key, expected);
  for (const auto& [field, number] : value.items()) {
    if (!number.is_number_integer()) return JsonTypeError(key, expected);
    if (field == "k") {
      k = number.get<int64_t>();
    } else if (context && field == "seq_len") {
      c.context_linformer_seq_len = number.get<int64_t>();
    } else {
      return JsonTypeError(key, expected);
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<LatConfig> LatConfigFromJson(absl::string_view json) {
  const Json root = Json::parse(json.begin(), json.end(), nullptr,
                                /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object()) {
    return absl::InvalidArgumentError("LatConfig JSON: expected a JSON object");
  }
  LatConfig c;
  const std::map<std::string, int64_t*> ints = {
      {"num_tokens", &c.num_tokens},
      {"dim", &c.dim},
      {"depth", &c.depth},
      {"max_seq_len", &c.max_seq_len},
      {"heads", &c.heads},
      {"dim_head", &c.dim_head},
      {"emb_dim", &c.emb_dim},
      {"ff_chunks", &c.ff_chunks},
      {"blindspot_size", &c.blindspot_size},
      {"local_attn_window_size", &c.local_attn_window_size},
      {"linformer_k", &c.linformer_k},
      {"context_linformer_k", &c.context_linformer_k},
      {"context_linformer_seq_len", &c.context_linformer_seq_len},
      {"pkm_heads", &c.pkm_heads},
      {"pkm_num_keys", &c.pkm_num_keys},
      {"pkm_topk", &c.pkm_topk},
      {"pkm_dim_head", &c.pkm_dim_head}};
  const std::map<std::string, bool*> bools = {
      {"causal", &c.causal},
      {"reversible", &c.reversible},
      {"ff_glu", &c.ff_glu},
      {"return_embeddings", &c.return_embeddings},
      {"receives_context", &c.receives_context},
      {"attend_axially", &c.attend_axially},
      {"use_axial_pos_emb", &c.use_axial_pos_emb},
      {"use_rotary_emb", &c.use_rotary_emb},
      {"shift_tokens", &c.shift_tokens},
      {"autopad", &c.autopad}};
  const std::map<std::string, float*> floats = {
      {"ff_dropout", &c.ff_dropout},
      {"attn_layer_dropout", &c.attn_layer_dropout},
      {"attn_dropout", &c.attn_dropout}};
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
    } else if (key == "n_local_attn_heads") {
      FTX_RETURN_IF_ERROR(ReadIntList(value, key, c.n_local_attn_heads));
    } else if (key == "linformer_settings" ||
               key == "context_linformer_settings") {
      FTX_RETURN_IF_ERROR(ReadLinformerSettings(value, key, c));
    } else if (key == "pkm_layers") {
      FTX_RETURN_IF_ERROR(ReadIntList(value, key, c.pkm_layers));
    } else if (key == "seed") {
      if (!value.is_number_unsigned()) {
        return JsonTypeError(key, "a non-negative integer");
      }
      c.seed = value.get<uint64_t>();
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("LatConfig JSON: unknown key \"", key, "\""));
    }
  }
  return c;
}

}  // namespace ftx
