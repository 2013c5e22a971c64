#include "layers/product_key_memory.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "kernels/base/rng.h"
#include "kernels/base/status_macros.h"
#include "kernels/linear/linear.h"

namespace ftx {
namespace {

constexpr char kOp[] = "ProductKeyMemory";

absl::Status CheckParam(absl::string_view name, TensorView<const float> view,
                        const Shape& shape) {
  if (view.shape() != shape || view.data() == nullptr || !view.IsContiguous() ||
      view.device().type != DeviceType::kCpu) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": ", name, " must be a contiguous CPU ",
                     shape.ToString(), ", got ", view.shape().ToString()));
  }
  return absl::OkStatus();
}

// Indices of the k largest of scores[0..n), largest first; ties by index.
void TopK(const float* scores, int64_t n, int64_t k,
          std::vector<int64_t>& order) {
  order.resize(n);
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(
      order.begin(), order.begin() + k, order.end(), [&](int64_t a, int64_t b) {
        return scores[a] > scores[b] || (scores[a] == scores[b] && a < b);
      });
  order.resize(k);
}

ProductKeyMemoryParams AsConst(const ProductKeyMemoryGrads& views) {
  return {views.to_queries,  views.norm_weight,
          views.norm_bias,   views.keys,
          views.values,      views.running_mean,
          views.running_var, views.num_batches_tracked};
}

constexpr double kBatchNormEps = 1e-5;  // torch.nn.BatchNorm1d's defaults
constexpr double kBatchNormMomentum = 0.1;

}  // namespace

absl::StatusOr<ProductKeyMemory> ProductKeyMemory::Create(
    const ProductKeyMemoryConfig& config) {
  if (config.dim < 1 || config.heads < 1 || config.num_keys < 1 ||
      config.topk < 1 || config.key_dim < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": dim, heads, num_keys, topk and key_dim must be >= 1, got ",
        config.dim, ", ", config.heads, ", ", config.num_keys, ", ",
        config.topk, ", ", config.key_dim));
  }
  if (config.topk > config.num_keys) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": topk (", config.topk,
                     ") must not exceed num_keys (", config.num_keys, ")"));
  }
  FTX_ASSIGN_OR_RETURN(LayerNormLayer norm,
                       LayerNormLayer::Create({.dim = config.key_dim}));
  return ProductKeyMemory(config, std::move(norm));
}

std::vector<ParamShape> ProductKeyMemory::ParamShapes() const {
  const int64_t H = config_.heads, K = config_.num_keys, d = config_.key_dim;
  const int64_t width = 2 * H * d;
  std::vector<ParamShape> shapes = {
      {"to_queries.weight", {width, config_.dim}}};
  if (config_.query_norm == PkmQueryNorm::kLayerNorm) {
    shapes.push_back({"norm.weight", {d}});
    shapes.push_back({"norm.bias", {d}});
  } else {
    shapes.push_back({"norm.fn.weight", {width}});
    shapes.push_back({"norm.fn.bias", {width}});
  }
  shapes.push_back({"keys", {H, K, 2, d}});
  shapes.push_back({"values.weight", {K * K, config_.dim}});
  if (config_.query_norm == PkmQueryNorm::kBatchNormRunning) {
    shapes.push_back({"norm.fn.running_mean", {width}, /*trainable=*/false});
    shapes.push_back({"norm.fn.running_var", {width}, /*trainable=*/false});
    shapes.push_back({"norm.fn.num_batches_tracked", {1}, /*trainable=*/false});
  }
  return shapes;
}

absl::Status ProductKeyMemory::CheckParams(
    absl::string_view prefix, const ProductKeyMemoryParams& params) const {
  const std::vector<ParamShape> shapes = ParamShapes();
  const TensorView<const float> views[] = {
      params.to_queries,  params.norm_weight,
      params.norm_bias,   params.keys,
      params.values,      params.running_mean,
      params.running_var, params.num_batches_tracked};
  constexpr size_t kViews = sizeof(views) / sizeof(views[0]);
  for (size_t i = 0; i < shapes.size(); ++i) {
    FTX_RETURN_IF_ERROR(CheckParam(absl::StrCat(prefix, shapes[i].name),
                                   views[i], shapes[i].shape));
  }
  for (size_t i = shapes.size(); i < kViews; ++i) {
    if (!IsAbsent(views[i])) {
      return absl::InvalidArgumentError(absl::StrCat(
          kOp,
          ": batch-norm buffers (running statistics, num_batches_tracked) are "
          "given but the query norm is a LayerNorm"));
    }
  }
  return absl::OkStatus();
}

absl::Status ProductKeyMemory::InitParams(
    const Context& ctx, uint64_t seed,
    const ProductKeyMemoryGrads& params) const {
  FTX_RETURN_IF_ERROR(CheckParams("", AsConst(params)));
  const float bound = 1.0f / std::sqrt(static_cast<float>(config_.dim));
  FTX_RETURN_IF_ERROR(FillUniform(ctx, params.to_queries, -bound, bound,
                                  {.seed = seed, .stream = 0}));
  FTX_RETURN_IF_ERROR(
      FillNormal(ctx, params.keys, 0.0f,
                 1.0f / std::sqrt(static_cast<float>(config_.key_dim)),
                 {.seed = seed, .stream = 1}));
  FTX_RETURN_IF_ERROR(
      FillNormal(ctx, params.values, 0.0f, bound, {.seed = seed, .stream = 2}));
  if (config_.query_norm == PkmQueryNorm::kBatchNormRunning) {
    const int64_t width = params.norm_weight.NumElements();
    std::fill_n(params.norm_weight.data(), width, 1.0f);
    std::fill_n(params.norm_bias.data(), width, 0.0f);
    std::fill_n(params.running_mean.data(), width, 0.0f);
    std::fill_n(params.running_var.data(), width, 1.0f);
    params.num_batches_tracked.data()[0] = 0.0f;
    return absl::OkStatus();
  }
  return norm_.InitParams(params.norm_weight, params.norm_bias);
}

void ProductKeyMemory::NormaliseBatchNorm(
    const ProductKeyMemoryParams& params,
    const ProductKeyMemoryTraining& training, int64_t rows, int64_t width,
    ProductKeyMemoryCache& saved) const {
  saved.batch_statistics = training.training;
  saved.mean.assign(width, 0.0);
  saved.inverse_std.assign(width, 0.0);
  const float* raw = saved.queries.data<float>();
  float* normalised = saved.normalised.data<float>();
  for (int64_t c = 0; c < width; ++c) {
    double mean = params.running_mean.data()[c];
    double variance = params.running_var.data()[c];
    if (training.training) {
      double sum = 0;
      for (int64_t r = 0; r < rows; ++r) sum += raw[r * width + c];
      mean = sum / rows;
      double squares = 0;
      for (int64_t r = 0; r < rows; ++r) {
        const double centred = raw[r * width + c] - mean;
        squares += centred * centred;
      }
      variance = squares / rows;
      float& running_mean = training.running_mean.data()[c];
      float& running_var = training.running_var.data()[c];
      running_mean =
          static_cast<float>((1.0 - kBatchNormMomentum) * running_mean +
                             kBatchNormMomentum * mean);
      running_var = static_cast<float>(
          (1.0 - kBatchNormMomentum) * running_var +
          kBatchNormMomentum * squares / static_cast<double>(rows - 1));
    }
    const double inverse_std = 1.0 / std::sqrt(variance + kBatchNormEps);
    saved.mean[c] = mean;
    saved.inverse_std[c] = inverse_std;
    const double gain = params.norm_weight.data()[c] * inverse_std;
    for (int64_t r = 0; r < rows; ++r) {
      normalised[r * width + c] = static_cast<float>(
          (raw[r * width + c] - mean) * gain + params.norm_bias.data()[c]);
    }
  }
}

absl::Status ProductKeyMemory::Forward(
    const Context& ctx, const ProductKeyMemoryParams& params,
    TensorView<const float> x, TensorView<float> y,
    ProductKeyMemoryCache* cache, const ProductKeyMemoryTraining& training) {
  if (ctx.device().type != DeviceType::kCpu) {
    return absl::UnimplementedError(
        absl::StrCat(kOp, ": only CPU contexts are supported"));
  }
  FTX_RETURN_IF_ERROR(CheckParams("", params));
  if (x.rank() != 3 || x.dim(2) != config_.dim) {
    return absl::InvalidArgumentError(absl::StrCat(kOp, ": x must be [B, T, ",
                                                   config_.dim, "], got ",
                                                   x.shape().ToString()));
  }
  FTX_RETURN_IF_ERROR(CheckParam("x", x, x.shape()));
  FTX_RETURN_IF_ERROR(CheckParam("y", y, x.shape()));
  if (x.data() == y.data()) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": y must not overlap x"));
  }
  const int64_t R = x.dim(0) * x.dim(1),
                width = 2 * config_.heads * config_.key_dim;
  if (training.training &&
      config_.query_norm == PkmQueryNorm::kBatchNormRunning) {
    if (R < 2) {
      return absl::InvalidArgumentError(absl::StrCat(
          kOp,
          ": training mode needs more than 1 row (B * T) per channel for "
          "the batch statistics, got x ",
          x.shape().ToString()));
    }
    FTX_RETURN_IF_ERROR(CheckParam("training.running_mean",
                                   training.running_mean, Shape({width})));
    FTX_RETURN_IF_ERROR(CheckParam("training.running_var", training.running_var,
                                   Shape({width})));
    FTX_RETURN_IF_ERROR(CheckParam("training.num_batches_tracked",
                                   training.num_batches_tracked, Shape({1})));
  } else if (!IsAbsent(training.running_mean) ||
             !IsAbsent(training.running_var) ||
             !IsAbsent(training.num_batches_tracked)) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp,
        ": training.running_mean / running_var / num_batches_tracked are only "
        "updated in training mode with the batch-norm query norm"));
  }
  ProductKeyMemoryCache& saved = cache != nullptr ? *cache : inference_cache_;
  const int64_t H = config_.heads, K = config_.num_keys, k = config_.topk;
  const int64_t Dh = config_.key_dim, C = config_.dim;
  FTX_RETURN_IF_ERROR(EnsureTensor(saved.queries, {R, width}, ctx.device()));
  FTX_RETURN_IF_ERROR(EnsureTensor(saved.normalised, {R, width}, ctx.device()));
  FTX_RETURN_IF_ERROR(LinearForward(ctx, x.Reshape({R, C}), params.to_queries,
                                    {}, saved.queries.view<float>()));
  if (config_.query_norm == PkmQueryNorm::kLayerNorm) {
    FTX_RETURN_IF_ERROR(norm_.Forward(
        ctx, params.norm_weight, params.norm_bias,
        saved.queries.view<const float>().Reshape({R * 2 * H, Dh}),
        saved.normalised.view<float>().Reshape({R * 2 * H, Dh}), &saved.norm));
  } else {
    NormaliseBatchNorm(params, training, R, width, saved);
    if (training.training) training.num_batches_tracked.data()[0] += 1.0f;
  }
  saved.half_index.assign(R * H * 2 * k, 0);
  saved.chosen.assign(R * H * k, 0);
  saved.weights.assign(R * H * k, 0.0f);
  const float* q = saved.normalised.data<float>();
  const float* keys = params.keys.data();
  std::fill_n(y.data(), R * C, 0.0f);
  std::vector<float> scores(K), combined(k * k);
  std::vector<float> best(2 * k);
  std::vector<int64_t> order;
  for (int64_t r = 0; r < R; ++r) {
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t p = 0; p < 2; ++p) {
        const float* query = q + r * width + (p * H + h) * Dh;
        for (int64_t n = 0; n < K; ++n) {
          const float* key = keys + ((h * K + n) * 2 + p) * Dh;
          double dot = 0;
          for (int64_t d = 0; d < Dh; ++d)
            dot += static_cast<double>(query[d]) * key[d];
          scores[n] = static_cast<float>(dot);
        }
        TopK(scores.data(), K, k, order);
        for (int64_t i = 0; i < k; ++i) {
          saved.half_index[((r * H + h) * 2 + p) * k + i] = order[i];
          best[p * k + i] = scores[order[i]];
        }
      }
      for (int64_t a = 0; a < k; ++a) {
        for (int64_t c = 0; c < k; ++c)
          combined[a * k + c] = best[a] + best[k + c];
      }
      TopK(combined.data(), k * k, k, order);
      const float max_score = combined[order[0]];
      double total = 0;
      for (int64_t i = 0; i < k; ++i)
        total += std::exp(combined[order[i]] - max_score);
      const int64_t* half = &saved.half_index[(r * H + h) * 2 * k];
      for (int64_t i = 0; i < k; ++i) {
        const int64_t pick = order[i];
        const float weight =
            static_cast<float>(std::exp(combined[pick] - max_score) / total);
        saved.chosen[(r * H + h) * k + i] = pick;
        saved.weights[(r * H + h) * k + i] = weight;
        const int64_t memory = half[pick / k] * K + half[k + pick % k];
        const float* value = params.values.data() + memory * C;
        for (int64_t c = 0; c < C; ++c)
          y.data()[r * C + c] += weight * value[c];
      }
    }
  }
  return absl::OkStatus();
}

void ProductKeyMemory::BatchNormBackward(const ProductKeyMemoryParams& params,
                                         const ProductKeyMemoryCache& cache,
                                         int64_t rows, int64_t width) {
  const float* raw = cache.queries.data<float>();
  const float* d_normalised = d_normalised_.data<float>();
  float* d_raw = d_queries_.data<float>();
  for (int64_t c = 0; c < width; ++c) {
    const double inverse_std = cache.inverse_std[c];
    const double gain = params.norm_weight.data()[c] * inverse_std;
    if (!cache.batch_statistics) {
      for (int64_t r = 0; r < rows; ++r) {
        d_raw[r * width + c] =
            static_cast<float>(d_normalised[r * width + c] * gain);
      }
      continue;
    }
    // With g = d_normalised * w and q_hat = (q - mean) * inverse_std:
    // d_q = inverse_std (g - mean_r(g) - q_hat mean_r(g q_hat)).
    double sum = 0, projected = 0;
    for (int64_t r = 0; r < rows; ++r) {
      const double upstream = d_normalised[r * width + c];
      sum += upstream;
      projected +=
          upstream * (raw[r * width + c] - cache.mean[c]) * inverse_std;
    }
    const double mean_sum = sum / rows, mean_projected = projected / rows;
    for (int64_t r = 0; r < rows; ++r) {
      const double q_hat = (raw[r * width + c] - cache.mean[c]) * inverse_std;
      d_raw[r * width + c] =
          static_cast<float>(gain * (d_normalised[r * width + c] - mean_sum -
                                     q_hat * mean_projected));
    }
  }
}

absl::Status ProductKeyMemory::Backward(const Context& ctx,
                                        const ProductKeyMemoryParams& params,
                                        const ProductKeyMemoryCache& cache,
                                        TensorView<const float> x,
                                        TensorView<const float> d_y,
                                        TensorView<float> d_x,
                                        const ProductKeyMemoryGrads& grads) {
  if (ctx.device().type != DeviceType::kCpu) {
    return absl::UnimplementedError(
        absl::StrCat(kOp, ": only CPU contexts are supported"));
  }
  FTX_RETURN_IF_ERROR(CheckParams("", params));
  FTX_RETURN_IF_ERROR(
      CheckParams("d_", {grads.to_queries, grads.norm_weight, grads.norm_bias,
                         grads.keys, grads.values, params.running_mean,
                         params.running_var, params.num_batches_tracked}));
  if (x.rank() != 3 || x.dim(2) != config_.dim) {
    return absl::InvalidArgumentError(absl::StrCat(kOp, ": x must be [B, T, ",
                                                   config_.dim, "], got ",
                                                   x.shape().ToString()));
  }
  FTX_RETURN_IF_ERROR(CheckParam("d_y", d_y, x.shape()));
  FTX_RETURN_IF_ERROR(CheckParam("d_x", d_x, x.shape()));
  const int64_t H = config_.heads, K = config_.num_keys, k = config_.topk;
  const int64_t Dh = config_.key_dim, C = config_.dim;
  const int64_t R = x.dim(0) * x.dim(1), width = 2 * H * Dh;
  if (cache.normalised.shape() != Shape{R, width} ||
      cache.chosen.size() != static_cast<size_t>(R * H * k) ||
      (config_.query_norm == PkmQueryNorm::kBatchNormRunning &&
       cache.mean.size() != static_cast<size_t>(width))) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": the cache does not come from Forward on this x"));
  }
  Tensor& d_normalised = d_normalised_;
  Tensor& d_queries = d_queries_;
  FTX_RETURN_IF_ERROR(EnsureTensor(d_normalised, {R, width}, ctx.device()));
  FTX_RETURN_IF_ERROR(EnsureTensor(d_queries, {R, width}, ctx.device()));
  std::fill_n(d_normalised.data<float>(), R * width, 0.0f);
  const float* q = cache.normalised.data<float>();
  const float* keys = params.keys.data();
  float* d_q = d_normalised.data<float>();
  std::vector<double> d_weight(k), d_half(2 * k);
  for (int64_t r = 0; r < R; ++r) {
    const float* upstream = d_y.data() + r * C;
    for (int64_t h = 0; h < H; ++h) {
      const int64_t* half = &cache.half_index[(r * H + h) * 2 * k];
      const float* w = &cache.weights[(r * H + h) * k];
      const int64_t* chosen = &cache.chosen[(r * H + h) * k];
      double weighted = 0;
      for (int64_t i = 0; i < k; ++i) {
        const int64_t memory =
            half[chosen[i] / k] * K + half[k + chosen[i] % k];
        const float* value = params.values.data() + memory * C;
        float* d_value = grads.values.data() + memory * C;
        double dot = 0;
        for (int64_t c = 0; c < C; ++c) {
          dot += static_cast<double>(upstream[c]) * value[c];
          d_value[c] += w[i] * upstream[c];
        }
        d_weight[i] = dot;
        weighted += w[i] * dot;
      }
      // softmax backward, then each combined score feeds its two halves.
      std::fill(d_half.begin(), d_half.end(), 0.0);
      for (int64_t i = 0; i < k; ++i) {
        const double d_score = w[i] * (d_weight[i] - weighted);
        d_half[chosen[i] / k] += d_score;
        d_half[k + chosen[i] % k] += d_score;
      }
      for (int64_t p = 0; p < 2; ++p) {
        const float* query = q + r * width + (p * H + h) * Dh;
        float* d_query = d_q + r * width + (p * H + h) * Dh;
        for (int64_t i = 0; i < k; ++i) {
          const double g = d_half[p * k + i];
          if (g == 0.0) continue;
          const int64_t n = half[p * k + i];
          const float* key = keys + ((h * K + n) * 2 + p) * Dh;
          float* d_key = grads.keys.data() + ((h * K + n) * 2 + p) * Dh;
          for (int64_t d = 0; d < Dh; ++d) {
            d_query[d] += static_cast<float>(g * key[d]);
            d_key[d] += static_cast<float>(g * query[d]);
          }
        }
      }
    }
  }
  if (config_.query_norm == PkmQueryNorm::kLayerNorm) {
    FTX_RETURN_IF_ERROR(norm_.Backward(
        ctx, params.norm_weight, cache.norm,
        cache.queries.view<const float>().Reshape({R * 2 * H, Dh}),
        d_normalised.view<const float>().Reshape({R * 2 * H, Dh}),
        d_queries.view<float>().Reshape({R * 2 * H, Dh}), grads.norm_weight,
        grads.norm_bias));
  } else {
    BatchNormBackward(params, cache, R, width);
    const float* raw = cache.queries.data<float>();
    for (int64_t c = 0; c < width; ++c) {
      double d_weight = 0, d_bias = 0;
      for (int64_t r = 0; r < R; ++r) {
        const double upstream = d_q[r * width + c];
        d_weight += upstream * (raw[r * width + c] - cache.mean[c]) *
                    cache.inverse_std[c];
        d_bias += upstream;
      }
      grads.norm_weight.data()[c] += static_cast<float>(d_weight);
      grads.norm_bias.data()[c] += static_cast<float>(d_bias);
    }
  }
  return LinearBackward(ctx, x.Reshape({R, C}), params.to_queries,
                        d_queries.view<const float>(), d_x.Reshape({R, C}),
                        grads.to_queries, {});
}

}  // namespace ftx
