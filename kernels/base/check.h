// Always-on checks for programmer invariants (never for user input: that gets
// an absl::Status). A failed FTX_CHECK prints the condition and location and
// terminates. FTX_DCHECK is compiled out in optimised builds unless
// FTX_ENABLE_DCHECK is defined.
#ifndef FTX_KERNELS_BASE_CHECK_H_
#define FTX_KERNELS_BASE_CHECK_H_

namespace ftx::internal {

[[noreturn]] void CheckFailed(const char* condition, const char* file,
                              int line);

}  // namespace ftx::internal

#define FTX_CHECK(condition)                                        \
  do {                                                              \
    if (!(condition)) {                                             \
      ::ftx::internal::CheckFailed(#condition, __FILE__, __LINE__); \
    }                                                               \
  } while (false)

#if !defined(NDEBUG) || defined(FTX_ENABLE_DCHECK)
#define FTX_DCHECK(condition) FTX_CHECK(condition)
#else
#define FTX_DCHECK(condition) \
  do {                        \
  } while (false && (condition))
#endif

#endif  // FTX_KERNELS_BASE_CHECK_H_
