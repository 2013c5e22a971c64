#include "attention/mixed_heads.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "kernels/matmul/matmul.h"

namespace ftx {
namespace {

constexpr char kOp[] = "MixedLocalLinearAttention";
constexpr char kBackwardOp[] = "MixedLocalLinearAttentionBackward";
// causal_linear_attn's clamp of the denominator.
constexpr float kCausalEps = 1e-3f;
// Rows per chunk of the causal sweep (rounded to a multiple of the blind spot).
constexpr int64_t kCausalChunk = 64;

// Cache layout: the global heads' tensors, then the local heads'
// (LocalWindowedAttention).
enum Saved : int {
  kQueryFeatures,  // phi(q) [N, L, H_global, E]
  kKeyFeatures,    // phi(k), 0 for padded keys [N, S, H_global, E]
  // Non-causal: the context phi(k)^T v [N, H_global, E, D]; causal: the
  // denominators phi(q_i) . z_i before the clamp [N, L, H_global].
  kGlobalState,
  kLocalSaved,
  kSavedCount = kLocalSaved + LocalWindowedAttention::kSavedCount
};

enum GradScratch : int {
  kQueryFeatureGrad,  // [N, L, H_global, E]
  kKeyFeatureGrad,    // non-causal: [N, S, H_global, E]
  // Non-causal: d context [N, H_global, E, D]; causal: d numerator
  // [N, L, H_global, D].
  kContextGrad,
  kDenominatorGrad,  // causal: [N, L, H_global]
  kGradScratchCount
};

LocalWindowedAttentionOptions LocalHeadOptions(
    const MixedLocalLinearOptions& options) {
  LocalWindowedAttentionOptions local;
  local.window_size = options.local_attn_window_size;
  local.causal = options.causal;
  local.look_backward = 1;
  local.attention_dropout = options.attention_dropout;
  return local;
}

// The heads [first, last) of every tensor of `inputs`.
AttentionInputs HeadSlice(const AttentionInputs& inputs, int64_t first,
                          int64_t last) {
  AttentionInputs part = inputs;
  part.queries = inputs.queries.Slice(2, first, last);
  part.keys = inputs.keys.Slice(2, first, last);
  part.values = inputs.values.Slice(2, first, last);
  return part;
}

AttentionGrads HeadSlice(const AttentionGrads& grads, int64_t first,
                         int64_t last) {
  return {grads.d_queries.Slice(2, first, last),
          grads.d_keys.Slice(2, first, last),
          grads.d_values.Slice(2, first, last)};
}

// InvalidArgument unless the inputs suit the options (head count, masks,
// lengths).
absl::Status CheckInputs(const char* op, const MixedLocalLinearOptions& options,
                         const AttentionInputs& inputs,
                         const AttentionDims& dims) {
  if (options.n_local_attn_heads > dims.heads) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": n_local_attn_heads = ", options.n_local_attn_heads,
                     " exceeds the number of heads ", dims.heads));
  }
  switch (inputs.attn_mask.kind()) {
    case AttnMask::Kind::kAll:
      break;
    case AttnMask::Kind::kCausal:
      if (!options.causal || inputs.attn_mask.causal_offset() != 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(op,
                         ": a causal attn_mask needs the option causal = true "
                         "(and offset 0)"));
      }
      break;
    case AttnMask::Kind::kAdditive:
      return absl::InvalidArgumentError(
          absl::StrCat(op,
                       ": additive attn_mask is not supported; use key_lengths "
                       "and the causal option"));
  }
  const bool self_attention = options.n_local_attn_heads > 0 || options.causal;
  if (self_attention && dims.queries != dims.keys) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": local heads and causal global heads need L == S, got L = ",
        dims.queries, " and S = ", dims.keys));
  }
  if (options.causal && dims.queries % options.blindspot_size != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": sequence length ", dims.queries,
        " must be divisible by blindspot_size ", options.blindspot_size));
  }
  if (options.n_local_attn_heads > 0 &&
      dims.queries % options.local_attn_window_size != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": sequence length ", dims.queries,
                     " must be divisible by local_attn_window_size ",
                     options.local_attn_window_size));
  }
  return absl::OkStatus();
}

// phi(q) = softmax over E of q, times E^-0.5, for every row of q [N, L, H, E]
// into features [N, L, H, E] (contiguous).
void QueryFeatures(const Context& ctx, TensorView<const float> q,
                   TensorView<float> features) {
  const int64_t L = q.dim(1), H = q.dim(2), E = q.dim(3);
  const float scale = 1.0f / std::sqrt(static_cast<float>(E));
  ctx.pool().ParallelFor(q.dim(0) * L * H, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / (L * H), l = row / H % L, h = row % H;
      const float* x = &q.at(n, l, h, 0);
      float* y = &features.at(n, l, h, 0);
      const float max_value = *std::max_element(x, x + E);
      float total = 0.0f;
      for (int64_t e = 0; e < E; ++e) {
        y[e] = std::exp(x[e] - max_value);
        total += y[e];
      }
      const float factor = scale / total;
      for (int64_t e = 0; e < E; ++e) y[e] *= factor;
    }
  });
}

// d_q = softmax backward of QueryFeatures: with p = phi(q) / scale and dp =
// scale * d_phi, d_q = p (dp - p . dp) = phi (d_phi - phi . d_phi / scale).
void QueryFeaturesBackward(const Context& ctx, TensorView<const float> features,
                           TensorView<const float> d_features,
                           TensorView<float> d_q) {
  const int64_t L = features.dim(1), H = features.dim(2), E = features.dim(3);
  const float scale = 1.0f / std::sqrt(static_cast<float>(E));
  ctx.pool().ParallelFor(
      features.dim(0) * L * H, [&](int64_t begin, int64_t end) {
        for (int64_t row = begin; row < end; ++row) {
          const int64_t n = row / (L * H), l = row / H % L, h = row % H;
          const float* phi = &features.at(n, l, h, 0);
          const float* d_phi = &d_features.at(n, l, h, 0);
          float weighted = 0.0f;
          for (int64_t e = 0; e < E; ++e) weighted += phi[e] * d_phi[e];
          weighted /= scale;
          float* dq = &d_q.at(n, l, h, 0);
          for (int64_t e = 0; e < E; ++e)
            dq[e] = phi[e] * (d_phi[e] - weighted);
        }
      });
}

// Non-causal phi(k): softmax over the valid keys s < length of each feature e;
// padded rows 0 (their -FLT_MAX fill gives them weight 0, and their values are
// 0 anyway).
void KeySoftmaxFeatures(const Context& ctx, TensorView<const float> k,
                        const LengthMask& key_lengths,
                        TensorView<float> features) {
  const int64_t S = k.dim(1), H = k.dim(2), E = k.dim(3);
  ctx.pool().ParallelFor(k.dim(0) * H, [&](int64_t begin, int64_t end) {
    std::vector<float> max_value(E), total(E);
    for (int64_t nh = begin; nh < end; ++nh) {
      const int64_t n = nh / H, h = nh % H;
      const int64_t length = key_lengths.Length(n, S);
      std::fill(max_value.begin(), max_value.end(),
                -std::numeric_limits<float>::infinity());
      std::fill(total.begin(), total.end(), 0.0f);
      for (int64_t s = 0; s < length; ++s) {
        const float* x = &k.at(n, s, h, 0);
        for (int64_t e = 0; e < E; ++e)
          max_value[e] = std::max(max_value[e], x[e]);
      }
      for (int64_t s = 0; s < length; ++s) {
        const float* x = &k.at(n, s, h, 0);
        float* y = &features.at(n, s, h, 0);
        for (int64_t e = 0; e < E; ++e) {
          y[e] = std::exp(x[e] - max_value[e]);
          total[e] += y[e];
        }
      }
      for (int64_t s = 0; s < S; ++s) {
        float* y = &features.at(n, s, h, 0);
        if (s >= length) {
          std::fill_n(y, E, 0.0f);
          continue;
        }
        for (int64_t e = 0; e < E; ++e) y[e] /= total[e];
      }
    }
  });
}

// d_k of KeySoftmaxFeatures: per feature, phi (d_phi - sum_s phi d_phi); 0 when
// padded.
void KeySoftmaxFeaturesBackward(const Context& ctx,
                                TensorView<const float> features,
                                TensorView<const float> d_features,
                                const LengthMask& key_lengths,
                                TensorView<float> d_k) {
  const int64_t S = features.dim(1), H = features.dim(2), E = features.dim(3);
  ctx.pool().ParallelFor(features.dim(0) * H, [&](int64_t begin, int64_t end) {
    std::vector<float> weighted(E);
    for (int64_t nh = begin; nh < end; ++nh) {
      const int64_t n = nh / H, h = nh % H;
      const int64_t length = key_lengths.Length(n, S);
      std::fill(weighted.begin(), weighted.end(), 0.0f);
      for (int64_t s = 0; s < length; ++s) {
        const float* phi = &features.at(n, s, h, 0);
        const float* d_phi = &d_features.at(n, s, h, 0);
        for (int64_t e = 0; e < E; ++e) weighted[e] += phi[e] * d_phi[e];
      }
      for (int64_t s = 0; s < S; ++s) {
        float* dk = &d_k.at(n, s, h, 0);
        if (s >= length) {
          std::fill_n(dk, E, 0.0f);
          continue;
        }
        const float* phi = &features.at(n, s, h, 0);
        const float* d_phi = &d_features.at(n, s, h, 0);
        for (int64_t e = 0; e < E; ++e)
          dk[e] = phi[e] * (d_phi[e] - weighted[e]);
      }
    }
  });
}

// Causal phi(k) = exp(k), 0 for padded keys.
void KeyExpFeatures(const Context& ctx, TensorView<const float> k,
                    const LengthMask& key_lengths, TensorView<float> features) {
  const int64_t S = k.dim(1), H = k.dim(2), E = k.dim(3);
  ctx.pool().ParallelFor(k.dim(0) * S, [&](int64_t begin, int64_t end) {
    for (int64_t ns = begin; ns < end; ++ns) {
      const int64_t n = ns / S, s = ns % S;
      const bool padded = s >= key_lengths.Length(n, S);
      for (int64_t h = 0; h < H; ++h) {
        const float* x = &k.at(n, s, h, 0);
        float* y = &features.at(n, s, h, 0);
        for (int64_t e = 0; e < E; ++e) y[e] = padded ? 0.0f : std::exp(x[e]);
      }
    }
  });
}

// The causal sweep runs over chunks of T rows, T a multiple of the bucket B so
// that chunk boundaries are bucket boundaries: across chunks through the
// running sums, inside a chunk through a masked [T, T] product ("intra") unless
// the chunk is a single bucket of B > 1 (whose keys its own queries never see).
struct ChunkPlan {
  int64_t size = 1;
  bool intra = false;
};

ChunkPlan PlanChunks(int64_t bucket, int64_t length) {
  ChunkPlan plan;
  plan.size =
      bucket >= kCausalChunk ? bucket : bucket * (kCausalChunk / bucket);
  plan.size = std::max(bucket, std::min(plan.size, length));
  plan.intra = bucket == 1 || plan.size > bucket;
  return plan;
}

// Whether row i of a chunk sees row j of the same chunk.
bool SeesInChunk(int64_t i, int64_t j, int64_t bucket) {
  return bucket == 1 ? j <= i : j / bucket < i / bucket;
}

// The contiguous [rows, cols] matrix at `data`.
TensorView<float> Dense(float* data, int64_t rows, int64_t cols) {
  return TensorView<float>(data, {rows, cols});
}

// scores [rows, rows] = phi(q_c) phi(k_c)^T with the pairs row i does not see
// zeroed.
absl::Status MaskedScores(const Context& ctx, TensorView<const float> q_chunk,
                          TensorView<const float> k_chunk, int64_t bucket,
                          float* scores) {
  const int64_t rows = q_chunk.dim(0);
  FTX_RETURN_IF_ERROR(MatMul(ctx, q_chunk, k_chunk, Dense(scores, rows, rows),
                             {.transpose_b = true}));
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < rows; ++j) {
      if (!SeesInChunk(i, j, bucket)) scores[i * rows + j] = 0.0f;
    }
  }
  return absl::OkStatus();
}

absl::Status FirstError(const std::vector<absl::Status>& statuses) {
  for (const absl::Status& status : statuses) {
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateMixedLocalLinearOptions(
    const MixedLocalLinearOptions& options) {
  if (options.n_local_attn_heads < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": n_local_attn_heads must be >= 0, got ",
                     options.n_local_attn_heads));
  }
  if (options.local_attn_window_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": local_attn_window_size must be positive, got ",
                     options.local_attn_window_size));
  }
  if (options.blindspot_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": blindspot_size must be positive, got ",
                     options.blindspot_size));
  }
  if (!(options.attention_dropout >= 0.0f &&
        options.attention_dropout < 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": attention_dropout must be in [0, 1), got ",
                     options.attention_dropout));
  }
  return absl::OkStatus();
}

MixedLocalLinearAttention::MixedLocalLinearAttention(
    const MixedLocalLinearOptions& options)
    : options_(options), local_(LocalHeadOptions(options)) {}

absl::Status MixedLocalLinearAttention::Forward(const Context& ctx,
                                                const AttentionInputs& inputs,
                                                TensorView<float> out,
                                                AttentionCache* cache) {
  FTX_RETURN_IF_ERROR(ValidateMixedLocalLinearOptions(options_));
  FTX_ASSIGN_OR_RETURN(const AttentionDims dims,
                       ValidateAttentionForward(kOp, ctx, inputs, out));
  if (ctx.device().type != DeviceType::kCpu) {
    return absl::UnimplementedError(
        absl::StrCat(kOp, ": only the CPU path exists so far"));
  }
  FTX_RETURN_IF_ERROR(CheckInputs(kOp, options_, inputs, dims));
  AttentionCache& saved = cache != nullptr ? *cache : scratch_;
  saved.saved.resize(kSavedCount);
  const int64_t local_heads = options_.n_local_attn_heads, H = dims.heads;
  if (local_heads > 0) {
    FTX_RETURN_IF_ERROR(local_.ForwardInto(
        ctx, HeadSlice(inputs, 0, local_heads), out.Slice(2, 0, local_heads),
        absl::MakeSpan(saved.saved)
            .subspan(kLocalSaved, LocalWindowedAttention::kSavedCount)));
  }
  const int64_t global_heads = H - local_heads;
  if (global_heads == 0) return absl::OkStatus();

  const AttentionInputs global = HeadSlice(inputs, local_heads, H);
  const TensorView<float> global_out = out.Slice(2, local_heads, H);
  const int64_t N = dims.batch, L = dims.queries, S = dims.keys;
  const int64_t E = dims.qk_dim, D = dims.value_dim;
  FTX_RETURN_IF_ERROR(EnsureTensor(saved.saved[kQueryFeatures],
                                   {N, L, global_heads, E}, ctx.device()));
  FTX_RETURN_IF_ERROR(EnsureTensor(saved.saved[kKeyFeatures],
                                   {N, S, global_heads, E}, ctx.device()));
  const TensorView<float> query_features =
      saved.saved[kQueryFeatures].view<float>();
  const TensorView<float> key_features =
      saved.saved[kKeyFeatures].view<float>();
  QueryFeatures(ctx, global.queries, query_features);

  if (!options_.causal) {
    FTX_RETURN_IF_ERROR(EnsureTensor(saved.saved[kGlobalState],
                                     {N, global_heads, E, D}, ctx.device()));
    const TensorView<float> context = saved.saved[kGlobalState].view<float>();
    KeySoftmaxFeatures(ctx, global.keys, inputs.key_lengths, key_features);
    for (int64_t h = 0; h < global_heads; ++h) {
      // context_h [N, E, D] = phi(k)_h^T v_h;
      // out_h [N, L, D] = phi(q)_h context_h.
      FTX_RETURN_IF_ERROR(MatMul(ctx, key_features.Select(2, h),
                                 global.values.Select(2, h),
                                 context.Select(1, h), {.transpose_a = true}));
      FTX_RETURN_IF_ERROR(MatMul(ctx, query_features.Select(2, h),
                                 context.Select(1, h),
                                 global_out.Select(2, h)));
    }
    return absl::OkStatus();
  }

  FTX_RETURN_IF_ERROR(EnsureTensor(saved.saved[kGlobalState],
                                   {N, L, global_heads}, ctx.device()));
  float* denominators = saved.saved[kGlobalState].data<float>();
  KeyExpFeatures(ctx, global.keys, inputs.key_lengths, key_features);
  const int64_t bucket = options_.blindspot_size;
  const ChunkPlan chunks = PlanChunks(bucket, L);
  std::vector<absl::Status> statuses(N * global_heads);
  ctx.pool().ParallelFor(N * global_heads, [&](int64_t begin, int64_t end) {
    std::vector<float> state(E * D), key_sum(E);
    std::vector<float> scores(chunks.intra ? chunks.size * chunks.size : 0);
    for (int64_t nh = begin; nh < end; ++nh) {
      const int64_t n = nh / global_heads, h = nh % global_heads;
      const TensorView<const float> q =
          query_features.Select(0, n).Select(1, h);
      const TensorView<const float> k = key_features.Select(0, n).Select(1, h);
      const TensorView<const float> v = global.values.Select(0, n).Select(1, h);
      const TensorView<float> o = global_out.Select(0, n).Select(1, h);
      std::fill(state.begin(), state.end(), 0.0f);
      std::fill(key_sum.begin(), key_sum.end(), 0.0f);
      // Per chunk: num = phi(q_c) S + scores v_c, den = phi(q_c) . z + the row
      // sums of scores, out = num / max(den, eps); then S += phi(k_c)^T v_c
      // and z += sum phi(k_c).
      auto chunk = [&](int64_t t0, int64_t t1) -> absl::Status {
        const int64_t rows = t1 - t0;
        const TensorView<const float> q_c = q.Slice(0, t0, t1);
        const TensorView<const float> k_c = k.Slice(0, t0, t1);
        const TensorView<const float> v_c = v.Slice(0, t0, t1);
        const TensorView<float> o_c = o.Slice(0, t0, t1);
        FTX_RETURN_IF_ERROR(MatMul(ctx, q_c, Dense(state.data(), E, D), o_c));
        if (chunks.intra) {
          FTX_RETURN_IF_ERROR(
              MaskedScores(ctx, q_c, k_c, bucket, scores.data()));
          FTX_RETURN_IF_ERROR(MatMul(ctx, Dense(scores.data(), rows, rows), v_c,
                                     o_c, {.beta = 1.0f}));
        }
        for (int64_t i = 0; i < rows; ++i) {
          const float* phi = &q_c.at(i, 0);
          float denominator = 0.0f;
          for (int64_t e = 0; e < E; ++e) denominator += phi[e] * key_sum[e];
          if (chunks.intra) {
            for (int64_t j = 0; j < rows; ++j)
              denominator += scores[i * rows + j];
          }
          denominators[(n * L + t0 + i) * global_heads + h] = denominator;
          const float inverse = 1.0f / std::max(denominator, kCausalEps);
          float* o_row = &o_c.at(i, 0);
          for (int64_t d = 0; d < D; ++d) o_row[d] *= inverse;
        }
        FTX_RETURN_IF_ERROR(MatMul(ctx, k_c, v_c, Dense(state.data(), E, D),
                                   {.transpose_a = true, .beta = 1.0f}));
        for (int64_t j = 0; j < rows; ++j) {
          const float* phi = &k_c.at(j, 0);
          for (int64_t e = 0; e < E; ++e) key_sum[e] += phi[e];
        }
        return absl::OkStatus();
      };
      for (int64_t t0 = 0; t0 < L && statuses[nh].ok(); t0 += chunks.size) {
        statuses[nh] = chunk(t0, std::min(L, t0 + chunks.size));
      }
    }
  });
  return FirstError(statuses);
}

absl::Status MixedLocalLinearAttention::Backward(const Context& ctx,
                                                 const AttentionInputs& inputs,
                                                 const AttentionCache& cache,
                                                 TensorView<const float> d_out,
                                                 const AttentionGrads& grads) {
  FTX_RETURN_IF_ERROR(ValidateMixedLocalLinearOptions(options_));
  FTX_ASSIGN_OR_RETURN(
      const AttentionDims dims,
      ValidateAttentionBackward(kBackwardOp, ctx, inputs, d_out, grads));
  if (ctx.device().type != DeviceType::kCpu) {
    return absl::UnimplementedError(
        absl::StrCat(kBackwardOp, ": only the CPU path exists so far"));
  }
  FTX_RETURN_IF_ERROR(CheckInputs(kBackwardOp, options_, inputs, dims));
  const int64_t local_heads = options_.n_local_attn_heads, H = dims.heads;
  const int64_t global_heads = H - local_heads;
  const int64_t N = dims.batch, L = dims.queries, S = dims.keys;
  const int64_t E = dims.qk_dim, D = dims.value_dim;
  const bool causal = options_.causal;
  const bool cache_ok =
      cache.saved.size() == kSavedCount &&
      (global_heads == 0 ||
       (cache.saved[kQueryFeatures].shape() == Shape{N, L, global_heads, E} &&
        cache.saved[kKeyFeatures].shape() == Shape{N, S, global_heads, E} &&
        cache.saved[kGlobalState].shape() ==
            (causal ? Shape{N, L, global_heads}
                    : Shape{N, global_heads, E, D})));
  if (!cache_ok) {
    return absl::FailedPreconditionError(
        absl::StrCat(kBackwardOp,
                     ": the cache does not come from a Forward with these "
                     "inputs (pass a cache to Forward)"));
  }
  if (local_heads > 0) {
    FTX_RETURN_IF_ERROR(local_.BackwardFrom(
        ctx, HeadSlice(inputs, 0, local_heads),
        absl::MakeConstSpan(cache.saved)
            .subspan(kLocalSaved, LocalWindowedAttention::kSavedCount),
        d_out.Slice(2, 0, local_heads), HeadSlice(grads, 0, local_heads)));
  }
  if (global_heads == 0) return absl::OkStatus();

  const AttentionInputs global = HeadSlice(inputs, local_heads, H);
  const AttentionGrads global_grads = HeadSlice(grads, local_heads, H);
  const TensorView<const float> g = d_out.Slice(2, local_heads, H);
  const TensorView<const float> query_features =
      cache.saved[kQueryFeatures].view<float>();
  const TensorView<const float> key_features =
      cache.saved[kKeyFeatures].view<float>();
  grad_scratch_.resize(kGradScratchCount);
  FTX_RETURN_IF_ERROR(EnsureTensor(grad_scratch_[kQueryFeatureGrad],
                                   {N, L, global_heads, E}, ctx.device()));
  const TensorView<float> d_query_features =
      grad_scratch_[kQueryFeatureGrad].view<float>();

  if (!causal) {
    FTX_RETURN_IF_ERROR(EnsureTensor(grad_scratch_[kKeyFeatureGrad],
                                     {N, S, global_heads, E}, ctx.device()));
    FTX_RETURN_IF_ERROR(EnsureTensor(grad_scratch_[kContextGrad],
                                     {N, global_heads, E, D}, ctx.device()));
    const TensorView<float> d_key_features =
        grad_scratch_[kKeyFeatureGrad].view<float>();
    const TensorView<float> d_context =
        grad_scratch_[kContextGrad].view<float>();
    const TensorView<const float> context =
        cache.saved[kGlobalState].view<float>();
    for (int64_t h = 0; h < global_heads; ++h) {
      const TensorView<const float> g_h = g.Select(2, h);
      // d_context = phi(q)^T g;  d_phi(q) = g context^T;
      // d_phi(k) = v d_context^T;  d_v = phi(k) d_context (zero for padded
      // keys, whose phi(k) rows are 0).
      FTX_RETURN_IF_ERROR(MatMul(ctx, query_features.Select(2, h), g_h,
                                 d_context.Select(1, h),
                                 {.transpose_a = true}));
      FTX_RETURN_IF_ERROR(MatMul(ctx, g_h, context.Select(1, h),
                                 d_query_features.Select(2, h),
                                 {.transpose_b = true}));
      FTX_RETURN_IF_ERROR(
          MatMul(ctx, global.values.Select(2, h), d_context.Select(1, h),
                 d_key_features.Select(2, h), {.transpose_b = true}));
      FTX_RETURN_IF_ERROR(MatMul(ctx, key_features.Select(2, h),
                                 d_context.Select(1, h),
                                 global_grads.d_values.Select(2, h)));
    }
    KeySoftmaxFeaturesBackward(ctx, key_features, d_key_features,
                               inputs.key_lengths, global_grads.d_keys);
    QueryFeaturesBackward(ctx, query_features, d_query_features,
                          global_grads.d_queries);
    return absl::OkStatus();
  }

  FTX_RETURN_IF_ERROR(EnsureTensor(grad_scratch_[kContextGrad],
                                   {N, L, global_heads, D}, ctx.device()));
  FTX_RETURN_IF_ERROR(EnsureTensor(grad_scratch_[kDenominatorGrad],
                                   {N, L, global_heads}, ctx.device()));
  const TensorView<float> d_numerators =
      grad_scratch_[kContextGrad].view<float>();
  float* d_denominators = grad_scratch_[kDenominatorGrad].data<float>();
  const float* denominators = cache.saved[kGlobalState].data<float>();
  const int64_t bucket = options_.blindspot_size;
  const ChunkPlan chunks = PlanChunks(bucket, L);
  const int64_t T = chunks.size;
  std::vector<absl::Status> statuses(N * global_heads);
  ctx.pool().ParallelFor(N * global_heads, [&](int64_t begin, int64_t end) {
    std::vector<float> state(E * D), key_sum(E), numerator(T * D), d_key(T * E);
    std::vector<float> scores(chunks.intra ? T * T : 0);
    std::vector<float> d_scores(chunks.intra ? T * T : 0);
    for (int64_t nh = begin; nh < end; ++nh) {
      const int64_t n = nh / global_heads, h = nh % global_heads;
      const TensorView<const float> q =
          query_features.Select(0, n).Select(1, h);
      const TensorView<const float> k = key_features.Select(0, n).Select(1, h);
      const TensorView<const float> v = global.values.Select(0, n).Select(1, h);
      const TensorView<const float> g_nh = g.Select(0, n).Select(1, h);
      const TensorView<float> d_num = d_numerators.Select(0, n).Select(1, h);
      const TensorView<float> d_q = d_query_features.Select(0, n).Select(1, h);
      const TensorView<float> d_k =
          global_grads.d_keys.Select(0, n).Select(1, h);
      const TensorView<float> d_v =
          global_grads.d_values.Select(0, n).Select(1, h);
      auto d_den = [&](int64_t i) -> float& {
        return d_denominators[(n * L + i) * global_heads + h];
      };
      // d_scores = M (d num_c v_c^T + d den_c 1^T): the gradient of the
      // intra-chunk similarities phi(q_i) . phi(k_j), M the pairs a row sees.
      auto intra_grads = [&](int64_t t0, int64_t rows) -> absl::Status {
        FTX_RETURN_IF_ERROR(MatMul(
            ctx, d_num.Slice(0, t0, t0 + rows), v.Slice(0, t0, t0 + rows),
            Dense(d_scores.data(), rows, rows), {.transpose_b = true}));
        for (int64_t i = 0; i < rows; ++i) {
          for (int64_t j = 0; j < rows; ++j) {
            float& entry = d_scores[i * rows + j];
            entry = SeesInChunk(i, j, bucket) ? entry + d_den(t0 + i) : 0.0f;
          }
        }
        return absl::OkStatus();
      };

      // Forward order, with S and z: out_i = num_i / c_i where
      // c_i = max(den_i, eps); d num_i = g_i / c_i; d den_i =
      // -(g_i . num_i) / c_i^2 where den_i >= eps (else 0);
      // d phi(q_c) = d num_c S^T + d_scores phi(k_c) + d den_c z^T.
      std::fill(state.begin(), state.end(), 0.0f);
      std::fill(key_sum.begin(), key_sum.end(), 0.0f);
      auto forward_chunk = [&](int64_t t0, int64_t t1) -> absl::Status {
        const int64_t rows = t1 - t0;
        const TensorView<const float> q_c = q.Slice(0, t0, t1);
        const TensorView<const float> k_c = k.Slice(0, t0, t1);
        const TensorView<const float> v_c = v.Slice(0, t0, t1);
        const TensorView<float> num = Dense(numerator.data(), rows, D);
        FTX_RETURN_IF_ERROR(MatMul(ctx, q_c, Dense(state.data(), E, D), num));
        if (chunks.intra) {
          FTX_RETURN_IF_ERROR(
              MaskedScores(ctx, q_c, k_c, bucket, scores.data()));
          FTX_RETURN_IF_ERROR(MatMul(ctx, Dense(scores.data(), rows, rows), v_c,
                                     num, {.beta = 1.0f}));
        }
        for (int64_t i = 0; i < rows; ++i) {
          const float denominator =
              denominators[(n * L + t0 + i) * global_heads + h];
          const float clamped = std::max(denominator, kCausalEps);
          const float* g_i = &g_nh.at(t0 + i, 0);
          float* d_num_i = &d_num.at(t0 + i, 0);
          float g_dot_num = 0.0f;
          for (int64_t d = 0; d < D; ++d) {
            g_dot_num += g_i[d] * numerator[i * D + d];
            d_num_i[d] = g_i[d] / clamped;
          }
          d_den(t0 + i) = denominator >= kCausalEps
                              ? -g_dot_num / (clamped * clamped)
                              : 0.0f;
        }
        const TensorView<float> d_q_c = d_q.Slice(0, t0, t1);
        FTX_RETURN_IF_ERROR(MatMul(ctx, d_num.Slice(0, t0, t1),
                                   Dense(state.data(), E, D), d_q_c,
                                   {.transpose_b = true}));
        if (chunks.intra) {
          FTX_RETURN_IF_ERROR(intra_grads(t0, rows));
          FTX_RETURN_IF_ERROR(MatMul(ctx, Dense(d_scores.data(), rows, rows),
                                     k_c, d_q_c, {.beta = 1.0f}));
        }
        for (int64_t i = 0; i < rows; ++i) {
          float* d_q_i = &d_q_c.at(i, 0);
          for (int64_t e = 0; e < E; ++e)
            d_q_i[e] += d_den(t0 + i) * key_sum[e];
        }
        FTX_RETURN_IF_ERROR(MatMul(ctx, k_c, v_c, Dense(state.data(), E, D),
                                   {.transpose_a = true, .beta = 1.0f}));
        for (int64_t j = 0; j < rows; ++j) {
          const float* phi = &k_c.at(j, 0);
          for (int64_t e = 0; e < E; ++e) key_sum[e] += phi[e];
        }
        return absl::OkStatus();
      };
      for (int64_t t0 = 0; t0 < L && statuses[nh].ok(); t0 += T) {
        statuses[nh] = forward_chunk(t0, std::min(L, t0 + T));
      }

      // Reverse order, with R = sum phi(q_i) d num_i^T and
      // r = sum d den_i phi(q_i) over the later chunks:
      // d phi(k_c) = v_c R^T + 1 r^T + d_scores^T phi(q_c),
      // d v_c = phi(k_c) R + scores^T d num_c,
      // d k = d phi(k) * phi(k) (0 when padded).
      std::vector<float>& seen = state;
      std::vector<float>& seen_sum = key_sum;
      std::fill(seen.begin(), seen.end(), 0.0f);
      std::fill(seen_sum.begin(), seen_sum.end(), 0.0f);
      auto reverse_chunk = [&](int64_t t0, int64_t t1) -> absl::Status {
        const int64_t rows = t1 - t0;
        const TensorView<const float> q_c = q.Slice(0, t0, t1);
        const TensorView<const float> k_c = k.Slice(0, t0, t1);
        const TensorView<const float> v_c = v.Slice(0, t0, t1);
        const TensorView<const float> d_num_c = d_num.Slice(0, t0, t1);
        const TensorView<float> d_phi = Dense(d_key.data(), rows, E);
        const TensorView<float> d_v_c = d_v.Slice(0, t0, t1);
        FTX_RETURN_IF_ERROR(MatMul(ctx, v_c, Dense(seen.data(), E, D), d_phi,
                                   {.transpose_b = true}));
        FTX_RETURN_IF_ERROR(MatMul(ctx, k_c, Dense(seen.data(), E, D), d_v_c));
        if (chunks.intra) {
          FTX_RETURN_IF_ERROR(
              MaskedScores(ctx, q_c, k_c, bucket, scores.data()));
          FTX_RETURN_IF_ERROR(intra_grads(t0, rows));
          FTX_RETURN_IF_ERROR(MatMul(ctx, Dense(d_scores.data(), rows, rows),
                                     q_c, d_phi,
                                     {.transpose_a = true, .beta = 1.0f}));
          FTX_RETURN_IF_ERROR(MatMul(ctx, Dense(scores.data(), rows, rows),
                                     d_num_c, d_v_c,
                                     {.transpose_a = true, .beta = 1.0f}));
        }
        for (int64_t j = 0; j < rows; ++j) {
          const float* phi = &k_c.at(j, 0);
          float* d_k_j = &d_k.at(t0 + j, 0);
          for (int64_t e = 0; e < E; ++e) {
            d_k_j[e] = (d_key[j * E + e] + seen_sum[e]) * phi[e];
          }
        }
        FTX_RETURN_IF_ERROR(MatMul(ctx, q_c, d_num_c, Dense(seen.data(), E, D),
                                   {.transpose_a = true, .beta = 1.0f}));
        for (int64_t i = 0; i < rows; ++i) {
          const float* phi = &q_c.at(i, 0);
          for (int64_t e = 0; e < E; ++e) seen_sum[e] += d_den(t0 + i) * phi[e];
        }
        return absl::OkStatus();
      };
      for (int64_t t0 = (L - 1) / T * T; L > 0 && t0 >= 0 && statuses[nh].ok();
           t0 -= T) {
        statuses[nh] = reverse_chunk(t0, std::min(L, t0 + T));
      }
    }
  });
  FTX_RETURN_IF_ERROR(FirstError(statuses));
  QueryFeaturesBackward(ctx, query_features, d_query_features,
                        global_grads.d_queries);
  return absl::OkStatus();
}

AttentionSpec MixedLocalLinearAttentionSpec() {
  AttentionSpec spec;
  spec.name = "mixed-local-linear";
  spec.description =
      "linear-attention-transformer SelfAttention: local windowed softmax "
      "heads plus global linear-attention heads (softmax feature maps; causal: "
      "bucketed cumsum with a blind spot)";
  spec.options = {
      {"n_local_attn_heads", OptionType::kInt, OptionValue(int64_t{0}),
       "the first heads that use local windowed attention"},
      {"local_attn_window_size", OptionType::kInt, OptionValue(int64_t{128}),
       "window of the local heads"},
      {"causal", OptionType::kBool, OptionValue(false),
       "autoregressive attention"},
      {"blindspot_size", OptionType::kInt, OptionValue(int64_t{1}),
       "causal global heads see only earlier buckets of this many tokens"},
      {"attention_dropout", OptionType::kFloat, OptionValue(0.0),
       "dropout on the local heads' attention probabilities (training only)"}};
  spec.factory = [](const AttentionOptions& o,
                    std::vector<std::unique_ptr<Attention>>)
      -> absl::StatusOr<std::unique_ptr<Attention>> {
    MixedLocalLinearOptions options;
    options.n_local_attn_heads = o.Int("n_local_attn_heads").value_or(0);
    options.local_attn_window_size =
        o.Int("local_attn_window_size").value_or(128);
    options.causal = o.Bool("causal").value_or(false);
    options.blindspot_size = o.Int("blindspot_size").value_or(1);
    options.attention_dropout =
        static_cast<float>(o.Float("attention_dropout").value_or(0.0));
    FTX_RETURN_IF_ERROR(ValidateMixedLocalLinearOptions(options));
    return std::unique_ptr<Attention>(
        std::make_unique<MixedLocalLinearAttention>(options));
  };
  return spec;
}

}  // namespace ftx
