#include "layers/alibi.h"

#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"

namespace ftx {
namespace {

// x-transformers' get_slopes_power_of_2: start = 2 ** -(2 ** -(log2(n) - 3)),
// slope_i = start * start ** i, in double.
std::vector<double> PowerOfTwoSlopes(int64_t n) {
  const double start =
      std::pow(2.0, -std::pow(2.0, -(std::log2(static_cast<double>(n)) - 3)));
  std::vector<double> slopes;
  for (int64_t i = 0; i < n; ++i) {
    slopes.push_back(start * std::pow(start, static_cast<double>(i)));
  }
  return slopes;
}

// The distance factor d(l, s) with bias = d(l, s) * slope, as float32.
float Distance(AlibiForm form, int64_t l, int64_t s) {
  switch (form) {
    case AlibiForm::kSymmetric:
      return -static_cast<float>(s > l ? s - l : l - s);
    case AlibiForm::kKeyIndex:
      return static_cast<float>(s);
    case AlibiForm::kSigned:
      return static_cast<float>(s - l);
    case AlibiForm::kAbsoluteBidirectional:
      return static_cast<float>(s > l ? s - l : l - s);
  }
  return 0.0f;
}

}  // namespace

Alibi::Alibi(const AlibiConfig& config, int64_t alibi_heads, AlibiForm form)
    : config_(config), alibi_heads_(alibi_heads), form_(form) {
  for (double slope : Slopes(alibi_heads_)) {
    fixed_slopes_.push_back(static_cast<float>(slope));
  }
}

absl::StatusOr<Alibi> Alibi::Create(const AlibiConfig& config) {
  const int64_t alibi_heads =
      config.alibi_heads == 0 ? config.heads : config.alibi_heads;
  if (config.heads < 1 || alibi_heads < 1 || alibi_heads > config.heads) {
    return absl::InvalidArgumentError(
        absl::StrCat("Alibi: need 1 <= alibi_heads <= heads, got alibi_heads ",
                     alibi_heads, " and heads ", config.heads));
  }
  AlibiForm form = AlibiForm::kSymmetric;
  if (config.version == AlibiVersion::kXTransformers0_26_6) {
    if (!config.causal) {
      form = AlibiForm::kAbsoluteBidirectional;
    } else {
      form = config.learned ? AlibiForm::kSigned : AlibiForm::kKeyIndex;
    }
  }
  return Alibi(config, alibi_heads, form);
}

std::vector<double> Alibi::Slopes(int64_t heads) {
  if (heads < 1) return {};
  const double exponent = std::log2(static_cast<double>(heads));
  if (exponent == std::floor(exponent)) return PowerOfTwoSlopes(heads);
  const int64_t closest = int64_t{1} << static_cast<int>(std::floor(exponent));
  std::vector<double> slopes = PowerOfTwoSlopes(closest);
  const std::vector<double> doubled = PowerOfTwoSlopes(2 * closest);
  for (int64_t i = 0; i < heads - closest; ++i) {
    slopes.push_back(doubled[2 * i]);
  }
  return slopes;
}

std::vector<ParamShape> Alibi::ParamShapes() const {
  if (!learned()) return {};
  if (config_.version == AlibiVersion::kXTransformers1_0_0) {
    return {{"learned_logslopes", {alibi_heads_, 1, 1}}};
  }
  std::vector<ParamShape> shapes = {
      {"learned_logslopes", {1, alibi_heads_, 1, 1}}};
  if (form_ == AlibiForm::kAbsoluteBidirectional) {
    shapes.push_back({"learned_logslopes_future", {1, alibi_heads_, 1, 1}});
  }
  return shapes;
}

absl::Status Alibi::CheckParams(
    const char* op, const char* prefix, TensorView<const float> log_slopes,
    TensorView<const float> log_slopes_future) const {
  const std::vector<ParamShape> shapes = ParamShapes();
  const TensorView<const float> given[] = {log_slopes, log_slopes_future};
  for (int i = 0; i < 2; ++i) {
    const bool expected = i < static_cast<int>(shapes.size());
    const std::string name = absl::StrCat(
        prefix, i == 0 ? "learned_logslopes" : "learned_logslopes_future");
    if (!expected) {
      if (IsGiven(given[i])) {
        return absl::InvalidArgumentError(
            absl::StrCat(op, ": ", name,
                         " given, but this configuration has no such "
                         "parameter"));
      }
      continue;
    }
    if (given[i].shape() != shapes[i].shape || !given[i].IsContiguous() ||
        given[i].data() == nullptr ||
        given[i].device().type != DeviceType::kCpu) {
      return absl::InvalidArgumentError(
          absl::StrCat(op, ": ", name, " must be a contiguous CPU ",
                       shapes[i].shape.ToString(), " tensor, got ",
                       given[i].shape().ToString()));
    }
  }
  return absl::OkStatus();
}

absl::Status Alibi::CheckBias(const char* op, const Context& ctx,
                              TensorView<const float> bias) const {
  if (ctx.device().type != DeviceType::kCpu) {
    return absl::UnimplementedError(
        absl::StrCat(op, ": only the CPU path exists"));
  }
  if (bias.rank() != 3 || bias.dim(0) != config_.heads) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": the bias must be [H = ", config_.heads,
                     ", L, S], got ", bias.shape().ToString()));
  }
  if ((bias.data() == nullptr && bias.NumElements() > 0) ||
      bias.device().type != DeviceType::kCpu ||
      (bias.stride(2) != 1 && bias.dim(2) > 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": the bias must be CPU data with unit stride in its last axis"));
  }
  return absl::OkStatus();
}

absl::Status Alibi::InitParams(TensorView<float> log_slopes,
                               TensorView<float> log_slopes_future) const {
  FTX_RETURN_IF_ERROR(CheckParams("Alibi", "", log_slopes, log_slopes_future));
  for (int64_t h = 0; h < alibi_heads_; ++h) {
    const float log_slope =
        static_cast<float>(std::log(static_cast<double>(fixed_slopes_[h])));
    log_slopes.data()[h] = log_slope;
    if (IsGiven(log_slopes_future)) log_slopes_future.data()[h] = log_slope;
  }
  return absl::OkStatus();
}

absl::Status Alibi::Forward(const Context& ctx,
                            TensorView<const float> log_slopes,
                            TensorView<const float> log_slopes_future,
                            TensorView<float> bias) const {
  FTX_RETURN_IF_ERROR(CheckParams("Alibi", "", log_slopes, log_slopes_future));
  FTX_RETURN_IF_ERROR(CheckBias("Alibi", ctx, bias));
  const bool is_learned = learned();
  auto slope = [&](const TensorView<const float>& logs, int64_t h) {
    return is_learned ? static_cast<float>(
                            std::exp(static_cast<double>(logs.data()[h])))
                      : fixed_slopes_[h];
  };
  const int64_t queries = bias.dim(1), keys = bias.dim(2);
  ctx.pool().ParallelFor(
      config_.heads * queries, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          const int64_t h = r / queries, l = r % queries;
          float* row = &bias.at(h, l);
          if (h >= alibi_heads_) {
            for (int64_t s = 0; s < keys; ++s) row[s] = 0.0f;
            continue;
          }
          const float past = slope(log_slopes, h);
          const float future = form_ == AlibiForm::kAbsoluteBidirectional
                                   ? slope(log_slopes_future, h)
                                   : past;
          for (int64_t s = 0; s < keys; ++s) {
            row[s] = Distance(form_, l, s) * (s > l ? future : past);
          }
        }
      });
  return absl::OkStatus();
}

absl::Status Alibi::Backward(const Context& ctx,
                             TensorView<const float> log_slopes,
                             TensorView<const float> log_slopes_future,
                             TensorView<const float> d_bias,
                             TensorView<float> d_log_slopes,
                             TensorView<float> d_log_slopes_future) const {
  const char* op = "AlibiBackward";
  if (!learned()) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": fixed ALiBi has no parameters and nothing to backpropagate"));
  }
  FTX_RETURN_IF_ERROR(CheckParams(op, "", log_slopes, log_slopes_future));
  FTX_RETURN_IF_ERROR(CheckParams(op, "d_", d_log_slopes, d_log_slopes_future));
  FTX_RETURN_IF_ERROR(CheckBias(op, ctx, d_bias));
  const bool bidirectional = form_ == AlibiForm::kAbsoluteBidirectional;
  const int64_t queries = d_bias.dim(1), keys = d_bias.dim(2);
  ctx.pool().ParallelFor(alibi_heads_, [&](int64_t begin, int64_t end) {
    for (int64_t h = begin; h < end; ++h) {
      // bias = d(l, s) exp(theta): d bias / d theta = d(l, s) exp(theta).
      double past_sum = 0, future_sum = 0;
      for (int64_t l = 0; l < queries; ++l) {
        const float* row = &d_bias.at(h, l);
        for (int64_t s = 0; s < keys; ++s) {
          const double term = double{Distance(form_, l, s)} * row[s];
          (bidirectional && s > l ? future_sum : past_sum) += term;
        }
      }
      d_log_slopes.data()[h] += static_cast<float>(
          past_sum * std::exp(static_cast<double>(log_slopes.data()[h])));
      if (bidirectional) {
        d_log_slopes_future.data()[h] += static_cast<float>(
            future_sum *
            std::exp(static_cast<double>(log_slopes_future.data()[h])));
      }
    }
  });
  return absl::OkStatus();
}

}  // namespace ftx
