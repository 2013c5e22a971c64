// Counter-based random numbers: Philox4x32-10 (Salmon et al., "Parallel Random
// Numbers: As Easy as 1, 2, 3", SC 2011). Header-only and usable from CUDA
// device code, so CPU and GPU produce the same stream: element `index` of
// (seed, stream) is a pure function of those three numbers, independent of
// thread count or launch shape.
#ifndef FTX_KERNELS_BASE_PHILOX_H_
#define FTX_KERNELS_BASE_PHILOX_H_

#include <cstdint>

#if defined(__CUDACC__)
#define FTX_HOST_DEVICE __host__ __device__
#else
#define FTX_HOST_DEVICE
#endif

namespace ftx {

struct PhiloxBlock {
  uint32_t word[4];
};

// One Philox4x32 block: 10 rounds over `counter` with key (key0, key1).
FTX_HOST_DEVICE inline PhiloxBlock Philox4x32(uint32_t c0, uint32_t c1,
                                              uint32_t c2, uint32_t c3,
                                              uint32_t key0, uint32_t key1) {
  constexpr uint32_t kMultiplier0 = 0xD2511F53u;
  constexpr uint32_t kMultiplier1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u;
  constexpr uint32_t kWeyl1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    const uint64_t product0 = static_cast<uint64_t>(kMultiplier0) * c0;
    const uint64_t product1 = static_cast<uint64_t>(kMultiplier1) * c2;
    const uint32_t hi0 = static_cast<uint32_t>(product0 >> 32);
    const uint32_t lo0 = static_cast<uint32_t>(product0);
    const uint32_t hi1 = static_cast<uint32_t>(product1 >> 32);
    const uint32_t lo1 = static_cast<uint32_t>(product1);
    c0 = hi1 ^ c1 ^ key0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ key1;
    c3 = lo0;
    key0 += kWeyl0;
    key1 += kWeyl1;
  }
  return PhiloxBlock{{c0, c1, c2, c3}};
}

// The block holding element `index` of the (seed, stream) sequence.
FTX_HOST_DEVICE inline PhiloxBlock PhiloxBlockFor(uint64_t seed,
                                                  uint64_t stream,
                                                  uint64_t index) {
  const uint64_t block = index >> 2;
  return Philox4x32(
      static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32),
      static_cast<uint32_t>(stream), static_cast<uint32_t>(stream >> 32),
      static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// 32 random bits: element `index` of (seed, stream).
FTX_HOST_DEVICE inline uint32_t RandomBits(uint64_t seed, uint64_t stream,
                                           uint64_t index) {
  return PhiloxBlockFor(seed, stream, index).word[index & 3];
}

// Uniform in [0, 1) with 24 random bits (exactly representable in float).
FTX_HOST_DEVICE inline float BitsToUniform(uint32_t bits) {
  return static_cast<float>(bits >> 8) * (1.0f / 16777216.0f);
}

// Uniform in (0, 1]: safe for log().
FTX_HOST_DEVICE inline float BitsToUniformPositive(uint32_t bits) {
  return static_cast<float>((bits >> 8) + 1) * (1.0f / 16777216.0f);
}

FTX_HOST_DEVICE inline float RandomUniform(uint64_t seed, uint64_t stream,
                                           uint64_t index) {
  return BitsToUniform(RandomBits(seed, stream, index));
}

}  // namespace ftx

#endif  // FTX_KERNELS_BASE_PHILOX_H_
