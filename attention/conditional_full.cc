#include "attention/conditional_full.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"

namespace ftx {

ConditionalFullAttention::ConditionalFullAttention(
    std::unique_ptr<Attention> other,
    const ConditionalFullAttentionOptions& options)
    : options_(options),
      full_({.softmax_temp = options.softmax_temp,
             .attention_dropout = options.attention_dropout}),
      other_(std::move(other)) {}

absl::StatusOr<std::unique_ptr<ConditionalFullAttention>>
ConditionalFullAttention::Create(
    std::unique_ptr<Attention> other,
    const ConditionalFullAttentionOptions& options) {
  if (other == nullptr) {
    return absl::InvalidArgumentError(
        "ConditionalFullAttention: needs the mechanism for long sequences "
        "(e.g. \"conditional-full:linear\"), got none");
  }
  if (options.length_limit < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ConditionalFullAttention: length_limit must be >= 0, got ",
        options.length_limit));
  }
  if (!(options.attention_dropout >= 0.0f &&
        options.attention_dropout < 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ConditionalFullAttention: attention_dropout must be in [0, 1), got ",
        options.attention_dropout));
  }
  return std::unique_ptr<ConditionalFullAttention>(
      new ConditionalFullAttention(std::move(other), options));
}

std::vector<ParamRef> ConditionalFullAttention::Parameters() {
  std::vector<ParamRef> params = other_->Parameters();
  for (ParamRef& param : params)
    param.name = absl::StrCat("other_attention.", param.name);
  return params;
}

absl::StatusOr<Attention*> ConditionalFullAttention::Branch(
    absl::string_view op, const AttentionInputs& inputs) {
  if (inputs.queries.rank() != 4 || inputs.keys.rank() != 4) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": queries and keys must have rank 4, got shapes ",
                     inputs.queries.shape().ToString(), " and ",
                     inputs.keys.shape().ToString()));
  }
  if (IsGiven(inputs.head_bias) && !SupportsHeadBias()) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": the wrapped \"", other_->name(),
        "\" does not support a head_bias, so neither branch takes one"));
  }
  if (UsesOther(inputs.queries.dim(1), inputs.keys.dim(1))) return other_.get();
  return &full_;
}

absl::Status ConditionalFullAttention::Forward(const Context& ctx,
                                               const AttentionInputs& inputs,
                                               TensorView<float> out,
                                               AttentionCache* cache) {
  FTX_ASSIGN_OR_RETURN(Attention* const branch,
                       Branch("ConditionalFullAttention", inputs));
  return branch->Forward(ctx, inputs, out, cache);
}

absl::Status ConditionalFullAttention::Backward(const Context& ctx,
                                                const AttentionInputs& inputs,
                                                const AttentionCache& cache,
                                                TensorView<const float> d_out,
                                                const AttentionGrads& grads) {
  FTX_ASSIGN_OR_RETURN(Attention* const branch,
                       Branch("ConditionalFullAttentionBackward", inputs));
  return branch->Backward(ctx, inputs, cache, d_out, grads);
}

AttentionSpec ConditionalFullAttentionSpec() {
  AttentionSpec spec;
  spec.name = "conditional-full";
  spec.description =
      "full attention when L and S <= length_limit, else the wrapped mechanism "
      "(fast-transformers ConditionalFullAttention)";
  spec.inner_count = 1;
  spec.options = {{"length_limit", OptionType::kInt, OptionValue(int64_t{512}),
                   "longest L and S that still use full attention"},
                  {"softmax_temp", OptionType::kFloat, std::nullopt,
                   "softmax temperature of the full branch; default 1/sqrt(E)"},
                  {"attention_dropout", OptionType::kFloat, OptionValue(0.1),
                   "dropout of the full branch (training only)"}};
  spec.factory = [](const AttentionOptions& o,
                    std::vector<std::unique_ptr<Attention>> inner)
      -> absl::StatusOr<std::unique_ptr<Attention>> {
    if (inner.size() != 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "conditional-full wraps exactly 1 mechanism, got ", inner.size()));
    }
    ConditionalFullAttentionOptions options;
    options.length_limit = o.Int("length_limit").value_or(512);
    if (auto temp = o.Float("softmax_temp")) options.softmax_temp = *temp;
    options.attention_dropout =
        static_cast<float>(o.Float("attention_dropout").value_or(0.1));
    FTX_ASSIGN_OR_RETURN(auto attention, ConditionalFullAttention::Create(
                                             std::move(inner[0]), options));
    return std::unique_ptr<Attention>(std::move(attention));
  };
  return spec;
}

}  // namespace ftx
