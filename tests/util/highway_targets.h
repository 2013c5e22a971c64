// Runs a test body once per Highway target that the CPU supports and the
// kernels were compiled for, so dynamic dispatch reaches every SIMD variant
// (AVX3_DL, AVX3, AVX2, SSE4, SSSE3, EMU128 on x86). Failures name the target.
//
// Example:
//   ForEachHighwayTarget([&] { ExpectSoftmaxMatchesReference(...); });
#ifndef FTX_TESTS_UTIL_HIGHWAY_TARGETS_H_
#define FTX_TESTS_UTIL_HIGHWAY_TARGETS_H_

#include <cstdint>
#include <cstdio>
#include <functional>
#include <vector>

#include "gtest/gtest.h"
#include "hwy/targets.h"

namespace ftx::testing {

inline void ForEachHighwayTarget(const std::function<void()>& body) {
  const std::vector<int64_t> targets = hwy::SupportedAndGeneratedTargets();
  ASSERT_FALSE(targets.empty());
  static bool listed = false;
  if (!listed) {
    listed = true;
    std::printf("Highway targets under test:");
    for (int64_t target : targets) std::printf(" %s", hwy::TargetName(target));
    std::printf("\n");
  }
  for (int64_t target : targets) {
    hwy::SetSupportedTargetsForTest(target);
    SCOPED_TRACE(::testing::Message()
                 << "Highway target " << hwy::TargetName(target));
    body();
  }
  hwy::SetSupportedTargetsForTest(0);
}

}  // namespace ftx::testing

#endif  // FTX_TESTS_UTIL_HIGHWAY_TARGETS_H_
