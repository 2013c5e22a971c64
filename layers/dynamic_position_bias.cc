#include "layers/dynamic_position_bias.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "kernels/activation/activation.h"
#include "kernels/base/rng.h"
#include "kernels/base/status_macros.h"
#include "kernels/layernorm/layernorm.h"
#include "kernels/linear/linear.h"

namespace ftx {
namespace {

// Cache layout: saved[0] = distances [P, 1] (P = 2n - 1), then per hidden
// layer k the tensors below from HiddenBase(k), then saved[OutputIndex] =
// the MLP output [P, H].
constexpr int kDistances = 0;
// Offsets within a hidden layer's block: the Linear output z [P, W]; with
// norm, LN(z) [P, W] and its mean and rstd [P]; last, relu(...) [P, W].
constexpr int kLinearOut = 0;
constexpr int kNormOut = 1;
constexpr int kNormMean = 2;
constexpr int kNormRstd = 3;

int BlockSize(bool norm) { return norm ? 5 : 2; }
int HiddenBase(int64_t k, bool norm) { return 1 + k * BlockSize(norm); }
int Activated(int64_t k, bool norm) {
  return HiddenBase(k, norm) + BlockSize(norm) - 1;
}
int OutputIndex(int64_t depth, bool norm) { return HiddenBase(depth, norm); }

template <typename T>
absl::Status CheckParam(const char* op, const char* prefix,
                        const std::string& name, const TensorView<T>& view,
                        const Shape& shape) {
  if (view.shape() != shape || !view.IsContiguous() || view.data() == nullptr ||
      view.device().type != DeviceType::kCpu) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": ", prefix, name, " must be a contiguous CPU ", shape.ToString(),
        " tensor, got ", view.shape().ToString()));
  }
  return absl::OkStatus();
}

}  // namespace

DynamicPositionBiasParams AsParams(const DynamicPositionBiasGrads& weights) {
  DynamicPositionBiasParams params;
  for (const DynamicPositionBiasGrads::Hidden& layer : weights.hidden) {
    params.hidden.push_back(
        {layer.weight, layer.bias, layer.norm_weight, layer.norm_bias});
  }
  params.out_weight = weights.out_weight;
  params.out_bias = weights.out_bias;
  return params;
}

absl::StatusOr<DynamicPositionBias> DynamicPositionBias::Create(
    const DynamicPositionBiasConfig& config) {
  if (config.dim < 1 || config.heads < 1 || config.depth < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "DynamicPositionBias: dim, heads and depth must be >= 1, got dim ",
        config.dim, ", heads ", config.heads, ", depth ", config.depth));
  }
  return DynamicPositionBias(config);
}

std::vector<ParamShape> DynamicPositionBias::ParamShapes() const {
  std::vector<ParamShape> shapes;
  const int64_t width = config_.dim;
  for (int64_t k = 0; k < config_.depth; ++k) {
    const std::string prefix = absl::StrCat("mlp.", k, ".");
    shapes.push_back({prefix + "0.weight", {width, k == 0 ? 1 : width}});
    shapes.push_back({prefix + "0.bias", {width}});
    if (config_.norm) {
      shapes.push_back({prefix + "1.weight", {width}});
      shapes.push_back({prefix + "1.bias", {width}});
    }
  }
  shapes.push_back(
      {absl::StrCat("mlp.", config_.depth, ".weight"), {config_.heads, width}});
  shapes.push_back(
      {absl::StrCat("mlp.", config_.depth, ".bias"), {config_.heads}});
  return shapes;
}

template <typename T>
absl::Status DynamicPositionBias::CheckWeights(
    const char* op, const char* prefix,
    const DynamicPositionBiasWeights<T>& weights) const {
  if (static_cast<int64_t>(weights.hidden.size()) != config_.depth) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": expected ", config_.depth,
                     " hidden layers of weights, got ", weights.hidden.size()));
  }
  const std::vector<ParamShape> shapes = ParamShapes();
  size_t index = 0;
  for (const auto& layer : weights.hidden) {
    FTX_RETURN_IF_ERROR(CheckParam(op, prefix, shapes[index].name, layer.weight,
                                   shapes[index].shape));
    ++index;
    FTX_RETURN_IF_ERROR(CheckParam(op, prefix, shapes[index].name, layer.bias,
                                   shapes[index].shape));
    ++index;
    if (config_.norm) {
      FTX_RETURN_IF_ERROR(CheckParam(op, prefix, shapes[index].name,
                                     layer.norm_weight, shapes[index].shape));
      ++index;
      FTX_RETURN_IF_ERROR(CheckParam(op, prefix, shapes[index].name,
                                     layer.norm_bias, shapes[index].shape));
      ++index;
    } else if (IsGiven(layer.norm_weight) || IsGiven(layer.norm_bias)) {
      return absl::InvalidArgumentError(absl::StrCat(
          op, ": LayerNorm weights given, but the config has norm = false"));
    }
  }
  FTX_RETURN_IF_ERROR(CheckParam(op, prefix, shapes[index].name,
                                 weights.out_weight, shapes[index].shape));
  ++index;
  return CheckParam(op, prefix, shapes[index].name, weights.out_bias,
                    shapes[index].shape);
}

absl::Status DynamicPositionBias::CheckBias(
    const char* op, const Context& ctx, TensorView<const float> bias) const {
  if (ctx.device().type != DeviceType::kCpu) {
    return absl::UnimplementedError(
        absl::StrCat(op, ": only the CPU path exists"));
  }
  if (bias.rank() != 3 || bias.dim(0) != config_.heads || bias.dim(1) < 1 ||
      bias.dim(1) != bias.dim(2)) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": the bias must be [H = ", config_.heads,
                     ", n, n] with n >= 1 (x-transformers assumes L = S), got ",
                     bias.shape().ToString()));
  }
  if (bias.data() == nullptr || bias.device().type != DeviceType::kCpu ||
      (bias.stride(2) != 1 && bias.dim(2) > 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": the bias must be CPU data with unit stride in its last axis"));
  }
  return absl::OkStatus();
}

absl::Status DynamicPositionBias::InitParams(
    const Context& ctx, const DynamicPositionBiasGrads& weights,
    uint64_t seed) const {
  FTX_RETURN_IF_ERROR(CheckWeights("DynamicPositionBias", "", weights));
  uint64_t stream = 0;
  auto linear = [&](TensorView<float> weight,
                    TensorView<float> bias) -> absl::Status {
    const float bound =
        static_cast<float>(1.0 / std::sqrt(static_cast<double>(weight.dim(1))));
    FTX_RETURN_IF_ERROR(FillUniform(ctx, weight, -bound, bound,
                                    {.seed = seed, .stream = stream++}));
    return FillUniform(ctx, bias, -bound, bound,
                       {.seed = seed, .stream = stream++});
  };
  for (const DynamicPositionBiasGrads::Hidden& layer : weights.hidden) {
    FTX_RETURN_IF_ERROR(linear(layer.weight, layer.bias));
    if (config_.norm) {
      std::fill_n(layer.norm_weight.data(), config_.dim, 1.0f);
      std::fill_n(layer.norm_bias.data(), config_.dim, 0.0f);
      stream += 2;
    }
  }
  return linear(weights.out_weight, weights.out_bias);
}

absl::Status DynamicPositionBias::Forward(
    const Context& ctx, const DynamicPositionBiasParams& params,
    TensorView<float> bias, DynamicPositionBiasCache* cache) {
  const char* op = "DynamicPositionBias";
  FTX_RETURN_IF_ERROR(CheckWeights(op, "", params));
  FTX_RETURN_IF_ERROR(CheckBias(op, ctx, bias));
  const bool norm = config_.norm;
  const int64_t n = bias.dim(1), count = 2 * n - 1, width = config_.dim;
  DynamicPositionBiasCache& saved = cache != nullptr ? *cache : scratch_;
  saved.saved.resize(OutputIndex(config_.depth, norm) + 1);
  FTX_RETURN_IF_ERROR(
      EnsureTensor(saved.saved[kDistances], {count, 1}, ctx.device()));
  for (int64_t k = 0; k < config_.depth; ++k) {
    const int base = HiddenBase(k, norm);
    FTX_RETURN_IF_ERROR(EnsureTensor(saved.saved[base + kLinearOut],
                                     {count, width}, ctx.device()));
    if (norm) {
      FTX_RETURN_IF_ERROR(EnsureTensor(saved.saved[base + kNormOut],
                                       {count, width}, ctx.device()));
      FTX_RETURN_IF_ERROR(
          EnsureTensor(saved.saved[base + kNormMean], {count}, ctx.device()));
      FTX_RETURN_IF_ERROR(
          EnsureTensor(saved.saved[base + kNormRstd], {count}, ctx.device()));
    }
    FTX_RETURN_IF_ERROR(EnsureTensor(saved.saved[Activated(k, norm)],
                                     {count, width}, ctx.device()));
  }
  Tensor& output = saved.saved[OutputIndex(config_.depth, norm)];
  FTX_RETURN_IF_ERROR(
      EnsureTensor(output, {count, config_.heads}, ctx.device()));

  // Distances -(n - 1) .. n - 1 as float32, or sign(d) log(|d| + 1).
  float* distances = saved.saved[kDistances].data<float>();
  for (int64_t p = 0; p < count; ++p) {
    const float d = static_cast<float>(p - (n - 1));
    if (!config_.log_distance) {
      distances[p] = d;
    } else {
      const float magnitude =
          static_cast<float>(std::log(double{std::fabs(d) + 1.0f}));
      distances[p] = d > 0 ? magnitude : (d < 0 ? -magnitude : 0.0f);
    }
  }

  TensorView<const float> input = saved.saved[kDistances].view<float>();
  for (int64_t k = 0; k < config_.depth; ++k) {
    const int base = HiddenBase(k, norm);
    const DynamicPositionBiasParams::Hidden& layer = params.hidden[k];
    const TensorView<float> linear_out =
        saved.saved[base + kLinearOut].view<float>();
    FTX_RETURN_IF_ERROR(
        LinearForward(ctx, input, layer.weight, layer.bias, linear_out));
    TensorView<const float> pre_activation = linear_out;
    if (norm) {
      const TensorView<float> normed =
          saved.saved[base + kNormOut].view<float>();
      FTX_RETURN_IF_ERROR(
          LayerNorm(ctx, linear_out, layer.norm_weight, layer.norm_bias, normed,
                    saved.saved[base + kNormMean].view<float>(),
                    saved.saved[base + kNormRstd].view<float>()));
      pre_activation = normed;
    }
    const TensorView<float> activated =
        saved.saved[Activated(k, norm)].view<float>();
    FTX_RETURN_IF_ERROR(
        Activate(ctx, Activation::kRelu, pre_activation, activated));
    input = activated;
  }
  FTX_RETURN_IF_ERROR(LinearForward(ctx, input, params.out_weight,
                                    params.out_bias, output.view<float>()));

  // bias[h, i, j] = out[i - j + n - 1, h].
  const float* out = output.data<float>();
  const int64_t heads = config_.heads;
  ctx.pool().ParallelFor(heads * n, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t h = r / n, i = r % n;
      float* row = &bias.at(h, i);
      for (int64_t j = 0; j < n; ++j) row[j] = out[(i - j + n - 1) * heads + h];
    }
  });
  return absl::OkStatus();
}

absl::Status DynamicPositionBias::Backward(
    const Context& ctx, const DynamicPositionBiasParams& params,
    const DynamicPositionBiasCache& cache, TensorView<const float> d_bias,
    const DynamicPositionBiasGrads& grads) {
  const char* op = "DynamicPositionBiasBackward";
  FTX_RETURN_IF_ERROR(CheckWeights(op, "", params));
  FTX_RETURN_IF_ERROR(CheckWeights(op, "d_", grads));
  FTX_RETURN_IF_ERROR(CheckBias(op, ctx, d_bias));
  const bool norm = config_.norm;
  const int64_t n = d_bias.dim(1), count = 2 * n - 1, width = config_.dim;
  const int64_t heads = config_.heads;
  const int output_index = OutputIndex(config_.depth, norm);
  if (static_cast<int>(cache.saved.size()) != output_index + 1 ||
      cache.saved[output_index].shape() != Shape{count, heads}) {
    return absl::FailedPreconditionError(absl::StrCat(
        op, ": the cache does not come from a Forward with n = ", n,
        " (pass a cache to Forward)"));
  }

  // d_out[p, h] = sum over the diagonal i - j = p - (n - 1) of d_bias[h].
  FTX_RETURN_IF_ERROR(EnsureTensor(d_output_, {count, heads}, ctx.device()));
  FTX_RETURN_IF_ERROR(EnsureTensor(d_hidden_[0], {count, width}, ctx.device()));
  FTX_RETURN_IF_ERROR(EnsureTensor(d_hidden_[1], {count, width}, ctx.device()));
  float* d_out = d_output_.data<float>();
  ctx.pool().ParallelFor(count, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t diagonal = p - (n - 1);  // i - j
      const int64_t first_i = std::max<int64_t>(diagonal, 0);
      const int64_t last_i = std::min<int64_t>(n - 1, n - 1 + diagonal);
      for (int64_t h = 0; h < heads; ++h) {
        double sum = 0;
        for (int64_t i = first_i; i <= last_i; ++i) {
          sum += d_bias.at(h, i, i - diagonal);
        }
        d_out[p * heads + h] = static_cast<float>(sum);
      }
    }
  });

  TensorView<float> d_activated = d_hidden_[0].view<float>();
  TensorView<float> d_linear_out = d_hidden_[1].view<float>();
  FTX_RETURN_IF_ERROR(LinearBackward(
      ctx, cache.saved[Activated(config_.depth - 1, norm)].view<float>(),
      params.out_weight, d_output_.view<float>(), d_activated, grads.out_weight,
      grads.out_bias));
  for (int64_t k = config_.depth - 1; k >= 0; --k) {
    const int base = HiddenBase(k, norm);
    const DynamicPositionBiasParams::Hidden& layer = params.hidden[k];
    const DynamicPositionBiasGrads::Hidden& layer_grads = grads.hidden[k];
    const TensorView<const float> linear_out =
        cache.saved[base + kLinearOut].view<float>();
    const TensorView<const float> pre_activation =
        norm ? cache.saved[base + kNormOut].view<float>() : linear_out;
    // d(pre-activation) in place over d_activated.
    FTX_RETURN_IF_ERROR(ActivateBackward(ctx, Activation::kRelu, pre_activation,
                                         d_activated, d_activated));
    if (norm) {
      FTX_RETURN_IF_ERROR(LayerNormBackward(
          ctx, linear_out, layer.norm_weight,
          cache.saved[base + kNormMean].view<float>(),
          cache.saved[base + kNormRstd].view<float>(), d_activated, d_activated,
          layer_grads.norm_weight, layer_grads.norm_bias));
    }
    const TensorView<const float> input =
        k == 0 ? cache.saved[kDistances].view<float>()
               : cache.saved[Activated(k - 1, norm)].view<float>();
    // The distances are constants: layer 0 needs no input gradient.
    FTX_RETURN_IF_ERROR(
        LinearBackward(ctx, input, layer.weight, d_activated,
                       k == 0 ? TensorView<float>() : d_linear_out,
                       layer_grads.weight, layer_grads.bias));
    std::swap(d_activated, d_linear_out);
  }
  return absl::OkStatus();
}

}  // namespace ftx
