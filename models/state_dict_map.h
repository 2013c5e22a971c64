// State-dict maps: how the `state_dict` of a model of a reference PyTorch
// library (x-transformers, performer-pytorch, linear-attention-transformer,
// linformer-pytorch, fast-transformers, torch.nn, Hugging Face BERT) relates to
// the ParamStore of the matching ftx model, so that weights move both ways
// through safetensors (DESIGN.md section 3, issue "weights interop").
//
// A map is a list of rules. Each rule ties one reference tensor to one ftx
// parameter; the two hold the same elements in the same row-major order, so a
// rule is a copy, optionally of a block of rows of the reference tensor:
//   - whole tensor: element counts must match (ranks may differ, e.g. a
//     talking-heads Conv2d weight [H, H, 1, 1] and an ftx [H, H] matrix);
//   - row block (row_offset >= 0): the reference tensor seen as a matrix
//     [shape[0], rest]; the ftx parameter takes rows [row_offset, row_offset +
//     rows) where rows = ftx elements / rest (torch.nn.MultiheadAttention's
//     packed in_proj_weight [3C, C] is three rules with offsets 0, C, 2C).
// Reference tensors that carry no learned state ftx needs (counters such as
// performer's calls_since_last_redraw, fixed buffers ftx recomputes) are listed
// in `ignored` and skipped on import; on export they are not written.
//
// Import is strict like load_state_dict(strict=True): every ftx parameter the
// map names must be filled, every tensor of the file must be used by a rule or
// ignored, shapes must agree; all of it is checked before the store is touched.
// Export writes every reference tensor a rule names (row blocks are packed back
// into one tensor), atomically.
//
// Example (x-transformers TransformerWrapper -> ftx):
//   FTX_ASSIGN_OR_RETURN(StateDictMap map, XTransformersMap(config));
//   FTX_ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::Open(path));
//   FTX_RETURN_IF_ERROR(ImportStateDict(file, map, store));
//   FTX_RETURN_IF_ERROR(ExportStateDict(store, map, "back.safetensors"));
#ifndef FTX_MODELS_STATE_DICT_MAP_H_
#define FTX_MODELS_STATE_DICT_MAP_H_

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "models/param_store.h"
#include "models/safetensors.h"

namespace ftx {

struct StateDictRule {
  std::string reference;  // state_dict key, e.g. "token_emb.weight"
  std::string ftx;        // ParamStore name
  // -1: the whole reference tensor; otherwise the first row of the block.
  int64_t row_offset = -1;
};

struct StateDictMap {
  std::string library;  // "x-transformers", "performer-pytorch", ...
  std::vector<StateDictRule> rules;
  std::vector<std::string> ignored;  // reference keys skipped on import
};

// Checks the map against the store: unique ftx names that exist in the store,
// row blocks of one reference name that do not overlap, no reference name both
// used and ignored. InvalidArgument naming the first problem.
absl::Status ValidateStateDictMap(const StateDictMap& map, ParamStore& store);

// Copies the file's tensors into the store through the map (see the top of
// this file). Float dtypes only (F32, F16, BF16, F64). On error the store is
// unchanged and the message names the offending tensor(s) and the library.
absl::Status ImportStateDict(const SafetensorsFile& file,
                             const StateDictMap& map, ParamStore& store);

// Writes the reference tensors the map names, with the reference shapes given
// in `reference_shapes` (needed to pack row blocks and restore ranks, e.g.
// [H, H, 1, 1]); a reference name absent from reference_shapes is written
// with its ftx shape (whole-tensor rules only). Atomic (temp file + rename).
absl::Status ExportStateDict(
    ParamStore& store, const StateDictMap& map,
    const std::map<std::string, std::vector<int64_t>>& reference_shapes,
    const std::string& path, const SafetensorsWriteOptions& options = {});

// A converter registered by library name for `ftx convert`: builds the map
// (and the reference shapes for export) and the ftx parameter shapes from a
// model config given as JSON text (the ftx config of that model family).
struct StateDictConverter {
  std::string library;
  std::string description;  // one line for `ftx convert --help`
  std::function<absl::StatusOr<std::vector<ParamShape>>(absl::string_view)>
      param_shapes;
  std::function<absl::StatusOr<StateDictMap>(absl::string_view)> make_map;
  std::function<absl::StatusOr<std::map<std::string, std::vector<int64_t>>>(
      absl::string_view)>
      reference_shapes;
};

class StateDictConverterRegistry {
 public:
  // AlreadyExists for a repeated library name.
  absl::Status Register(StateDictConverter converter);
  // NotFound listing the registered names.
  absl::StatusOr<const StateDictConverter*> Find(
      absl::string_view library) const;
  std::vector<std::string> Names() const;

 private:
  std::map<std::string, StateDictConverter, std::less<>> converters_;
};

}  // namespace ftx

#endif  // FTX_MODELS_STATE_DICT_MAP_H_
