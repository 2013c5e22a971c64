#include "models/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"

namespace ftx {

AtomicFileWriter::~AtomicFileWriter() {
  if (fd_ >= 0) close(fd_);
  if (!temp_path_.empty() && !committed_) unlink(temp_path_.c_str());
}

std::string AtomicFileWriter::Directory() const {
  const size_t slash = path_.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path_.substr(0, slash);
}

absl::Status AtomicFileWriter::Open() {
  std::string pattern = absl::StrCat(path_, ".tmp-");
  pattern.append(6, 'X');  // mkostemp's placeholder
  const int fd = mkostemp(pattern.data(), O_CLOEXEC);
  if (fd < 0) {
    return absl::ErrnoToStatus(
        errno, absl::StrCat("cannot create a temporary file in ", Directory()));
  }
  fd_ = fd;
  temp_path_ = pattern;
  if (fchmod(fd_, 0644) != 0) {
    return absl::ErrnoToStatus(errno, "cannot set the file mode");
  }
  return absl::OkStatus();
}

absl::Status AtomicFileWriter::Write(absl::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t written = write(fd_, bytes.data(), bytes.size());
    if (written < 0) {
      if (errno == EINTR) continue;
      return absl::ErrnoToStatus(
          errno, absl::StrCat("write to ", temp_path_, " failed"));
    }
    bytes.remove_prefix(static_cast<size_t>(written));
  }
  return absl::OkStatus();
}

absl::Status AtomicFileWriter::Commit() {
  if (fsync(fd_) != 0) return absl::ErrnoToStatus(errno, "fsync failed");
  const int fd = fd_;
  fd_ = -1;
  if (close(fd) != 0) return absl::ErrnoToStatus(errno, "close failed");
  if (rename(temp_path_.c_str(), path_.c_str()) != 0) {
    return absl::ErrnoToStatus(
        errno, absl::StrCat("cannot rename the temporary file over ", path_));
  }
  committed_ = true;
  // Make the rename itself durable; the file is complete either way.
  const int directory =
      open(Directory().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (directory >= 0) {
    fsync(directory);
    close(directory);
  }
  return absl::OkStatus();
}

absl::Status WriteFileAtomically(const std::string& path,
                                 absl::string_view contents) {
  AtomicFileWriter file(path);
  FTX_RETURN_IF_ERROR(file.Open());
  FTX_RETURN_IF_ERROR(file.Write(contents));
  return file.Commit();
}

}  // namespace ftx
