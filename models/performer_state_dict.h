// State-dict maps of performer-pytorch 1.1.4's PerformerLM and PerformerEncDec
// (models/state_dict_map.h). ftx's models (models/performer.h) name their
// parameters with performer's own state_dict keys, so every rule is the
// identity (ReZero's g is a scalar () there and [1] here; the rule copies by
// element count). Ignored on import and not written on export:
//   - the FAVOR projections "...fast_attention.projection_matrix" (buffers;
//     load them with PerformerLM::LoadProjections to reproduce a model's
//     random features),
//   - the local heads' "...local_attn.rel_pos.inv_freq" and, with rotary
//     positions, "pos_emb.emb" and "layer_pos_emb.emb" (recomputed tables),
//   - "performer.proj_updater.calls_since_last_redraw" (a counter) and every
//     "performer.proj_updater.instance.*" key: ProjectionUpdater keeps the
//     layer list as a submodule, so the state_dict repeats every tensor of
//     "performer.net.*" under that name.
// An exported file therefore loads into PyTorch with strict=False.
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
