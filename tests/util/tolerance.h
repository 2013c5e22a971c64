// One tolerance helper for every test: element i passes when
//   |actual[i] - expected[i]| <= abs + rel * |expected[i]|,
// NaN matches only NaN and infinities must match exactly. On failure the
// message gives the number of mismatches, the worst index (largest excess over
// the bound) and its values, like llm.c's check_tensor.
//
// Example:
//   EXPECT_TRUE(AllNear(out, expected, n, {.abs = 1e-5, .rel = 1e-5}));
#ifndef FTX_TESTS_UTIL_TOLERANCE_H_
#define FTX_TESTS_UTIL_TOLERANCE_H_

#include <cmath>
#include <cstdint>
#include <sstream>
#include <vector>

#include "gtest/gtest.h"

namespace ftx::testing {

struct Tolerance {
  double abs = 1e-5;
  double rel = 1e-5;
};

template <typename A, typename E>
::testing::AssertionResult AllNear(const A* actual, const E* expected,
                                   int64_t n, Tolerance tolerance = {}) {
  int64_t mismatches = 0;
  int64_t worst = -1;
  double worst_excess = -1.0;
  for (int64_t i = 0; i < n; ++i) {
    const double a = static_cast<double>(actual[i]);
    const double e = static_cast<double>(expected[i]);
    double excess;
    if (std::isnan(e) || std::isnan(a)) {
      excess = (std::isnan(e) && std::isnan(a)) ? 0.0 : INFINITY;
    } else if (std::isinf(e) || std::isinf(a)) {
      excess = (a == e) ? 0.0 : INFINITY;
    } else {
      excess =
          std::fabs(a - e) - (tolerance.abs + tolerance.rel * std::fabs(e));
    }
    if (excess > 0) {
      ++mismatches;
      if (excess > worst_excess) {
        worst_excess = excess;
        worst = i;
      }
    }
  }
  if (mismatches == 0) return ::testing::AssertionSuccess();
  std::ostringstream message;
  message.precision(9);
  message << mismatches << " of " << n << " elements differ beyond abs "
          << tolerance.abs << " + rel " << tolerance.rel << "; worst at index "
          << worst << ": actual " << static_cast<double>(actual[worst])
          << ", expected " << static_cast<double>(expected[worst])
          << " (difference "
          << std::fabs(static_cast<double>(actual[worst]) -
                       static_cast<double>(expected[worst]))
          << ")";
  return ::testing::AssertionFailure() << message.str();
}

template <typename A, typename E>
::testing::AssertionResult AllNear(const std::vector<A>& actual,
                                   const std::vector<E>& expected,
                                   Tolerance tolerance = {}) {
  if (actual.size() != expected.size()) {
    return ::testing::AssertionFailure()
           << "sizes differ: actual " << actual.size() << ", expected "
           << expected.size();
  }
  return AllNear(actual.data(), expected.data(),
                 static_cast<int64_t>(actual.size()), tolerance);
}

// Normalised mean squared error sum((a-e)^2) / sum(e^2), for long reductions.
template <typename A, typename E>
double Nmse(const A* actual, const E* expected, int64_t n) {
  double error = 0, norm = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double d =
        static_cast<double>(actual[i]) - static_cast<double>(expected[i]);
    error += d * d;
    norm += static_cast<double>(expected[i]) * static_cast<double>(expected[i]);
  }
  return norm == 0 ? error : error / norm;
}

}  // namespace ftx::testing

#endif  // FTX_TESTS_UTIL_TOLERANCE_H_
