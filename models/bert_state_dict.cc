#include "models/bert_state_dict.h"

#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"

namespace ftx {
namespace {

absl::StatusOr<std::vector<ParamShape>> BertParamShapes(
    const BertConfig& config) {
  FTX_ASSIGN_OR_RETURN(std::unique_ptr<BertModel> model,
                       BertModel::Create(config));
  return model->ParamShapes();
}

}  // namespace

absl::StatusOr<StateDictMap> BertStateDictMap(const BertConfig& config) {
  FTX_RETURN_IF_ERROR(ValidateBertConfig(config));
  StateDictMap map;
  map.library = kBertLibrary;
  for (const char* table : {"word", "position", "token_type"}) {
    const std::string name =
        absl::StrCat("embeddings.", table, "_embeddings.weight");
    map.rules.push_back({name, name});
  }
  for (const char* tensor : {"weight", "bias"}) {
    const std::string name = absl::StrCat("embeddings.LayerNorm.", tensor);
    map.rules.push_back({name, name});
  }
  for (int64_t layer = 0; layer < config.num_hidden_layers; ++layer) {
    const std::string hf = absl::StrCat("encoder.layer.", layer, ".");
    const std::string ftx = absl::StrCat("layers.", layer, ".");
    const std::vector<std::pair<std::string, std::string>> modules = {
        {"attention.self.query.", "attention.query_projection."},
        {"attention.self.key.", "attention.key_projection."},
        {"attention.self.value.", "attention.value_projection."},
        {"attention.output.dense.", "attention.out_projection."},
        {"attention.output.LayerNorm.", "norm1."},
        {"intermediate.dense.", "linear1."},
        {"output.dense.", "linear2."},
        {"output.LayerNorm.", "norm2."}};
    for (const auto& [hf_module, ftx_module] : modules) {
      for (const char* tensor : {"weight", "bias"}) {
        map.rules.push_back({absl::StrCat(hf, hf_module, tensor),
                             absl::StrCat(ftx, ftx_module, tensor)});
      }
    }
  }
  if (config.add_pooling_layer) {
    map.rules.push_back({"pooler.dense.weight", "pooler.dense.weight"});
    map.rules.push_back({"pooler.dense.bias", "pooler.dense.bias"});
  }
  map.ignored.push_back("embeddings.position_ids");
  return map;
}

absl::StatusOr<std::map<std::string, std::vector<int64_t>>> BertReferenceShapes(
    const BertConfig& config) {
  FTX_ASSIGN_OR_RETURN(StateDictMap map, BertStateDictMap(config));
  FTX_ASSIGN_OR_RETURN(std::vector<ParamShape> shapes, BertParamShapes(config));
  std::map<std::string, std::vector<int64_t>> ftx_shapes;
  for (const ParamShape& shape : shapes) {
    std::vector<int64_t>& dims = ftx_shapes[shape.name];
    for (int64_t d = 0; d < shape.shape.rank(); ++d) {
      dims.push_back(shape.shape.dim(d));
    }
  }
  std::map<std::string, std::vector<int64_t>> reference;
  for (const StateDictRule& rule : map.rules) {
    reference[rule.reference] = ftx_shapes.at(rule.ftx);
  }
  return reference;
}

absl::Status RegisterBertConverter(StateDictConverterRegistry& registry) {
  StateDictConverter converter;
  converter.library = kBertLibrary;
  converter.description =
      "Hugging Face transformers BertModel into ftx's BertModel (config: the "
      "HF config.json)";
  converter.param_shapes =
      [](absl::string_view json) -> absl::StatusOr<std::vector<ParamShape>> {
    FTX_ASSIGN_OR_RETURN(BertConfig config, BertConfigFromJson(json));
    return BertParamShapes(config);
  };
  converter.make_map =
      [](absl::string_view json) -> absl::StatusOr<StateDictMap> {
    FTX_ASSIGN_OR_RETURN(BertConfig config, BertConfigFromJson(json));
    return BertStateDictMap(config);
  };
  converter.reference_shapes = [](absl::string_view json)
      -> absl::StatusOr<std::map<std::string, std::vector<int64_t>>> {
    FTX_ASSIGN_OR_RETURN(BertConfig config, BertConfigFromJson(json));
    return BertReferenceShapes(config);
  };
  return registry.Register(std::move(converter));
}

}  // namespace ftx
