#include "layers/t5_relative_bias.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/base/rng.h"
#include "kernels/base/status_macros.h"

namespace ftx {

absl::StatusOr<T5RelativeBias> T5RelativeBias::Create(
    const T5RelativeBiasConfig& config) {
  if (config.heads < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("T5RelativeBias: heads must be >= 1, got ", config.heads));
  }
  if (config.num_buckets > config.max_distance) {
    return absl::InvalidArgumentError(
        absl::StrCat("T5RelativeBias: num_buckets (", config.num_buckets,
                     ") must be <= max_distance (", config.max_distance, ")"));
  }
  const int64_t min_buckets = config.causal ? 2 : 4;
  if (config.num_buckets < min_buckets) {
    return absl::InvalidArgumentError(absl::StrCat(
        "T5RelativeBias: num_buckets must be >= ", min_buckets, " when ",
        config.causal ? "causal" : "non-causal", ", got ", config.num_buckets));
  }
  return T5RelativeBias(config);
}

float T5RelativeBias::XTransformersScale(int64_t dim_head) {
  return static_cast<float>(std::pow(static_cast<double>(dim_head), 0.5));
}

int64_t T5RelativeBias::Bucket(int64_t relative_position, bool causal,
                               int64_t num_buckets, int64_t max_distance) {
  int64_t bucket = 0;
  int64_t n = -relative_position;
  if (!causal) {
    num_buckets /= 2;
    if (n < 0) bucket += num_buckets;
    n = n < 0 ? -n : n;
  } else {
    n = std::max<int64_t>(n, 0);
  }
  const int64_t max_exact = num_buckets / 2;
  if (n < max_exact) return bucket + n;
  // torch: log(n.float() / max_exact) / math.log(max_distance / max_exact)
  // * (num_buckets - max_exact), in float32 (the Python divisor rounded to
  // float), truncated by .long().
  const float ratio = static_cast<float>(n) / static_cast<float>(max_exact);
  const float divisor = static_cast<float>(std::log(
      static_cast<double>(max_distance) / static_cast<double>(max_exact)));
  const float scaled =
      std::log(ratio) / divisor * static_cast<float>(num_buckets - max_exact);
  const int64_t large = max_exact + static_cast<int64_t>(scaled);
  return bucket + std::min(large, num_buckets - 1);
}

absl::Status T5RelativeBias::InitParams(const Context& ctx,
                                        TensorView<float> weight,
                                        uint64_t seed) const {
  if (weight.shape() != ParamShapes()[0].shape) {
    return absl::InvalidArgumentError(
        absl::StrCat("T5RelativeBias: relative_attention_bias.weight must be ",
                     ParamShapes()[0].shape.ToString(), ", got ",
                     weight.shape().ToString()));
  }
  return FillNormal(ctx, weight, 0.0f, 1.0f, {.seed = seed});
}

absl::Status T5RelativeBias::CheckArguments(
    const char* op, const Context& ctx, const char* weight_name,
    TensorView<const float> weight, TensorView<const float> bias) const {
  if (ctx.device().type != DeviceType::kCpu) {
    return absl::UnimplementedError(
        absl::StrCat(op, ": only the CPU path exists"));
  }
  const Shape weight_shape = ParamShapes()[0].shape;
  if (weight.shape() != weight_shape || !weight.IsContiguous() ||
      weight.data() == nullptr || weight.device().type != DeviceType::kCpu) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": ", weight_name, " must be a contiguous CPU ",
        weight_shape.ToString(), " tensor, got ", weight.shape().ToString()));
  }
  if (bias.rank() != 3 || bias.dim(0) != config_.heads) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": the bias must be [H = ", config_.heads,
                     ", L, S], got ", bias.shape().ToString()));
  }
  if ((bias.data() == nullptr && bias.NumElements() > 0) ||
      bias.device().type != DeviceType::kCpu ||
      (bias.stride(2) != 1 && bias.dim(2) > 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": the bias must be CPU data with unit stride in its last axis"));
  }
  return absl::OkStatus();
}

std::vector<int32_t> T5RelativeBias::BucketTable(int64_t queries, int64_t keys,
                                                 int64_t query_offset) const {
  std::vector<int32_t> table(std::max<int64_t>(queries + keys - 1, 0));
  for (int64_t i = 0; i < static_cast<int64_t>(table.size()); ++i) {
    // i = s - l + L - 1, so s - q_l = i - (L - 1) - query_offset.
    table[i] = static_cast<int32_t>(Bucket(i - (queries - 1) - query_offset,
                                           config_.causal, config_.num_buckets,
                                           config_.max_distance));
  }
  return table;
}

absl::Status T5RelativeBias::Forward(const Context& ctx,
                                     TensorView<const float> weight,
                                     TensorView<float> bias,
                                     int64_t query_offset) const {
  FTX_RETURN_IF_ERROR(CheckArguments(
      "T5RelativeBias", ctx, "relative_attention_bias.weight", weight, bias));
  const int64_t heads = config_.heads, queries = bias.dim(1),
                keys = bias.dim(2);
  const std::vector<int32_t> buckets = BucketTable(queries, keys, query_offset);
  const float scale = config_.scale;
  ctx.pool().ParallelFor(heads * queries, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t h = r / queries, l = r % queries;
      float* row = &bias.at(h, l);
      const int32_t* row_buckets = buckets.data() + queries - 1 - l;
      for (int64_t s = 0; s < keys; ++s) {
        row[s] = weight.data()[row_buckets[s] * heads + h] * scale;
      }
    }
  });
  return absl::OkStatus();
}

absl::Status T5RelativeBias::Backward(const Context& ctx,
                                      TensorView<const float> d_bias,
                                      TensorView<float> d_weight,
                                      int64_t query_offset) const {
  FTX_RETURN_IF_ERROR(CheckArguments("T5RelativeBiasBackward", ctx, "d_weight",
                                     d_weight, d_bias));
  const int64_t heads = config_.heads, queries = d_bias.dim(1),
                keys = d_bias.dim(2);
  const std::vector<int32_t> buckets = BucketTable(queries, keys, query_offset);
  ctx.pool().ParallelFor(heads, [&](int64_t begin, int64_t end) {
    std::vector<double> sums(config_.num_buckets);
    for (int64_t h = begin; h < end; ++h) {
      std::fill(sums.begin(), sums.end(), 0.0);
      for (int64_t l = 0; l < queries; ++l) {
        const float* row = &d_bias.at(h, l);
        const int32_t* row_buckets = buckets.data() + queries - 1 - l;
        for (int64_t s = 0; s < keys; ++s) sums[row_buckets[s]] += row[s];
      }
      for (int64_t b = 0; b < config_.num_buckets; ++b) {
        d_weight.data()[b * heads + h] +=
            static_cast<float>(config_.scale * sums[b]);
      }
    }
  });
  return absl::OkStatus();
}

}  // namespace ftx
