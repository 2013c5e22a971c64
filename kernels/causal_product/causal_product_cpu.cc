// Highway CPU kernels of kernels/causal_product: dispatched once per call,
// parallel over the (n, h) sequences with the Context thread pool. Each
// sequence is swept in chunks of rows that are first packed into zero-padded
// scratch, so the inner kernel has no tails; the scratch is O(chunk * (X + Y) +
// X * Y) per thread, never O(L).
#include "kernels/causal_product/causal_product_cpu.h"

#include <algorithm>
#include <cstring>

#include "hwy/aligned_allocator.h"
#include "hwy/cache_control.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/causal_product/causal_product_cpu.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "kernels/causal_product/causal_product-inl.h"

HWY_BEFORE_NAMESPACE();
namespace ftx {
namespace HWY_NAMESPACE {
namespace {

// Rows per packed chunk: enough to amortise loading each state tile into
// registers, few enough that the chunk stays in the L1 cache.
constexpr int64_t kChunkRows = 32;

// Scratch regions start on 64-byte boundaries.
constexpr int64_t kScratchAlignFloats = 16;

int64_t RoundUp(int64_t value, int64_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

// Row (n, step, h) of a rank-4 view [N, L, H, *].
template <typename T>
T* SequenceRow(const TensorView<T>& view, int64_t n, int64_t step, int64_t h) {
  return view.data() + n * view.stride(0) + step * view.stride(1) +
         h * view.stride(2);
}

// Asks for the cache lines of `count` floats at `row`.
void PrefetchRow(const float* row, int64_t count) {
  for (int64_t i = 0; i < count; i += 16) hwy::Prefetch(row + i);
}

// Copies `count` floats and leaves the padding after them untouched.
void CopyRow(const float* from, int64_t count, float* to) {
  std::memcpy(to, from, count * sizeof(float));
}

// out_i = sum_{j <= i} (a_i . b_j) c_j per (n, h), or sum over j >= i when
// `reverse`: the same sweep run from the last step to the first.
// a, b: [N, L, H, X]; c, out: [N, L, H, Y].
void CausalSweep(const Context& ctx, bool reverse, TensorView<const float> a,
                 TensorView<const float> b, TensorView<const float> c,
                 TensorView<float> out) {
  const int64_t batch = a.dim(0), length = a.dim(1), heads = a.dim(2);
  const int64_t x_dim = a.dim(3), y_dim = c.dim(3);
  if (batch * length * heads * y_dim == 0) return;
  const int64_t x_padded = RoundUp(x_dim, kStateTileRows);
  const int64_t y_padded = RoundUp(y_dim, StateTileColumns());
  const int64_t chunk = std::min(length, kChunkRows);
  const int64_t ab_floats = RoundUp(chunk * x_padded, kScratchAlignFloats);
  const int64_t c_floats = RoundUp(chunk * y_padded, kScratchAlignFloats);
  const int64_t state_floats = x_padded * y_padded;
  const int64_t work_per_sequence = length * (x_padded + 1) * y_padded;
  // Sweep position `index` reads and writes sequence step step_of(index).
  const auto step_of = [&](int64_t index) {
    return reverse ? length - 1 - index : index;
  };
  ctx.pool().ParallelFor(
      batch * heads,
      [&](int64_t begin, int64_t end) {
        // Packed a and b rows [chunk, x_padded], c and out rows [chunk,
        // y_padded] and the state [x_padded, y_padded]. Zero-filled once; the
        // padding columns are never written, so they stay zero.
        auto scratch = hwy::AllocateAligned<float>(2 * ab_floats +
                                                   2 * c_floats + state_floats);
        float* a_rows = scratch.get();
        float* b_rows = a_rows + ab_floats;
        float* c_rows = b_rows + ab_floats;
        float* out_rows = c_rows + c_floats;
        float* state = out_rows + c_floats;
        std::fill(a_rows, state + state_floats, 0.0f);
        for (int64_t sequence = begin; sequence < end; ++sequence) {
          const int64_t n = sequence / heads, h = sequence % heads;
          std::fill(state, state + state_floats, 0.0f);
          for (int64_t start = 0; start < length; start += chunk) {
            const int64_t rows = std::min(chunk, length - start);
            for (int64_t r = 0; r < rows; ++r) {
              const int64_t step = step_of(start + r);
              CopyRow(SequenceRow(a, n, step, h), x_dim, a_rows + r * x_padded);
              CopyRow(SequenceRow(b, n, step, h), x_dim, b_rows + r * x_padded);
              CopyRow(SequenceRow(c, n, step, h), y_dim, c_rows + r * y_padded);
            }
            // Consecutive steps of a sequence are H rows apart (the heads
            // interleave), which the hardware prefetchers follow poorly: ask
            // for the next chunk's rows while this one computes.
            const int64_t next_start = start + rows;
            const int64_t next_rows = std::min(chunk, length - next_start);
            for (int64_t r = 0; r < next_rows; ++r) {
              const int64_t step = step_of(next_start + r);
              PrefetchRow(SequenceRow(a, n, step, h), x_dim);
              PrefetchRow(SequenceRow(b, n, step, h), x_dim);
              PrefetchRow(SequenceRow(c, n, step, h), y_dim);
              PrefetchRow(SequenceRow(out, n, step, h), y_dim);
            }
            CausalSweepChunk(rows, x_padded, y_padded, a_rows, b_rows, c_rows,
                             state, out_rows);
            for (int64_t r = 0; r < rows; ++r) {
              const int64_t step = step_of(start + r);
              CopyRow(out_rows + r * y_padded, y_dim,
                      SequenceRow(out, n, step, h));
            }
          }
        }
      },
      1 + (int64_t{1} << 16) / work_per_sequence);
}

}  // namespace

void CausalProductImpl(const Context& ctx, TensorView<const float> queries,
                       TensorView<const float> keys,
                       TensorView<const float> values, TensorView<float> out) {
  CausalSweep(ctx, /*reverse=*/false, queries, keys, values, out);
}

// The three gradients are causal products of the inputs in other roles:
// d_queries sweeps forward with the state S_i^T = sum_{j <= i} v_j k_j^T;
// d_keys and d_values sweep backward with R_j^T and R_j, where
// R_j = sum_{i >= j} q_i g_i^T.
void CausalProductBackwardImpl(
    const Context& ctx, TensorView<const float> queries,
    TensorView<const float> keys, TensorView<const float> values,
    TensorView<const float> d_out, TensorView<float> d_queries,
    TensorView<float> d_keys, TensorView<float> d_values) {
  CausalSweep(ctx, /*reverse=*/false, d_out, values, keys, d_queries);
  CausalSweep(ctx, /*reverse=*/true, values, d_out, queries, d_keys);
  CausalSweep(ctx, /*reverse=*/true, keys, queries, d_out, d_values);
}

}  // namespace HWY_NAMESPACE
}  // namespace ftx
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace ftx::cpu {

HWY_EXPORT(CausalProductImpl);
HWY_EXPORT(CausalProductBackwardImpl);

void CausalProduct(const Context& ctx, TensorView<const float> queries,
                   TensorView<const float> keys, TensorView<const float> values,
                   TensorView<float> out) {
  HWY_DYNAMIC_DISPATCH(CausalProductImpl)(ctx, queries, keys, values, out);
}

void CausalProductBackward(const Context& ctx, TensorView<const float> queries,
                           TensorView<const float> keys,
                           TensorView<const float> values,
                           TensorView<const float> d_out,
                           TensorView<float> d_queries,
                           TensorView<float> d_keys,
                           TensorView<float> d_values) {
  HWY_DYNAMIC_DISPATCH(CausalProductBackwardImpl)
  (ctx, queries, keys, values, d_out, d_queries, d_keys, d_values);
}

}  // namespace ftx::cpu
#endif  // HWY_ONCE
