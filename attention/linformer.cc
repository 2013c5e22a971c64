#include "attention/linformer.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/base/rng.h"
#include "kernels/base/status_macros.h"
#include "kernels/matmul/matmul.h"

namespace ftx {
namespace {

enum Saved : int {
  kQueries,          // Q with padded queries zeroed [N, L, H, E]
  kKeys,             // K with padded keys zeroed [N, S, H, E]
  kValues,           // V with padded keys zeroed [N, S, H, D]
  kProjectedKeys,    // K' [N, k', H, E]
  kProjectedValues,  // V' [N, k', H, D]
  kSavedCount
};

// Copies `source` into the contiguous `target`, zeroing steps t >= lengths[n].
void CopyMasked(const Context& ctx, TensorView<const float> source,
                const LengthMask& lengths, TensorView<float> target) {
  const int64_t N = source.dim(0), T = source.dim(1), H = source.dim(2),
                X = source.dim(3);
  ctx.pool().ParallelFor(N * T, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t n = i / T, t = i % T;
      const bool keep = t < lengths.Length(n, T);
      for (int64_t h = 0; h < H; ++h) {
        float* row = &target.at(n, t, h, 0);
        if (keep) {
          std::copy(&source.at(n, t, h, 0), &source.at(n, t, h, 0) + X, row);
        } else {
          std::fill(row, row + X, 0.0f);
        }
      }
    }
  });
}

// Zeroes d[n, t, :, :] for t >= lengths[n] (d may be strided in its leading
// axes).
void ZeroPadded(const LengthMask& lengths, TensorView<float> d) {
  if (lengths.full()) return;
  for (int64_t n = 0; n < d.dim(0); ++n) {
    for (int64_t t = lengths.Length(n, d.dim(1)); t < d.dim(1); ++t) {
      for (int64_t h = 0; h < d.dim(2); ++h) {
        std::fill(&d.at(n, t, h, 0), &d.at(n, t, h, 0) + d.dim(3), 0.0f);
      }
    }
  }
}

// Rows t, t + w, t + 2 w, ... (count of them) of x [N, S, X]: [N, count, X].
template <typename T>
TensorView<T> EveryWthRow(TensorView<T> x, int64_t t, int64_t w,
                          int64_t count) {
  return TensorView<T>(x.data() + t * x.stride(1),
                       Shape{x.dim(0), count, x.dim(2)},
                       Strides{x.stride(0), w * x.stride(1), 1, 0}, x.device());
}

bool IsBound(const TensorView<float>& view) { return view.data() != nullptr; }

}  // namespace

LinformerAttention::LinformerAttention(const LinformerOptions& options)
    : options_(options),
      inner_(FullAttentionOptions{options.softmax_temp,
                                  options.attention_dropout}) {}

absl::StatusOr<std::unique_ptr<LinformerAttention>> LinformerAttention::Create(
    const LinformerOptions& options) {
  if (options.seq_len <= 0 || options.k <= 0 || options.heads <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("linformer: seq_len, k and heads must be positive, got ",
                     options.seq_len, ", ", options.k, ", ", options.heads));
  }
  if (options.method == LinformerMethod::kConvolution) {
    if (options.head_dim <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "linformer: method convolution needs head_dim > 0 (the Conv1d "
          "channels), got ",
          options.head_dim));
    }
    if (options.k > options.seq_len) {
      return absl::InvalidArgumentError(absl::StrCat(
          "linformer: method convolution needs k <= seq_len (kernel size "
          "seq_len / k), got k ",
          options.k, " and seq_len ", options.seq_len));
    }
    if (options.slice_shorter) {
      return absl::InvalidArgumentError(
          "linformer: slice_shorter needs method learnable or no_params");
    }
  }
  std::unique_ptr<LinformerAttention> attention(
      new LinformerAttention(options));
  FTX_RETURN_IF_ERROR(attention->Initialize());
  return attention;
}

int64_t LinformerAttention::projected_length() const {
  if (options_.method == LinformerMethod::kConvolution) {
    return options_.seq_len / (options_.seq_len / options_.k);
  }
  return options_.k;
}

int LinformerAttention::NumProjections() const {
  switch (options_.sharing) {
    case LinformerSharing::kNone:
      return static_cast<int>(2 * options_.heads);
    case LinformerSharing::kHeadwise:
      return 2;
    case LinformerSharing::kKeyValue:
      return 1;
  }
  return 1;
}

Shape LinformerAttention::ProjectionWeightShape() const {
  if (options_.method == LinformerMethod::kConvolution) {
    return {options_.head_dim, options_.head_dim,
            options_.seq_len / options_.k};
  }
  return {options_.k, options_.seq_len};
}

Shape LinformerAttention::ProjectionBiasShape() const {
  if (!options_.bias || options_.method == LinformerMethod::kNoParams) {
    return {0};
  }
  return {options_.method == LinformerMethod::kConvolution ? options_.head_dim
                                                           : options_.k};
}

int LinformerAttention::ProjectionIndex(int which, int64_t head) const {
  switch (options_.sharing) {
    case LinformerSharing::kNone:
      return static_cast<int>(2 * head + which);
    case LinformerSharing::kHeadwise:
      return which;
    case LinformerSharing::kKeyValue:
      return 0;
  }
  return 0;
}

absl::Status LinformerAttention::Initialize() {
  const int64_t n = options_.seq_len, k = options_.k;
  const Shape weight_shape = ProjectionWeightShape();
  const Shape bias_shape = ProjectionBiasShape();
  const bool trainable = options_.method != LinformerMethod::kNoParams;
  // torch's Conv1d default: U(+-1/sqrt(fan_in)) for weight and bias.
  const float conv_bound =
      1.0f /
      std::sqrt(static_cast<float>(weight_shape.dim(1) *
                                   weight_shape.dim(weight_shape.rank() - 1)));
  FTX_ASSIGN_OR_RETURN(auto ctx, Context::Create({.num_threads = 1}));
  for (int i = 0; i < NumProjections(); ++i) {
    FTX_ASSIGN_OR_RETURN(Tensor weight,
                         Tensor::Create(DType::kF32, weight_shape));
    const RandomOptions random{.seed = options_.seed,
                               .stream = static_cast<uint64_t>(i)};
    if (options_.method == LinformerMethod::kNoParams) {
      FTX_RETURN_IF_ERROR(
          FillNormal(*ctx, weight.view<float>(), 0.0f, 1.0f / k, random));
    } else if (options_.method == LinformerMethod::kConvolution) {
      FTX_RETURN_IF_ERROR(FillUniform(*ctx, weight.view<float>(), -conv_bound,
                                      conv_bound, random));
    } else if (options_.init == LinformerInit::kXavierNormal) {
      FTX_RETURN_IF_ERROR(
          FillNormal(*ctx, weight.view<float>(), 0.0f,
                     std::sqrt(2.0f / static_cast<float>(n + k)), random));
    } else {
      const float bound = 1.0f / std::sqrt(static_cast<float>(k));
      FTX_RETURN_IF_ERROR(
          FillUniform(*ctx, weight.view<float>(), -bound, bound, random));
    }
    FTX_ASSIGN_OR_RETURN(Tensor bias, Tensor::Create(DType::kF32, bias_shape));
    if (bias_shape.NumElements() > 0) {
      const float bound = options_.method == LinformerMethod::kConvolution
                              ? conv_bound
                              : 1.0f / std::sqrt(static_cast<float>(n));
      FTX_RETURN_IF_ERROR(FillUniform(
          *ctx, bias.view<float>(), -bound, bound,
          {.seed = options_.seed, .stream = static_cast<uint64_t>(1000 + i)}));
    }
    FTX_ASSIGN_OR_RETURN(Tensor weight_grad,
                         Tensor::Create(DType::kF32, weight_shape));
    FTX_ASSIGN_OR_RETURN(Tensor bias_grad,
                         Tensor::Create(DType::kF32, bias_shape));
    weights_.push_back(std::move(weight));
    biases_.push_back(std::move(bias));
    weight_grads_.push_back(std::move(weight_grad));
    bias_grads_.push_back(std::move(bias_grad));
  }
  for (int i = 0; i < NumProjections(); ++i) {
    LinformerProjection projection;
    projection.weight = weights_[i].view<float>();
    if (trainable) projection.d_weight = weight_grads_[i].view<float>();
    if (bias_shape.NumElements() > 0) {
      projection.bias = biases_[i].view<float>();
      projection.d_bias = bias_grads_[i].view<float>();
    }
    projections_.push_back(projection);
  }
  return absl::OkStatus();
}

absl::Status LinformerAttention::BindProjections(
    const std::vector<LinformerProjection>& projections) {
  if (static_cast<int>(projections.size()) != NumProjections()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "LinformerAttention::BindProjections: projections has ",
        projections.size(), " entries, expected ", NumProjections()));
  }
  const Shape weight_shape = ProjectionWeightShape();
  const Shape bias_shape = ProjectionBiasShape();
  const bool has_bias = bias_shape.NumElements() > 0;
  for (size_t i = 0; i < projections.size(); ++i) {
    const LinformerProjection& p = projections[i];
    auto check = [&](const TensorView<float>& view, const Shape& shape,
                     const char* what, bool required) -> absl::Status {
      const bool given = IsBound(view);
      if (!given && !required) return absl::OkStatus();
      if (!given || view.shape() != shape || !view.IsContiguous() ||
          view.device().type != DeviceType::kCpu) {
        return absl::InvalidArgumentError(absl::StrCat(
            "LinformerAttention::BindProjections: projections[", i, "].", what,
            " must be a contiguous CPU view of shape ", shape.ToString(),
            ", got ", given ? view.shape().ToString() : std::string("none")));
      }
      return absl::OkStatus();
    };
    FTX_RETURN_IF_ERROR(check(p.weight, weight_shape, "weight", true));
    FTX_RETURN_IF_ERROR(check(p.d_weight, weight_shape, "d_weight", false));
    if (has_bias) {
      FTX_RETURN_IF_ERROR(check(p.bias, bias_shape, "bias", true));
      FTX_RETURN_IF_ERROR(check(p.d_bias, bias_shape, "d_bias", false));
    } else if (IsBound(p.bias) || IsBound(p.d_bias)) {
      return absl::InvalidArgumentError(
          absl::StrCat("LinformerAttention::BindProjections: projections[", i,
                       "].bias given, but this projection has no bias"));
    }
  }
  projections_ = projections;
  bound_ = true;
  weights_.clear();
  biases_.clear();
  weight_grads_.clear();
  bias_grads_.clear();
  return absl::OkStatus();
}

std::vector<ParamRef> LinformerAttention::Parameters() {
  std::vector<ParamRef> params;
  if (bound_ || options_.method == LinformerMethod::kNoParams) return params;
  for (size_t i = 0; i < weights_.size(); ++i) {
    const char* matrix =
        (options_.sharing == LinformerSharing::kNone && i % 2 == 1) ||
                (options_.sharing == LinformerSharing::kHeadwise && i == 1)
            ? "F"
            : "E";
    const std::string prefix = options_.sharing == LinformerSharing::kNone
                                   ? absl::StrCat("heads.", i / 2, ".", matrix)
                                   : std::string(matrix);
    params.push_back(
        {absl::StrCat(prefix, ".weight"), &weights_[i], &weight_grads_[i]});
    if (biases_[i].NumElements() > 0) {
      params.push_back(
          {absl::StrCat(prefix, ".bias"), &biases_[i], &bias_grads_[i]});
    }
  }
  return params;
}

void LinformerAttention::RearrangeConvolutionWeights() {
  const int64_t d = options_.head_dim, w = options_.seq_len / options_.k;
  for (int index = 0; index < NumProjections(); ++index) {
    const float* weight = projections_[index].weight.data();
    float* by_tap = conv_weights_.data<float>() + index * w * d * d;
    for (int64_t o = 0; o < d; ++o) {
      for (int64_t i = 0; i < d; ++i) {
        for (int64_t t = 0; t < w; ++t) {
          by_tap[(t * d + o) * d + i] = weight[(o * d + i) * w + t];
        }
      }
    }
  }
}

absl::Status LinformerAttention::Project(const Context& ctx, int index,
                                         TensorView<const float> source,
                                         TensorView<float> projected) {
  const LinformerProjection& p = projections_[index];
  const int64_t N = source.dim(0), S = source.dim(1), K = projected.dim(1),
                X = source.dim(2);
  if (options_.method == LinformerMethod::kConvolution) {
    const int64_t w = options_.seq_len / options_.k;
    for (int64_t t = 0; t < w; ++t) {
      const TensorView<const float> tap(
          conv_weights_.data<float>() + (index * w + t) * X * X, {X, X});
      FTX_RETURN_IF_ERROR(
          MatMul(ctx, EveryWthRow(source, t, w, K), tap, projected,
                 {.transpose_b = true, .beta = t == 0 ? 0.0f : 1.0f}));
    }
    if (IsBound(p.bias)) {
      const float* bias = p.bias.data();
      for (int64_t n = 0; n < N; ++n) {
        for (int64_t j = 0; j < K; ++j) {
          float* row = &projected.at(n, j, 0);
          for (int64_t x = 0; x < X; ++x) row[x] += bias[x];
        }
      }
    }
    return absl::OkStatus();
  }
  // projected [N, k, X] = W[:, :S] [k, S] @ source [N, S, X].
  FTX_RETURN_IF_ERROR(MatMul(ctx, p.weight.Slice(1, 0, S), source, projected));
  if (IsBound(p.bias)) {
    const float* bias = p.bias.data();
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t j = 0; j < K; ++j) {
        float* row = &projected.at(n, j, 0);
        for (int64_t x = 0; x < X; ++x) row[x] += bias[j];
      }
    }
  }
  return absl::OkStatus();
}

absl::Status LinformerAttention::ProjectBackward(
    const Context& ctx, int index, TensorView<const float> source,
    TensorView<const float> d_projected, TensorView<float> d_source) {
  const LinformerProjection& p = projections_[index];
  const int64_t N = source.dim(0), S = source.dim(1), K = d_projected.dim(1),
                X = source.dim(2);
  const bool conv = options_.method == LinformerMethod::kConvolution;
  if (IsBound(p.d_bias)) {
    float* d_bias = p.d_bias.data();
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t j = 0; j < K; ++j) {
        const float* row = &d_projected.at(n, j, 0);
        if (conv) {
          for (int64_t x = 0; x < X; ++x) d_bias[x] += row[x];
        } else {
          float sum = 0.0f;
          for (int64_t x = 0; x < X; ++x) sum += row[x];
          d_bias[j] += sum;
        }
      }
    }
  }
  if (conv) {
    const int64_t w = options_.seq_len / options_.k;
    // Positions past K w feed no output.
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t s = K * w; s < S; ++s) {
        std::fill(&d_source.at(n, s, 0), &d_source.at(n, s, 0) + X, 0.0f);
      }
    }
    for (int64_t t = 0; t < w; ++t) {
      const int64_t offset = (index * w + t) * X * X;
      const TensorView<const float> tap(conv_weights_.data<float>() + offset,
                                        {X, X});
      const TensorView<float> d_tap =
          IsBound(p.d_weight)
              ? TensorView<float>(conv_weight_grads_.data<float>() + offset,
                                  {X, X})
              : TensorView<float>();
      FTX_RETURN_IF_ERROR(MatMulBackward(
          ctx, EveryWthRow(source, t, w, K), tap, d_projected,
          EveryWthRow(d_source, t, w, K), d_tap, {.transpose_b = true},
          {.accumulate_a = false, .accumulate_b = true}));
    }
    return absl::OkStatus();
  }
  // d_source = W^T d_projected (=); d_W += sum_n d_projected source^T.
  return MatMulBackward(
      ctx, p.weight.Slice(1, 0, S), source, d_projected,
      IsBound(p.d_weight) ? p.d_weight.Slice(1, 0, S) : TensorView<float>(),
      d_source, {}, {.accumulate_a = true, .accumulate_b = false});
}

absl::Status LinformerAttention::Forward(const Context& ctx,
                                         const AttentionInputs& inputs,
                                         TensorView<float> out,
                                         AttentionCache* cache) {
  constexpr char kOp[] = "LinformerAttention";
  FTX_ASSIGN_OR_RETURN(const AttentionDims dims,
                       ValidateAttentionForward(kOp, ctx, inputs, out));
  const bool shorter_ok =
      options_.slice_shorter && dims.keys < options_.seq_len;
  if (dims.keys != options_.seq_len && !shorter_ok) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": sequence length ", dims.keys,
                     " differs from the configured seq_len ", options_.seq_len,
                     " (pad to seq_len, e.g. with a Padder)"));
  }
  if (options_.sharing == LinformerSharing::kNone &&
      dims.heads != options_.heads) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": configured for ", options_.heads, " heads, got ", dims.heads));
  }
  if (options_.method == LinformerMethod::kConvolution &&
      (dims.qk_dim != options_.head_dim ||
       dims.value_dim != options_.head_dim)) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": method convolution needs E = D = head_dim ", options_.head_dim,
        ", got E ", dims.qk_dim, " and D ", dims.value_dim));
  }
  if (options_.causal && dims.queries != dims.keys) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": the causal (n, k) mask needs L == seq_len"));
  }
  if (inputs.attn_mask.kind() != AttnMask::Kind::kAll) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp,
        ": takes no attn_mask (set the causal option for the (n, k) mask)"));
  }
  if (ctx.device().type != DeviceType::kCpu) {
    return absl::UnimplementedError(
        absl::StrCat(kOp, ": only the CPU path exists so far"));
  }
  const int64_t N = dims.batch, L = dims.queries, S = dims.keys, H = dims.heads,
                E = dims.qk_dim, D = dims.value_dim, K = projected_length();
  AttentionCache local;
  AttentionCache& saved = cache != nullptr ? *cache : local;
  saved.saved.resize(kSavedCount);
  const Shape shapes[kSavedCount] = {
      {N, L, H, E}, {N, S, H, E}, {N, S, H, D}, {N, K, H, E}, {N, K, H, D}};
  for (int i = 0; i < kSavedCount; ++i) {
    FTX_RETURN_IF_ERROR(EnsureTensor(saved.saved[i], shapes[i], ctx.device()));
  }
  CopyMasked(ctx, inputs.queries, inputs.query_lengths,
             saved.saved[kQueries].view<float>());
  CopyMasked(ctx, inputs.keys, inputs.key_lengths,
             saved.saved[kKeys].view<float>());
  CopyMasked(ctx, inputs.values, inputs.key_lengths,
             saved.saved[kValues].view<float>());
  if (!options_.full_attention) {
    if (options_.method == LinformerMethod::kConvolution) {
      const int64_t w = options_.seq_len / options_.k;
      FTX_RETURN_IF_ERROR(EnsureTensor(
          conv_weights_, {NumProjections(), w, E, E}, Device::Cpu()));
      RearrangeConvolutionWeights();
    }
    for (int64_t h = 0; h < H; ++h) {
      for (int which = 0; which < 2; ++which) {
        FTX_RETURN_IF_ERROR(Project(
            ctx, ProjectionIndex(which, h),
            saved.saved[which == 0 ? kKeys : kValues].view<float>().Select(2,
                                                                           h),
            saved.saved[which == 0 ? kProjectedKeys : kProjectedValues]
                .view<float>()
                .Select(2, h)));
      }
    }
  }
  AttentionInputs inner_inputs;
  inner_inputs.queries = saved.saved[kQueries].view<float>();
  inner_inputs.keys =
      saved.saved[options_.full_attention ? kKeys : kProjectedKeys]
          .view<float>();
  inner_inputs.values =
      saved.saved[options_.full_attention ? kValues : kProjectedValues]
          .view<float>();
  inner_inputs.training = inputs.training;
  inner_inputs.seed = inputs.seed;
  // gen_causal_mask: score (i, j) kept where j <= i, over (n, k') or (n, n).
  if (options_.causal) inner_inputs.attn_mask = AttnMask::Causal();
  saved.children.resize(1);
  return inner_.Forward(ctx, inner_inputs, out,
                        cache != nullptr ? &saved.children[0] : nullptr);
}

absl::Status LinformerAttention::Backward(const Context& ctx,
                                          const AttentionInputs& inputs,
                                          const AttentionCache& cache,
                                          TensorView<const float> d_out,
                                          const AttentionGrads& grads) {
  constexpr char kOp[] = "LinformerAttentionBackward";
  FTX_ASSIGN_OR_RETURN(
      const AttentionDims dims,
      ValidateAttentionBackward(kOp, ctx, inputs, d_out, grads));
  const int64_t N = dims.batch, S = dims.keys, H = dims.heads, E = dims.qk_dim,
                D = dims.value_dim, K = projected_length();
  if (cache.saved.size() != kSavedCount || cache.children.size() != 1 ||
      cache.saved[kProjectedKeys].shape() != Shape{N, K, H, E} ||
      cache.saved[kKeys].shape() != Shape{N, S, H, E}) {
    return absl::FailedPreconditionError(absl::StrCat(
        kOp, ": the cache does not come from a Forward with these inputs"));
  }
  AttentionInputs inner_inputs;
  inner_inputs.queries = cache.saved[kQueries].view<float>();
  inner_inputs.keys =
      cache.saved[options_.full_attention ? kKeys : kProjectedKeys]
          .view<float>();
  inner_inputs.values =
      cache.saved[options_.full_attention ? kValues : kProjectedValues]
          .view<float>();
  inner_inputs.training = inputs.training;
  inner_inputs.seed = inputs.seed;
  if (options_.causal) inner_inputs.attn_mask = AttnMask::Causal();
  if (options_.full_attention) {
    FTX_RETURN_IF_ERROR(
        inner_.Backward(ctx, inner_inputs, cache.children[0], d_out,
                        {grads.d_queries, grads.d_keys, grads.d_values}));
  } else {
    grad_scratch_.saved.resize(2);
    FTX_RETURN_IF_ERROR(
        EnsureTensor(grad_scratch_.saved[0], {N, K, H, E}, ctx.device()));
    FTX_RETURN_IF_ERROR(
        EnsureTensor(grad_scratch_.saved[1], {N, K, H, D}, ctx.device()));
    TensorView<float> d_projected_keys = grad_scratch_.saved[0].view<float>();
    TensorView<float> d_projected_values = grad_scratch_.saved[1].view<float>();
    FTX_RETURN_IF_ERROR(inner_.Backward(
        ctx, inner_inputs, cache.children[0], d_out,
        {grads.d_queries, d_projected_keys, d_projected_values}));
    const bool conv = options_.method == LinformerMethod::kConvolution;
    if (conv) {
      const int64_t w = options_.seq_len / options_.k;
      FTX_RETURN_IF_ERROR(EnsureTensor(
          conv_weights_, {NumProjections(), w, E, E}, Device::Cpu()));
      RearrangeConvolutionWeights();
      FTX_RETURN_IF_ERROR(EnsureTensor(
          conv_weight_grads_, {NumProjections(), w, E, E}, Device::Cpu()));
      std::fill(
          conv_weight_grads_.data<float>(),
          conv_weight_grads_.data<float>() + conv_weight_grads_.NumElements(),
          0.0f);
    }
    for (int64_t h = 0; h < H; ++h) {
      for (int which = 0; which < 2; ++which) {
        FTX_RETURN_IF_ERROR(ProjectBackward(
            ctx, ProjectionIndex(which, h),
            cache.saved[which == 0 ? kKeys : kValues].view<float>().Select(2,
                                                                           h),
            (which == 0 ? d_projected_keys : d_projected_values).Select(2, h),
            (which == 0 ? grads.d_keys : grads.d_values).Select(2, h)));
      }
    }
    if (conv) {
      const int64_t d = E, w = options_.seq_len / options_.k;
      for (int index = 0; index < NumProjections(); ++index) {
        if (!IsBound(projections_[index].d_weight)) continue;
        float* d_weight = projections_[index].d_weight.data();
        const float* by_tap =
            conv_weight_grads_.data<float>() + index * w * d * d;
        for (int64_t o = 0; o < d; ++o) {
          for (int64_t i = 0; i < d; ++i) {
            for (int64_t t = 0; t < w; ++t) {
              d_weight[(o * d + i) * w + t] += by_tap[(t * d + o) * d + i];
            }
          }
        }
      }
    }
  }
  ZeroPadded(inputs.query_lengths, grads.d_queries);
  ZeroPadded(inputs.key_lengths, grads.d_keys);
  ZeroPadded(inputs.key_lengths, grads.d_values);
  return absl::OkStatus();
}

AttentionSpec LinformerAttentionSpec() {
  AttentionSpec spec;
  spec.name = "linformer";
  spec.description =
      "keys/values projected along the sequence to k, O(n k) (Wang et al. "
      "2020)";
  spec.options = {
      {"seq_len", OptionType::kInt, std::nullopt,
       "n, the fixed sequence length", true},
      {"k", OptionType::kInt, OptionValue(int64_t{256}),
       "projected length (dim_k)"},
      {"n_heads", OptionType::kInt, OptionValue(int64_t{1}),
       "heads (needed for per-head projections)"},
      {"head_dim", OptionType::kInt, OptionValue(int64_t{0}),
       "d = E = D, the Conv1d channels (method convolution)"},
      {"method", OptionType::kString, OptionValue(std::string("learnable")),
       "learnable | convolution | no_params"},
      {"parameter_sharing", OptionType::kString,
       OptionValue(std::string("headwise")),
       "none | headwise | kv (layerwise: bind one projection to every layer, "
       "models/linformer.h)"},
      {"linformer_init", OptionType::kString,
       OptionValue(std::string("xavier_normal")),
       "xavier_normal (linformer-pytorch) | uniform (lucidrains, "
       "U(+-1/sqrt(k)))"},
      {"projection_bias", OptionType::kBool, OptionValue(true),
       "bias of the E/F projections (linformer-pytorch: true, lucidrains: "
       "false)"},
      {"causal", OptionType::kBool, OptionValue(false),
       "linformer-pytorch's (n, k) causal mask"},
      {"full_attention", OptionType::kBool, OptionValue(false),
       "linformer-pytorch full_attention: no projection"},
      {"slice_shorter", OptionType::kBool, OptionValue(false),
       "lucidrains: keys shorter than seq_len use the first columns of E, F"},
      {"softmax_temp", OptionType::kFloat, std::nullopt, "default 1/sqrt(E)"},
      {"attention_dropout", OptionType::kFloat, OptionValue(0.0),
       "training only"},
      {"seed", OptionType::kInt, OptionValue(int64_t{0}),
       "initialisation seed"}};
  spec.factory = [](const AttentionOptions& o,
                    std::vector<std::unique_ptr<Attention>>)
      -> absl::StatusOr<std::unique_ptr<Attention>> {
    LinformerOptions options;
    options.seq_len = o.Int("seq_len").value_or(0);
    options.k = o.Int("k").value_or(256);
    options.heads = o.Int("n_heads").value_or(1);
    options.head_dim = o.Int("head_dim").value_or(0);
    const std::string method = o.String("method").value_or("learnable");
    if (method == "learnable") {
      options.method = LinformerMethod::kLearnable;
    } else if (method == "convolution") {
      options.method = LinformerMethod::kConvolution;
    } else if (method == "no_params") {
      options.method = LinformerMethod::kNoParams;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("linformer: method \"", method,
                       "\" is not one of learnable, convolution, no_params"));
    }
    const std::string sharing =
        o.String("parameter_sharing").value_or("headwise");
    if (sharing == "none") {
      options.sharing = LinformerSharing::kNone;
    } else if (sharing == "headwise") {
      options.sharing = LinformerSharing::kHeadwise;
    } else if (sharing == "kv") {
      options.sharing = LinformerSharing::kKeyValue;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("linformer: parameter_sharing \"", sharing,
                       "\" is not one of none, headwise, kv"));
    }
    const std::string init =
        o.String("linformer_init").value_or("xavier_normal");
    if (init != "xavier_normal" && init != "uniform") {
      return absl::InvalidArgumentError(
          absl::StrCat("linformer: linformer_init \"", init,
                       "\" is not one of xavier_normal, uniform"));
    }
    options.init = init == "uniform" ? LinformerInit::kUniform
                                     : LinformerInit::kXavierNormal;
    options.bias = o.Bool("projection_bias").value_or(true);
    options.causal = o.Bool("causal").value_or(false);
    options.full_attention = o.Bool("full_attention").value_or(false);
    options.slice_shorter = o.Bool("slice_shorter").value_or(false);
    if (auto temp = o.Float("softmax_temp")) options.softmax_temp = *temp;
    options.attention_dropout =
        static_cast<float>(o.Float("attention_dropout").value_or(0));
    options.seed = static_cast<uint64_t>(o.Int("seed").value_or(0));
    FTX_ASSIGN_OR_RETURN(auto attention, LinformerAttention::Create(options));
    return std::unique_ptr<Attention>(std::move(attention));
  };
  return spec;
}

}  // namespace ftx
