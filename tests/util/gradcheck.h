// Central-difference gradient checks in double precision.
//
// For f: R^n -> R^m and a fixed cotangent w, the scalar loss L(x) = <w, f(x)>
// has dL/dx_i ~ (L(x + h e_i) - L(x - h e_i)) / 2h with error O(h^2). A
// backward pass (vector-Jacobian product) is correct when its result matches
// that for every i.
//
// Example:
//   auto loss = [&](const std::vector<double>& x) { return Dot(w, Forward(x));
//   }; EXPECT_TRUE(GradientMatches(loss, x, analytic_dx));
#ifndef FTX_TESTS_UTIL_GRADCHECK_H_
#define FTX_TESTS_UTIL_GRADCHECK_H_

#include <functional>
#include <vector>

#include "gtest/gtest.h"
#include "tests/util/tolerance.h"

namespace ftx::testing {

using ScalarFunction = std::function<double(const std::vector<double>&)>;

// dL/dx by central differences with step h.
inline std::vector<double> NumericGradient(const ScalarFunction& loss,
                                           std::vector<double> x,
                                           double h = 1e-6) {
  std::vector<double> gradient(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double saved = x[i];
    x[i] = saved + h;
    const double plus = loss(x);
    x[i] = saved - h;
    const double minus = loss(x);
    x[i] = saved;
    gradient[i] = (plus - minus) / (2 * h);
  }
  return gradient;
}

// Compares an analytic gradient with central differences of `loss` at `x`.
inline ::testing::AssertionResult GradientMatches(
    const ScalarFunction& loss, const std::vector<double>& x,
    const std::vector<double>& analytic, Tolerance tolerance = {1e-6, 1e-5},
    double h = 1e-6) {
  const std::vector<double> numeric = NumericGradient(loss, x, h);
  return AllNear(analytic, numeric, tolerance);
}

inline double Dot(const std::vector<double>& a, const std::vector<double>& b) {
  double sum = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) sum += a[i] * b[i];
  return sum;
}

}  // namespace ftx::testing

#endif  // FTX_TESTS_UTIL_GRADCHECK_H_
