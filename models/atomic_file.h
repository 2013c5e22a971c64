// Atomic file writes: bytes go to a temporary file beside the target, which is
// fsynced and renamed over it (and the directory fsynced), so the target is
// always either the complete old file or the complete new one, never
// half-written.
//
// Example:
//   FTX_RETURN_IF_ERROR(WriteFileAtomically(path, json_text));
#ifndef FTX_MODELS_ATOMIC_FILE_H_
#define FTX_MODELS_ATOMIC_FILE_H_

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace ftx {

// Streams bytes to a temporary file beside `path` and renames it over `path` on
// Commit; the destructor removes the temporary file unless committed.
class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(const std::string& path) : path_(path) {}
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;
  ~AtomicFileWriter();

  absl::Status Open();
  absl::Status Write(absl::string_view bytes);
  absl::Status Commit();

 private:
  std::string Directory() const;

  std::string path_;
  std::string temp_path_;
  int fd_ = -1;
  bool committed_ = false;
};

// The whole of `contents` written to `path` through an AtomicFileWriter.
absl::Status WriteFileAtomically(const std::string& path,
                                 absl::string_view contents);

}  // namespace ftx

#endif  // FTX_MODELS_ATOMIC_FILE_H_
