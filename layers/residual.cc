#include "layers/residual.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/base/rng.h"
#include "kernels/base/status_macros.h"
#include "kernels/base/validate.h"
#include "kernels/linear/linear.h"

namespace ftx {
namespace {

constexpr char kOp[] = "Residual";

template <typename T>
absl::Status CheckMatrix(const Context& ctx, const std::string& name,
                         const TensorView<T>& view, int64_t rows,
                         int64_t cols) {
  FTX_RETURN_IF_ERROR(CheckRowsView(kOp, name, view, ctx));
  if (view.rank() != 2 || view.dim(0) != rows || view.dim(1) != cols) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": ", name, " must be [", rows, ", ", cols, "], got ",
                     view.shape().ToString()));
  }
  return absl::OkStatus();
}

// The views `config` uses, named `prefix` + state_dict name (prefix "d_" for
// gradients).
template <typename T>
absl::Status CheckTensors(const Context& ctx, const ResidualConfig& config,
                          const ResidualTensors<T>& tensors,
                          const char* prefix) {
  const int64_t C = config.dim;
  if (config.scale_residual) {
    FTX_RETURN_IF_ERROR(CheckVector(kOp, absl::StrCat(prefix, "residual_scale"),
                                    tensors.residual_scale, C, ctx));
  }
  if (config.gate_residual) {
    FTX_RETURN_IF_ERROR(CheckMatrix(ctx, absl::StrCat(prefix, "gru.weight_ih"),
                                    tensors.gru_weight_ih, 3 * C, C));
    FTX_RETURN_IF_ERROR(CheckMatrix(ctx, absl::StrCat(prefix, "gru.weight_hh"),
                                    tensors.gru_weight_hh, 3 * C, C));
    FTX_RETURN_IF_ERROR(CheckVector(kOp, absl::StrCat(prefix, "gru.bias_ih"),
                                    tensors.gru_bias_ih, 3 * C, ctx));
    FTX_RETURN_IF_ERROR(CheckVector(kOp, absl::StrCat(prefix, "gru.bias_hh"),
                                    tensors.gru_bias_hh, 3 * C, ctx));
  }
  return absl::OkStatus();
}

// The activations (out, residual, and y or d_y) share a shape [..., C].
absl::Status CheckActivations(
    const Context& ctx, int64_t dim, TensorView<const float> out,
    TensorView<const float> residual,
    std::pair<absl::string_view, TensorView<const float>> third) {
  FTX_RETURN_IF_ERROR(CheckSameShapes(kOp, ctx, "out", out,
                                      Named("residual", residual), third));
  if (out.dim(out.rank() - 1) != dim) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": out ", out.shape().ToString(),
                     " must have dim = ", dim, " channels in its last axis"));
  }
  return absl::OkStatus();
}

// d_vector[c] += factor * sum over rows r of a[r, c] * b[r, c], summed in row
// order (the result does not depend on the thread count).
void AccumulateColumnProducts(const Context& ctx, MatrixView<const float> a,
                              MatrixView<const float> b, double factor,
                              float* d_vector) {
  ctx.pool().ParallelFor(a.cols, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      double sum = 0.0;
      for (int64_t r = 0; r < a.rows; ++r) {
        sum += static_cast<double>(a.Row(r)[c]) * b.Row(r)[c];
      }
      d_vector[c] += static_cast<float>(factor * sum);
    }
  });
}

float Sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

}  // namespace

absl::StatusOr<Residual> Residual::Create(const ResidualConfig& config) {
  if (config.dim <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": dim must be positive, got ", config.dim));
  }
  return Residual(config);
}

std::vector<ParamShape> Residual::ParamShapes() const {
  const int64_t C = config_.dim;
  std::vector<ParamShape> shapes;
  if (config_.scale_residual) shapes.push_back({"residual_scale", {C}});
  if (config_.gate_residual) {
    shapes.push_back({"gru.weight_ih", {3 * C, C}});
    shapes.push_back({"gru.weight_hh", {3 * C, C}});
    shapes.push_back({"gru.bias_ih", {3 * C}});
    shapes.push_back({"gru.bias_hh", {3 * C}});
  }
  return shapes;
}

absl::Status Residual::InitParams(const Context& ctx,
                                  const ResidualTensors<float>& params,
                                  uint64_t seed) const {
  FTX_RETURN_IF_ERROR(CheckTensors(ctx, config_, params, ""));
  if (config_.scale_residual) {
    if (params.residual_scale.device().type != DeviceType::kCpu) {
      return absl::InvalidArgumentError(
          absl::StrCat(kOp, ": InitParams needs residual_scale on the CPU"));
    }
    std::fill(params.residual_scale.data(),
              params.residual_scale.data() + config_.dim, 1.0f);
  }
  if (config_.gate_residual) {
    const float bound = 1.0f / std::sqrt(static_cast<float>(config_.dim));
    const TensorView<float> gru[] = {params.gru_weight_ih, params.gru_weight_hh,
                                     params.gru_bias_ih, params.gru_bias_hh};
    for (uint64_t stream = 0; stream < 4; ++stream) {
      FTX_RETURN_IF_ERROR(FillUniform(ctx, gru[stream], -bound, bound,
                                      {.seed = seed, .stream = stream}));
    }
  }
  return absl::OkStatus();
}

absl::Status Residual::Forward(const Context& ctx, const ResidualParams& params,
                               TensorView<const float> out,
                               TensorView<const float> residual,
                               TensorView<float> y, ResidualCache* cache) {
  FTX_RETURN_IF_ERROR(CheckActivations(ctx, config_.dim, out, residual,
                                       Named("y", TensorView<const float>(y))));
  FTX_RETURN_IF_ERROR(CheckTensors(ctx, config_, params, ""));
  if (config_.gate_residual)
    return GatedForward(ctx, params, out, residual, y, cache);
  if (cache != nullptr) cache->saved.clear();
  const MatrixView<const float> branch = AsMatrix(out),
                                skip = AsMatrix(residual);
  const MatrixView<float> result = AsMatrix(y);
  const float* scale =
      config_.scale_residual ? params.residual_scale.data() : nullptr;
  const float constant = config_.scale_residual_constant;
  ctx.pool().ParallelFor(branch.rows, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      for (int64_t c = 0; c < branch.cols; ++c) {
        float scaled = skip.Row(r)[c];
        if (scale != nullptr) scaled *= scale[c];
        if (constant != 1.0f) scaled *= constant;
        result.Row(r)[c] = branch.Row(r)[c] + scaled;
      }
    }
  });
  return absl::OkStatus();
}

absl::Status Residual::Backward(
    const Context& ctx, const ResidualParams& params,
    const ResidualCache& cache, TensorView<const float> out,
    TensorView<const float> residual, TensorView<const float> d_y,
    TensorView<float> d_out, TensorView<float> d_residual,
    const ResidualGrads& grads) {
  FTX_RETURN_IF_ERROR(
      CheckActivations(ctx, config_.dim, out, residual, Named("d_y", d_y)));
  FTX_RETURN_IF_ERROR(CheckSameShapes(kOp, ctx, "out", out,
                                      Named("d_out", d_out),
                                      Named("d_residual", d_residual)));
  FTX_RETURN_IF_ERROR(CheckTensors(ctx, config_, params, ""));
  FTX_RETURN_IF_ERROR(CheckTensors(ctx, config_, grads, "d_"));
  if (config_.gate_residual) {
    return GatedBackward(ctx, params, cache, out, residual, d_y, d_out,
                         d_residual, grads);
  }
  const MatrixView<const float> grad = AsMatrix(d_y), skip = AsMatrix(residual);
  const float constant = config_.scale_residual_constant;
  // The scale gradient first: d_residual may alias d_y.
  if (config_.scale_residual) {
    AccumulateColumnProducts(ctx, grad, skip, constant,
                             grads.residual_scale.data());
  }
  const MatrixView<float> grad_out = AsMatrix(d_out),
                          grad_skip = AsMatrix(d_residual);
  const float* scale =
      config_.scale_residual ? params.residual_scale.data() : nullptr;
  ctx.pool().ParallelFor(grad.rows, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      for (int64_t c = 0; c < grad.cols; ++c) {
        const float g = grad.Row(r)[c];
        float g_skip = g;
        if (constant != 1.0f) g_skip *= constant;
        if (scale != nullptr) g_skip *= scale[c];
        grad_out.Row(r)[c] = g;
        grad_skip.Row(r)[c] = g_skip;
      }
    }
  });
  return absl::OkStatus();
}

absl::StatusOr<TensorView<const float>> Residual::Hidden(
    const Context& ctx, const ResidualParams& params,
    TensorView<const float> residual) {
  if (!config_.scale_residual) return residual;
  FTX_RETURN_IF_ERROR(
      EnsureTensor(scaled_hidden_, residual.shape(), ctx.device()));
  const MatrixView<const float> skip = AsMatrix(residual);
  const MatrixView<float> hidden = AsMatrix(scaled_hidden_.view<float>());
  const float* scale = params.residual_scale.data();
  ctx.pool().ParallelFor(skip.rows, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      for (int64_t c = 0; c < skip.cols; ++c)
        hidden.Row(r)[c] = skip.Row(r)[c] * scale[c];
    }
  });
  return scaled_hidden_.view<const float>();
}

absl::Status Residual::GatedForward(const Context& ctx,
                                    const ResidualParams& params,
                                    TensorView<const float> out,
                                    TensorView<const float> residual,
                                    TensorView<float> y, ResidualCache* cache) {
  const int64_t C = config_.dim;
  const int64_t R = out.NumElements() / C;
  Tensor* gates = &inference_gates_;
  Tensor* hidden_n = &inference_hidden_n_;
  if (cache != nullptr) {
    cache->saved.resize(2);
    gates = &cache->saved[0];
    hidden_n = &cache->saved[1];
  }
  FTX_RETURN_IF_ERROR(EnsureTensor(*gates, {R, 3 * C}, ctx.device()));
  FTX_RETURN_IF_ERROR(EnsureTensor(*hidden_n, {R, C}, ctx.device()));
  FTX_RETURN_IF_ERROR(
      EnsureTensor(hidden_projection_, {R, 3 * C}, ctx.device()));
  FTX_ASSIGN_OR_RETURN(const TensorView<const float> h,
                       Hidden(ctx, params, residual));
  // gates <- W_ih out + b_ih, then overwritten in place by (r, z, n).
  FTX_RETURN_IF_ERROR(LinearForward(ctx, out, params.gru_weight_ih,
                                    params.gru_bias_ih, gates->view<float>()));
  FTX_RETURN_IF_ERROR(LinearForward(ctx, h, params.gru_weight_hh,
                                    params.gru_bias_hh,
                                    hidden_projection_.view<float>()));
  const MatrixView<float> gate = AsMatrix(gates->view<float>());
  const MatrixView<float> hn = AsMatrix(hidden_n->view<float>());
  const MatrixView<const float> hp =
      AsMatrix(hidden_projection_.view<const float>());
  const MatrixView<const float> hidden = AsMatrix(h);
  const MatrixView<float> result = AsMatrix(y);
  ctx.pool().ParallelFor(R, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      float* g = gate.Row(row);
      const float* p = hp.Row(row);
      for (int64_t c = 0; c < C; ++c) {
        const float reset = Sigmoid(g[c] + p[c]);
        const float update = Sigmoid(g[C + c] + p[C + c]);
        const float candidate = std::tanh(g[2 * C + c] + reset * p[2 * C + c]);
        const float previous = hidden.Row(row)[c];
        g[c] = reset;
        g[C + c] = update;
        g[2 * C + c] = candidate;
        hn.Row(row)[c] = p[2 * C + c];
        result.Row(row)[c] = candidate + update * (previous - candidate);
      }
    }
  });
  return absl::OkStatus();
}

absl::Status Residual::GatedBackward(
    const Context& ctx, const ResidualParams& params,
    const ResidualCache& cache, TensorView<const float> out,
    TensorView<const float> residual, TensorView<const float> d_y,
    TensorView<float> d_out, TensorView<float> d_residual,
    const ResidualGrads& grads) {
  const int64_t C = config_.dim;
  const int64_t R = out.NumElements() / C;
  if (cache.saved.size() != 2 || cache.saved[0].shape() != Shape{R, 3 * C} ||
      cache.saved[1].shape() != Shape{R, C}) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp,
                     ": the cache does not come from a gate_residual Forward "
                     "with a cache on out ",
                     out.shape().ToString()));
  }
  FTX_ASSIGN_OR_RETURN(const TensorView<const float> h,
                       Hidden(ctx, params, residual));
  FTX_RETURN_IF_ERROR(EnsureTensor(d_gate_input_, {R, 3 * C}, ctx.device()));
  FTX_RETURN_IF_ERROR(EnsureTensor(d_gate_hidden_, {R, 3 * C}, ctx.device()));
  const MatrixView<const float> gate =
      AsMatrix(cache.saved[0].view<const float>());
  const MatrixView<const float> hn =
      AsMatrix(cache.saved[1].view<const float>());
  const MatrixView<const float> hidden = AsMatrix(h), grad = AsMatrix(d_y);
  const MatrixView<float> d_input = AsMatrix(d_gate_input_.view<float>());
  const MatrixView<float> d_hidden = AsMatrix(d_gate_hidden_.view<float>());
  const MatrixView<float> grad_skip = AsMatrix(d_residual);
  ctx.pool().ParallelFor(R, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const float* g = gate.Row(row);
      float* di = d_input.Row(row);
      float* dh = d_hidden.Row(row);
      for (int64_t c = 0; c < C; ++c) {
        const float reset = g[c], update = g[C + c], candidate = g[2 * C + c];
        const float dy = grad.Row(row)[c];
        // y = n + z (h - n): dy/dn = 1 - z, dy/dz = h - n, dy/dh = z.
        const float d_candidate = dy * (1.0f - update);
        const float d_update = dy * (hidden.Row(row)[c] - candidate);
        const float d_candidate_pre =
            d_candidate * (1.0f - candidate * candidate);
        const float d_reset_pre =
            d_candidate_pre * hn.Row(row)[c] * reset * (1.0f - reset);
        const float d_update_pre = d_update * update * (1.0f - update);
        di[c] = d_reset_pre;
        di[C + c] = d_update_pre;
        di[2 * C + c] = d_candidate_pre;
        dh[c] = d_reset_pre;
        dh[C + c] = d_update_pre;
        dh[2 * C + c] = d_candidate_pre * reset;
        grad_skip.Row(row)[c] =
            dy * update;  // the direct path; the GRU's adds below
      }
    }
  });
  FTX_RETURN_IF_ERROR(LinearBackward(ctx, out, params.gru_weight_ih,
                                     d_gate_input_.view<const float>(), d_out,
                                     grads.gru_weight_ih, grads.gru_bias_ih));
  FTX_RETURN_IF_ERROR(LinearBackward(
      ctx, h, params.gru_weight_hh, d_gate_hidden_.view<const float>(),
      d_residual, grads.gru_weight_hh, grads.gru_bias_hh,
      {.accumulate_input_grad = true}));
  if (!config_.scale_residual) return absl::OkStatus();
  // d_residual holds dL/dh; h = residual * residual_scale.
  const MatrixView<const float> skip = AsMatrix(residual);
  AccumulateColumnProducts(ctx, AsMatrix(TensorView<const float>(d_residual)),
                           skip, 1.0, grads.residual_scale.data());
  const float* scale = params.residual_scale.data();
  ctx.pool().ParallelFor(R, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      for (int64_t c = 0; c < C; ++c) grad_skip.Row(row)[c] *= scale[c];
    }
  });
  return absl::OkStatus();
}

}  // namespace ftx
