#include "layers/feed_forward.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "kernels/base/philox.h"
#include "kernels/base/rng.h"
#include "kernels/base/status_macros.h"
#include "kernels/base/validate.h"
#include "kernels/layernorm/layernorm.h"
#include "kernels/linear/linear.h"

namespace ftx {
namespace {

constexpr char kOp[] = "FeedForward";

// torch.nn.LayerNorm's default eps (x-transformers post_act_ln).
constexpr float kLayerNormEps = 1e-5f;

enum Buffer : int {
  kProjected,   // [n, inner] or [n, 2 inner]
  kActivated,   // [n, inner]
  kNormalized,  // [n, inner], post_act_ln only
  kMean,        // [n], post_act_ln only
  kRstd,        // [n], post_act_ln only
  kBufferCount
};

// [..., C] (validated by CheckRowsView) as [rows, C].
template <typename T>
TensorView<T> AsRows(const TensorView<T>& view) {
  const MatrixView<T> m = AsMatrix(view);
  return TensorView<T>(m.data, Shape{m.rows, m.cols},
                       Strides{m.row_stride, 1, 0, 0}, view.device());
}

// A parameter or gradient view of `expected` shape when `present`, an empty
// view otherwise.
template <typename T>
absl::Status CheckTensor(const Context& ctx, const char* prefix,
                         const char* name, const TensorView<T>& view,
                         const Shape& expected, bool present) {
  if (!present) {
    if (view.data() != nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(kOp, ": ", prefix, name,
                       " must be an empty view: this configuration has no "
                       "such parameter"));
    }
    return absl::OkStatus();
  }
  if (view.data() == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": ", prefix, name, " is required: ", expected.ToString()));
  }
  const std::string full_name = absl::StrCat(prefix, name);
  FTX_RETURN_IF_ERROR(CheckRowsView(kOp, full_name, view, ctx));
  if (view.shape() != expected) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": ", full_name, " must be ", expected.ToString(),
                     ", got ", view.shape().ToString()));
  }
  return absl::OkStatus();
}

// values[r, c] *= keep / (1 - p) in place, keep = U >= p with U element
// (row_offset + r) * cols + c of the (seed, kFeedForwardDropoutStream) Philox
// sequence.
void ApplyDropout(const Context& ctx, float p, uint64_t seed,
                  int64_t row_offset, const TensorView<float>& values) {
  const int64_t cols = values.dim(1);
  const float keep_scale = 1.0f / (1.0f - p);
  ctx.pool().ParallelFor(values.dim(0), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float* row = &values.at(r, 0);
      const uint64_t first = static_cast<uint64_t>(row_offset + r) * cols;
      for (int64_t c = 0; c < cols; ++c) {
        const bool keep =
            RandomUniform(seed, kFeedForwardDropoutStream, first + c) >= p;
        row[c] = keep ? row[c] * keep_scale : 0.0f;
      }
    }
  });
}

}  // namespace

absl::StatusOr<FeedForward> FeedForward::Create(
    const FeedForwardConfig& config) {
  if (config.dim < 1 || config.dim_out < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": dim must be >= 1 and dim_out >= 0, got ",
                     config.dim, " and ", config.dim_out));
  }
  const double inner_value = static_cast<double>(config.dim) * config.mult;
  if (!(inner_value >= 1.0 && inner_value < 1e15)) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": int(dim * mult) must be in [1, 1e15), got dim ",
                     config.dim, " and mult ", config.mult));
  }
  if (!(config.dropout >= 0.0f && config.dropout < 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": dropout must be in [0, 1), got ", config.dropout));
  }
  if (config.chunks < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": chunks must be >= 1, got ", config.chunks));
  }
  const Activation activation = config.relu_squared ? Activation::kReluSquared
                                : config.swish      ? Activation::kSilu
                                                    : config.activation;
  if (std::strcmp(ActivationName(activation), "invalid") == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": unknown activation ", static_cast<int>(activation)));
  }
  const int64_t inner = static_cast<int64_t>(inner_value);
  const int64_t dim_out = config.dim_out == 0 ? config.dim : config.dim_out;
  std::optional<GluLayer> glu;
  if (config.glu) {
    FTX_ASSIGN_OR_RETURN(
        GluLayer layer,
        GluLayer::Create({.dim_in = config.dim,
                          .dim_out = inner,
                          .activation = activation,
                          .activated_half = config.glu_activated_half,
                          .bias = true}));
    glu.emplace(std::move(layer));
  }
  return FeedForward(config, inner, dim_out, activation, std::move(glu));
}

std::vector<ParamShape> FeedForward::ParamShapes() const {
  std::vector<ParamShape> shapes;
  if (config_.glu) {
    shapes.push_back({"net.0.proj.weight", {2 * inner_, config_.dim}});
    shapes.push_back({"net.0.proj.bias", {2 * inner_}});
  } else {
    shapes.push_back({"net.0.0.weight", {inner_, config_.dim}});
    if (!config_.no_bias) shapes.push_back({"net.0.0.bias", {inner_}});
  }
  if (config_.post_act_ln) {
    shapes.push_back({"net.1.weight", {inner_}});
    shapes.push_back({"net.1.bias", {inner_}});
  }
  shapes.push_back({"net.3.weight", {dim_out_, inner_}});
  if (!config_.no_bias) shapes.push_back({"net.3.bias", {dim_out_}});
  return shapes;
}

template <typename T>
absl::Status FeedForward::CheckTensors(const Context& ctx,
                                       const FeedForwardTensors<T>& tensors,
                                       const char* prefix) const {
  const int64_t projected = config_.glu ? 2 * inner_ : inner_;
  const char* in_weight = config_.glu ? "net.0.proj.weight" : "net.0.0.weight";
  const char* in_bias = config_.glu ? "net.0.proj.bias" : "net.0.0.bias";
  const bool has_bias = !config_.no_bias;
  FTX_RETURN_IF_ERROR(CheckTensor(ctx, prefix, in_weight, tensors.in_weight,
                                  {projected, config_.dim}, true));
  FTX_RETURN_IF_ERROR(CheckTensor(ctx, prefix, in_bias, tensors.in_bias,
                                  {projected}, config_.glu || has_bias));
  FTX_RETURN_IF_ERROR(CheckTensor(ctx, prefix, "net.1.weight",
                                  tensors.norm_weight, {inner_},
                                  config_.post_act_ln));
  FTX_RETURN_IF_ERROR(CheckTensor(ctx, prefix, "net.1.bias", tensors.norm_bias,
                                  {inner_}, config_.post_act_ln));
  FTX_RETURN_IF_ERROR(CheckTensor(ctx, prefix, "net.3.weight",
                                  tensors.out_weight, {dim_out_, inner_},
                                  true));
  return CheckTensor(ctx, prefix, "net.3.bias", tensors.out_bias, {dim_out_},
                     has_bias);
}

absl::Status FeedForward::InitParams(
    const Context& ctx, uint64_t seed,
    const FeedForwardTensors<float>& params) const {
  if (ctx.device().type != DeviceType::kCpu) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": InitParams needs a CPU context and CPU views"));
  }
  FTX_RETURN_IF_ERROR(CheckTensors(ctx, params, ""));
  if (glu_.has_value()) {
    FTX_RETURN_IF_ERROR(
        glu_->InitParams(ctx, seed, {params.in_weight, params.in_bias}));
  } else {
    const float bound = 1.0f / std::sqrt(static_cast<float>(config_.dim));
    FTX_RETURN_IF_ERROR(FillUniform(ctx, params.in_weight, -bound, bound,
                                    {.seed = seed, .stream = 0}));
    if (!config_.no_bias) {
      FTX_RETURN_IF_ERROR(FillUniform(ctx, params.in_bias, -bound, bound,
                                      {.seed = seed, .stream = 1}));
    }
  }
  if (config_.post_act_ln) {
    std::fill(params.norm_weight.data(), params.norm_weight.data() + inner_,
              1.0f);
    std::fill(params.norm_bias.data(), params.norm_bias.data() + inner_, 0.0f);
  }
  const float bound = config_.zero_init_output
                          ? 0.0f
                          : 1.0f / std::sqrt(static_cast<float>(inner_));
  FTX_RETURN_IF_ERROR(FillUniform(ctx, params.out_weight, -bound, bound,
                                  {.seed = seed, .stream = 2}));
  if (!config_.no_bias) {
    FTX_RETURN_IF_ERROR(FillUniform(ctx, params.out_bias, -bound, bound,
                                    {.seed = seed, .stream = 3}));
  }
  return absl::OkStatus();
}

int64_t FeedForward::ChunkRows(int64_t rows) const {
  return (rows + config_.chunks - 1) / config_.chunks;
}

int64_t FeedForward::ActivationFloats(int64_t rows) const {
  const int64_t buffered = ChunkRows(rows);
  const bool in_pieces = buffered < rows;
  int64_t per_row = (config_.glu ? 2 * inner_ : inner_) + inner_ + inner_;
  if (config_.post_act_ln) per_row += inner_ + 2;
  if (config_.glu && !in_pieces) per_row += 2 * inner_;
  return buffered * per_row;
}

absl::Status FeedForward::CheckMode(const Context& ctx,
                                    const FeedForwardMode& mode) const {
  if (DropoutActive(mode) && ctx.device().type != DeviceType::kCpu) {
    return absl::UnimplementedError(
        absl::StrCat(kOp, ": dropout runs on the CPU only"));
  }
  return absl::OkStatus();
}

absl::Status FeedForward::EnsureBuffers(const Context& ctx, int64_t rows,
                                        std::vector<Tensor>& buffers) const {
  buffers.resize(config_.post_act_ln ? kBufferCount : kNormalized);
  const int64_t projected = config_.glu ? 2 * inner_ : inner_;
  FTX_RETURN_IF_ERROR(
      EnsureTensor(buffers[kProjected], {rows, projected}, ctx.device()));
  FTX_RETURN_IF_ERROR(
      EnsureTensor(buffers[kActivated], {rows, inner_}, ctx.device()));
  if (config_.post_act_ln) {
    FTX_RETURN_IF_ERROR(
        EnsureTensor(buffers[kNormalized], {rows, inner_}, ctx.device()));
    FTX_RETURN_IF_ERROR(EnsureTensor(buffers[kMean], {rows}, ctx.device()));
    FTX_RETURN_IF_ERROR(EnsureTensor(buffers[kRstd], {rows}, ctx.device()));
  }
  return absl::OkStatus();
}

FeedForward::RowBuffers<float> FeedForward::BufferViews(
    std::vector<Tensor>& buffers, int64_t rows) const {
  RowBuffers<float> views;
  views.projected = buffers[kProjected].view<float>().Slice(0, 0, rows);
  views.activated = buffers[kActivated].view<float>().Slice(0, 0, rows);
  if (config_.post_act_ln) {
    views.normalized = buffers[kNormalized].view<float>().Slice(0, 0, rows);
    views.mean = buffers[kMean].view<float>().Slice(0, 0, rows);
    views.rstd = buffers[kRstd].view<float>().Slice(0, 0, rows);
  }
  return views;
}

absl::Status FeedForward::ForwardRows(
    const Context& ctx, const FeedForwardParams& params,
    TensorView<const float> x, int64_t row_offset, const FeedForwardMode& mode,
    const RowBuffers<float>& saved, TensorView<float> y) const {
  if (glu_.has_value()) {
    FTX_RETURN_IF_ERROR(glu_->ForwardRows(ctx,
                                          {params.in_weight, params.in_bias}, x,
                                          saved.projected, saved.activated));
  } else {
    FTX_RETURN_IF_ERROR(LinearForward(ctx, x, params.in_weight, params.in_bias,
                                      saved.projected));
    FTX_RETURN_IF_ERROR(
        Activate(ctx, activation_, saved.projected, saved.activated));
  }
  TensorView<float> hidden = saved.activated;
  if (config_.post_act_ln) {
    FTX_RETURN_IF_ERROR(LayerNorm(
        ctx, saved.activated, params.norm_weight, params.norm_bias,
        saved.normalized, saved.mean, saved.rstd, {.eps = kLayerNormEps}));
    hidden = saved.normalized;
  }
  if (DropoutActive(mode)) {
    ApplyDropout(ctx, config_.dropout, mode.seed, row_offset, hidden);
  }
  if (y.data() == nullptr) return absl::OkStatus();
  return LinearForward(ctx, hidden, params.out_weight, params.out_bias, y);
}

absl::Status FeedForward::BackwardRows(
    const Context& ctx, const FeedForwardParams& params,
    TensorView<const float> x, int64_t row_offset, const FeedForwardMode& mode,
    const RowBuffers<const float>& saved, TensorView<const float> d_y,
    TensorView<float> d_hidden, TensorView<float> d_projected,
    TensorView<float> d_x, const FeedForwardGrads& grads) const {
  const TensorView<const float> hidden =
      config_.post_act_ln ? saved.normalized : saved.activated;
  FTX_RETURN_IF_ERROR(LinearBackward(ctx, hidden, params.out_weight, d_y,
                                     d_hidden, grads.out_weight,
                                     grads.out_bias));
  if (DropoutActive(mode)) {
    ApplyDropout(ctx, config_.dropout, mode.seed, row_offset, d_hidden);
  }
  if (config_.post_act_ln) {
    FTX_RETURN_IF_ERROR(LayerNormBackward(
        ctx, saved.activated, params.norm_weight, saved.mean, saved.rstd,
        d_hidden, d_hidden, grads.norm_weight, grads.norm_bias));
  }
  if (glu_.has_value()) {
    return glu_->BackwardRows(ctx, {params.in_weight, params.in_bias}, x,
                              saved.projected, d_hidden, d_projected, d_x,
                              {grads.in_weight, grads.in_bias});
  }
  FTX_RETURN_IF_ERROR(
      ActivateBackward(ctx, activation_, saved.projected, d_hidden, d_hidden));
  return LinearBackward(ctx, x, params.in_weight, d_hidden, d_x,
                        grads.in_weight, grads.in_bias);
}

absl::Status FeedForward::Forward(const Context& ctx,
                                  const FeedForwardParams& params,
                                  TensorView<const float> x,
                                  const FeedForwardMode& mode,
                                  TensorView<float> y,
                                  FeedForwardCache* cache) {
  FTX_RETURN_IF_ERROR(CheckRowsView(kOp, "x", x, ctx));
  FTX_RETURN_IF_ERROR(CheckRowsView(kOp, "y", y, ctx));
  Shape expected_y = x.shape();
  expected_y.set_dim(x.rank() - 1, dim_out_);
  if (x.dim(x.rank() - 1) != config_.dim || y.shape() != expected_y) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": expected x [..., ", config_.dim, "] and y [..., ",
                     dim_out_, "] with the same leading axes, got x ",
                     x.shape().ToString(), " and y ", y.shape().ToString()));
  }
  FTX_RETURN_IF_ERROR(CheckTensors(ctx, params, ""));
  FTX_RETURN_IF_ERROR(CheckMode(ctx, mode));
  const TensorView<const float> x_rows = AsRows(x);
  const TensorView<float> y_rows = AsRows(y);
  const int64_t rows = x_rows.dim(0);
  const int64_t piece = ChunkRows(rows);
  const bool in_pieces = piece < rows;
  if (cache != nullptr) {
    cache->rows = rows;
    cache->mode = mode;
    if (in_pieces || rows == 0) cache->saved.clear();
  }
  if (rows == 0) return absl::OkStatus();
  std::vector<Tensor>& buffers =
      cache != nullptr && !in_pieces ? cache->saved : work_;
  FTX_RETURN_IF_ERROR(EnsureBuffers(ctx, piece, buffers));
  for (int64_t begin = 0; begin < rows; begin += piece) {
    const int64_t end = std::min(rows, begin + piece);
    const int64_t n = end - begin;
    const RowBuffers<float> saved = BufferViews(buffers, n);
    FTX_RETURN_IF_ERROR(ForwardRows(ctx, params, x_rows.Slice(0, begin, end),
                                    begin, mode, saved,
                                    y_rows.Slice(0, begin, end)));
  }
  return absl::OkStatus();
}

absl::Status FeedForward::Backward(const Context& ctx,
                                   const FeedForwardParams& params,
                                   const FeedForwardCache& cache,
                                   TensorView<const float> x,
                                   TensorView<const float> d_y,
                                   TensorView<float> d_x,
                                   const FeedForwardGrads& grads) {
  FTX_RETURN_IF_ERROR(CheckRowsView(kOp, "x", x, ctx));
  FTX_RETURN_IF_ERROR(CheckRowsView(kOp, "d_y", d_y, ctx));
  FTX_RETURN_IF_ERROR(CheckSameShapes(kOp, ctx, "x", x, Named("d_x", d_x)));
  Shape expected_d_y = x.shape();
  expected_d_y.set_dim(x.rank() - 1, dim_out_);
  if (x.dim(x.rank() - 1) != config_.dim || d_y.shape() != expected_d_y) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": expected x [..., ", config_.dim, "] and d_y [..., ", dim_out_,
        "] with the same leading axes, got x ", x.shape().ToString(),
        " and d_y ", d_y.shape().ToString()));
  }
  FTX_RETURN_IF_ERROR(CheckTensors(ctx, params, ""));
  FTX_RETURN_IF_ERROR(CheckTensors(ctx, grads, "d_"));
  const TensorView<const float> x_rows = AsRows(x);
  const int64_t rows = x_rows.dim(0);
  const int64_t piece = ChunkRows(rows);
  const bool in_pieces = piece < rows;
  const size_t expected_buffers =
      in_pieces || rows == 0
          ? 0
          : (config_.post_act_ln ? kBufferCount : kNormalized);
  if (cache.rows != rows || cache.saved.size() != expected_buffers ||
      (expected_buffers > 0 &&
       cache.saved[kActivated].shape() != Shape{rows, inner_})) {
    return absl::FailedPreconditionError(absl::StrCat(
        kOp, "::Backward: the cache does not come from a Forward on x ",
        x.shape().ToString(), " (it was filled for ", cache.rows,
        " rows; pass the cache to Forward)"));
  }
  FTX_RETURN_IF_ERROR(CheckMode(ctx, cache.mode));
  if (rows == 0) return absl::OkStatus();
  const TensorView<const float> d_y_rows = AsRows(d_y);
  const TensorView<float> d_x_rows = AsRows(d_x);
  FTX_RETURN_IF_ERROR(EnsureTensor(d_hidden_, {piece, inner_}, ctx.device()));
  if (!in_pieces) {
    TensorView<float> d_projected;
    if (config_.glu) {
      FTX_RETURN_IF_ERROR(
          EnsureTensor(d_projected_, {rows, 2 * inner_}, ctx.device()));
      d_projected = d_projected_.view<float>();
    }
    const std::vector<Tensor>& saved = cache.saved;
    const RowBuffers<const float> views{
        saved[kProjected].view<float>(), saved[kActivated].view<float>(),
        config_.post_act_ln ? saved[kNormalized].view<float>()
                            : TensorView<const float>(),
        config_.post_act_ln ? saved[kMean].view<float>()
                            : TensorView<const float>(),
        config_.post_act_ln ? saved[kRstd].view<float>()
                            : TensorView<const float>()};
    return BackwardRows(ctx, params, x_rows, 0, cache.mode, views, d_y_rows,
                        d_hidden_.view<float>(), d_projected, d_x_rows, grads);
  }
  FTX_RETURN_IF_ERROR(EnsureBuffers(ctx, piece, work_));
  for (int64_t begin = 0; begin < rows; begin += piece) {
    const int64_t end = std::min(rows, begin + piece);
    const int64_t n = end - begin;
    const RowBuffers<float> saved = BufferViews(work_, n);
    const TensorView<const float> x_piece = x_rows.Slice(0, begin, end);
    FTX_RETURN_IF_ERROR(ForwardRows(ctx, params, x_piece, begin, cache.mode,
                                    saved, TensorView<float>()));
    const RowBuffers<const float> recomputed{saved.projected, saved.activated,
                                             saved.normalized, saved.mean,
                                             saved.rstd};
    FTX_RETURN_IF_ERROR(BackwardRows(
        ctx, params, x_piece, begin, cache.mode, recomputed,
        d_y_rows.Slice(0, begin, end), d_hidden_.view<float>().Slice(0, 0, n),
        config_.glu ? saved.projected : TensorView<float>(),
        d_x_rows.Slice(0, begin, end), grads));
  }
  return absl::OkStatus();
}

}  // namespace ftx
