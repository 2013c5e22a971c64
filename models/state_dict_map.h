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
// Three more kinds of reference keys make a PyTorch state_dict complete:
//   - aliases: one tensor stored under a second key (performer's
//     ProjectionUpdater holds the layer list again as "proj_updater.instance";
//     linformer-pytorch's shared E / F sit in several heads). On import the
//     alias must be present and equal, element for element, to the key it
//     repeats; on export it is written with the same values.
//   - fixed tensors: buffers ftx recomputes or does not keep (rotary and
//     sinusoid tables, performer's redraw counter). On import they are
//     skipped when present; on export they are written with the values the
//     reference library computes (as int64 for counters).
//   - ignored: keys older or other checkpoints may hold that the model does
//     not have as persistent state (BERT's position_ids); skipped on import,
//     never written.
//
// Import is strict like load_state_dict(strict=True): every ftx parameter the
// map names must be filled, every tensor of the file must be used by a rule or
// ignored, shapes must agree; all of it is checked before the store is touched.
// Export writes every reference tensor a rule names (row blocks are packed back
// into one tensor), every alias and every fixed tensor, atomically: the file
// loads into the reference model with load_state_dict(strict=True).
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
  // The reference tensor is an integer buffer (a counter such as performer's
  // calls_since_last_redraw) that ftx keeps as a float buffer: read from any
  // integer dtype, written as I64 (rounded). Whole tensors only.
  bool int64 = false;
};

struct StateDictAlias {
  std::string reference;  // the repeated key
  std::string same_as;    // the key a rule fills (or a fixed tensor's key)
};

// A reference buffer written on export with given values.
struct StateDictFixedTensor {
  std::string reference;
  std::vector<int64_t> shape;  // {} for a scalar
  std::vector<double> values;  // row-major, product(shape) of them
  bool int64 = false;          // stored as I64 (values are integers), else F32
};

struct StateDictMap {
  std::string library;  // "x-transformers", "performer-pytorch", ...
  std::vector<StateDictRule> rules;
  std::vector<StateDictAlias> aliases;
  std::vector<StateDictFixedTensor> fixed;
  std::vector<std::string> ignored;  // reference keys skipped on import
};

// The sinusoid tables of the reference libraries, as torch computes them in
// float32: inv_freq[i] = 1 / base^(2i / dim), i < dim / 2 (x-transformers'
// and local-attention's rotary, linformer-pytorch's positions), and
// performer's / linear-attention-transformer's FixedPositionalEmbedding
// [max_seq_len, dim] = [sin(t inv_freq) | cos(t inv_freq)], t = 0, 1, ...
StateDictFixedTensor InverseFrequencies(std::string reference, int64_t dim,
                                        double base = 10000.0);
StateDictFixedTensor FixedSinusoidTable(std::string reference,
                                        int64_t max_seq_len, int64_t dim);

// Checks the map against the store: unique ftx names that exist in the store,
// row blocks of one reference name that do not overlap, every reference key
// used by one kind only (rule, alias, fixed or ignored), aliases of keys a
// rule or fixed tensor provides, fixed tensors with product(shape) values.
// InvalidArgument naming the first problem.
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
