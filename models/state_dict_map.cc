#include "models/state_dict_map.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <deque>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/base/status_macros.h"
#include "kernels/base/tensor.h"

namespace ftx {
namespace {

std::string DimsString(const std::vector<int64_t>& dims) {
  return absl::StrCat("[", absl::StrJoin(dims, ", "), "]");
}

int64_t Product(const std::vector<int64_t>& dims) {
  int64_t product = 1;
  for (int64_t d : dims) product *= d;
  return product;
}

absl::StatusOr<Shape> ShapeOfDims(const std::vector<int64_t>& dims,
                                  absl::string_view name) {
  switch (dims.size()) {
    case 0:
      return Shape{};
    case 1:
      return Shape{dims[0]};
    case 2:
      return Shape{dims[0], dims[1]};
    case 3:
      return Shape{dims[0], dims[1], dims[2]};
    case 4:
      return Shape{dims[0], dims[1], dims[2], dims[3]};
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("reference tensor \"", name, "\" has rank ", dims.size(),
                       "; at most 4 is supported"));
  }
}

// Where one rule's elements sit inside its reference tensor.
struct Placement {
  int64_t begin = 0;  // first element
  int64_t count = 0;  // elements
};

// The element range of `rule` inside a reference tensor of shape `dims`, with
// the ftx parameter holding `ftx_elements`.
absl::StatusOr<Placement> Place(const StateDictRule& rule,
                                const std::vector<int64_t>& dims,
                                int64_t ftx_elements,
                                absl::string_view library) {
  const int64_t total = Product(dims);
  if (rule.row_offset < 0) {
    if (total != ftx_elements) {
      return absl::InvalidArgumentError(absl::StrCat(
          library, " tensor \"", rule.reference, "\" has shape ",
          DimsString(dims), " (", total, " elements) but ftx parameter \"",
          rule.ftx, "\" has ", ftx_elements, " elements"));
    }
    return Placement{0, total};
  }
  if (dims.empty() || dims[0] == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        library, " tensor \"", rule.reference, "\" has shape ",
        DimsString(dims), "; a row block needs rank >= 1 and rows"));
  }
  const int64_t row_size = total / dims[0];
  if (row_size == 0 || ftx_elements % row_size != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("ftx parameter \"", rule.ftx, "\" (", ftx_elements,
                     " elements) is not a whole number of rows of ", library,
                     " tensor \"", rule.reference, "\" ", DimsString(dims)));
  }
  const int64_t rows = ftx_elements / row_size;
  if (rule.row_offset + rows > dims[0]) {
    return absl::InvalidArgumentError(
        absl::StrCat("rows [", rule.row_offset, ", ", rule.row_offset + rows,
                     ") for \"", rule.ftx, "\" lie outside ", library,
                     " tensor \"", rule.reference, "\" ", DimsString(dims)));
  }
  return Placement{rule.row_offset * row_size, rows * row_size};
}

// Checks that the placements of one reference tensor cover its `total`
// elements exactly once.
absl::Status CheckCoverage(std::vector<Placement> placements, int64_t total,
                           absl::string_view reference,
                           absl::string_view library) {
  std::sort(
      placements.begin(), placements.end(),
      [](const Placement& a, const Placement& b) { return a.begin < b.begin; });
  int64_t next = 0;
  for (const Placement& placement : placements) {
    if (placement.begin != next) {
      return absl::InvalidArgumentError(
          absl::StrCat(library, " tensor \"", reference, "\": the rules ",
                       placement.begin < next ? "overlap" : "leave a gap",
                       " at element ", std::min(next, placement.begin)));
    }
    next += placement.count;
  }
  if (next != total) {
    return absl::InvalidArgumentError(
        absl::StrCat(library, " tensor \"", reference, "\": the rules cover ",
                     next, " of its ", total, " elements"));
  }
  return absl::OkStatus();
}

// Copies a (possibly strided) view into contiguous floats.
void Gather(TensorView<const float> view, float* out) {
  const int64_t d0 = std::max<int64_t>(view.rank() > 0 ? view.dim(0) : 1, 1);
  const int64_t d1 = view.rank() > 1 ? view.dim(1) : 1;
  const int64_t d2 = view.rank() > 2 ? view.dim(2) : 1;
  const int64_t d3 = view.rank() > 3 ? view.dim(3) : 1;
  if (view.NumElements() == 0) return;
  for (int64_t a = 0; a < d0; ++a)
    for (int64_t b = 0; b < d1; ++b)
      for (int64_t c = 0; c < d2; ++c)
        for (int64_t d = 0; d < d3; ++d) *out++ = view.at(a, b, c, d);
}

void Scatter(const float* in, TensorView<float> view) {
  const int64_t d0 = std::max<int64_t>(view.rank() > 0 ? view.dim(0) : 1, 1);
  const int64_t d1 = view.rank() > 1 ? view.dim(1) : 1;
  const int64_t d2 = view.rank() > 2 ? view.dim(2) : 1;
  const int64_t d3 = view.rank() > 3 ? view.dim(3) : 1;
  if (view.NumElements() == 0) return;
  for (int64_t a = 0; a < d0; ++a)
    for (int64_t b = 0; b < d1; ++b)
      for (int64_t c = 0; c < d2; ++c)
        for (int64_t d = 0; d < d3; ++d) view.at(a, b, c, d) = *in++;
}

// 1 / base^(index / dim) in float32, as torch evaluates
// 1. / (base ** (torch.arange(0, dim, 2).float() / dim)).
float InverseFrequency(int64_t index, int64_t dim, double base) {
  const float exponent = static_cast<float>(index) / static_cast<float>(dim);
  return 1.0f / std::pow(static_cast<float>(base), exponent);
}

// An alias must repeat its key exactly: same dtype, shape and bytes.
absl::Status CheckAlias(const SafetensorsFile& file,
                        const StateDictAlias& alias,
                        absl::string_view library) {
  FTX_ASSIGN_OR_RETURN(const SafetensorsEntry* repeated,
                       file.Find(alias.reference));
  absl::StatusOr<const SafetensorsEntry*> original = file.Find(alias.same_as);
  // A fixed tensor need not be in the file; then there is nothing to compare.
  if (!original.ok()) return absl::OkStatus();
  if (repeated->dtype != (*original)->dtype ||
      repeated->shape != (*original)->shape ||
      file.Bytes(*repeated) != file.Bytes(**original)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "loading a ", library, " state_dict from ", file.source(), ": \"",
        alias.reference, "\" (", repeated->dtype, " ", repeated->ShapeString(),
        ") should repeat \"", alias.same_as, "\" (", (*original)->dtype, " ",
        (*original)->ShapeString(),
        ") but differs; the tensors are tied in the reference model"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateStateDictMap(const StateDictMap& map, ParamStore& store) {
  std::set<std::string> ftx_names;
  std::set<std::string> whole_references;
  std::map<std::string, std::set<int64_t>> block_offsets;
  for (const StateDictRule& rule : map.rules) {
    if (rule.reference.empty() || rule.ftx.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(map.library, " map: a rule has an empty name (\"",
                       rule.reference, "\" -> \"", rule.ftx, "\")"));
    }
    if (!ftx_names.insert(rule.ftx).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(map.library, " map: ftx parameter \"", rule.ftx,
                       "\" is the target of two rules"));
    }
    if (!store.Contains(rule.ftx)) {
      return absl::InvalidArgumentError(
          absl::StrCat(map.library, " map: ftx parameter \"", rule.ftx,
                       "\" is not in the model"));
    }
    if (rule.int64 && rule.row_offset >= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(map.library, " map: integer tensor \"", rule.reference,
                       "\" cannot be split into row blocks"));
    }
    if (rule.row_offset < 0) {
      if (!whole_references.insert(rule.reference).second ||
          block_offsets.count(rule.reference) > 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(map.library, " map: \"", rule.reference,
                         "\" is copied whole and also used by another rule"));
      }
    } else {
      if (whole_references.count(rule.reference) > 0 ||
          !block_offsets[rule.reference].insert(rule.row_offset).second) {
        return absl::InvalidArgumentError(
            absl::StrCat(map.library, " map: rows of \"", rule.reference,
                         "\" at offset ", rule.row_offset, " are used twice"));
      }
    }
  }
  // Every reference key has one role.
  std::set<std::string> claimed = whole_references;
  for (const auto& [reference, offsets] : block_offsets) {
    claimed.insert(reference);
  }
  auto claim = [&](const std::string& reference,
                   absl::string_view role) -> absl::Status {
    if (reference.empty() || !claimed.insert(reference).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(map.library, " map: ", role, " \"", reference,
                       "\" is empty or already used by a rule, an alias, a "
                       "fixed tensor or the ignored list"));
    }
    return absl::OkStatus();
  };
  std::set<std::string> providers = claimed;
  for (const StateDictFixedTensor& fixed : map.fixed) {
    FTX_RETURN_IF_ERROR(claim(fixed.reference, "fixed tensor"));
    FTX_RETURN_IF_ERROR(ShapeOfDims(fixed.shape, fixed.reference).status());
    if (static_cast<int64_t>(fixed.values.size()) != Product(fixed.shape)) {
      return absl::InvalidArgumentError(absl::StrCat(
          map.library, " map: fixed tensor \"", fixed.reference, "\" of shape ",
          DimsString(fixed.shape), " has ", fixed.values.size(), " values"));
    }
    providers.insert(fixed.reference);
  }
  for (const StateDictAlias& alias : map.aliases) {
    FTX_RETURN_IF_ERROR(claim(alias.reference, "alias"));
    if (providers.count(alias.same_as) == 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          map.library, " map: alias \"", alias.reference, "\" repeats \"",
          alias.same_as, "\", which no rule or fixed tensor provides"));
    }
  }
  for (const std::string& ignored : map.ignored) {
    FTX_RETURN_IF_ERROR(claim(ignored, "ignored key"));
  }
  std::string unmapped;
  int unmapped_count = 0;
  store.ForEachParam([&](const ParamSlot& slot) {
    if (ftx_names.count(std::string(slot.name)) == 0) {
      if (unmapped_count++ < 3) {
        absl::StrAppend(&unmapped, unmapped.empty() ? "" : ", ", "\"",
                        slot.name, "\"");
      }
    }
  });
  if (unmapped_count > 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(map.library, " map: ", unmapped_count,
                     " ftx parameter(s) have no rule, e.g. ", unmapped));
  }
  return absl::OkStatus();
}

absl::Status ImportStateDict(const SafetensorsFile& file,
                             const StateDictMap& map, ParamStore& store) {
  FTX_RETURN_IF_ERROR(ValidateStateDictMap(map, store));
  // Required keys: rules and aliases; tolerated: fixed tensors and ignored.
  std::set<std::string> required;
  for (const StateDictRule& rule : map.rules) required.insert(rule.reference);
  for (const StateDictAlias& alias : map.aliases) {
    required.insert(alias.reference);
  }
  std::set<std::string> known(map.ignored.begin(), map.ignored.end());
  for (const StateDictFixedTensor& fixed : map.fixed) {
    known.insert(fixed.reference);
  }
  known.insert(required.begin(), required.end());

  std::vector<std::string> unexpected;
  for (const SafetensorsEntry& entry : file.entries()) {
    if (known.count(entry.name) == 0) unexpected.push_back(entry.name);
  }
  std::vector<std::string> missing;
  for (const std::string& name : required) {
    if (!file.Find(name).ok()) missing.push_back(name);
  }
  if (!missing.empty() || !unexpected.empty()) {
    const auto first = [](const std::vector<std::string>& names) {
      std::vector<std::string> shown(
          names.begin(), names.begin() + std::min<size_t>(names.size(), 3));
      return absl::StrCat(names.size(), " (", absl::StrJoin(shown, ", "),
                          names.size() > 3 ? ", ..." : "", ")");
    };
    return absl::InvalidArgumentError(absl::StrCat(
        "loading a ", map.library, " state_dict from ", file.source(),
        ": missing keys ", missing.empty() ? "0" : first(missing),
        ", unexpected keys ", unexpected.empty() ? "0" : first(unexpected)));
  }

  // Read every used reference tensor and check the placements.
  std::map<std::string, std::vector<float>> reference_values;
  std::map<std::string, std::vector<Placement>> placements;
  std::vector<Placement> rule_placements;
  for (const StateDictRule& rule : map.rules) {
    FTX_ASSIGN_OR_RETURN(const SafetensorsEntry* entry,
                         file.Find(rule.reference));
    FTX_ASSIGN_OR_RETURN(TensorView<float> target, store.Value(rule.ftx));
    FTX_ASSIGN_OR_RETURN(
        Placement placement,
        Place(rule, entry->shape, target.NumElements(), map.library));
    rule_placements.push_back(placement);
    placements[rule.reference].push_back(placement);
    if (reference_values.count(rule.reference) > 0) continue;
    std::vector<float>& values = reference_values[rule.reference];
    values.resize(entry->NumElements());
    // The reads check the stored shape: read through a view of it.
    FTX_ASSIGN_OR_RETURN(Shape stored_shape,
                         ShapeOfDims(entry->shape, rule.reference));
    if (rule.int64) {
      std::vector<int64_t> integers(values.size());
      FTX_RETURN_IF_ERROR(file.ReadInt64(
          rule.reference, TensorView<int64_t>(integers.data(), stored_shape)));
      std::copy(integers.begin(), integers.end(), values.begin());
      continue;
    }
    FTX_RETURN_IF_ERROR(file.ReadFloat(
        rule.reference, TensorView<float>(values.data(), stored_shape)));
  }
  for (const auto& [reference, list] : placements) {
    FTX_RETURN_IF_ERROR(CheckCoverage(
        list, static_cast<int64_t>(reference_values[reference].size()),
        reference, map.library));
  }
  for (const StateDictAlias& alias : map.aliases) {
    FTX_RETURN_IF_ERROR(CheckAlias(file, alias, map.library));
  }
  // Everything checked: write the store.
  for (size_t i = 0; i < map.rules.size(); ++i) {
    const StateDictRule& rule = map.rules[i];
    FTX_ASSIGN_OR_RETURN(TensorView<float> target, store.Value(rule.ftx));
    Scatter(reference_values[rule.reference].data() + rule_placements[i].begin,
            target);
  }
  return absl::OkStatus();
}

absl::Status ExportStateDict(
    ParamStore& store, const StateDictMap& map,
    const std::map<std::string, std::vector<int64_t>>& reference_shapes,
    const std::string& path, const SafetensorsWriteOptions& options) {
  FTX_RETURN_IF_ERROR(ValidateStateDictMap(map, store));
  // Reference names in first-use order.
  std::vector<std::string> order;
  std::map<std::string, std::vector<size_t>> rules_of;
  for (size_t i = 0; i < map.rules.size(); ++i) {
    const std::string& reference = map.rules[i].reference;
    if (rules_of.count(reference) == 0) order.push_back(reference);
    rules_of[reference].push_back(i);
  }
  std::vector<Tensor> tensors;
  std::vector<std::pair<std::string, TensorView<const float>>> views;
  std::deque<std::vector<int64_t>> integers;
  std::vector<std::pair<std::string, TensorView<const int64_t>>> int64_views;
  std::map<std::string, size_t> float_view_of, int64_view_of;
  for (const std::string& reference : order) {
    std::vector<int64_t> dims;
    if (auto it = reference_shapes.find(reference);
        it != reference_shapes.end()) {
      dims = it->second;
    } else {
      const StateDictRule& rule = map.rules[rules_of[reference].front()];
      if (rule.row_offset >= 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "exporting ", map.library, " tensor \"", reference,
            "\" made of row blocks needs its shape in reference_shapes"));
      }
      FTX_ASSIGN_OR_RETURN(TensorView<float> source, store.Value(rule.ftx));
      for (int axis = 0; axis < source.rank(); ++axis) {
        dims.push_back(source.dim(axis));
      }
    }
    FTX_ASSIGN_OR_RETURN(Shape shape, ShapeOfDims(dims, reference));
    FTX_ASSIGN_OR_RETURN(Tensor tensor, Tensor::Create(DType::kF32, shape));
    std::vector<Placement> placements;
    for (size_t index : rules_of[reference]) {
      const StateDictRule& rule = map.rules[index];
      FTX_ASSIGN_OR_RETURN(TensorView<float> source, store.Value(rule.ftx));
      FTX_ASSIGN_OR_RETURN(
          Placement placement,
          Place(rule, dims, source.NumElements(), map.library));
      placements.push_back(placement);
      Gather(source, tensor.view<float>().data() + placement.begin);
    }
    FTX_RETURN_IF_ERROR(
        CheckCoverage(placements, Product(dims), reference, map.library));
    if (map.rules[rules_of[reference].front()].int64) {
      const TensorView<float> rounded = tensor.view<float>();
      integers.emplace_back(rounded.NumElements());
      for (int64_t i = 0; i < rounded.NumElements(); ++i) {
        integers.back()[i] = std::llround(rounded.data()[i]);
      }
      int64_view_of[reference] = int64_views.size();
      int64_views.emplace_back(
          reference, TensorView<const int64_t>(integers.back().data(), shape));
      continue;
    }
    float_view_of[reference] = views.size();
    views.emplace_back(reference, tensor.view<float>());
    tensors.push_back(std::move(tensor));
  }
  // Fixed tensors, then aliases viewing what they repeat.
  for (const StateDictFixedTensor& fixed : map.fixed) {
    FTX_ASSIGN_OR_RETURN(Shape shape,
                         ShapeOfDims(fixed.shape, fixed.reference));
    if (fixed.int64) {
      integers.emplace_back(fixed.values.begin(), fixed.values.end());
      int64_view_of[fixed.reference] = int64_views.size();
      int64_views.emplace_back(
          fixed.reference,
          TensorView<const int64_t>(integers.back().data(), shape));
      continue;
    }
    FTX_ASSIGN_OR_RETURN(Tensor tensor, Tensor::Create(DType::kF32, shape));
    std::copy(fixed.values.begin(), fixed.values.end(),
              tensor.view<float>().data());
    float_view_of[fixed.reference] = views.size();
    views.emplace_back(fixed.reference, tensor.view<float>());
    tensors.push_back(std::move(tensor));
  }
  for (const StateDictAlias& alias : map.aliases) {
    if (auto it = float_view_of.find(alias.same_as);
        it != float_view_of.end()) {
      views.emplace_back(alias.reference, views[it->second].second);
    } else {
      int64_views.emplace_back(
          alias.reference, int64_views[int64_view_of.at(alias.same_as)].second);
    }
  }
  return WriteSafetensors(path, views, int64_views, options);
}

StateDictFixedTensor InverseFrequencies(std::string reference, int64_t dim,
                                        double base) {
  StateDictFixedTensor fixed{std::move(reference), {(dim + 1) / 2}, {}, false};
  for (int64_t i = 0; i < dim; i += 2) {
    fixed.values.push_back(InverseFrequency(i, dim, base));
  }
  return fixed;
}

StateDictFixedTensor FixedSinusoidTable(std::string reference,
                                        int64_t max_seq_len, int64_t dim) {
  const int64_t half = (dim + 1) / 2;
  StateDictFixedTensor fixed{
      std::move(reference), {max_seq_len, 2 * half}, {}, false};
  fixed.values.resize(max_seq_len * 2 * half);
  for (int64_t t = 0; t < max_seq_len; ++t) {
    for (int64_t i = 0; i < half; ++i) {
      // torch: float32 position times float32 inv_freq, then sin / cos.
      const float angle =
          static_cast<float>(t) * InverseFrequency(2 * i, dim, 10000.0);
      fixed.values[t * 2 * half + i] = std::sin(angle);
      fixed.values[t * 2 * half + half + i] = std::cos(angle);
    }
  }
  return fixed;
}

absl::Status StateDictConverterRegistry::Register(
    StateDictConverter converter) {
  if (converter.library.empty() || !converter.param_shapes ||
      !converter.make_map) {
    return absl::InvalidArgumentError(
        "a state-dict converter needs a library name, param_shapes and "
        "make_map");
  }
  const std::string name = converter.library;
  if (!converters_.emplace(name, std::move(converter)).second) {
    return absl::AlreadyExistsError(absl::StrCat(
        "state-dict converter \"", name, "\" is already registered"));
  }
  return absl::OkStatus();
}

absl::StatusOr<const StateDictConverter*> StateDictConverterRegistry::Find(
    absl::string_view library) const {
  auto it = converters_.find(library);
  if (it == converters_.end()) {
    return absl::NotFoundError(
        absl::StrCat("no state-dict converter for \"", library,
                     "\"; known: ", absl::StrJoin(Names(), ", ")));
  }
  return &it->second;
}

std::vector<std::string> StateDictConverterRegistry::Names() const {
  std::vector<std::string> names;
  for (const auto& [name, converter] : converters_) names.push_back(name);
  return names;
}

}  // namespace ftx
