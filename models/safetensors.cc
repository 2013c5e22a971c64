#include "models/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <limits>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/base/status_macros.h"
#include "models/atomic_file.h"
#include "nlohmann/json.hpp"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "safetensors data is little-endian; ftx reads it in place");

namespace ftx {
namespace {

using Json = nlohmann::json;

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // the reference's limit
constexpr int kMaxHeaderDepth = 3;  // root object -> entry -> shape array
constexpr char kMetadataKey[] = "__metadata__";
constexpr size_t kWriteChunkBytes = size_t{1} << 20;
constexpr size_t kMaxNamesListed = 5;

struct DTypeInfo {
  const char* name;
  int bits;  // per element
};

// Every dtype of the format (safetensors 0.8).
constexpr DTypeInfo kDTypes[] = {
    {"BOOL", 8},    {"U8", 8},      {"I8", 8},          {"F8_E5M2", 8},
    {"F8_E4M3", 8}, {"F8_E8M0", 8}, {"F8_E4M3FNUZ", 8}, {"F8_E5M2FNUZ", 8},
    {"F6_E2M3", 6}, {"F6_E3M2", 6}, {"F4", 4},          {"I16", 16},
    {"U16", 16},    {"F16", 16},    {"BF16", 16},       {"I32", 32},
    {"U32", 32},    {"F32", 32},    {"C64", 64},        {"F64", 64},
    {"I64", 64},    {"U64", 64},
};

const DTypeInfo* FindDType(absl::string_view name) {
  for (const DTypeInfo& info : kDTypes) {
    if (name == info.name) return &info;
  }
  return nullptr;
}

// Calls fn(flat_index, element) for every element of `view` in row-major
// order, whatever its strides.
template <typename T, typename Fn>
void ForEachElement(const TensorView<T>& view, Fn&& fn) {
  if (view.NumElements() == 0) return;
  std::array<int64_t, kMaxRank> dims{1, 1, 1, 1};
  std::array<int64_t, kMaxRank> strides{0, 0, 0, 0};
  const int pad = kMaxRank - view.rank();
  for (int axis = 0; axis < view.rank(); ++axis) {
    dims[pad + axis] = view.dim(axis);
    strides[pad + axis] = view.stride(axis);
  }
  int64_t flat = 0;
  for (int64_t i0 = 0; i0 < dims[0]; ++i0) {
    for (int64_t i1 = 0; i1 < dims[1]; ++i1) {
      for (int64_t i2 = 0; i2 < dims[2]; ++i2) {
        T* row =
            view.data() + i0 * strides[0] + i1 * strides[1] + i2 * strides[2];
        for (int64_t i3 = 0; i3 < dims[3]; ++i3) {
          fn(flat++, row[i3 * strides[3]]);
        }
      }
    }
  }
}

template <typename T>
T LoadLittleEndian(const char* bytes) {
  T value;
  std::memcpy(&value, bytes, sizeof(T));
  return value;
}

bool IsValidUtf8(absl::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    const unsigned char lead = static_cast<unsigned char>(text[i]);
    // Sequence length, the lead byte's payload bits, and the smallest code
    // point of that length (smaller ones would be overlong encodings).
    int length;
    uint32_t code_point;
    uint32_t minimum;
    if (lead < 0x80) {
      length = 1;
      code_point = lead;
      minimum = 0;
    } else if ((lead & 0xe0) == 0xc0) {
      length = 2;
      code_point = lead & 0x1f;
      minimum = 0x80;
    } else if ((lead & 0xf0) == 0xe0) {
      length = 3;
      code_point = lead & 0x0f;
      minimum = 0x800;
    } else if ((lead & 0xf8) == 0xf0) {
      length = 4;
      code_point = lead & 0x07;
      minimum = 0x10000;
    } else {
      return false;
    }
    if (text.size() - i < static_cast<size_t>(length)) return false;
    for (int k = 1; k < length; ++k) {
      const unsigned char next = static_cast<unsigned char>(text[i + k]);
      if ((next & 0xc0) != 0x80) return false;
      code_point = (code_point << 6) | (next & 0x3f);
    }
    if (code_point < minimum || code_point > 0x10ffff ||
        (code_point >= 0xd800 && code_point <= 0xdfff)) {
      return false;
    }
    i += length;
  }
  return true;
}

// The first kMaxNamesListed items, then how many more.
std::string ListFirst(const std::vector<std::string>& items,
                      absl::string_view separator) {
  const size_t shown = std::min(items.size(), kMaxNamesListed);
  std::string text =
      absl::StrJoin(items.begin(), items.begin() + shown, separator);
  if (items.size() > shown) {
    absl::StrAppend(&text, separator, "and ", items.size() - shown, " more");
  }
  return text;
}

// First pass over the header: syntax, nesting depth and duplicate keys, with
// the parser's own message on a syntax error.
class HeaderChecker : public nlohmann::json_sax<Json> {
 public:
  const std::string& error() const { return error_; }

  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override {
    keys_.emplace_back();
    return Enter();
  }
  bool key(string_t& key) override {
    if (!keys_.back().insert(key).second) {
      error_ = absl::StrCat("duplicate key \"", key, "\"");
      return false;
    }
    return true;
  }
  bool end_object() override { return Leave(); }
  bool start_array(std::size_t) override {
    keys_.emplace_back();
    return Enter();
  }
  bool end_array() override { return Leave(); }
  bool parse_error(std::size_t, const std::string&,
                   const nlohmann::detail::exception& exception) override {
    error_ = exception.what();
    return false;
  }

 private:
  bool Enter() {
    if (++depth_ > kMaxHeaderDepth) {
      error_ = absl::StrCat("nested deeper than ", kMaxHeaderDepth, " levels");
      return false;
    }
    return true;
  }
  bool Leave() {
    keys_.pop_back();
    --depth_;
    return true;
  }

  std::string error_;
  int depth_ = 0;
  std::vector<std::set<std::string>> keys_;  // per open object or array
};

// A JSON value as an int64 when it is a non-negative integer that fits.
std::optional<int64_t> NonNegativeInt64(const Json& value) {
  if (!value.is_number_unsigned()) return std::nullopt;
  const uint64_t number = value.get<uint64_t>();
  if (number > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    return std::nullopt;
  }
  return static_cast<int64_t>(number);
}

// One header entry, checked on its own (offsets against the data area size;
// the tiling is checked across entries afterwards).
absl::StatusOr<SafetensorsEntry> ParseEntry(const std::string& name,
                                            const Json& value,
                                            int64_t data_bytes) {
  SafetensorsEntry entry;
  entry.name = name;
  const auto error = [&](auto&&... parts) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor \"", name, "\": ", parts...));
  };
  if (!value.is_object()) return error("entry is not a JSON object");
  const auto dtype = value.find("dtype");
  if (dtype == value.end() || !dtype->is_string()) {
    return error("\"dtype\" is missing or not a string");
  }
  entry.dtype = dtype->get<std::string>();
  const DTypeInfo* info = FindDType(entry.dtype);
  if (info == nullptr) return error("unknown dtype \"", entry.dtype, "\"");

  const auto shape = value.find("shape");
  if (shape == value.end() || !shape->is_array()) {
    return error("\"shape\" is missing or not an array");
  }
  int64_t elements = 1;
  for (size_t axis = 0; axis < shape->size(); ++axis) {
    const std::optional<int64_t> dim = NonNegativeInt64((*shape)[axis]);
    if (!dim.has_value()) {
      return error("shape dimension ", axis, " (", (*shape)[axis].dump(),
                   ") is not a non-negative 64-bit integer");
    }
    entry.shape.push_back(*dim);
    if (__builtin_mul_overflow(elements, *dim, &elements)) {
      return error("shape ", shape->dump(), " has too many elements");
    }
  }
  int64_t bits;
  if (__builtin_mul_overflow(elements, int64_t{info->bits}, &bits)) {
    return error("shape ", shape->dump(), " has too many bytes");
  }
  if (bits % 8 != 0) {
    return error(elements, " elements of ", entry.dtype,
                 " do not fill whole bytes");
  }

  const auto offsets = value.find("data_offsets");
  if (offsets == value.end() || !offsets->is_array() || offsets->size() != 2) {
    return error("\"data_offsets\" is missing or not a pair");
  }
  const std::optional<int64_t> begin = NonNegativeInt64((*offsets)[0]);
  const std::optional<int64_t> end = NonNegativeInt64((*offsets)[1]);
  if (!begin.has_value() || !end.has_value() || *begin > *end) {
    return error("data_offsets ", offsets->dump(),
                 " are not non-negative integers with begin <= end");
  }
  if (*end > data_bytes) {
    return error("data_offsets ", offsets->dump(), " end beyond the ",
                 data_bytes, "-byte data area");
  }
  entry.begin = *begin;
  entry.end = *end;
  if (entry.NumBytes() != bits / 8) {
    return error("data_offsets ", offsets->dump(), " span ", entry.NumBytes(),
                 " bytes but ", entry.dtype, " ", entry.ShapeString(),
                 " needs ", bits / 8);
  }
  return entry;
}

// Tensors sorted by offset must each begin where the previous one ended, and
// the last must end at the end of the data area.
absl::Status CheckTiling(const std::vector<SafetensorsEntry>& entries,
                         int64_t data_bytes) {
  std::vector<const SafetensorsEntry*> by_offset;
  for (const SafetensorsEntry& entry : entries) by_offset.push_back(&entry);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const SafetensorsEntry* a, const SafetensorsEntry* b) {
              return std::make_pair(a->begin, a->end) <
                     std::make_pair(b->begin, b->end);
            });
  int64_t covered = 0;
  const SafetensorsEntry* previous = nullptr;
  for (const SafetensorsEntry* entry : by_offset) {
    if (entry->begin < covered) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensors \"", previous->name, "\" and \"", entry->name,
                       "\" overlap"));
    }
    if (entry->begin > covered) {
      return absl::InvalidArgumentError(absl::StrCat(
          "gap of ", entry->begin - covered, " bytes before tensor \"",
          entry->name, "\" (tensors must tile the data area)"));
    }
    covered = entry->end;
    previous = entry;
  }
  if (covered != data_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(data_bytes - covered,
                     " bytes after the last tensor (tensors must tile the "
                     "data area)"));
  }
  return absl::OkStatus();
}

bool IsFloatDType(absl::string_view dtype) {
  return dtype == "F32" || dtype == "F16" || dtype == "BF16" || dtype == "F64";
}

absl::Status CheckViewMatches(absl::string_view what,
                              const SafetensorsEntry& entry,
                              const Shape& shape) {
  bool same = entry.shape.size() == static_cast<size_t>(shape.rank());
  for (int axis = 0; same && axis < shape.rank(); ++axis) {
    same = entry.shape[axis] == shape.dim(axis);
  }
  if (same) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(what, " is ", entry.ShapeString(), " in the file but ",
                   shape.ToString(), " in memory"));
}

// Converts the stored elements of `bytes` (dtype `dtype`) into `out`.
void ConvertToFloat(absl::string_view dtype, const char* bytes,
                    const TensorView<float>& out) {
  if (out.NumElements() == 0) return;
  if (dtype == "F32" && out.IsContiguous()) {
    std::memcpy(out.data(), bytes, out.NumElements() * sizeof(float));
  } else if (dtype == "F32") {
    ForEachElement(out, [&](int64_t i, float& value) {
      value = LoadLittleEndian<float>(bytes + 4 * i);
    });
  } else if (dtype == "F16") {
    ForEachElement(out, [&](int64_t i, float& value) {
      value = FromFloat16(Float16{LoadLittleEndian<uint16_t>(bytes + 2 * i)});
    });
  } else if (dtype == "BF16") {
    ForEachElement(out, [&](int64_t i, float& value) {
      value = FromBFloat16(BFloat16{LoadLittleEndian<uint16_t>(bytes + 2 * i)});
    });
  } else if (dtype == "F64") {
    ForEachElement(out, [&](int64_t i, float& value) {
      value = static_cast<float>(LoadLittleEndian<double>(bytes + 8 * i));
    });
  }
}

// Buffers encoded elements and writes them in large chunks; remembers the
// first write error.
class ChunkedWriter {
 public:
  explicit ChunkedWriter(AtomicFileWriter& file) : file_(file) {
    buffer_.reserve(kWriteChunkBytes);
  }
  void Append(const void* bytes, size_t size) {
    buffer_.append(static_cast<const char*>(bytes), size);
    if (buffer_.size() >= kWriteChunkBytes) Flush();
  }
  absl::Status Finish() {
    Flush();
    return status_;
  }

 private:
  void Flush() {
    if (status_.ok()) status_ = file_.Write(buffer_);
    buffer_.clear();
  }

  AtomicFileWriter& file_;
  std::string buffer_;
  absl::Status status_;
};

void AppendElements(const TensorView<const float>& view, DType dtype,
                    ChunkedWriter& writer) {
  ForEachElement(view, [&](int64_t, const float& value) {
    switch (dtype) {
      case DType::kF16: {
        const uint16_t bits = ToFloat16(value).bits;
        writer.Append(&bits, sizeof(bits));
        break;
      }
      case DType::kBF16: {
        const uint16_t bits = ToBFloat16(value).bits;
        writer.Append(&bits, sizeof(bits));
        break;
      }
      default:
        writer.Append(&value, sizeof(value));
        break;
    }
  });
}

const char* StoredDTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "F32";
    case DType::kF16:
      return "F16";
    case DType::kBF16:
      return "BF16";
    default:
      return nullptr;
  }
}

// Checks one tensor to write; `names` collects the names seen so far.
template <typename T>
absl::Status CheckTensorToWrite(const std::string& name,
                                const TensorView<const T>& view,
                                std::set<std::string>& names) {
  if (name.empty() || name == kMetadataKey || !IsValidUtf8(name)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor name \"", name, "\" is empty, reserved or not valid UTF-8"));
  }
  if (!names.insert(name).second) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor name \"", name, "\" appears twice"));
  }
  if (!view.shape().IsValid()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor \"", name, "\" has invalid shape ", view.shape().ToString()));
  }
  if (view.device().type != DeviceType::kCpu) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor \"", name, "\" is on ",
                     DeviceTypeName(view.device().type), ", expected cpu"));
  }
  if (view.data() == nullptr && view.NumElements() > 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor \"", name, "\" has null data for shape ",
                     view.shape().ToString()));
  }
  return absl::OkStatus();
}

absl::Status CheckTensorsToWrite(
    const std::vector<std::pair<std::string, TensorView<const float>>>& tensors,
    const std::vector<std::pair<std::string, TensorView<const int64_t>>>&
        int64_tensors,
    const std::map<std::string, std::string>& metadata) {
  std::set<std::string> names;
  for (const auto& [name, view] : tensors) {
    FTX_RETURN_IF_ERROR(CheckTensorToWrite(name, view, names));
  }
  for (const auto& [name, view] : int64_tensors) {
    FTX_RETURN_IF_ERROR(CheckTensorToWrite(name, view, names));
  }
  for (const auto& [key, value] : metadata) {
    if (!IsValidUtf8(key) || !IsValidUtf8(value)) {
      return absl::InvalidArgumentError(
          absl::StrCat("metadata entry \"", key, "\" is not valid UTF-8"));
    }
  }
  return absl::OkStatus();
}

absl::Status WriteSafetensorsImpl(
    const std::string& path,
    const std::vector<std::pair<std::string, TensorView<const float>>>& tensors,
    const std::vector<std::pair<std::string, TensorView<const int64_t>>>&
        int64_tensors,
    const SafetensorsWriteOptions& options) {
  const char* dtype_name = StoredDTypeName(options.dtype);
  if (dtype_name == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("dtype ", DTypeName(options.dtype),
                     " cannot be written, expected f32, f16 or bf16"));
  }
  FTX_RETURN_IF_ERROR(
      CheckTensorsToWrite(tensors, int64_tensors, options.metadata));

  Json header = Json::object();
  if (!options.metadata.empty()) header[kMetadataKey] = options.metadata;
  int64_t offset = 0;
  auto describe = [&](const std::string& name, const Shape& shape,
                      const char* stored_dtype, int64_t element_bytes) {
    const int64_t bytes = shape.NumElements() * element_bytes;
    std::vector<int64_t> dims(shape.dims().begin(),
                              shape.dims().begin() + shape.rank());
    header[name] = {{"dtype", stored_dtype},
                    {"shape", dims},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  };
  for (const auto& [name, view] : tensors) {
    describe(name, view.shape(), dtype_name,
             static_cast<int64_t>(SizeOf(options.dtype)));
  }
  for (const auto& [name, view] : int64_tensors) {
    describe(name, view.shape(), "I64", sizeof(int64_t));
  }
  std::string header_text =
      header.dump(-1, ' ', false, Json::error_handler_t::replace);
  header_text.append((8 - header_text.size() % 8) % 8, ' ');
  const uint64_t header_bytes = header_text.size();

  AtomicFileWriter file(path);
  FTX_RETURN_IF_ERROR(file.Open());
  FTX_RETURN_IF_ERROR(file.Write(absl::string_view(
      reinterpret_cast<const char*>(&header_bytes), sizeof(header_bytes))));
  FTX_RETURN_IF_ERROR(file.Write(header_text));
  ChunkedWriter writer(file);
  for (const auto& tensor : tensors) {
    AppendElements(tensor.second, options.dtype, writer);
  }
  for (const auto& tensor : int64_tensors) {
    ForEachElement(tensor.second, [&](int64_t, const int64_t& value) {
      writer.Append(&value, sizeof(value));
    });
  }
  FTX_RETURN_IF_ERROR(writer.Finish());
  return file.Commit();
}

}  // namespace

int64_t SafetensorsEntry::NumElements() const {
  int64_t elements = 1;
  for (int64_t dim : shape) elements *= dim;
  return elements;
}

std::string SafetensorsEntry::ShapeString() const {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::StatusOr<Shape> SafetensorsEntry::ToShape() const {
  if (shape.size() > static_cast<size_t>(kMaxRank)) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor \"", name, "\" has rank ", shape.size(),
                     "; ftx tensors have rank at most ", kMaxRank));
  }
  Shape result;
  switch (shape.size()) {
    case 1:
      result = Shape{shape[0]};
      break;
    case 2:
      result = Shape{shape[0], shape[1]};
      break;
    case 3:
      result = Shape{shape[0], shape[1], shape[2]};
      break;
    case 4:
      result = Shape{shape[0], shape[1], shape[2], shape[3]};
      break;
    default:
      break;
  }
  return result;
}

// The file's bytes: a read-only mapping, or a copy in memory.
class SafetensorsFile::Storage {
 public:
  explicit Storage(std::string bytes) : owned_(std::move(bytes)) {}
  Storage(void* mapping, size_t size) : mapping_(mapping), size_(size) {}
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  ~Storage() {
    if (mapping_ != nullptr) munmap(mapping_, size_);
  }
  absl::string_view bytes() const {
    if (mapping_ != nullptr) {
      return absl::string_view(static_cast<const char*>(mapping_), size_);
    }
    return owned_;
  }

 private:
  std::string owned_;
  void* mapping_ = nullptr;
  size_t size_ = 0;
};

SafetensorsFile::SafetensorsFile(SafetensorsFile&&) noexcept = default;
SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&&) noexcept =
    default;
SafetensorsFile::~SafetensorsFile() = default;

absl::StatusOr<SafetensorsFile> SafetensorsFile::Open(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("cannot open ", path));
  }
  struct stat info;
  if (fstat(fd, &info) != 0 || !S_ISREG(info.st_mode)) {
    close(fd);
    return absl::InvalidArgumentError(
        absl::StrCat(path, " is not a regular file"));
  }
  const size_t size = static_cast<size_t>(info.st_size);
  std::unique_ptr<Storage> storage;
  void* mapping =
      size > 0 ? mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0) : nullptr;
  if (mapping != nullptr && mapping != MAP_FAILED) {
    storage = std::make_unique<Storage>(mapping, size);
  } else {
    std::string bytes(size, '\0');
    size_t done = 0;
    while (done < size) {
      const ssize_t got = read(fd, bytes.data() + done, size - done);
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) {
        const int error = got < 0 ? errno : EIO;
        close(fd);
        return absl::ErrnoToStatus(error, absl::StrCat("cannot read ", path));
      }
      done += static_cast<size_t>(got);
    }
    storage = std::make_unique<Storage>(std::move(bytes));
  }
  close(fd);
  return Parse(std::move(storage), path);
}

absl::StatusOr<SafetensorsFile> SafetensorsFile::FromBytes(
    std::string bytes, absl::string_view source) {
  return Parse(std::make_unique<Storage>(std::move(bytes)),
               std::string(source));
}

absl::StatusOr<SafetensorsFile> SafetensorsFile::Parse(
    std::unique_ptr<Storage> storage, std::string source) {
  const absl::string_view bytes = storage->bytes();
  const auto error = [&](auto&&... parts) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": not a valid safetensors file: ", parts...));
  };
  if (bytes.size() < 8) {
    return error("it is ", bytes.size(),
                 " bytes long, shorter than the 8-byte header length");
  }
  const uint64_t header_bytes = LoadLittleEndian<uint64_t>(bytes.data());
  if (header_bytes > kMaxHeaderBytes) {
    return error("header length ", header_bytes, " exceeds the ",
                 kMaxHeaderBytes, "-byte limit");
  }
  if (header_bytes > bytes.size() - 8) {
    return error("header length ", header_bytes, " exceeds the ",
                 bytes.size() - 8, " bytes after it");
  }
  const absl::string_view header = bytes.substr(8, header_bytes);
  if (header.empty() || header[0] != '{') {
    return error("the header does not start with '{'");
  }
  HeaderChecker checker;
  if (!Json::sax_parse(header.begin(), header.end(), &checker)) {
    return error("invalid JSON header: ", checker.error());
  }
  const Json root = Json::parse(header.begin(), header.end(), nullptr, false);
  if (root.is_discarded() || !root.is_object()) {
    return error("the JSON header is not an object");
  }

  SafetensorsFile file;
  file.source_ = source;
  file.data_area_ = bytes.substr(8 + header_bytes);
  const int64_t data_bytes = static_cast<int64_t>(file.data_area_.size());
  for (const auto& [name, value] : root.items()) {
    if (name == kMetadataKey) {
      if (!value.is_object()) return error("\"__metadata__\" is not an object");
      for (const auto& [key, text] : value.items()) {
        if (!text.is_string()) {
          return error("metadata \"", key, "\" is not a string");
        }
        file.metadata_[key] = text.get<std::string>();
      }
      continue;
    }
    absl::StatusOr<SafetensorsEntry> entry =
        ParseEntry(name, value, data_bytes);
    if (!entry.ok()) return error(entry.status().message());
    file.entries_.push_back(*std::move(entry));
  }
  if (absl::Status tiling = CheckTiling(file.entries_, data_bytes);
      !tiling.ok()) {
    return error(tiling.message());
  }
  std::sort(file.entries_.begin(), file.entries_.end(),
            [](const SafetensorsEntry& a, const SafetensorsEntry& b) {
              return a.name < b.name;
            });
  file.storage_ = std::move(storage);
  return file;
}

absl::StatusOr<const SafetensorsEntry*> SafetensorsFile::Find(
    absl::string_view name) const {
  const auto it = std::lower_bound(
      entries_.begin(), entries_.end(), name,
      [](const SafetensorsEntry& entry, absl::string_view key) {
        return absl::string_view(entry.name) < key;
      });
  if (it == entries_.end() || it->name != name) {
    return absl::NotFoundError(
        absl::StrCat(source_, " has no tensor named \"", name, "\""));
  }
  return &*it;
}

absl::string_view SafetensorsFile::Bytes(const SafetensorsEntry& entry) const {
  return data_area_.substr(entry.begin, entry.NumBytes());
}

absl::StatusOr<const SafetensorsEntry*> SafetensorsFile::FindForRead(
    absl::string_view op, absl::string_view name, const Shape& shape,
    const Device& device, bool null_data) const {
  FTX_ASSIGN_OR_RETURN(const SafetensorsEntry* entry, Find(name));
  const std::string what = absl::StrCat(op, "(\"", name, "\") from ", source_);
  if (!shape.IsValid()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": out has invalid shape ", shape.ToString()));
  }
  if (device.type != DeviceType::kCpu) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": out is on ", DeviceTypeName(device.type), ", expected cpu"));
  }
  if (null_data && shape.NumElements() > 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": out has null data"));
  }
  FTX_RETURN_IF_ERROR(CheckViewMatches(what, *entry, shape));
  return entry;
}

absl::Status SafetensorsFile::ReadFloat(absl::string_view name,
                                        TensorView<float> out) const {
  FTX_ASSIGN_OR_RETURN(const SafetensorsEntry* entry,
                       FindForRead("ReadFloat", name, out.shape(), out.device(),
                                   out.data() == nullptr));
  if (!IsFloatDType(entry->dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat("ReadFloat(\"", name, "\") from ", source_, ": dtype ",
                     entry->dtype, " is not F32, F16, BF16 or F64"));
  }
  ConvertToFloat(entry->dtype, Bytes(*entry).data(), out);
  return absl::OkStatus();
}

absl::StatusOr<Tensor> SafetensorsFile::ReadFloat(
    absl::string_view name) const {
  FTX_ASSIGN_OR_RETURN(const SafetensorsEntry* entry, Find(name));
  FTX_ASSIGN_OR_RETURN(const Shape shape, entry->ToShape());
  FTX_ASSIGN_OR_RETURN(Tensor tensor, Tensor::Create(DType::kF32, shape));
  FTX_RETURN_IF_ERROR(ReadFloat(name, tensor.view<float>()));
  return tensor;
}

absl::Status SafetensorsFile::ReadInt64(absl::string_view name,
                                        TensorView<int64_t> out) const {
  FTX_ASSIGN_OR_RETURN(const SafetensorsEntry* entry,
                       FindForRead("ReadInt64", name, out.shape(), out.device(),
                                   out.data() == nullptr));
  const char* bytes = Bytes(*entry).data();
  const absl::string_view dtype = entry->dtype;
  const auto convert = [&](auto type_tag) {
    using Stored = decltype(type_tag);
    ForEachElement(out, [&](int64_t i, int64_t& value) {
      value = static_cast<int64_t>(
          LoadLittleEndian<Stored>(bytes + sizeof(Stored) * i));
    });
  };
  if (dtype == "I64") {
    convert(int64_t{});
  } else if (dtype == "I32") {
    convert(int32_t{});
  } else if (dtype == "I16") {
    convert(int16_t{});
  } else if (dtype == "I8") {
    convert(int8_t{});
  } else if (dtype == "U32") {
    convert(uint32_t{});
  } else if (dtype == "U16") {
    convert(uint16_t{});
  } else if (dtype == "U8" || dtype == "BOOL") {
    convert(uint8_t{});
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("ReadInt64(\"", name, "\") from ", source_, ": dtype ",
                     dtype, " is not I64, I32, I16, I8, U32, U16, U8 or BOOL"));
  }
  return absl::OkStatus();
}

absl::Status WriteSafetensors(
    const std::string& path,
    const std::vector<std::pair<std::string, TensorView<const float>>>& tensors,
    const SafetensorsWriteOptions& options) {
  return WriteSafetensors(path, tensors, {}, options);
}

absl::Status WriteSafetensors(
    const std::string& path,
    const std::vector<std::pair<std::string, TensorView<const float>>>& tensors,
    const std::vector<std::pair<std::string, TensorView<const int64_t>>>&
        int64_tensors,
    const SafetensorsWriteOptions& options) {
  absl::Status status =
      WriteSafetensorsImpl(path, tensors, int64_tensors, options);
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat("WriteSafetensors(", path,
                                                  "): ", status.message()));
}

absl::Status SaveParams(const std::string& path, ParamStore& store,
                        const SafetensorsWriteOptions& options) {
  std::vector<std::pair<std::string, TensorView<const float>>> tensors;
  tensors.reserve(store.NumTensors());
  store.ForEachParam([&](const ParamSlot& slot) {
    tensors.emplace_back(slot.name, slot.value);
  });
  return WriteSafetensors(path, tensors, options);
}

absl::Status LoadParams(const SafetensorsFile& file, ParamStore& store,
                        const LoadParamsOptions& options,
                        LoadParamsReport* report) {
  struct Planned {
    const SafetensorsEntry* entry;
    TensorView<float> destination;
  };
  std::vector<Planned> planned;
  std::map<std::string, std::string> source_of;  // store name -> file name
  LoadParamsReport result;
  std::vector<std::string> problems;
  for (const SafetensorsEntry& entry : file.entries()) {
    const std::optional<std::string> target =
        options.name_map ? options.name_map(entry.name)
                         : std::optional<std::string>(entry.name);
    if (!target.has_value()) continue;
    if (!store.Contains(*target)) {
      result.unexpected.push_back(entry.name);
      continue;
    }
    const auto [previous, inserted] = source_of.emplace(*target, entry.name);
    if (!inserted) {
      problems.push_back(absl::StrCat(
          "file tensors \"", previous->second, "\" and \"", entry.name,
          "\" both map to parameter \"", *target, "\""));
      continue;
    }
    const TensorView<float> destination = store.Value(*target).value();
    const std::string what =
        entry.name == *target
            ? absl::StrCat("parameter \"", entry.name, "\"")
            : absl::StrCat("tensor \"", entry.name, "\" (parameter \"", *target,
                           "\")");
    if (!IsFloatDType(entry.dtype)) {
      problems.push_back(absl::StrCat(what, " has dtype ", entry.dtype,
                                      ", expected F32, F16, BF16 or F64"));
      continue;
    }
    if (absl::Status shape = CheckViewMatches(what, entry, destination.shape());
        !shape.ok()) {
      problems.push_back(std::string(shape.message()));
      continue;
    }
    planned.push_back({&entry, destination});
    result.loaded.push_back(*target);
  }
  for (const ParamShape& param : store.shapes()) {
    if (!source_of.count(param.name)) result.missing.push_back(param.name);
  }
  if (options.strict && !result.missing.empty()) {
    problems.push_back(absl::StrCat(result.missing.size(),
                                    " parameter(s) missing from the file: ",
                                    ListFirst(result.missing, ", ")));
  }
  if (options.strict && !options.allow_unexpected &&
      !result.unexpected.empty()) {
    problems.push_back(absl::StrCat(result.unexpected.size(),
                                    " unexpected tensor(s) in the file: ",
                                    ListFirst(result.unexpected, ", ")));
  }
  if (report != nullptr) *report = result;
  if (!problems.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "LoadParams(", file.source(), "): ", ListFirst(problems, "; ")));
  }
  for (const Planned& item : planned) {
    ConvertToFloat(item.entry->dtype, file.Bytes(*item.entry).data(),
                   item.destination);
  }
  return absl::OkStatus();
}

absl::Status LoadParams(const std::string& path, ParamStore& store,
                        const LoadParamsOptions& options,
                        LoadParamsReport* report) {
  FTX_ASSIGN_OR_RETURN(const SafetensorsFile file, SafetensorsFile::Open(path));
  return LoadParams(file, store, options, report);
}

}  // namespace ftx
