// Highway CPU kernels of kernels/activation: dispatched once per call, the
// activation chosen once per call (each row kernel is instantiated per
// activation), parallel over rows with the Context thread pool.
#include "kernels/activation/activation_cpu.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/activation/activation_cpu.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "kernels/activation/activation-inl.h"

HWY_BEFORE_NAMESPACE();
namespace ftx {
namespace HWY_NAMESPACE {
namespace {

// Rows per parallel task so that tiny tensors stay on one thread.
int64_t MinRowsPerTask(int64_t cols) { return 1 + 4096 / (cols + 1); }

// Calls visitor(activation) with the struct of `kind` from activation-inl.h.
template <class Visitor>
void VisitActivation(cpu::ActivationKind kind, Visitor&& visitor) {
  switch (kind) {
    case cpu::ActivationKind::kIdentity:
      return visitor(IdentityActivation());
    case cpu::ActivationKind::kRelu:
      return visitor(ReluActivation());
    case cpu::ActivationKind::kGelu:
      return visitor(GeluActivation());
    case cpu::ActivationKind::kGeluTanh:
      return visitor(GeluTanhActivation());
    case cpu::ActivationKind::kSilu:
      return visitor(SiluActivation());
    case cpu::ActivationKind::kEluPlusOne:
      return visitor(EluPlusOneActivation());
    case cpu::ActivationKind::kReluSquared:
      return visitor(ReluSquaredActivation());
    case cpu::ActivationKind::kSigmoid:
      return visitor(SigmoidActivation());
    case cpu::ActivationKind::kTanh:
      return visitor(TanhActivation());
  }
}

}  // namespace

void ActivateImpl(const Context& ctx, cpu::ActivationKind kind,
                  MatrixView<const float> x, MatrixView<float> y) {
  VisitActivation(kind, [&](auto activation) {
    using ActivationOp = decltype(activation);
    ctx.pool().ParallelFor(
        y.rows,
        [&](int64_t begin, int64_t end) {
          for (int64_t r = begin; r < end; ++r) {
            ActivateRow<ActivationOp>(x.Row(r), y.Row(r), y.cols);
          }
        },
        MinRowsPerTask(y.cols));
  });
}

void ActivateBackwardImpl(const Context& ctx, cpu::ActivationKind kind,
                          MatrixView<const float> x,
                          MatrixView<const float> d_y, MatrixView<float> d_x) {
  VisitActivation(kind, [&](auto activation) {
    using ActivationOp = decltype(activation);
    ctx.pool().ParallelFor(
        d_x.rows,
        [&](int64_t begin, int64_t end) {
          for (int64_t r = begin; r < end; ++r) {
            ActivateBackwardRow<ActivationOp>(x.Row(r), d_y.Row(r), d_x.Row(r),
                                              d_x.cols);
          }
        },
        MinRowsPerTask(d_x.cols));
  });
}

void GluImpl(const Context& ctx, cpu::ActivationKind gate_kind,
             MatrixView<const float> x, MatrixView<float> y) {
  const int64_t half = y.cols;
  VisitActivation(gate_kind, [&](auto activation) {
    using ActivationOp = decltype(activation);
    ctx.pool().ParallelFor(
        y.rows,
        [&](int64_t begin, int64_t end) {
          for (int64_t r = begin; r < end; ++r) {
            GluRow<ActivationOp>(x.Row(r), x.Row(r) + half, y.Row(r), half);
          }
        },
        MinRowsPerTask(x.cols));
  });
}

void GluBackwardImpl(const Context& ctx, cpu::ActivationKind gate_kind,
                     MatrixView<const float> x, MatrixView<const float> d_y,
                     MatrixView<float> d_x) {
  const int64_t half = d_y.cols;
  VisitActivation(gate_kind, [&](auto activation) {
    using ActivationOp = decltype(activation);
    ctx.pool().ParallelFor(
        d_y.rows,
        [&](int64_t begin, int64_t end) {
          for (int64_t r = begin; r < end; ++r) {
            GluBackwardRow<ActivationOp>(x.Row(r), x.Row(r) + half, d_y.Row(r),
                                         d_x.Row(r), d_x.Row(r) + half, half);
          }
        },
        MinRowsPerTask(x.cols));
  });
}

}  // namespace HWY_NAMESPACE
}  // namespace ftx
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace ftx::cpu {

HWY_EXPORT(ActivateImpl);
HWY_EXPORT(ActivateBackwardImpl);
HWY_EXPORT(GluImpl);
HWY_EXPORT(GluBackwardImpl);

void Activate(const Context& ctx, ActivationKind kind,
              MatrixView<const float> x, MatrixView<float> y) {
  HWY_DYNAMIC_DISPATCH(ActivateImpl)(ctx, kind, x, y);
}

void ActivateBackward(const Context& ctx, ActivationKind kind,
                      MatrixView<const float> x, MatrixView<const float> d_y,
                      MatrixView<float> d_x) {
  HWY_DYNAMIC_DISPATCH(ActivateBackwardImpl)(ctx, kind, x, d_y, d_x);
}

void Glu(const Context& ctx, ActivationKind gate_kind,
         MatrixView<const float> x, MatrixView<float> y) {
  HWY_DYNAMIC_DISPATCH(GluImpl)(ctx, gate_kind, x, y);
}

void GluBackward(const Context& ctx, ActivationKind gate_kind,
                 MatrixView<const float> x, MatrixView<const float> d_y,
                 MatrixView<float> d_x) {
  HWY_DYNAMIC_DISPATCH(GluBackwardImpl)(ctx, gate_kind, x, d_y, d_x);
}

}  // namespace ftx::cpu
#endif  // HWY_ONCE
