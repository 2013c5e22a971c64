#include "kernels/matmul/matmul.h"

#include <algorithm>
#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "kernels/base/status_macros.h"
#include "kernels/base/validate.h"
#include "kernels/matmul/matmul_cpu.h"

#ifdef FTX_HAVE_CUDA
#include "kernels/matmul/matmul_cuda.h"
#endif

namespace ftx {
namespace {

// One (batched) GEMM as both backends take it:
//   c[i] = alpha * op(a[i]) @ op(b[i]) + beta * c[i].
struct GemmCall {
  cpu::GemmDims dims;
  bool transpose_a = false;
  bool transpose_b = false;
  float alpha = 1.0f;
  float beta = 0.0f;
  cpu::GemmMatrix<const float> a;
  cpu::GemmMatrix<const float> b;
  cpu::GemmMatrix<float> c;
};

// A rank-2 or rank-3 view as a batch of row-major matrices. The row stride is
// at least 1, and a single row gets max(1, cols) (its stride is never used),
// so that backends that check leading dimensions accept it; a single batch
// item gets batch stride 0.
template <typename T>
cpu::GemmMatrix<T> MatrixOf(const TensorView<T>& view) {
  const int rank = view.rank();
  const int64_t rows = view.dim(rank - 2);
  const int64_t cols = view.dim(rank - 1);
  cpu::GemmMatrix<T> matrix;
  matrix.data = view.data();
  matrix.row_stride =
      std::max<int64_t>(1, rows > 1 ? view.stride(rank - 2) : cols);
  matrix.batch_stride = rank == 3 && view.dim(0) > 1 ? view.stride(0) : 0;
  return matrix;
}

int64_t BatchOf(const TensorView<const float>& view) {
  return view.rank() == 3 ? view.dim(0) : 1;
}

// data, rank, device and strides of one operand.
template <typename T>
absl::Status CheckOperand(absl::string_view op, absl::string_view name,
                          const TensorView<T>& view, const Context& ctx) {
  if (view.rank() < 2 || view.rank() > 3) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", name, " must have rank 2 or 3, got rank ",
                     view.rank(), " (shape ", view.shape().ToString(), ")"));
  }
  if (view.data() == nullptr && view.NumElements() > 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": ", name, " has null data for shape ", view.shape().ToString()));
  }
  if (view.device().type != ctx.device().type) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": ", name, " is on ", DeviceTypeName(view.device().type),
        " but the context is ", DeviceTypeName(ctx.device().type)));
  }
  const int rank = view.rank();
  const int64_t rows = view.dim(rank - 2);
  const int64_t cols = view.dim(rank - 1);
  if (view.stride(rank - 1) != 1 && cols > 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": ", name, " must have unit stride in its last axis, got stride ",
        view.stride(rank - 1)));
  }
  if (rows > 1 && view.stride(rank - 2) < cols) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", name, " has row stride ", view.stride(rank - 2),
                     ", smaller than its ", cols, " columns"));
  }
  if (rank == 3 && view.dim(0) > 1 && view.stride(0) < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": ", name, " has negative batch stride ", view.stride(0)));
  }
  return absl::OkStatus();
}

// An output's batch items must not overlap (they are written in parallel).
absl::Status CheckOutputItemsDisjoint(absl::string_view op,
                                      absl::string_view name,
                                      const TensorView<float>& view) {
  if (view.rank() != 3 || view.dim(0) <= 1 || view.NumElements() == 0) {
    return absl::OkStatus();
  }
  const int64_t item_extent = (view.dim(1) - 1) * view.stride(1) + view.dim(2);
  if (view.stride(0) < item_extent) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": ", name, " has batch stride ", view.stride(0),
        ", so its batch items overlap (needs at least ", item_extent, ")"));
  }
  return absl::OkStatus();
}

// Checks a, b and the product's shape `c` ("c" or "d_c") and returns the
// product's dimensions.
absl::StatusOr<cpu::GemmDims> CheckProduct(
    absl::string_view op, const Context& ctx, TensorView<const float> a,
    TensorView<const float> b, absl::string_view c_name,
    TensorView<const float> c, const MatMulOptions& options) {
  FTX_RETURN_IF_ERROR(CheckOperand(op, "a", a, ctx));
  FTX_RETURN_IF_ERROR(CheckOperand(op, "b", b, ctx));
  FTX_RETURN_IF_ERROR(CheckOperand(op, c_name, c, ctx));
  const int64_t a_rows = a.dim(a.rank() - 2), a_cols = a.dim(a.rank() - 1);
  const int64_t b_rows = b.dim(b.rank() - 2), b_cols = b.dim(b.rank() - 1);
  cpu::GemmDims dims;
  dims.m = options.transpose_a ? a_cols : a_rows;
  dims.k = options.transpose_a ? a_rows : a_cols;
  const int64_t b_inner = options.transpose_b ? b_cols : b_rows;
  dims.n = options.transpose_b ? b_rows : b_cols;
  if (dims.k != b_inner) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": inner dimensions disagree: op(a) is [", dims.m, ", ", dims.k,
        "] (a ", a.shape().ToString(),
        options.transpose_a ? ", transposed" : "", ") but op(b) is [", b_inner,
        ", ", dims.n, "] (b ", b.shape().ToString(),
        options.transpose_b ? ", transposed" : "", ")"));
  }
  if (a.rank() == 3 && b.rank() == 3 && a.dim(0) != b.dim(0)) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": batch sizes disagree: a has ", a.dim(0),
                     " items but b has ", b.dim(0)));
  }
  const bool batched = a.rank() == 3 || b.rank() == 3;
  dims.batch = std::max(BatchOf(a), BatchOf(b));
  const Shape expected =
      batched ? Shape{dims.batch, dims.m, dims.n} : Shape{dims.m, dims.n};
  if (c.shape() != expected) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", c_name, " has shape ", c.shape().ToString(),
                     " but op(a) @ op(b) is ", expected.ToString()));
  }
  return dims;
}

// A broadcast b times a batch of a whose rows are evenly spaced across items
// is one GEMM with batch * m rows (e.g. a linear layer over [B, T, C]).
GemmCall FoldBatchIntoRows(GemmCall call) {
  const cpu::GemmDims dims = call.dims;
  if (dims.batch > 1 && call.b.batch_stride == 0 && !call.transpose_a &&
      call.a.batch_stride == dims.m * call.a.row_stride &&
      call.c.batch_stride == dims.m * call.c.row_stride) {
    call.dims.m *= dims.batch;
    call.dims.batch = 1;
    call.a.batch_stride = 0;
    call.c.batch_stride = 0;
  }
  return call;
}

absl::Status RunGemm(absl::string_view op, const Context& ctx,
                     const GemmCall& call) {
  switch (ctx.device().type) {
    case DeviceType::kCpu:
      cpu::Gemm(ctx, call.dims, call.transpose_a, call.a, call.transpose_b,
                call.b, call.alpha, call.beta, call.c);
      return absl::OkStatus();
    case DeviceType::kCuda: {
#ifdef FTX_HAVE_CUDA
      const int status = cuda::LaunchGemm(
          ctx.cublas_handle(), call.dims.batch, call.dims.m, call.dims.n,
          call.dims.k, call.transpose_a,
          {call.a.data, call.a.row_stride, call.a.batch_stride},
          call.transpose_b,
          {call.b.data, call.b.row_stride, call.b.batch_stride}, call.alpha,
          call.beta, {call.c.data, call.c.row_stride, call.c.batch_stride});
      if (status != 0) {
        return absl::InternalError(absl::StrCat(
            op, ": cuBLAS SGEMM failed: ", cuda::CublasStatusName(status)));
      }
      return absl::OkStatus();
#else
      return CudaNotBuilt(op);
#endif
    }
  }
  return absl::InvalidArgumentError(absl::StrCat(op, ": unknown device type"));
}

// c = alpha * sum_i op(a[i]) @ op(b[i]) + beta * c for an output c shared by
// the batch (batch_stride 0): one GEMM over the concatenated inner dimension
// when the items of a and b are evenly spaced rows, else one GEMM per item in
// batch order, the first with beta and the rest accumulating.
absl::Status RunGemmSummedOverBatch(absl::string_view op, const Context& ctx,
                                    GemmCall call) {
  const int64_t batch = call.dims.batch;
  const int64_t k = call.dims.k;
  call.dims.batch = 1;
  if (batch == 0) {
    call.dims.k = 0;  // an empty sum: c = beta * c
    return RunGemm(op, ctx, call);
  }
  if (call.transpose_a && !call.transpose_b &&
      call.a.batch_stride == k * call.a.row_stride &&
      call.b.batch_stride == k * call.b.row_stride) {
    call.dims.k = batch * k;
    return RunGemm(op, ctx, call);
  }
  const GemmCall whole = call;
  for (int64_t item = 0; item < batch; ++item) {
    call.a.data = whole.a.data + item * whole.a.batch_stride;
    call.b.data = whole.b.data + item * whole.b.batch_stride;
    call.beta = item == 0 ? whole.beta : 1.0f;
    FTX_RETURN_IF_ERROR(RunGemm(op, ctx, call));
  }
  return absl::OkStatus();
}

// Checks a gradient output: skipped (empty view) or of its operand's shape.
absl::Status CheckGradient(absl::string_view op, const Context& ctx,
                           absl::string_view name, TensorView<float> gradient,
                           absl::string_view operand_name,
                           TensorView<const float> operand) {
  FTX_RETURN_IF_ERROR(CheckOperand(op, name, gradient, ctx));
  if (gradient.shape() != operand.shape()) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": ", name, " has shape ", gradient.shape().ToString(), " but ",
        operand_name, " has shape ", operand.shape().ToString()));
  }
  return CheckOutputItemsDisjoint(op, name, gradient);
}

bool Skipped(const TensorView<float>& gradient) {
  return gradient.data() == nullptr && gradient.rank() == 0;
}

}  // namespace

absl::Status MatMul(const Context& ctx, TensorView<const float> a,
                    TensorView<const float> b, TensorView<float> c,
                    const MatMulOptions& options) {
  constexpr absl::string_view kOp = "MatMul";
  FTX_ASSIGN_OR_RETURN(const cpu::GemmDims dims,
                       CheckProduct(kOp, ctx, a, b, "c", c, options));
  FTX_RETURN_IF_ERROR(CheckOutputItemsDisjoint(kOp, "c", c));
  GemmCall call;
  call.dims = dims;
  call.transpose_a = options.transpose_a;
  call.transpose_b = options.transpose_b;
  call.alpha = options.alpha;
  call.beta = options.beta;
  call.a = MatrixOf(a);
  call.b = MatrixOf(b);
  call.c = MatrixOf(c);
  return RunGemm(kOp, ctx, FoldBatchIntoRows(call));
}

absl::Status MatMulBackward(const Context& ctx, TensorView<const float> a,
                            TensorView<const float> b,
                            TensorView<const float> d_c, TensorView<float> d_a,
                            TensorView<float> d_b, const MatMulOptions& options,
                            const MatMulGradOptions& grad_options) {
  constexpr absl::string_view kOp = "MatMulBackward";
  FTX_ASSIGN_OR_RETURN(const cpu::GemmDims dims,
                       CheckProduct(kOp, ctx, a, b, "d_c", d_c, options));
  const bool want_d_a = !Skipped(d_a);
  const bool want_d_b = !Skipped(d_b);
  if (want_d_a)
    FTX_RETURN_IF_ERROR(CheckGradient(kOp, ctx, "d_a", d_a, "a", a));
  if (want_d_b)
    FTX_RETURN_IF_ERROR(CheckGradient(kOp, ctx, "d_b", d_b, "b", b));
  const cpu::GemmMatrix<const float> a_matrix = MatrixOf(a);
  const cpu::GemmMatrix<const float> b_matrix = MatrixOf(b);
  const cpu::GemmMatrix<const float> d_c_matrix = MatrixOf(d_c);

  if (want_d_a) {
    // d_a = alpha * d_c @ op(b)^T, or its transpose op(b) @ d_c^T when a is
    // stored transposed.
    GemmCall call;
    call.dims = {dims.batch, options.transpose_a ? dims.k : dims.m,
                 options.transpose_a ? dims.m : dims.k, dims.n};
    if (options.transpose_a) {
      call.transpose_a = options.transpose_b;
      call.a = b_matrix;
      call.transpose_b = true;
      call.b = d_c_matrix;
    } else {
      call.transpose_a = false;
      call.a = d_c_matrix;
      call.transpose_b = !options.transpose_b;
      call.b = b_matrix;
    }
    call.alpha = options.alpha;
    call.beta = grad_options.accumulate_a ? 1.0f : 0.0f;
    call.c = MatrixOf(d_a);
    const bool broadcast = a.rank() == 2 && b.rank() == 3;
    FTX_RETURN_IF_ERROR(broadcast ? RunGemmSummedOverBatch(kOp, ctx, call)
                                  : RunGemm(kOp, ctx, call));
  }
  if (want_d_b) {
    // d_b = alpha * op(a)^T @ d_c, or its transpose d_c^T @ op(a) when b is
    // stored transposed.
    GemmCall call;
    call.dims = {dims.batch, options.transpose_b ? dims.n : dims.k,
                 options.transpose_b ? dims.k : dims.n, dims.m};
    if (options.transpose_b) {
      call.transpose_a = true;
      call.a = d_c_matrix;
      call.transpose_b = options.transpose_a;
      call.b = a_matrix;
    } else {
      call.transpose_a = !options.transpose_a;
      call.a = a_matrix;
      call.transpose_b = false;
      call.b = d_c_matrix;
    }
    call.alpha = options.alpha;
    call.beta = grad_options.accumulate_b ? 1.0f : 0.0f;
    call.c = MatrixOf(d_b);
    const bool broadcast = b.rank() == 2 && a.rank() == 3;
    FTX_RETURN_IF_ERROR(broadcast ? RunGemmSummedOverBatch(kOp, ctx, call)
                                  : RunGemm(kOp, ctx, call));
  }
  return absl::OkStatus();
}

}  // namespace ftx
