#include "attention/builtin.h"

#include <memory>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "attention/aft.h"
#include "attention/causal_linear.h"
#include "attention/clustered.h"
#include "attention/conditional_full.h"
#include "attention/exact_topk.h"
#include "attention/favor.h"
#include "attention/feature_map.h"
#include "attention/full.h"
#include "attention/linear.h"
#include "attention/linformer.h"
#include "attention/local.h"
#include "attention/mixed_heads.h"
#include "attention/random_features.h"
#include "attention/recurrent.h"
#include "attention/recurrent_cross.h"
#include "attention/reformer.h"
#include "attention/talking_heads.h"
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
          "phi: elu+1, relu (or another activation), random_fourier, "
          "smoothed_random_fourier, favor, generalized_random"};
}

OptionSpec QueryDimensionsOption() {
  return {
      "query_dimensions", OptionType::kInt, std::nullopt,
      "E per head (accepted for fast-transformers compatibility; read from the "
      "inputs)"};
}

// fast-transformers' feature maps by name: an elementwise activation (elu+1 is
// the default) or one of the random-feature maps of
// feature_maps/fourier_features.py.
absl::StatusOr<std::unique_ptr<FeatureMap>> MakeFeatureMap(
    const AttentionOptions& options) {
  const std::string name = options.String("feature_map").value_or("elu+1");
  const std::optional<int64_t> n_dims = options.Int("n_dims");
  std::optional<float> temp;
  if (auto value = options.Float("softmax_temp"))
    temp = static_cast<float>(*value);
  const int64_t redraw = options.Int("redraw").value_or(1);
  if (redraw < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("redraw must be >= 1, got ", redraw));
  }
  const bool deterministic_eval =
      options.Bool("deterministic_eval").value_or(false);
  const uint64_t seed = static_cast<uint64_t>(options.Int("seed").value_or(0));
  const std::optional<bool> orthogonal = options.Bool("orthogonal");
  if (name == "random_fourier") {
    return std::unique_ptr<FeatureMap>(std::make_unique<RandomFourierFeatures>(
        RandomFourierFeaturesOptions{n_dims, temp, orthogonal.value_or(false),
                                     redraw, deterministic_eval, seed}));
  }
  if (name == "smoothed_random_fourier") {
    return std::unique_ptr<FeatureMap>(
        std::make_unique<SmoothedRandomFourierFeatures>(
            SmoothedRandomFourierFeaturesOptions{
                n_dims, temp, orthogonal.value_or(false),
                static_cast<float>(options.Float("smoothing").value_or(1.0)),
                redraw, deterministic_eval, seed}));
  }
  if (name == "favor") {
    return std::unique_ptr<FeatureMap>(std::make_unique<FavorFeatureMap>(
        FavorFeatureMapOptions{n_dims, temp, orthogonal.value_or(true),
                               options.Bool("stabilize").value_or(false),
                               redraw, deterministic_eval, seed}));
  }
  if (name == "generalized_random") {
    FTX_ASSIGN_OR_RETURN(
        const Activation kernel,
        ActivationFromName(options.String("kernel_fn").value_or("relu")));
    return std::unique_ptr<FeatureMap>(
        std::make_unique<GeneralizedRandomFeatures>(
            GeneralizedRandomFeaturesOptions{
                n_dims, temp.value_or(1.0f), orthogonal.value_or(true), kernel,
                redraw, deterministic_eval, seed}));
  }
  absl::StatusOr<Activation> activation = ActivationFromName(name);
  if (!activation.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown feature_map \"", name,
                     "\"; valid: random_fourier, smoothed_random_fourier, "
                     "favor, generalized_random, "
                     "or an activation (elu+1, relu, gelu, silu, ...)"));
  }
  return std::unique_ptr<FeatureMap>(
      std::make_unique<ActivationFeatureMap>(*activation));
}

// Options of the feature maps above, shared by "linear" and "causal-linear".
std::vector<OptionSpec> FeatureMapOptions() {
  return {
      FeatureMapOption(),
      {"n_dims", OptionType::kInt, std::nullopt,
       "random features: number of features (default E)"},
      {"softmax_temp", OptionType::kFloat, std::nullopt,
       "random features: temperature (default 1/sqrt(E); 1 for "
       "generalized_random)"},
      {"orthogonal", OptionType::kBool, std::nullopt,
       "random features: orthogonal omega (default false for random_fourier, "
       "true "
       "for favor and generalized_random)"},
      {"redraw", OptionType::kInt, OptionValue(int64_t{1}),
       "random features: redraw omega every this many forward calls"},
      {"deterministic_eval", OptionType::kBool, OptionValue(false),
       "random features: keep omega fixed in eval"},
      {"stabilize", OptionType::kBool, OptionValue(false),
       "favor: stabilised exponent"},
      {"smoothing", OptionType::kFloat, OptionValue(1.0),
       "smoothed_random_fourier: the constant feature"},
      {"kernel_fn", OptionType::kString, OptionValue(std::string("relu")),
       "generalized_random: kernel activation"},
      {"seed", OptionType::kInt, OptionValue(int64_t{0}), "random draws seed"}};
}

OptionSpec EpsSpec() {
  return {"eps", OptionType::kFloat, OptionValue(1e-6),
          "added to the normaliser phi(q) . sum phi(k)"};
}

float EpsOption(const AttentionOptions& options) {
  return static_cast<float>(options.Float("eps").value_or(1e-6));
}

// fast-transformers registers one recurrent class under "linear" and
// "causal-linear".
absl::StatusOr<std::unique_ptr<RecurrentAttention>> RecurrentLinearFactory(
    const AttentionOptions& options) {
  FTX_ASSIGN_OR_RETURN(std::unique_ptr<FeatureMap> feature_map,
                       MakeFeatureMap(options));
  return std::unique_ptr<RecurrentAttention>(
      std::make_unique<RecurrentLinearAttention>(std::move(feature_map),
                                                 EpsOption(options)));
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
    full.attention_dropout =
        static_cast<float>(options.Float("attention_dropout").value_or(0.1));
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
      "linear attention phi(Q)(phi(K)^T V), O(L + S) (Katharopoulos et al. "
      "2020)";
  spec.options = FeatureMapOptions();
  spec.options.push_back(QueryDimensionsOption());
  spec.options.push_back(EpsSpec());
  spec.factory = [](const AttentionOptions& options,
                    std::vector<std::unique_ptr<Attention>>)
      -> absl::StatusOr<std::unique_ptr<Attention>> {
    FTX_ASSIGN_OR_RETURN(std::unique_ptr<FeatureMap> feature_map,
                         MakeFeatureMap(options));
    LinearAttentionOptions linear;
    linear.eps = EpsOption(options);
    return std::unique_ptr<Attention>(
        std::make_unique<LinearAttention>(std::move(feature_map), linear));
  };
  spec.recurrent_factory = RecurrentLinearFactory;
  spec.recurrent_cross_factory = [](const AttentionOptions& options)
      -> absl::StatusOr<std::unique_ptr<RecurrentCrossAttention>> {
    FTX_ASSIGN_OR_RETURN(std::unique_ptr<FeatureMap> feature_map,
                         MakeFeatureMap(options));
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
      "causal linear attention with running sums, O(L) memory (Katharopoulos "
      "et al. "
      "2020, eq. 9)";
  spec.options = FeatureMapOptions();
  spec.options.push_back(QueryDimensionsOption());
  spec.options.push_back(EpsSpec());
  spec.factory = [](const AttentionOptions& options,
                    std::vector<std::unique_ptr<Attention>>)
      -> absl::StatusOr<std::unique_ptr<Attention>> {
    FTX_ASSIGN_OR_RETURN(std::unique_ptr<FeatureMap> feature_map,
                         MakeFeatureMap(options));
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
  for (AttentionSpec spec :
       {LinformerAttentionSpec(), FavorAttentionSpec(), LocalAttentionSpec(),
        LocalWindowedAttentionSpec(), MixedLocalLinearAttentionSpec(),
        ClusteredAttentionSpec(), ImprovedClusteredAttentionSpec(),
        CausalImprovedClusteredAttentionSpec(), ReformerAttentionSpec(),
        ExactTopKAttentionSpec(), TalkingHeadsAttentionSpec(),
        ConditionalFullAttentionSpec(), AftFullAttentionSpec(),
        AftSimpleAttentionSpec()}) {
    FTX_RETURN_IF_ERROR(registry.Register(std::move(spec)));
  }
  return absl::OkStatus();
}

}  // namespace ftx
