#include "models/performer_state_dict.h"

#include <memory>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"

namespace ftx {
namespace {

constexpr char kStackPrefix[] = "performer.";
constexpr char kStackNet[] = "performer.net.";
constexpr char kUpdaterInstance[] = "performer.proj_updater.instance.";
constexpr char kRedrawCounter[] = "proj_updater.calls_since_last_redraw";

// Adds the rules, fixed tensors and aliases of one PerformerLM whose names
// carry `prefix`.
void AddLanguageModel(const PerformerLM& model, const std::string& prefix,
                      StateDictMap& map) {
  const PerformerLMConfig& config = model.config();
  const PerformerConfig& stack = config.performer;
  for (const ParamShape& shape : model.ParamShapes()) {
    map.rules.push_back({.reference = shape.name,
                         .ftx = shape.name,
                         .int64 = absl::EndsWith(shape.name, kRedrawCounter)});
  }
  if (config.rotary_position_emb) {
    map.fixed.push_back(FixedSinusoidTable(prefix + "pos_emb.emb",
                                           config.max_seq_len, stack.dim));
    map.fixed.push_back(FixedSinusoidTable(prefix + "layer_pos_emb.emb",
                                           config.max_seq_len, stack.dim_head));
  }
  // Stack names relative to the stack ("net.layers.0.0...."); the updater's
  // "instance" is the same module list, so its keys repeat them.
  std::vector<std::string> stack_names;
  for (const ParamShape& shape : model.performer().ParamShapes()) {
    if (absl::StartsWith(shape.name, "net.")) stack_names.push_back(shape.name);
  }
  for (const std::string& name : model.performer().LocalRotaryNames()) {
    map.fixed.push_back(
        InverseFrequencies(prefix + kStackPrefix + name, stack.dim_head));
    stack_names.push_back(name);
  }
  const size_t net_length = std::string("net.").size();
  for (const std::string& name : stack_names) {
    map.aliases.push_back({prefix + kUpdaterInstance + name.substr(net_length),
                           prefix + kStackPrefix + name});
  }
}

std::vector<int64_t> Dims(const Shape& shape) {
  std::vector<int64_t> dims;
  for (int axis = 0; axis < shape.rank(); ++axis)
    dims.push_back(shape.dim(axis));
  return dims;
}

absl::StatusOr<PerformerLMConfig> ParseConfig(absl::string_view json) {
  FTX_ASSIGN_OR_RETURN(PerformerLMConfig config,
                       PerformerLMConfigFromJson(json));
  FTX_RETURN_IF_ERROR(ValidatePerformerLMConfig(config));
  return config;
}

}  // namespace

absl::StatusOr<StateDictMap> PerformerStateDictMap(
    const PerformerLMConfig& config) {
  FTX_ASSIGN_OR_RETURN(std::unique_ptr<PerformerLM> model,
                       PerformerLM::Create(config));
  StateDictMap map;
  map.library = kPerformerLibrary;
  AddLanguageModel(*model, "", map);
  return map;
}

absl::StatusOr<StateDictMap> PerformerEncDecStateDictMap(
    const PerformerEncDecConfig& config) {
  FTX_ASSIGN_OR_RETURN(std::unique_ptr<PerformerEncDec> model,
                       PerformerEncDec::Create(config));
  StateDictMap map;
  map.library = kPerformerLibrary;
  AddLanguageModel(model->enc(), model->enc().param_prefix(), map);
  AddLanguageModel(model->dec(), model->dec().param_prefix(), map);
  return map;
}

absl::StatusOr<std::map<std::string, std::vector<int64_t>>>
PerformerReferenceShapes(const PerformerLMConfig& config) {
  FTX_ASSIGN_OR_RETURN(std::unique_ptr<PerformerLM> model,
                       PerformerLM::Create(config));
  const bool rezero =
      config.performer.use_rezero && !config.performer.use_scalenorm;
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const ParamShape& shape : model->ParamShapes()) {
    const bool gain = absl::StartsWith(shape.name, kStackNet) &&
                      absl::EndsWith(shape.name, ".g");
    const bool scalar =
        (rezero && gain) || absl::EndsWith(shape.name, kRedrawCounter);
    shapes[shape.name] = scalar ? std::vector<int64_t>{} : Dims(shape.shape);
  }
  return shapes;
}

absl::Status RegisterPerformerConverter(StateDictConverterRegistry& registry) {
  StateDictConverter converter;
  converter.library = kPerformerLibrary;
  converter.description =
      "performer-pytorch 1.1.4 PerformerLM (config: models/performer.h "
      "PerformerLM JSON)";
  converter.param_shapes =
      [](absl::string_view json) -> absl::StatusOr<std::vector<ParamShape>> {
    FTX_ASSIGN_OR_RETURN(PerformerLMConfig config, ParseConfig(json));
    FTX_ASSIGN_OR_RETURN(std::unique_ptr<PerformerLM> model,
                         PerformerLM::Create(config));
    return model->ParamShapes();
  };
  converter.make_map =
      [](absl::string_view json) -> absl::StatusOr<StateDictMap> {
    FTX_ASSIGN_OR_RETURN(PerformerLMConfig config, ParseConfig(json));
    return PerformerStateDictMap(config);
  };
  converter.reference_shapes = [](absl::string_view json)
      -> absl::StatusOr<std::map<std::string, std::vector<int64_t>>> {
    FTX_ASSIGN_OR_RETURN(PerformerLMConfig config, ParseConfig(json));
    return PerformerReferenceShapes(config);
  };
  return registry.Register(std::move(converter));
}

}  // namespace ftx
