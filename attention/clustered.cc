#include "attention/clustered.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <utility>

#include "absl/strings/str_cat.h"
#include "attention/lsh.h"
#include "kernels/base/philox.h"
#include "kernels/base/rng.h"
#include "kernels/base/status_macros.h"
#include "kernels/dropout/dropout.h"
#include "kernels/matmul/matmul.h"
#include "kernels/softmax/softmax.h"

namespace ftx {
namespace {

// Philox streams of the attention dropout (key: AttentionInputs::seed).
constexpr uint64_t kClusterDropoutStream =
    0xC1D0;                                       // [H, N, C, S] cluster matrix
constexpr uint64_t kQueryDropoutStream = 0xC1D1;  // [N, H, L, k] top-k weights

// Cache layout of a forward.
enum Saved : int {
  kAssignment,  // cluster of each query [N, H, L] i32, -1 past the query length
  kCounts,      // members per cluster [N, H, C] i32
  kCentroidQueries,  // Q_c, the mean member query [H, N, C, E]
  kProbabilities,    // P_c = softmax(t scores_c) [H, N, C, S] (causal: raw
                     // scores)
  kAttended,    // what multiplies V per cluster [H, N, C, S]: dropout(P_c) or
                // dropout(B_c); empty when that is P_c itself or unused
  kTopKeys,     // T_c, key indices [N, H, C, k] i32 (improved variants)
  kTopWeights,  // a_i = softmax over each query's top-k dots [N, H, L, k]
  kBottomMass,  // m_c = sum of B_c [N, H, C] (improved)
  kSavedCount
};

// Gradient scratch layout.
enum GradScratch : int {
  kClusterGrad,   // sum of d_out over each cluster's members [H, N, C, D]
  kScoreGrad,     // d scores_c [H, N, C, S]
  kCentroidGrad,  // d Q_c [H, N, C, E]
  kTopDotGrad,    // d (q_i . k_j) over T_c [N, H, L, k]
  kMassGrad,      // d m_c [N, H, C]
  kGradScratchCount
};

const char* OpName(ClusteredVariant variant) {
  switch (variant) {
    case ClusteredVariant::kClustered:
      return "ClusteredAttention";
    case ClusteredVariant::kImproved:
      return "ImprovedClusteredAttention";
    case ClusteredVariant::kCausalImproved:
      return "CausalImprovedClusteredAttention";
  }
  return "ClusteredAttention";
}

const char* BackwardOpName(ClusteredVariant variant) {
  switch (variant) {
    case ClusteredVariant::kClustered:
      return "ClusteredAttentionBackward";
    case ClusteredVariant::kImproved:
      return "ImprovedClusteredAttentionBackward";
    case ClusteredVariant::kCausalImproved:
      return "CausalImprovedClusteredAttentionBackward";
  }
  return "ClusteredAttentionBackward";
}

bool Keep(uint64_t seed, uint64_t stream, uint64_t index, float p) {
  return DropoutKeeps({p, seed, stream, 0}, index);
}

// out[i] = in[i] * keep / (1 - p) with keep drawn from element i of the stream
// (the same draw in forward and backward). out may be in.
void ApplyDropout(const Context& ctx, float p, uint64_t seed, uint64_t stream,
                  int64_t count, const float* in, float* out) {
  DropoutInto(ctx, {p, seed, stream, 0}, count, in, out);
}

// a . b with eight partial sums, so the compiler can keep them in SIMD lanes.
float Dot(const float* a, const float* b, int64_t n) {
  float partial[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int lane = 0; lane < 8; ++lane)
      partial[lane] += a[i + lane] * b[i + lane];
  }
  float sum = 0.0f;
  for (; i < n; ++i) sum += a[i] * b[i];
  for (int lane = 0; lane < 8; ++lane) sum += partial[lane];
  return sum;
}

// y += alpha * x.
void Axpy(float alpha, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

// A pointer to row (n, l, h) of a [N, L, H, X] view (unit stride in X).
template <typename T>
T* Row(const TensorView<T>& view, int64_t n, int64_t l, int64_t h) {
  return &view.at(n, l, h, 0);
}

// Sizes and pointers shared by the top-k passes.
struct TopKeys {
  const AttentionInputs* inputs;
  AttentionDims dims;
  int64_t clusters, top;
  float temperature;
  bool causal, improved;
  bool dropout;
  float dropout_p;
  const int32_t* assignment;    // [N, H, L]
  const int32_t* keys;          // [N, H, C, k]
  const float* weights;         // [N, H, L, k]
  const float* bottom_mass;     // [N, H, C] (improved)
  const float* cluster_values;  // B_c V [H, N, C, D] (improved)
};

// Forward of the per-query top-k part: writes the weights a_i into `weights`
// (the buffer t.weights names) and out_i = [B_c V] + sum_j dropout(scale a_ij)
// v_j, scale = 1 - m_c (improved) or 1.
void TopKeysForward(const Context& ctx, const TopKeys& t, float* weights,
                    TensorView<float> out) {
  const AttentionDims& d = t.dims;
  const int64_t L = d.queries, S = d.keys, H = d.heads, E = d.qk_dim,
                D = d.value_dim;
  const int64_t C = t.clusters, K = t.top;
  const float inf = std::numeric_limits<float>::infinity();
  const float keep_scale = t.dropout ? 1.0f / (1.0f - t.dropout_p) : 1.0f;
  ctx.pool().ParallelFor(d.batch * H, [&](int64_t begin, int64_t end) {
    for (int64_t nh = begin; nh < end; ++nh) {
      const int64_t n = nh / H, h = nh % H;
      const int64_t valid_queries = t.inputs->query_lengths.Length(n, L);
      const int64_t valid_keys = t.inputs->key_lengths.Length(n, S);
      for (int64_t l = 0; l < L; ++l) {
        float* o = Row(out, n, l, h);
        float* w = weights + (nh * L + l) * K;
        std::fill(w, w + K, 0.0f);
        if (l >= valid_queries) {
          std::fill(o, o + D, 0.0f);
          continue;
        }
        const int32_t c = t.assignment[nh * L + l];
        const int32_t* keys = t.keys + (nh * C + c) * K;
        const float* q = Row(t.inputs->queries, n, l, h);
        float max_score = -inf;
        for (int64_t j = 0; j < K; ++j) {
          const int64_t s = keys[j];
          const bool allowed = s < valid_keys && (!t.causal || s <= l);
          w[j] = allowed
                     ? t.temperature * Dot(q, Row(t.inputs->keys, n, s, h), E)
                     : -inf;
          max_score = std::max(max_score, w[j]);
        }
        if (max_score == -inf) {
          std::fill(w, w + K, 0.0f);
        } else {
          float total = 0.0f;
          for (int64_t j = 0; j < K; ++j) {
            w[j] = std::exp(w[j] - max_score);
            total += w[j];
          }
          for (int64_t j = 0; j < K; ++j) w[j] /= total;
        }
        float scale = 1.0f;
        if (t.improved) {
          const float* bottom =
              t.cluster_values + ((h * d.batch + n) * C + c) * D;
          std::copy(bottom, bottom + D, o);
          scale = 1.0f - t.bottom_mass[nh * C + c];
        } else {
          std::fill(o, o + D, 0.0f);
        }
        for (int64_t j = 0; j < K; ++j) {
          float weight = w[j] * scale;
          if (t.dropout) {
            const bool keep = Keep(t.inputs->seed, kQueryDropoutStream,
                                   (nh * L + l) * K + j, t.dropout_p);
            weight = keep ? weight * keep_scale : 0.0f;
          }
          if (weight != 0.0f)
            Axpy(weight, Row(t.inputs->values, n, keys[j], h), o, D);
        }
      }
    }
  });
}

// Backward of the top-k part for query l of sequence nh: adds A_ij g_i to
// d_values, writes dot_grad[j] = d(q_i . k_j) and returns the gradient reaching
// m_c.
float TopQueryBackward(const TopKeys& t, int64_t nh, int64_t l,
                       const TensorView<const float>& d_out,
                       const TensorView<float>& d_values, float* dot_grad,
                       float* scratch) {
  const AttentionDims& d = t.dims;
  const int64_t L = d.queries, H = d.heads, D = d.value_dim, C = t.clusters,
                K = t.top;
  const int64_t n = nh / H, h = nh % H;
  const int32_t c = t.assignment[nh * L + l];
  const int32_t* keys = t.keys + (nh * C + c) * K;
  const float* w = t.weights + (nh * L + l) * K;
  const float* g = Row(d_out, n, l, h);
  const float scale = t.improved ? 1.0f - t.bottom_mass[nh * C + c] : 1.0f;
  const float keep_scale = t.dropout ? 1.0f / (1.0f - t.dropout_p) : 1.0f;
  // scratch[j] = d (scale a_ij), the gradient before the dropout mask and the
  // scale.
  float mass_grad = 0.0f;
  float weighted = 0.0f;
  for (int64_t j = 0; j < K; ++j) {
    scratch[j] = 0.0f;
    if (w[j] == 0.0f) continue;
    float factor = 1.0f;
    if (t.dropout) {
      const bool keep = Keep(t.inputs->seed, kQueryDropoutStream,
                             (nh * L + l) * K + j, t.dropout_p);
      factor = keep ? keep_scale : 0.0f;
    }
    if (factor == 0.0f) continue;
    float* dv = Row(d_values, n, keys[j], h);
    Axpy(w[j] * scale * factor, g, dv, D);
    const float d_scaled =
        factor * Dot(g, Row(t.inputs->values, n, keys[j], h), D);
    mass_grad -= d_scaled * w[j];
    scratch[j] = d_scaled * scale;  // d a_ij
    weighted += scratch[j] * w[j];
  }
  for (int64_t j = 0; j < K; ++j) {
    dot_grad[j] = t.temperature * w[j] * (scratch[j] - weighted);
  }
  return mass_grad;
}

// Sets rows [h, n, c, s] of scores to -inf for keys past each sequence's
// length.
void MaskPaddedKeys(const Context& ctx, const LengthMask& key_lengths,
                    int64_t batch, int64_t clusters, int64_t rows, int64_t keys,
                    float* scores) {
  if (key_lengths.full()) return;
  ctx.pool().ParallelFor(rows, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = (r / clusters) % batch;
      float* row = scores + r * keys;
      for (int64_t s = key_lengths.Length(n, keys); s < keys; ++s) {
        row[s] = -std::numeric_limits<float>::infinity();
      }
    }
  });
}

// top[n, h, c, :] = the K highest scores[h, n, c, :] (ties: lower index first).
void SelectTopKeys(const Context& ctx, const AttentionDims& d, int64_t clusters,
                   int64_t top, const float* scores, int32_t* keys) {
  const int64_t S = d.keys;
  ctx.pool().ParallelFor(d.heads * d.batch * clusters, [&](int64_t begin,
                                                           int64_t end) {
    std::vector<int32_t> order(S);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t c = r % clusters, n = (r / clusters) % d.batch,
                    h = r / (clusters * d.batch);
      const float* row = scores + r * S;
      std::iota(order.begin(), order.end(), 0);
      std::partial_sort(order.begin(), order.begin() + top, order.end(),
                        [row](int32_t a, int32_t b) {
                          return row[a] > row[b] || (row[a] == row[b] && a < b);
                        });
      std::copy(order.begin(), order.begin() + top,
                keys + ((n * d.heads + h) * clusters + c) * top);
    }
  });
}

absl::StatusOr<std::unique_ptr<Attention>> MakeClustered(
    ClusteredVariant variant, const AttentionOptions& o) {
  ClusteredAttentionOptions options;
  if (!o.Int("clusters").has_value()) {
    return absl::InvalidArgumentError(
        "clustered attention requires option \"clusters\"");
  }
  options.clusters = *o.Int("clusters");
  options.iterations = o.Int("iterations").value_or(10);
  options.bits = o.Int("bits").value_or(63);
  options.hash_bias = o.Bool("hash_bias").value_or(true);
  options.topk = o.Int("topk").value_or(32);
  if (auto temp = o.Float("softmax_temp"))
    options.softmax_temp = static_cast<float>(*temp);
  options.attention_dropout =
      static_cast<float>(o.Float("attention_dropout").value_or(0.1));
  options.seed = static_cast<uint64_t>(o.Int("seed").value_or(0));
  FTX_ASSIGN_OR_RETURN(auto attention,
                       ClusteredAttention::Create(variant, options));
  return std::unique_ptr<Attention>(std::move(attention));
}

AttentionSpec MakeSpec(ClusteredVariant variant, const char* name,
                       const char* description) {
  AttentionSpec spec;
  spec.name = name;
  spec.description = description;
  spec.options = {
      {"clusters", OptionType::kInt, std::nullopt,
       "number of query clusters C (<= L)", true},
      {"iterations", OptionType::kInt, OptionValue(int64_t{10}),
       "Lloyd iterations of the Hamming k-means"},
      {"bits", OptionType::kInt, OptionValue(int64_t{63}),
       "SIMPLE-LSH hash bits (1..63)"},
      {"hash_bias", OptionType::kBool, OptionValue(true),
       "planes with offsets (L2 LSH); false: through the origin (cosine LSH)"}};
  if (variant != ClusteredVariant::kClustered) {
    spec.options.push_back(
        {"topk", OptionType::kInt, OptionValue(int64_t{32}),
         "keys per cluster attended exactly by every member"});
  }
  spec.options.push_back({"softmax_temp", OptionType::kFloat, std::nullopt,
                          "softmax temperature; default 1/sqrt(E)"});
  spec.options.push_back(
      {"attention_dropout", OptionType::kFloat, OptionValue(0.1),
       "dropout on the attention probabilities (training only)"});
  spec.options.push_back(
      {"seed", OptionType::kInt, OptionValue(int64_t{0}),
       "seed of the hashing planes, initial centroids and "
       "empty-cluster reseeds (combined with the call's seed)"});
  spec.factory = [variant](const AttentionOptions& options,
                           std::vector<std::unique_ptr<Attention>>) {
    return MakeClustered(variant, options);
  };
  return spec;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ClusteredAttention>> ClusteredAttention::Create(
    ClusteredVariant variant, const ClusteredAttentionOptions& options) {
  const char* op = OpName(variant);
  if (options.clusters < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": clusters = ", options.clusters, " must be >= 1"));
  }
  if (options.iterations < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": iterations = ", options.iterations, " must be >= 0"));
  }
  if (options.bits < 1 || options.bits > kMaxLshBits) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": bits = ", options.bits, " is outside [1, ",
                     kMaxLshBits, "] (hashes are packed into an int64)"));
  }
  if (variant != ClusteredVariant::kClustered && options.topk < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": topk = ", options.topk, " must be >= 1"));
  }
  if (!(options.attention_dropout >= 0.0f &&
        options.attention_dropout < 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": attention_dropout = ", options.attention_dropout,
                     " is outside [0, 1)"));
  }
  if (options.softmax_temp.has_value() &&
      !std::isfinite(*options.softmax_temp)) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": softmax_temp must be finite"));
  }
  return std::unique_ptr<ClusteredAttention>(
      new ClusteredAttention(variant, options));
}

const char* ClusteredAttention::name() const {
  switch (variant_) {
    case ClusteredVariant::kClustered:
      return "clustered";
    case ClusteredVariant::kImproved:
      return "improved-clustered";
    case ClusteredVariant::kCausalImproved:
      return "causal-improved-clustered";
  }
  return "clustered";
}

absl::Status ClusteredAttention::SetPlanes(TensorView<const float> planes) {
  const char* op = OpName(variant_);
  if (planes.rank() != 2 || planes.dim(0) != options_.bits ||
      planes.dim(1) < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": planes must be [bits, E + 1] = [", options_.bits,
                     ", E + 1], got shape ", planes.shape().ToString()));
  }
  if (planes.data() == nullptr || planes.device().type != DeviceType::kCpu) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": planes must be non-null CPU memory"));
  }
  FTX_RETURN_IF_ERROR(EnsureTypedTensor(fixed_planes_, DType::kF32,
                                        planes.shape(), Device::Cpu()));
  float* copy = fixed_planes_.data<float>();
  for (int64_t b = 0; b < planes.dim(0); ++b) {
    for (int64_t e = 0; e < planes.dim(1); ++e)
      copy[b * planes.dim(1) + e] = planes.at(b, e);
  }
  return absl::OkStatus();
}

absl::Status ClusteredAttention::SetInitialCentroids(
    std::vector<int64_t> positions) {
  const char* op = OpName(variant_);
  if (static_cast<int64_t>(positions.size()) != options_.clusters) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": SetInitialCentroids got ", positions.size(),
                     " positions for clusters = ", options_.clusters));
  }
  for (size_t i = 0; i < positions.size(); ++i) {
    if (positions[i] < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(op, ": initial centroid position [", i,
                       "] = ", positions[i], " is negative"));
    }
  }
  fixed_positions_ = std::move(positions);
  return absl::OkStatus();
}

float ClusteredAttention::Temperature(int64_t qk_dim) const {
  return SoftmaxTemperature(options_.softmax_temp, qk_dim);
}

absl::StatusOr<int64_t> ClusteredAttention::CheckCall(
    const char* op, const AttentionDims& dims,
    const AttentionInputs& inputs) const {
  const AttnMask& mask = inputs.attn_mask;
  if (variant_ == ClusteredVariant::kCausalImproved) {
    if (mask.kind() != AttnMask::Kind::kCausal || mask.causal_offset() != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(op,
                       ": only the lower-triangular attn_mask "
                       "AttnMask::Causal() is supported"));
    }
  } else if (mask.kind() != AttnMask::Kind::kAll) {
    return absl::InvalidArgumentError(absl::StrCat(
        op,
        ": only an all-ones attn_mask is supported (fast-transformers asserts "
        "attn_mask.all_ones)"));
  }
  if (dims.keys < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": needs at least one key"));
  }
  if (options_.clusters > dims.queries) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": clusters = ", options_.clusters, " exceeds the ",
                     dims.queries, " queries"));
  }
  if (fixed_planes_.raw_data() != nullptr &&
      fixed_planes_.shape() != Shape{options_.bits, dims.qk_dim + 1}) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": the planes given to SetPlanes have shape ",
        fixed_planes_.shape().ToString(), ", expected [bits, E + 1] = [",
        options_.bits, ", ", dims.qk_dim + 1, "]"));
  }
  for (size_t i = 0; i < fixed_positions_.size(); ++i) {
    if (fixed_positions_[i] >= dims.queries) {
      return absl::InvalidArgumentError(absl::StrCat(
          op, ": initial centroid position [", i, "] = ", fixed_positions_[i],
          " is not below L = ", dims.queries));
    }
  }
  switch (variant_) {
    case ClusteredVariant::kClustered:
      return int64_t{0};
    case ClusteredVariant::kImproved:
      return std::min(options_.topk, dims.keys);
    case ClusteredVariant::kCausalImproved: {
      int64_t top = std::min(options_.topk, dims.keys);
      for (int64_t n = 0; n < dims.batch; ++n) {
        top = std::min(top, inputs.key_lengths.Length(n, dims.keys));
      }
      return top;
    }
  }
  return int64_t{0};
}

absl::Status ClusteredAttention::ClusterQueries(const Context& ctx,
                                                const AttentionInputs& inputs,
                                                const AttentionDims& dims,
                                                AttentionCache& saved) {
  const int64_t N = dims.batch, L = dims.queries, H = dims.heads,
                E = dims.qk_dim;
  const int64_t C = options_.clusters;
  const uint64_t call_seed = CombineSeeds(options_.seed, inputs.seed);
  TensorView<const float> planes;
  if (fixed_planes_.raw_data() != nullptr) {
    planes = fixed_planes_.view<float>();
  } else {
    FTX_RETURN_IF_ERROR(EnsureTypedTensor(
        planes_, DType::kF32, {options_.bits, E + 1}, ctx.device()));
    FTX_RETURN_IF_ERROR(
        FillNormal(ctx, planes_.view<float>(), 0.0f, 1.0f,
                   {.seed = call_seed, .stream = kLshPlaneStream}));
    if (!options_.hash_bias) {
      float* data = planes_.data<float>();
      for (int64_t b = 0; b < options_.bits; ++b) data[b * (E + 1) + E] = 0.0f;
    }
    planes = planes_.view<float>();
  }
  FTX_RETURN_IF_ERROR(
      EnsureTypedTensor(hashes_, DType::kI64, {N, H, L}, ctx.device()));
  FTX_RETURN_IF_ERROR(ComputeSimpleLshHashes(
      ctx, inputs.queries, planes, projections_, hashes_.view<int64_t>()));
  const std::vector<int64_t> positions =
      fixed_positions_.empty() ? ChooseCentroidIndices(call_seed, C, L)
                               : fixed_positions_;
  FTX_RETURN_IF_ERROR(EnsureTypedTensor(saved.saved[kAssignment], DType::kI32,
                                        {N, H, L}, ctx.device()));
  FTX_RETURN_IF_ERROR(EnsureTypedTensor(saved.saved[kCounts], DType::kI32,
                                        {N, H, C}, ctx.device()));
  FTX_RETURN_IF_ERROR(EnsureTypedTensor(hamming_centroids_, DType::kI64,
                                        {N, H, C}, ctx.device()));
  return HammingKMeans(
      ctx, hashes_.view<int64_t>(), inputs.query_lengths, positions,
      {.iterations = options_.iterations,
       .bits = options_.bits,
       .reseed_seed = call_seed},
      saved.saved[kAssignment].view<int32_t>(),
      saved.saved[kCounts].view<int32_t>(), hamming_centroids_.view<int64_t>());
}

absl::Status ClusteredAttention::Forward(const Context& ctx,
                                         const AttentionInputs& inputs,
                                         TensorView<float> out,
                                         AttentionCache* cache) {
  const char* op = OpName(variant_);
  FTX_ASSIGN_OR_RETURN(const AttentionDims dims,
                       ValidateAttentionForward(op, ctx, inputs, out));
  FTX_ASSIGN_OR_RETURN(const int64_t K, CheckCall(op, dims, inputs));
  if (ctx.device().type != DeviceType::kCpu) {
    return absl::UnimplementedError(
        absl::StrCat(op, ": only the CPU path exists so far"));
  }
  const int64_t N = dims.batch, L = dims.queries, S = dims.keys, H = dims.heads,
                E = dims.qk_dim, D = dims.value_dim, C = options_.clusters;
  const bool dropout = DropoutActive(inputs);
  const bool improved = variant_ == ClusteredVariant::kImproved;
  const bool causal = variant_ == ClusteredVariant::kCausalImproved;
  const float temperature = Temperature(E);
  AttentionCache& saved = cache != nullptr ? *cache : scratch_;
  saved.saved.resize(kSavedCount);
  FTX_RETURN_IF_ERROR(ClusterQueries(ctx, inputs, dims, saved));
  const int32_t* assignment = saved.saved[kAssignment].data<int32_t>();
  const int32_t* counts = saved.saved[kCounts].data<int32_t>();

  // Q_c [H, N, C, E] = mean of the member queries (zero for an empty cluster).
  FTX_RETURN_IF_ERROR(
      EnsureTensor(saved.saved[kCentroidQueries], {H, N, C, E}, ctx.device()));
  float* centroid_queries = saved.saved[kCentroidQueries].data<float>();
  ctx.pool().ParallelFor(N * H, [&](int64_t begin, int64_t end) {
    for (int64_t nh = begin; nh < end; ++nh) {
      const int64_t n = nh / H, h = nh % H;
      float* centers = centroid_queries + (h * N + n) * C * E;
      std::fill(centers, centers + C * E, 0.0f);
      for (int64_t l = 0; l < L; ++l) {
        const int32_t c = assignment[nh * L + l];
        if (c >= 0) {
          Axpy(1.0f / static_cast<float>(counts[nh * C + c]),
               Row(inputs.queries, n, l, h), centers + c * E, E);
        }
      }
    }
  });

  // scores_c [H, N, C, S] = Q_c K^T, padded keys -inf.
  FTX_RETURN_IF_ERROR(
      EnsureTensor(saved.saved[kProbabilities], {H, N, C, S}, ctx.device()));
  const TensorView<float> probabilities =
      saved.saved[kProbabilities].view<float>();
  const TensorView<float> centers = saved.saved[kCentroidQueries].view<float>();
  for (int64_t h = 0; h < H; ++h) {
    FTX_RETURN_IF_ERROR(
        MatMul(ctx, centers.Select(0, h), inputs.keys.Select(2, h),
               probabilities.Select(0, h), {.transpose_b = true}));
  }
  MaskPaddedKeys(ctx, inputs.key_lengths, N, C, H * N * C, S,
                 probabilities.data());
  if (K > 0) {
    FTX_RETURN_IF_ERROR(EnsureTypedTensor(saved.saved[kTopKeys], DType::kI32,
                                          {N, H, C, K}, ctx.device()));
    SelectTopKeys(ctx, dims, C, K, probabilities.data(),
                  saved.saved[kTopKeys].data<int32_t>());
    FTX_RETURN_IF_ERROR(
        EnsureTensor(saved.saved[kTopWeights], {N, H, L, K}, ctx.device()));
  } else {
    saved.saved[kTopKeys] = Tensor();
    saved.saved[kTopWeights] = Tensor();
  }
  const TensorView<float> rows = probabilities.Reshape({H * N * C, S});
  if (!causal) {
    FTX_RETURN_IF_ERROR(Softmax(ctx, rows, rows, {.scale = temperature}));
  }

  // The cluster-level product [B_c or P_c] V -> cluster_values_ [H, N, C, D].
  TensorView<float> attended = probabilities;
  if (improved) {
    FTX_RETURN_IF_ERROR(
        EnsureTensor(saved.saved[kAttended], {H, N, C, S}, ctx.device()));
    FTX_RETURN_IF_ERROR(
        EnsureTensor(saved.saved[kBottomMass], {N, H, C}, ctx.device()));
    attended = saved.saved[kAttended].view<float>();
    float* mass = saved.saved[kBottomMass].data<float>();
    const int32_t* top = saved.saved[kTopKeys].data<int32_t>();
    ctx.pool().ParallelFor(H * N * C, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t c = r % C, n = (r / C) % N, h = r / (C * N);
        float* bottom = attended.data() + r * S;
        std::copy(probabilities.data() + r * S,
                  probabilities.data() + (r + 1) * S, bottom);
        const int32_t* keys = top + ((n * H + h) * C + c) * K;
        for (int64_t j = 0; j < K; ++j) bottom[keys[j]] = 0.0f;
        float total = 0.0f;
        for (int64_t s = 0; s < S; ++s) total += bottom[s];
        mass[(n * H + h) * C + c] = total;
      }
    });
    if (dropout) {
      ApplyDropout(ctx, options_.attention_dropout, inputs.seed,
                   kClusterDropoutStream, attended.NumElements(),
                   attended.data(), attended.data());
    }
  } else if (!causal && dropout) {
    FTX_RETURN_IF_ERROR(
        EnsureTensor(saved.saved[kAttended], {H, N, C, S}, ctx.device()));
    attended = saved.saved[kAttended].view<float>();
    ApplyDropout(ctx, options_.attention_dropout, inputs.seed,
                 kClusterDropoutStream, attended.NumElements(),
                 probabilities.data(), attended.data());
  } else {
    saved.saved[kAttended] = Tensor();
  }
  if (!improved) saved.saved[kBottomMass] = Tensor();
  if (!causal) {
    FTX_RETURN_IF_ERROR(
        EnsureTensor(cluster_values_, {H, N, C, D}, ctx.device()));
    const TensorView<float> cluster_values = cluster_values_.view<float>();
    for (int64_t h = 0; h < H; ++h) {
      FTX_RETURN_IF_ERROR(MatMul(ctx, attended.Select(0, h),
                                 inputs.values.Select(2, h),
                                 cluster_values.Select(0, h)));
    }
  }

  if (variant_ == ClusteredVariant::kClustered) {
    // Every member query receives its cluster's values; padded queries get 0.
    const float* cluster_values = cluster_values_.data<float>();
    ctx.pool().ParallelFor(N * H, [&](int64_t begin, int64_t end) {
      for (int64_t nh = begin; nh < end; ++nh) {
        const int64_t n = nh / H, h = nh % H;
        for (int64_t l = 0; l < L; ++l) {
          float* o = Row(out, n, l, h);
          const int32_t c = assignment[nh * L + l];
          if (c < 0) {
            std::fill(o, o + D, 0.0f);
          } else {
            const float* source = cluster_values + ((h * N + n) * C + c) * D;
            std::copy(source, source + D, o);
          }
        }
      }
    });
    return absl::OkStatus();
  }
  float* weights = K > 0 ? saved.saved[kTopWeights].data<float>() : nullptr;
  const TopKeys top{&inputs,
                    dims,
                    C,
                    K,
                    temperature,
                    causal,
                    improved,
                    dropout,
                    options_.attention_dropout,
                    assignment,
                    K > 0 ? saved.saved[kTopKeys].data<int32_t>() : nullptr,
                    weights,
                    improved ? saved.saved[kBottomMass].data<float>() : nullptr,
                    improved ? cluster_values_.data<float>() : nullptr};
  TopKeysForward(ctx, top, weights, out);
  return absl::OkStatus();
}

absl::Status ClusteredAttention::Backward(const Context& ctx,
                                          const AttentionInputs& inputs,
                                          const AttentionCache& cache,
                                          TensorView<const float> d_out,
                                          const AttentionGrads& grads) {
  const char* op = BackwardOpName(variant_);
  FTX_ASSIGN_OR_RETURN(
      const AttentionDims dims,
      ValidateAttentionBackward(op, ctx, inputs, d_out, grads));
  FTX_ASSIGN_OR_RETURN(const int64_t K, CheckCall(op, dims, inputs));
  if (ctx.device().type != DeviceType::kCpu) {
    return absl::UnimplementedError(
        absl::StrCat(op, ": only the CPU path exists so far"));
  }
  const int64_t N = dims.batch, L = dims.queries, S = dims.keys, H = dims.heads,
                E = dims.qk_dim, D = dims.value_dim, C = options_.clusters;
  const bool dropout = DropoutActive(inputs);
  const bool improved = variant_ == ClusteredVariant::kImproved;
  const bool causal = variant_ == ClusteredVariant::kCausalImproved;
  const float temperature = Temperature(E);

  const auto has = [&](int index, const Shape& shape) {
    return cache.saved[index].raw_data() != nullptr &&
           cache.saved[index].shape() == shape;
  };
  bool matches = cache.saved.size() == kSavedCount &&
                 has(kAssignment, {N, H, L}) && has(kCounts, {N, H, C}) &&
                 has(kCentroidQueries, {H, N, C, E}) &&
                 has(kProbabilities, {H, N, C, S});
  if (matches && K > 0)
    matches = has(kTopKeys, {N, H, C, K}) && has(kTopWeights, {N, H, L, K});
  if (matches && improved) matches = has(kBottomMass, {N, H, C});
  if (matches && (improved || (!causal && dropout))) {
    matches = has(kAttended, {H, N, C, S});
  }
  if (!matches) {
    return absl::FailedPreconditionError(
        absl::StrCat(op,
                     ": the cache does not come from a Forward with these "
                     "inputs (pass a cache "
                     "to Forward)"));
  }
  const int32_t* assignment = cache.saved[kAssignment].data<int32_t>();
  const int32_t* counts = cache.saved[kCounts].data<int32_t>();

  TopKeys top{&inputs,    dims,        C,
              K,          temperature, causal,
              improved,   dropout,     options_.attention_dropout,
              assignment, nullptr,     nullptr,
              nullptr,    nullptr};
  if (K > 0) {
    top.keys = cache.saved[kTopKeys].data<int32_t>();
    top.weights = cache.saved[kTopWeights].data<float>();
  }
  if (improved) top.bottom_mass = cache.saved[kBottomMass].data<float>();

  if (causal) {
    // Only the top-k part: d_queries, d_keys, d_values start at zero and
    // accumulate.
    ctx.pool().ParallelFor(N * H, [&](int64_t begin, int64_t end) {
      std::vector<float> dot_grad(K), scratch(K);
      for (int64_t nh = begin; nh < end; ++nh) {
        const int64_t n = nh / H, h = nh % H;
        for (int64_t l = 0; l < L; ++l)
          std::fill_n(Row(grads.d_queries, n, l, h), E, 0.0f);
        for (int64_t s = 0; s < S; ++s) {
          std::fill_n(Row(grads.d_keys, n, s, h), E, 0.0f);
          std::fill_n(Row(grads.d_values, n, s, h), D, 0.0f);
        }
        const int64_t valid_queries = inputs.query_lengths.Length(n, L);
        for (int64_t l = 0; l < valid_queries; ++l) {
          TopQueryBackward(top, nh, l, d_out, grads.d_values, dot_grad.data(),
                           scratch.data());
          const int32_t* keys =
              top.keys + (nh * C + assignment[nh * L + l]) * K;
          float* dq = Row(grads.d_queries, n, l, h);
          const float* q = Row(inputs.queries, n, l, h);
          for (int64_t j = 0; j < K; ++j) {
            if (dot_grad[j] == 0.0f) continue;
            Axpy(dot_grad[j], Row(inputs.keys, n, keys[j], h), dq, E);
            Axpy(dot_grad[j], q, Row(grads.d_keys, n, keys[j], h), E);
          }
        }
      }
    });
    return absl::OkStatus();
  }

  grad_scratch_.saved.resize(kGradScratchCount);
  const Shape shapes[kGradScratchCount] = {{H, N, C, D},
                                           {H, N, C, S},
                                           {H, N, C, E},
                                           {N, H, L, std::max<int64_t>(K, 1)},
                                           {N, H, C}};
  for (int i = 0; i < kGradScratchCount; ++i) {
    FTX_RETURN_IF_ERROR(
        EnsureTensor(grad_scratch_.saved[i], shapes[i], ctx.device()));
  }
  const TensorView<float> cluster_grad =
      grad_scratch_.saved[kClusterGrad].view<float>();
  const TensorView<float> score_grad =
      grad_scratch_.saved[kScoreGrad].view<float>();
  const TensorView<float> centroid_grad =
      grad_scratch_.saved[kCentroidGrad].view<float>();
  float* top_dot_grad = grad_scratch_.saved[kTopDotGrad].data<float>();
  float* mass_grad = grad_scratch_.saved[kMassGrad].data<float>();

  // d (cluster values) [H, N, C, D] = sum of d_out over the members.
  ctx.pool().ParallelFor(N * H, [&](int64_t begin, int64_t end) {
    for (int64_t nh = begin; nh < end; ++nh) {
      const int64_t n = nh / H, h = nh % H;
      float* sums = cluster_grad.data() + (h * N + n) * C * D;
      std::fill(sums, sums + C * D, 0.0f);
      for (int64_t l = 0; l < L; ++l) {
        const int32_t c = assignment[nh * L + l];
        if (c >= 0) Axpy(1.0f, Row(d_out, n, l, h), sums + c * D, D);
      }
    }
  });
  const TensorView<const float> probabilities =
      cache.saved[kProbabilities].view<float>();
  const TensorView<const float> attended =
      improved || dropout ? cache.saved[kAttended].view<float>()
                          : probabilities;
  for (int64_t h = 0; h < H; ++h) {
    // d_V_h [N, S, D] = attended_h^T d(cluster values)_h;  d attended_h = ...
    // V_h^T.
    FTX_RETURN_IF_ERROR(
        MatMul(ctx, attended.Select(0, h), cluster_grad.Select(0, h),
               grads.d_values.Select(2, h), {.transpose_a = true}));
    FTX_RETURN_IF_ERROR(MatMul(ctx, cluster_grad.Select(0, h),
                               inputs.values.Select(2, h),
                               score_grad.Select(0, h), {.transpose_b = true}));
  }
  if (dropout) {
    ApplyDropout(ctx, options_.attention_dropout, inputs.seed,
                 kClusterDropoutStream, score_grad.NumElements(),
                 score_grad.data(), score_grad.data());
  }
  if (improved) {
    // Top-k part first: it adds to d_values and gives the gradient reaching
    // m_c.
    ctx.pool().ParallelFor(N * H, [&](int64_t begin, int64_t end) {
      std::vector<float> scratch(K);
      for (int64_t nh = begin; nh < end; ++nh) {
        const int64_t n = nh / H;
        float* mass = mass_grad + nh * C;
        std::fill(mass, mass + C, 0.0f);
        const int64_t valid_queries = inputs.query_lengths.Length(n, L);
        for (int64_t l = 0; l < valid_queries; ++l) {
          mass[assignment[nh * L + l]] +=
              TopQueryBackward(top, nh, l, d_out, grads.d_values,
                               top_dot_grad + (nh * L + l) * K, scratch.data());
        }
      }
    });
    // B_c = P_c outside T_c and m_c = sum(B_c): d P_c = (d B_c + d m_c) outside
    // T_c.
    ctx.pool().ParallelFor(H * N * C, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t c = r % C, n = (r / C) % N, h = r / (C * N);
        float* row = score_grad.data() + r * S;
        const float extra = mass_grad[(n * H + h) * C + c];
        for (int64_t s = 0; s < S; ++s) row[s] += extra;
        const int32_t* keys = top.keys + ((n * H + h) * C + c) * K;
        for (int64_t j = 0; j < K; ++j) row[keys[j]] = 0.0f;
      }
    });
  }
  const TensorView<float> grad_rows = score_grad.Reshape({H * N * C, S});
  FTX_RETURN_IF_ERROR(
      SoftmaxBackward(ctx, probabilities.Reshape({H * N * C, S}), grad_rows,
                      grad_rows, {.scale = temperature}));
  const TensorView<const float> centers =
      cache.saved[kCentroidQueries].view<float>();
  for (int64_t h = 0; h < H; ++h) {
    // d Q_c = d scores_c K;  d K = d scores_c^T Q_c.
    FTX_RETURN_IF_ERROR(MatMul(ctx, score_grad.Select(0, h),
                               inputs.keys.Select(2, h),
                               centroid_grad.Select(0, h)));
    FTX_RETURN_IF_ERROR(MatMul(ctx, score_grad.Select(0, h),
                               centers.Select(0, h), grads.d_keys.Select(2, h),
                               {.transpose_a = true}));
  }
  // d q_i = d Q_c / |c| (+ the exact top-k dots of the improved variant).
  ctx.pool().ParallelFor(N * H, [&](int64_t begin, int64_t end) {
    for (int64_t nh = begin; nh < end; ++nh) {
      const int64_t n = nh / H, h = nh % H;
      for (int64_t l = 0; l < L; ++l) {
        float* dq = Row(grads.d_queries, n, l, h);
        const int32_t c = assignment[nh * L + l];
        if (c < 0) {
          std::fill(dq, dq + E, 0.0f);
          continue;
        }
        const float* source = centroid_grad.data() + ((h * N + n) * C + c) * E;
        const float inverse_count =
            1.0f / static_cast<float>(counts[nh * C + c]);
        for (int64_t e = 0; e < E; ++e) dq[e] = source[e] * inverse_count;
        if (!improved) continue;
        const int32_t* keys = top.keys + (nh * C + c) * K;
        const float* dots = top_dot_grad + (nh * L + l) * K;
        const float* q = Row(inputs.queries, n, l, h);
        for (int64_t j = 0; j < K; ++j) {
          if (dots[j] == 0.0f) continue;
          Axpy(dots[j], Row(inputs.keys, n, keys[j], h), dq, E);
          Axpy(dots[j], q, Row(grads.d_keys, n, keys[j], h), E);
        }
      }
    }
  });
  return absl::OkStatus();
}

AttentionSpec ClusteredAttentionSpec() {
  return MakeSpec(
      ClusteredVariant::kClustered, "clustered",
      "queries clustered by LSH + Hamming k-means; one softmax per cluster, "
      "O(L C) (Vyas et al. 2020)");
}

AttentionSpec ImprovedClusteredAttentionSpec() {
  return MakeSpec(
      ClusteredVariant::kImproved, "improved-clustered",
      "clustered attention plus exact attention on each cluster's top-k keys "
      "(Vyas et al. 2020)");
}

AttentionSpec CausalImprovedClusteredAttentionSpec() {
  return MakeSpec(
      ClusteredVariant::kCausalImproved, "causal-improved-clustered",
      "causal attention on each query cluster's top-k keys (Vyas et al. 2020)");
}

}  // namespace ftx
