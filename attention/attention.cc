#include "attention/attention.h"

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "kernels/base/validate.h"

namespace ftx {
namespace {

absl::Status CheckRank4(absl::string_view op, absl::string_view name,
                        const TensorView<const float>& view,
                        const Context& ctx) {
  if (view.rank() != 4) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", name, " must have rank 4, got shape ",
                     view.shape().ToString()));
  }
  if (view.data() == nullptr && view.NumElements() > 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", name, " has null data"));
  }
  if (view.device().type != ctx.device().type) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": ", name, " is on ", DeviceTypeName(view.device().type),
        " but the context is ", DeviceTypeName(ctx.device().type)));
  }
  if (view.stride(3) != 1 && view.dim(3) > 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": ", name, " must have unit stride in its last axis"));
  }
  return absl::OkStatus();
}

absl::Status CheckShape(absl::string_view op, absl::string_view name,
                        const TensorView<const float>& view,
                        const Shape& expected) {
  if (view.shape() != expected) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", name, " has shape ", view.shape().ToString(),
                     ", expected ", expected.ToString()));
  }
  return absl::OkStatus();
}

// A given head bias (or its gradient) must be a usable [H, L, S] view on the
// context's device.
absl::Status CheckHeadBias(absl::string_view op, absl::string_view name,
                           const TensorView<const float>& view,
                           const AttentionDims& dims, const Context& ctx) {
  const Shape expected{dims.heads, dims.queries, dims.keys};
  if (view.shape() != expected) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", name, " has shape ", view.shape().ToString(),
                     ", expected [H, L, S] = ", expected.ToString()));
  }
  if (view.data() == nullptr && view.NumElements() > 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", name, " has null data"));
  }
  if (view.device().type != ctx.device().type) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": ", name, " is on ", DeviceTypeName(view.device().type),
        " but the context is ", DeviceTypeName(ctx.device().type)));
  }
  if (view.stride(2) != 1 && view.dim(2) > 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": ", name, " must have unit stride in its last axis"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<AttentionDims> ValidateAttentionForward(
    absl::string_view op, const Context& ctx, const AttentionInputs& inputs,
    TensorView<float> out, const AttentionSupport& support) {
  FTX_RETURN_IF_ERROR(CheckRank4(op, "queries", inputs.queries, ctx));
  FTX_RETURN_IF_ERROR(CheckRank4(op, "keys", inputs.keys, ctx));
  FTX_RETURN_IF_ERROR(CheckRank4(op, "values", inputs.values, ctx));
  FTX_RETURN_IF_ERROR(CheckRank4(op, "out", out, ctx));
  AttentionDims dims;
  dims.batch = inputs.queries.dim(0);
  dims.queries = inputs.queries.dim(1);
  dims.heads = inputs.queries.dim(2);
  dims.qk_dim = inputs.queries.dim(3);
  dims.keys = inputs.keys.dim(1);
  dims.value_dim = inputs.values.dim(3);
  FTX_RETURN_IF_ERROR(
      CheckShape(op, "keys", inputs.keys,
                 {dims.batch, dims.keys, dims.heads, dims.qk_dim}));
  FTX_RETURN_IF_ERROR(
      CheckShape(op, "values", inputs.values,
                 {dims.batch, dims.keys, dims.heads, dims.value_dim}));
  FTX_RETURN_IF_ERROR(CheckShape(
      op, "out", out, {dims.batch, dims.queries, dims.heads, dims.value_dim}));
  FTX_RETURN_IF_ERROR(inputs.attn_mask.Validate(op, dims.queries, dims.keys));
  FTX_RETURN_IF_ERROR(inputs.query_lengths.Validate(op, "query_lengths",
                                                    dims.batch, dims.queries));
  FTX_RETURN_IF_ERROR(
      inputs.key_lengths.Validate(op, "key_lengths", dims.batch, dims.keys));
  if (IsGiven(inputs.head_bias)) {
    if (!support.head_bias) {
      return absl::InvalidArgumentError(
          absl::StrCat(op, ": this mechanism does not support a head_bias"));
    }
    FTX_RETURN_IF_ERROR(
        CheckHeadBias(op, "head_bias", inputs.head_bias, dims, ctx));
  }
  return dims;
}

absl::StatusOr<AttentionDims> ValidateAttentionBackward(
    absl::string_view op, const Context& ctx, const AttentionInputs& inputs,
    TensorView<const float> d_out, const AttentionGrads& grads,
    const AttentionSupport& support) {
  FTX_RETURN_IF_ERROR(CheckRank4(op, "d_out", d_out, ctx));
  FTX_ASSIGN_OR_RETURN(
      AttentionDims dims,
      ValidateAttentionForward(
          op, ctx, inputs,
          TensorView<float>(const_cast<float*>(d_out.data()), d_out.shape(),
                            d_out.strides(), d_out.device()),
          support));
  FTX_RETURN_IF_ERROR(CheckRank4(op, "d_queries", grads.d_queries, ctx));
  FTX_RETURN_IF_ERROR(CheckRank4(op, "d_keys", grads.d_keys, ctx));
  FTX_RETURN_IF_ERROR(CheckRank4(op, "d_values", grads.d_values, ctx));
  FTX_RETURN_IF_ERROR(
      CheckShape(op, "d_queries", grads.d_queries, inputs.queries.shape()));
  FTX_RETURN_IF_ERROR(
      CheckShape(op, "d_keys", grads.d_keys, inputs.keys.shape()));
  FTX_RETURN_IF_ERROR(
      CheckShape(op, "d_values", grads.d_values, inputs.values.shape()));
  if (IsGiven(grads.d_head_bias)) {
    if (!IsGiven(inputs.head_bias)) {
      return absl::InvalidArgumentError(absl::StrCat(
          op, ": d_head_bias is given but the inputs have no head_bias"));
    }
    FTX_RETURN_IF_ERROR(
        CheckHeadBias(op, "d_head_bias", grads.d_head_bias, dims, ctx));
  }
  return dims;
}

absl::Status EnsureTensor(Tensor& tensor, const Shape& shape, Device device) {
  if (tensor.raw_data() != nullptr && tensor.shape() == shape &&
      tensor.dtype() == DType::kF32 && tensor.device() == device) {
    return absl::OkStatus();
  }
  FTX_ASSIGN_OR_RETURN(tensor, Tensor::Create(DType::kF32, shape, device));
  return absl::OkStatus();
}

}  // namespace ftx
