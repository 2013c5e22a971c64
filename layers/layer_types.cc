#include "layers/layer_types.h"

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace ftx {
namespace {

constexpr char kOp[] = "BuildLayerPlan";

std::vector<LayerType> Repeat(const std::vector<LayerType>& block,
                              int64_t times) {
  std::vector<LayerType> out;
  for (int64_t i = 0; i < times; ++i) {
    out.insert(out.end(), block.begin(), block.end());
  }
  return out;
}

absl::StatusOr<std::vector<LayerType>> ParLayers(
    int64_t depth, int64_t par_ratio, const std::vector<LayerType>& block) {
  const int64_t par_depth = depth * static_cast<int64_t>(block.size());
  if (par_ratio <= 1 || par_ratio > par_depth) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": par_ratio must be in (1, depth * block size = ", par_depth,
        "], got ", par_ratio));
  }
  std::vector<LayerType> attention_block;
  for (LayerType type : block) {
    if (type != LayerType::kFeedForward) attention_block.push_back(type);
  }
  const int64_t par_attn = par_depth / par_ratio;
  const int64_t depth_cut = par_depth * 2 / 3;
  const int64_t par_width = (depth_cut + depth_cut / par_attn) / par_attn;
  if (static_cast<int64_t>(attention_block.size()) > par_width) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": the block '", LayerTypesToString(attention_block),
                     "' is longer than the PAR width ", par_width,
                     " for par_ratio ", par_ratio));
  }
  std::vector<LayerType> par_block = attention_block;
  par_block.resize(par_width, LayerType::kFeedForward);
  std::vector<LayerType> types = Repeat(par_block, par_attn);
  types.resize(std::max<int64_t>(par_depth, types.size()),
               LayerType::kFeedForward);
  return types;
}

}  // namespace

absl::StatusOr<LayerPlan> BuildLayerPlan(const LayerTypesConfig& config) {
  if (config.only_cross && !config.cross_attend) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": only_cross needs cross_attend"));
  }
  std::vector<LayerType> block;
  if (config.macaron) block.push_back(LayerType::kFeedForward);
  if (!config.only_cross) block.push_back(LayerType::kAttention);
  if (config.cross_attend) block.push_back(LayerType::kCrossAttention);
  block.push_back(LayerType::kFeedForward);

  LayerPlan plan;
  plan.feed_forward_scale = config.macaron ? 0.5f : 1.0f;
  if (config.custom_layers.has_value()) {
    if (config.custom_layers->empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(kOp, ": custom_layers is empty"));
    }
    plan.types = *config.custom_layers;
    return plan;
  }
  if (config.depth < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": depth must be >= 1, got ", config.depth));
  }
  if (config.par_ratio.has_value()) {
    auto types = ParLayers(config.depth, *config.par_ratio, block);
    if (!types.ok()) return types.status();
    plan.types = *std::move(types);
  } else if (config.sandwich_coef.has_value()) {
    const int64_t s = *config.sandwich_coef;
    if (s < 1 || s > config.depth) {
      return absl::InvalidArgumentError(absl::StrCat(
          kOp, ": sandwich_coef must be in [1, depth = ", config.depth,
          "], got ", s));
    }
    plan.types.assign(s, LayerType::kAttention);
    const std::vector<LayerType> middle = Repeat(block, config.depth - s);
    plan.types.insert(plan.types.end(), middle.begin(), middle.end());
    plan.types.insert(plan.types.end(), s, LayerType::kFeedForward);
  } else {
    plan.types = Repeat(block, config.depth);
  }
  return plan;
}

absl::StatusOr<std::vector<LayerType>> ParseLayerTypes(absl::string_view text) {
  if (text.empty()) {
    return absl::InvalidArgumentError("ParseLayerTypes: empty layer sequence");
  }
  std::vector<LayerType> types;
  for (char c : text) {
    switch (c) {
      case 'a':
      case 'c':
      case 'f':
        types.push_back(static_cast<LayerType>(c));
        break;
      default:
        return absl::InvalidArgumentError(absl::StrCat(
            "ParseLayerTypes: invalid layer type '", absl::string_view(&c, 1),
            "' in \"", text, "\" (expected 'a', 'c' or 'f')"));
    }
  }
  return types;
}

std::string LayerTypesToString(const std::vector<LayerType>& types) {
  std::string text;
  for (LayerType type : types) text.push_back(static_cast<char>(type));
  return text;
}

int64_t CountLayers(const std::vector<LayerType>& types, LayerType type) {
  return std::count(types.begin(), types.end(), type);
}

}  // namespace ftx
