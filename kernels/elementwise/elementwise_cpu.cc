// Highway CPU kernels of kernels/elementwise: dispatched once per call,
// parallel over rows with the Context thread pool.
#include "kernels/elementwise/elementwise_cpu.h"

#include <vector>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/elementwise/elementwise_cpu.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "kernels/elementwise/elementwise-inl.h"

HWY_BEFORE_NAMESPACE();
namespace ftx {
namespace HWY_NAMESPACE {
namespace {

// Rows per parallel task so that tiny tensors stay on one thread.
int64_t MinRowsPerTask(int64_t cols) { return 1 + 16384 / (cols + 1); }

}  // namespace

void BinaryImpl(const Context& ctx, cpu::BinaryOp op, MatrixView<const float> x,
                MatrixView<const float> y, MatrixView<float> out) {
  ctx.pool().ParallelFor(
      out.rows,
      [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          switch (op) {
            case cpu::BinaryOp::kAdd:
              BinaryRow(
                  x.Row(r), y.Row(r), out.Row(r), out.cols,
                  [](auto a, auto b) { return hn::Add(a, b); },
                  [](float a, float b) { return a + b; });
              break;
            case cpu::BinaryOp::kMul:
              BinaryRow(
                  x.Row(r), y.Row(r), out.Row(r), out.cols,
                  [](auto a, auto b) { return hn::Mul(a, b); },
                  [](float a, float b) { return a * b; });
              break;
          }
        }
      },
      MinRowsPerTask(out.cols));
}

void MulBackwardImpl(const Context& ctx, MatrixView<const float> x,
                     MatrixView<const float> y, MatrixView<const float> d_out,
                     MatrixView<float> d_x, MatrixView<float> d_y) {
  const auto multiply = [](auto a, auto b) { return hn::Mul(a, b); };
  const auto multiply_scalar = [](float a, float b) { return a * b; };
  ctx.pool().ParallelFor(
      d_out.rows,
      [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          // d_x may alias x only if it does not alias y, so compute d_y first
          // when d_x aliases x and d_x first otherwise.
          if (d_x.Row(r) == x.Row(r)) {
            BinaryRow(d_out.Row(r), x.Row(r), d_y.Row(r), d_out.cols, multiply,
                      multiply_scalar);
            BinaryRow(d_out.Row(r), y.Row(r), d_x.Row(r), d_out.cols, multiply,
                      multiply_scalar);
          } else {
            BinaryRow(d_out.Row(r), y.Row(r), d_x.Row(r), d_out.cols, multiply,
                      multiply_scalar);
            BinaryRow(d_out.Row(r), x.Row(r), d_y.Row(r), d_out.cols, multiply,
                      multiply_scalar);
          }
        }
      },
      MinRowsPerTask(d_out.cols));
}

void ScaleAddImpl(const Context& ctx, float alpha, MatrixView<const float> x,
                  float beta, MatrixView<float> out) {
  ctx.pool().ParallelFor(
      out.rows,
      [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          ScaleAddRow(alpha, x.Row(r), beta, out.Row(r), out.cols);
        }
      },
      MinRowsPerTask(out.cols));
}

double ScaleBackwardImpl(const Context& ctx, float alpha,
                         MatrixView<const float> x,
                         MatrixView<const float> d_out, MatrixView<float> d_x) {
  // Per-row partial sums, added in row order: the result does not depend on the
  // thread count.
  std::vector<double> row_sums(d_out.rows);
  ctx.pool().ParallelFor(
      d_out.rows,
      [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          row_sums[r] = DotRow(x.Row(r), d_out.Row(r), d_out.cols);
          ScaleAddRow(alpha, d_out.Row(r), 0.0f, d_x.Row(r), d_out.cols);
        }
      },
      MinRowsPerTask(d_out.cols));
  double total = 0;
  for (double s : row_sums) total += s;
  return total;
}

void AddBiasImpl(const Context& ctx, MatrixView<const float> x,
                 const float* bias, MatrixView<float> out) {
  ctx.pool().ParallelFor(
      out.rows,
      [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          BinaryRow(
              x.Row(r), bias, out.Row(r), out.cols,
              [](auto a, auto b) { return hn::Add(a, b); },
              [](float a, float b) { return a + b; });
        }
      },
      MinRowsPerTask(out.cols));
}

void AddBiasBackwardImpl(const Context& ctx, MatrixView<const float> d_out,
                         float* d_bias) {
  // Threads own disjoint column blocks and walk all rows in order.
  const int64_t cols = d_out.cols;
  ctx.pool().ParallelFor(
      cols,
      [&](int64_t begin, int64_t end) {
        for (int64_t r = 0; r < d_out.rows; ++r) {
          BinaryRow(
              d_bias + begin, d_out.Row(r) + begin, d_bias + begin, end - begin,
              [](auto a, auto b) { return hn::Add(a, b); },
              [](float a, float b) { return a + b; });
        }
      },
      256);
}

}  // namespace HWY_NAMESPACE
}  // namespace ftx
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace ftx::cpu {

HWY_EXPORT(BinaryImpl);
HWY_EXPORT(MulBackwardImpl);
HWY_EXPORT(ScaleAddImpl);
HWY_EXPORT(ScaleBackwardImpl);
HWY_EXPORT(AddBiasImpl);
HWY_EXPORT(AddBiasBackwardImpl);

void Binary(const Context& ctx, BinaryOp op, MatrixView<const float> x,
            MatrixView<const float> y, MatrixView<float> out) {
  HWY_DYNAMIC_DISPATCH(BinaryImpl)(ctx, op, x, y, out);
}

void MulBackward(const Context& ctx, MatrixView<const float> x,
                 MatrixView<const float> y, MatrixView<const float> d_out,
                 MatrixView<float> d_x, MatrixView<float> d_y) {
  HWY_DYNAMIC_DISPATCH(MulBackwardImpl)(ctx, x, y, d_out, d_x, d_y);
}

void ScaleAdd(const Context& ctx, float alpha, MatrixView<const float> x,
              float beta, MatrixView<float> out) {
  HWY_DYNAMIC_DISPATCH(ScaleAddImpl)(ctx, alpha, x, beta, out);
}

double ScaleBackward(const Context& ctx, float alpha, MatrixView<const float> x,
                     MatrixView<const float> d_out, MatrixView<float> d_x) {
  return HWY_DYNAMIC_DISPATCH(ScaleBackwardImpl)(ctx, alpha, x, d_out, d_x);
}

void AddBias(const Context& ctx, MatrixView<const float> x, const float* bias,
             MatrixView<float> out) {
  HWY_DYNAMIC_DISPATCH(AddBiasImpl)(ctx, x, bias, out);
}

void AddBiasBackward(const Context& ctx, MatrixView<const float> d_out,
                     float* d_bias) {
  HWY_DYNAMIC_DISPATCH(AddBiasBackwardImpl)(ctx, d_out, d_bias);
}

}  // namespace ftx::cpu
#endif  // HWY_ONCE
