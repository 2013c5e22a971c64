// Seeded random test data from the Philox stream (independent of std::
// distributions, so the same seed gives the same data on every platform).
#ifndef FTX_TESTS_UTIL_RANDOM_H_
#define FTX_TESTS_UTIL_RANDOM_H_

#include <cstdint>
#include <vector>

#include "kernels/base/philox.h"
#include "kernels/base/rng.h"

namespace ftx::testing {

// n values uniform in [low, high).
template <typename T = float>
std::vector<T> RandomUniformVector(int64_t n, uint64_t seed, double low = -1.0,
                                   double high = 1.0) {
  std::vector<T> values(n);
  for (int64_t i = 0; i < n; ++i) {
    values[i] =
        static_cast<T>(low + (high - low) * RandomUniform(seed, 0xC0FFEE, i));
  }
  return values;
}

// n values from N(mean, stddev^2).
template <typename T = float>
std::vector<T> RandomNormalVector(int64_t n, uint64_t seed, double mean = 0.0,
                                  double stddev = 1.0) {
  std::vector<T> values(n);
  for (int64_t i = 0; i < n; ++i) {
    values[i] = static_cast<T>(mean + stddev * RandomNormal(seed, 0xBEEF, i));
  }
  return values;
}

template <typename To, typename From>
std::vector<To> Cast(const std::vector<From>& values) {
  return std::vector<To>(values.begin(), values.end());
}

}  // namespace ftx::testing

#endif  // FTX_TESTS_UTIL_RANDOM_H_
