// Highway kernels of kernels/causal_product, compiled once per SIMD target
// through foreach_target.h: one chunk of the running-state sweep over packed,
// zero-padded rows.
#if defined(FTX_KERNELS_CAUSAL_PRODUCT_CAUSAL_PRODUCT_INL_H_) == \
    defined(HWY_TARGET_TOGGLE)
#ifdef FTX_KERNELS_CAUSAL_PRODUCT_CAUSAL_PRODUCT_INL_H_
#undef FTX_KERNELS_CAUSAL_PRODUCT_CAUSAL_PRODUCT_INL_H_
#else
#define FTX_KERNELS_CAUSAL_PRODUCT_CAUSAL_PRODUCT_INL_H_
#endif

#include <algorithm>
#include <cstdint>

#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace ftx {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// The state is processed in register tiles of kStateTileRows rows by
// StateTileColumns() columns (two vectors).
constexpr int64_t kStateTileRows = 4;

HWY_INLINE int64_t StateTileColumns() {
  return 2 * static_cast<int64_t>(hn::Lanes(hn::ScalableTag<float>()));
}

// One chunk of the causal sweep: for r = 0, 1, ..., rows - 1 in order
//   state[x, :] += b[r, x] * c[r, :]
//   out[r, :] = sum_x a[r, x] * state[x, :]
// a, b: [rows, x_padded]; c, out: [rows, y_padded]; state: [x_padded,
// y_padded], all packed. x_padded is a multiple of kStateTileRows and y_padded
// of StateTileColumns(); c, out and state are vector-aligned. Padding columns
// of a, b and c must be zero (the padding of state then stays zero).
//
// Each state tile lives in registers while it sweeps the chunk's rows, so the
// loop is bound by multiply-adds rather than by state loads and stores. Every
// output element sums over x in ascending order and every state element over
// the rows in order, whatever the target's vector width.
HWY_INLINE void CausalSweepChunk(int64_t rows, int64_t x_padded,
                                 int64_t y_padded, const float* HWY_RESTRICT a,
                                 const float* HWY_RESTRICT b,
                                 const float* HWY_RESTRICT c,
                                 float* HWY_RESTRICT state,
                                 float* HWY_RESTRICT out) {
  const hn::ScalableTag<float> d;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  std::fill(out, out + rows * y_padded, 0.0f);
  for (int64_t x0 = 0; x0 < x_padded; x0 += kStateTileRows) {
    for (int64_t y0 = 0; y0 < y_padded; y0 += 2 * lanes) {
      float* state_row0 = state + x0 * y_padded + y0;
      float* state_row1 = state_row0 + y_padded;
      float* state_row2 = state_row1 + y_padded;
      float* state_row3 = state_row2 + y_padded;
      auto s00 = hn::Load(d, state_row0), s01 = hn::Load(d, state_row0 + lanes);
      auto s10 = hn::Load(d, state_row1), s11 = hn::Load(d, state_row1 + lanes);
      auto s20 = hn::Load(d, state_row2), s21 = hn::Load(d, state_row2 + lanes);
      auto s30 = hn::Load(d, state_row3), s31 = hn::Load(d, state_row3 + lanes);
      for (int64_t r = 0; r < rows; ++r) {
        const float* a_row = a + r * x_padded + x0;
        const float* b_row = b + r * x_padded + x0;
        const float* c_row = c + r * y_padded + y0;
        float* out_row = out + r * y_padded + y0;
        const auto c0 = hn::Load(d, c_row), c1 = hn::Load(d, c_row + lanes);
        auto weight = hn::Set(d, b_row[0]);
        s00 = hn::MulAdd(weight, c0, s00);
        s01 = hn::MulAdd(weight, c1, s01);
        weight = hn::Set(d, b_row[1]);
        s10 = hn::MulAdd(weight, c0, s10);
        s11 = hn::MulAdd(weight, c1, s11);
        weight = hn::Set(d, b_row[2]);
        s20 = hn::MulAdd(weight, c0, s20);
        s21 = hn::MulAdd(weight, c1, s21);
        weight = hn::Set(d, b_row[3]);
        s30 = hn::MulAdd(weight, c0, s30);
        s31 = hn::MulAdd(weight, c1, s31);
        auto o0 = hn::Load(d, out_row), o1 = hn::Load(d, out_row + lanes);
        weight = hn::Set(d, a_row[0]);
        o0 = hn::MulAdd(weight, s00, o0);
        o1 = hn::MulAdd(weight, s01, o1);
        weight = hn::Set(d, a_row[1]);
        o0 = hn::MulAdd(weight, s10, o0);
        o1 = hn::MulAdd(weight, s11, o1);
        weight = hn::Set(d, a_row[2]);
        o0 = hn::MulAdd(weight, s20, o0);
        o1 = hn::MulAdd(weight, s21, o1);
        weight = hn::Set(d, a_row[3]);
        o0 = hn::MulAdd(weight, s30, o0);
        o1 = hn::MulAdd(weight, s31, o1);
        hn::Store(o0, d, out_row);
        hn::Store(o1, d, out_row + lanes);
      }
      hn::Store(s00, d, state_row0);
      hn::Store(s01, d, state_row0 + lanes);
      hn::Store(s10, d, state_row1);
      hn::Store(s11, d, state_row1 + lanes);
      hn::Store(s20, d, state_row2);
      hn::Store(s21, d, state_row2 + lanes);
      hn::Store(s30, d, state_row3);
      hn::Store(s31, d, state_row3 + lanes);
    }
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace ftx
HWY_AFTER_NAMESPACE();

#endif  // include guard
