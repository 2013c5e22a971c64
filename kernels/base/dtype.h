// Runtime element types and the conversions between them.
//
// ftx computes in float32 on the CPU; bfloat16 and float16 are storage types
// (weights files, GPU tensors). Conversions round to nearest even, as PyTorch
// does.
#ifndef FTX_KERNELS_BASE_DTYPE_H_
#define FTX_KERNELS_BASE_DTYPE_H_

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace ftx {

enum class DType : uint8_t { kF32, kF64, kBF16, kF16, kI32, kI64 };

// Storage for one bfloat16 / float16 value (bit pattern only).
struct BFloat16 {
  uint16_t bits;
};
struct Float16 {
  uint16_t bits;
};

constexpr size_t SizeOf(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return 4;
    case DType::kF64:
      return 8;
    case DType::kBF16:
      return 2;
    case DType::kF16:
      return 2;
    case DType::kI32:
      return 4;
    case DType::kI64:
      return 8;
  }
  return 0;
}

constexpr const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "f32";
    case DType::kF64:
      return "f64";
    case DType::kBF16:
      return "bf16";
    case DType::kF16:
      return "f16";
    case DType::kI32:
      return "i32";
    case DType::kI64:
      return "i64";
  }
  return "?";
}

// DTypeOf<T>() maps a C++ element type to its DType.
template <typename T>
constexpr DType DTypeOf();
template <>
constexpr DType DTypeOf<float>() {
  return DType::kF32;
}
template <>
constexpr DType DTypeOf<double>() {
  return DType::kF64;
}
template <>
constexpr DType DTypeOf<BFloat16>() {
  return DType::kBF16;
}
template <>
constexpr DType DTypeOf<Float16>() {
  return DType::kF16;
}
template <>
constexpr DType DTypeOf<int32_t>() {
  return DType::kI32;
}
template <>
constexpr DType DTypeOf<int64_t>() {
  return DType::kI64;
}

inline uint32_t FloatBits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
}

inline float FloatFromBits(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

// float32 -> bfloat16, round to nearest even; NaN stays NaN.
inline BFloat16 ToBFloat16(float value) {
  const uint32_t bits = FloatBits(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u) {
    return BFloat16{static_cast<uint16_t>((bits >> 16) | 0x40u)};
  }
  const uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return BFloat16{static_cast<uint16_t>((bits + rounding) >> 16)};
}

inline float FromBFloat16(BFloat16 value) {
  return FloatFromBits(static_cast<uint32_t>(value.bits) << 16);
}

// IEEE half -> float32 (exact).
inline float FromFloat16(Float16 value) {
  const uint32_t sign = (value.bits & 0x8000u) << 16;
  const uint32_t exponent = (value.bits >> 10) & 0x1fu;
  uint32_t mantissa = value.bits & 0x3ffu;
  if (exponent == 0) {
    if (mantissa == 0) return FloatFromBits(sign);
    // Subnormal: value = mantissa * 2^-24.
    const float magnitude =
        static_cast<float>(mantissa) * 5.9604644775390625e-8f;
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 31) {
    return FloatFromBits(sign | 0x7f800000u | (mantissa << 13));
  }
  return FloatFromBits(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

// float32 -> IEEE half, round to nearest even, overflow to infinity.
inline Float16 ToFloat16(float value) {
  const uint32_t bits = FloatBits(value);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t abs_bits = bits & 0x7fffffffu;
  if (abs_bits > 0x7f800000u)
    return Float16{static_cast<uint16_t>(sign | 0x7e00u)};
  if (abs_bits >= 0x477ff000u)
    return Float16{static_cast<uint16_t>(sign | 0x7c00u)};
  if (abs_bits < 0x38800000u) {
    // Result is subnormal (or zero): scale so that one unit is 2^-24 and round.
    const float magnitude = FloatFromBits(abs_bits) * 16777216.0f;
    const float rounded = __builtin_nearbyintf(magnitude);
    return Float16{
        static_cast<uint16_t>(sign | static_cast<uint16_t>(rounded))};
  }
  const uint32_t rounding = 0xfffu + ((abs_bits >> 13) & 1u);
  const uint32_t rebased = abs_bits - (112u << 23) + rounding;
  return Float16{static_cast<uint16_t>(sign | (rebased >> 13))};
}

}  // namespace ftx

#endif  // FTX_KERNELS_BASE_DTYPE_H_
