#include "attention/recurrent.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "attention/attention.h"
#include "kernels/base/status_macros.h"
#include "kernels/base/tensor.h"

namespace ftx {
namespace {

absl::Status CheckStepView(const char* op, const char* name,
                           const TensorView<const float>& view) {
  if (view.rank() != 3 || (view.data() == nullptr && view.NumElements() > 0) ||
      view.device().type != DeviceType::kCpu || !view.IsContiguous()) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", name,
                     " must be a contiguous CPU [N, H, *] tensor, got shape ",
                     view.shape().ToString()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<RecurrentStepDims> ValidateRecurrentStep(
    const char* op, TensorView<const float> query, TensorView<const float> key,
    TensorView<const float> value, TensorView<float> out) {
  FTX_RETURN_IF_ERROR(CheckStepView(op, "query", query));
  FTX_RETURN_IF_ERROR(CheckStepView(op, "key", key));
  FTX_RETURN_IF_ERROR(CheckStepView(op, "value", value));
  FTX_RETURN_IF_ERROR(CheckStepView(op, "out", out));
  RecurrentStepDims dims{query.dim(0), query.dim(1), query.dim(2),
                         value.dim(2)};
  if (key.shape() != query.shape() || value.dim(0) != dims.batch ||
      value.dim(1) != dims.heads || out.shape() != value.shape()) {
    return absl::InvalidArgumentError(absl::StrCat(
        op,
        ": expected query and key [N, H, E], value and out [N, H, D]; got "
        "query ",
        query.shape().ToString(), ", key ", key.shape().ToString(), ", value ",
        value.shape().ToString(), ", out ", out.shape().ToString()));
  }
  return dims;
}

absl::Status CheckSameStepDims(const char* op, const RecurrentStepDims& first,
                               const RecurrentStepDims& now) {
  if (first == now) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      op, ": step shapes changed from [N=", first.batch, ", H=", first.heads,
      ", E=", first.qk_dim, ", D=", first.value_dim, "] to [N=", now.batch,
      ", H=", now.heads, ", E=", now.qk_dim, ", D=", now.value_dim, "]"));
}

namespace {

class KeyValueCache : public RecurrentState {
 public:
  int64_t steps() const override { return steps_; }

  RecurrentStepDims dims;
  int64_t steps_ = 0;
  // Per (n, h): keys [steps, E] and values [steps, D], appended each step.
  std::vector<std::vector<float>> keys, values;
};

class RunningSums : public RecurrentState {
 public:
  int64_t steps() const override { return steps_; }

  RecurrentStepDims dims;
  int64_t features = 0;
  int64_t steps_ = 0;
  std::vector<float> kv;                // [N, H, F, D]
  std::vector<float> key_sum;           // [N, H, F]
  Tensor query_features, key_features;  // [N, 1, H, F]
};

}  // namespace

std::unique_ptr<RecurrentState> RecurrentFullAttention::NewState() const {
  return std::make_unique<KeyValueCache>();
}

absl::Status RecurrentFullAttention::Step(const Context& ctx,
                                          TensorView<const float> query,
                                          TensorView<const float> key,
                                          TensorView<const float> value,
                                          TensorView<float> out,
                                          RecurrentState& state) {
  constexpr char kOp[] = "RecurrentFullAttention";
  FTX_ASSIGN_OR_RETURN(const RecurrentStepDims dims,
                       ValidateRecurrentStep(kOp, query, key, value, out));
  auto* cache = dynamic_cast<KeyValueCache*>(&state);
  if (cache == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": state was not made by this mechanism's NewState"));
  }
  if (cache->steps_ == 0) {
    cache->dims = dims;
    cache->keys.assign(dims.batch * dims.heads, {});
    cache->values.assign(dims.batch * dims.heads, {});
  }
  FTX_RETURN_IF_ERROR(CheckSameStepDims(kOp, cache->dims, dims));
  const int64_t E = dims.qk_dim, D = dims.value_dim;
  const float temp = SoftmaxTemperature(softmax_temp_, E);
  const int64_t steps = ++cache->steps_;
  const bool observed = static_cast<bool>(probability_observer_);
  if (observed) probabilities_.resize(dims.batch * dims.heads * steps);
  ctx.pool().ParallelFor(dims.batch * dims.heads, [&](int64_t begin,
                                                      int64_t end) {
    std::vector<float> scores(steps);
    for (int64_t nh = begin; nh < end; ++nh) {
      std::vector<float>& keys = cache->keys[nh];
      std::vector<float>& values = cache->values[nh];
      keys.insert(keys.end(), key.data() + nh * E, key.data() + (nh + 1) * E);
      values.insert(values.end(), value.data() + nh * D,
                    value.data() + (nh + 1) * D);
      const float* q = query.data() + nh * E;
      float max_score = -std::numeric_limits<float>::infinity();
      for (int64_t s = 0; s < steps; ++s) {
        float dot = 0.0f;
        for (int64_t e = 0; e < E; ++e) dot += q[e] * keys[s * E + e];
        scores[s] = temp * dot;
        max_score = std::max(max_score, scores[s]);
      }
      float total = 0.0f;
      for (int64_t s = 0; s < steps; ++s) {
        scores[s] = std::exp(scores[s] - max_score);
        total += scores[s];
      }
      float* o = out.data() + nh * D;
      std::fill(o, o + D, 0.0f);
      for (int64_t s = 0; s < steps; ++s) {
        const float weight = scores[s] / total;
        for (int64_t d = 0; d < D; ++d) o[d] += weight * values[s * D + d];
        if (observed) probabilities_[nh * steps + s] = weight;
      }
    }
  });
  if (observed) {
    probability_observer_(TensorView<const float>(
        probabilities_.data(), {dims.batch, dims.heads, steps}));
  }
  return absl::OkStatus();
}

RecurrentLinearAttention::RecurrentLinearAttention(
    std::unique_ptr<FeatureMap> feature_map, float eps)
    : feature_map_(feature_map ? std::move(feature_map)
                               : std::make_unique<ActivationFeatureMap>()),
      eps_(eps) {}

std::unique_ptr<RecurrentState> RecurrentLinearAttention::NewState() const {
  return std::make_unique<RunningSums>();
}

absl::Status RecurrentLinearAttention::Step(const Context& ctx,
                                            TensorView<const float> query,
                                            TensorView<const float> key,
                                            TensorView<const float> value,
                                            TensorView<float> out,
                                            RecurrentState& state) {
  constexpr char kOp[] = "RecurrentLinearAttention";
  FTX_ASSIGN_OR_RETURN(const RecurrentStepDims dims,
                       ValidateRecurrentStep(kOp, query, key, value, out));
  auto* sums = dynamic_cast<RunningSums*>(&state);
  if (sums == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": state was not made by this mechanism's NewState"));
  }
  const int64_t N = dims.batch, H = dims.heads, E = dims.qk_dim,
                D = dims.value_dim;
  if (sums->steps_ == 0) {
    // fast-transformers draws the feature map once, on the first step.
    FTX_RETURN_IF_ERROR(feature_map_->NewFeatureMap(ctx, E));
    sums->dims = dims;
    sums->features = feature_map_->FeatureDim(E);
    sums->kv.assign(N * H * sums->features * D, 0.0f);
    sums->key_sum.assign(N * H * sums->features, 0.0f);
    FTX_ASSIGN_OR_RETURN(
        sums->query_features,
        Tensor::Create(DType::kF32, {N, 1, H, sums->features}));
    FTX_ASSIGN_OR_RETURN(
        sums->key_features,
        Tensor::Create(DType::kF32, {N, 1, H, sums->features}));
  }
  FTX_RETURN_IF_ERROR(CheckSameStepDims(kOp, sums->dims, dims));
  const int64_t F = sums->features;
  // Feature maps see one-step sequences [N, 1, H, E].
  FTX_RETURN_IF_ERROR(
      feature_map_->Forward(ctx, query.Reshape({N, 1, H, E}), true,
                            sums->query_features.view<float>()));
  FTX_RETURN_IF_ERROR(feature_map_->Forward(
      ctx, key.Reshape({N, 1, H, E}), false, sums->key_features.view<float>()));
  ++sums->steps_;
  const float* qf = sums->query_features.data<float>();
  const float* kf = sums->key_features.data<float>();
  ctx.pool().ParallelFor(N * H, [&](int64_t begin, int64_t end) {
    for (int64_t nh = begin; nh < end; ++nh) {
      float* kv = sums->kv.data() + nh * F * D;
      float* key_sum = sums->key_sum.data() + nh * F;
      const float* v = value.data() + nh * D;
      const float* k_row = kf + nh * F;
      const float* q_row = qf + nh * F;
      float* o = out.data() + nh * D;
      std::fill(o, o + D, 0.0f);
      float denominator = 0.0f;
      for (int64_t f = 0; f < F; ++f) {
        key_sum[f] += k_row[f];
        denominator += q_row[f] * key_sum[f];
        float* kv_row = kv + f * D;
        for (int64_t d = 0; d < D; ++d) {
          kv_row[d] += k_row[f] * v[d];
          o[d] += q_row[f] * kv_row[d];
        }
      }
      const float inverse = 1.0f / (denominator + eps_);
      for (int64_t d = 0; d < D; ++d) o[d] *= inverse;
    }
  });
  return absl::OkStatus();
}

}  // namespace ftx
