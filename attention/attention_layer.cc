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
  kSavedCount
};

enum GradScratch : int {
  kAttendedGrad,        // [N, L, H, D]
  kQueriesGrad,         // [N, L, H, E]
  kExpandedKeysGrad,    // [N, M + S, H, E]
  kExpandedValuesGrad,  // [N, M + S, H, D]
  kKeysGrad,            // [N, S, Hkv, E]
  kValuesGrad,          // [N, S, Hkv, D]
  kGradScratchCount
};

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
  return std::unique_ptr<AttentionLayer>(
      new AttentionLayer(resolved, std::move(inner), std::move(qk_transform)));
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
      {"out_projection.weight", {c.d_model, o_width}}};
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
  inputs.queries = cache.saved[kQueries].view<float>();
  inputs.keys = cache.saved[expanded ? kExpandedKeys : kKeys].view<float>();
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
                                 {c.d_model, H * D}));
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
  const Shape shapes[kSavedCount] = {{N, L, H, E},     {N, S, Hkv, E},
                                     {N, S, Hkv, D},   {N, M + S, H, E},
                                     {N, M + S, H, D}, {N, L, H, D}};
  for (int i = 0; i < kSavedCount; ++i) {
    if (!expanded && (i == kExpandedKeys || i == kExpandedValues)) continue;
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
  const AttentionInputs inputs = InnerInputs(saved, masks, N, L, S);
  TensorView<float> attended = saved.saved[kAttended].view<float>();
  FTX_RETURN_IF_ERROR(inner_->Forward(
      ctx, inputs, attended, cache != nullptr ? &saved.inner : nullptr));
  return LinearForward(ctx, MergeHeads(TensorView<const float>(attended)),
                       params.out_weight, params.out_bias, out);
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
  const Shape shapes[kGradScratchCount] = {{N, L, H, D},     {N, L, H, E},
                                           {N, M + S, H, E}, {N, M + S, H, D},
                                           {N, S, Hkv, E},   {N, S, Hkv, D}};
  for (int i = 0; i < kGradScratchCount; ++i) {
    FTX_RETURN_IF_ERROR(
        EnsureTensor(grad_scratch_[i], shapes[i], ctx.device()));
  }
  TensorView<float> d_attended = grad_scratch_[kAttendedGrad].view<float>();
  TensorView<float> d_queries = grad_scratch_[kQueriesGrad].view<float>();
  TensorView<float> d_keys = grad_scratch_[kKeysGrad].view<float>();
  TensorView<float> d_values = grad_scratch_[kValuesGrad].view<float>();

  // out = merge(attended) Wo^T + bo.
  FTX_RETURN_IF_ERROR(LinearBackward(
      ctx, MergeHeads(cache.saved[kAttended].view<float>()), params.out_weight,
      d_out, MergeHeads(d_attended), grads.out_weight, grads.out_bias));
  const AttentionInputs inputs = InnerInputs(cache, masks, N, L, S);
  AttentionGrads inner_grads{
      d_queries,
      expanded ? grad_scratch_[kExpandedKeysGrad].view<float>() : d_keys,
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
  if (expanded) {
    CollapseHeads(ctx, inner_grads.d_keys, d_keys, grads.memory_keys);
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
  return LinearBackward(ctx, source, params.value_weight, MergeHeads(d_values),
                        d_source, grads.value_weight, grads.value_bias,
                        {.accumulate_input_grad = true});
}

}  // namespace ftx
