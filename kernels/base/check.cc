#include "kernels/base/check.h"

#include <cstdio>
#include <exception>

namespace ftx::internal {

void CheckFailed(const char* condition, const char* file, int line) {
  std::fprintf(stderr, "%s:%d: FTX_CHECK failed: %s\n", file, line, condition);
  std::fflush(stderr);
  std::terminate();
}

}  // namespace ftx::internal
