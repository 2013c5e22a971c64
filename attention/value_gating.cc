#include "attention/value_gating.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "kernels/linear/linear.h"

namespace ftx {
namespace {

constexpr char kOp[] = "ValueGating";

double Sigmoid(double z) { return 1.0 / (1.0 + std::exp(-z)); }

double Activate(ValueGateActivation activation, double z) {
  return activation == ValueGateActivation::kSigmoid ? Sigmoid(z)
                                                     : z * Sigmoid(z);
}

double ActivationDerivative(ValueGateActivation activation, double z) {
  const double s = Sigmoid(z);
  return activation == ValueGateActivation::kSigmoid ? s * (1 - s)
                                                     : s * (1 + z * (1 - s));
}

absl::Status CheckView(absl::string_view name, TensorView<const float> view,
                       int64_t batch, int64_t time, int64_t width) {
  if (view.rank() != 3 || view.dim(2) != width ||
      (batch >= 0 && (view.dim(0) != batch || view.dim(1) != time))) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": ", name, " must be [B, T, ", width, "]",
        batch >= 0 ? absl::StrCat(" with B = ", batch, ", T = ", time) : "",
        ", got ", view.shape().ToString()));
  }
  if (view.data() == nullptr || !view.IsContiguous() ||
      view.device().type != DeviceType::kCpu) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": ", name, " must be a contiguous CPU view"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ValueGating> ValueGating::Create(
    const ValueGatingConfig& config) {
  if (config.dim < 1 || config.heads < 1 || config.head_dim < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": dim, heads and head_dim must be >= 1, got ",
                     config.dim, ", ", config.heads, ", ", config.head_dim));
  }
  return ValueGating(config);
}

int64_t ValueGating::gates() const {
  return config_.kind == ValueGateKind::kPerChannel
             ? config_.heads * config_.head_dim
             : config_.heads;
}

std::vector<ParamShape> ValueGating::ParamShapes() const {
  const std::string prefix = config_.kind == ValueGateKind::kPerChannel
                                 ? "to_v_gate"
                                 : "to_v_head_gate";
  return {{prefix + ".weight", {gates(), config_.dim}},
          {prefix + ".bias", {gates()}}};
}

absl::Status ValueGating::InitParams(const ValueGatingGrads& params) const {
  if (params.weight.shape() != Shape{gates(), config_.dim} ||
      params.bias.NumElements() != gates() || params.weight.data() == nullptr ||
      params.bias.data() == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": InitParams needs weight [", gates(), ", ",
                     config_.dim, "] and bias [", gates(), "]"));
  }
  std::fill_n(params.weight.data(), params.weight.NumElements(), 0.0f);
  std::fill_n(params.bias.data(), gates(), config_.initial_bias);
  return absl::OkStatus();
}

absl::Status ValueGating::Validate(const Context& ctx,
                                   const ValueGatingParams& params,
                                   TensorView<const float> x,
                                   TensorView<const float> values,
                                   TensorView<const float> out) const {
  if (ctx.device().type != DeviceType::kCpu) {
    return absl::UnimplementedError(
        absl::StrCat(kOp, ": only CPU contexts are supported"));
  }
  FTX_RETURN_IF_ERROR(CheckView("x", x, -1, -1, config_.dim));
  const int64_t width = config_.heads * config_.head_dim;
  FTX_RETURN_IF_ERROR(CheckView("values", values, x.dim(0), x.dim(1), width));
  FTX_RETURN_IF_ERROR(CheckView("out", out, x.dim(0), x.dim(1), width));
  if (params.weight.shape() != Shape{gates(), config_.dim} ||
      params.bias.shape() != Shape{gates()}) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": weight must be [", gates(), ", ", config_.dim, "] and bias [",
        gates(), "], got ", params.weight.shape().ToString(), " and ",
        params.bias.shape().ToString()));
  }
  return absl::OkStatus();
}

absl::Status ValueGating::Forward(const Context& ctx,
                                  const ValueGatingParams& params,
                                  TensorView<const float> x,
                                  TensorView<const float> values,
                                  TensorView<float> out,
                                  ValueGatingCache* cache) {
  FTX_RETURN_IF_ERROR(Validate(ctx, params, x, values, out));
  const int64_t rows = x.dim(0) * x.dim(1), G = gates();
  Tensor& logits = cache != nullptr ? cache->gate_logits : inference_logits_;
  FTX_RETURN_IF_ERROR(EnsureTensor(logits, {rows, G}, ctx.device()));
  FTX_RETURN_IF_ERROR(LinearForward(ctx, x.Reshape({rows, config_.dim}),
                                    params.weight, params.bias,
                                    logits.view<float>()));
  const int64_t width = config_.heads * config_.head_dim;
  const int64_t per_gate = width / G;
  const float* z = logits.data<float>();
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < width; ++i) {
      const double gate = Activate(config_.activation, z[r * G + i / per_gate]);
      out.data()[r * width + i] =
          static_cast<float>(values.data()[r * width + i] * gate);
    }
  }
  return absl::OkStatus();
}

absl::Status ValueGating::Backward(
    const Context& ctx, const ValueGatingParams& params,
    const ValueGatingCache& cache, TensorView<const float> x,
    TensorView<const float> values, TensorView<const float> d_out,
    TensorView<float> d_x, TensorView<float> d_values,
    const ValueGatingGrads& grads) {
  FTX_RETURN_IF_ERROR(Validate(ctx, params, x, values, d_out));
  FTX_RETURN_IF_ERROR(CheckView("d_x", d_x, x.dim(0), x.dim(1), config_.dim));
  const int64_t width = config_.heads * config_.head_dim;
  FTX_RETURN_IF_ERROR(
      CheckView("d_values", d_values, x.dim(0), x.dim(1), width));
  const int64_t rows = x.dim(0) * x.dim(1), G = gates();
  if (cache.gate_logits.shape() != Shape{rows, G}) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": the cache does not come from Forward on this x"));
  }
  FTX_RETURN_IF_ERROR(EnsureTensor(d_logits_, {rows, G}, ctx.device()));
  const int64_t per_gate = width / G;
  const float* z = cache.gate_logits.data<float>();
  float* d_z = d_logits_.data<float>();
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g < G; ++g) {
      const double logit = z[r * G + g];
      const double gate = Activate(config_.activation, logit);
      double d_gate = 0;
      for (int64_t i = g * per_gate; i < (g + 1) * per_gate; ++i) {
        const double upstream = d_out.data()[r * width + i];
        d_gate += upstream * values.data()[r * width + i];
        d_values.data()[r * width + i] = static_cast<float>(upstream * gate);
      }
      d_z[r * G + g] = static_cast<float>(
          d_gate * ActivationDerivative(config_.activation, logit));
    }
  }
  return LinearBackward(ctx, x.Reshape({rows, config_.dim}), params.weight,
                        d_logits_.view<const float>(),
                        d_x.Reshape({rows, config_.dim}), grads.weight,
                        grads.bias);
}

}  // namespace ftx
