// The test helpers must fail when they should: a checker that cannot fail tests
// nothing.
#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "tests/util/gradcheck.h"
#include "tests/util/random.h"
#include "tests/util/tolerance.h"

namespace ftx::testing {
namespace {

TEST(ToleranceTest, ReportsWorstIndexAndCount) {
  std::vector<float> expected = {1, 2, 3, 4};
  std::vector<float> actual = {1, 2.5f, 3, 4.1f};
  ::testing::AssertionResult result = AllNear(actual, expected, {1e-3, 0});
  ASSERT_FALSE(result);
  const std::string message = result.message();
  EXPECT_NE(message.find("2 of 4"), std::string::npos) << message;
  EXPECT_NE(message.find("index 1"), std::string::npos) << message;
  EXPECT_TRUE(AllNear(actual, expected, {0.51, 0}));
}

TEST(ToleranceTest, NanAndInfinityRules) {
  std::vector<double> nan = {NAN}, one = {1.0}, inf = {INFINITY};
  EXPECT_TRUE(AllNear(nan, nan));
  EXPECT_FALSE(AllNear(nan, one, {1e9, 1e9}));
  EXPECT_TRUE(AllNear(inf, inf));
  EXPECT_FALSE(AllNear(one, inf, {1e9, 1e9}));
}

TEST(GradcheckTest, AcceptsRightGradientRejectsWrongOne) {
  // L(x) = sum sin(x_i) * x_{i+1}.
  auto loss = [](const std::vector<double>& x) {
    double sum = 0;
    for (size_t i = 0; i + 1 < x.size(); ++i) sum += std::sin(x[i]) * x[i + 1];
    return sum;
  };
  std::vector<double> x = RandomUniformVector<double>(6, 3);
  std::vector<double> right(6, 0.0);
  for (size_t i = 0; i + 1 < x.size(); ++i) {
    right[i] += std::cos(x[i]) * x[i + 1];
    right[i + 1] += std::sin(x[i]);
  }
  EXPECT_TRUE(GradientMatches(loss, x, right));
  std::vector<double> wrong = right;
  wrong[2] += 1e-3;
  EXPECT_FALSE(GradientMatches(loss, x, wrong));
}

TEST(RandomTest, SeededAndInRange) {
  auto a = RandomUniformVector(1000, 5, -2, 2);
  auto b = RandomUniformVector(1000, 5, -2, 2);
  auto c = RandomUniformVector(1000, 6, -2, 2);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  for (float v : a) {
    EXPECT_GE(v, -2);
    EXPECT_LT(v, 2);
  }
}

}  // namespace
}  // namespace ftx::testing
