#include "models/continuous.h"

#include <cmath>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/base/rng.h"
#include "kernels/base/status_macros.h"
#include "kernels/linear/linear.h"

namespace ftx {
namespace {

// A distinct initialisation seed per wrapper tensor (the stack derives its
// own from the same seed).
uint64_t WrapperSeed(uint64_t seed, uint64_t index) {
  return seed * 0xA0761D6478BD642Full + 0xE7037ED1A0B428DBull * (index + 1);
}

absl::StatusOr<TensorView<float>> Buffer(Tensor& tensor, const Shape& shape) {
  FTX_RETURN_IF_ERROR(EnsureTensor(tensor, shape, Device::Cpu()));
  return tensor.view<float>();
}

void Copy(const Context& ctx, TensorView<const float> from,
          TensorView<float> to) {
  const float* in = from.data();
  float* out = to.data();
  ctx.pool().ParallelFor(
      from.NumElements(),
      [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) out[i] = in[i];
      },
      4096);
}

bool IsDenseCpu(const TensorView<const float>& view) {
  return view.data() != nullptr && view.IsContiguous() &&
         view.device() == Device::Cpu();
}

absl::Status CheckSequence(const char* op, const char* name,
                           TensorView<const float> view, int64_t batch,
                           int64_t length, int64_t width) {
  if (view.rank() == 3 && IsDenseCpu(view) &&
      (batch < 0 ? view.dim(0) >= 1 : view.dim(0) == batch) &&
      (length < 0 ? view.dim(1) >= 1 : view.dim(1) == length) &&
      view.dim(2) == width) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat(op, ": ", name, " must be a contiguous CPU [",
                   batch < 0 ? std::string("B") : absl::StrCat(batch), ", ",
                   length < 0 ? std::string("T") : absl::StrCat(length), ", ",
                   width, "] tensor, got ", view.shape().ToString()));
}

absl::Status FillTorchLinear(const Context& ctx, ParamStore& store,
                             const std::string& name, int64_t fan_in,
                             uint64_t seed) {
  const float bound = 1.0f / std::sqrt(static_cast<float>(fan_in));
  FTX_ASSIGN_OR_RETURN(TensorView<float> w, store.Value(name + ".weight"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> b, store.Value(name + ".bias"));
  FTX_RETURN_IF_ERROR(
      FillUniform(ctx, w, -bound, bound, {.seed = WrapperSeed(seed, 0)}));
  return FillUniform(ctx, b, -bound, bound, {.seed = WrapperSeed(seed, 1)});
}

}  // namespace

absl::StatusOr<std::unique_ptr<ContinuousTransformerWrapper>>
ContinuousTransformerWrapper::Create(const ContinuousConfig& config,
                                     const AttentionRegistry& registry) {
  auto bad = [](const char* field, int64_t value, const char* requirement) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ContinuousConfig.", field, " must be ", requirement, ", got ", value));
  };
  if (config.max_seq_len < 1) {
    return bad("max_seq_len", config.max_seq_len, ">= 1");
  }
  if (config.dim_in < 0) return bad("dim_in", config.dim_in, ">= 0");
  if (config.dim_out < 0) return bad("dim_out", config.dim_out, ">= 0");
  FTX_ASSIGN_OR_RETURN(std::unique_ptr<AttentionLayers> layers,
                       AttentionLayers::Create(config.attn_layers, registry));
  FTX_ASSIGN_OR_RETURN(LayerNormLayer norm,
                       LayerNormLayer::Create({.dim = config.attn_layers.dim}));
  return std::unique_ptr<ContinuousTransformerWrapper>(
      new ContinuousTransformerWrapper(config, std::move(layers), norm));
}

int64_t ContinuousTransformerWrapper::input_width() const {
  return config_.dim_in > 0 ? config_.dim_in : config_.attn_layers.dim;
}

int64_t ContinuousTransformerWrapper::output_width() const {
  return config_.dim_out > 0 ? config_.dim_out : config_.attn_layers.dim;
}

AbsolutePositions ContinuousTransformerWrapper::Positions() const {
  return AbsolutePositions(
      {.max_seq_len = config_.max_seq_len, .dim = config_.attn_layers.dim});
}

std::vector<ParamShape> ContinuousTransformerWrapper::ParamShapes() const {
  const int64_t C = config_.attn_layers.dim;
  std::vector<ParamShape> shapes;
  if (uses_abs_pos_emb()) {
    shapes.push_back({"pos_emb.emb.weight", {config_.max_seq_len, C}});
  }
  if (config_.dim_in > 0) {
    shapes.push_back({"project_in.weight", {C, config_.dim_in}});
    shapes.push_back({"project_in.bias", {C}});
  }
  for (ParamShape& shape : WithPrefix("attn_layers.", layers_->ParamShapes())) {
    shapes.push_back(std::move(shape));
  }
  shapes.push_back({"norm.weight", {C}});
  shapes.push_back({"norm.bias", {C}});
  if (config_.dim_out > 0) {
    shapes.push_back({"project_out.weight", {config_.dim_out, C}});
    shapes.push_back({"project_out.bias", {config_.dim_out}});
  }
  return shapes;
}

absl::Status ContinuousTransformerWrapper::InitParams(const Context& ctx,
                                                      ParamStore& store) const {
  const uint64_t seed = config_.attn_layers.seed;
  if (uses_abs_pos_emb()) {
    FTX_ASSIGN_OR_RETURN(TensorView<float> pos,
                         store.Value("pos_emb.emb.weight"));
    FTX_RETURN_IF_ERROR(
        Positions().InitParams(ctx, pos, WrapperSeed(seed, 10)));
  }
  if (config_.dim_in > 0) {
    FTX_RETURN_IF_ERROR(FillTorchLinear(ctx, store, "project_in",
                                        config_.dim_in, WrapperSeed(seed, 11)));
  }
  FTX_RETURN_IF_ERROR(layers_->InitParams(ctx, store, "attn_layers."));
  FTX_ASSIGN_OR_RETURN(TensorView<float> norm_w, store.Value("norm.weight"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> norm_b, store.Value("norm.bias"));
  FTX_RETURN_IF_ERROR(norm_.InitParams(norm_w, norm_b));
  if (config_.dim_out > 0) {
    FTX_RETURN_IF_ERROR(FillTorchLinear(ctx, store, "project_out",
                                        config_.attn_layers.dim,
                                        WrapperSeed(seed, 12)));
  }
  return absl::OkStatus();
}

absl::Status ContinuousTransformerWrapper::Forward(
    const Context& ctx, ParamStore& store, TensorView<const float> x,
    const StackInputs& inputs, TensorView<float> y, bool save_for_backward) {
  static constexpr char kOp[] = "ContinuousTransformerWrapper";
  saved_ = false;
  FTX_RETURN_IF_ERROR(CheckSequence(kOp, "x", x, -1, -1, input_width()));
  const int64_t B = x.dim(0), T = x.dim(1), C = config_.attn_layers.dim;
  if (T > config_.max_seq_len) {
    return absl::InvalidArgumentError(absl::StrCat(kOp, ": sequence length ", T,
                                                   " exceeds max_seq_len ",
                                                   config_.max_seq_len));
  }
  FTX_RETURN_IF_ERROR(CheckSequence(kOp, "y", y, B, T, output_width()));
  FTX_ASSIGN_OR_RETURN(TensorView<float> embedded,
                       Buffer(embedded_, {B, T, C}));
  if (config_.dim_in > 0) {
    FTX_ASSIGN_OR_RETURN(TensorView<float> w, store.Value("project_in.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> b, store.Value("project_in.bias"));
    FTX_RETURN_IF_ERROR(LinearForward(ctx, x, w, b, embedded));
  } else {
    Copy(ctx, x, embedded);
  }
  if (uses_abs_pos_emb()) {
    FTX_ASSIGN_OR_RETURN(TensorView<float> pos,
                         store.Value("pos_emb.emb.weight"));
    FTX_RETURN_IF_ERROR(Positions().Forward(ctx, pos, 0, embedded));
  }
  FTX_ASSIGN_OR_RETURN(TensorView<float> stack_out,
                       Buffer(stack_out_, {B, T, C}));
  FTX_RETURN_IF_ERROR(layers_->Forward(ctx, store, "attn_layers.", embedded,
                                       inputs, stack_out, save_for_backward));
  FTX_ASSIGN_OR_RETURN(TensorView<float> normed, Buffer(normed_, {B, T, C}));
  FTX_ASSIGN_OR_RETURN(TensorView<float> norm_w, store.Value("norm.weight"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> norm_b, store.Value("norm.bias"));
  FTX_RETURN_IF_ERROR(
      norm_.Forward(ctx, norm_w, norm_b, stack_out, normed, &norm_cache_));
  if (config_.dim_out > 0) {
    FTX_ASSIGN_OR_RETURN(TensorView<float> w,
                         store.Value("project_out.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> b, store.Value("project_out.bias"));
    FTX_RETURN_IF_ERROR(LinearForward(ctx, normed, w, b, y));
  } else {
    Copy(ctx, normed, y);
  }
  x_ = x;
  saved_ = save_for_backward;
  return absl::OkStatus();
}

absl::Status ContinuousTransformerWrapper::Backward(
    const Context& ctx, ParamStore& store, TensorView<const float> d_y,
    TensorView<float> d_x, TensorView<float> d_context) {
  static constexpr char kOp[] = "ContinuousTransformerWrapper::Backward";
  if (!saved_) {
    return absl::FailedPreconditionError(
        absl::StrCat(kOp, " needs a Forward with save_for_backward"));
  }
  const int64_t B = x_.dim(0), T = x_.dim(1), C = config_.attn_layers.dim;
  FTX_RETURN_IF_ERROR(CheckSequence(kOp, "d_y", d_y, B, T, output_width()));
  const bool want_x = !d_x.empty();
  if (want_x) {
    FTX_RETURN_IF_ERROR(CheckSequence(kOp, "d_x", d_x, B, T, input_width()));
  }
  TensorView<const float> d_normed = d_y;
  if (config_.dim_out > 0) {
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_normed_view,
                         Buffer(d_normed_, {B, T, C}));
    FTX_ASSIGN_OR_RETURN(TensorView<float> w,
                         store.Value("project_out.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_w,
                         store.Grad("project_out.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_b, store.Grad("project_out.bias"));
    FTX_RETURN_IF_ERROR(LinearBackward(ctx, normed_.view<float>(), w, d_y,
                                       d_normed_view, d_w, d_b));
    d_normed = d_normed_view;
  }
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_stack_out,
                       Buffer(d_stack_out_, {B, T, C}));
  FTX_ASSIGN_OR_RETURN(TensorView<float> norm_w, store.Value("norm.weight"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_norm_w, store.Grad("norm.weight"));
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_norm_b, store.Grad("norm.bias"));
  FTX_RETURN_IF_ERROR(norm_.Backward(ctx, norm_w, norm_cache_,
                                     stack_out_.view<float>(), d_normed,
                                     d_stack_out, d_norm_w, d_norm_b));
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_embedded,
                       Buffer(d_embedded_, {B, T, C}));
  FTX_RETURN_IF_ERROR(layers_->Backward(ctx, store, "attn_layers.", d_stack_out,
                                        d_embedded, d_context));
  if (uses_abs_pos_emb()) {
    FTX_ASSIGN_OR_RETURN(TensorView<float> pos,
                         store.Value("pos_emb.emb.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_pos,
                         store.Grad("pos_emb.emb.weight"));
    FTX_RETURN_IF_ERROR(Positions().Backward(ctx, pos, 0, d_embedded, d_pos));
  }
  if (config_.dim_in > 0) {
    FTX_ASSIGN_OR_RETURN(TensorView<float> w, store.Value("project_in.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_w,
                         store.Grad("project_in.weight"));
    FTX_ASSIGN_OR_RETURN(TensorView<float> d_b, store.Grad("project_in.bias"));
    return LinearBackward(ctx, x_, w, d_embedded, d_x, d_w, d_b);
  }
  if (want_x) Copy(ctx, d_embedded, d_x);
  return absl::OkStatus();
}

}  // namespace ftx
