// Highway SGEMM of kernels/matmul, dispatched once per call. Loop nest (after
// BLIS, with the roles of A and B swapped because c is row-major and the
// vectors run along its rows):
//   for jc over n in blocks of kBlockN:           packed B block in L2
//     for pc over k in blocks of kBlockK:
//       pack op(B)[pc : pc + kc, jc : jc + nc]    (parallel over panels)
//       for each row panel of kTileRows rows:     (parallel over C blocks)
//         pack op(A)[rows, pc : pc + kc]          A panel in L1
//         for each B panel of TileCols() columns:
//           MicroKernel                           C tile in registers
// A row-major op(A) is read in place instead of packed when the B block is
// narrow (see kMaxInPlaceACols). Batches run one item per thread when there
// are enough items, else item by item with the loop nest above in parallel.
// Every element of c is summed over k in the same order (k blocks in order,
// k in order inside a block) whatever the thread count or split.
#include "kernels/matmul/matmul_cpu.h"

#include <algorithm>
#include <cstddef>

#include "hwy/aligned_allocator.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/matmul/matmul_cpu.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "kernels/matmul/matmul-inl.h"

HWY_BEFORE_NAMESPACE();
namespace ftx {
namespace HWY_NAMESPACE {
namespace {

// Cache blocking, measured on a 2-core Xeon with 48 KiB L1d and 2 MiB L2 per
// core (bench/RESULTS.md). Rows of op(B) per packed block: an A panel
// (kTileRows x kBlockK floats, 6 KiB) stays in L1 while the microkernel sweeps
// the B block.
constexpr size_t kBlockK = 256;
// Columns of op(B) per packed block: the B block (kBlockK x kBlockN floats,
// 1 MiB) stays in L2.
constexpr size_t kBlockN = 1024;
// Up to this many columns per B block the microkernel reads full row panels of
// a row-major op(A) in place. Packing (a gather of kTileRows strided rows)
// costs about as much per element as the multiply-adds of two B panels, so it
// pays only when many B panels reuse the A panel; and then in-place rows, lda
// apart, would conflict in L1.
constexpr size_t kMaxInPlaceACols = 512;
// Below this many multiply-adds per call the thread pool costs more than it
// saves.
constexpr double kMinParallelMultiplyAdds = 1 << 18;

size_t DivCeil(size_t a, size_t b) { return (a + b - 1) / b; }
size_t RoundUp(size_t a, size_t b) { return DivCeil(a, b) * b; }

// Runs body(worker, begin, end) over `workers` contiguous, disjoint ranges
// covering [0, items); on the pool when there is one, else inline.
template <class Body>
void ForEachWorkerRange(const ThreadPool* pool, size_t workers, size_t items,
                        const Body& body) {
  workers = std::min(workers, items);
  if (pool == nullptr || workers <= 1) {
    body(size_t{0}, size_t{0}, items);
    return;
  }
  pool->ParallelFor(
      static_cast<int64_t>(workers),
      [&](int64_t first, int64_t last) {
        for (size_t w = first; w < static_cast<size_t>(last); ++w) {
          body(w, w * items / workers, (w + 1) * items / workers);
        }
      },
      1);
}

// Floats of scratch for one worker's A panel and for one packed B block.
size_t APanelFloats(const cpu::GemmDims& dims) {
  return RoundUp(kTileRows * std::min<size_t>(dims.k, kBlockK), TileCols());
}
size_t BBlockFloats(const cpu::GemmDims& dims) {
  return std::min<size_t>(dims.k, kBlockK) *
         RoundUp(std::min<size_t>(dims.n, kBlockN), TileCols());
}

// One batch item's operands: op(a) rows/columns as in matmul-inl.h, leading
// dimensions in floats.
struct ItemOperands {
  bool transpose_a;
  const float* a;
  size_t lda;
  bool transpose_b;
  const float* b;
  size_t ldb;
  float* c;
  size_t ldc;
};

ItemOperands OperandsOfItem(size_t item, bool transpose_a,
                            const cpu::GemmMatrix<const float>& a,
                            bool transpose_b,
                            const cpu::GemmMatrix<const float>& b,
                            const cpu::GemmMatrix<float>& c) {
  return {transpose_a,
          a.data + item * a.batch_stride,
          static_cast<size_t>(a.row_stride),
          transpose_b,
          b.data + item * b.batch_stride,
          static_cast<size_t>(b.row_stride),
          c.data + item * c.batch_stride,
          static_cast<size_t>(c.row_stride)};
}

// One batch item, c = alpha * op(a) @ op(b) + beta * c, split over `workers`
// threads of `pool` (null: this thread only). packed_b holds BBlockFloats,
// packed_a holds workers * APanelFloats.
void GemmItem(const ThreadPool* pool, size_t workers, const cpu::GemmDims& dims,
              const ItemOperands& x, float alpha, float beta, float* packed_b,
              float* packed_a) {
  const size_t m = dims.m, n = dims.n, k = dims.k;
  const size_t tile_cols = TileCols();
  const size_t a_panel_floats = APanelFloats(dims);
  const size_t row_panels = DivCeil(m, kTileRows);
  for (size_t jc = 0; jc < n; jc += kBlockN) {
    const size_t nc = std::min(kBlockN, n - jc);
    const size_t col_panels = DivCeil(nc, tile_cols);
    // With few row panels, the C blocks of the workers also split the columns
    // so that every worker gets work.
    const size_t col_groups =
        workers <= 1 ? 1
                     : std::min(col_panels, DivCeil(4 * workers, row_panels));
    const bool in_place_a = !x.transpose_a && nc <= kMaxInPlaceACols;
    for (size_t pc = 0; pc < k; pc += kBlockK) {
      const size_t kc = std::min(kBlockK, k - pc);
      const float block_beta = pc == 0 ? beta : 1.0f;
      const float* b_block =
          x.transpose_b ? x.b + jc * x.ldb + pc : x.b + pc * x.ldb + jc;
      ForEachWorkerRange(
          pool, workers, col_panels, [&](size_t, size_t begin, size_t end) {
            for (size_t p = begin; p < end; ++p) {
              const size_t col = p * tile_cols;
              PackPanelB(x.transpose_b ? b_block + col * x.ldb : b_block + col,
                         x.ldb, x.transpose_b, kc,
                         std::min(tile_cols, nc - col),
                         packed_b + p * kc * tile_cols);
            }
          });
      const float* a_block = x.transpose_a ? x.a + pc * x.lda : x.a + pc;
      ForEachWorkerRange(
          pool, workers, row_panels * col_groups,
          [&](size_t worker, size_t begin, size_t end) {
            float* a_panel = packed_a + worker * a_panel_floats;
            size_t packed_row_panel = row_panels;  // none yet
            for (size_t item = begin; item < end; ++item) {
              const size_t row_panel = item / col_groups;
              const size_t group = item % col_groups;
              const size_t row = row_panel * kTileRows;
              const size_t rows = std::min(kTileRows, m - row);
              const float* a_rows =
                  x.transpose_a ? a_block + row : a_block + row * x.lda;
              const bool packed = !in_place_a || rows < kTileRows;
              if (packed && row_panel != packed_row_panel) {
                PackPanelA(a_rows, x.lda, x.transpose_a, kc, rows, a_panel);
                packed_row_panel = row_panel;
              }
              for (size_t p = group * col_panels / col_groups;
                   p < (group + 1) * col_panels / col_groups; ++p) {
                const size_t col = p * tile_cols;
                const float* b_panel = packed_b + p * kc * tile_cols;
                float* c_tile = x.c + row * x.ldc + jc + col;
                const size_t cols = std::min(tile_cols, nc - col);
                if (packed) {
                  MicroKernel<true>(kc, a_panel, 0, b_panel, alpha, block_beta,
                                    c_tile, x.ldc, rows, cols);
                } else {
                  MicroKernel<false>(kc, a_rows, x.lda, b_panel, alpha,
                                     block_beta, c_tile, x.ldc, rows, cols);
                }
              }
            }
          });
    }
  }
}

// c = beta * c (k == 0: the product is empty); beta == 0 writes zeros.
void ScaleOutput(const cpu::GemmDims& dims, float beta,
                 cpu::GemmMatrix<float> c) {
  for (int64_t item = 0; item < dims.batch; ++item) {
    for (int64_t row = 0; row < dims.m; ++row) {
      float* out = c.data + item * c.batch_stride + row * c.row_stride;
      for (int64_t col = 0; col < dims.n; ++col) {
        out[col] = beta == 0.0f ? 0.0f : beta * out[col];
      }
    }
  }
}

}  // namespace

void GemmImpl(const Context& ctx, const cpu::GemmDims& dims, bool transpose_a,
              cpu::GemmMatrix<const float> a, bool transpose_b,
              cpu::GemmMatrix<const float> b, float alpha, float beta,
              cpu::GemmMatrix<float> c) {
  if (dims.batch == 0 || dims.m == 0 || dims.n == 0) return;
  if (dims.k == 0) {
    ScaleOutput(dims, beta, c);
    return;
  }
  const size_t batch = dims.batch;
  const double multiply_adds = static_cast<double>(dims.m) * dims.n * dims.k;
  const size_t threads =
      multiply_adds * batch < kMinParallelMultiplyAdds ? 1 : ctx.num_threads();
  const size_t a_panel_floats = APanelFloats(dims);
  const size_t b_block_floats = BBlockFloats(dims);
  // Many items: one item per worker at a time, each with its own scratch.
  if (threads > 1 && batch >= threads &&
      (batch % threads == 0 || batch >= 4 * threads)) {
    const size_t scratch_floats = b_block_floats + a_panel_floats;
    hwy::AlignedFreeUniquePtr<float[]> scratch =
        hwy::AllocateAligned<float>(threads * scratch_floats);
    ForEachWorkerRange(
        &ctx.pool(), threads, batch,
        [&](size_t worker, size_t begin, size_t end) {
          float* packed_b = scratch.get() + worker * scratch_floats;
          for (size_t item = begin; item < end; ++item) {
            GemmItem(nullptr, 1, dims,
                     OperandsOfItem(item, transpose_a, a, transpose_b, b, c),
                     alpha, beta, packed_b, packed_b + b_block_floats);
          }
        });
    return;
  }

  hwy::AlignedFreeUniquePtr<float[]> scratch =
      hwy::AllocateAligned<float>(b_block_floats + threads * a_panel_floats);
  for (size_t item = 0; item < batch; ++item) {
    GemmItem(&ctx.pool(), threads, dims,
             OperandsOfItem(item, transpose_a, a, transpose_b, b, c), alpha,
             beta, scratch.get(), scratch.get() + b_block_floats);
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace ftx
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace ftx::cpu {

HWY_EXPORT(GemmImpl);

void Gemm(const Context& ctx, const GemmDims& dims, bool transpose_a,
          GemmMatrix<const float> a, bool transpose_b,
          GemmMatrix<const float> b, float alpha, float beta,
          GemmMatrix<float> c) {
  HWY_DYNAMIC_DISPATCH(GemmImpl)
  (ctx, dims, transpose_a, a, transpose_b, b, alpha, beta, c);
}

}  // namespace ftx::cpu
#endif  // HWY_ONCE
