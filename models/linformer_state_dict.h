// State-dict maps of linformer-pytorch 0.19.3's Linformer, LinformerLM and
// LinformerEncDec (models/state_dict_map.h). ftx's models
// (models/linformer.h) name their parameters with linformer-pytorch's own
// state_dict keys, so every rule is the identity. Also:
//   - aliases: the repeated keys of shared E / F projections (headwise, kv,
//     layerwise sharing register one module under every head, and layerwise
//     under every layer): torch's state_dict lists each key, ftx keeps one
//     tensor under the first key (Linformer::SharedProjectionAliases); import
//     checks the copies are equal, export writes every key;
//   - a fixed tensor "pos_emb.inv_freq" [emb_dim / 2] (base 1e5; ftx
//     recomputes the sinusoid).
// method no_params matrices are not in the state_dict at all (plain tensor
// attributes); set them through Linformer::FixedProjections. An exported file
// loads into PyTorch with strict=True.
//
// Example:
//   FTX_ASSIGN_OR_RETURN(StateDictMap map, LinformerLMStateDictMap(config));
//   FTX_RETURN_IF_ERROR(ImportStateDict(file, map, store));
#ifndef FTX_MODELS_LINFORMER_STATE_DICT_H_
#define FTX_MODELS_LINFORMER_STATE_DICT_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "models/linformer.h"
#include "models/state_dict_map.h"

namespace ftx {

inline constexpr char kLinformerLibrary[] = "linformer-pytorch";

// The map of a bare Linformer stack (keys "seq.*"); config errors otherwise.
absl::StatusOr<StateDictMap> LinformerStateDictMap(
    const LinformerConfig& config);

// The map of a LinformerLM.
absl::StatusOr<StateDictMap> LinformerLMStateDictMap(
    const LinformerLMConfig& config);

// The map of a LinformerEncDec ("encoder.*", "decoder.*").
absl::StatusOr<StateDictMap> LinformerEncDecStateDictMap(
    const LinformerEncDecConfig& config);

// linformer-pytorch's tensor shapes of a LinformerLM for ExportStateDict
// (the ftx shapes: Linear [out, in], Conv1d [d, d, n / k]).
absl::StatusOr<std::map<std::string, std::vector<int64_t>>>
LinformerLMReferenceShapes(const LinformerLMConfig& config);

// Registers "linformer-pytorch" for `ftx convert`; its JSON is a LinformerLM
// config (LinformerLMConfigFromJson). AlreadyExists when registered twice.
absl::Status RegisterLinformerConverter(StateDictConverterRegistry& registry);

}  // namespace ftx

#endif  // FTX_MODELS_LINFORMER_STATE_DICT_H_
