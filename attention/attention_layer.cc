#include "attention/attention_layer.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "kernels/linear/linear.h"

namespace ftx {
namespace {

enum Saved : int {
  kQueries,       // [N, L, H, E] after the Q/K transform
  kKeys,          // [N, S, Hkv, E] after the Q/K transform
  kValues,        // [N, S, Hkv, D]
  kExpandedKeys,  // [N, M + S, H, E] when memory kv or shared kv heads are used
  kExpandedValues,  // [N, M + S, H, D]
  kAttended,        // [N, L, H, D], inner attention output
  kNormQueries,     // [N, L, H, E], qk_norm output
  kNormKeys,        // [N, K, H, E], K = M + S or S; qk_norm output
  kHeadScaled,      // [N, L, H, D], head_scale output
  kGated,           // [N, L, H, D], gate_values output
  kSavedCount
};

enum GradScratch : int {
  kAttendedGrad,        // [N, L, H, D]
  kQueriesGrad,         // [N, L, H, E]
  kExpandedKeysGrad,    // [N, M + S, H, E]
  kExpandedValuesGrad,  // [N, M + S, H, D]
  kKeysGrad,            // [N, S, Hkv, E]
  kValuesGrad,          // [N, S, Hkv, D]
  kNormQueriesGrad,     // [N, L, H, E]
  kNormKeysGrad,        // [N, K, H, E]
  kHeadScaledGrad,      // [N, L, H, D]
  kGatedGrad,           // [N, L, H, D]
  kGateInputGrad,       // [N, L, C], the value gate's x gradient
  kGradScratchCount
};

constexpr char kHeadScaleName[] = "head_scale_params";
constexpr char kQkNormScaleName[] = "qk_norm_scale";

// out[n, l, h, :] = gamma[h] * in[n, l, h, :]; in, out [N, L, H, D].
void ScaleHeads(const Context& ctx, TensorView<const float> gamma,
                TensorView<const float> in, TensorView<float> out) {
  const int64_t rows = in.dim(0) * in.dim(1), H = in.dim(2), D = in.dim(3);
  ctx.pool().ParallelFor(rows, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      for (int64_t h = 0; h < H; ++h) {
        const float g = gamma.data()[h];
        const float* source = in.data() + (r * H + h) * D;
        float* target = out.data() + (r * H + h) * D;
        for (int64_t d = 0; d < D; ++d) target[d] = g * source[d];
      }
    }
  });
}

// d_in = gamma[h] d_out (=); d_gamma[h] += sum of in * d_out over n, l, d.
void ScaleHeadsBackward(TensorView<const float> gamma,
                        TensorView<const float> in,
                        TensorView<const float> d_out, TensorView<float> d_in,
                        TensorView<float> d_gamma) {
  const int64_t rows = in.dim(0) * in.dim(1), H = in.dim(2), D = in.dim(3);
  for (int64_t h = 0; h < H; ++h) {
    const float g = gamma.data()[h];
    double sum = 0.0;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t offset = (r * H + h) * D;
      for (int64_t d = 0; d < D; ++d) {
        sum += static_cast<double>(in.data()[offset + d]) *
               d_out.data()[offset + d];
        d_in.data()[offset + d] = g * d_out.data()[offset + d];
      }
    }
    if (d_gamma.data() != nullptr) d_gamma.data()[h] += static_cast<float>(sum);
  }
}

// [N, T, H, X] as [N, T, H * X] (contiguous).
TensorView<float> MergeHeads(TensorView<float> view) {
  return view.Reshape({view.dim(0), view.dim(1), view.dim(2) * view.dim(3)});
}
TensorView<const float> MergeHeads(TensorView<const float> view) {
  return view.Reshape({view.dim(0), view.dim(1), view.dim(2) * view.dim(3)});
}

absl::Status CheckParam(const char* name, const TensorView<const float>& view,
                        const Shape& expected) {
  if (view.shape() != expected || view.data() == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("AttentionLayer: parameter ", name, " must be ",
                     expected.ToString(), ", got ", view.shape().ToString()));
  }
  return absl::OkStatus();
}

// Writes expanded[n, m, h] = memory[h, m] for m < M and expanded[n, M + s, h] =
// compact[n, s, h % kv_heads]. memory may be empty (M = 0).
void ExpandHeads(const Context& ctx, TensorView<const float> compact,
                 TensorView<const float> memory, TensorView<float> expanded) {
  const int64_t N = expanded.dim(0), total = expanded.dim(1),
                H = expanded.dim(2), X = expanded.dim(3);
  const int64_t M = memory.data() == nullptr ? 0 : memory.dim(1);
  const int64_t kv_heads = compact.dim(2);
  ctx.pool().ParallelFor(N * total, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t n = i / total, t = i % total;
      for (int64_t h = 0; h < H; ++h) {
        const float* source = t < M ? &memory.at(h, t, 0)
                                    : &compact.at(n, t - M, h % kv_heads, 0);
        std::copy(source, source + X, &expanded.at(n, t, h, 0));
      }
    }
  });
}

// Reverse of ExpandHeads: compact (=) and memory (+=) gradients.
void CollapseHeads(const Context& ctx, TensorView<const float> d_expanded,
                   TensorView<float> d_compact, TensorView<float> d_memory) {
  const int64_t N = d_expanded.dim(0), H = d_expanded.dim(2),
                X = d_expanded.dim(3);
  const int64_t M = d_memory.data() == nullptr ? 0 : d_memory.dim(1);
  const int64_t S = d_compact.dim(1), kv_heads = d_compact.dim(2);
  ctx.pool().ParallelFor(N * S, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t n = i / S, s = i % S;
      for (int64_t hk = 0; hk < kv_heads; ++hk) {
        float* target = &d_compact.at(n, s, hk, 0);
        std::fill(target, target + X, 0.0f);
        for (int64_t h = hk; h < H; h += kv_heads) {
          const float* source = &d_expanded.at(n, M + s, h, 0);
          for (int64_t x = 0; x < X; ++x) target[x] += source[x];
        }
      }
    }
  });
  // Memory rows are shared by the whole batch: sum over n in a fixed order.
  for (int64_t h = 0; h < H; ++h) {
    for (int64_t m = 0; m < M; ++m) {
      float* target = &d_memory.at(h, m, 0);
      for (int64_t n = 0; n < N; ++n) {
        const float* source = &d_expanded.at(n, m, h, 0);
        for (int64_t x = 0; x < X; ++x) target[x] += source[x];
      }
    }
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<AttentionLayer>> AttentionLayer::Create(
    const AttentionLayerConfig& config, std::unique_ptr<Attention> inner,
    std::unique_ptr<QKTransform> qk_transform) {
  if (inner == nullptr) {
    return absl::InvalidArgumentError(
        "AttentionLayer: inner attention is null");
  }
  AttentionLayerConfig resolved = config;
  if (config.d_model <= 0 || config.n_heads <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "AttentionLayer: d_model and n_heads must be positive, got ",
        config.d_model, " and ", config.n_heads));
  }
  if ((config.d_keys == 0 || config.d_values == 0) &&
      config.d_model % config.n_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("AttentionLayer: d_model ", config.d_model,
                     " is not divisible by n_heads ", config.n_heads,
                     "; set d_keys and d_values"));
  }
  if (resolved.d_keys == 0) resolved.d_keys = config.d_model / config.n_heads;
  if (resolved.d_values == 0)
    resolved.d_values = config.d_model / config.n_heads;
  if (resolved.kv_heads == 0) resolved.kv_heads = config.n_heads;
  if (resolved.d_model_keys == 0) resolved.d_model_keys = config.d_model;
  if (resolved.kv_heads < 0 || config.n_heads % resolved.kv_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("AttentionLayer: n_heads ", config.n_heads,
                     " must be a multiple of kv_heads ", resolved.kv_heads));
  }
  if (resolved.d_keys < 0 || resolved.d_values < 0 ||
      resolved.num_memory_kv < 0) {
    return absl::InvalidArgumentError(
        "AttentionLayer: d_keys, d_values and num_memory_kv must be >= 0");
  }
  if (resolved.on_attn && resolved.has_out_bias()) {
    return absl::InvalidArgumentError(
        "AttentionLayer: on_attn has no out projection bias; set out_bias to "
        "false");
  }
  std::unique_ptr<AttentionLayer> layer(
      new AttentionLayer(resolved, std::move(inner), std::move(qk_transform)));
  if (resolved.qk_norm) {
    QkNormConfig qk = *resolved.qk_norm;
    qk.heads = resolved.n_heads;
    qk.head_dim = resolved.d_keys;
    FTX_ASSIGN_OR_RETURN(QkNorm norm, QkNorm::Create(qk));
    layer->qk_norm_.emplace(norm);
    layer->config_.qk_norm = qk;
  }
  if (resolved.gate_values) {
    FTX_ASSIGN_OR_RETURN(
        ValueGating gate,
        ValueGating::Create(
            {.dim = resolved.d_model,
             .heads = resolved.n_heads,
             .head_dim = resolved.d_values,
             .initial_bias = resolved.gate_values_initial_bias}));
    layer->value_gate_.emplace(std::move(gate));
  }
  if (resolved.on_attn) {
    FTX_ASSIGN_OR_RETURN(AttentionOnAttention on_attn,
                         AttentionOnAttention::Create(
                             {.dim = resolved.d_model,
                              .in_dim = resolved.n_heads * resolved.d_values}));
    layer->on_attn_.emplace(std::move(on_attn));
  }
  return layer;
}

bool AttentionLayer::IsOptionParam(absl::string_view name) {
  return name == kHeadScaleName || name == "to_v_gate.weight" ||
         name == "to_v_gate.bias" || name == kQkNormScaleName ||
         name == "qk_norm_q_scale" || name == "qk_norm_k_scale";
}

absl::Status AttentionLayer::InitOptionParams(
    const AttentionLayerGrads& params) const {
  if (config_.head_scale) {
    if (params.head_scale.NumElements() != config_.n_heads ||
        params.head_scale.data() == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("AttentionLayer: InitOptionParams needs head_scale [1, ",
                       config_.n_heads, ", 1, 1]"));
    }
    std::fill_n(params.head_scale.data(), config_.n_heads, 1.0f);
  }
  if (value_gate_) {
    FTX_RETURN_IF_ERROR(value_gate_->InitParams(
        {params.value_gate_weight, params.value_gate_bias}));
  }
  if (qk_norm_) {
    FTX_RETURN_IF_ERROR(
        qk_norm_->InitParams({params.qk_norm_scale, params.qk_norm_q_scale,
                              params.qk_norm_k_scale}));
  }
  return absl::OkStatus();
}

absl::Status AttentionLayer::CheckOptionParams(
    const AttentionLayerParams& params) const {
  const AttentionLayerConfig& c = config_;
  if (c.head_scale) {
    FTX_RETURN_IF_ERROR(
        CheckParam(kHeadScaleName, params.head_scale, {1, c.n_heads, 1, 1}));
  }
  if (value_gate_) {
    FTX_RETURN_IF_ERROR(CheckParam("to_v_gate.weight", params.value_gate_weight,
                                   {c.n_heads * c.d_values, c.d_model}));
    FTX_RETURN_IF_ERROR(CheckParam("to_v_gate.bias", params.value_gate_bias,
                                   {c.n_heads * c.d_values}));
  }
  return absl::OkStatus();
}

std::vector<ParamShape> AttentionLayer::ParamShapes() const {
  const AttentionLayerConfig& c = config_;
  const int64_t q_width = c.n_heads * c.d_keys, k_width = c.kv_heads * c.d_keys,
                v_width = c.kv_heads * c.d_values,
                o_width = c.n_heads * c.d_values;
  std::vector<ParamShape> shapes = {
      {"query_projection.weight", {q_width, c.d_model}},
      {"key_projection.weight", {k_width, c.d_model_keys}},
      {"value_projection.weight", {v_width, c.d_model_keys}},
      {"out_projection.weight", {(c.on_attn ? 2 : 1) * c.d_model, o_width}}};
  if (c.bias) {
    shapes.insert(shapes.begin() + 1, {"query_projection.bias", {q_width}});
    shapes.insert(shapes.begin() + 3, {"key_projection.bias", {k_width}});
    shapes.insert(shapes.begin() + 5, {"value_projection.bias", {v_width}});
  }
  if (c.has_out_bias()) {
    shapes.push_back({"out_projection.bias", {c.d_model}});
  }
  if (c.num_memory_kv > 0) {
    shapes.push_back({"memory_keys", {c.n_heads, c.num_memory_kv, c.d_keys}});
    shapes.push_back(
        {"memory_values", {c.n_heads, c.num_memory_kv, c.d_values}});
  }
  if (c.head_scale) shapes.push_back({kHeadScaleName, {1, c.n_heads, 1, 1}});
  if (value_gate_) {
    for (ParamShape& shape : value_gate_->ParamShapes()) {
      shapes.push_back(std::move(shape));
    }
  }
  if (qk_norm_) {
    for (ParamShape& shape : qk_norm_->ParamShapes()) {
      if (shape.name == "scale") shape.name = kQkNormScaleName;
      shapes.push_back(std::move(shape));
    }
  }
  return shapes;
}

AttentionInputs AttentionLayer::InnerInputs(const AttentionLayerCache& cache,
                                            const AttentionLayerMasks& masks,
                                            int64_t batch, int64_t queries,
                                            int64_t keys) const {
  const bool expanded =
      config_.num_memory_kv > 0 || config_.kv_heads != config_.n_heads;
  const int64_t M = config_.num_memory_kv;
  AttentionInputs inputs;
  inputs.queries =
      cache.saved[qk_norm_ ? kNormQueries : kQueries].view<float>();
  inputs.keys =
      cache.saved[qk_norm_   ? kNormKeys
                  : expanded ? kExpandedKeys
                             : kKeys]
          .view<float>();
  inputs.values =
      cache.saved[expanded ? kExpandedValues : kValues].view<float>();
  inputs.query_lengths = masks.query_lengths;
  inputs.key_lengths = masks.key_lengths;
  for (int64_t& length : inputs.key_lengths.lengths) length += M;
  inputs.training = masks.training;
  inputs.seed = masks.seed;
  if (IsGiven(masks.head_bias)) {
    inputs.head_bias =
        M == 0 ? masks.head_bias
               : TensorView<const float>(padded_bias_.view<float>());
  }
  switch (masks.attn_mask.kind()) {
    case AttnMask::Kind::kAll:
      inputs.attn_mask = AttnMask::All();
      break;
    case AttnMask::Kind::kCausal:
      inputs.attn_mask = AttnMask::Causal(masks.attn_mask.causal_offset() + M);
      break;
    case AttnMask::Kind::kAdditive:
      inputs.attn_mask = M == 0
                             ? masks.attn_mask
                             : AttnMask::Additive(padded_mask_.view<float>());
      break;
  }
  return inputs;
}

absl::Status AttentionLayer::Forward(const Context& ctx,
                                     const AttentionLayerParams& params,
                                     TensorView<const float> x,
                                     TensorView<const float> context,
                                     const AttentionLayerMasks& masks,
                                     TensorView<float> out,
                                     AttentionLayerCache* cache) {
  const AttentionLayerConfig& c = config_;
  const bool self_attention = context.data() == nullptr;
  const TensorView<const float> source = self_attention ? x : context;
  if (x.rank() != 3 || source.rank() != 3 || x.dim(2) != c.d_model ||
      source.dim(2) != (self_attention ? c.d_model : c.d_model_keys) ||
      source.dim(0) != x.dim(0) || out.shape() != x.shape()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "AttentionLayer: expected x and out [N, L, ", c.d_model,
        "] and context [N, S, ", c.d_model_keys, "]; got x ",
        x.shape().ToString(), ", context ", context.shape().ToString(),
        ", out ", out.shape().ToString()));
  }
  const int64_t N = x.dim(0), L = x.dim(1), S = source.dim(1), H = c.n_heads,
                Hkv = c.kv_heads, E = c.d_keys, D = c.d_values,
                M = c.num_memory_kv;
  FTX_RETURN_IF_ERROR(CheckParam("query_projection.weight", params.query_weight,
                                 {H * E, c.d_model}));
  FTX_RETURN_IF_ERROR(CheckParam("key_projection.weight", params.key_weight,
                                 {Hkv * E, source.dim(2)}));
  FTX_RETURN_IF_ERROR(CheckParam("value_projection.weight", params.value_weight,
                                 {Hkv * D, source.dim(2)}));
  FTX_RETURN_IF_ERROR(CheckParam("out_projection.weight", params.out_weight,
                                 {(c.on_attn ? 2 : 1) * c.d_model, H * D}));
  FTX_RETURN_IF_ERROR(CheckOptionParams(params));
  if (c.bias) {
    FTX_RETURN_IF_ERROR(
        CheckParam("query_projection.bias", params.query_bias, {H * E}));
    FTX_RETURN_IF_ERROR(
        CheckParam("key_projection.bias", params.key_bias, {Hkv * E}));
    FTX_RETURN_IF_ERROR(
        CheckParam("value_projection.bias", params.value_bias, {Hkv * D}));
  }
  if (c.has_out_bias()) {
    FTX_RETURN_IF_ERROR(
        CheckParam("out_projection.bias", params.out_bias, {c.d_model}));
  }
  if (M > 0) {
    FTX_RETURN_IF_ERROR(
        CheckParam("memory_keys", params.memory_keys, {H, M, E}));
    FTX_RETURN_IF_ERROR(
        CheckParam("memory_values", params.memory_values, {H, M, D}));
  }
  const bool expanded = M > 0 || Hkv != H;

  AttentionLayerCache& saved = cache != nullptr ? *cache : scratch_;
  saved.saved.resize(kSavedCount);
  const int64_t K = expanded ? M + S : S;
  const Shape shapes[kSavedCount] = {
      {N, L, H, E},     {N, S, Hkv, E}, {N, S, Hkv, D}, {N, M + S, H, E},
      {N, M + S, H, D}, {N, L, H, D},   {N, L, H, E},   {N, K, H, E},
      {N, L, H, D},     {N, L, H, D}};
  for (int i = 0; i < kSavedCount; ++i) {
    if (!expanded && (i == kExpandedKeys || i == kExpandedValues)) continue;
    if (!qk_norm_ && (i == kNormQueries || i == kNormKeys)) continue;
    if (!c.head_scale && i == kHeadScaled) continue;
    if (!value_gate_ && i == kGated) continue;
    FTX_RETURN_IF_ERROR(EnsureTensor(saved.saved[i], shapes[i], ctx.device()));
  }
  TensorView<float> queries = saved.saved[kQueries].view<float>();
  TensorView<float> keys = saved.saved[kKeys].view<float>();
  TensorView<float> values = saved.saved[kValues].view<float>();
  FTX_RETURN_IF_ERROR(LinearForward(ctx, x, params.query_weight,
                                    params.query_bias, MergeHeads(queries)));
  FTX_RETURN_IF_ERROR(LinearForward(ctx, source, params.key_weight,
                                    params.key_bias, MergeHeads(keys)));
  FTX_RETURN_IF_ERROR(LinearForward(ctx, source, params.value_weight,
                                    params.value_bias, MergeHeads(values)));
  if (projection_observer_) projection_observer_(queries, keys, values);
  if (qk_transform_ != nullptr) {
    FTX_RETURN_IF_ERROR(qk_transform_->Forward(ctx, queries, 0));
    FTX_RETURN_IF_ERROR(qk_transform_->Forward(ctx, keys, 0));
    if (c.transform_values) {
      FTX_RETURN_IF_ERROR(qk_transform_->Forward(ctx, values, 0));
    }
  }
  if (expanded) {
    ExpandHeads(ctx, keys, params.memory_keys,
                saved.saved[kExpandedKeys].view<float>());
    ExpandHeads(ctx, values, params.memory_values,
                saved.saved[kExpandedValues].view<float>());
  }
  if (masks.attn_mask.kind() == AttnMask::Kind::kAdditive && M > 0) {
    FTX_RETURN_IF_ERROR(masks.attn_mask.Validate("AttentionLayer", L, S));
    FTX_RETURN_IF_ERROR(EnsureTensor(padded_mask_, {L, M + S}, Device::Cpu()));
    float* padded = padded_mask_.data<float>();
    for (int64_t l = 0; l < L; ++l) {
      for (int64_t s = 0; s < M + S; ++s) {
        padded[l * (M + S) + s] = s < M ? 0.0f : masks.attn_mask.At(l, s - M);
      }
    }
  }
  if (IsGiven(masks.head_bias) && M > 0) {
    if (masks.head_bias.shape() != Shape{H, L, S}) {
      return absl::InvalidArgumentError(absl::StrCat(
          "AttentionLayer: head_bias must be [H, L, S] = [", H, ", ", L, ", ",
          S, "], got ", masks.head_bias.shape().ToString()));
    }
    FTX_RETURN_IF_ERROR(
        EnsureTensor(padded_bias_, {H, L, M + S}, Device::Cpu()));
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t l = 0; l < L; ++l) {
        float* row = &padded_bias_.view<float>().at(h, l, 0);
        std::fill(row, row + M, 0.0f);
        for (int64_t s = 0; s < S; ++s)
          row[M + s] = masks.head_bias.at(h, l, s);
      }
    }
  }
  if (qk_norm_) {
    FTX_RETURN_IF_ERROR(qk_norm_->Forward(
        ctx, QkNormViews(params), queries,
        saved.saved[expanded ? kExpandedKeys : kKeys].view<float>(),
        saved.saved[kNormQueries].view<float>(),
        saved.saved[kNormKeys].view<float>()));
  }
  const AttentionInputs inputs = InnerInputs(saved, masks, N, L, S);
  TensorView<float> attended = saved.saved[kAttended].view<float>();
  FTX_RETURN_IF_ERROR(inner_->Forward(
      ctx, inputs, attended, cache != nullptr ? &saved.inner : nullptr));
  TensorView<const float> merged_input = attended;
  if (c.head_scale) {
    TensorView<float> scaled = saved.saved[kHeadScaled].view<float>();
    ScaleHeads(ctx, params.head_scale, attended, scaled);
    merged_input = scaled;
  }
  if (value_gate_) {
    TensorView<float> gated = saved.saved[kGated].view<float>();
    FTX_RETURN_IF_ERROR(value_gate_->Forward(
        ctx, {params.value_gate_weight, params.value_gate_bias}, x,
        MergeHeads(merged_input), MergeHeads(gated), &saved.value_gate));
    merged_input = gated;
  }
  if (on_attn_) {
    return on_attn_->Forward(ctx, params.out_weight, MergeHeads(merged_input),
                             out, &saved.on_attn);
  }
  return LinearForward(ctx, MergeHeads(merged_input), params.out_weight,
                       params.out_bias, out);
}

absl::Status AttentionLayer::Backward(
    const Context& ctx, const AttentionLayerParams& params,
    TensorView<const float> x, TensorView<const float> context,
    const AttentionLayerMasks& masks, const AttentionLayerCache& cache,
    TensorView<const float> d_out, TensorView<float> d_x,
    TensorView<float> d_context, const AttentionLayerGrads& grads) {
  const AttentionLayerConfig& c = config_;
  const bool self_attention = context.data() == nullptr;
  const TensorView<const float> source = self_attention ? x : context;
  const int64_t N = x.dim(0), L = x.dim(1), S = source.dim(1), H = c.n_heads,
                Hkv = c.kv_heads, E = c.d_keys, D = c.d_values,
                M = c.num_memory_kv;
  if (cache.saved.size() != kSavedCount ||
      cache.saved[kAttended].shape() != Shape{N, L, H, D} ||
      cache.saved[kKeys].shape() != Shape{N, S, Hkv, E}) {
    return absl::FailedPreconditionError(
        "AttentionLayer::Backward: the cache does not come from a Forward with "
        "these "
        "inputs (pass a cache to Forward)");
  }
  if (d_out.shape() != x.shape() || d_x.shape() != x.shape() ||
      (!self_attention && d_context.shape() != context.shape())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "AttentionLayer::Backward: d_out and d_x must be ",
        x.shape().ToString(), " and d_context ", context.shape().ToString()));
  }
  const bool expanded = M > 0 || Hkv != H;
  grad_scratch_.resize(kGradScratchCount);
  const int64_t K = expanded ? M + S : S;
  const Shape shapes[kGradScratchCount] = {
      {N, L, H, D},   {N, L, H, E},   {N, M + S, H, E}, {N, M + S, H, D},
      {N, S, Hkv, E}, {N, S, Hkv, D}, {N, L, H, E},     {N, K, H, E},
      {N, L, H, D},   {N, L, H, D},   {N, L, c.d_model}};
  for (int i = 0; i < kGradScratchCount; ++i) {
    if (!qk_norm_ && (i == kNormQueriesGrad || i == kNormKeysGrad)) continue;
    if (!c.head_scale && i == kHeadScaledGrad) continue;
    if (!value_gate_ && (i == kGatedGrad || i == kGateInputGrad)) continue;
    FTX_RETURN_IF_ERROR(
        EnsureTensor(grad_scratch_[i], shapes[i], ctx.device()));
  }
  TensorView<float> d_attended = grad_scratch_[kAttendedGrad].view<float>();
  TensorView<float> d_queries = grad_scratch_[kQueriesGrad].view<float>();
  TensorView<float> d_keys = grad_scratch_[kKeysGrad].view<float>();
  TensorView<float> d_values = grad_scratch_[kValuesGrad].view<float>();

  // attended -> [head_scale] -> [gate_values] -> out projection (or
  // attention on attention): walk back from the last stage.
  const TensorView<const float> attended = cache.saved[kAttended].view<float>();
  TensorView<const float> scaled = attended;
  TensorView<float> d_scaled = d_attended;
  if (c.head_scale) {
    scaled = cache.saved[kHeadScaled].view<float>();
    d_scaled = grad_scratch_[kHeadScaledGrad].view<float>();
  }
  TensorView<const float> merged_input = scaled;
  TensorView<float> d_merged_input = d_scaled;
  if (value_gate_) {
    merged_input = cache.saved[kGated].view<float>();
    d_merged_input = grad_scratch_[kGatedGrad].view<float>();
  }
  if (on_attn_) {
    FTX_RETURN_IF_ERROR(on_attn_->Backward(
        ctx, params.out_weight, cache.on_attn, MergeHeads(merged_input), d_out,
        MergeHeads(d_merged_input), grads.out_weight));
  } else {
    FTX_RETURN_IF_ERROR(LinearBackward(
        ctx, MergeHeads(merged_input), params.out_weight, d_out,
        MergeHeads(d_merged_input), grads.out_weight, grads.out_bias));
  }
  if (value_gate_) {
    FTX_RETURN_IF_ERROR(value_gate_->Backward(
        ctx, {params.value_gate_weight, params.value_gate_bias},
        cache.value_gate, x, MergeHeads(scaled),
        MergeHeads(TensorView<const float>(d_merged_input)),
        grad_scratch_[kGateInputGrad].view<float>(), MergeHeads(d_scaled),
        {grads.value_gate_weight, grads.value_gate_bias}));
  }
  if (c.head_scale) {
    ScaleHeadsBackward(params.head_scale, attended, d_scaled, d_attended,
                       grads.head_scale);
  }
  const AttentionInputs inputs = InnerInputs(cache, masks, N, L, S);
  const TensorView<float> d_keys_in =
      expanded ? grad_scratch_[kExpandedKeysGrad].view<float>() : d_keys;
  AttentionGrads inner_grads{
      qk_norm_ ? grad_scratch_[kNormQueriesGrad].view<float>() : d_queries,
      qk_norm_ ? grad_scratch_[kNormKeysGrad].view<float>() : d_keys_in,
      expanded ? grad_scratch_[kExpandedValuesGrad].view<float>() : d_values};
  const bool bias_grad = IsGiven(masks.head_bias) && IsGiven(grads.head_bias);
  if (bias_grad) {
    if (M == 0) {
      inner_grads.d_head_bias = grads.head_bias;
    } else {
      FTX_RETURN_IF_ERROR(
          EnsureTensor(padded_bias_grad_, {H, L, M + S}, Device::Cpu()));
      inner_grads.d_head_bias = padded_bias_grad_.view<float>();
    }
  }
  FTX_RETURN_IF_ERROR(
      inner_->Backward(ctx, inputs, cache.inner, d_attended, inner_grads));
  if (bias_grad && M > 0) {
    // The memory columns carry no bias: add only the key columns.
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t l = 0; l < L; ++l) {
        float* row = &padded_bias_grad_.view<float>().at(h, l, 0);
        for (int64_t s = 0; s < S; ++s)
          grads.head_bias.at(h, l, s) += row[M + s];
        std::fill(row, row + M + S, 0.0f);
      }
    }
  }
  if (qk_norm_) {
    FTX_RETURN_IF_ERROR(qk_norm_->Backward(
        ctx, QkNormViews(params), cache.saved[kQueries].view<float>(),
        cache.saved[expanded ? kExpandedKeys : kKeys].view<float>(),
        inner_grads.d_queries, inner_grads.d_keys, d_queries, d_keys_in,
        {grads.qk_norm_scale, grads.qk_norm_q_scale, grads.qk_norm_k_scale}));
  }
  if (expanded) {
    CollapseHeads(ctx, d_keys_in, d_keys, grads.memory_keys);
    CollapseHeads(ctx, inner_grads.d_values, d_values, grads.memory_values);
  }
  if (qk_transform_ != nullptr) {
    FTX_RETURN_IF_ERROR(qk_transform_->Backward(ctx, d_queries, 0));
    FTX_RETURN_IF_ERROR(qk_transform_->Backward(ctx, d_keys, 0));
    if (c.transform_values) {
      FTX_RETURN_IF_ERROR(qk_transform_->Backward(ctx, d_values, 0));
    }
  }
  FTX_RETURN_IF_ERROR(LinearBackward(ctx, x, params.query_weight,
                                     MergeHeads(d_queries), d_x,
                                     grads.query_weight, grads.query_bias));
  // Keys and values read the same source: the second adds to the first's
  // gradient.
  const TensorView<float> d_source = self_attention ? d_x : d_context;
  FTX_RETURN_IF_ERROR(
      LinearBackward(ctx, source, params.key_weight, MergeHeads(d_keys),
                     d_source, grads.key_weight, grads.key_bias,
                     {.accumulate_input_grad = self_attention}));
  FTX_RETURN_IF_ERROR(LinearBackward(
      ctx, source, params.value_weight, MergeHeads(d_values), d_source,
      grads.value_weight, grads.value_bias, {.accumulate_input_grad = true}));
  if (value_gate_) {
    const float* gate_input = grad_scratch_[kGateInputGrad].data<float>();
    float* target = d_x.data();
    for (int64_t i = 0; i < d_x.NumElements(); ++i) target[i] += gate_input[i];
  }
  return absl::OkStatus();
}

}  // namespace ftx
