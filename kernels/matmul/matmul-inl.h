// Highway SGEMM building blocks of kernels/matmul, compiled once per SIMD
// target through foreach_target.h: packing of op(A) and op(B) panels and the
// register-blocked microkernel that multiplies one packed A panel by one packed
// B panel.
//
// Packed layouts (both zero-padded to full tiles, so the microkernel never
// branches on edges):
//   A panel: kTileRows rows of op(A) by kc, stored k-major:
//            packed_a[k * kTileRows + r] = op(A)[r, k].
//   B panel: kc rows of op(B) by TileCols() columns, stored row-major:
//            packed_b[k * TileCols() + j] = op(B)[k, j].
#if defined(FTX_KERNELS_MATMUL_MATMUL_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef FTX_KERNELS_MATMUL_MATMUL_INL_H_
#undef FTX_KERNELS_MATMUL_MATMUL_INL_H_
#else
#define FTX_KERNELS_MATMUL_MATMUL_INL_H_
#endif

#include <cstddef>

#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace ftx {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// The microkernel keeps a kTileRows x kTileVectors grid of accumulator vectors
// in registers: each step broadcasts kTileRows values of op(A) and loads
// kTileVectors vectors of op(B).
inline constexpr size_t kTileRows = 6;
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
// 24 accumulators + 4 B vectors + 1 broadcast of the 32 zmm registers.
// Measured against 12 x 2, 8 x 3, 14 x 2, 5 x 5 and 4 x 6 (see
// bench/RESULTS.md): as fast at 1024^3 and faster for narrow outputs.
inline constexpr size_t kTileVectors = 4;
#else
// 12 accumulators + 2 B vectors + 1 broadcast of 16 registers.
inline constexpr size_t kTileVectors = 2;
#endif

// Columns of a microkernel tile (and of a packed B panel).
HWY_INLINE size_t TileCols() {
  return kTileVectors * hn::Lanes(hn::ScalableTag<float>());
}

// Packs op(A)[0 : rows, 0 : kc] into a k-major A panel, zero-filling rows
// rows..kTileRows. `a` points at op(A)[0, 0]; op(A)[r, k] is a[r * lda + k],
// or a[k * lda + r] when transposed (a stored as [k, m]).
HWY_INLINE void PackPanelA(const float* HWY_RESTRICT a, size_t lda,
                           bool transposed, size_t kc, size_t rows,
                           float* HWY_RESTRICT packed) {
  if (transposed) {
    for (size_t k = 0; k < kc; ++k) {
      const float* HWY_RESTRICT column = a + k * lda;
      float* HWY_RESTRICT out = packed + k * kTileRows;
      size_t r = 0;
      for (; r < rows; ++r) out[r] = column[r];
      for (; r < kTileRows; ++r) out[r] = 0.0f;
    }
    return;
  }
  if (rows == kTileRows) {
    for (size_t k = 0; k < kc; ++k) {
      float* HWY_RESTRICT out = packed + k * kTileRows;
      HWY_UNROLL(kTileRows)
      for (size_t r = 0; r < kTileRows; ++r) out[r] = a[r * lda + k];
    }
    return;
  }
  for (size_t k = 0; k < kc; ++k) {
    float* HWY_RESTRICT out = packed + k * kTileRows;
    size_t r = 0;
    for (; r < rows; ++r) out[r] = a[r * lda + k];
    for (; r < kTileRows; ++r) out[r] = 0.0f;
  }
}

// Packs op(B)[0 : kc, 0 : cols] into a row-major B panel of TileCols()
// columns, zero-filling columns cols..TileCols(). `b` points at op(B)[0, 0];
// op(B)[k, j] is b[k * ldb + j], or b[j * ldb + k] when transposed (b stored
// as [n, k]). `packed` is vector-aligned.
HWY_INLINE void PackPanelB(const float* HWY_RESTRICT b, size_t ldb,
                           bool transposed, size_t kc, size_t cols,
                           float* HWY_RESTRICT packed) {
  const hn::ScalableTag<float> d;
  const size_t lanes = hn::Lanes(d);
  const size_t tile_cols = kTileVectors * lanes;
  if (transposed) {
    // In steps of kStep rows of the panel, so that the rows being written
    // stay in L1 while each stored row of b is read contiguously.
    constexpr size_t kStep = 16;
    for (size_t k0 = 0; k0 < kc; k0 += kStep) {
      const size_t k1 = k0 + kStep < kc ? k0 + kStep : kc;
      for (size_t j = 0; j < cols; ++j) {
        const float* HWY_RESTRICT row = b + j * ldb;
        for (size_t k = k0; k < k1; ++k) packed[k * tile_cols + j] = row[k];
      }
      for (size_t k = k0; k < k1; ++k) {
        for (size_t j = cols; j < tile_cols; ++j) packed[k * tile_cols + j] = 0;
      }
    }
    return;
  }
  if (cols == tile_cols) {
    for (size_t k = 0; k < kc; ++k) {
      HWY_UNROLL(kTileVectors)
      for (size_t v = 0; v < kTileVectors; ++v) {
        hn::Store(hn::LoadU(d, b + k * ldb + v * lanes), d,
                  packed + k * tile_cols + v * lanes);
      }
    }
    return;
  }
  for (size_t k = 0; k < kc; ++k) {
    const float* HWY_RESTRICT row = b + k * ldb;
    float* HWY_RESTRICT out = packed + k * tile_cols;
    size_t j = 0;
    for (; j < cols; ++j) out[j] = row[j];
    for (; j < tile_cols; ++j) out[j] = 0.0f;
  }
}

// c[0 : rows, 0 : cols] = alpha * (op(A) tile @ B panel) + beta * c, summing
// k in order 0..kc-1; beta == 0 never reads c. The op(A) tile is a packed A
// panel when kPackedA (lda unused), else kTileRows rows of a row-major op(A),
// lda apart (all kTileRows must exist). c rows are ldc apart; rows <=
// kTileRows and cols <= TileCols() select the valid part of an edge tile.
template <bool kPackedA>
HWY_INLINE void MicroKernel(size_t kc, const float* HWY_RESTRICT a, size_t lda,
                            const float* HWY_RESTRICT packed_b, float alpha,
                            float beta, float* HWY_RESTRICT c, size_t ldc,
                            size_t rows, size_t cols) {
  const hn::ScalableTag<float> d;
  using V = hn::Vec<decltype(d)>;
  const size_t lanes = hn::Lanes(d);
  const size_t tile_cols = kTileVectors * lanes;

  V acc[kTileRows][kTileVectors];
  HWY_UNROLL(kTileRows)
  for (size_t r = 0; r < kTileRows; ++r) {
    HWY_UNROLL(kTileVectors)
    for (size_t v = 0; v < kTileVectors; ++v) acc[r][v] = hn::Zero(d);
  }
  for (size_t k = 0; k < kc; ++k) {
    const float* HWY_RESTRICT b_k = packed_b + k * tile_cols;
    V b_vectors[kTileVectors];
    HWY_UNROLL(kTileVectors)
    for (size_t v = 0; v < kTileVectors; ++v) {
      b_vectors[v] = hn::Load(d, b_k + v * lanes);
    }
    HWY_UNROLL(kTileRows)
    for (size_t r = 0; r < kTileRows; ++r) {
      const V a_broadcast =
          hn::Set(d, kPackedA ? a[k * kTileRows + r] : a[r * lda + k]);
      HWY_UNROLL(kTileVectors)
      for (size_t v = 0; v < kTileVectors; ++v) {
        acc[r][v] = hn::MulAdd(a_broadcast, b_vectors[v], acc[r][v]);
      }
    }
  }

  const V alpha_v = hn::Set(d, alpha);
  if (rows == kTileRows && cols == tile_cols) {
    if (beta == 0.0f) {
      HWY_UNROLL(kTileRows)
      for (size_t r = 0; r < kTileRows; ++r) {
        HWY_UNROLL(kTileVectors)
        for (size_t v = 0; v < kTileVectors; ++v) {
          hn::StoreU(hn::Mul(alpha_v, acc[r][v]), d, c + r * ldc + v * lanes);
        }
      }
    } else {
      const V beta_v = hn::Set(d, beta);
      HWY_UNROLL(kTileRows)
      for (size_t r = 0; r < kTileRows; ++r) {
        HWY_UNROLL(kTileVectors)
        for (size_t v = 0; v < kTileVectors; ++v) {
          float* HWY_RESTRICT out = c + r * ldc + v * lanes;
          hn::StoreU(hn::MulAdd(alpha_v, acc[r][v],
                                hn::Mul(beta_v, hn::LoadU(d, out))),
                     d, out);
        }
      }
    }
    return;
  }

  // Edge tile: through a buffer, then only the valid elements.
  HWY_ALIGN float
      tile[kTileRows * kTileVectors * HWY_MAX_BYTES / sizeof(float)];
  HWY_UNROLL(kTileRows)
  for (size_t r = 0; r < kTileRows; ++r) {
    HWY_UNROLL(kTileVectors)
    for (size_t v = 0; v < kTileVectors; ++v) {
      hn::Store(hn::Mul(alpha_v, acc[r][v]), d,
                tile + r * tile_cols + v * lanes);
    }
  }
  for (size_t r = 0; r < rows; ++r) {
    float* HWY_RESTRICT out = c + r * ldc;
    const float* HWY_RESTRICT scaled = tile + r * tile_cols;
    if (beta == 0.0f) {
      for (size_t j = 0; j < cols; ++j) out[j] = scaled[j];
    } else {
      for (size_t j = 0; j < cols; ++j) out[j] = scaled[j] + beta * out[j];
    }
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace ftx
HWY_AFTER_NAMESPACE();

#endif  // include guard
