#include "models/linformer_state_dict.h"

#include <utility>

#include "kernels/base/status_macros.h"

namespace ftx {
namespace {

StateDictMap IdentityMap(
    const std::vector<ParamShape>& shapes,
    const std::vector<std::pair<std::string, std::string>>& aliases,
    std::vector<StateDictFixedTensor> fixed) {
  StateDictMap map;
  map.library = kLinformerLibrary;
  for (const ParamShape& shape : shapes) {
    map.rules.push_back({shape.name, shape.name});
  }
  for (const auto& [alias, parameter] : aliases) {
    map.aliases.push_back({alias, parameter});
  }
  map.fixed = std::move(fixed);
  return map;
}

// linformer-pytorch's PositionalEmbedding(emb_dim) table (base 1e5).
StateDictFixedTensor PositionTable(const std::string& prefix,
                                   const LinformerLMConfig& config) {
  const int64_t emb_dim =
      config.emb_dim != 0 ? config.emb_dim : config.linformer.channels;
  return InverseFrequencies(prefix + "pos_emb.inv_freq", emb_dim, 1e5);
}

}  // namespace

absl::StatusOr<StateDictMap> LinformerStateDictMap(
    const LinformerConfig& config) {
  FTX_ASSIGN_OR_RETURN(auto model, Linformer::Create(config));
  return IdentityMap(model->ParamShapes(), model->SharedProjectionAliases(),
                     {});
}

absl::StatusOr<StateDictMap> LinformerLMStateDictMap(
    const LinformerLMConfig& config) {
  FTX_ASSIGN_OR_RETURN(auto model, LinformerLM::Create(config));
  return IdentityMap(model->ParamShapes(), model->SharedProjectionAliases(),
                     {PositionTable("", config)});
}

absl::StatusOr<StateDictMap> LinformerEncDecStateDictMap(
    const LinformerEncDecConfig& config) {
  FTX_ASSIGN_OR_RETURN(auto model, LinformerEncDec::Create(config));
  return IdentityMap(model->ParamShapes(), model->SharedProjectionAliases(),
                     {PositionTable("encoder.", config.encoder),
                      PositionTable("decoder.", config.decoder)});
}

absl::StatusOr<std::map<std::string, std::vector<int64_t>>>
LinformerLMReferenceShapes(const LinformerLMConfig& config) {
  FTX_ASSIGN_OR_RETURN(auto model, LinformerLM::Create(config));
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const ParamShape& shape : model->ParamShapes()) {
    std::vector<int64_t>& dims = shapes[shape.name];
    for (int axis = 0; axis < shape.shape.rank(); ++axis) {
      dims.push_back(shape.shape.dim(axis));
    }
  }
  return shapes;
}

absl::Status RegisterLinformerConverter(StateDictConverterRegistry& registry) {
  StateDictConverter converter;
  converter.library = kLinformerLibrary;
  converter.description =
      "linformer-pytorch 0.19.3 LinformerLM (config: "
      "models/configs/linformer_lm.json)";
  converter.param_shapes =
      [](absl::string_view json) -> absl::StatusOr<std::vector<ParamShape>> {
    FTX_ASSIGN_OR_RETURN(LinformerLMConfig config,
                         LinformerLMConfigFromJson(json));
    FTX_ASSIGN_OR_RETURN(auto model, LinformerLM::Create(config));
    return model->ParamShapes();
  };
  converter.make_map =
      [](absl::string_view json) -> absl::StatusOr<StateDictMap> {
    FTX_ASSIGN_OR_RETURN(LinformerLMConfig config,
                         LinformerLMConfigFromJson(json));
    return LinformerLMStateDictMap(config);
  };
  converter.reference_shapes = [](absl::string_view json)
      -> absl::StatusOr<std::map<std::string, std::vector<int64_t>>> {
    FTX_ASSIGN_OR_RETURN(LinformerLMConfig config,
                         LinformerLMConfigFromJson(json));
    return LinformerLMReferenceShapes(config);
  };
  return registry.Register(std::move(converter));
}

}  // namespace ftx
