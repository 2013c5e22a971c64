// Safetensors: round trips (F32, F16, BF16, metadata, scalars, empty and
// strided tensors), the file layout, every validation error, atomic writes, a
// seeded mutation fuzz test, ParamStore save/load, and a file written by the
// official Python package (tools/safetensors_fixture.py).
#include "models/safetensors.h"

#include <dirent.h>
#include <sys/stat.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <random>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/util/matrix.h"
#include "tests/util/random.h"

namespace ftx {
namespace {

using ::testing::HasSubstr;
using ::testing::UnorderedElementsAre;
using Tensors = std::vector<std::pair<std::string, TensorView<const float>>>;

std::string TempPath(absl::string_view name) {
  std::string dir = ::testing::TempDir();
  if (!dir.empty() && dir.back() != '/') dir += '/';
  return absl::StrCat(dir, name);
}

std::string ReadFileBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream contents;
  contents << in.rdbuf();
  return contents.str();
}

void WriteFileBytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

bool FileExists(const std::string& path) {
  struct stat info;
  return stat(path.c_str(), &info) == 0;
}

// Names in `dir` starting with `prefix`.
std::vector<std::string> FilesStartingWith(const std::string& dir,
                                           const std::string& prefix) {
  std::vector<std::string> names;
  DIR* handle = opendir(dir.c_str());
  if (handle == nullptr) return names;
  while (const dirent* entry = readdir(handle)) {
    const std::string name = entry->d_name;
    if (name.rfind(prefix, 0) == 0) names.push_back(name);
  }
  closedir(handle);
  return names;
}

std::string LengthPrefix(uint64_t length) {
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>(length >> (8 * i));
  return bytes;
}

// A file from a header text and a data area, byte by byte.
std::string RawFile(absl::string_view header, absl::string_view data = "") {
  return absl::StrCat(LengthPrefix(header.size()), header, data);
}

template <typename T>
std::string BytesOf(const std::vector<T>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()),
                     values.size() * sizeof(T));
}

std::vector<float> ReadAll(const SafetensorsFile& file,
                           absl::string_view name) {
  absl::StatusOr<Tensor> tensor = file.ReadFloat(name);
  EXPECT_TRUE(tensor.ok()) << tensor.status();
  if (!tensor.ok()) return {};
  const float* data = tensor->data<float>();
  return std::vector<float>(data, data + tensor->NumElements());
}

// Bit-exact comparison, so that -0, infinities and NaN count.
std::vector<uint32_t> Bits(const std::vector<float>& values) {
  std::vector<uint32_t> bits;
  for (float value : values) bits.push_back(FloatBits(value));
  return bits;
}

TEST(SafetensorsTest, RoundTripsF32WithMetadataScalarsEmptyAndStrided) {
  const std::vector<float> matrix = testing::RandomUniformVector(6, 1);
  const std::vector<float> rank4 =
      testing::RandomUniformVector(2 * 1 * 3 * 2, 2);
  const float scalar = -3.25f;
  testing::StridedMatrix strided(3, 5, 3, 3);
  const Tensors tensors = {
      {"b.matrix", TensorView<const float>(matrix.data(), {2, 3})},
      {"a.scalar", TensorView<const float>(&scalar, Shape{})},
      {"c.empty", TensorView<const float>(nullptr, {0, 3})},
      {"d.strided", strided.const_view()},
      {"e.rank4", TensorView<const float>(rank4.data(), {2, 1, 3, 2})},
  };
  SafetensorsWriteOptions options;
  options.metadata = {{"format", "pt"}, {"note", "ünïcode ✓"}};
  const std::string path = TempPath("round_trip_f32.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, tensors, options).ok());

  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->metadata(), options.metadata);
  std::vector<std::string> names;
  for (const SafetensorsEntry& entry : file->entries()) {
    names.push_back(entry.name);
    EXPECT_EQ(entry.dtype, "F32");
  }
  EXPECT_EQ(names, (std::vector<std::string>{"a.scalar", "b.matrix", "c.empty",
                                             "d.strided", "e.rank4"}));
  EXPECT_EQ((*file->Find("a.scalar"))->shape, std::vector<int64_t>{});
  EXPECT_EQ((*file->Find("c.empty"))->shape, (std::vector<int64_t>{0, 3}));
  EXPECT_EQ((*file->Find("e.rank4"))->shape,
            (std::vector<int64_t>{2, 1, 3, 2}));
  EXPECT_EQ((*file->Find("d.strided"))->NumBytes(), 15 * 4);

  EXPECT_EQ(ReadAll(*file, "a.scalar"), std::vector<float>{scalar});
  EXPECT_EQ(ReadAll(*file, "b.matrix"), matrix);
  EXPECT_EQ(ReadAll(*file, "c.empty"), std::vector<float>{});
  EXPECT_EQ(ReadAll(*file, "d.strided"), strided.Dense());
  EXPECT_EQ(ReadAll(*file, "e.rank4"), rank4);
  EXPECT_EQ(file->Bytes(**file->Find("b.matrix")), BytesOf(matrix));
}

TEST(SafetensorsTest, ReadsIntoStridedViewsWithoutTouchingPadding) {
  const std::vector<float> values = testing::RandomUniformVector(4 * 7, 4);
  const std::string path = TempPath("strided_read.safetensors");
  ASSERT_TRUE(WriteSafetensors(
                  path, {{"x", TensorView<const float>(values.data(), {4, 7})}})
                  .ok());
  const SafetensorsFile file = SafetensorsFile::Open(path).value();
  testing::StridedMatrix out(4, 7, 5, 99);
  ASSERT_TRUE(file.ReadFloat("x", out.view()).ok());
  EXPECT_EQ(out.Dense(), values);
  EXPECT_TRUE(out.PaddingIntact());
}

TEST(SafetensorsTest, HalfPrecisionRoundsToNearestEven) {
  const float inf = std::numeric_limits<float>::infinity();
  // Hand-derived: ties go to the even mantissa, large values overflow to
  // infinity, tiny values flush to zero, the sign of zero survives.
  const std::vector<float> f16_in = {1.0f + std::ldexp(1.0f, -11),
                                     1.0f + 3 * std::ldexp(1.0f, -11),
                                     65520.0f,
                                     1e-8f,
                                     -0.0f,
                                     0.1f};
  const std::vector<float> f16_expected = {
      1.0f, 1.0f + std::ldexp(1.0f, -9), inf, 0.0f, -0.0f, 0.0999755859375f};
  const std::vector<float> bf16_in = {1.0f + std::ldexp(1.0f, -8),
                                      1.0f + 3 * std::ldexp(1.0f, -8), 3e38f,
                                      -0.0f, 0.1f};
  const std::vector<float> bf16_expected = {
      1.0f, 1.0f + std::ldexp(1.0f, -6), 3.0040553e38f, -0.0f, 0.10009765625f};
  const std::vector<float> random = testing::RandomUniformVector(257, 5, -4, 4);
  for (const auto& [dtype, in, expected] :
       {std::make_tuple(DType::kF16, f16_in, f16_expected),
        std::make_tuple(DType::kBF16, bf16_in, bf16_expected)}) {
    SCOPED_TRACE(DTypeName(dtype));
    const std::string path = TempPath("half.safetensors");
    SafetensorsWriteOptions options;
    options.dtype = dtype;
    ASSERT_TRUE(WriteSafetensors(
                    path,
                    {{"special",
                      TensorView<const float>(in.data(), {int64_t(in.size())})},
                     {"random", TensorView<const float>(random.data(), {257})}},
                    options)
                    .ok());
    const SafetensorsFile file = SafetensorsFile::Open(path).value();
    const std::string name = dtype == DType::kF16 ? "F16" : "BF16";
    EXPECT_EQ((*file.Find("special"))->dtype, name);
    EXPECT_EQ((*file.Find("random"))->NumBytes(), 257 * 2);
    EXPECT_EQ(Bits(ReadAll(file, "special")), Bits(expected));
    std::vector<float> random_expected;
    for (float value : random) {
      random_expected.push_back(dtype == DType::kF16
                                    ? FromFloat16(ToFloat16(value))
                                    : FromBFloat16(ToBFloat16(value)));
    }
    EXPECT_EQ(ReadAll(file, "random"), random_expected);
  }
}

TEST(SafetensorsTest, WritesTheReferenceLayout) {
  const std::vector<float> values = {1.0f, 2.0f, 3.0f};
  const std::string path = TempPath("layout.safetensors");
  ASSERT_TRUE(WriteSafetensors(
                  path, {{"v", TensorView<const float>(values.data(), {3})},
                         {"w", TensorView<const float>(values.data(), {1, 2})}})
                  .ok());
  const std::string bytes = ReadFileBytes(path);
  ASSERT_GE(bytes.size(), 8u);
  uint64_t header_bytes;
  std::memcpy(&header_bytes, bytes.data(), 8);
  EXPECT_EQ(header_bytes % 8, 0u);
  ASSERT_EQ(bytes.size(), 8 + header_bytes + 5 * 4);
  const std::string header = bytes.substr(8, header_bytes);
  EXPECT_EQ(header.front(), '{');
  const nlohmann::json json = nlohmann::json::parse(header, nullptr, false);
  ASSERT_FALSE(json.is_discarded());
  EXPECT_FALSE(json.contains("__metadata__"));
  EXPECT_EQ(json["v"]["dtype"], "F32");
  EXPECT_EQ(json["v"]["shape"], nlohmann::json({3}));
  EXPECT_EQ(json["v"]["data_offsets"], nlohmann::json({0, 12}));
  EXPECT_EQ(json["w"]["data_offsets"], nlohmann::json({12, 20}));
  EXPECT_EQ(bytes.substr(8 + header_bytes),
            BytesOf(values) + BytesOf(std::vector<float>{1.0f, 2.0f}));
  EXPECT_EQ((FilesStartingWith(::testing::TempDir(), "layout.safetensors.tmp")),
            std::vector<std::string>{});
  struct stat info;
  ASSERT_EQ(stat(path.c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0644u);
}

struct BadFile {
  const char* label;
  std::string bytes;
  const char* message;
};

std::vector<BadFile> BadFiles() {
  const std::string f32x1 = R"("dtype": "F32", "shape": [1])";
  return {
      {"empty file", "", "0 bytes long, shorter than the 8-byte"},
      {"seven bytes", std::string(7, '\0'), "shorter than the 8-byte"},
      {"header longer than the file", LengthPrefix(100) + "{}",
       "header length 100 exceeds the 2 bytes after it"},
      {"absurd header length", LengthPrefix(uint64_t{1} << 40) + "{}",
       "exceeds the 100000000-byte limit"},
      {"empty header", RawFile(""), "does not start with '{'"},
      {"array header", RawFile("[]"), "does not start with '{'"},
      {"truncated JSON", RawFile(R"({"a": )"), "invalid JSON header"},
      {"trailing garbage", RawFile("{} x"), "invalid JSON header"},
      {"invalid UTF-8", RawFile("{\"\xff\": 1}"), "invalid JSON header"},
      {"duplicate tensor names",
       RawFile(
           absl::StrCat(R"({"a": {)", f32x1, R"(, "data_offsets": [0, 4]},)",
                        R"( "a": {)", f32x1, R"(, "data_offsets": [4, 8]}})"),
           std::string(8, '\0')),
       "duplicate key \"a\""},
      {"duplicate metadata keys",
       RawFile(R"({"__metadata__": {"k": "1", "k": "2"}})"),
       "duplicate key \"k\""},
      {"duplicate entry fields",
       RawFile(R"({"a": {"dtype": "F32", "dtype": "F16"}})"),
       "duplicate key \"dtype\""},
      {"nested too deeply",
       RawFile(R"({"a": {"dtype": "F32", "shape": [[1]]}})"),
       "nested deeper than 3 levels"},
      {"number entry", RawFile(R"({"a": 3})"), "entry is not a JSON object"},
      {"array entry", RawFile(R"({"a": [1]})"), "entry is not a JSON object"},
      {"metadata not an object", RawFile(R"({"__metadata__": "x"})"),
       "\"__metadata__\" is not an object"},
      {"metadata number value", RawFile(R"({"__metadata__": {"k": 1}})"),
       "metadata \"k\" is not a string"},
      {"unknown dtype",
       RawFile(
           R"({"a": {"dtype": "F17", "shape": [], "data_offsets": [0, 0]}})"),
       "unknown dtype \"F17\""},
      {"dtype not a string",
       RawFile(R"({"a": {"dtype": 32, "shape": [], "data_offsets": [0, 0]}})"),
       "\"dtype\" is missing or not a string"},
      {"missing dtype",
       RawFile(R"({"a": {"shape": [], "data_offsets": [0, 0]}})"),
       "\"dtype\" is missing"},
      {"shape not an array",
       RawFile(
           R"({"a": {"dtype": "F32", "shape": 1, "data_offsets": [0, 4]}})"),
       "\"shape\" is missing or not an array"},
      {"negative dimension",
       RawFile(
           R"({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}})"),
       "shape dimension 0 (-1) is not a non-negative 64-bit integer"},
      {"fractional dimension",
       RawFile(
           R"({"a": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}})"),
       "shape dimension 0 (1.5)"},
      {"dimension beyond int64",
       RawFile(
           R"({"a": {"dtype": "U8", "shape": [18446744073709551615], "data_offsets": [0, 1]}})"),
       "shape dimension 0 (18446744073709551615)"},
      {"element count overflow",
       RawFile(
           R"({"a": {"dtype": "U8", "shape": [4294967296, 4294967296], "data_offsets": [0, 1]}})"),
       "has too many elements"},
      {"byte count overflow",
       RawFile(
           R"({"a": {"dtype": "F64", "shape": [1073741824, 1073741824], "data_offsets": [0, 1]}})"),
       "has too many bytes"},
      {"partial bytes",
       RawFile(
           R"({"a": {"dtype": "F4", "shape": [3], "data_offsets": [0, 2]}})",
           "xx"),
       "3 elements of F4 do not fill whole bytes"},
      {"missing offsets", RawFile(R"({"a": {"dtype": "F32", "shape": [1]}})"),
       "\"data_offsets\" is missing or not a pair"},
      {"one offset",
       RawFile(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4]}})"),
       "\"data_offsets\" is missing or not a pair"},
      {"negative offset",
       RawFile(
           R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}})"),
       "are not non-negative integers with begin <= end"},
      {"reversed offsets",
       RawFile(
           R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}})",
           "abcd"),
       "are not non-negative integers with begin <= end"},
      {"offsets past the data",
       RawFile(
           R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})",
           "abcd"),
       "end beyond the 4-byte data area"},
      {"byte length mismatch",
       RawFile(
           R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}})",
           "abcd"),
       "span 4 bytes but F32 [2] needs 8"},
      {"overlapping tensors",
       RawFile(
           absl::StrCat(
               R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)",
               R"( "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})"),
           std::string(12, '\0')),
       "tensors \"a\" and \"b\" overlap"},
      {"gap between tensors",
       RawFile(
           absl::StrCat(R"({"a": {)", f32x1, R"(, "data_offsets": [0, 4]},)",
                        R"( "b": {)", f32x1, R"(, "data_offsets": [8, 12]}})"),
           std::string(12, '\0')),
       "gap of 4 bytes before tensor \"b\""},
      {"gap before the first tensor",
       RawFile(
           absl::StrCat(R"({"a": {)", f32x1, R"(, "data_offsets": [4, 8]}})"),
           std::string(8, '\0')),
       "gap of 4 bytes before tensor \"a\""},
      {"trailing bytes",
       RawFile(
           absl::StrCat(R"({"a": {)", f32x1, R"(, "data_offsets": [0, 4]}})"),
           std::string(8, '\0')),
       "4 bytes after the last tensor"},
      {"data without tensors", RawFile("{}", "abcd"),
       "4 bytes after the last tensor"},
  };
}

TEST(SafetensorsTest, RejectsEveryMalformedFileWithAMessage) {
  for (const BadFile& bad : BadFiles()) {
    SCOPED_TRACE(bad.label);
    absl::StatusOr<SafetensorsFile> file =
        SafetensorsFile::FromBytes(bad.bytes, "bad.safetensors");
    ASSERT_FALSE(file.ok());
    EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(file.status().message(), HasSubstr(bad.message));
    EXPECT_THAT(file.status().message(), HasSubstr("bad.safetensors"));
  }
}

TEST(SafetensorsTest, OpenReportsMissingFilesAndDirectories) {
  absl::StatusOr<SafetensorsFile> missing =
      SafetensorsFile::Open(TempPath("no_such_file.safetensors"));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("no_such_file"));
  absl::StatusOr<SafetensorsFile> directory =
      SafetensorsFile::Open(::testing::TempDir());
  EXPECT_THAT(directory.status().message(), HasSubstr("not a regular file"));
  const std::string truncated = TempPath("truncated.safetensors");
  WriteFileBytes(truncated, "abc");
  EXPECT_THAT(SafetensorsFile::Open(truncated).status().message(),
              HasSubstr("shorter than the 8-byte header length"));
}

TEST(SafetensorsTest, AcceptsEdgeCasesOfTheFormat) {
  // An empty file of tensors, a space-padded header, every dtype of the
  // format, and empty tensors that take no bytes.
  EXPECT_TRUE(
      SafetensorsFile::FromBytes(RawFile("{}"), "t").value().entries().empty());
  EXPECT_TRUE(SafetensorsFile::FromBytes(RawFile("{}      "), "t").ok());
  std::string header = "{";
  int64_t offset = 0;
  struct Stored {
    std::string dtype;
    int count;
    int bytes;
  };
  // F4 and F6 pack elements into bits: 2 x 4 bits = 1 byte, 4 x 6 = 3 bytes.
  const std::vector<Stored> dtypes = {
      {"BOOL", 2, 2},    {"U8", 2, 2},      {"I8", 2, 2},  {"F8_E5M2", 2, 2},
      {"F8_E4M3", 2, 2}, {"F8_E8M0", 2, 2}, {"F4", 2, 1},  {"F6_E2M3", 4, 3},
      {"I16", 2, 4},     {"U16", 2, 4},     {"F16", 2, 4}, {"BF16", 2, 4},
      {"I32", 2, 8},     {"U32", 2, 8},     {"F32", 2, 8}, {"C64", 2, 16},
      {"F64", 2, 16},    {"I64", 2, 16},    {"U64", 2, 16}};
  for (const Stored& stored : dtypes) {
    absl::StrAppend(&header, offset == 0 ? "" : ", ", "\"", stored.dtype,
                    "\": {\"dtype\": \"", stored.dtype, "\", \"shape\": [",
                    stored.count, "], \"data_offsets\": [", offset, ", ",
                    offset + stored.bytes, "]}");
    offset += stored.bytes;
  }
  absl::StrAppend(
      &header,
      R"(, "empty0": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]},)",
      R"( "empty1": {"dtype": "F16", "shape": [2, 0], "data_offsets": [)",
      offset, ", ", offset, "]}}");
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::FromBytes(
      RawFile(header, std::string(offset, '\0')), "all_dtypes");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->entries().size(), dtypes.size() + 2);
  EXPECT_EQ(ReadAll(*file, "empty1"), std::vector<float>{});
}

TEST(SafetensorsTest, ReadsIntegersAndConvertsF64) {
  const std::vector<int64_t> i64 = {-3, 7, std::numeric_limits<int64_t>::min()};
  const std::vector<int32_t> i32 = {-5, 2};
  const std::vector<uint8_t> flags = {1, 0, 1};
  const std::vector<double> f64 = {0.1, -1e300, 1.0 + 1e-12};
  const std::string data =
      BytesOf(i64) + BytesOf(i32) + BytesOf(flags) + BytesOf(f64);
  const std::string header = R"({
      "i64": {"dtype": "I64", "shape": [3], "data_offsets": [0, 24]},
      "i32": {"dtype": "I32", "shape": [2], "data_offsets": [24, 32]},
      "flags": {"dtype": "BOOL", "shape": [3], "data_offsets": [32, 35]},
      "f64": {"dtype": "F64", "shape": [3], "data_offsets": [35, 59]}})";
  const SafetensorsFile file =
      SafetensorsFile::FromBytes(RawFile(header, data), "ints").value();
  std::vector<int64_t> out(3);
  ASSERT_TRUE(file.ReadInt64("i64", TensorView<int64_t>(out.data(), {3})).ok());
  EXPECT_EQ(out, i64);
  ASSERT_TRUE(
      file.ReadInt64("flags", TensorView<int64_t>(out.data(), {3})).ok());
  EXPECT_EQ(out, (std::vector<int64_t>{1, 0, 1}));
  ASSERT_TRUE(file.ReadInt64("i32", TensorView<int64_t>(out.data(), {2})).ok());
  EXPECT_EQ(out[0], -5);
  EXPECT_EQ(out[1], 2);
  // Unaligned F64 data (offset 35) reads correctly and rounds to float.
  EXPECT_EQ(ReadAll(file, "f64"),
            (std::vector<float>{0.1f, -std::numeric_limits<float>::infinity(),
                                1.0f}));

  std::vector<float> floats(3);
  EXPECT_THAT(
      file.ReadFloat("i64", TensorView<float>(floats.data(), {3})).message(),
      HasSubstr("dtype I64 is not F32, F16, BF16 or F64"));
  EXPECT_THAT(
      file.ReadInt64("f64", TensorView<int64_t>(out.data(), {3})).message(),
      HasSubstr("dtype F64 is not I64"));
}

TEST(SafetensorsTest, ReadErrorsNameTheProblem) {
  const std::vector<float> values(6, 1.0f);
  const std::string path = TempPath("read_errors.safetensors");
  ASSERT_TRUE(WriteSafetensors(
                  path, {{"x", TensorView<const float>(values.data(), {2, 3})}})
                  .ok());
  const SafetensorsFile file = SafetensorsFile::Open(path).value();
  std::vector<float> out(6);
  const absl::Status shape =
      file.ReadFloat("x", TensorView<float>(out.data(), {3, 2}));
  EXPECT_EQ(shape.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(shape.message(), HasSubstr("is [2, 3] in the file but [3, 2]"));
  EXPECT_THAT(file.ReadFloat("x", TensorView<float>(out.data(), {6})).message(),
              HasSubstr("[2, 3] in the file but [6]"));
  EXPECT_THAT(file.ReadFloat("x", TensorView<float>(nullptr, {2, 3})).message(),
              HasSubstr("null data"));
  EXPECT_THAT(
      file.ReadFloat("x", TensorView<float>(out.data(), {2, 3}, Device::Cuda()))
          .message(),
      HasSubstr("out is on cuda, expected cpu"));
  const absl::Status missing =
      file.ReadFloat("y", TensorView<float>(out.data(), {2, 3}));
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.message(), HasSubstr("no tensor named \"y\""));

  const SafetensorsFile rank5 =
      SafetensorsFile::FromBytes(
          RawFile(
              R"({"r5": {"dtype": "F32", "shape": [1, 1, 1, 1, 2], "data_offsets": [0, 8]}})",
              std::string(8, '\0')),
          "rank5")
          .value();
  EXPECT_EQ((*rank5.Find("r5"))->ShapeString(), "[1, 1, 1, 1, 2]");
  EXPECT_THAT(rank5.ReadFloat("r5").status().message(),
              HasSubstr("has rank 5; ftx tensors have rank at most 4"));
}

TEST(SafetensorsTest, WriteErrorsLeaveNoFileBehind) {
  const std::vector<float> values(4, 2.0f);
  const TensorView<const float> view(values.data(), {4});
  const std::string dir = ::testing::TempDir();

  const std::string nowhere = TempPath("no_such_dir/out.safetensors");
  const absl::Status no_dir = WriteSafetensors(nowhere, {{"x", view}});
  EXPECT_FALSE(no_dir.ok());
  EXPECT_THAT(no_dir.message(), HasSubstr("cannot create a temporary file"));
  EXPECT_THAT(no_dir.message(), HasSubstr(nowhere));
  EXPECT_FALSE(FileExists(nowhere));

  // Renaming over a directory fails after the temporary file was written.
  const std::string directory = TempPath("a_directory");
  mkdir(directory.c_str(), 0755);
  EXPECT_FALSE(WriteSafetensors(directory, {{"x", view}}).ok());
  EXPECT_EQ(FilesStartingWith(dir, "a_directory.tmp"),
            std::vector<std::string>{});

  const std::string path = TempPath("bad_write.safetensors");
  SafetensorsWriteOptions f64;
  f64.dtype = DType::kF64;
  SafetensorsWriteOptions bad_metadata;
  bad_metadata.metadata = {{"k", "\xc3"}};
  const std::vector<std::pair<Tensors, SafetensorsWriteOptions>> bad = {
      {{{"x", view}}, f64},
      {{{"x", view}, {"x", view}}, {}},
      {{{"", view}}, {}},
      {{{"__metadata__", view}}, {}},
      {{{"\xff", view}}, {}},
      {{{"x", TensorView<const float>(nullptr, {4})}}, {}},
      {{{"x", TensorView<const float>(values.data(), {4}, Device::Cuda())}},
       {}},
      {{{"x", TensorView<const float>(values.data(), {-1})}}, {}},
      {{{"x", view}}, bad_metadata},
  };
  const std::vector<const char*> messages = {
      "dtype f64 cannot be written",
      "\"x\" appears twice",
      "is empty, reserved",
      "is empty, reserved",
      "not valid UTF-8",
      "null data",
      "is on cuda, expected cpu",
      "invalid shape [-1]",
      "metadata entry \"k\" is not valid UTF-8"};
  for (size_t i = 0; i < bad.size(); ++i) {
    SCOPED_TRACE(messages[i]);
    const absl::Status status =
        WriteSafetensors(path, bad[i].first, bad[i].second);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(status.message(), HasSubstr(messages[i]));
    EXPECT_FALSE(FileExists(path));
  }
  EXPECT_EQ(FilesStartingWith(dir, "bad_write.safetensors"),
            std::vector<std::string>{});
}

TEST(SafetensorsTest, OverwritingReplacesTheFileAtomically) {
  const std::vector<float> first = {1.0f, 2.0f};
  const std::vector<float> second = {3.0f, 4.0f, 5.0f};
  const std::string path = TempPath("replaced.safetensors");
  ASSERT_TRUE(WriteSafetensors(
                  path, {{"x", TensorView<const float>(first.data(), {2})}})
                  .ok());
  const SafetensorsFile old_file = SafetensorsFile::Open(path).value();
  ASSERT_TRUE(WriteSafetensors(
                  path, {{"y", TensorView<const float>(second.data(), {3})}})
                  .ok());
  // The open file still sees the old contents (the new file is a new inode),
  // and a fresh open sees only the new ones.
  EXPECT_EQ(ReadAll(old_file, "x"), first);
  const SafetensorsFile new_file = SafetensorsFile::Open(path).value();
  EXPECT_FALSE(new_file.Find("x").ok());
  EXPECT_EQ(ReadAll(new_file, "y"), second);
  EXPECT_EQ(FilesStartingWith(::testing::TempDir(), "replaced.safetensors"),
            std::vector<std::string>{"replaced.safetensors"});
}

// Mutates a valid file many times; every result must be an error or a file
// whose tensors all read back, never a crash or an out-of-bounds read.
TEST(SafetensorsTest, SurvivesMutatedFiles) {
  const std::vector<float> values = testing::RandomUniformVector(24, 6);
  const std::string path = TempPath("fuzz_seed.safetensors");
  SafetensorsWriteOptions options;
  options.metadata = {{"format", "pt"}};
  ASSERT_TRUE(WriteSafetensors(
                  path,
                  {{"a", TensorView<const float>(values.data(), {2, 3})},
                   {"b", TensorView<const float>(values.data(), {4, 1, 2})},
                   {"c", TensorView<const float>(values.data(), Shape{})},
                   {"d", TensorView<const float>(values.data(), {0, 5})}},
                  options)
                  .ok());
  const std::string seed_file = ReadFileBytes(path);
  uint64_t header_bytes;
  std::memcpy(&header_bytes, seed_file.data(), 8);

  std::mt19937_64 rng(20240607);
  const auto below = [&](uint64_t n) { return n == 0 ? 0 : rng() % n; };
  int accepted = 0;
  constexpr int kIterations = 20000;
  for (int iteration = 0; iteration < kIterations; ++iteration) {
    std::string bytes = seed_file;
    switch (below(5)) {
      case 0:  // random bytes anywhere
        for (uint64_t k = 0, n = 1 + below(4); k < n; ++k) {
          bytes[below(bytes.size())] = static_cast<char>(rng());
        }
        break;
      case 1:  // a digit of the header changed (shapes and offsets)
        for (uint64_t k = 0; k < 64; ++k) {
          const size_t at = 8 + below(header_bytes);
          if (bytes[at] >= '0' && bytes[at] <= '9') {
            bytes[at] = static_cast<char>('0' + below(10));
            break;
          }
        }
        break;
      case 2:  // truncated
        bytes.resize(below(bytes.size()));
        break;
      case 3:  // header length changed
        bytes.replace(
            0, 8,
            LengthPrefix(below(2) ? rng() : header_bytes + below(17) - 8));
        break;
      default:  // a header byte replaced by JSON punctuation
        bytes[8 + below(header_bytes)] = "{}[]\":,-"[below(8)];
        break;
    }
    absl::StatusOr<SafetensorsFile> file =
        SafetensorsFile::FromBytes(std::move(bytes), "mutant");
    if (!file.ok()) {
      EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
      continue;
    }
    ++accepted;
    for (const SafetensorsEntry& entry : file->entries()) {
      EXPECT_EQ(file->Bytes(entry).size(),
                static_cast<size_t>(entry.NumBytes()));
      absl::StatusOr<Shape> shape = entry.ToShape();
      if (!shape.ok() || entry.NumElements() > 1000) continue;
      std::vector<float> out(entry.NumElements());
      const absl::Status read =
          file->ReadFloat(entry.name, TensorView<float>(out.data(), *shape));
      EXPECT_TRUE(read.ok() ||
                  read.code() == absl::StatusCode::kInvalidArgument);
    }
  }
  // Mutations of the data area keep the file valid, so some must pass; most
  // header mutations must not.
  EXPECT_GT(accepted, kIterations / 20);
  EXPECT_LT(accepted, kIterations / 2);
  // A few mutants through the file path as well.
  for (int iteration = 0; iteration < 20; ++iteration) {
    std::string bytes = seed_file;
    bytes.resize(below(bytes.size()));
    WriteFileBytes(path, bytes);
    EXPECT_FALSE(SafetensorsFile::Open(path).ok());
  }
}

std::vector<ParamShape> TestShapes() {
  return {{"embed.weight", {5, 3}},
          {"layers.0.norm.g", {3}},
          {"layers.0.ff.weight", {3, 2, 2}}};
}

ParamStore FilledStore(uint64_t seed) {
  ParamStore store = ParamStore::Create(TestShapes()).value();
  const std::vector<float> values =
      testing::RandomUniformVector(store.NumParams(), seed);
  std::copy(values.begin(), values.end(), store.values().data());
  return store;
}

std::vector<float> Values(ParamStore& store) {
  return std::vector<float>(store.values().data(),
                            store.values().data() + store.NumParams());
}

TEST(SafetensorsParamsTest, SavesAndLoadsEveryParameter) {
  ParamStore saved = FilledStore(7);
  const std::string path = TempPath("params.safetensors");
  ASSERT_TRUE(SaveParams(path, saved).ok());
  ParamStore loaded = ParamStore::Create(TestShapes()).value();
  LoadParamsReport report;
  ASSERT_TRUE(LoadParams(path, loaded, {}, &report).ok());
  EXPECT_EQ(Values(loaded), Values(saved));
  EXPECT_THAT(report.loaded,
              UnorderedElementsAre("embed.weight", "layers.0.norm.g",
                                   "layers.0.ff.weight"));
  EXPECT_TRUE(report.missing.empty());
  EXPECT_TRUE(report.unexpected.empty());

  SafetensorsWriteOptions bf16;
  bf16.dtype = DType::kBF16;
  ASSERT_TRUE(SaveParams(path, saved, bf16).ok());
  ASSERT_TRUE(LoadParams(path, loaded).ok());
  for (int64_t i = 0; i < saved.NumParams(); ++i) {
    EXPECT_EQ(loaded.values().data()[i],
              FromBFloat16(ToBFloat16(saved.values().data()[i])));
  }
}

TEST(SafetensorsParamsTest, MapsNamesAndSkipsTensors) {
  const std::vector<float> g = {1.0f, 2.0f, 3.0f};
  const std::vector<float> extra = {9.0f};
  const std::string path = TempPath("mapped.safetensors");
  ASSERT_TRUE(
      WriteSafetensors(path, {{"model.layers.0.norm.g",
                               TensorView<const float>(g.data(), {3})},
                              {"model.rotary.inv_freq",
                               TensorView<const float>(extra.data(), {1})}})
          .ok());
  ParamStore store = ParamStore::Create(TestShapes()).value();
  LoadParamsOptions options;
  options.strict = false;
  options.name_map = [](absl::string_view name) -> std::optional<std::string> {
    if (name == "model.rotary.inv_freq") return std::nullopt;
    return std::string(name.substr(6));
  };
  LoadParamsReport report;
  ASSERT_TRUE(LoadParams(path, store, options, &report).ok());
  EXPECT_EQ(report.loaded, std::vector<std::string>{"layers.0.norm.g"});
  EXPECT_THAT(report.missing,
              UnorderedElementsAre("embed.weight", "layers.0.ff.weight"));
  EXPECT_TRUE(report.unexpected.empty());
  const TensorView<float> loaded = store.Value("layers.0.norm.g").value();
  EXPECT_EQ(std::vector<float>(loaded.data(), loaded.data() + 3), g);

  options.strict = true;
  const absl::Status strict = LoadParams(path, store, options);
  EXPECT_EQ(strict.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(strict.message(),
              HasSubstr("2 parameter(s) missing from the file: embed.weight, "
                        "layers.0.ff.weight"));
}

TEST(SafetensorsParamsTest, ErrorsListProblemsAndLeaveTheStoreUnchanged) {
  ParamStore saved = FilledStore(8);
  const std::string path = TempPath("params_errors.safetensors");
  ASSERT_TRUE(SaveParams(path, saved).ok());

  // Shapes differ: both shapes in the message, nothing written.
  ParamStore other = ParamStore::Create({{"embed.weight", {3, 5}},
                                         {"layers.0.norm.g", {3}},
                                         {"layers.0.ff.weight", {3, 2, 2}}})
                         .value();
  const std::vector<float> before = Values(other);
  const absl::Status shape = LoadParams(path, other);
  EXPECT_THAT(shape.message(),
              HasSubstr("parameter \"embed.weight\" is [5, 3] in the file but "
                        "[3, 5] in memory"));
  EXPECT_EQ(Values(other), before);

  // Unexpected tensors: an error when strict unless allowed.
  ParamStore smaller = ParamStore::Create({{"layers.0.norm.g", {3}}}).value();
  const absl::Status unexpected = LoadParams(path, smaller);
  EXPECT_THAT(unexpected.message(),
              HasSubstr("2 unexpected tensor(s) in the file: embed.weight, "
                        "layers.0.ff.weight"));
  EXPECT_EQ(smaller.values().data()[0], 0.0f);
  LoadParamsOptions allow;
  allow.allow_unexpected = true;
  LoadParamsReport report;
  ASSERT_TRUE(LoadParams(path, smaller, allow, &report).ok());
  EXPECT_EQ(report.unexpected.size(), 2u);
  EXPECT_EQ(smaller.values().data()[0],
            saved.Value("layers.0.norm.g").value().data()[0]);

  // Long lists are cut after five names.
  std::vector<ParamShape> many;
  for (int i = 0; i < 8; ++i) many.push_back({absl::StrCat("p", i), {1}});
  ParamStore wide = ParamStore::Create(many).value();
  allow.allow_unexpected = true;
  EXPECT_THAT(LoadParams(path, wide, allow).message(),
              HasSubstr("8 parameter(s) missing from the file: p0, p1, p2, p3, "
                        "p4, and 3 more"));

  // Two file tensors mapped onto one parameter.
  LoadParamsOptions collapse;
  collapse.strict = false;
  collapse.name_map = [](absl::string_view) -> std::optional<std::string> {
    return "layers.0.norm.g";
  };
  EXPECT_THAT(LoadParams(path, smaller, collapse).message(),
              HasSubstr("both map to parameter \"layers.0.norm.g\""));

  // Integer tensors cannot be parameters.
  const std::vector<int64_t> ids = {1, 2, 3};
  const SafetensorsFile ints =
      SafetensorsFile::FromBytes(
          RawFile(
              R"({"layers.0.norm.g": {"dtype": "I64", "shape": [3], "data_offsets": [0, 24]}})",
              BytesOf(ids)),
          "ints")
          .value();
  EXPECT_THAT(LoadParams(ints, smaller).message(),
              HasSubstr("parameter \"layers.0.norm.g\" has dtype I64"));

  EXPECT_EQ(LoadParams(TempPath("absent.safetensors"), smaller).code(),
            absl::StatusCode::kNotFound);
}

// models/testdata/python_fixture.safetensors, written by the official
// safetensors package (tools/safetensors_fixture.py write); numpy and
// ml_dtypes did the float16 / bfloat16 rounding there.
TEST(SafetensorsInteropTest, ReadsTheOfficialPackagesFile) {
  absl::StatusOr<SafetensorsFile> file =
      SafetensorsFile::Open("models/testdata/python_fixture.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->metadata(),
            (std::map<std::string, std::string>{
                {"format", "np"}, {"producer", "safetensors_fixture.py"}}));
  std::vector<float> f32;
  for (int i = 0; i < 15; ++i) {
    f32.push_back(static_cast<float>((0.1 * i - 0.73) * 3.3));
  }
  EXPECT_EQ(ReadAll(*file, "f32"), f32);
  const absl::string_view f16_bits = file->Bytes(**file->Find("f16"));
  const absl::string_view bf16_bits = file->Bytes(**file->Find("bf16"));
  std::vector<uint16_t> f16_ours, bf16_ours;
  for (float value : f32) {
    f16_ours.push_back(ToFloat16(value).bits);
    bf16_ours.push_back(ToBFloat16(value).bits);
  }
  EXPECT_EQ(f16_bits, BytesOf(f16_ours));
  EXPECT_EQ(bf16_bits, BytesOf(bf16_ours));
  std::vector<float> f16_expected, bf16_expected;
  for (size_t i = 0; i < f32.size(); ++i) {
    f16_expected.push_back(FromFloat16(Float16{f16_ours[i]}));
    bf16_expected.push_back(FromBFloat16(BFloat16{bf16_ours[i]}));
  }
  EXPECT_EQ(ReadAll(*file, "f16"), f16_expected);
  EXPECT_EQ(ReadAll(*file, "bf16"), bf16_expected);

  std::vector<float> f64;
  for (int i = 0; i < 8; ++i) f64.push_back(static_cast<float>(0.1 * i - 0.73));
  EXPECT_EQ(ReadAll(*file, "f64"), f64);
  EXPECT_EQ(ReadAll(*file, "scalar"), std::vector<float>{2.5f});
  EXPECT_EQ(ReadAll(*file, "empty"), std::vector<float>{});
  EXPECT_EQ((*file->Find("empty"))->shape, (std::vector<int64_t>{0, 4}));
  EXPECT_EQ(ReadAll(*file, "layers.0.attn.weight"),
            (std::vector<float>{1.0f, -2.0f, 0.5f, 4.0f}));
  std::vector<int64_t> ints(6);
  ASSERT_TRUE(
      file->ReadInt64("i64", TensorView<int64_t>(ints.data(), {2, 3})).ok());
  EXPECT_EQ(ints, (std::vector<int64_t>{-3, -2, -1, 0, 1, 2}));
  ASSERT_TRUE(
      file->ReadInt64("mask", TensorView<int64_t>(ints.data(), {4})).ok());
  EXPECT_EQ(ints, (std::vector<int64_t>{1, 0, 0, 1, 1, 2}));
}

// Leaves a file written by ftx in the test's undeclared outputs, for
// `tools/safetensors_fixture.py check` (the reverse direction).
TEST(SafetensorsInteropTest, WritesAFileForThePythonCheck) {
  const char* outputs = std::getenv("TEST_UNDECLARED_OUTPUTS_DIR");
  if (outputs == nullptr) GTEST_SKIP() << "not run by bazel test";
  const std::vector<float> values = {1.0f, -2.5f, 0.1f, 3.0f, 65504.0f, -0.0f};
  SafetensorsWriteOptions options;
  options.metadata = {{"producer", "ftx safetensors_test"}};
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    options.dtype = dtype;
    const std::string path = absl::StrCat(outputs, "/ftx_written_",
                                          DTypeName(dtype), ".safetensors");
    ASSERT_TRUE(
        WriteSafetensors(
            path,
            {{"matrix", TensorView<const float>(values.data(), {2, 3})},
             {"scalar", TensorView<const float>(values.data(), Shape{})},
             {"empty", TensorView<const float>(nullptr, {0, 2})}},
            options)
            .ok());
  }
}

}  // namespace
}  // namespace ftx
