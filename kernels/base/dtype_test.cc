#include "kernels/base/dtype.h"

#include <cmath>
#include <limits>

#include "gtest/gtest.h"

namespace ftx {
namespace {

TEST(DTypeTest, BFloat16RoundsToNearestEven) {
  EXPECT_EQ(ToBFloat16(1.0f).bits, 0x3f80);
  // 1 + 2^-8 is exactly halfway between two bf16 values: ties go to even (1.0).
  EXPECT_EQ(ToBFloat16(1.00390625f).bits, 0x3f80);
  // 1 + 3 * 2^-8 ties up to the even neighbour 1 + 2^-6.
  EXPECT_EQ(ToBFloat16(1.01171875f).bits, 0x3f82);
  EXPECT_TRUE(std::isnan(FromBFloat16(ToBFloat16(std::nanf("")))));
  EXPECT_EQ(FromBFloat16(ToBFloat16(-2.5f)), -2.5f);
}

TEST(DTypeTest, Float16RoundTripsRepresentableValues) {
  for (float value : {0.0f, -0.0f, 1.0f, -2.5f, 65504.0f, 6.103515625e-05f,
                      5.9604644775390625e-08f, 0.333251953125f}) {
    EXPECT_EQ(FromFloat16(ToFloat16(value)), value) << value;
  }
  EXPECT_EQ(ToFloat16(1.0f).bits, 0x3c00);
  EXPECT_EQ(ToFloat16(70000.0f).bits, 0x7c00);  // overflow to +inf
  EXPECT_TRUE(std::isinf(FromFloat16(Float16{0xfc00})));
  EXPECT_TRUE(std::isnan(FromFloat16(ToFloat16(std::nanf("")))));
  // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties to even (1.0).
  EXPECT_EQ(ToFloat16(1.00048828125f).bits, 0x3c00);
}

TEST(DTypeTest, Float16ExhaustiveRoundTrip) {
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    const Float16 half{static_cast<uint16_t>(bits)};
    const float value = FromFloat16(half);
    if (std::isnan(value)) continue;
    EXPECT_EQ(ToFloat16(value).bits, half.bits) << std::hex << bits;
  }
}

}  // namespace
}  // namespace ftx
