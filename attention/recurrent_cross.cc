#include "attention/recurrent_cross.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "attention/attention.h"
#include "kernels/base/status_macros.h"
#include "kernels/base/tensor.h"

namespace ftx {
namespace {

struct CrossDims {
  int64_t batch = 0, keys = 0, heads = 0, qk_dim = 0, value_dim = 0;
};

// Checks one step's query/out against the memory; returns the dimensions.
absl::StatusOr<CrossDims> ValidateCrossStep(const char* op,
                                            TensorView<const float> query,
                                            TensorView<const float> keys,
                                            TensorView<const float> values,
                                            const LengthMask& key_lengths,
                                            TensorView<float> out) {
  for (const auto& [name, view] :
       {std::pair<const char*, TensorView<const float>>{"query", query},
        {"keys", keys},
        {"values", values},
        {"out", out}}) {
    if ((view.data() == nullptr && view.NumElements() > 0) ||
        view.device().type != DeviceType::kCpu || !view.IsContiguous()) {
      return absl::InvalidArgumentError(
          absl::StrCat(op, ": ", name, " must be a contiguous CPU tensor, got ",
                       view.shape().ToString()));
    }
  }
  if (query.rank() != 3 || keys.rank() != 4 || values.rank() != 4 ||
      out.rank() != 3 || keys.dim(0) != query.dim(0) ||
      keys.dim(2) != query.dim(1) || keys.dim(3) != query.dim(2) ||
      values.dim(0) != keys.dim(0) || values.dim(1) != keys.dim(1) ||
      values.dim(2) != keys.dim(2) || out.dim(0) != query.dim(0) ||
      out.dim(1) != query.dim(1) || out.dim(2) != values.dim(3)) {
    return absl::InvalidArgumentError(absl::StrCat(
        op,
        ": expected query [N, H, E], keys [N, S, H, E], values [N, S, H, D], "
        "out "
        "[N, H, D]; got ",
        query.shape().ToString(), ", ", keys.shape().ToString(), ", ",
        values.shape().ToString(), ", ", out.shape().ToString()));
  }
  const CrossDims dims{query.dim(0), keys.dim(1), query.dim(1), query.dim(2),
                       values.dim(3)};
  FTX_RETURN_IF_ERROR(
      key_lengths.Validate(op, "key_lengths", dims.batch, dims.keys));
  return dims;
}

class CrossFullState : public RecurrentState {
 public:
  int64_t steps() const override { return steps_; }
  int64_t steps_ = 0;
  CrossDims dims;
  std::vector<float> keys, values;  // copies of the memory
  std::vector<int64_t> valid_keys;  // per batch entry
};

class CrossLinearState : public RecurrentState {
 public:
  int64_t steps() const override { return steps_; }
  int64_t steps_ = 0;
  CrossDims dims;
  int64_t features = 0;
  std::vector<float> kv;       // [N, H, F, D]
  std::vector<float> key_sum;  // [N, H, F]
  Tensor query_features;       // [N, 1, H, F]
};

absl::Status CheckStepShape(const char* op, const CrossDims& first,
                            TensorView<const float> query) {
  if (query.dim(0) != first.batch || query.dim(1) != first.heads ||
      query.dim(2) != first.qk_dim) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": step query shape changed to ", query.shape().ToString()));
  }
  return absl::OkStatus();
}

}  // namespace

std::unique_ptr<RecurrentState> RecurrentCrossFullAttention::NewState() const {
  return std::make_unique<CrossFullState>();
}

absl::Status RecurrentCrossFullAttention::Step(const Context& ctx,
                                               TensorView<const float> query,
                                               TensorView<const float> keys,
                                               TensorView<const float> values,
                                               const LengthMask& key_lengths,
                                               TensorView<float> out,
                                               RecurrentState& state) {
  constexpr char kOp[] = "RecurrentCrossFullAttention";
  auto* cache = dynamic_cast<CrossFullState*>(&state);
  if (cache == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": state was not made by this mechanism's NewState"));
  }
  if (cache->steps_ == 0) {
    FTX_ASSIGN_OR_RETURN(
        cache->dims,
        ValidateCrossStep(kOp, query, keys, values, key_lengths, out));
    cache->keys.assign(keys.data(), keys.data() + keys.NumElements());
    cache->values.assign(values.data(), values.data() + values.NumElements());
    cache->valid_keys.resize(cache->dims.batch);
    for (int64_t n = 0; n < cache->dims.batch; ++n) {
      cache->valid_keys[n] = key_lengths.Length(n, cache->dims.keys);
    }
  }
  const CrossDims& dims = cache->dims;
  FTX_RETURN_IF_ERROR(CheckStepShape(kOp, dims, query));
  const int64_t S = dims.keys, H = dims.heads, E = dims.qk_dim,
                D = dims.value_dim;
  const float temp = SoftmaxTemperature(softmax_temp_, E);
  ++cache->steps_;
  const bool observed = static_cast<bool>(probability_observer_);
  if (observed) probabilities_.assign(dims.batch * S * H, 0.0f);
  ctx.pool().ParallelFor(dims.batch * H, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(S);
    for (int64_t nh = begin; nh < end; ++nh) {
      const int64_t n = nh / H, h = nh % H;
      const float* q = query.data() + nh * E;
      float* o = out.data() + nh * D;
      std::fill(o, o + D, 0.0f);
      const int64_t valid = cache->valid_keys[n];
      if (valid == 0)
        continue;  // every key masked: zero output, as FullAttention
      float max_score = -std::numeric_limits<float>::infinity();
      for (int64_t s = 0; s < valid; ++s) {
        const float* k = cache->keys.data() + ((n * S + s) * H + h) * E;
        float dot = 0.0f;
        for (int64_t e = 0; e < E; ++e) dot += q[e] * k[e];
        scores[s] = temp * dot;
        max_score = std::max(max_score, scores[s]);
      }
      float total = 0.0f;
      for (int64_t s = 0; s < valid; ++s) {
        scores[s] = std::exp(scores[s] - max_score);
        total += scores[s];
      }
      for (int64_t s = 0; s < valid; ++s) {
        const float* v = cache->values.data() + ((n * S + s) * H + h) * D;
        const float weight = scores[s] / total;
        for (int64_t d = 0; d < D; ++d) o[d] += weight * v[d];
        if (observed) probabilities_[(n * S + s) * H + h] = weight;
      }
    }
  });
  if (observed) {
    probability_observer_(
        TensorView<const float>(probabilities_.data(), {dims.batch, S, H}));
  }
  return absl::OkStatus();
}

RecurrentCrossLinearAttention::RecurrentCrossLinearAttention(
    std::unique_ptr<FeatureMap> feature_map, float eps)
    : feature_map_(feature_map ? std::move(feature_map)
                               : std::make_unique<ActivationFeatureMap>()),
      eps_(eps) {}

std::unique_ptr<RecurrentState> RecurrentCrossLinearAttention::NewState()
    const {
  return std::make_unique<CrossLinearState>();
}

absl::Status RecurrentCrossLinearAttention::Step(const Context& ctx,
                                                 TensorView<const float> query,
                                                 TensorView<const float> keys,
                                                 TensorView<const float> values,
                                                 const LengthMask& key_lengths,
                                                 TensorView<float> out,
                                                 RecurrentState& state) {
  constexpr char kOp[] = "RecurrentCrossLinearAttention";
  auto* sums = dynamic_cast<CrossLinearState*>(&state);
  if (sums == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": state was not made by this mechanism's NewState"));
  }
  if (sums->steps_ == 0) {
    FTX_ASSIGN_OR_RETURN(sums->dims, ValidateCrossStep(kOp, query, keys, values,
                                                       key_lengths, out));
    const CrossDims& d = sums->dims;
    FTX_RETURN_IF_ERROR(feature_map_->NewFeatureMap(ctx, d.qk_dim));
    sums->features = feature_map_->FeatureDim(d.qk_dim);
    const int64_t F = sums->features;
    FTX_ASSIGN_OR_RETURN(
        Tensor key_features,
        Tensor::Create(DType::kF32, {d.batch, d.keys, d.heads, F}));
    FTX_RETURN_IF_ERROR(
        feature_map_->Forward(ctx, keys, false, key_features.view<float>()));
    FTX_ASSIGN_OR_RETURN(sums->query_features,
                         Tensor::Create(DType::kF32, {d.batch, 1, d.heads, F}));
    sums->kv.assign(d.batch * d.heads * F * d.value_dim, 0.0f);
    sums->key_sum.assign(d.batch * d.heads * F, 0.0f);
    const float* kf = key_features.data<float>();
    ctx.pool().ParallelFor(d.batch * d.heads, [&](int64_t begin, int64_t end) {
      for (int64_t nh = begin; nh < end; ++nh) {
        const int64_t n = nh / d.heads, h = nh % d.heads;
        float* kv = sums->kv.data() + nh * F * d.value_dim;
        float* key_sum = sums->key_sum.data() + nh * F;
        for (int64_t s = 0; s < key_lengths.Length(n, d.keys); ++s) {
          const float* k_row = kf + ((n * d.keys + s) * d.heads + h) * F;
          const float* v =
              values.data() + ((n * d.keys + s) * d.heads + h) * d.value_dim;
          for (int64_t f = 0; f < F; ++f) {
            key_sum[f] += k_row[f];
            for (int64_t x = 0; x < d.value_dim; ++x)
              kv[f * d.value_dim + x] += k_row[f] * v[x];
          }
        }
      }
    });
  }
  const CrossDims& dims = sums->dims;
  FTX_RETURN_IF_ERROR(CheckStepShape(kOp, dims, query));
  const int64_t H = dims.heads, D = dims.value_dim, F = sums->features;
  FTX_RETURN_IF_ERROR(
      feature_map_->Forward(ctx, query.Reshape({dims.batch, 1, H, dims.qk_dim}),
                            true, sums->query_features.view<float>()));
  ++sums->steps_;
  const float* qf = sums->query_features.data<float>();
  ctx.pool().ParallelFor(dims.batch * H, [&](int64_t begin, int64_t end) {
    for (int64_t nh = begin; nh < end; ++nh) {
      const float* kv = sums->kv.data() + nh * F * D;
      const float* key_sum = sums->key_sum.data() + nh * F;
      const float* q_row = qf + nh * F;
      float* o = out.data() + nh * D;
      std::fill(o, o + D, 0.0f);
      float denominator = 0.0f;
      for (int64_t f = 0; f < F; ++f) {
        denominator += q_row[f] * key_sum[f];
        for (int64_t d = 0; d < D; ++d) o[d] += q_row[f] * kv[f * D + d];
      }
      const float inverse = 1.0f / (denominator + eps_);
      for (int64_t d = 0; d < D; ++d) o[d] *= inverse;
    }
  });
  return absl::OkStatus();
}

}  // namespace ftx
