// State-dict map of linear-attention-transformer 0.19.1's
// LinearAttentionTransformerLM (models/state_dict_map.h). ftx's
// LinearAttentionTransformerLM (models/lat.h) names its parameters and
// buffers with LAT's own state_dict keys, so every rule is the identity, and
// the map is complete both ways (an export loads into LAT with
// load_state_dict(strict=True)):
//   - PKM query norms (BatchNorm1d): running_mean / running_var are float
//     buffers [2 H d] of the ParamStore; norm.fn.num_batches_tracked, torch's
//     int64 0-d step counter, is a float buffer [1] in ftx, mapped by an
//     int64 rule (read from any integer dtype, written as an I64 scalar);
//   - the rotary model's FixedPositionalEmbedding tables, which ftx
//     recomputes, are fixed tensors: pos_emb.emb [max_seq_len, emb_dim] and
//     layer_pos_emb.emb [max_seq_len, dim_head] = [sin(t inv_freq) |
//     cos(t inv_freq)] (FixedSinusoidTable), skipped on import and written
//     on export.
// Nothing is ignored.
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

// LAT's tensor shapes for ExportStateDict: ftx's, except {} (a 0-d tensor)
// for the num_batches_tracked counters.
absl::StatusOr<std::map<std::string, std::vector<int64_t>>> LatReferenceShapes(
    const LatConfig& config);

// Registers "linear-attention-transformer" for `ftx convert`; its JSON is a
// LatConfig (LatConfigFromJson). AlreadyExists when registered twice.
absl::Status RegisterLatConverter(StateDictConverterRegistry& registry);

}  // namespace ftx

#endif  // FTX_MODELS_LAT_STATE_DICT_H_
