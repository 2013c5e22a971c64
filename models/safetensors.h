// Safetensors: reading and writing Hugging Face's weights format
// (https://huggingface.co/docs/safetensors), the format in which ftx parameters
// and test fixtures move to and from PyTorch.
//
// File layout:
//   u64 little-endian N | N bytes of UTF-8 JSON header | data area
//   header: {"__metadata__": {"key": "value", ...},
//            "<name>": {"dtype": "F32", "shape": [2, 3],
//                       "data_offsets": [begin, end]}, ...}
// Offsets are bytes relative to the start of the data area; elements are
// little-endian and row-major.
//
// Reading accepts what the reference reader (Rust `safetensors` 0.8) accepts:
// header length at most 100 MB, header starting with '{', every dtype of the
// format (F64 F32 F16 BF16 F8_* F6_* F4 C64 I64 I32 I16 I8 U64 U32 U16 U8
// BOOL), non-negative dimensions, end - begin == bytes of product(shape)
// elements, and tensors that tile the data area exactly: sorted by offset each
// begins where the previous one ended and the last ends at the end of the file,
// so overlaps, gaps and trailing bytes are all errors. Stricter than the
// reference: duplicate keys anywhere in the header are errors (JSON readers
// would keep one silently), and the header may nest at most three levels deep.
// Any violation is an InvalidArgument naming the file and the problem; nothing
// is read out of bounds. The file is memory-mapped (read into memory where mmap
// fails), so it must not be truncated while a SafetensorsFile is open on it.
//
// Writing follows the reference writer's layout (a header padded with spaces
// to a multiple of 8 bytes, "__metadata__" only when there is metadata) and
// packs the tensors in the order given.
//
// Example:
//   FTX_ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::Open(path));
//   FTX_ASSIGN_OR_RETURN(Tensor q, file.ReadFloat("q"));        // [N, L, H, E]
//   FTX_RETURN_IF_ERROR(LoadParams(path, store));
#ifndef FTX_MODELS_SAFETENSORS_H_
#define FTX_MODELS_SAFETENSORS_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kernels/base/tensor.h"
#include "models/param_store.h"

namespace ftx {

// One tensor of a safetensors file, as its header describes it.
struct SafetensorsEntry {
  std::string name;
  std::string dtype;           // the format's name: "F32", "BF16", "I64", ...
  std::vector<int64_t> shape;  // any rank; {} is a scalar
  int64_t begin = 0;           // bytes [begin, end) of the data area
  int64_t end = 0;

  int64_t NumElements() const;
  int64_t NumBytes() const { return end - begin; }
  // "[2, 3]".
  std::string ShapeString() const;
  // The shape as an ftx Shape; InvalidArgument above rank 4.
  absl::StatusOr<Shape> ToShape() const;
};

// A validated, read-only safetensors file. Move-only; entries and views of the
// data stay valid while the object lives.
class SafetensorsFile {
 public:
  static absl::StatusOr<SafetensorsFile> Open(const std::string& path);
  // Parses a whole file held in memory; `source` names it in error messages.
  static absl::StatusOr<SafetensorsFile> FromBytes(std::string bytes,
                                                   absl::string_view source);

  SafetensorsFile(SafetensorsFile&&) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept;
  ~SafetensorsFile();

  const std::string& source() const { return source_; }
  // Sorted by name.
  const std::vector<SafetensorsEntry>& entries() const { return entries_; }
  const std::map<std::string, std::string>& metadata() const {
    return metadata_;
  }
  // NotFound naming the tensor and the file.
  absl::StatusOr<const SafetensorsEntry*> Find(absl::string_view name) const;
  // The tensor's stored bytes (little-endian, row-major).
  absl::string_view Bytes(const SafetensorsEntry& entry) const;

  // Converts F32, F16, BF16 or F64 to float32 into `out` (CPU, any strides),
  // whose shape must equal the tensor's. F64 rounds to nearest.
  absl::Status ReadFloat(absl::string_view name, TensorView<float> out) const;
  // The same into a new float32 tensor of the stored shape (rank <= 4).
  absl::StatusOr<Tensor> ReadFloat(absl::string_view name) const;
  // Converts I64, I32, I16, I8, U32, U16, U8 or BOOL to int64 into `out`.
  absl::Status ReadInt64(absl::string_view name, TensorView<int64_t> out) const;

 private:
  class Storage;
  SafetensorsFile() = default;
  static absl::StatusOr<SafetensorsFile> Parse(std::unique_ptr<Storage> storage,
                                               std::string source);
  absl::StatusOr<const SafetensorsEntry*> FindForRead(absl::string_view op,
                                                      absl::string_view name,
                                                      const Shape& shape,
                                                      const Device& device,
                                                      bool null_data) const;

  std::unique_ptr<Storage> storage_;
  std::string source_;
  absl::string_view data_area_;
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, std::string> metadata_;
};

struct SafetensorsWriteOptions {
  // Stored element type: kF32, kF16 or kBF16 (round to nearest even).
  DType dtype = DType::kF32;
  std::map<std::string, std::string> metadata;
};

// Writes `tensors` (CPU views, any strides; unique, non-empty UTF-8 names) to
// `path` atomically: a temporary file in the same directory is written,
// fsynced and renamed over `path`, so on any error `path` is untouched and no
// temporary file remains. New files get mode 0644.
absl::Status WriteSafetensors(
    const std::string& path,
    const std::vector<std::pair<std::string, TensorView<const float>>>& tensors,
    const SafetensorsWriteOptions& options = {});
// The same plus integer tensors, stored as I64 after the float ones (buffers
// such as counters; names unique across both lists).
absl::Status WriteSafetensors(
    const std::string& path,
    const std::vector<std::pair<std::string, TensorView<const float>>>& tensors,
    const std::vector<std::pair<std::string, TensorView<const int64_t>>>&
        int64_tensors,
    const SafetensorsWriteOptions& options = {});

// Writes every parameter value of `store` under its name, in ForEachParam
// order.
absl::Status SaveParams(const std::string& path, ParamStore& store,
                        const SafetensorsWriteOptions& options = {});

struct LoadParamsOptions {
  // Maps a file tensor name to a store parameter name; std::nullopt skips the
  // tensor. Empty: names are used unchanged.
  std::function<std::optional<std::string>(absl::string_view)> name_map;
  // As PyTorch's load_state_dict(strict=True): every store parameter must be
  // in the file and every (mapped, not skipped) file tensor must be a store
  // parameter, unless allow_unexpected. Not strict: both are reported only.
  bool strict = true;
  bool allow_unexpected = false;
};

// What a load did (filled on error too). Store names in loaded and missing,
// file names in unexpected.
struct LoadParamsReport {
  std::vector<std::string> loaded;
  std::vector<std::string> missing;
  std::vector<std::string> unexpected;
};

// Copies the file's float tensors (F32, F16, BF16, F64) into the store's
// values. Everything is checked before anything is written, so on error the
// store is unchanged; the error lists the first missing and unexpected names,
// names mapped twice, non-float dtypes and shape mismatches with both shapes.
absl::Status LoadParams(const SafetensorsFile& file, ParamStore& store,
                        const LoadParamsOptions& options = {},
                        LoadParamsReport* report = nullptr);
absl::Status LoadParams(const std::string& path, ParamStore& store,
                        const LoadParamsOptions& options = {},
                        LoadParamsReport* report = nullptr);

}  // namespace ftx

#endif  // FTX_MODELS_SAFETENSORS_H_
