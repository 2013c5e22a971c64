#include "attention/builtin.h"

#include <memory>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "attention/causal_linear.h"
#include "attention/feature_map.h"
#include "attention/full.h"
#include "attention/linear.h"
#include "attention/linformer.h"
#include "attention/recurrent.h"
#include "attention/recurrent_cross.h"
#include "kernels/activation/activation.h"
#include "kernels/base/status_macros.h"

namespace ftx {
namespace {

OptionSpec SoftmaxTempOption() {
  return {"softmax_temp", OptionType::kFloat, std::nullopt,
          "softmax temperature; default 1/sqrt(E)"};
}

OptionSpec DropoutOption() {
  return {"attention_dropout", OptionType::kFloat, OptionValue(0.1),
          "dropout on the attention probabilities (training only)"};
}

OptionSpec FeatureMapOption() {
  return {"feature_map", OptionType::kString, OptionValue(std::string("elu+1")),
          "phi of linear attention: elu+1, relu, or another kernels/activation name"};
}

OptionSpec QueryDimensionsOption() {
  return {"query_dimensions", OptionType::kInt, std::nullopt,
          "E per head (accepted for fast-transformers compatibility; read from the "
          "inputs)"};
}

absl::StatusOr<std::unique_ptr<FeatureMap>> MakeFeatureMap(
    const AttentionOptions& options) {
  const std::string name = options.String("feature_map").value_or("elu+1");
  FTX_ASSIGN_OR_RETURN(const Activation activation, ActivationFromName(name));
  return std::unique_ptr<FeatureMap>(std::make_unique<ActivationFeatureMap>(activation));
}

OptionSpec EpsSpec() {
  return {"eps", OptionType::kFloat, OptionValue(1e-6),
          "added to the normaliser phi(q) . sum phi(k)"};
}

float EpsOption(const AttentionOptions& options) {
  return static_cast<float>(options.Float("eps").value_or(1e-6));
}

// fast-transformers registers one recurrent class under "linear" and "causal-linear".
absl::StatusOr<std::unique_ptr<RecurrentAttention>> RecurrentLinearFactory(
    const AttentionOptions& options) {
  FTX_ASSIGN_OR_RETURN(std::unique_ptr<FeatureMap> feature_map, MakeFeatureMap(options));
  return std::unique_ptr<RecurrentAttention>(std::make_unique<RecurrentLinearAttention>(
      std::move(feature_map), EpsOption(options)));
}

AttentionSpec FullSpec() {
  AttentionSpec spec;
  spec.name = "full";
  spec.description = "softmax attention, O(L S) (Vaswani et al. 2017)";
  spec.options = {SoftmaxTempOption(), DropoutOption()};
  spec.factory = [](const AttentionOptions& options,
                    std::vector<std::unique_ptr<Attention>>)
      -> absl::StatusOr<std::unique_ptr<Attention>> {
    FullAttentionOptions full;
    if (auto temp = options.Float("softmax_temp")) full.softmax_temp = *temp;
    full.attention_dropout = static_cast<float>(options.Float("attention_dropout").value_or(0.1));
    if (full.attention_dropout < 0 || full.attention_dropout >= 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "attention_dropout must be in [0, 1), got ", full.attention_dropout));
    }
    return std::unique_ptr<Attention>(std::make_unique<FullAttention>(full));
  };
  spec.recurrent_factory = [](const AttentionOptions& options)
      -> absl::StatusOr<std::unique_ptr<RecurrentAttention>> {
    std::optional<float> temp;
    if (auto value = options.Float("softmax_temp")) temp = *value;
    return std::unique_ptr<RecurrentAttention>(
        std::make_unique<RecurrentFullAttention>(temp));
  };
  spec.recurrent_cross_factory = [](const AttentionOptions& options)
      -> absl::StatusOr<std::unique_ptr<RecurrentCrossAttention>> {
    std::optional<float> temp;
    if (auto value = options.Float("softmax_temp")) temp = *value;
    return std::unique_ptr<RecurrentCrossAttention>(
        std::make_unique<RecurrentCrossFullAttention>(temp));
  };
  return spec;
}

AttentionSpec LinearSpec() {
  AttentionSpec spec;
  spec.name = "linear";
  spec.description =
      "linear attention phi(Q)(phi(K)^T V), O(L + S) (Katharopoulos et al. 2020)";
  spec.options = {QueryDimensionsOption(), FeatureMapOption(), EpsSpec()};
  spec.factory = [](const AttentionOptions& options,
                    std::vector<std::unique_ptr<Attention>>)
      -> absl::StatusOr<std::unique_ptr<Attention>> {
    FTX_ASSIGN_OR_RETURN(std::unique_ptr<FeatureMap> feature_map, MakeFeatureMap(options));
    LinearAttentionOptions linear;
    linear.eps = EpsOption(options);
    return std::unique_ptr<Attention>(
        std::make_unique<LinearAttention>(std::move(feature_map), linear));
  };
  spec.recurrent_factory = RecurrentLinearFactory;
  spec.recurrent_cross_factory = [](const AttentionOptions& options)
      -> absl::StatusOr<std::unique_ptr<RecurrentCrossAttention>> {
    FTX_ASSIGN_OR_RETURN(std::unique_ptr<FeatureMap> feature_map, MakeFeatureMap(options));
    return std::unique_ptr<RecurrentCrossAttention>(
        std::make_unique<RecurrentCrossLinearAttention>(std::move(feature_map),
                                                        EpsOption(options)));
  };
  return spec;
}

AttentionSpec CausalLinearSpec() {
  AttentionSpec spec;
  spec.name = "causal-linear";
  spec.description =
      "causal linear attention with running sums, O(L) memory (Katharopoulos et al. "
      "2020, eq. 9)";
  spec.options = {QueryDimensionsOption(), FeatureMapOption(), EpsSpec()};
  spec.factory = [](const AttentionOptions& options,
                    std::vector<std::unique_ptr<Attention>>)
      -> absl::StatusOr<std::unique_ptr<Attention>> {
    FTX_ASSIGN_OR_RETURN(std::unique_ptr<FeatureMap> feature_map, MakeFeatureMap(options));
    return std::unique_ptr<Attention>(std::make_unique<CausalLinearAttention>(
        std::move(feature_map), EpsOption(options)));
  };
  spec.recurrent_factory = RecurrentLinearFactory;
  return spec;
}

}  // namespace

absl::Status RegisterBuiltinAttentions(AttentionRegistry& registry) {
  FTX_RETURN_IF_ERROR(registry.Register(FullSpec()));
  FTX_RETURN_IF_ERROR(registry.Register(LinearSpec()));
  FTX_RETURN_IF_ERROR(registry.Register(CausalLinearSpec()));
  FTX_RETURN_IF_ERROR(registry.Register(LinformerAttentionSpec()));
  return absl::OkStatus();
}

}  // namespace ftx
