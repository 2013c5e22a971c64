#include "kernels/base/rng.h"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/base/philox.h"

namespace ftx {
namespace {

// Known-answer vectors of Philox4x32-10 published with the Random123 library.
TEST(PhiloxTest, KnownAnswers) {
  PhiloxBlock zero = Philox4x32(0, 0, 0, 0, 0, 0);
  EXPECT_EQ(zero.word[0], 0x6627e8d5u);
  EXPECT_EQ(zero.word[1], 0xe169c58du);
  EXPECT_EQ(zero.word[2], 0xbc57ac4cu);
  EXPECT_EQ(zero.word[3], 0x9b00dbd8u);
  PhiloxBlock ones = Philox4x32(0xffffffffu, 0xffffffffu, 0xffffffffu,
                                0xffffffffu, 0xffffffffu, 0xffffffffu);
  EXPECT_EQ(ones.word[0], 0x408f276du);
  EXPECT_EQ(ones.word[1], 0x41c83b0eu);
  EXPECT_EQ(ones.word[2], 0xa20bc7c6u);
  EXPECT_EQ(ones.word[3], 0x6d5451fdu);
}

TEST(RngTest, SameSeedSameNumbersAnyThreadCount) {
  std::vector<float> one(10000), two(10000);
  auto ctx1 = Context::Create({.num_threads = 1});
  auto ctx2 = Context::Create({.num_threads = 2});
  ASSERT_TRUE(ctx1.ok() && ctx2.ok());
  RandomOptions options{.seed = 42, .stream = 7};
  ASSERT_TRUE(
      FillNormal(**ctx1, TensorView<float>(one.data(), {10000}), 0, 1, options)
          .ok());
  ASSERT_TRUE(
      FillNormal(**ctx2, TensorView<float>(two.data(), {10000}), 0, 1, options)
          .ok());
  EXPECT_EQ(one, two);
  // Continuing with an offset reproduces the tail.
  std::vector<float> tail(100);
  options.offset = 9900;
  ASSERT_TRUE(
      FillNormal(**ctx2, TensorView<float>(tail.data(), {100}), 0, 1, options)
          .ok());
  for (int i = 0; i < 100; ++i) EXPECT_EQ(tail[i], one[9900 + i]);
}

TEST(RngTest, MomentsMatchDistributions) {
  constexpr int kCount = 200000;
  std::vector<float> u(kCount), n(kCount);
  auto ctx = Context::Create({.num_threads = 2});
  ASSERT_TRUE(ctx.ok());
  ASSERT_TRUE(FillUniform(**ctx, TensorView<float>(u.data(), {kCount}), -1, 3,
                          {.seed = 1})
                  .ok());
  ASSERT_TRUE(FillNormal(**ctx, TensorView<float>(n.data(), {kCount}), 0.5, 2,
                         {.seed = 1})
                  .ok());
  double u_sum = 0, n_sum = 0, n_sq = 0;
  for (int i = 0; i < kCount; ++i) {
    ASSERT_GE(u[i], -1.0f);
    ASSERT_LT(u[i], 3.0f);
    u_sum += u[i];
    n_sum += n[i];
    n_sq += (n[i] - 0.5) * (n[i] - 0.5);
  }
  // Standard errors: uniform mean 1.15/sqrt(N) ~ 0.0026, normal mean 2/sqrt(N)
  // ~ 0.0045.
  EXPECT_NEAR(u_sum / kCount, 1.0, 0.015);
  EXPECT_NEAR(n_sum / kCount, 0.5, 0.025);
  EXPECT_NEAR(std::sqrt(n_sq / kCount), 2.0, 0.02);
}

TEST(RngTest, DifferentStreamsDiffer) {
  EXPECT_NE(RandomBits(3, 0, 5), RandomBits(3, 1, 5));
  EXPECT_NE(RandomBits(3, 0, 5), RandomBits(4, 0, 5));
}

TEST(RngTest, RejectsStridedOutput) {
  std::vector<float> data(12);
  auto ctx = Context::Create({.num_threads = 1});
  ASSERT_TRUE(ctx.ok());
  TensorView<float> strided =
      TensorView<float>(data.data(), {3, 4}).Slice(1, 0, 2);
  absl::Status status = FillUniform(**ctx, strided, 0, 1, {});
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("contiguous"), std::string::npos);
}

}  // namespace
}  // namespace ftx
