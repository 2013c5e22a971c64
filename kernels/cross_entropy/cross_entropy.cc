#include "kernels/cross_entropy/cross_entropy.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "kernels/base/status_macros.h"
#include "kernels/base/validate.h"
#include "kernels/cross_entropy/cross_entropy_cpu.h"

#ifdef FTX_HAVE_CUDA
#include "kernels/cross_entropy/cross_entropy_cuda.h"
#endif

namespace ftx {
namespace {

// A usable view of `count` contiguous elements, one per `what`.
template <typename T>
absl::Status CheckFlat(absl::string_view op, absl::string_view name,
                       const TensorView<T>& view, int64_t count,
                       absl::string_view what, const Context& ctx) {
  FTX_RETURN_IF_ERROR(CheckRowsView(op, name, view, ctx));
  if (view.NumElements() != count || !view.IsContiguous()) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": ", name, " must hold ", count, " contiguous elements (one per ",
        what, "), got shape ", view.shape().ToString()));
  }
  return absl::OkStatus();
}

// CheckFlat with one element per row of logits.
template <typename T>
absl::Status CheckPerRow(absl::string_view op, absl::string_view name,
                         const TensorView<T>& view,
                         const TensorView<const float>& logits,
                         const Context& ctx) {
  return CheckFlat(op, name, view, AsMatrix(logits).rows,
                   absl::StrCat("row of logits ", logits.shape().ToString()),
                   ctx);
}

absl::Status CheckOptions(absl::string_view op,
                          const CrossEntropyOptions& options) {
  if (!(options.label_smoothing >= 0.0f && options.label_smoothing <= 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": options.label_smoothing must be in [0, 1], got ",
                     options.label_smoothing));
  }
  return absl::OkStatus();
}

// Every target is ignore_index or in [0, vocab). CUDA targets are copied to
// the host first.
absl::Status CheckTargets(absl::string_view op, const Context& ctx,
                          TensorView<const int32_t> targets, int64_t rows,
                          int64_t vocab, int32_t ignore_index) {
  const int32_t* host_targets = targets.data();
  std::vector<int32_t> copied;
  if (ctx.device().type == DeviceType::kCuda) {
#ifdef FTX_HAVE_CUDA
    copied.resize(rows);
    FTX_RETURN_IF_ERROR(CudaLaunchStatus(
        op, cuda::CopyTargetsToHost(rows, targets.data(), copied.data(),
                                    ctx.cuda_stream())));
    host_targets = copied.data();
#else
    return CudaNotBuilt(op);
#endif
  }
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t target = host_targets[r];
    if (target != ignore_index && (target < 0 || target >= vocab)) {
      return absl::InvalidArgumentError(absl::StrCat(
          op, ": targets[", r, "] = ", target, " is outside [0, ", vocab,
          ") and is not options.ignore_index (", ignore_index, ")"));
    }
  }
  return absl::OkStatus();
}

// The checks shared by forward and backward: logits, targets and the options.
absl::Status CheckLogitsAndTargets(absl::string_view op, const Context& ctx,
                                   TensorView<const float> logits,
                                   TensorView<const int32_t> targets,
                                   const CrossEntropyOptions& options) {
  FTX_RETURN_IF_ERROR(CheckRowsView(op, "logits", logits, ctx));
  FTX_RETURN_IF_ERROR(CheckOptions(op, options));
  FTX_RETURN_IF_ERROR(CheckPerRow(op, "targets", targets, logits, ctx));
  const MatrixView<const float> rows = AsMatrix(logits);
  return CheckTargets(op, ctx, targets, rows.rows, rows.cols,
                      options.ignore_index);
}

}  // namespace

absl::Status CrossEntropyForward(const Context& ctx,
                                 TensorView<const float> logits,
                                 TensorView<const int32_t> targets,
                                 TensorView<float> losses,
                                 TensorView<float> probabilities_or_empty,
                                 const CrossEntropyOptions& options) {
  constexpr absl::string_view kOp = "CrossEntropyForward";
  FTX_RETURN_IF_ERROR(
      CheckLogitsAndTargets(kOp, ctx, logits, targets, options));
  const auto logit_rows = AsMatrix(logits);
  FTX_RETURN_IF_ERROR(CheckPerRow(kOp, "losses", losses, logits, ctx));
  MatrixView<float> probabilities;
  if (!IsAbsent(probabilities_or_empty)) {
    FTX_RETURN_IF_ERROR(
        CheckSameShapes(kOp, ctx, "logits", logits,
                        Named("probabilities", probabilities_or_empty)));
    probabilities = AsMatrix(probabilities_or_empty);
  }
  return RouteByDevice(
      kOp, ctx,
      [&] {
        cpu::CrossEntropyForward(ctx, logit_rows, targets.data(),
                                 options.ignore_index, options.label_smoothing,
                                 losses.data(), probabilities);
      },
      FTX_CUDA_LAUNCH(cuda::LaunchCrossEntropyForward(
          logit_rows.rows, logit_rows.cols, logit_rows.data,
          logit_rows.row_stride, targets.data(), options.ignore_index,
          options.label_smoothing, losses.data(), probabilities.data,
          probabilities.row_stride, ctx.cuda_stream())));
}

absl::Status CrossEntropyBackward(const Context& ctx,
                                  TensorView<const float> logits,
                                  TensorView<const int32_t> targets,
                                  TensorView<const float> d_losses,
                                  TensorView<float> d_logits,
                                  const CrossEntropyOptions& options) {
  constexpr absl::string_view kOp = "CrossEntropyBackward";
  FTX_RETURN_IF_ERROR(
      CheckLogitsAndTargets(kOp, ctx, logits, targets, options));
  const auto logit_rows = AsMatrix(logits);
  FTX_RETURN_IF_ERROR(CheckPerRow(kOp, "d_losses", d_losses, logits, ctx));
  FTX_RETURN_IF_ERROR(
      CheckSameShapes(kOp, ctx, "logits", logits, Named("d_logits", d_logits)));
  const auto d_logit_rows = AsMatrix(d_logits);
  return RouteByDevice(
      kOp, ctx,
      [&] {
        cpu::CrossEntropyBackward(ctx, logit_rows, targets.data(),
                                  options.ignore_index, options.label_smoothing,
                                  d_losses.data(), d_logit_rows);
      },
      FTX_CUDA_LAUNCH(cuda::LaunchCrossEntropyBackward(
          logit_rows.rows, logit_rows.cols, logit_rows.data,
          logit_rows.row_stride, targets.data(), options.ignore_index,
          options.label_smoothing, d_losses.data(), d_logit_rows.data,
          d_logit_rows.row_stride, ctx.cuda_stream())));
}

absl::Status MeanLoss(const Context& ctx, TensorView<const float> losses,
                      TensorView<const int32_t> targets, TensorView<float> mean,
                      TensorView<float> d_losses,
                      const CrossEntropyOptions& options) {
  constexpr absl::string_view kOp = "MeanLoss";
  const int64_t rows = losses.NumElements();
  FTX_RETURN_IF_ERROR(CheckFlat(kOp, "losses", losses, rows, "loss", ctx));
  FTX_RETURN_IF_ERROR(CheckFlat(kOp, "targets", targets, rows, "loss", ctx));
  FTX_RETURN_IF_ERROR(CheckFlat(kOp, "d_losses", d_losses, rows, "loss", ctx));
  FTX_RETURN_IF_ERROR(CheckVector(kOp, "mean", mean, 1, ctx));
  return RouteByDevice(
      kOp, ctx,
      [&] {
        cpu::MeanLoss(rows, losses.data(), targets.data(), options.ignore_index,
                      mean.data(), d_losses.data());
      },
      FTX_CUDA_LAUNCH(cuda::LaunchMeanLoss(
          rows, losses.data(), targets.data(), options.ignore_index,
          mean.data(), d_losses.data(), ctx.cuda_stream())));
}

}  // namespace ftx
