// State-dict maps of performer-pytorch 1.1.4's PerformerLM and PerformerEncDec
// (models/state_dict_map.h). ftx's models (models/performer.h) name their
// parameters with performer's own state_dict keys, so every rule is the
// identity (ReZero's g is a scalar () there and [1] here; the rule copies by
// element count), the FAVOR projections included (ParamStore buffers).
// Fixed tensors (skipped on import, written on export): with rotary positions
// "pos_emb.emb" [max_seq_len, dim] and "layer_pos_emb.emb" [max_seq_len,
// dim_head] and the local heads' "...local_attn.rel_pos.inv_freq". The
// redraw counter "performer.proj_updater.calls_since_last_redraw" (int64 ())
// maps to the stack's float buffer [1].
// Aliases: ProjectionUpdater keeps the layer list as a submodule, so the
// state_dict repeats every tensor of "performer.net.*" under
// "performer.proj_updater.instance.*". An exported file loads into PyTorch
// with strict=True.
//
// Example:
//   FTX_ASSIGN_OR_RETURN(StateDictMap map, PerformerStateDictMap(config));
//   FTX_RETURN_IF_ERROR(ImportStateDict(file, map, store));
#ifndef FTX_MODELS_PERFORMER_STATE_DICT_H_
#define FTX_MODELS_PERFORMER_STATE_DICT_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "models/performer.h"
#include "models/state_dict_map.h"

namespace ftx {

inline constexpr char kPerformerLibrary[] = "performer-pytorch";

// The map of a PerformerLM (ValidatePerformerLMConfig's errors otherwise).
absl::StatusOr<StateDictMap> PerformerStateDictMap(
    const PerformerLMConfig& config);

// The map of a PerformerEncDec ("enc.*", "dec.net.*").
absl::StatusOr<StateDictMap> PerformerEncDecStateDictMap(
    const PerformerEncDecConfig& config);

// performer's tensor shapes for ExportStateDict (ReZero gains are scalars).
absl::StatusOr<std::map<std::string, std::vector<int64_t>>>
PerformerReferenceShapes(const PerformerLMConfig& config);

// Registers "performer-pytorch" for `ftx convert`; its JSON is a PerformerLM
// config (PerformerLMConfigFromJson). AlreadyExists when registered twice.
absl::Status RegisterPerformerConverter(StateDictConverterRegistry& registry);

}  // namespace ftx

#endif  // FTX_MODELS_PERFORMER_STATE_DICT_H_
