#include "models/lat_state_dict.h"

#include <memory>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "kernels/base/status_macros.h"

namespace ftx {
namespace {

absl::StatusOr<std::vector<ParamShape>> LatParamShapes(
    const LatConfig& config) {
  FTX_ASSIGN_OR_RETURN(std::unique_ptr<LinearAttentionTransformerLM> model,
                       LinearAttentionTransformerLM::Create(config));
  return model->ParamShapes();
}

absl::StatusOr<LatConfig> ParseConfig(absl::string_view json) {
  FTX_ASSIGN_OR_RETURN(LatConfig config, LatConfigFromJson(json));
  FTX_RETURN_IF_ERROR(ValidateLatConfig(config));
  return config;
}

// BatchNorm1d's num_batches_tracked of a PKM query norm.
bool IsStepCounter(absl::string_view name) {
  return absl::EndsWith(name, ".num_batches_tracked");
}

}  // namespace

absl::StatusOr<StateDictMap> LatStateDictMap(const LatConfig& config) {
  FTX_ASSIGN_OR_RETURN(std::vector<ParamShape> shapes, LatParamShapes(config));
  StateDictMap map;
  map.library = kLatLibrary;
  for (const ParamShape& shape : shapes) {
    map.rules.push_back({.reference = shape.name,
                         .ftx = shape.name,
                         .int64 = IsStepCounter(shape.name)});
  }
  if (config.use_rotary_emb) {
    map.fixed.push_back(
        FixedSinusoidTable("pos_emb.emb", config.max_seq_len, config.EmbDim()));
    map.fixed.push_back(FixedSinusoidTable(
        "layer_pos_emb.emb", config.max_seq_len, config.dim_head));
  }
  return map;
}

absl::StatusOr<std::map<std::string, std::vector<int64_t>>> LatReferenceShapes(
    const LatConfig& config) {
  FTX_ASSIGN_OR_RETURN(std::vector<ParamShape> shapes, LatParamShapes(config));
  std::map<std::string, std::vector<int64_t>> reference;
  for (const ParamShape& shape : shapes) {
    std::vector<int64_t>& dims = reference[shape.name];
    // torch's step counter is a 0-d tensor, ftx's a [1] buffer.
    if (IsStepCounter(shape.name)) continue;
    for (int axis = 0; axis < shape.shape.rank(); ++axis) {
      dims.push_back(shape.shape.dim(axis));
    }
  }
  return reference;
}

absl::Status RegisterLatConverter(StateDictConverterRegistry& registry) {
  StateDictConverter converter;
  converter.library = kLatLibrary;
  converter.description =
      "linear-attention-transformer 0.19.1 LinearAttentionTransformerLM "
      "(config: models/lat.h LatConfig JSON)";
  converter.param_shapes =
      [](absl::string_view json) -> absl::StatusOr<std::vector<ParamShape>> {
    FTX_ASSIGN_OR_RETURN(LatConfig config, ParseConfig(json));
    return LatParamShapes(config);
  };
  converter.make_map =
      [](absl::string_view json) -> absl::StatusOr<StateDictMap> {
    FTX_ASSIGN_OR_RETURN(LatConfig config, ParseConfig(json));
    return LatStateDictMap(config);
  };
  converter.reference_shapes = [](absl::string_view json)
      -> absl::StatusOr<std::map<std::string, std::vector<int64_t>>> {
    FTX_ASSIGN_OR_RETURN(LatConfig config, ParseConfig(json));
    return LatReferenceShapes(config);
  };
  return registry.Register(std::move(converter));
}

}  // namespace ftx
