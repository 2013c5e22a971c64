#include "attention/qk_norm.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"

namespace ftx {
namespace {

constexpr char kOp[] = "QkNorm";
constexpr double kNormEps = 1e-12;          // F.normalize's eps
constexpr double kTemperatureFloor = 1e-2;  // 0.26.6 clamp(min = 1e-2)

absl::Status CheckCpu(const Context& ctx) {
  if (ctx.device().type != DeviceType::kCpu) {
    return absl::UnimplementedError(
        absl::StrCat(kOp, ": only CPU contexts are supported"));
  }
  return absl::OkStatus();
}

// A [N, X, H, E] view with unit last stride; X is free.
absl::Status CheckHeads(absl::string_view name, TensorView<const float> view,
                        int64_t heads, int64_t head_dim) {
  if (view.rank() != 4 || view.dim(2) != heads || view.dim(3) != head_dim) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": ", name, " must be [N, X, ", heads, ", ", head_dim,
                     "], got ", view.shape().ToString()));
  }
  if (view.device().type != DeviceType::kCpu ||
      (view.data() == nullptr && !view.empty()) ||
      (view.stride(3) != 1 && head_dim > 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": ", name, " must be a CPU view with unit stride in E"));
  }
  return absl::OkStatus();
}

absl::Status CheckPair(absl::string_view in_name, TensorView<const float> in,
                       absl::string_view out_name, TensorView<const float> out,
                       int64_t heads, int64_t head_dim) {
  FTX_RETURN_IF_ERROR(CheckHeads(in_name, in, heads, head_dim));
  FTX_RETURN_IF_ERROR(CheckHeads(out_name, out, heads, head_dim));
  if (in.shape() != out.shape()) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": ", out_name, " has shape ", out.shape().ToString(),
                     " but ", in_name, " has ", in.shape().ToString()));
  }
  return absl::OkStatus();
}

absl::Status CheckParamShape(absl::string_view name,
                             TensorView<const float> view, bool present,
                             const Shape& shape) {
  if (!present) {
    if (!IsAbsent(view)) {
      return absl::InvalidArgumentError(absl::StrCat(
          kOp, ": ", name, " is given but this configuration has none"));
    }
    return absl::OkStatus();
  }
  if (view.shape() != shape || view.data() == nullptr || !view.IsContiguous() ||
      view.device().type != DeviceType::kCpu) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": ", name, " must be a contiguous CPU ",
                     shape.ToString(), ", got ", view.shape().ToString()));
  }
  return absl::OkStatus();
}

// Shared by queries and keys: for every [E] row of `in` (head h), groups of
// E / G dims are normalised and multiplied by multiplier(h, e).
template <typename Multiplier>
void NormaliseRows(TensorView<const float> in, TensorView<float> out,
                   int64_t groups, const Multiplier& multiplier) {
  const int64_t N = in.dim(0), X = in.dim(1), H = in.dim(2), E = in.dim(3);
  const int64_t width = E / groups;
  std::vector<float> row(E);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t x = 0; x < X; ++x) {
      for (int64_t h = 0; h < H; ++h) {
        const float* source = &in.at(n, x, h);
        std::copy(source, source + E, row.begin());
        float* target = &out.at(n, x, h);
        for (int64_t g = 0; g < groups; ++g) {
          double sum = 0;
          for (int64_t e = g * width; e < (g + 1) * width; ++e) {
            sum += static_cast<double>(row[e]) * row[e];
          }
          const double inverse = 1.0 / std::max(std::sqrt(sum), kNormEps);
          for (int64_t e = g * width; e < (g + 1) * width; ++e) {
            target[e] = static_cast<float>(row[e] * inverse * multiplier(h, e));
          }
        }
      }
    }
  }
}

// Backward of NormaliseRows for y = c(h, e) * u, u = x / max(|x|, eps):
//   d_x = (c d_y - u (u . c d_y)) / |x|   (|x| > eps; c d_y / eps otherwise)
// and on_unit(h, e, u_e, d_y_e) sees every normalised entry for the
// parameter gradients.
template <typename Multiplier, typename OnUnit>
void NormaliseRowsBackward(TensorView<const float> in,
                           TensorView<const float> d_out,
                           TensorView<float> d_in, int64_t groups,
                           const Multiplier& multiplier,
                           const OnUnit& on_unit) {
  const int64_t N = in.dim(0), X = in.dim(1), H = in.dim(2), E = in.dim(3);
  const int64_t width = E / groups;
  std::vector<double> unit(E), d_unit(E);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t x = 0; x < X; ++x) {
      for (int64_t h = 0; h < H; ++h) {
        const float* source = &in.at(n, x, h);
        const float* d_target = &d_out.at(n, x, h);
        for (int64_t g = 0; g < groups; ++g) {
          double sum = 0;
          for (int64_t e = g * width; e < (g + 1) * width; ++e) {
            sum += static_cast<double>(source[e]) * source[e];
          }
          const double norm = std::sqrt(sum);
          const double divisor = std::max(norm, kNormEps);
          double projection = 0;
          for (int64_t e = g * width; e < (g + 1) * width; ++e) {
            unit[e] = source[e] / divisor;
            d_unit[e] = multiplier(h, e) * d_target[e];
            projection += unit[e] * d_unit[e];
            on_unit(h, e, unit[e], static_cast<double>(d_target[e]));
          }
          const double keep_direction = norm > kNormEps ? 1.0 : 0.0;
          float* d_source = &d_in.at(n, x, h);
          for (int64_t e = g * width; e < (g + 1) * width; ++e) {
            d_source[e] = static_cast<float>(
                (d_unit[e] - keep_direction * unit[e] * projection) / divisor);
          }
        }
      }
    }
  }
}

}  // namespace

float QkNormTemperatureInit(int64_t seq_len) {
  const double n = static_cast<double>(seq_len);
  return static_cast<float>(-std::log(std::log2(n * n - n)));
}

absl::StatusOr<QkNorm> QkNorm::Create(const QkNormConfig& config) {
  if (config.heads < 1 || config.head_dim < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": heads and head_dim must be >= 1, got ",
                     config.heads, " and ", config.head_dim));
  }
  if (config.groups < 1 || config.head_dim % config.groups != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": groups (", config.groups,
        ") must be >= 1 and divide head_dim (", config.head_dim, ")"));
  }
  if (config.variant == QkNormVariant::kLearnedTemperature &&
      (config.dim_scale || config.groups != 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp,
                     ": dim_scale and groups != 1 exist only in kFixedScale "
                     "(x-transformers >= 1.0)"));
  }
  return QkNorm(config);
}

std::vector<ParamShape> QkNorm::ParamShapes() const {
  const int64_t H = config_.heads, E = config_.head_dim;
  if (config_.variant == QkNormVariant::kLearnedTemperature) {
    return {{"scale", {1, H, 1, 1}}};
  }
  if (config_.dim_scale) {
    return {{"qk_norm_q_scale", {H, 1, E}}, {"qk_norm_k_scale", {H, 1, E}}};
  }
  return {};
}

absl::Status QkNorm::CheckParams(const QkNormParams& params) const {
  const int64_t H = config_.heads, E = config_.head_dim;
  const bool learned = config_.variant == QkNormVariant::kLearnedTemperature;
  const bool dim_scale = !learned && config_.dim_scale;
  FTX_RETURN_IF_ERROR(
      CheckParamShape("scale", params.scale, learned, Shape{1, H, 1, 1}));
  FTX_RETURN_IF_ERROR(
      CheckParamShape("q_scale", params.q_scale, dim_scale, Shape{H, 1, E}));
  return CheckParamShape("k_scale", params.k_scale, dim_scale, Shape{H, 1, E});
}

absl::Status QkNorm::InitParams(const QkNormGrads& params) const {
  FTX_RETURN_IF_ERROR(
      CheckParams({params.scale, params.q_scale, params.k_scale}));
  if (!IsAbsent(params.scale)) {
    std::fill_n(params.scale.data(), config_.heads, config_.scale_init_value);
  }
  for (TensorView<float> view : {params.q_scale, params.k_scale}) {
    if (!IsAbsent(view)) std::fill_n(view.data(), view.NumElements(), 1.0f);
  }
  return absl::OkStatus();
}

float QkNorm::ScoreScale(const QkNormParams& params, int64_t head) const {
  if (config_.variant == QkNormVariant::kFixedScale) return config_.fixed_scale;
  const double temperature =
      std::exp(static_cast<double>(params.scale.data()[head]));
  return static_cast<float>(1.0 / std::max(temperature, kTemperatureFloor));
}

absl::Status QkNorm::Forward(const Context& ctx, const QkNormParams& params,
                             TensorView<const float> queries,
                             TensorView<const float> keys,
                             TensorView<float> q_out,
                             TensorView<float> k_out) const {
  FTX_RETURN_IF_ERROR(CheckCpu(ctx));
  FTX_RETURN_IF_ERROR(CheckParams(params));
  const int64_t H = config_.heads, E = config_.head_dim;
  FTX_RETURN_IF_ERROR(CheckPair("queries", queries, "q_out", q_out, H, E));
  FTX_RETURN_IF_ERROR(CheckPair("keys", keys, "k_out", k_out, H, E));
  if (keys.dim(0) != queries.dim(0)) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": keys have batch ", keys.dim(0),
                     " but queries have ", queries.dim(0)));
  }
  std::vector<double> score_scale(H);
  for (int64_t h = 0; h < H; ++h) score_scale[h] = ScoreScale(params, h);
  const float* q_scale = params.q_scale.data();
  const float* k_scale = params.k_scale.data();
  NormaliseRows(queries, q_out, config_.groups, [&](int64_t h, int64_t e) {
    return score_scale[h] * (q_scale ? q_scale[h * E + e] : 1.0);
  });
  NormaliseRows(keys, k_out, config_.groups, [&](int64_t h, int64_t e) {
    return k_scale ? static_cast<double>(k_scale[h * E + e]) : 1.0;
  });
  return absl::OkStatus();
}

absl::Status QkNorm::Backward(const Context& ctx, const QkNormParams& params,
                              TensorView<const float> queries,
                              TensorView<const float> keys,
                              TensorView<const float> d_q_out,
                              TensorView<const float> d_k_out,
                              TensorView<float> d_queries,
                              TensorView<float> d_keys,
                              const QkNormGrads& grads) const {
  FTX_RETURN_IF_ERROR(CheckCpu(ctx));
  FTX_RETURN_IF_ERROR(CheckParams(params));
  FTX_RETURN_IF_ERROR(CheckParams({grads.scale, grads.q_scale, grads.k_scale}));
  const int64_t H = config_.heads, E = config_.head_dim;
  FTX_RETURN_IF_ERROR(CheckPair("queries", queries, "d_q_out", d_q_out, H, E));
  FTX_RETURN_IF_ERROR(
      CheckPair("queries", queries, "d_queries", d_queries, H, E));
  FTX_RETURN_IF_ERROR(CheckPair("keys", keys, "d_k_out", d_k_out, H, E));
  FTX_RETURN_IF_ERROR(CheckPair("keys", keys, "d_keys", d_keys, H, E));
  std::vector<double> score_scale(H);
  for (int64_t h = 0; h < H; ++h) score_scale[h] = ScoreScale(params, h);
  const float* q_scale = params.q_scale.data();
  const float* k_scale = params.k_scale.data();
  // d_score[h] = sum of (g^q u) . d_y over head h's query rows.
  std::vector<double> d_score(H, 0.0);
  std::vector<double> d_q_scale(H * E, 0.0), d_k_scale(H * E, 0.0);
  NormaliseRowsBackward(
      queries, d_q_out, d_queries, config_.groups,
      [&](int64_t h, int64_t e) {
        return score_scale[h] * (q_scale ? q_scale[h * E + e] : 1.0);
      },
      [&](int64_t h, int64_t e, double unit, double d_y) {
        const double gain = q_scale ? q_scale[h * E + e] : 1.0;
        d_score[h] += gain * unit * d_y;
        d_q_scale[h * E + e] += score_scale[h] * unit * d_y;
      });
  NormaliseRowsBackward(
      keys, d_k_out, d_keys, config_.groups,
      [&](int64_t h, int64_t e) {
        return k_scale ? static_cast<double>(k_scale[h * E + e]) : 1.0;
      },
      [&](int64_t h, int64_t e, double unit, double d_y) {
        d_k_scale[h * E + e] += unit * d_y;
      });
  if (!IsAbsent(grads.scale)) {
    // s = exp(-theta) where exp(theta) >= 1e-2 (ds/dtheta = -s), constant
    // below the clamp.
    for (int64_t h = 0; h < H; ++h) {
      const double theta = params.scale.data()[h];
      if (std::exp(theta) >= kTemperatureFloor) {
        grads.scale.data()[h] +=
            static_cast<float>(-score_scale[h] * d_score[h]);
      }
    }
  }
  if (!IsAbsent(grads.q_scale)) {
    for (int64_t i = 0; i < H * E; ++i) {
      grads.q_scale.data()[i] += static_cast<float>(d_q_scale[i]);
      grads.k_scale.data()[i] += static_cast<float>(d_k_scale[i]);
    }
  }
  return absl::OkStatus();
}

}  // namespace ftx
