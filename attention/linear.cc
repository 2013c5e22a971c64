#include "attention/linear.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "kernels/matmul/matmul.h"

namespace ftx {
namespace {

// Cache layout of a forward.
enum Saved : int {
  kQueryFeatures,  // phi(Q) [N, L, H, F]
  kKeyFeatures,    // phi(K) with padded keys zeroed [N, S, H, F]
  kKeyValue,       // sum_s phi(k_s) v_s^T per head [H, N, F, D]
  kKeySum,         // sum_s phi(k_s) [N, H, F]
  kDenominator,    // phi(q_l) . key_sum + eps [N, L, H]
  kOutput,         // out [N, L, H, D]
  kSavedCount
};

// Gradient scratch layout.
enum GradScratch : int {
  kScaledGrad,        // d_out / denominator [N, L, H, D]
  kDenominatorGrad,   // d loss / d denominator [N, L, H]
  kQueryFeatureGrad,  // [N, L, H, F]
  kKeyFeatureGrad,    // [N, S, H, F]
  kKeyValueGrad,      // [H, N, F, D]
  kKeySumGrad,        // [N, H, F]
  kGradScratchCount
};

absl::Status CheckAllOnesMask(const AttentionInputs& inputs) {
  if (inputs.attn_mask.kind() != AttnMask::Kind::kAll) {
    return absl::InvalidArgumentError(
        "LinearAttention: only an all-ones attn_mask is supported (use "
        "\"causal-linear\" for a causal mask)");
  }
  return absl::OkStatus();
}

// Zeroes features[n, s, :, :] for s >= key length of sequence n.
void ZeroPaddedRows(const Context& ctx, const LengthMask& lengths,
                    TensorView<float> features) {
  if (lengths.full()) return;
  const int64_t batch = features.dim(0), steps = features.dim(1);
  const int64_t row = features.dim(2) * features.dim(3);
  ctx.pool().ParallelFor(batch, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      for (int64_t s = lengths.Length(n, steps); s < steps; ++s) {
        float* data = features.data() + (n * steps + s) * row;
        std::fill(data, data + row, 0.0f);
      }
    }
  });
}

}  // namespace

LinearAttention::LinearAttention(std::unique_ptr<FeatureMap> feature_map,
                                 const LinearAttentionOptions& options)
    : feature_map_(feature_map ? std::move(feature_map)
                               : std::make_unique<ActivationFeatureMap>()),
      options_(options) {}

absl::Status LinearAttention::Forward(const Context& ctx,
                                      const AttentionInputs& inputs,
                                      TensorView<float> out,
                                      AttentionCache* cache) {
  FTX_ASSIGN_OR_RETURN(
      const AttentionDims dims,
      ValidateAttentionForward("LinearAttention", ctx, inputs, out));
  FTX_RETURN_IF_ERROR(CheckAllOnesMask(inputs));
  if (ctx.device().type != DeviceType::kCpu) {
    return absl::UnimplementedError(
        "LinearAttention: only the CPU path exists so far");
  }
  const int64_t N = dims.batch, L = dims.queries, S = dims.keys, H = dims.heads,
                D = dims.value_dim;
  FTX_RETURN_IF_ERROR(feature_map_->NewFeatureMap(ctx, dims.qk_dim));
  const int64_t F = feature_map_->FeatureDim(dims.qk_dim);

  AttentionCache& saved = cache != nullptr ? *cache : scratch_;
  saved.saved.resize(kSavedCount);
  const Shape shapes[kSavedCount] = {{N, L, H, F}, {N, S, H, F}, {H, N, F, D},
                                     {N, H, F},    {N, L, H},    {N, L, H, D}};
  for (int i = 0; i < kSavedCount; ++i) {
    FTX_RETURN_IF_ERROR(EnsureTensor(saved.saved[i], shapes[i], ctx.device()));
  }
  TensorView<float> query_features = saved.saved[kQueryFeatures].view<float>();
  TensorView<float> key_features = saved.saved[kKeyFeatures].view<float>();
  TensorView<float> key_value = saved.saved[kKeyValue].view<float>();
  float* key_sum = saved.saved[kKeySum].data<float>();
  float* denominator = saved.saved[kDenominator].data<float>();

  FTX_RETURN_IF_ERROR(
      feature_map_->Forward(ctx, inputs.queries, true, query_features));
  FTX_RETURN_IF_ERROR(
      feature_map_->Forward(ctx, inputs.keys, false, key_features));
  ZeroPaddedRows(ctx, inputs.key_lengths, key_features);

  // key_sum[n, h, :] = sum_s phi(k)[n, s, h, :].
  const float* kf = key_features.data();
  ctx.pool().ParallelFor(N * H, [&](int64_t begin, int64_t end) {
    for (int64_t nh = begin; nh < end; ++nh) {
      const int64_t n = nh / H, h = nh % H;
      float* sum = key_sum + nh * F;
      std::fill(sum, sum + F, 0.0f);
      for (int64_t s = 0; s < S; ++s) {
        const float* row = kf + ((n * S + s) * H + h) * F;
        for (int64_t f = 0; f < F; ++f) sum[f] += row[f];
      }
    }
  });
  for (int64_t h = 0; h < H; ++h) {
    // key_value_h [N, F, D] = phi(K)_h^T [N, F, S] V_h [N, S, D].
    FTX_RETURN_IF_ERROR(MatMul(ctx, key_features.Select(2, h),
                               inputs.values.Select(2, h),
                               key_value.Select(0, h), {.transpose_a = true}));
    // out_h [N, L, D] = phi(Q)_h [N, L, F] key_value_h [N, F, D].
    FTX_RETURN_IF_ERROR(MatMul(ctx, query_features.Select(2, h),
                               key_value.Select(0, h), out.Select(2, h)));
  }
  // Divide by phi(q) . key_sum + eps.
  const float* qf = query_features.data();
  float* saved_out = saved.saved[kOutput].data<float>();
  const float eps = options_.eps;
  ctx.pool().ParallelFor(N * L, [&](int64_t begin, int64_t end) {
    for (int64_t nl = begin; nl < end; ++nl) {
      const int64_t n = nl / L, l = nl % L;
      for (int64_t h = 0; h < H; ++h) {
        const float* q_row = qf + (nl * H + h) * F;
        const float* sum = key_sum + (n * H + h) * F;
        float dot = 0.0f;
        for (int64_t f = 0; f < F; ++f) dot += q_row[f] * sum[f];
        const float den = dot + eps;
        denominator[nl * H + h] = den;
        const float inverse = 1.0f / den;
        for (int64_t d = 0; d < D; ++d) {
          float& value = out.at(n, l, h, d);
          value *= inverse;
          saved_out[(nl * H + h) * D + d] = value;
        }
      }
    }
  });
  return absl::OkStatus();
}

absl::Status LinearAttention::Backward(const Context& ctx,
                                       const AttentionInputs& inputs,
                                       const AttentionCache& cache,
                                       TensorView<const float> d_out,
                                       const AttentionGrads& grads) {
  FTX_ASSIGN_OR_RETURN(const AttentionDims dims,
                       ValidateAttentionBackward("LinearAttentionBackward", ctx,
                                                 inputs, d_out, grads));
  FTX_RETURN_IF_ERROR(CheckAllOnesMask(inputs));
  const int64_t N = dims.batch, L = dims.queries, S = dims.keys, H = dims.heads,
                D = dims.value_dim;
  const int64_t F = feature_map_->FeatureDim(dims.qk_dim);
  if (cache.saved.size() != kSavedCount ||
      cache.saved[kOutput].shape() != Shape{N, L, H, D} ||
      cache.saved[kKeyFeatures].shape() != Shape{N, S, H, F}) {
    return absl::FailedPreconditionError(
        "LinearAttentionBackward: the cache does not come from a Forward with "
        "these "
        "inputs (pass a cache to Forward)");
  }
  const TensorView<const float> query_features =
      cache.saved[kQueryFeatures].view<float>();
  const TensorView<const float> key_features =
      cache.saved[kKeyFeatures].view<float>();
  const TensorView<const float> key_value =
      cache.saved[kKeyValue].view<float>();
  const float* key_sum = cache.saved[kKeySum].data<float>();
  const float* denominator = cache.saved[kDenominator].data<float>();
  const float* saved_out = cache.saved[kOutput].data<float>();

  grad_scratch_.saved.resize(kGradScratchCount);
  const Shape shapes[kGradScratchCount] = {{N, L, H, D}, {N, L, H},
                                           {N, L, H, F}, {N, S, H, F},
                                           {H, N, F, D}, {N, H, F}};
  for (int i = 0; i < kGradScratchCount; ++i) {
    FTX_RETURN_IF_ERROR(
        EnsureTensor(grad_scratch_.saved[i], shapes[i], ctx.device()));
  }
  TensorView<float> scaled_grad =
      grad_scratch_.saved[kScaledGrad].view<float>();
  float* den_grad = grad_scratch_.saved[kDenominatorGrad].data<float>();
  TensorView<float> qf_grad =
      grad_scratch_.saved[kQueryFeatureGrad].view<float>();
  TensorView<float> kf_grad =
      grad_scratch_.saved[kKeyFeatureGrad].view<float>();
  TensorView<float> kv_grad = grad_scratch_.saved[kKeyValueGrad].view<float>();
  float* key_sum_grad = grad_scratch_.saved[kKeySumGrad].data<float>();

  // g = d_out / den;  d_den = -sum_d d_out * out / den.
  ctx.pool().ParallelFor(N * L * H, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t n = i / (L * H), l = (i / H) % L, h = i % H;
      const float inverse = 1.0f / denominator[i];
      float dot = 0.0f;
      for (int64_t d = 0; d < D; ++d) {
        const float g = d_out.at(n, l, h, d) * inverse;
        scaled_grad.data()[i * D + d] = g;
        dot += g * saved_out[i * D + d];
      }
      den_grad[i] = -dot;
    }
  });
  for (int64_t h = 0; h < H; ++h) {
    // d phi(Q)_h = g_h key_value_h^T;  d key_value_h = phi(Q)_h^T g_h.
    FTX_RETURN_IF_ERROR(MatMul(ctx, scaled_grad.Select(2, h),
                               key_value.Select(0, h), qf_grad.Select(2, h),
                               {.transpose_b = true}));
    FTX_RETURN_IF_ERROR(MatMul(ctx, query_features.Select(2, h),
                               scaled_grad.Select(2, h), kv_grad.Select(0, h),
                               {.transpose_a = true}));
    // d phi(K)_h = V_h d key_value_h^T;  d V_h = phi(K)_h d key_value_h.
    FTX_RETURN_IF_ERROR(MatMul(ctx, inputs.values.Select(2, h),
                               kv_grad.Select(0, h), kf_grad.Select(2, h),
                               {.transpose_b = true}));
    FTX_RETURN_IF_ERROR(MatMul(ctx, key_features.Select(2, h),
                               kv_grad.Select(0, h),
                               grads.d_values.Select(2, h)));
  }
  // Denominator terms: d phi(q_l) += d_den_l key_sum; d key_sum = sum_l d_den_l
  // phi(q_l); d phi(k_s) += d key_sum for unpadded keys.
  const float* qf = query_features.data();
  ctx.pool().ParallelFor(N * H, [&](int64_t begin, int64_t end) {
    for (int64_t nh = begin; nh < end; ++nh) {
      const int64_t n = nh / H, h = nh % H;
      const float* sum = key_sum + nh * F;
      float* sum_grad = key_sum_grad + nh * F;
      std::fill(sum_grad, sum_grad + F, 0.0f);
      for (int64_t l = 0; l < L; ++l) {
        const int64_t i = (n * L + l) * H + h;
        float* q_grad = qf_grad.data() + i * F;
        const float* q_row = qf + i * F;
        for (int64_t f = 0; f < F; ++f) {
          q_grad[f] += den_grad[i] * sum[f];
          sum_grad[f] += den_grad[i] * q_row[f];
        }
      }
      const int64_t valid_keys = inputs.key_lengths.Length(n, S);
      for (int64_t s = 0; s < S; ++s) {
        float* k_grad = kf_grad.data() + ((n * S + s) * H + h) * F;
        if (s >= valid_keys) {
          std::fill(k_grad, k_grad + F, 0.0f);
          continue;
        }
        for (int64_t f = 0; f < F; ++f) k_grad[f] += sum_grad[f];
      }
    }
  });
  FTX_RETURN_IF_ERROR(feature_map_->Backward(
      ctx, inputs.queries, true, query_features, qf_grad, grads.d_queries));
  FTX_RETURN_IF_ERROR(feature_map_->Backward(
      ctx, inputs.keys, false, key_features, kf_grad, grads.d_keys));
  return absl::OkStatus();
}

}  // namespace ftx
