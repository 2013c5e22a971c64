#include "attention/full.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "kernels/base/philox.h"
#include "kernels/base/status_macros.h"
#include "kernels/dropout/dropout.h"
#include "kernels/matmul/matmul.h"
#include "kernels/softmax/softmax.h"

namespace ftx {
namespace {

// Philox stream of attention-dropout masks.
constexpr uint64_t kDropoutStream = 0xA77E;

// Cache layout: saved[0] = softmax probabilities P [H, N, L, S];
// saved[1] = P after dropout (only when dropout is active).
constexpr int kProbabilities = 0;
constexpr int kDroppedProbabilities = 1;

// Sets scores[h, n, l, s] = -inf for keys past each sequence's length.
void MaskPaddedKeys(const Context& ctx, const LengthMask& key_lengths,
                    const AttentionDims& dims, float* scores) {
  if (key_lengths.full()) return;
  const int64_t rows = dims.heads * dims.batch * dims.queries;
  ctx.pool().ParallelFor(rows, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = (r / dims.queries) % dims.batch;
      float* row = scores + r * dims.keys;
      for (int64_t s = key_lengths.Length(n, dims.keys); s < dims.keys; ++s) {
        row[s] = -std::numeric_limits<float>::infinity();
      }
    }
  });
}

// scores[h, n, l, :] += head_bias[h, l, :] for the [H, N, L, S] scores.
void AddHeadBias(const Context& ctx, const TensorView<const float>& head_bias,
                 const AttentionDims& dims, float* scores) {
  const int64_t rows = dims.heads * dims.batch * dims.queries;
  ctx.pool().ParallelFor(rows, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t h = r / (dims.batch * dims.queries);
      const int64_t l = r % dims.queries;
      const float* bias = &head_bias.at(h, l);
      float* row = scores + r * dims.keys;
      for (int64_t s = 0; s < dims.keys; ++s) row[s] += bias[s];
    }
  });
}

// d_head_bias[h, l, :] += sum_n d_scores[n, l, :] for one head's [N, L, S]
// score gradient.
void AccumulateHeadBiasGrad(const Context& ctx, const float* d_scores,
                            const AttentionDims& dims, int64_t h,
                            const TensorView<float>& d_head_bias) {
  ctx.pool().ParallelFor(dims.queries, [&](int64_t begin, int64_t end) {
    for (int64_t l = begin; l < end; ++l) {
      float* d_bias = &d_head_bias.at(h, l);
      for (int64_t n = 0; n < dims.batch; ++n) {
        const float* row = d_scores + (n * dims.queries + l) * dims.keys;
        for (int64_t s = 0; s < dims.keys; ++s) d_bias[s] += row[s];
      }
    }
  });
}

// InvalidArgument unless `view` is empty or a contiguous `shape`.
absl::Status CheckResidualScores(const char* name,
                                 const TensorView<const float>& view,
                                 const Shape& shape) {
  if (view.data() == nullptr) return absl::OkStatus();
  if (view.shape() != shape || !view.IsContiguous()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "FullAttention: residual scores ", name, " must be a contiguous ",
        shape.ToString(), " [H, N, L, S], got ", view.shape().ToString()));
  }
  return absl::OkStatus();
}

// out[i] = in[i] * keep / (1 - p), keep ~ Bernoulli(1 - p) drawn from element
// offset + i of the Philox stream (the same draw in forward and backward).
void ApplyDropout(const Context& ctx, float p, uint64_t seed, uint64_t offset,
                  int64_t count, const float* in, float* out) {
  DropoutInto(ctx, {p, seed, kDropoutStream, offset}, count, in, out);
}

}  // namespace

float FullAttention::Temperature(int64_t qk_dim) const {
  return SoftmaxTemperature(options_.softmax_temp, qk_dim);
}

absl::Status FullAttention::Forward(const Context& ctx,
                                    const AttentionInputs& inputs,
                                    TensorView<float> out,
                                    AttentionCache* cache) {
  FTX_ASSIGN_OR_RETURN(const AttentionDims dims,
                       ValidateAttentionForward("FullAttention", ctx, inputs,
                                                out, {.head_bias = true}));
  if (ctx.device().type != DeviceType::kCpu) {
    return absl::UnimplementedError(
        "FullAttention: only the CPU path exists so far");
  }
  const TensorView<const float> previous = residual_previous_;
  const TensorView<float> current = residual_current_;
  residual_previous_ = {};
  residual_current_ = {};
  AttentionCache& saved = cache != nullptr ? *cache : scratch_;
  const bool dropout = DropoutActive(inputs);
  saved.saved.resize(dropout ? 2 : 1);
  const Shape scores_shape{dims.heads, dims.batch, dims.queries, dims.keys};
  FTX_RETURN_IF_ERROR(CheckResidualScores("previous", previous, scores_shape));
  FTX_RETURN_IF_ERROR(CheckResidualScores("current", current, scores_shape));
  for (Tensor& tensor : saved.saved) {
    FTX_RETURN_IF_ERROR(EnsureTensor(tensor, scores_shape, ctx.device()));
  }
  TensorView<float> probabilities = saved.saved[kProbabilities].view<float>();

  // Scaled scores per head: [N, L, S] = t Q_h [N, L, E] K_h^T (+ bias).
  const float temperature = Temperature(dims.qk_dim);
  for (int64_t h = 0; h < dims.heads; ++h) {
    FTX_RETURN_IF_ERROR(MatMul(ctx, inputs.queries.Select(2, h),
                               inputs.keys.Select(2, h),
                               probabilities.Select(0, h),
                               {.transpose_b = true, .alpha = temperature}));
  }
  if (previous.data() != nullptr) {
    float* scores = probabilities.data();
    for (int64_t i = 0; i < probabilities.NumElements(); ++i) {
      scores[i] += previous.data()[i];
    }
  }
  if (current.data() != nullptr) {
    std::copy(probabilities.data(),
              probabilities.data() + probabilities.NumElements(),
              current.data());
  }
  if (IsGiven(inputs.head_bias)) {
    AddHeadBias(ctx, inputs.head_bias, dims, probabilities.data());
  }
  MaskPaddedKeys(ctx, inputs.key_lengths, dims, probabilities.data());

  SoftmaxOptions softmax;
  switch (inputs.attn_mask.kind()) {
    case AttnMask::Kind::kAll:
      break;
    case AttnMask::Kind::kCausal: {
      FTX_RETURN_IF_ERROR(
          EnsureTensor(causal_mask_, {dims.queries, dims.keys}, ctx.device()));
      float* mask = causal_mask_.data<float>();
      for (int64_t l = 0; l < dims.queries; ++l) {
        for (int64_t s = 0; s < dims.keys; ++s) {
          mask[l * dims.keys + s] = inputs.attn_mask.At(l, s);
        }
      }
      softmax.additive_mask = causal_mask_.view<float>();
      break;
    }
    case AttnMask::Kind::kAdditive:
      softmax.additive_mask = inputs.attn_mask.additive();
      break;
  }
  const TensorView<float> score_rows = probabilities.Reshape(
      {dims.heads * dims.batch * dims.queries, dims.keys});
  FTX_RETURN_IF_ERROR(Softmax(ctx, score_rows, score_rows, softmax));

  TensorView<float> attended = probabilities;
  if (dropout) {
    attended = saved.saved[kDroppedProbabilities].view<float>();
    ApplyDropout(ctx, options_.attention_dropout, inputs.seed, 0,
                 probabilities.NumElements(), probabilities.data(),
                 attended.data());
  }
  // out_h [N, L, D] = P_h [N, L, S] V_h [N, S, D].
  for (int64_t h = 0; h < dims.heads; ++h) {
    FTX_RETURN_IF_ERROR(MatMul(ctx, attended.Select(0, h),
                               inputs.values.Select(2, h), out.Select(2, h)));
  }
  if (probability_observer_) {
    // [H, N, L, S] seen as [N, H, L, S].
    const int64_t plane = dims.queries * dims.keys;
    probability_observer_(TensorView<const float>(
        attended.data(), {dims.batch, dims.heads, dims.queries, dims.keys},
        Strides{plane, dims.batch * plane, dims.keys, 1}, attended.device()));
  }
  return absl::OkStatus();
}

absl::Status FullAttention::Backward(const Context& ctx,
                                     const AttentionInputs& inputs,
                                     const AttentionCache& cache,
                                     TensorView<const float> d_out,
                                     const AttentionGrads& grads) {
  FTX_ASSIGN_OR_RETURN(
      const AttentionDims dims,
      ValidateAttentionBackward("FullAttentionBackward", ctx, inputs, d_out,
                                grads, {.head_bias = true}));
  const TensorView<const float> d_current = residual_d_current_;
  const TensorView<float> d_previous = residual_d_previous_;
  residual_d_current_ = {};
  residual_d_previous_ = {};
  const bool dropout = DropoutActive(inputs);
  const Shape scores_shape{dims.heads, dims.batch, dims.queries, dims.keys};
  FTX_RETURN_IF_ERROR(
      CheckResidualScores("d_current", d_current, scores_shape));
  FTX_RETURN_IF_ERROR(
      CheckResidualScores("d_previous", d_previous, scores_shape));
  if (cache.saved.size() != (dropout ? 2u : 1u) ||
      cache.saved[kProbabilities].shape() != scores_shape) {
    return absl::FailedPreconditionError(
        "FullAttentionBackward: the cache does not come from a Forward with "
        "these "
        "inputs (pass a cache to Forward)");
  }
  const TensorView<const float> probabilities =
      cache.saved[kProbabilities].view<float>();
  const TensorView<const float> attended =
      dropout ? cache.saved[kDroppedProbabilities].view<float>()
              : probabilities;

  const Shape head_scores{dims.batch, dims.queries, dims.keys};
  FTX_RETURN_IF_ERROR(EnsureTensor(grad_scratch_, head_scores, ctx.device()));
  TensorView<float> d_scores = grad_scratch_.view<float>();  // [N, L, S]
  const TensorView<float> d_score_rows =
      d_scores.Reshape({dims.batch * dims.queries, dims.keys});
  const float temperature = Temperature(dims.qk_dim);

  for (int64_t h = 0; h < dims.heads; ++h) {
    const TensorView<const float> d_out_h = d_out.Select(2, h);  // [N, L, D]
    // d_V_h [N, S, D] = P_h^T d_out_h;  d_P_h [N, L, S] = d_out_h V_h^T.
    FTX_RETURN_IF_ERROR(MatMul(ctx, attended.Select(0, h), d_out_h,
                               grads.d_values.Select(2, h),
                               {.transpose_a = true}));
    FTX_RETURN_IF_ERROR(MatMul(ctx, d_out_h, inputs.values.Select(2, h),
                               d_scores, {.transpose_b = true}));
    if (dropout) {
      // d_P = d_(dropped P) * keep / (1 - p), with the forward's mask of head
      // h.
      ApplyDropout(ctx, options_.attention_dropout, inputs.seed,
                   h * d_scores.NumElements(), d_scores.NumElements(),
                   d_scores.data(), d_scores.data());
    }
    // d_scores = d(t Q K^T + head_bias), the gradient of the softmax logits.
    const TensorView<const float> p_rows = probabilities.Select(0, h).Reshape(
        {dims.batch * dims.queries, dims.keys});
    FTX_RETURN_IF_ERROR(
        SoftmaxBackward(ctx, p_rows, d_score_rows, d_score_rows));
    if (IsGiven(grads.d_head_bias)) {
      AccumulateHeadBiasGrad(ctx, d_scores.data(), dims, h, grads.d_head_bias);
    }
    // Residual attention: the scores also fed later layers; the previous
    // layers' scores receive the total.
    const int64_t head_size = d_scores.NumElements();
    if (d_current.data() != nullptr) {
      const float* extra = d_current.data() + h * head_size;
      for (int64_t i = 0; i < head_size; ++i) d_scores.data()[i] += extra[i];
    }
    if (d_previous.data() != nullptr) {
      std::copy(d_scores.data(), d_scores.data() + head_size,
                d_previous.data() + h * head_size);
    }
    // d_Q_h = t d_scores K_h;  d_K_h = t d_scores^T Q_h.
    FTX_RETURN_IF_ERROR(MatMul(ctx, d_scores, inputs.keys.Select(2, h),
                               grads.d_queries.Select(2, h),
                               {.alpha = temperature}));
    FTX_RETURN_IF_ERROR(MatMul(ctx, d_scores, inputs.queries.Select(2, h),
                               grads.d_keys.Select(2, h),
                               {.transpose_a = true, .alpha = temperature}));
  }
  return absl::OkStatus();
}

}  // namespace ftx
