#include "attention/linformer.h"

#include <algorithm>
#include <cmath>
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
  kProjectedKeys,    // K' [N, k, H, E]
  kProjectedValues,  // V' [N, k, H, D]
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

// projected[n, j, h, :] += bias[j].
void AddRowBias(const float* bias, TensorView<float> projected_head) {
  for (int64_t n = 0; n < projected_head.dim(0); ++n) {
    for (int64_t j = 0; j < projected_head.dim(1); ++j) {
      float* row = &projected_head.at(n, j, 0);
      for (int64_t x = 0; x < projected_head.dim(2); ++x) row[x] += bias[j];
    }
  }
}

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
  std::unique_ptr<LinformerAttention> attention(
      new LinformerAttention(options));
  FTX_RETURN_IF_ERROR(attention->Initialize());
  return attention;
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
  int count = 1;
  switch (options_.sharing) {
    case LinformerSharing::kNone:
      count = static_cast<int>(2 * options_.heads);
      break;
    case LinformerSharing::kHeadwise:
      count = 2;
      break;
    case LinformerSharing::kKeyValue:
      count = 1;
      break;
  }
  FTX_ASSIGN_OR_RETURN(auto ctx, Context::Create({.num_threads = 1}));
  const bool with_bias =
      options_.bias && options_.method == LinformerMethod::kLearnable;
  for (int i = 0; i < count; ++i) {
    FTX_ASSIGN_OR_RETURN(Tensor weight, Tensor::Create(DType::kF32, {k, n}));
    const RandomOptions random{.seed = options_.seed,
                               .stream = static_cast<uint64_t>(i)};
    if (options_.method == LinformerMethod::kNoParams) {
      FTX_RETURN_IF_ERROR(
          FillNormal(*ctx, weight.view<float>(), 0.0f, 1.0f / k, random));
    } else if (options_.init == LinformerInit::kXavierNormal) {
      FTX_RETURN_IF_ERROR(
          FillNormal(*ctx, weight.view<float>(), 0.0f,
                     std::sqrt(2.0f / static_cast<float>(n + k)), random));
    } else {
      const float bound = 1.0f / std::sqrt(static_cast<float>(k));
      FTX_RETURN_IF_ERROR(
          FillUniform(*ctx, weight.view<float>(), -bound, bound, random));
    }
    FTX_ASSIGN_OR_RETURN(Tensor weight_grad,
                         Tensor::Create(DType::kF32, {k, n}));
    weights_.push_back(std::move(weight));
    weight_grads_.push_back(std::move(weight_grad));
    if (with_bias) {
      FTX_ASSIGN_OR_RETURN(Tensor bias, Tensor::Create(DType::kF32, {k}));
      const float bound = 1.0f / std::sqrt(static_cast<float>(n));
      FTX_RETURN_IF_ERROR(FillUniform(
          *ctx, bias.view<float>(), -bound, bound,
          {.seed = options_.seed, .stream = static_cast<uint64_t>(1000 + i)}));
      FTX_ASSIGN_OR_RETURN(Tensor bias_grad, Tensor::Create(DType::kF32, {k}));
      biases_.push_back(std::move(bias));
      bias_grads_.push_back(std::move(bias_grad));
    }
  }
  return absl::OkStatus();
}

std::vector<ParamRef> LinformerAttention::Parameters() {
  std::vector<ParamRef> params;
  if (options_.method == LinformerMethod::kNoParams) return params;
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
    if (!biases_.empty()) {
      params.push_back(
          {absl::StrCat(prefix, ".bias"), &biases_[i], &bias_grads_[i]});
    }
  }
  return params;
}

absl::Status LinformerAttention::Forward(const Context& ctx,
                                         const AttentionInputs& inputs,
                                         TensorView<float> out,
                                         AttentionCache* cache) {
  constexpr char kOp[] = "LinformerAttention";
  FTX_ASSIGN_OR_RETURN(const AttentionDims dims,
                       ValidateAttentionForward(kOp, ctx, inputs, out));
  if (dims.keys != options_.seq_len) {
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
                E = dims.qk_dim, D = dims.value_dim, K = options_.k;
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
  for (int64_t h = 0; h < H; ++h) {
    for (int which = 0; which < 2; ++which) {
      const int index = ProjectionIndex(which, h);
      TensorView<float> projected =
          saved.saved[which == 0 ? kProjectedKeys : kProjectedValues]
              .view<float>()
              .Select(2, h);
      // projected [N, k, X] = W [k, n] @ source_h [N, n, X].
      FTX_RETURN_IF_ERROR(MatMul(
          ctx, weights_[index].view<float>(),
          saved.saved[which == 0 ? kKeys : kValues].view<float>().Select(2, h),
          projected));
      if (!biases_.empty()) AddRowBias(biases_[index].data<float>(), projected);
    }
  }
  AttentionInputs projected_inputs;
  projected_inputs.queries = saved.saved[kQueries].view<float>();
  projected_inputs.keys = saved.saved[kProjectedKeys].view<float>();
  projected_inputs.values = saved.saved[kProjectedValues].view<float>();
  projected_inputs.training = inputs.training;
  projected_inputs.seed = inputs.seed;
  if (options_.causal) {
    // gen_causal_mask(n, k): score (i, j) kept where j <= i.
    FTX_RETURN_IF_ERROR(EnsureTensor(padded_mask_, {L, K}, Device::Cpu()));
    for (int64_t i = 0; i < L; ++i) {
      for (int64_t j = 0; j < K; ++j) {
        padded_mask_.data<float>()[i * K + j] = j <= i ? 0.0f : -INFINITY;
      }
    }
    projected_inputs.attn_mask = AttnMask::Additive(padded_mask_.view<float>());
  }
  saved.children.resize(1);
  return inner_.Forward(ctx, projected_inputs, out,
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
                D = dims.value_dim, K = options_.k;
  if (cache.saved.size() != kSavedCount || cache.children.size() != 1 ||
      cache.saved[kProjectedKeys].shape() != Shape{N, K, H, E} ||
      cache.saved[kKeys].shape() != Shape{N, S, H, E}) {
    return absl::FailedPreconditionError(absl::StrCat(
        kOp, ": the cache does not come from a Forward with these inputs"));
  }
  grad_scratch_.saved.resize(2);
  FTX_RETURN_IF_ERROR(
      EnsureTensor(grad_scratch_.saved[0], {N, K, H, E}, ctx.device()));
  FTX_RETURN_IF_ERROR(
      EnsureTensor(grad_scratch_.saved[1], {N, K, H, D}, ctx.device()));
  TensorView<float> d_projected_keys = grad_scratch_.saved[0].view<float>();
  TensorView<float> d_projected_values = grad_scratch_.saved[1].view<float>();

  AttentionInputs projected_inputs;
  projected_inputs.queries = cache.saved[kQueries].view<float>();
  projected_inputs.keys = cache.saved[kProjectedKeys].view<float>();
  projected_inputs.values = cache.saved[kProjectedValues].view<float>();
  projected_inputs.training = inputs.training;
  projected_inputs.seed = inputs.seed;
  if (options_.causal)
    projected_inputs.attn_mask = AttnMask::Additive(padded_mask_.view<float>());
  FTX_RETURN_IF_ERROR(
      inner_.Backward(ctx, projected_inputs, cache.children[0], d_out,
                      {grads.d_queries, d_projected_keys, d_projected_values}));
  ZeroPadded(inputs.query_lengths, grads.d_queries);

  const bool trainable = options_.method == LinformerMethod::kLearnable;
  for (int64_t h = 0; h < H; ++h) {
    for (int which = 0; which < 2; ++which) {
      const int index = ProjectionIndex(which, h);
      const TensorView<float> d_projected =
          (which == 0 ? d_projected_keys : d_projected_values).Select(2, h);
      // d_source_h = W^T d_projected (=); d_W += sum_n d_projected source_h^T.
      FTX_RETURN_IF_ERROR(MatMulBackward(
          ctx, weights_[index].view<float>(),
          cache.saved[which == 0 ? kKeys : kValues].view<float>().Select(2, h),
          d_projected,
          trainable ? weight_grads_[index].view<float>() : TensorView<float>(),
          (which == 0 ? grads.d_keys : grads.d_values).Select(2, h), {},
          {.accumulate_a = true, .accumulate_b = false}));
      if (!biases_.empty()) {
        float* d_bias = bias_grads_[index].data<float>();
        for (int64_t n = 0; n < N; ++n) {
          for (int64_t j = 0; j < K; ++j) {
            const float* row = &d_projected.at(n, j, 0);
            float sum = 0.0f;
            for (int64_t x = 0; x < d_projected.dim(2); ++x) sum += row[x];
            d_bias[j] += sum;
          }
        }
      }
    }
  }
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
      {"method", OptionType::kString, OptionValue(std::string("learnable")),
       "learnable | no_params"},
      {"parameter_sharing", OptionType::kString,
       OptionValue(std::string("headwise")),
       "none | headwise | kv (layerwise: reuse one mechanism in every layer)"},
      {"linformer_init", OptionType::kString,
       OptionValue(std::string("xavier_normal")),
       "xavier_normal (linformer-pytorch) | uniform (lucidrains, "
       "U(+-1/sqrt(k)))"},
      {"projection_bias", OptionType::kBool, OptionValue(true),
       "bias of the E/F projections (linformer-pytorch: true, lucidrains: "
       "false)"},
      {"causal", OptionType::kBool, OptionValue(false),
       "linformer-pytorch's (n, k) causal mask"},
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
    const std::string method = o.String("method").value_or("learnable");
    if (method == "learnable") {
      options.method = LinformerMethod::kLearnable;
    } else if (method == "no_params") {
      options.method = LinformerMethod::kNoParams;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("linformer: method \"", method,
                       "\" is not one of learnable, no_params (convolution is "
                       "not implemented)"));
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
