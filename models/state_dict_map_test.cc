#include "models/state_dict_map.h"

#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/util/random.h"

namespace ftx {
namespace {

using ::ftx::testing::RandomNormalVector;
using ::testing::HasSubstr;

std::string TempPath(absl::string_view name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  return absl::StrCat(dir != nullptr ? dir : "/tmp", "/", name);
}

// A model with a packed-projection attention (torch.nn.MultiheadAttention
// style), a talking-heads matrix whose reference has rank 4, and a norm.
ParamStore MakeStore() {
  auto store = ParamStore::Create({{"attn.q.weight", Shape{4, 4}},
                                   {"attn.k.weight", Shape{4, 4}},
                                   {"attn.v.weight", Shape{4, 4}},
                                   {"attn.q.bias", Shape{4}},
                                   {"attn.k.bias", Shape{4}},
                                   {"attn.v.bias", Shape{4}},
                                   {"mix", Shape{3, 3}},
                                   {"norm.weight", Shape{4}}});
  EXPECT_TRUE(store.ok()) << store.status();
  return std::move(*store);
}

StateDictMap MakeMap() {
  StateDictMap map;
  map.library = "test-lib";
  map.ignored = {"counter"};
  const char* names[] = {"q", "k", "v"};
  for (int i = 0; i < 3; ++i) {
    map.rules.push_back(
        {"in_proj_weight", absl::StrCat("attn.", names[i], ".weight"), 4 * i});
    map.rules.push_back(
        {"in_proj_bias", absl::StrCat("attn.", names[i], ".bias"), 4 * i});
  }
  map.rules.push_back({"heads.weight", "mix"});
  map.rules.push_back({"ln.weight", "norm.weight"});
  return map;
}

const std::map<std::string, std::vector<int64_t>> kReferenceShapes = {
    {"in_proj_weight", {12, 4}},
    {"in_proj_bias", {12}},
    {"heads.weight", {3, 3, 1, 1}}};

void FillRandom(ParamStore& store, uint64_t seed) {
  const std::vector<float> values =
      RandomNormalVector<float>(store.NumParams(), seed);
  std::copy(values.begin(), values.end(), store.values().data());
}

// Writes a reference file by hand: packed rows in torch order, rank-4 mix.
std::string WriteReference(const std::vector<float>& packed_weight,
                           const std::vector<float>& packed_bias,
                           const std::vector<float>& mix,
                           const std::vector<float>& norm, bool with_extra) {
  std::vector<float> counter = {7.0f};
  std::vector<std::pair<std::string, TensorView<const float>>> tensors = {
      {"in_proj_weight",
       TensorView<const float>(packed_weight.data(), Shape{12, 4})},
      {"in_proj_bias", TensorView<const float>(packed_bias.data(), Shape{12})},
      {"heads.weight", TensorView<const float>(mix.data(), Shape{3, 3, 1, 1})},
      {"ln.weight", TensorView<const float>(norm.data(), Shape{4})},
      {"counter", TensorView<const float>(counter.data(), Shape{1})}};
  if (with_extra) {
    tensors.push_back(
        {"stray", TensorView<const float>(counter.data(), Shape{1})});
  }
  const std::string path = TempPath(with_extra ? "reference_extra.safetensors"
                                               : "reference.safetensors");
  EXPECT_TRUE(WriteSafetensors(path, tensors).ok());
  return path;
}

TEST(StateDictMapTest, ImportsPackedRowsAndReshapedTensors) {
  const auto weight = RandomNormalVector<float>(48, 1);
  const auto bias = RandomNormalVector<float>(12, 2);
  const auto mix = RandomNormalVector<float>(9, 3);
  const auto norm = RandomNormalVector<float>(4, 4);
  auto file = SafetensorsFile::Open(WriteReference(weight, bias, mix, norm,
                                                   /*with_extra=*/false));
  ASSERT_TRUE(file.ok()) << file.status();
  ParamStore store = MakeStore();
  ASSERT_TRUE(ImportStateDict(*file, MakeMap(), store).ok());
  const char* names[] = {"q", "k", "v"};
  for (int i = 0; i < 3; ++i) {
    auto w = store.Value(absl::StrCat("attn.", names[i], ".weight"));
    auto b = store.Value(absl::StrCat("attn.", names[i], ".bias"));
    for (int r = 0; r < 4; ++r) {
      EXPECT_EQ(b->at(r), bias[4 * i + r]);
      for (int c = 0; c < 4; ++c) {
        EXPECT_EQ(w->at(r, c), weight[(4 * i + r) * 4 + c]) << names[i];
      }
    }
  }
  auto m = store.Value("mix");
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 3; ++c) EXPECT_EQ(m->at(r, c), mix[r * 3 + c]);
}

TEST(StateDictMapTest, ExportThenImportRestoresEveryParameter) {
  ParamStore source = MakeStore();
  FillRandom(source, 11);
  const std::string path = TempPath("exported.safetensors");
  ASSERT_TRUE(ExportStateDict(source, MakeMap(), kReferenceShapes, path).ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  auto packed = file->Find("in_proj_weight");
  ASSERT_TRUE(packed.ok());
  EXPECT_EQ((*packed)->shape, (std::vector<int64_t>{12, 4}));
  EXPECT_EQ((*file->Find("heads.weight"))->shape,
            (std::vector<int64_t>{3, 3, 1, 1}));
  EXPECT_FALSE(file->Find("counter").ok());
  // Row 5 of the packed weight is row 1 of k.
  auto packed_values = file->ReadFloat("in_proj_weight");
  ASSERT_TRUE(packed_values.ok());
  EXPECT_EQ(packed_values->view<float>().at(5, 2),
            source.Value("attn.k.weight")->at(1, 2));

  ParamStore restored = MakeStore();
  ASSERT_TRUE(ImportStateDict(*file, MakeMap(), restored).ok());
  for (int64_t i = 0; i < source.NumParams(); ++i) {
    EXPECT_EQ(restored.values().data()[i], source.values().data()[i]) << i;
  }
}

TEST(StateDictMapTest, RejectsUnexpectedMissingAndMisshapenTensors) {
  const auto weight = RandomNormalVector<float>(48, 1);
  const auto bias = RandomNormalVector<float>(12, 2);
  const auto mix = RandomNormalVector<float>(9, 3);
  const auto norm = RandomNormalVector<float>(4, 4);
  auto extra = SafetensorsFile::Open(
      WriteReference(weight, bias, mix, norm, /*with_extra=*/true));
  ASSERT_TRUE(extra.ok());
  ParamStore store = MakeStore();
  FillRandom(store, 5);
  const float before = store.values().data()[0];
  absl::Status status = ImportStateDict(*extra, MakeMap(), store);
  EXPECT_THAT(status.message(), HasSubstr("unexpected keys 1 (stray)"));
  EXPECT_EQ(store.values().data()[0], before);

  StateDictMap missing = MakeMap();
  missing.rules.back().reference = "ln.gamma";
  auto file = SafetensorsFile::Open(
      WriteReference(weight, bias, mix, norm, /*with_extra=*/false));
  ASSERT_TRUE(file.ok());
  status = ImportStateDict(*file, missing, store);
  EXPECT_THAT(status.message(), HasSubstr("missing keys 1 (ln.gamma)"));
  EXPECT_THAT(status.message(), HasSubstr("unexpected keys 1 (ln.weight)"));

  StateDictMap misshapen = MakeMap();
  misshapen.rules.back() = {"heads.weight", "norm.weight"};
  misshapen.rules[6] = {"ln.weight", "mix"};
  status = ImportStateDict(*file, misshapen, store);
  EXPECT_THAT(status.message(), HasSubstr("ftx parameter \"mix\" has 9"));
  EXPECT_EQ(store.values().data()[0], before);
}

TEST(StateDictMapTest, RejectsInconsistentMaps) {
  ParamStore store = MakeStore();
  StateDictMap twice = MakeMap();
  twice.rules.push_back({"other", "mix"});
  EXPECT_THAT(ValidateStateDictMap(twice, store).message(),
              HasSubstr("\"mix\" is the target of two rules"));

  StateDictMap incomplete = MakeMap();
  incomplete.rules.pop_back();
  EXPECT_THAT(ValidateStateDictMap(incomplete, store).message(),
              HasSubstr("1 ftx parameter(s) have no rule, e.g. "
                        "\"norm.weight\""));

  StateDictMap unknown = MakeMap();
  unknown.rules.back().ftx = "norm.gamma";
  EXPECT_THAT(ValidateStateDictMap(unknown, store).message(),
              HasSubstr("\"norm.gamma\" is not in the model"));

  StateDictMap overlapping = MakeMap();
  overlapping.rules[2].row_offset = 2;  // k rows overlap q rows
  const std::string path = TempPath("overlap.safetensors");
  EXPECT_THAT(
      ExportStateDict(store, overlapping, kReferenceShapes, path).message(),
      HasSubstr("overlap"));

  StateDictMap ignored_and_used = MakeMap();
  ignored_and_used.ignored.push_back("ln.weight");
  EXPECT_THAT(ValidateStateDictMap(ignored_and_used, store).message(),
              HasSubstr("\"ln.weight\" is empty or already used"));

  StateDictMap dangling = MakeMap();
  dangling.aliases.push_back({"ln2.weight", "ln.bias"});
  EXPECT_THAT(ValidateStateDictMap(dangling, store).message(),
              HasSubstr("which no rule or fixed tensor provides"));

  StateDictMap short_fixed = MakeMap();
  short_fixed.fixed.push_back({"table", {2, 3}, {1.0, 2.0}});
  EXPECT_THAT(ValidateStateDictMap(short_fixed, store).message(),
              HasSubstr("\"table\" of shape [2, 3] has 2 values"));
}

// MakeMap plus a tied copy of the norm, a float table and an int64 counter.
StateDictMap MapWithBuffers() {
  StateDictMap map = MakeMap();
  map.aliases.push_back({"ln_copy.weight", "ln.weight"});
  map.fixed.push_back(InverseFrequencies("rotary.inv_freq", 8));
  map.fixed.push_back({"steps", {}, {3.0}, /*int64=*/true});
  map.aliases.push_back({"copy.steps", "steps"});
  return map;
}

TEST(StateDictMapTest, ExportWritesAliasesAndFixedTensors) {
  ParamStore source = MakeStore();
  FillRandom(source, 12);
  const std::string path = TempPath("buffers.safetensors");
  ASSERT_TRUE(
      ExportStateDict(source, MapWithBuffers(), kReferenceShapes, path).ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->Bytes(**file->Find("ln_copy.weight")),
            file->Bytes(**file->Find("ln.weight")));
  auto inv_freq = file->ReadFloat("rotary.inv_freq");
  ASSERT_TRUE(inv_freq.ok());
  ASSERT_EQ(inv_freq->shape(), Shape({4}));
  for (int i = 0; i < 4; ++i) {
    EXPECT_NEAR(inv_freq->view<float>().at(i), std::pow(10000.0, -2.0 * i / 8),
                1e-7);
  }
  for (const char* counter : {"steps", "copy.steps"}) {
    const SafetensorsEntry* entry = *file->Find(counter);
    EXPECT_EQ(entry->dtype, "I64");
    EXPECT_TRUE(entry->shape.empty());
    int64_t value = 0;
    ASSERT_TRUE(
        file->ReadInt64(counter, TensorView<int64_t>(&value, Shape{})).ok());
    EXPECT_EQ(value, 3);
  }
  ParamStore restored = MakeStore();
  ASSERT_TRUE(ImportStateDict(*file, MapWithBuffers(), restored).ok());
  for (int64_t i = 0; i < source.NumParams(); ++i) {
    EXPECT_EQ(restored.values().data()[i], source.values().data()[i]) << i;
  }
}

TEST(StateDictMapTest, ImportNeedsAliasesThatRepeatTheirTensor) {
  const auto weight = RandomNormalVector<float>(48, 1);
  const auto bias = RandomNormalVector<float>(12, 2);
  const auto mix = RandomNormalVector<float>(9, 3);
  const auto norm = RandomNormalVector<float>(4, 4);
  auto file = SafetensorsFile::Open(
      WriteReference(weight, bias, mix, norm, /*with_extra=*/false));
  ASSERT_TRUE(file.ok());
  ParamStore store = MakeStore();
  StateDictMap map = MakeMap();
  map.aliases.push_back({"ln_copy.weight", "ln.weight"});
  EXPECT_THAT(ImportStateDict(*file, map, store).message(),
              HasSubstr("missing keys 1 (ln_copy.weight)"));

  // A copy that differs in one element is an error; an equal one loads.
  std::vector<float> counter = {7.0f};
  std::vector<float> packed_weight = weight, packed_bias = bias;
  const std::vector<float> changed = [&norm] {
    std::vector<float> values = norm;
    values[2] += 1.0f;
    return values;
  }();
  for (const std::vector<float>* copy : {&changed, &norm}) {
    const std::string path = TempPath("tied.safetensors");
    ASSERT_TRUE(
        WriteSafetensors(
            path,
            {{"in_proj_weight",
              TensorView<const float>(packed_weight.data(), Shape{12, 4})},
             {"in_proj_bias",
              TensorView<const float>(packed_bias.data(), Shape{12})},
             {"heads.weight",
              TensorView<const float>(mix.data(), Shape{3, 3, 1, 1})},
             {"ln.weight", TensorView<const float>(norm.data(), Shape{4})},
             {"ln_copy.weight",
              TensorView<const float>(copy->data(), Shape{4})},
             {"counter", TensorView<const float>(counter.data(), Shape{1})}})
            .ok());
    auto tied = SafetensorsFile::Open(path);
    ASSERT_TRUE(tied.ok());
    const absl::Status status = ImportStateDict(*tied, map, store);
    if (copy == &changed) {
      EXPECT_THAT(status.message(),
                  HasSubstr("\"ln_copy.weight\" (F32 [4]) should repeat "
                            "\"ln.weight\""));
    } else {
      EXPECT_TRUE(status.ok()) << status;
    }
  }
}

TEST(StateDictMapTest, SinusoidTablesFollowTheReferenceFormula) {
  const StateDictFixedTensor table = FixedSinusoidTable("emb", 5, 6);
  ASSERT_EQ(table.shape, (std::vector<int64_t>{5, 6}));
  for (int t = 0; t < 5; ++t) {
    for (int i = 0; i < 3; ++i) {
      const double angle = t * std::pow(10000.0, -2.0 * i / 6);
      EXPECT_NEAR(table.values[t * 6 + i], std::sin(angle), 1e-6);
      EXPECT_NEAR(table.values[t * 6 + 3 + i], std::cos(angle), 1e-6);
    }
  }
  const StateDictFixedTensor linformer =
      InverseFrequencies("pos_emb.inv_freq", 6, 100000.0);
  EXPECT_NEAR(linformer.values[2], std::pow(100000.0, -4.0 / 6), 1e-9);
}

TEST(StateDictMapTest, RegistryFindsConvertersByName) {
  StateDictConverterRegistry registry;
  StateDictConverter converter;
  converter.library = "test-lib";
  converter.param_shapes = [](absl::string_view) {
    return absl::StatusOr<std::vector<ParamShape>>(std::vector<ParamShape>{});
  };
  converter.make_map = [](absl::string_view) {
    return absl::StatusOr<StateDictMap>(MakeMap());
  };
  ASSERT_TRUE(registry.Register(converter).ok());
  EXPECT_EQ(registry.Register(converter).code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_TRUE(registry.Find("test-lib").ok());
  EXPECT_THAT(registry.Find("nope").status().message(),
              HasSubstr("known: test-lib"));
}

}  // namespace
}  // namespace ftx
