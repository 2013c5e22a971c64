#include "attention/reformer.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "attention/lsh.h"
#include "kernels/base/philox.h"
#include "kernels/base/rng.h"
#include "kernels/base/status_macros.h"

namespace ftx {
namespace {

// Philox stream of the attention dropout (key: AttentionInputs::seed).
constexpr uint64_t kDropoutStream = 0x5EF0;

// Cache layout of a forward.
enum Saved : int {
  kNormalizedKeys,  // K = Q / |Q|, zero for padded keys [N, L, H, E]
  kInverseNorms,    // 1 / |q| where K is not zero, else 0 [N, L, H]
  kOrder,           // positions sorted by bucket, per round [R, N, H, L] i32
  kProbabilities,   // softmax over the 2 chunk_size slots of each sorted query
                    // [R, N * H, L, 2 chunk_size]
  kSavedCount
};

float Dot(const float* a, const float* b, int64_t n) {
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

void Axpy(float alpha, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

template <typename T>
T* Row(const TensorView<T>& view, int64_t n, int64_t l, int64_t h) {
  return &view.at(n, l, h, 0);
}

}  // namespace

absl::StatusOr<std::unique_ptr<ReformerAttention>> ReformerAttention::Create(
    const ReformerAttentionOptions& options) {
  if (options.chunk_size < 1 || options.bits < 1 || options.rounds < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ReformerAttention: chunk_size, bits and rounds must be >= 1, got ",
        options.chunk_size, ", ", options.bits, ", ", options.rounds));
  }
  if (!(options.attention_dropout >= 0.0f && options.attention_dropout < 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("ReformerAttention: attention_dropout = ", options.attention_dropout,
                     " is outside [0, 1)"));
  }
  if (options.softmax_temp.has_value() && !std::isfinite(*options.softmax_temp)) {
    return absl::InvalidArgumentError("ReformerAttention: softmax_temp must be finite");
  }
  return std::unique_ptr<ReformerAttention>(new ReformerAttention(options));
}

absl::Status ReformerAttention::SetPlanes(TensorView<const float> planes) {
  if (planes.rank() != 3 || planes.dim(0) != options_.rounds ||
      planes.dim(1) != options_.bits || planes.dim(2) < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ReformerAttention: planes must be [rounds, bits, E] = [", options_.rounds, ", ",
        options_.bits, ", E], got shape ", planes.shape().ToString()));
  }
  if (planes.data() == nullptr || planes.device().type != DeviceType::kCpu) {
    return absl::InvalidArgumentError(
        "ReformerAttention: planes must be non-null CPU memory");
  }
  FTX_RETURN_IF_ERROR(
      EnsureTypedTensor(fixed_planes_, DType::kF32, planes.shape(), Device::Cpu()));
  float* copy = fixed_planes_.data<float>();
  for (int64_t r = 0; r < planes.dim(0); ++r) {
    for (int64_t b = 0; b < planes.dim(1); ++b) {
      for (int64_t e = 0; e < planes.dim(2); ++e) {
        *copy++ = planes.at(r, b, e);
      }
    }
  }
  return absl::OkStatus();
}

float ReformerAttention::Temperature(int64_t qk_dim) const {
  return options_.softmax_temp.has_value() ? *options_.softmax_temp
                                           : 1.0f / std::sqrt(static_cast<float>(qk_dim));
}

absl::Status ReformerAttention::CheckCall(const char* op, const AttentionDims& dims) const {
  if (dims.keys != dims.queries) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": Reformer is self-attention: values need S = L = ", dims.queries,
        " positions (keys are ignored), got S = ", dims.keys));
  }
  if (dims.queries % options_.chunk_size != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": L = ", dims.queries, " is not divisible by chunk_size = ",
                     options_.chunk_size));
  }
  if (fixed_planes_.raw_data() != nullptr &&
      fixed_planes_.shape() != Shape{options_.rounds, options_.bits, dims.qk_dim}) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": the planes given to SetPlanes have shape ", fixed_planes_.shape().ToString(),
        ", expected [rounds, bits, E] = [", options_.rounds, ", ", options_.bits, ", ",
        dims.qk_dim, "]"));
  }
  return absl::OkStatus();
}

absl::Status ReformerAttention::Forward(const Context& ctx, const AttentionInputs& inputs,
                                        TensorView<float> out, AttentionCache* cache) {
  constexpr const char* kOp = "ReformerAttention";
  FTX_ASSIGN_OR_RETURN(const AttentionDims dims,
                       ValidateAttentionForward(kOp, ctx, inputs, out));
  FTX_RETURN_IF_ERROR(CheckCall(kOp, dims));
  if (ctx.device().type != DeviceType::kCpu) {
    return absl::UnimplementedError("ReformerAttention: only the CPU path exists so far");
  }
  const int64_t N = dims.batch, L = dims.queries, H = dims.heads, E = dims.qk_dim,
                D = dims.value_dim;
  const int64_t C = options_.chunk_size, R = options_.rounds, W = 2 * C;
  const float temperature = Temperature(E);
  const bool dropout = DropoutActive(inputs);
  const float p = options_.attention_dropout;
  AttentionCache& saved = cache != nullptr ? *cache : scratch_;
  saved.saved.resize(kSavedCount);
  FTX_RETURN_IF_ERROR(EnsureTensor(saved.saved[kNormalizedKeys], {N, L, H, E}, ctx.device()));
  FTX_RETURN_IF_ERROR(EnsureTensor(saved.saved[kInverseNorms], {N, L, H}, ctx.device()));
  FTX_RETURN_IF_ERROR(
      EnsureTypedTensor(saved.saved[kOrder], DType::kI32, {R, N, H, L}, ctx.device()));
  FTX_RETURN_IF_ERROR(EnsureTensor(saved.saved[kProbabilities], {R, N * H, L, W}, ctx.device()));
  float* keys = saved.saved[kNormalizedKeys].data<float>();
  float* inverse_norms = saved.saved[kInverseNorms].data<float>();
  int32_t* orders = saved.saved[kOrder].data<int32_t>();
  float* probabilities = saved.saved[kProbabilities].data<float>();

  // K = Q / |Q|, zero for padded keys and zero queries.
  ctx.pool().ParallelFor(N * L, [&](int64_t begin, int64_t end) {
    for (int64_t nl = begin; nl < end; ++nl) {
      const int64_t n = nl / L, l = nl % L;
      const bool valid = l < inputs.key_lengths.Length(n, L);
      for (int64_t h = 0; h < H; ++h) {
        const float* q = Row(inputs.queries, n, l, h);
        float* k = keys + (nl * H + h) * E;
        const float norm = std::sqrt(Dot(q, q, E));
        if (!valid || norm == 0.0f) {
          std::fill(k, k + E, 0.0f);
          inverse_norms[nl * H + h] = 0.0f;
          continue;
        }
        for (int64_t e = 0; e < E; ++e) k[e] = q[e] / norm;
        inverse_norms[nl * H + h] = 1.0f / norm;
      }
    }
  });

  TensorView<const float> planes;
  if (fixed_planes_.raw_data() != nullptr) {
    planes = fixed_planes_.view<float>();
  } else {
    FTX_RETURN_IF_ERROR(
        EnsureTypedTensor(planes_, DType::kF32, {R, options_.bits, E}, ctx.device()));
    FTX_RETURN_IF_ERROR(FillNormal(
        ctx, planes_.view<float>(), 0.0f, 1.0f,
        {.seed = CombineSeeds(options_.seed, inputs.seed), .stream = kLshPlaneStream}));
    planes = planes_.view<float>();
  }
  FTX_RETURN_IF_ERROR(EnsureTypedTensor(buckets_, DType::kI32, {N, H, L}, ctx.device()));
  const TensorView<const float> key_view = saved.saved[kNormalizedKeys].view<float>();
  for (int64_t r = 0; r < R; ++r) {
    FTX_RETURN_IF_ERROR(ComputeAngularBuckets(ctx, key_view, planes.Select(0, r),
                                              projections_, buckets_.view<int32_t>()));
    const int32_t* buckets = buckets_.data<int32_t>();
    ctx.pool().ParallelFor(N * H, [&](int64_t begin, int64_t end) {
      for (int64_t nh = begin; nh < end; ++nh) {
        int32_t* order = orders + (r * N * H + nh) * L;
        const int32_t* bucket = buckets + nh * L;
        std::iota(order, order + L, 0);
        std::stable_sort(order, order + L,
                         [bucket](int32_t a, int32_t b) { return bucket[a] < bucket[b]; });
      }
    });
  }

  const float inf = std::numeric_limits<float>::infinity();
  const float keep_scale = dropout ? 1.0f / (1.0f - p) : 1.0f;
  const float round_weight = 1.0f / static_cast<float>(R);
  ctx.pool().ParallelFor(N * H, [&](int64_t begin, int64_t end) {
    std::vector<float> mask(W);
    for (int64_t nh = begin; nh < end; ++nh) {
      const int64_t n = nh / H, h = nh % H;
      const int64_t valid_keys = inputs.key_lengths.Length(n, L);
      for (int64_t l = 0; l < L; ++l) std::fill_n(Row(out, n, l, h), D, 0.0f);
      for (int64_t r = 0; r < R; ++r) {
        const int32_t* order = orders + (r * N * H + nh) * L;
        for (int64_t i = 0; i < L; ++i) {
          // Slot j holds sorted position (chunk - 1) * C + j; negative ones are the
          // zero keys in front of chunk 0.
          const int64_t first = (i / C - 1) * C;
          const int64_t query_position = order[i];
          const float* q = Row(inputs.queries, n, query_position, h);
          float* row = probabilities + ((r * N * H + nh) * L + i) * W;
          bool all_infinite = true;
          for (int64_t j = 0; j < W; ++j) {
            if (first + j < 0) {
              mask[j] = -inf;
              continue;
            }
            const int64_t key_position = order[first + j];
            float m = key_position < valid_keys ? 0.0f : -inf;
            if (options_.masked && key_position == query_position) m += -1e9f;
            m += inputs.attn_mask.At(query_position, key_position);
            mask[j] = m;
            all_infinite = all_infinite && std::isinf(m);
          }
          float max_score = -inf;
          for (int64_t j = 0; j < W; ++j) {
            const float m = all_infinite ? 0.0f : mask[j];
            const float dot =
                first + j < 0 ? 0.0f
                              : Dot(q, keys + ((n * L + order[first + j]) * H + h) * E, E);
            row[j] = temperature * (dot + m);
            max_score = std::max(max_score, row[j]);
          }
          float total = 0.0f;
          for (int64_t j = 0; j < W; ++j) {
            row[j] = std::exp(row[j] - max_score);
            total += row[j];
          }
          float* o = Row(out, n, query_position, h);
          for (int64_t j = 0; j < W; ++j) {
            row[j] /= total;
            if (first + j < 0) continue;
            float weight = row[j];
            if (dropout) {
              const bool keep = RandomUniform(inputs.seed, kDropoutStream,
                                              ((r * N * H + nh) * L + i) * W + j) >= p;
              weight = keep ? weight * keep_scale : 0.0f;
            }
            if (weight == 0.0f) continue;
            Axpy(round_weight * weight, Row(inputs.values, n, order[first + j], h), o, D);
          }
        }
      }
    }
  });
  return absl::OkStatus();
}

absl::Status ReformerAttention::Backward(const Context& ctx, const AttentionInputs& inputs,
                                         const AttentionCache& cache,
                                         TensorView<const float> d_out,
                                         const AttentionGrads& grads) {
  constexpr const char* kOp = "ReformerAttentionBackward";
  FTX_ASSIGN_OR_RETURN(const AttentionDims dims,
                       ValidateAttentionBackward(kOp, ctx, inputs, d_out, grads));
  FTX_RETURN_IF_ERROR(CheckCall(kOp, dims));
  if (ctx.device().type != DeviceType::kCpu) {
    return absl::UnimplementedError(
        "ReformerAttentionBackward: only the CPU path exists so far");
  }
  const int64_t N = dims.batch, L = dims.queries, H = dims.heads, E = dims.qk_dim,
                D = dims.value_dim;
  const int64_t C = options_.chunk_size, R = options_.rounds, W = 2 * C;
  if (cache.saved.size() != kSavedCount ||
      cache.saved[kNormalizedKeys].shape() != Shape{N, L, H, E} ||
      cache.saved[kOrder].shape() != Shape{R, N, H, L} ||
      cache.saved[kProbabilities].shape() != Shape{R, N * H, L, W}) {
    return absl::FailedPreconditionError(
        "ReformerAttentionBackward: the cache does not come from a Forward with these "
        "inputs (pass a cache to Forward)");
  }
  const float* keys = cache.saved[kNormalizedKeys].data<float>();
  const float* inverse_norms = cache.saved[kInverseNorms].data<float>();
  const int32_t* orders = cache.saved[kOrder].data<int32_t>();
  const float* probabilities = cache.saved[kProbabilities].data<float>();
  FTX_RETURN_IF_ERROR(EnsureTensor(key_grad_, {N, L, H, E}, ctx.device()));
  float* key_grad = key_grad_.data<float>();
  const float temperature = Temperature(E);
  const bool dropout = DropoutActive(inputs);
  const float p = options_.attention_dropout;
  const float keep_scale = dropout ? 1.0f / (1.0f - p) : 1.0f;
  const float round_weight = 1.0f / static_cast<float>(R);

  ctx.pool().ParallelFor(N * H, [&](int64_t begin, int64_t end) {
    std::vector<float> slot_grad(W);
    for (int64_t nh = begin; nh < end; ++nh) {
      const int64_t n = nh / H, h = nh % H;
      for (int64_t l = 0; l < L; ++l) {
        std::fill_n(Row(grads.d_queries, n, l, h), E, 0.0f);
        std::fill_n(Row(grads.d_keys, n, l, h), E, 0.0f);
        std::fill_n(Row(grads.d_values, n, l, h), D, 0.0f);
        std::fill_n(key_grad + ((n * L + l) * H + h) * E, E, 0.0f);
      }
      for (int64_t r = 0; r < R; ++r) {
        const int32_t* order = orders + (r * N * H + nh) * L;
        for (int64_t i = 0; i < L; ++i) {
          const int64_t first = (i / C - 1) * C;
          const int64_t query_position = order[i];
          const float* g = Row(d_out, n, query_position, h);
          const float* row = probabilities + ((r * N * H + nh) * L + i) * W;
          // slot_grad = d P (after undoing dropout); the zero slots carry zero values.
          float weighted = 0.0f;
          for (int64_t j = 0; j < W; ++j) {
            slot_grad[j] = 0.0f;
            if (first + j < 0 || row[j] == 0.0f) continue;
            float factor = round_weight;
            if (dropout) {
              const bool keep = RandomUniform(inputs.seed, kDropoutStream,
                                              ((r * N * H + nh) * L + i) * W + j) >= p;
              factor = keep ? factor * keep_scale : 0.0f;
            }
            if (factor == 0.0f) continue;
            const int64_t key_position = order[first + j];
            Axpy(factor * row[j], g, Row(grads.d_values, n, key_position, h), D);
            slot_grad[j] = factor * Dot(g, Row(inputs.values, n, key_position, h), D);
            weighted += slot_grad[j] * row[j];
          }
          float* dq = Row(grads.d_queries, n, query_position, h);
          const float* q = Row(inputs.queries, n, query_position, h);
          for (int64_t j = 0; j < W; ++j) {
            if (first + j < 0) continue;
            const float dot_grad = temperature * row[j] * (slot_grad[j] - weighted);
            if (dot_grad == 0.0f) continue;
            const int64_t key_index = (n * L + order[first + j]) * H + h;
            Axpy(dot_grad, keys + key_index * E, dq, E);
            Axpy(dot_grad, q, key_grad + key_index * E, E);
          }
        }
      }
      // K = Q / |Q|: d q += (d K - K (K . d K)) / |q|.
      for (int64_t l = 0; l < L; ++l) {
        const int64_t index = (n * L + l) * H + h;
        const float inverse_norm = inverse_norms[index];
        if (inverse_norm == 0.0f) continue;
        const float* k = keys + index * E;
        const float* dk = key_grad + index * E;
        const float projection = Dot(k, dk, E);
        float* dq = Row(grads.d_queries, n, l, h);
        for (int64_t e = 0; e < E; ++e) dq[e] += inverse_norm * (dk[e] - projection * k[e]);
      }
    }
  });
  return absl::OkStatus();
}

AttentionSpec ReformerAttentionSpec() {
  AttentionSpec spec;
  spec.name = "reformer";
  spec.description =
      "shared-QK LSH attention in sorted chunks with a one-chunk look-back "
      "(Kitaev et al. 2020)";
  spec.options = {
      {"chunk_size", OptionType::kInt, OptionValue(int64_t{32}),
       "sorted positions per chunk (must divide L)"},
      {"bits", OptionType::kInt, OptionValue(int64_t{63}),
       "hashing planes per round (2 bits buckets)"},
      {"rounds", OptionType::kInt, OptionValue(int64_t{4}), "hashing rounds, averaged"},
      {"masked", OptionType::kBool, OptionValue(false),
       "a query does not attend to itself unless nothing else is visible"},
      {"softmax_temp", OptionType::kFloat, std::nullopt,
       "softmax temperature; default 1/sqrt(E)"},
      {"attention_dropout", OptionType::kFloat, OptionValue(0.1),
       "dropout on the attention probabilities (training only)"},
      {"seed", OptionType::kInt, OptionValue(int64_t{0}),
       "seed of the hashing planes (combined with the call's seed)"}};
  spec.factory = [](const AttentionOptions& o, std::vector<std::unique_ptr<Attention>>)
      -> absl::StatusOr<std::unique_ptr<Attention>> {
    ReformerAttentionOptions options;
    options.chunk_size = o.Int("chunk_size").value_or(32);
    options.bits = o.Int("bits").value_or(63);
    options.rounds = o.Int("rounds").value_or(4);
    options.masked = o.Bool("masked").value_or(false);
    if (auto temp = o.Float("softmax_temp")) options.softmax_temp = static_cast<float>(*temp);
    options.attention_dropout =
        static_cast<float>(o.Float("attention_dropout").value_or(0.1));
    options.seed = static_cast<uint64_t>(o.Int("seed").value_or(0));
    FTX_ASSIGN_OR_RETURN(auto attention, ReformerAttention::Create(options));
    return std::unique_ptr<Attention>(std::move(attention));
  };
  return spec;
}

}  // namespace ftx
