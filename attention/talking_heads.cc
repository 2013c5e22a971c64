#include "attention/talking_heads.h"

#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "attention/exact_topk.h"
#include "kernels/base/philox.h"
#include "kernels/base/status_macros.h"
#include "kernels/matmul/matmul.h"

namespace ftx {
namespace {

// Philox streams: attention dropout, and the two mixing-weight initialisations.
constexpr uint64_t kDropoutStream = 0x7A1C;
constexpr uint64_t kPreWeightStream = 0x7A1C0;
constexpr uint64_t kPostWeightStream = 0x7A1C1;

// Cache layout, each [H, N, L, S]: the scaled dots before mixing, the
// normalised probabilities P, the post-mixed probabilities, and (with dropout)
// P after dropout.
constexpr int kDots = 0;
constexpr int kProbabilities = 1;
constexpr int kMixedProbabilities = 2;
constexpr int kDroppedProbabilities = 3;

// Backward buffers, each [H, N, L, S].
constexpr int kGradA = 0;
constexpr int kGradB = 1;

absl::Status ValidateOptions(const TalkingHeadsAttentionOptions& options) {
  if (options.heads < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "TalkingHeadsAttention: n_heads must be >= 1, got ", options.heads));
  }
  if (options.sparse_topk < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "TalkingHeadsAttention: sparse_topk must be >= 0 (0 = off), got ",
        options.sparse_topk));
  }
  if (!(options.attention_dropout >= 0.0f &&
        options.attention_dropout < 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "TalkingHeadsAttention: attention_dropout must be in [0, 1), got ",
        options.attention_dropout));
  }
  return absl::OkStatus();
}

// U(-1/sqrt(H), 1/sqrt(H)): PyTorch's Conv2d init for fan_in = H * 1 * 1.
void InitializeMixing(uint64_t seed, uint64_t stream, Tensor& weight) {
  const int64_t heads = weight.shape().dim(0);
  const float bound = 1.0f / std::sqrt(static_cast<float>(heads));
  float* data = weight.data<float>();
  for (int64_t i = 0; i < weight.NumElements(); ++i) {
    data[i] = bound * (2.0f * RandomUniform(seed, stream, i) - 1.0f);
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<TalkingHeadsAttention>>
TalkingHeadsAttention::Create(const TalkingHeadsAttentionOptions& options) {
  FTX_RETURN_IF_ERROR(ValidateOptions(options));
  std::unique_ptr<TalkingHeadsAttention> attention(
      new TalkingHeadsAttention(options));
  FTX_RETURN_IF_ERROR(attention->Initialize());
  return attention;
}

absl::Status TalkingHeadsAttention::Initialize() {
  const int64_t heads = options_.heads;
  for (Tensor* tensor :
       {&pre_weight_, &post_weight_, &pre_grad_, &post_grad_}) {
    FTX_ASSIGN_OR_RETURN(*tensor,
                         Tensor::Create(DType::kF32, {heads, heads, 1, 1}));
  }
  InitializeMixing(options_.seed, kPreWeightStream, pre_weight_);
  InitializeMixing(options_.seed, kPostWeightStream, post_weight_);
  return absl::OkStatus();
}

std::vector<ParamRef> TalkingHeadsAttention::Parameters() {
  return {{"pre_softmax_talking_heads.weight", &pre_weight_, &pre_grad_},
          {"post_softmax_talking_heads.weight", &post_weight_, &post_grad_}};
}

TensorView<float> TalkingHeadsAttention::Matrix(Tensor& weight) const {
  return weight.view<float>().Reshape({options_.heads, options_.heads});
}

float TalkingHeadsAttention::Temperature(int64_t qk_dim) const {
  return SoftmaxTemperature(options_.softmax_temp, qk_dim);
}

absl::Status TalkingHeadsAttention::Forward(const Context& ctx,
                                            const AttentionInputs& inputs,
                                            TensorView<float> out,
                                            AttentionCache* cache) {
  FTX_ASSIGN_OR_RETURN(
      const AttentionDims dims,
      ValidateAttentionForward("TalkingHeadsAttention", ctx, inputs, out));
  if (dims.heads != options_.heads) {
    return absl::InvalidArgumentError(absl::StrCat(
        "TalkingHeadsAttention: the inputs have ", dims.heads,
        " heads but the mechanism was made for n_heads = ", options_.heads));
  }
  if (ctx.device().type != DeviceType::kCpu) {
    return absl::UnimplementedError(
        "TalkingHeadsAttention: only the CPU path exists so far");
  }
  AttentionCache& saved = cache != nullptr ? *cache : scratch_;
  const bool dropout = DropoutActive(inputs);
  saved.saved.resize(dropout ? 4 : 3);
  const Shape scores_shape{dims.heads, dims.batch, dims.queries, dims.keys};
  for (Tensor& tensor : saved.saved) {
    FTX_RETURN_IF_ERROR(EnsureTensor(tensor, scores_shape, ctx.device()));
  }
  const int64_t per_head = dims.batch * dims.queries * dims.keys;
  TensorView<float> dots = saved.saved[kDots].view<float>();
  TensorView<float> probabilities = saved.saved[kProbabilities].view<float>();
  TensorView<float> mixed = saved.saved[kMixedProbabilities].view<float>();

  // dots_h [N, L, S] = t Q_h K_h^T.
  const float t = Temperature(dims.qk_dim);
  for (int64_t h = 0; h < dims.heads; ++h) {
    FTX_RETURN_IF_ERROR(MatMul(ctx, inputs.queries.Select(2, h),
                               inputs.keys.Select(2, h), dots.Select(0, h),
                               {.transpose_b = true, .alpha = t}));
  }
  // Pre-softmax mixing over heads:
  //   logits [H, N L S] = W_pre [H, H] dots [H, N L S].
  FTX_RETURN_IF_ERROR(MatMul(ctx, Matrix(pre_weight_),
                             dots.Reshape({dims.heads, per_head}),
                             probabilities.Reshape({dims.heads, per_head})));
  ApplyScoreMasks(ctx, inputs, dims, probabilities.data());
  const TensorView<float> rows = probabilities.Reshape(
      {dims.heads * dims.batch * dims.queries, dims.keys});
  if (options_.sparse_topk > 0) {
    FTX_RETURN_IF_ERROR(
        KeepTopK(ctx, rows, options_.sparse_topk, TopKSelection::kKeepTies));
  }
  FTX_RETURN_IF_ERROR(Normalize(ctx, normalizer(), rows, rows, 1.0f));

  TensorView<float> attended = probabilities;
  if (dropout) {
    attended = saved.saved[kDroppedProbabilities].view<float>();
    ApplyDropoutMask(ctx, options_.attention_dropout, inputs.seed,
                     kDropoutStream, 0, probabilities.NumElements(),
                     probabilities.data(), attended.data());
  }
  // Post-softmax mixing:
  //   P_mixed [H, N L S] = W_post [H, H] attended [H, N L S].
  FTX_RETURN_IF_ERROR(MatMul(ctx, Matrix(post_weight_),
                             attended.Reshape({dims.heads, per_head}),
                             mixed.Reshape({dims.heads, per_head})));
  // out_h [N, L, D] = P_mixed_h [N, L, S] V_h [N, S, D].
  for (int64_t h = 0; h < dims.heads; ++h) {
    FTX_RETURN_IF_ERROR(MatMul(ctx, mixed.Select(0, h),
                               inputs.values.Select(2, h), out.Select(2, h)));
  }
  return absl::OkStatus();
}

absl::Status TalkingHeadsAttention::Backward(const Context& ctx,
                                             const AttentionInputs& inputs,
                                             const AttentionCache& cache,
                                             TensorView<const float> d_out,
                                             const AttentionGrads& grads) {
  FTX_ASSIGN_OR_RETURN(
      const AttentionDims dims,
      ValidateAttentionBackward("TalkingHeadsAttentionBackward", ctx, inputs,
                                d_out, grads));
  if (dims.heads != options_.heads) {
    return absl::InvalidArgumentError(absl::StrCat(
        "TalkingHeadsAttentionBackward: the inputs have ", dims.heads,
        " heads but the mechanism was made for n_heads = ", options_.heads));
  }
  const bool dropout = DropoutActive(inputs);
  const Shape scores_shape{dims.heads, dims.batch, dims.queries, dims.keys};
  if (cache.saved.size() != (dropout ? 4u : 3u) ||
      cache.saved[kDots].shape() != scores_shape) {
    return absl::FailedPreconditionError(
        "TalkingHeadsAttentionBackward: the cache does not come from a Forward "
        "with these inputs (pass a cache to Forward)");
  }
  const int64_t per_head = dims.batch * dims.queries * dims.keys;
  const Shape flat{dims.heads, per_head};
  const TensorView<const float> dots =
      cache.saved[kDots].view<float>().Reshape(flat);
  const TensorView<const float> probabilities =
      cache.saved[kProbabilities].view<float>();
  const TensorView<const float> mixed =
      cache.saved[kMixedProbabilities].view<float>();
  const TensorView<const float> attended =
      (dropout ? cache.saved[kDroppedProbabilities]
               : cache.saved[kProbabilities])
          .view<float>()
          .Reshape(flat);

  grad_scratch_.saved.resize(2);
  for (Tensor& tensor : grad_scratch_.saved) {
    FTX_RETURN_IF_ERROR(EnsureTensor(tensor, scores_shape, ctx.device()));
  }
  TensorView<float> grad_a = grad_scratch_.saved[kGradA].view<float>();
  TensorView<float> grad_b = grad_scratch_.saved[kGradB].view<float>();

  // d_P_mixed_h [N, L, S] = d_out_h V_h^T;
  // d_V_h [N, S, D] = P_mixed_h^T d_out_h.
  for (int64_t h = 0; h < dims.heads; ++h) {
    const TensorView<const float> d_out_h = d_out.Select(2, h);
    FTX_RETURN_IF_ERROR(MatMul(ctx, d_out_h, inputs.values.Select(2, h),
                               grad_a.Select(0, h), {.transpose_b = true}));
    FTX_RETURN_IF_ERROR(MatMul(ctx, mixed.Select(0, h), d_out_h,
                               grads.d_values.Select(2, h),
                               {.transpose_a = true}));
  }
  const TensorView<float> d_mixed_probabilities = grad_a.Reshape(flat);
  // d_W_post += d_P_mixed attended^T;  d_attended = W_post^T d_P_mixed.
  FTX_RETURN_IF_ERROR(MatMul(ctx, d_mixed_probabilities, attended,
                             Matrix(post_grad_),
                             {.transpose_b = true, .beta = 1.0f}));
  const TensorView<float> d_probabilities = grad_b.Reshape(flat);
  FTX_RETURN_IF_ERROR(MatMul(ctx, Matrix(post_weight_), d_mixed_probabilities,
                             d_probabilities, {.transpose_a = true}));
  if (dropout) {
    ApplyDropoutMask(ctx, options_.attention_dropout, inputs.seed,
                     kDropoutStream, 0, d_probabilities.NumElements(),
                     d_probabilities.data(), d_probabilities.data());
  }
  // d_logits (in place): masked and unselected entries have P = 0 and get none.
  const Shape rows{dims.heads * dims.batch * dims.queries, dims.keys};
  FTX_RETURN_IF_ERROR(NormalizeBackward(
      ctx, normalizer(), probabilities.Reshape(rows),
      d_probabilities.Reshape(rows), d_probabilities.Reshape(rows), 1.0f));
  // d_W_pre += d_logits dots^T;  d_dots = W_pre^T d_logits, into grad_a
  // (d_P_mixed is spent).
  FTX_RETURN_IF_ERROR(MatMul(ctx, d_probabilities, dots, Matrix(pre_grad_),
                             {.transpose_b = true, .beta = 1.0f}));
  const TensorView<float> d_dots = grad_a;
  FTX_RETURN_IF_ERROR(MatMul(ctx, Matrix(pre_weight_), d_probabilities,
                             d_dots.Reshape(flat), {.transpose_a = true}));
  // d_Q_h = t d_dots_h K_h;  d_K_h = t d_dots_h^T Q_h.
  const float t = Temperature(dims.qk_dim);
  for (int64_t h = 0; h < dims.heads; ++h) {
    const TensorView<const float> d_dots_h = d_dots.Select(0, h);
    FTX_RETURN_IF_ERROR(MatMul(ctx, d_dots_h, inputs.keys.Select(2, h),
                               grads.d_queries.Select(2, h), {.alpha = t}));
    FTX_RETURN_IF_ERROR(MatMul(ctx, d_dots_h, inputs.queries.Select(2, h),
                               grads.d_keys.Select(2, h),
                               {.transpose_a = true, .alpha = t}));
  }
  return absl::OkStatus();
}

AttentionSpec TalkingHeadsAttentionSpec() {
  AttentionSpec spec;
  spec.name = "talking-heads";
  spec.description =
      "softmax attention with learned head mixing before and after the softmax "
      "(Shazeer et al. 2020; x-transformers attn_talking_heads)";
  spec.options = {
      {"n_heads", OptionType::kInt, std::nullopt,
       "H, the head count (sizes the H x H mixing weights)", true},
      {"softmax_temp", OptionType::kFloat, std::nullopt,
       "softmax temperature; default 1/sqrt(E)"},
      {"attention_dropout", OptionType::kFloat, OptionValue(0.0),
       "dropout on the attention probabilities before the post-softmax mixing "
       "(training only; x-transformers default 0)"},
      {"sparse_topk", OptionType::kInt, OptionValue(int64_t{0}),
       "x-transformers sparse_topk: keep logits >= the k-th largest; 0 = off"},
      {"use_entmax15", OptionType::kBool, OptionValue(false),
       "entmax-1.5 instead of softmax (x-transformers attn_use_entmax15)"},
      {"seed", OptionType::kInt, OptionValue(int64_t{0}),
       "initialisation seed of the mixing weights"}};
  spec.factory = [](const AttentionOptions& o,
                    std::vector<std::unique_ptr<Attention>>)
      -> absl::StatusOr<std::unique_ptr<Attention>> {
    TalkingHeadsAttentionOptions options;
    options.heads = o.Int("n_heads").value_or(0);
    if (auto temp = o.Float("softmax_temp")) options.softmax_temp = *temp;
    options.attention_dropout =
        static_cast<float>(o.Float("attention_dropout").value_or(0.0));
    options.sparse_topk = o.Int("sparse_topk").value_or(0);
    options.use_entmax15 = o.Bool("use_entmax15").value_or(false);
    options.seed = static_cast<uint64_t>(o.Int("seed").value_or(0));
    FTX_ASSIGN_OR_RETURN(auto attention,
                         TalkingHeadsAttention::Create(options));
    return std::unique_ptr<Attention>(std::move(attention));
  };
  return spec;
}

}  // namespace ftx
