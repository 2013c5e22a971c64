// Dropout: drop rate and scaling, determinism in (seed, stream, offset),
// offsets continue a stream, backward = the same mask on the gradient, bad
// inputs.
#include "kernels/dropout/dropout.h"

#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "tests/util/random.h"

namespace ftx {
namespace {

TEST(DropoutTest, DropsAboutPAndScalesTheRest) {
  auto ctx = Context::Create({.num_threads = 2}).value();
  constexpr int64_t kCount = 100000;
  const std::vector<float> x =
      testing::RandomUniformVector(kCount, 1, 0.5, 1.5);
  std::vector<float> y(kCount);
  const DropoutOptions options{.p = 0.3f, .seed = 9, .stream = 4};
  ASSERT_TRUE(Dropout(*ctx, options,
                      TensorView<const float>(x.data(), {kCount}),
                      TensorView<float>(y.data(), {kCount}))
                  .ok());
  int64_t dropped = 0;
  for (int64_t i = 0; i < kCount; ++i) {
    if (y[i] == 0.0f) {
      ++dropped;
      EXPECT_FALSE(DropoutKeeps(options, i));
    } else {
      EXPECT_FLOAT_EQ(y[i], x[i] / 0.7f);
      EXPECT_TRUE(DropoutKeeps(options, i));
    }
  }
  // Binomial standard deviation: sqrt(0.21 / 1e5) ~ 0.0015.
  EXPECT_NEAR(static_cast<double>(dropped) / kCount, 0.3, 0.008);
}

TEST(DropoutTest, MaskIsAFunctionOfSeedStreamAndIndex) {
  auto one = Context::Create({.num_threads = 1}).value();
  auto two = Context::Create({.num_threads = 2}).value();
  const std::vector<float> x(5000, 1.0f);
  std::vector<float> a(5000), b(5000), c(5000), tail(1000);
  const DropoutOptions options{.p = 0.5f, .seed = 3, .stream = 1};
  ASSERT_TRUE(Dropout(*one, options, TensorView<const float>(x.data(), {5000}),
                      TensorView<float>(a.data(), {5000}))
                  .ok());
  ASSERT_TRUE(Dropout(*two, options, TensorView<const float>(x.data(), {5000}),
                      TensorView<float>(b.data(), {5000}))
                  .ok());
  EXPECT_EQ(a, b);
  DropoutOptions other_stream = options;
  other_stream.stream = 2;
  ASSERT_TRUE(Dropout(*two, other_stream,
                      TensorView<const float>(x.data(), {5000}),
                      TensorView<float>(c.data(), {5000}))
                  .ok());
  EXPECT_NE(a, c);
  DropoutOptions continued = options;
  continued.offset = 4000;
  ASSERT_TRUE(Dropout(*two, continued,
                      TensorView<const float>(x.data(), {1000}),
                      TensorView<float>(tail.data(), {1000}))
                  .ok());
  for (int i = 0; i < 1000; ++i) EXPECT_EQ(tail[i], a[4000 + i]);
}

TEST(DropoutTest, BadInputsAreErrors) {
  auto ctx = Context::Create({.num_threads = 1}).value();
  std::vector<float> buffer(8);
  EXPECT_EQ(
      Dropout(*ctx, {.p = 1.0f}, TensorView<const float>(buffer.data(), {8}),
              TensorView<float>(buffer.data(), {8}))
          .code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      Dropout(*ctx, {.p = 0.1f}, TensorView<const float>(buffer.data(), {8}),
              TensorView<float>(buffer.data(), {4, 2}))
          .code(),
      absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ftx
