#include "models/ft_state_dict.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "attention/builtin.h"
#include "kernels/base/status_macros.h"
#include "models/ft_builders.h"

namespace ftx {
namespace {

absl::Status CheckTorchExpressible(const FtTransformerConfig& c) {
  if (c.attention_type != "full") {
    return absl::InvalidArgumentError(absl::StrCat(
        "torch-nn: torch.nn.TransformerEncoder has softmax (\"full\") "
        "attention only, got attention_type \"",
        c.attention_type, "\""));
  }
  if (c.n_heads * c.d_keys != c.d_model ||
      c.n_heads * c.d_values != c.d_model) {
    return absl::InvalidArgumentError(absl::StrCat(
        "torch-nn: torch.nn.MultiheadAttention needs n_heads * "
        "query_dimensions = n_heads * value_dimensions = d_model, got n_heads ",
        c.n_heads, ", query_dimensions ", c.d_keys, ", value_dimensions ",
        c.d_values, ", d_model ", c.d_model));
  }
  return absl::OkStatus();
}

// Every built-in mechanism, registered once (never destroyed).
const AttentionRegistry& BuiltinRegistry() {
  static const AttentionRegistry* const registry = [] {
    auto* built = new AttentionRegistry;
    RegisterBuiltinAttentions(*built).IgnoreError();
    return built;
  }();
  return *registry;
}

// The encoder a converter config describes.
absl::StatusOr<FtTransformerConfig> EncoderConfig(absl::string_view json) {
  TransformerEncoderBuilder builder(BuiltinRegistry());
  FTX_RETURN_IF_ERROR(builder.FromDictionary(json));
  // Building validates the mechanism and its options.
  FTX_RETURN_IF_ERROR(builder.Get().status());
  return builder.Config();
}

absl::StatusOr<std::vector<ParamShape>> EncoderShapes(absl::string_view json) {
  TransformerEncoderBuilder builder(BuiltinRegistry());
  FTX_RETURN_IF_ERROR(builder.FromDictionary(json));
  FTX_ASSIGN_OR_RETURN(std::unique_ptr<FtTransformerEncoder> encoder,
                       builder.Get());
  return encoder->ParamShapes();
}

}  // namespace

StateDictMap FastTransformersMap(const std::vector<ParamShape>& shapes) {
  StateDictMap map;
  map.library = "fast-transformers";
  for (const ParamShape& shape : shapes) {
    map.rules.push_back({shape.name, shape.name});
  }
  return map;
}

absl::StatusOr<StateDictMap> TorchNnEncoderMap(
    const FtTransformerConfig& config) {
  FTX_RETURN_IF_ERROR(ValidateFtTransformerConfig(config, /*decoder=*/false));
  FTX_RETURN_IF_ERROR(CheckTorchExpressible(config));
  const int64_t C = config.d_model;
  StateDictMap map;
  map.library = "torch-nn";
  const char* projections[] = {"query", "key", "value"};
  for (int64_t layer = 0; layer < config.n_layers; ++layer) {
    const std::string torch = absl::StrCat("layers.", layer, ".");
    const std::string attention = torch + "attention.";
    for (int64_t k = 0; k < 3; ++k) {
      const std::string ftx =
          absl::StrCat(attention, projections[k], "_projection.");
      map.rules.push_back(
          {torch + "self_attn.in_proj_weight", ftx + "weight", k * C});
      map.rules.push_back(
          {torch + "self_attn.in_proj_bias", ftx + "bias", k * C});
    }
    map.rules.push_back({torch + "self_attn.out_proj.weight",
                         attention + "out_projection.weight"});
    map.rules.push_back(
        {torch + "self_attn.out_proj.bias", attention + "out_projection.bias"});
    for (const char* module : {"linear1", "linear2", "norm1", "norm2"}) {
      for (const char* tensor : {"weight", "bias"}) {
        const std::string name = absl::StrCat(torch, module, ".", tensor);
        map.rules.push_back({name, name});
      }
    }
  }
  if (config.final_normalization) {
    map.rules.push_back({"norm.weight", "norm.weight"});
    map.rules.push_back({"norm.bias", "norm.bias"});
  }
  return map;
}

absl::StatusOr<std::map<std::string, std::vector<int64_t>>>
TorchNnEncoderShapes(const FtTransformerConfig& config) {
  FTX_RETURN_IF_ERROR(ValidateFtTransformerConfig(config, /*decoder=*/false));
  FTX_RETURN_IF_ERROR(CheckTorchExpressible(config));
  const int64_t C = config.d_model, F = config.d_ff;
  std::map<std::string, std::vector<int64_t>> shapes;
  for (int64_t layer = 0; layer < config.n_layers; ++layer) {
    const std::string p = absl::StrCat("layers.", layer, ".");
    shapes[p + "self_attn.in_proj_weight"] = {3 * C, C};
    shapes[p + "self_attn.in_proj_bias"] = {3 * C};
    shapes[p + "self_attn.out_proj.weight"] = {C, C};
    shapes[p + "self_attn.out_proj.bias"] = {C};
    shapes[p + "linear1.weight"] = {F, C};
    shapes[p + "linear1.bias"] = {F};
    shapes[p + "linear2.weight"] = {C, F};
    shapes[p + "linear2.bias"] = {C};
    for (const char* norm : {"norm1.", "norm2."}) {
      shapes[p + norm + "weight"] = {C};
      shapes[p + norm + "bias"] = {C};
    }
  }
  if (config.final_normalization) {
    shapes["norm.weight"] = {C};
    shapes["norm.bias"] = {C};
  }
  return shapes;
}

absl::Status RegisterFastTransformersConverters(
    StateDictConverterRegistry& registry) {
  StateDictConverter fast_transformers;
  fast_transformers.library = "fast-transformers";
  fast_transformers.description =
      "fast-transformers 0.4.0 TransformerEncoder (config: a "
      "TransformerEncoderBuilder dictionary)";
  fast_transformers.param_shapes = EncoderShapes;
  fast_transformers.make_map =
      [](absl::string_view json) -> absl::StatusOr<StateDictMap> {
    FTX_ASSIGN_OR_RETURN(std::vector<ParamShape> shapes, EncoderShapes(json));
    return FastTransformersMap(shapes);
  };
  fast_transformers.reference_shapes = [](absl::string_view json)
      -> absl::StatusOr<std::map<std::string, std::vector<int64_t>>> {
    FTX_ASSIGN_OR_RETURN(std::vector<ParamShape> shapes, EncoderShapes(json));
    std::map<std::string, std::vector<int64_t>> reference;
    for (const ParamShape& shape : shapes) {
      std::vector<int64_t>& dims = reference[shape.name];
      for (int64_t d = 0; d < shape.shape.rank(); ++d) {
        dims.push_back(shape.shape.dim(d));
      }
    }
    return reference;
  };
  FTX_RETURN_IF_ERROR(registry.Register(std::move(fast_transformers)));

  StateDictConverter torch_nn;
  torch_nn.library = "torch-nn";
  torch_nn.description =
      "torch.nn.TransformerEncoder (batch_first, post-norm) into the "
      "fast-transformers encoder (config: a TransformerEncoderBuilder "
      "dictionary with full attention)";
  torch_nn.param_shapes = EncoderShapes;
  torch_nn.make_map =
      [](absl::string_view json) -> absl::StatusOr<StateDictMap> {
    FTX_ASSIGN_OR_RETURN(FtTransformerConfig config, EncoderConfig(json));
    return TorchNnEncoderMap(config);
  };
  torch_nn.reference_shapes = [](absl::string_view json)
      -> absl::StatusOr<std::map<std::string, std::vector<int64_t>>> {
    FTX_ASSIGN_OR_RETURN(FtTransformerConfig config, EncoderConfig(json));
    return TorchNnEncoderShapes(config);
  };
  return registry.Register(std::move(torch_nn));
}

}  // namespace ftx
