// State-dict map of linear-attention-transformer 0.19.1's
// LinearAttentionTransformerLM (models/state_dict_map.h). ftx's
// LinearAttentionTransformerLM (models/lat.h) names its parameters with LAT's
// own state_dict keys, so every rule is the identity; the rotary model's
// fixed sinusoid tables (buffers pos_emb.emb [max_seq_len, emb_dim] and
// layer_pos_emb.emb [max_seq_len, dim_head], which ftx recomputes) are
// ignored on import and not written on export, as are the PKM query norms'
// BatchNorm1d step counters (norm.fn.num_batches_tracked, int64, which ftx
// does not keep: torch uses it only when momentum is None, and PKM's is 0.1).
//
// Example:
//   FTX_ASSIGN_OR_RETURN(StateDictMap map, LatStateDictMap(config));
//   FTX_RETURN_IF_ERROR(ImportStateDict(file, map, store));
#ifndef FTX_MODELS_LAT_STATE_DICT_H_
#define FTX_MODELS_LAT_STATE_DICT_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "models/lat.h"
#include "models/state_dict_map.h"

namespace ftx {

inline constexpr char kLatLibrary[] = "linear-attention-transformer";

// The map for `config` (ValidateLatConfig's errors otherwise).
absl::StatusOr<StateDictMap> LatStateDictMap(const LatConfig& config);

// LAT's tensor shapes (equal to ftx's) for ExportStateDict.
absl::StatusOr<std::map<std::string, std::vector<int64_t>>> LatReferenceShapes(
    const LatConfig& config);

// Registers "linear-attention-transformer" for `ftx convert`; its JSON is a
// LatConfig (LatConfigFromJson). AlreadyExists when registered twice.
absl::Status RegisterLatConverter(StateDictConverterRegistry& registry);

}  // namespace ftx

#endif  // FTX_MODELS_LAT_STATE_DICT_H_
