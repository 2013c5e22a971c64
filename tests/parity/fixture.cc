#include "tests/parity/fixture.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <set>
#include <string>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/base/status_macros.h"
#include "nlohmann/json.hpp"

namespace ftx::parity {
namespace {

// The elements of a view in row-major order.
std::vector<float> Flatten(TensorView<const float> view) {
  std::vector<float> values;
  values.reserve(view.NumElements());
  if (view.NumElements() == 0) return values;
  const auto extent = [&](int axis) {
    return axis < view.rank() ? view.dim(axis) : int64_t{1};
  };
  for (int64_t a = 0; a < extent(0); ++a)
    for (int64_t b = 0; b < extent(1); ++b)
      for (int64_t c = 0; c < extent(2); ++c)
        for (int64_t d = 0; d < extent(3); ++d)
          values.push_back(view.at(a, b, c, d));
  return values;
}

// The scale, the worst index and its error.
struct Comparison {
  double scale = 0;
  double worst_error = 0;
  int64_t worst_index = -1;
};

Comparison Compare(const std::vector<float>& actual,
                   const std::vector<float>& expected) {
  Comparison result;
  for (float value : expected) {
    result.scale = std::max(result.scale, std::fabs(double{value}));
  }
  result.scale = std::max(result.scale, 1e-6);
  for (size_t i = 0; i < actual.size() && i < expected.size(); ++i) {
    const double error =
        std::isfinite(actual[i])
            ? std::fabs(double{actual[i]} - double{expected[i]})
            : HUGE_VAL;
    if (error > result.worst_error || result.worst_index < 0) {
      result.worst_error = error;
      result.worst_index = static_cast<int64_t>(i);
    }
  }
  return result;
}

absl::StatusOr<nlohmann::json> MetaJson(const SafetensorsFile& file,
                                        absl::string_view key) {
  auto it = file.metadata().find(std::string(key));
  if (it == file.metadata().end()) {
    return absl::NotFoundError(
        absl::StrCat("metadata \"", key, "\" not in ", file.source()));
  }
  nlohmann::json value = nlohmann::json::parse(it->second, nullptr,
                                               /*allow_exceptions=*/false);
  if (value.is_discarded()) {
    return absl::InvalidArgumentError(
        absl::StrCat("metadata \"", key, "\" of ", file.source(),
                     " is not JSON: ", it->second));
  }
  return value;
}

}  // namespace

absl::StatusOr<Fixture> Fixture::Open(const std::string& path) {
  FTX_ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::Open(path));
  return Fixture(std::move(file));
}

bool Fixture::Has(absl::string_view name) const {
  return file_.Find(name).ok();
}

Tensor Fixture::Float(absl::string_view name) const {
  absl::StatusOr<Tensor> tensor = file_.ReadFloat(name);
  if (!tensor.ok()) {
    ADD_FAILURE() << tensor.status();
    return Tensor();
  }
  return std::move(*tensor);
}

std::vector<int64_t> Fixture::Int(absl::string_view name) const {
  absl::StatusOr<const SafetensorsEntry*> entry = file_.Find(name);
  if (!entry.ok()) {
    ADD_FAILURE() << entry.status();
    return {};
  }
  std::vector<int64_t> values((*entry)->NumElements());
  const absl::Status status = file_.ReadInt64(
      name, TensorView<int64_t>(values.data(),
                                Shape{static_cast<int64_t>(values.size())}));
  if (!status.ok()) {
    // ReadInt64 checks the stored shape; retry with it for rank > 1.
    absl::StatusOr<Shape> shape = (*entry)->ToShape();
    if (!shape.ok()) {
      ADD_FAILURE() << shape.status();
      return {};
    }
    const absl::Status shaped =
        file_.ReadInt64(name, TensorView<int64_t>(values.data(), *shape));
    if (!shaped.ok()) {
      ADD_FAILURE() << shaped;
      return {};
    }
  }
  return values;
}

std::string Fixture::Meta(absl::string_view key) const {
  auto it = file_.metadata().find(std::string(key));
  if (it == file_.metadata().end()) {
    ADD_FAILURE() << "metadata \"" << key << "\" not in " << file_.source();
    return "";
  }
  return it->second;
}

int64_t Fixture::MetaInt(absl::string_view key) const {
  absl::StatusOr<nlohmann::json> value = MetaJson(file_, key);
  if (!value.ok() || !value->is_number_integer()) {
    ADD_FAILURE() << "metadata \"" << key << "\" of " << file_.source()
                  << " is not an integer";
    return 0;
  }
  return value->get<int64_t>();
}

double Fixture::MetaDouble(absl::string_view key) const {
  absl::StatusOr<nlohmann::json> value = MetaJson(file_, key);
  if (!value.ok() || !value->is_number()) {
    ADD_FAILURE() << "metadata \"" << key << "\" of " << file_.source()
                  << " is not a number";
    return 0;
  }
  return value->get<double>();
}

bool Fixture::MetaBool(absl::string_view key) const {
  absl::StatusOr<nlohmann::json> value = MetaJson(file_, key);
  if (!value.ok() || !value->is_boolean()) {
    ADD_FAILURE() << "metadata \"" << key << "\" of " << file_.source()
                  << " is not a boolean";
    return false;
  }
  return value->get<bool>();
}

std::vector<std::string> Fixture::NamesWithPrefix(
    absl::string_view prefix) const {
  std::vector<std::string> names;
  for (const SafetensorsEntry& entry : file_.entries()) {
    if (absl::StartsWith(entry.name, prefix)) names.push_back(entry.name);
  }
  return names;
}

double RelativeError(TensorView<const float> actual,
                     TensorView<const float> expected) {
  const Comparison comparison = Compare(Flatten(actual), Flatten(expected));
  return comparison.worst_error / comparison.scale;
}

void ExpectParity(TensorView<const float> actual,
                  TensorView<const float> expected, double rel_tol,
                  const std::string& what) {
  ASSERT_EQ(actual.NumElements(), expected.NumElements())
      << what << ": element counts differ (ftx " << actual.shape().ToString()
      << ", reference " << expected.shape().ToString() << ")";
  const std::vector<float> actual_values = Flatten(actual);
  const std::vector<float> expected_values = Flatten(expected);
  const Comparison comparison = Compare(actual_values, expected_values);
  if (comparison.worst_index < 0) return;
  const double relative = comparison.worst_error / comparison.scale;
  EXPECT_LE(relative, rel_tol)
      << what << ": relative error " << relative << " (max |diff| "
      << comparison.worst_error << " / scale " << comparison.scale
      << ") at flat index " << comparison.worst_index << ": ftx "
      << actual_values[comparison.worst_index] << " vs reference "
      << expected_values[comparison.worst_index];
}

absl::Status LoadFixtureParams(const Fixture& fixture, const StateDictMap& map,
                               ParamStore& store, absl::string_view prefix) {
  StateDictMap prefixed = map;
  for (StateDictRule& rule : prefixed.rules) {
    rule.reference = absl::StrCat(prefix, rule.reference);
  }
  for (StateDictAlias& alias : prefixed.aliases) {
    alias.reference = absl::StrCat(prefix, alias.reference);
    alias.same_as = absl::StrCat(prefix, alias.same_as);
  }
  for (StateDictFixedTensor& fixed : prefixed.fixed) {
    fixed.reference = absl::StrCat(prefix, fixed.reference);
  }
  for (std::string& ignored : prefixed.ignored) {
    ignored = absl::StrCat(prefix, ignored);
  }
  for (const SafetensorsEntry& entry : fixture.file().entries()) {
    if (!absl::StartsWith(entry.name, prefix)) {
      prefixed.ignored.push_back(entry.name);
    }
  }
  return ImportStateDict(fixture.file(), prefixed, store);
}

void ExpectExportMatchesStateDict(
    const Fixture& fixture, const StateDictMap& map, ParamStore& store,
    const std::map<std::string, std::vector<int64_t>>& reference_shapes,
    absl::string_view prefix) {
  const char* dir = std::getenv("TEST_TMPDIR");
  const std::string path = absl::StrCat(dir != nullptr ? dir : "/tmp",
                                        "/exported_state_dict.safetensors");
  const absl::Status exported =
      ExportStateDict(store, map, reference_shapes, path);
  ASSERT_TRUE(exported.ok()) << exported;
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  std::set<std::string> written;
  for (const SafetensorsEntry& entry : file->entries()) {
    written.insert(entry.name);
  }
  for (const std::string& name : fixture.NamesWithPrefix(prefix)) {
    const std::string key = name.substr(prefix.size());
    if (written.erase(key) == 0) {
      ADD_FAILURE() << "export lacks state_dict key " << key;
      continue;
    }
    const SafetensorsEntry* reference = *fixture.file().Find(name);
    const SafetensorsEntry* ours = *file->Find(key);
    EXPECT_EQ(ours->shape, reference->shape) << key;
    if (reference->dtype == "I64") {
      EXPECT_EQ(ours->dtype, "I64") << key;
      EXPECT_EQ(file->Bytes(*ours), fixture.file().Bytes(*reference)) << key;
      continue;
    }
    if (ours->shape != reference->shape) continue;
    absl::StatusOr<Tensor> expected = fixture.file().ReadFloat(name);
    absl::StatusOr<Tensor> actual = file->ReadFloat(key);
    ASSERT_TRUE(expected.ok() && actual.ok()) << key;
    ExpectParity(actual->view<float>(), expected->view<float>(), 1e-6,
                 "exported " + key);
  }
  for (const std::string& extra : written) {
    ADD_FAILURE() << "export writes " << extra
                  << ", which the reference state_dict does not have";
  }
}

namespace {

bool IsBatchCounter(absl::string_view name) {
  return absl::EndsWith(name, "num_batches_tracked");
}

}  // namespace

StateDictMap ProductKeyMemoryStateDictMap(
    const std::vector<ParamShape>& shapes) {
  StateDictMap map{.library = "product-key-memory"};
  for (const ParamShape& shape : shapes) {
    map.rules.push_back({.reference = shape.name,
                         .ftx = shape.name,
                         .int64 = IsBatchCounter(shape.name)});
  }
  return map;
}

std::map<std::string, std::vector<int64_t>> ProductKeyMemoryReferenceShapes(
    const std::vector<ParamShape>& shapes) {
  std::map<std::string, std::vector<int64_t>> reference;
  for (const ParamShape& shape : shapes) {
    std::vector<int64_t>& dims = reference[shape.name];
    if (IsBatchCounter(shape.name)) continue;
    for (int axis = 0; axis < shape.shape.rank(); ++axis) {
      dims.push_back(shape.shape.dim(axis));
    }
  }
  return reference;
}

}  // namespace ftx::parity
