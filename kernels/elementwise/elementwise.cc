#include "kernels/elementwise/elementwise.h"

#include "kernels/base/status_macros.h"
#include "kernels/base/validate.h"
#include "kernels/elementwise/elementwise_cpu.h"

#ifdef FTX_HAVE_CUDA
#include "kernels/elementwise/elementwise_cuda.h"
#endif

namespace ftx {
namespace {

#ifdef FTX_HAVE_CUDA
cuda::ConstDeviceRows DeviceRowsOf(const MatrixView<const float>& m) {
  return {m.data, m.row_stride};
}
cuda::DeviceRows DeviceRowsOf(const MatrixView<float>& m) {
  return {m.data, m.row_stride};
}
#endif

absl::Status BinaryOp(absl::string_view op_name, cpu::BinaryOp op,
                      const Context& ctx, TensorView<const float> x,
                      TensorView<const float> y, TensorView<float> out) {
  FTX_RETURN_IF_ERROR(
      CheckSameShapes(op_name, ctx, "x", x, Named("y", y), Named("out", out)));
  [[maybe_unused]] const auto m = AsMatrix(out);
  return RouteByDevice(
      op_name, ctx,
      [&] { cpu::Binary(ctx, op, AsMatrix(x), AsMatrix(y), AsMatrix(out)); },
      FTX_CUDA_LAUNCH(cuda::LaunchBinary(
          static_cast<cuda::ElementwiseBinaryOp>(op), m.rows, m.cols,
          DeviceRowsOf(AsMatrix(x)), DeviceRowsOf(AsMatrix(y)), DeviceRowsOf(m),
          ctx.cuda_stream())));
}

}  // namespace

absl::Status Add(const Context& ctx, TensorView<const float> x,
                 TensorView<const float> y, TensorView<float> out) {
  return BinaryOp("Add", cpu::BinaryOp::kAdd, ctx, x, y, out);
}

absl::Status Mul(const Context& ctx, TensorView<const float> x,
                 TensorView<const float> y, TensorView<float> out) {
  return BinaryOp("Mul", cpu::BinaryOp::kMul, ctx, x, y, out);
}

absl::Status MulBackward(const Context& ctx, TensorView<const float> x,
                         TensorView<const float> y,
                         TensorView<const float> d_out, TensorView<float> d_x,
                         TensorView<float> d_y) {
  FTX_RETURN_IF_ERROR(CheckSameShapes("MulBackward", ctx, "d_out", d_out,
                                      Named("x", x), Named("y", y),
                                      Named("d_x", d_x), Named("d_y", d_y)));
  [[maybe_unused]] const auto m = AsMatrix(d_out);
  return RouteByDevice(
      "MulBackward", ctx,
      [&] {
        cpu::MulBackward(ctx, AsMatrix(x), AsMatrix(y), AsMatrix(d_out),
                         AsMatrix(d_x), AsMatrix(d_y));
      },
      FTX_CUDA_LAUNCH(cuda::LaunchMulBackward(
          m.rows, m.cols, DeviceRowsOf(AsMatrix(x)), DeviceRowsOf(AsMatrix(y)),
          DeviceRowsOf(m), DeviceRowsOf(AsMatrix(d_x)),
          DeviceRowsOf(AsMatrix(d_y)), ctx.cuda_stream())));
}

namespace {

absl::Status ScaleAddOp(absl::string_view op_name, const Context& ctx,
                        float alpha, TensorView<const float> x, float beta,
                        TensorView<float> out) {
  FTX_RETURN_IF_ERROR(CheckSameShapes(op_name, ctx, "x", x, Named("out", out)));
  [[maybe_unused]] const auto m = AsMatrix(out);
  return RouteByDevice(
      op_name, ctx,
      [&] { cpu::ScaleAdd(ctx, alpha, AsMatrix(x), beta, AsMatrix(out)); },
      FTX_CUDA_LAUNCH(
          cuda::LaunchScaleAdd(m.rows, m.cols, alpha, DeviceRowsOf(AsMatrix(x)),
                               beta, DeviceRowsOf(m), ctx.cuda_stream())));
}

}  // namespace

absl::Status Scale(const Context& ctx, float alpha, TensorView<const float> x,
                   TensorView<float> out) {
  return ScaleAddOp("Scale", ctx, alpha, x, 0.0f, out);
}

absl::Status Axpy(const Context& ctx, float alpha, TensorView<const float> x,
                  TensorView<float> y) {
  return ScaleAddOp("Axpy", ctx, alpha, x, 1.0f, y);
}

absl::Status ScaleBackward(const Context& ctx, float alpha,
                           TensorView<const float> x,
                           TensorView<const float> d_out, TensorView<float> d_x,
                           TensorView<float> d_alpha) {
  FTX_RETURN_IF_ERROR(CheckSameShapes("ScaleBackward", ctx, "d_out", d_out,
                                      Named("x", x), Named("d_x", d_x)));
  FTX_RETURN_IF_ERROR(CheckVector("ScaleBackward", "d_alpha", d_alpha, 1, ctx));
  [[maybe_unused]] const auto m = AsMatrix(d_out);
  return RouteByDevice(
      "ScaleBackward", ctx,
      [&] {
        d_alpha.data()[0] += static_cast<float>(cpu::ScaleBackward(
            ctx, alpha, AsMatrix(x), AsMatrix(d_out), AsMatrix(d_x)));
      },
      FTX_CUDA_LAUNCH(cuda::LaunchScaleBackward(
          m.rows, m.cols, alpha, DeviceRowsOf(AsMatrix(x)), DeviceRowsOf(m),
          DeviceRowsOf(AsMatrix(d_x)), d_alpha.data(), ctx.cuda_stream())));
}

absl::Status AddBias(const Context& ctx, TensorView<const float> x,
                     TensorView<const float> bias, TensorView<float> out) {
  FTX_RETURN_IF_ERROR(
      CheckSameShapes("AddBias", ctx, "x", x, Named("out", out)));
  FTX_RETURN_IF_ERROR(
      CheckVector("AddBias", "bias", bias, x.dim(x.rank() - 1), ctx));
  [[maybe_unused]] const auto m = AsMatrix(out);
  return RouteByDevice(
      "AddBias", ctx,
      [&] { cpu::AddBias(ctx, AsMatrix(x), bias.data(), AsMatrix(out)); },
      FTX_CUDA_LAUNCH(cuda::LaunchAddBias(
          m.rows, m.cols, DeviceRowsOf(AsMatrix(x)), bias.data(),
          DeviceRowsOf(m), ctx.cuda_stream())));
}

absl::Status AddBiasBackward(const Context& ctx, TensorView<const float> d_out,
                             TensorView<float> d_bias) {
  FTX_RETURN_IF_ERROR(CheckRowsView("AddBiasBackward", "d_out", d_out, ctx));
  FTX_RETURN_IF_ERROR(CheckVector("AddBiasBackward", "d_bias", d_bias,
                                  d_out.dim(d_out.rank() - 1), ctx));
  [[maybe_unused]] const auto m = AsMatrix(d_out);
  return RouteByDevice(
      "AddBiasBackward", ctx,
      [&] { cpu::AddBiasBackward(ctx, AsMatrix(d_out), d_bias.data()); },
      FTX_CUDA_LAUNCH(cuda::LaunchAddBiasBackward(
          m.rows, m.cols, DeviceRowsOf(m), d_bias.data(), ctx.cuda_stream())));
}

}  // namespace ftx
