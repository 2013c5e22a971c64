#include "attention/causal_linear.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "kernels/causal_product/causal_product.h"

namespace ftx {
namespace {

enum Saved : int {
  kQueryFeatures,  // phi(Q) [N, L, H, F]
  kKeyFeatures,    // phi(K), padded keys zeroed [N, L, H, F]
  kDenominator,    // phi(q_i) . sum_{j<=i} phi(k_j) + eps [N, L, H]
  kOutput,         // out [N, L, H, D]
  kSavedCount
};

enum GradScratch : int {
  kScaledGrad,        // d_out / denominator [N, L, H, D]
  kQueryFeatureGrad,  // [N, L, H, F]
  kKeyFeatureGrad,    // [N, L, H, F]
  kGradScratchCount
};

absl::Status CheckCausalSelfAttention(const char* op,
                                      const AttentionInputs& inputs,
                                      const AttentionDims& dims) {
  if (inputs.attn_mask.kind() != AttnMask::Kind::kCausal ||
      inputs.attn_mask.causal_offset() != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(op,
                     ": needs a causal attn_mask (AttnMask::Causal()); use "
                     "\"linear\" otherwise"));
  }
  if (dims.queries != dims.keys) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": needs as many keys as queries, got L = ", dims.queries,
        " and S = ", dims.keys));
  }
  return absl::OkStatus();
}

// For every (n, h), walks i = 0 .. L-1 with the running key sum z_i =
// sum_{j<=i} phi(k_j) and calls visit(n, h, i, z_i).
template <class Visit>
void ForEachPrefixSum(const Context& ctx, const float* key_features, int64_t N,
                      int64_t L, int64_t H, int64_t F, Visit visit) {
  ctx.pool().ParallelFor(N * H, [&](int64_t begin, int64_t end) {
    std::vector<float> prefix(F);
    for (int64_t nh = begin; nh < end; ++nh) {
      const int64_t n = nh / H, h = nh % H;
      std::fill(prefix.begin(), prefix.end(), 0.0f);
      for (int64_t i = 0; i < L; ++i) {
        const float* k_row = key_features + ((n * L + i) * H + h) * F;
        for (int64_t f = 0; f < F; ++f) prefix[f] += k_row[f];
        visit(n, h, i, prefix.data());
      }
    }
  });
}

void ZeroPaddedRows(const Context& ctx, const LengthMask& lengths,
                    TensorView<float> features) {
  if (lengths.full()) return;
  const int64_t batch = features.dim(0), steps = features.dim(1);
  const int64_t row = features.dim(2) * features.dim(3);
  for (int64_t n = 0; n < batch; ++n) {
    float* begin =
        features.data() + (n * steps + lengths.Length(n, steps)) * row;
    float* end = features.data() + (n + 1) * steps * row;
    std::fill(begin, end, 0.0f);
  }
}

}  // namespace

CausalLinearAttention::CausalLinearAttention(
    std::unique_ptr<FeatureMap> feature_map, float eps)
    : feature_map_(feature_map ? std::move(feature_map)
                               : std::make_unique<ActivationFeatureMap>()),
      eps_(eps) {}

absl::Status CausalLinearAttention::Forward(const Context& ctx,
                                            const AttentionInputs& inputs,
                                            TensorView<float> out,
                                            AttentionCache* cache) {
  constexpr char kOp[] = "CausalLinearAttention";
  FTX_ASSIGN_OR_RETURN(const AttentionDims dims,
                       ValidateAttentionForward(kOp, ctx, inputs, out));
  FTX_RETURN_IF_ERROR(CheckCausalSelfAttention(kOp, inputs, dims));
  if (ctx.device().type != DeviceType::kCpu) {
    return absl::UnimplementedError(
        absl::StrCat(kOp, ": only the CPU path exists so far"));
  }
  const int64_t N = dims.batch, L = dims.queries, H = dims.heads,
                D = dims.value_dim;
  FTX_RETURN_IF_ERROR(feature_map_->NewFeatureMap(ctx, dims.qk_dim));
  const int64_t F = feature_map_->FeatureDim(dims.qk_dim);
  AttentionCache& saved = cache != nullptr ? *cache : scratch_;
  saved.saved.resize(kSavedCount);
  const Shape shapes[kSavedCount] = {
      {N, L, H, F}, {N, L, H, F}, {N, L, H}, {N, L, H, D}};
  for (int i = 0; i < kSavedCount; ++i) {
    FTX_RETURN_IF_ERROR(EnsureTensor(saved.saved[i], shapes[i], ctx.device()));
  }
  TensorView<float> query_features = saved.saved[kQueryFeatures].view<float>();
  TensorView<float> key_features = saved.saved[kKeyFeatures].view<float>();
  float* denominator = saved.saved[kDenominator].data<float>();
  TensorView<float> saved_out = saved.saved[kOutput].view<float>();

  FTX_RETURN_IF_ERROR(
      feature_map_->Forward(ctx, inputs.queries, true, query_features));
  FTX_RETURN_IF_ERROR(
      feature_map_->Forward(ctx, inputs.keys, false, key_features));
  ZeroPaddedRows(ctx, inputs.key_lengths, key_features);
  FTX_RETURN_IF_ERROR(CausalProduct(ctx, query_features, key_features,
                                    inputs.values, saved_out));
  const float* qf = query_features.data();
  ForEachPrefixSum(ctx, key_features.data(), N, L, H, F,
                   [&](int64_t n, int64_t h, int64_t i, const float* prefix) {
                     const int64_t row = (n * L + i) * H + h;
                     float dot = 0.0f;
                     for (int64_t f = 0; f < F; ++f)
                       dot += qf[row * F + f] * prefix[f];
                     denominator[row] = dot + eps_;
                     const float inverse = 1.0f / denominator[row];
                     for (int64_t d = 0; d < D; ++d) {
                       float& value = saved_out.data()[row * D + d];
                       value *= inverse;
                       out.at(n, i, h, d) = value;
                     }
                   });
  return absl::OkStatus();
}

absl::Status CausalLinearAttention::Backward(const Context& ctx,
                                             const AttentionInputs& inputs,
                                             const AttentionCache& cache,
                                             TensorView<const float> d_out,
                                             const AttentionGrads& grads) {
  constexpr char kOp[] = "CausalLinearAttentionBackward";
  FTX_ASSIGN_OR_RETURN(
      const AttentionDims dims,
      ValidateAttentionBackward(kOp, ctx, inputs, d_out, grads));
  FTX_RETURN_IF_ERROR(CheckCausalSelfAttention(kOp, inputs, dims));
  const int64_t N = dims.batch, L = dims.queries, H = dims.heads,
                D = dims.value_dim;
  const int64_t F = feature_map_->FeatureDim(dims.qk_dim);
  if (cache.saved.size() != kSavedCount ||
      cache.saved[kOutput].shape() != Shape{N, L, H, D} ||
      cache.saved[kKeyFeatures].shape() != Shape{N, L, H, F}) {
    return absl::FailedPreconditionError(absl::StrCat(
        kOp, ": the cache does not come from a Forward with these inputs"));
  }
  const TensorView<const float> query_features =
      cache.saved[kQueryFeatures].view<float>();
  const TensorView<const float> key_features =
      cache.saved[kKeyFeatures].view<float>();
  const float* denominator = cache.saved[kDenominator].data<float>();
  const float* saved_out = cache.saved[kOutput].data<float>();
  grad_scratch_.saved.resize(kGradScratchCount);
  const Shape shapes[kGradScratchCount] = {
      {N, L, H, D}, {N, L, H, F}, {N, L, H, F}};
  for (int i = 0; i < kGradScratchCount; ++i) {
    FTX_RETURN_IF_ERROR(
        EnsureTensor(grad_scratch_.saved[i], shapes[i], ctx.device()));
  }
  TensorView<float> scaled_grad =
      grad_scratch_.saved[kScaledGrad].view<float>();
  TensorView<float> qf_grad =
      grad_scratch_.saved[kQueryFeatureGrad].view<float>();
  TensorView<float> kf_grad =
      grad_scratch_.saved[kKeyFeatureGrad].view<float>();

  // g = d_out / den and d_den = -sum_d g * out, per (n, i, h).
  std::vector<float> den_grad(N * L * H);
  ctx.pool().ParallelFor(N * L * H, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / (L * H), i = (row / H) % L, h = row % H;
      const float inverse = 1.0f / denominator[row];
      float dot = 0.0f;
      for (int64_t d = 0; d < D; ++d) {
        const float g = d_out.at(n, i, h, d) * inverse;
        scaled_grad.data()[row * D + d] = g;
        dot += g * saved_out[row * D + d];
      }
      den_grad[row] = -dot;
    }
  });
  FTX_RETURN_IF_ERROR(CausalProductBackward(ctx, query_features, key_features,
                                            inputs.values, scaled_grad, qf_grad,
                                            kf_grad, grads.d_values));
  // Denominator: d phi(q_i) += d_den_i z_i; d phi(k_j) += sum_{i>=j} d_den_i
  // phi(q_i).
  const float* qf = query_features.data();
  ForEachPrefixSum(ctx, key_features.data(), N, L, H, F,
                   [&](int64_t n, int64_t h, int64_t i, const float* prefix) {
                     const int64_t row = (n * L + i) * H + h;
                     float* q_grad = qf_grad.data() + row * F;
                     for (int64_t f = 0; f < F; ++f)
                       q_grad[f] += den_grad[row] * prefix[f];
                   });
  ctx.pool().ParallelFor(N * H, [&](int64_t begin, int64_t end) {
    std::vector<float> suffix(F);
    for (int64_t nh = begin; nh < end; ++nh) {
      const int64_t n = nh / H, h = nh % H;
      std::fill(suffix.begin(), suffix.end(), 0.0f);
      for (int64_t j = L - 1; j >= 0; --j) {
        const int64_t row = (n * L + j) * H + h;
        for (int64_t f = 0; f < F; ++f)
          suffix[f] += den_grad[row] * qf[row * F + f];
        float* k_grad = kf_grad.data() + row * F;
        for (int64_t f = 0; f < F; ++f) k_grad[f] += suffix[f];
      }
    }
  });
  ZeroPaddedRows(ctx, inputs.key_lengths, kf_grad);
  FTX_RETURN_IF_ERROR(feature_map_->Backward(
      ctx, inputs.queries, true, query_features, qf_grad, grads.d_queries));
  return feature_map_->Backward(ctx, inputs.keys, false, key_features, kf_grad,
                                grads.d_keys);
}

}  // namespace ftx
