// State-dict maps into the fast-transformers stacks (models/ft_transformers.h),
// for weights interop (models/state_dict_map.h):
//   - "fast-transformers" 0.4.0: TransformerEncoder / TransformerDecoder /
//     their recurrent twins built by the builders. ftx uses the same
//     state_dict names (fast-transformers' weight_mapper needs no rules for
//     its own models), so the map is the identity over the model's
//     parameters.
//   - "torch-nn": torch.nn.TransformerEncoder(TransformerEncoderLayer(d_model,
//     nhead, dim_feedforward, activation, batch_first=True, norm_first=False),
//     num_layers, norm=LayerNorm or None) of torch 2.2, the model
//     fast-transformers' PytorchMapper converts. Its post-norm layer is the
//     fast-transformers encoder layer with full attention and softmax
//     temperature 1/sqrt(d_model / nhead), so the map targets
//     FtTransformerEncoder with d_keys = d_values = d_model / n_heads:
//       layers.{i}.self_attn.in_proj_weight [3C, C], rows [0, C), [C, 2C),
//         [2C, 3C) -> layers.{i}.attention.{query,key,value}_projection.weight
//       layers.{i}.self_attn.in_proj_bias [3C] -> the three biases
//       layers.{i}.self_attn.out_proj.{weight,bias}
//         -> layers.{i}.attention.out_projection.{weight,bias}
//       layers.{i}.{linear1,linear2,norm1,norm2}.*, norm.* -> same names
// RegisterFastTransformersConverters registers both for `ftx convert`; their
// config JSON is a TransformerEncoderBuilder dictionary (fast-transformers
// keywords, models/configs/ft_encoder.json), with every registered attention
// available.
#ifndef FTX_MODELS_FT_STATE_DICT_H_
#define FTX_MODELS_FT_STATE_DICT_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "attention/attention.h"
#include "models/ft_transformers.h"
#include "models/state_dict_map.h"

namespace ftx {

// The identity map over `shapes` (ParamShapes of any fast-transformers
// stack), library "fast-transformers".
StateDictMap FastTransformersMap(const std::vector<ParamShape>& shapes);

// torch.nn.TransformerEncoder -> FtTransformerEncoder(config). InvalidArgument
// unless the config is one torch can express: n_heads * d_keys = n_heads *
// d_values = d_model, attention_type "full".
absl::StatusOr<StateDictMap> TorchNnEncoderMap(
    const FtTransformerConfig& config);

// The torch state_dict shapes of that encoder (in_proj_weight [3C, C], ...),
// for ExportStateDict.
absl::StatusOr<std::map<std::string, std::vector<int64_t>>>
TorchNnEncoderShapes(const FtTransformerConfig& config);

// Registers "fast-transformers" and "torch-nn"; AlreadyExists when either
// name is taken.
absl::Status RegisterFastTransformersConverters(
    StateDictConverterRegistry& registry);

}  // namespace ftx

#endif  // FTX_MODELS_FT_STATE_DICT_H_
