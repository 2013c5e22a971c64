#include "attention/favor.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "attention/random_features.h"
#include "kernels/base/status_macros.h"
#include "kernels/causal_product/causal_product.h"
#include "kernels/matmul/matmul.h"

namespace ftx {
namespace {

// Philox stream of projection draws; draw k uses stream base + k.
constexpr uint64_t kProjectionStream = 0x50524F4A00000000ull;
// performer's constants: eps inside the softmax kernel, kernel_epsilon of the
// generalized kernel, and the eps added to every element of the causal key
// cumsum.
constexpr float kSoftmaxKernelEps = 1e-4f;
constexpr float kGeneralizedKernelEps = 1e-3f;
constexpr float kCausalCumsumEps = 1e-6f;

// Address of row r (over the three leading axes) of a rank-4 view.
template <typename T>
T* Row(const TensorView<T>& view, int64_t r) {
  const int64_t heads = view.dim(2), steps = view.dim(1);
  const int64_t h = r % heads, t = (r / heads) % steps, n = r / (heads * steps);
  return view.data() + n * view.stride(0) + t * view.stride(1) +
         h * view.stride(2);
}

float Normalizer(int64_t qk_dim) {
  return std::pow(static_cast<float>(qk_dim), -0.25f);
}

}  // namespace

// phi of FAVOR+ for x [N, T, H, E] (strided) into a contiguous phi [N, T, H,
// F], and the backward d_x = (d phi / d x)^T d_phi with the softmax-kernel
// maxima held constant. Holds the scratch buffers, reused while the shapes stay
// the same.
class PerformerKernel {
 public:
  explicit PerformerKernel(const FavorAttentionOptions& options)
      : options_(options) {}

  absl::Status Forward(const Context& ctx, const Tensor& projection,
                       TensorView<const float> x, bool is_query, float* phi);
  absl::Status Backward(const Context& ctx, const Tensor& projection,
                        TensorView<const float> x, bool is_query,
                        const float* phi, const float* d_phi,
                        TensorView<float> d_x);

 private:
  // scaled_ [rows, E] = c x and projected_ [rows, m] = dd = scaled_ W^T.
  absl::Status Project(const Context& ctx, const Tensor& projection,
                       TensorView<const float> x);
  void NoProjectionForward(const Context& ctx, TensorView<const float> x,
                           bool is_query, float* phi) const;
  void NoProjectionBackward(const Context& ctx, TensorView<const float> x,
                            bool is_query, const float* phi, const float* d_phi,
                            TensorView<float> d_x) const;

  FavorAttentionOptions options_;
  Tensor scaled_, projected_, d_projected_, d_scaled_;
};

absl::Status PerformerKernel::Project(const Context& ctx,
                                      const Tensor& projection,
                                      TensorView<const float> x) {
  const int64_t rows = x.dim(0) * x.dim(1) * x.dim(2), E = x.dim(3);
  const int64_t m = projection.shape().dim(0);
  const float c = Normalizer(E);
  FTX_RETURN_IF_ERROR(EnsureTensor(scaled_, {rows, E}, ctx.device()));
  float* scaled = scaled_.data<float>();
  ctx.pool().ParallelFor(rows, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* row = Row(x, r);
      for (int64_t e = 0; e < E; ++e) scaled[r * E + e] = c * row[e];
    }
  });
  FTX_RETURN_IF_ERROR(EnsureTensor(projected_, {rows, m}, ctx.device()));
  return MatMul(ctx, scaled_.view<float>(), projection.view<float>(),
                projected_.view<float>(), {.transpose_b = true});
}

void PerformerKernel::NoProjectionForward(const Context& ctx,
                                          TensorView<const float> x,
                                          bool is_query, float* phi) const {
  const int64_t N = x.dim(0), T = x.dim(1), H = x.dim(2), E = x.dim(3);
  if (is_query) {
    // softmax over E.
    ctx.pool().ParallelFor(N * T * H, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const float* row = Row(x, r);
        float* out = phi + r * E;
        const float max_value = *std::max_element(row, row + E);
        float total = 0.0f;
        for (int64_t e = 0; e < E; ++e) {
          out[e] = std::exp(row[e] - max_value);
          total += out[e];
        }
        for (int64_t e = 0; e < E; ++e) out[e] /= total;
      }
    });
  } else if (options_.causal) {
    ctx.pool().ParallelFor(N * T * H, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const float* row = Row(x, r);
        for (int64_t e = 0; e < E; ++e) phi[r * E + e] = std::exp(row[e]);
      }
    });
  } else {
    // softmax over the sequence for every (n, h, e).
    ctx.pool().ParallelFor(N * H, [&](int64_t begin, int64_t end) {
      for (int64_t nh = begin; nh < end; ++nh) {
        const int64_t n = nh / H, h = nh % H;
        for (int64_t e = 0; e < E; ++e) {
          float max_value = -std::numeric_limits<float>::infinity();
          for (int64_t t = 0; t < T; ++t)
            max_value = std::max(max_value, x.at(n, t, h, e));
          float total = 0.0f;
          for (int64_t t = 0; t < T; ++t) {
            const float value = std::exp(x.at(n, t, h, e) - max_value);
            phi[((n * T + t) * H + h) * E + e] = value;
            total += value;
          }
          for (int64_t t = 0; t < T; ++t)
            phi[((n * T + t) * H + h) * E + e] /= total;
        }
      }
    });
  }
}

void PerformerKernel::NoProjectionBackward(const Context& ctx,
                                           TensorView<const float> x,
                                           bool is_query, const float* phi,
                                           const float* d_phi,
                                           TensorView<float> d_x) const {
  const int64_t N = x.dim(0), T = x.dim(1), H = x.dim(2), E = x.dim(3);
  if (is_query) {
    // softmax: d_x = phi (d_phi - sum_e d_phi_e phi_e).
    ctx.pool().ParallelFor(N * T * H, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        float dot = 0.0f;
        for (int64_t e = 0; e < E; ++e)
          dot += d_phi[r * E + e] * phi[r * E + e];
        float* out = Row(d_x, r);
        for (int64_t e = 0; e < E; ++e)
          out[e] = phi[r * E + e] * (d_phi[r * E + e] - dot);
      }
    });
  } else if (options_.causal) {
    ctx.pool().ParallelFor(N * T * H, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        float* out = Row(d_x, r);
        for (int64_t e = 0; e < E; ++e)
          out[e] = d_phi[r * E + e] * phi[r * E + e];
      }
    });
  } else {
    ctx.pool().ParallelFor(N * H, [&](int64_t begin, int64_t end) {
      for (int64_t nh = begin; nh < end; ++nh) {
        const int64_t n = nh / H, h = nh % H;
        for (int64_t e = 0; e < E; ++e) {
          auto at = [&](int64_t t) { return ((n * T + t) * H + h) * E + e; };
          float dot = 0.0f;
          for (int64_t t = 0; t < T; ++t) dot += d_phi[at(t)] * phi[at(t)];
          for (int64_t t = 0; t < T; ++t)
            d_x.at(n, t, h, e) = phi[at(t)] * (d_phi[at(t)] - dot);
        }
      }
    });
  }
}

absl::Status PerformerKernel::Forward(const Context& ctx,
                                      const Tensor& projection,
                                      TensorView<const float> x, bool is_query,
                                      float* phi) {
  if (options_.no_projection) {
    NoProjectionForward(ctx, x, is_query, phi);
    return absl::OkStatus();
  }
  const int64_t N = x.dim(0), T = x.dim(1), H = x.dim(2), E = x.dim(3);
  const int64_t rows = N * T * H, m = projection.shape().dim(0);
  FTX_RETURN_IF_ERROR(Project(ctx, projection, x));
  if (options_.generalized_attention) {
    const TensorView<float> features(phi, {rows, m});
    FTX_RETURN_IF_ERROR(
        Activate(ctx, options_.kernel_fn, projected_.view<float>(), features));
    ctx.pool().ParallelFor(
        rows * m,
        [&](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i) phi[i] += kGeneralizedKernelEps;
        },
        4096);
    return absl::OkStatus();
  }
  // Softmax kernel: dd = (c x) W^T, diag = |x|^2 c^2 / 2.
  const float* dd = projected_.data<float>();
  const float c = Normalizer(E);
  std::vector<float> key_offset(N * H, 0.0f);
  if (!is_query &&
      options_.key_stabilizer == FavorKeyStabilizer::kSequenceMax) {
    ctx.pool().ParallelFor(N * H, [&](int64_t begin, int64_t end) {
      for (int64_t nh = begin; nh < end; ++nh) {
        const int64_t n = nh / H, h = nh % H;
        float max_value = -std::numeric_limits<float>::infinity();
        for (int64_t t = 0; t < T; ++t) {
          const float* row = dd + ((n * T + t) * H + h) * m;
          max_value = std::max(max_value, *std::max_element(row, row + m));
        }
        key_offset[nh] = max_value;
      }
    });
  }
  const float ratio = 1.0f / std::sqrt(static_cast<float>(m));
  ctx.pool().ParallelFor(rows, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* x_row = Row(x, r);
      float squared = 0.0f;
      for (int64_t e = 0; e < E; ++e) squared += x_row[e] * x_row[e];
      const float diag = squared / 2.0f * (c * c);
      const float* dd_row = dd + r * m;
      const float offset = is_query ? *std::max_element(dd_row, dd_row + m)
                                    : key_offset[(r / (T * H)) * H + r % H];
      float* out = phi + r * m;
      for (int64_t f = 0; f < m; ++f) {
        out[f] =
            ratio * (std::exp(dd_row[f] - diag - offset) + kSoftmaxKernelEps);
      }
    }
  });
  return absl::OkStatus();
}

absl::Status PerformerKernel::Backward(const Context& ctx,
                                       const Tensor& projection,
                                       TensorView<const float> x, bool is_query,
                                       const float* phi, const float* d_phi,
                                       TensorView<float> d_x) {
  if (options_.no_projection) {
    NoProjectionBackward(ctx, x, is_query, phi, d_phi, d_x);
    return absl::OkStatus();
  }
  const int64_t N = x.dim(0), T = x.dim(1), H = x.dim(2), E = x.dim(3);
  const int64_t rows = N * T * H, m = projection.shape().dim(0);
  const float c = Normalizer(E);
  FTX_RETURN_IF_ERROR(EnsureTensor(d_projected_, {rows, m}, ctx.device()));
  float* d_dd = d_projected_.data<float>();
  std::vector<float> diag_grad(rows, 0.0f);  // d loss / d diag, negated
  if (options_.generalized_attention) {
    FTX_RETURN_IF_ERROR(Project(ctx, projection, x));
    std::copy(d_phi, d_phi + rows * m, d_dd);
    FTX_RETURN_IF_ERROR(ActivateBackward(
        ctx, options_.kernel_fn, projected_.view<float>(),
        d_projected_.view<float>(), d_projected_.view<float>()));
  } else {
    // phi = ratio (exp(dd - diag - offset) + eps) with the offset constant:
    // d phi / d dd = phi - ratio eps = -d phi / d diag.
    const float ratio_eps =
        kSoftmaxKernelEps / std::sqrt(static_cast<float>(m));
    ctx.pool().ParallelFor(rows, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        float total = 0.0f;
        for (int64_t f = 0; f < m; ++f) {
          const float g = d_phi[r * m + f] * (phi[r * m + f] - ratio_eps);
          d_dd[r * m + f] = g;
          total += g;
        }
        diag_grad[r] = total;
      }
    });
  }
  // d (c x) = d_dd W; diag = |x|^2 c^2 / 2 adds -c^2 x sum_f g_f.
  FTX_RETURN_IF_ERROR(EnsureTensor(d_scaled_, {rows, E}, ctx.device()));
  FTX_RETURN_IF_ERROR(MatMul(ctx, d_projected_.view<float>(),
                             projection.view<float>(),
                             d_scaled_.view<float>()));
  const float* d_scaled = d_scaled_.data<float>();
  ctx.pool().ParallelFor(rows, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* x_row = Row(x, r);
      float* out = Row(d_x, r);
      for (int64_t e = 0; e < E; ++e) {
        out[e] = c * d_scaled[r * E + e] - c * c * x_row[e] * diag_grad[r];
      }
    }
  });
  return absl::OkStatus();
}

namespace {

absl::Status CheckMasks(const char* op, const FavorAttentionOptions& options,
                        const AttentionInputs& inputs,
                        const AttentionDims& dims) {
  if (options.causal) {
    if (inputs.attn_mask.kind() != AttnMask::Kind::kCausal ||
        inputs.attn_mask.causal_offset() != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          op, ": causal favor needs a causal attn_mask (AttnMask::Causal())"));
    }
    if (dims.queries != dims.keys) {
      return absl::InvalidArgumentError(absl::StrCat(
          op, ": causal favor needs as many keys as queries, got L = ",
          dims.queries, " and S = ", dims.keys));
    }
  } else if (inputs.attn_mask.kind() != AttnMask::Kind::kAll) {
    return absl::InvalidArgumentError(absl::StrCat(
        op,
        ": non-causal favor takes only an all-ones attn_mask (set causal for "
        "AttnMask::Causal())"));
  }
  return absl::OkStatus();
}

// Cache layout of a forward.
enum Saved : int {
  kProjection,     // W used by this forward [m, E]
  kQueryFeatures,  // phi(Q) [N, L, H, F]
  kKeyFeatures,    // phi(K) [N, S, H, F]
  kMaskedValues,   // V with padded rows zeroed [N, S, H, D] (only with key
                   // lengths)
  kContext,        // sum_s phi(k_s) v_s^T per head [H, N, F, D] (non-causal)
  kKeySum,         // sum_s phi(k_s) [N, H, F] (non-causal)
  kDenominator,    // [N, L, H]
  kOutput,         // out [N, L, H, D]
  kSavedCount
};

enum GradScratch : int {
  kScaledGrad,        // d_out / denominator [N, L, H, D]
  kDenominatorGrad,   // d loss / d denominator [N, L, H]
  kQueryFeatureGrad,  // [N, L, H, F]
  kKeyFeatureGrad,    // [N, S, H, F]
  kContextGrad,       // [H, N, F, D] (non-causal)
  kKeySumGrad,        // [N, H, F] (non-causal)
  kGradScratchCount
};

// For every (n, h), walks i = 0 .. L-1 with z_i = sum_{j<=i} phi(k_j) + eps and
// calls visit(n, h, i, z_i).
template <class Visit>
void ForEachPrefixSum(const Context& ctx, const float* key_features, int64_t N,
                      int64_t L, int64_t H, int64_t F, float eps, Visit visit) {
  ctx.pool().ParallelFor(N * H, [&](int64_t begin, int64_t end) {
    std::vector<float> prefix(F), shifted(F);
    for (int64_t nh = begin; nh < end; ++nh) {
      const int64_t n = nh / H, h = nh % H;
      std::fill(prefix.begin(), prefix.end(), 0.0f);
      for (int64_t i = 0; i < L; ++i) {
        const float* k_row = key_features + ((n * L + i) * H + h) * F;
        for (int64_t f = 0; f < F; ++f) {
          prefix[f] += k_row[f];
          shifted[f] = prefix[f] + eps;
        }
        visit(n, h, i, shifted.data());
      }
    }
  });
}

// Zeroes rows s >= key length of `rows` [N, S, H, *].
void ZeroPaddedKeys(const Context& ctx, const LengthMask& key_lengths,
                    TensorView<float> rows) {
  if (key_lengths.full()) return;
  const int64_t N = rows.dim(0), S = rows.dim(1), H = rows.dim(2),
                D = rows.dim(3);
  ctx.pool().ParallelFor(N, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      for (int64_t s = key_lengths.Length(n, S); s < S; ++s) {
        for (int64_t h = 0; h < H; ++h) {
          float* row = &rows.at(n, s, h, 0);
          std::fill(row, row + D, 0.0f);
        }
      }
    }
  });
}

}  // namespace

absl::Status ValidateFavorOptions(const FavorAttentionOptions& options) {
  if (options.ortho_scaling != 0 && options.ortho_scaling != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "favor: ortho_scaling must be 0 or 1, got ", options.ortho_scaling));
  }
  if (options.nb_features.has_value() && *options.nb_features < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "favor: nb_features must be at least 1, got ", *options.nb_features));
  }
  if (options.feature_redraw_interval < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "favor: feature_redraw_interval must be >= 0 (0 never redraws), got ",
        options.feature_redraw_interval));
  }
  return absl::OkStatus();
}

int64_t FavorProjection::NbFeatures(int64_t qk_dim) const {
  if (nb_features_.has_value()) return *nb_features_;
  const double d = static_cast<double>(qk_dim);
  return static_cast<int64_t>(d * std::log(d));
}

absl::Status FavorProjection::Ensure(const char* op, int64_t qk_dim) {
  if (matrix_.raw_data() == nullptr) return Redraw(op, qk_dim);
  if (matrix_.shape().dim(1) != qk_dim) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": the projection has shape ", matrix_.shape().ToString(),
        " but the inputs have E = ", qk_dim));
  }
  return absl::OkStatus();
}

absl::Status FavorProjection::Redraw(const char* op, int64_t qk_dim) {
  const int64_t m = NbFeatures(qk_dim);
  if (qk_dim < 1 || m < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": nb_features = ", m, " for E = ", qk_dim,
                     " (int(E ln E) when unset); need at least one feature"));
  }
  FTX_ASSIGN_OR_RETURN(Tensor matrix, Tensor::Create(DType::kF32, {m, qk_dim}));
  const RandomOptions random{
      .seed = seed_,
      .stream = kProjectionStream + static_cast<uint64_t>(draws_),
      .offset = 0};
  FTX_RETURN_IF_ERROR(GaussianOrthogonalRandomMatrix(
      ortho_scaling_, random, matrix.view<float>(), uniform_q_));
  matrix_ = std::move(matrix);
  ++draws_;
  return absl::OkStatus();
}

absl::Status FavorProjection::Set(const char* op,
                                  TensorView<const float> projection) {
  if (projection.rank() != 2 || projection.device().type != DeviceType::kCpu ||
      projection.data() == nullptr || projection.dim(0) < 1 ||
      projection.dim(1) < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        op,
        ": the projection must be a non-empty CPU [m, E] matrix, got shape ",
        projection.shape().ToString()));
  }
  if (nb_features_.has_value() && projection.dim(0) != *nb_features_) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": the projection has ", projection.dim(0),
                     " rows but nb_features = ", *nb_features_));
  }
  const int64_t m = projection.dim(0), E = projection.dim(1);
  // Reused when the shape stays (models set it from their store every call).
  if (matrix_.shape() != Shape{m, E}) {
    FTX_ASSIGN_OR_RETURN(matrix_, Tensor::Create(DType::kF32, {m, E}));
  }
  float* data = matrix_.data<float>();
  for (int64_t f = 0; f < m; ++f) {
    for (int64_t e = 0; e < E; ++e) data[f * E + e] = projection.at(f, e);
  }
  return absl::OkStatus();
}

FavorAttention::FavorAttention(const FavorAttentionOptions& options)
    : options_(options),
      projection_(options.nb_features, options.ortho_scaling,
                  options.qr_uniform_q, options.seed),
      kernel_(std::make_unique<PerformerKernel>(options)) {}

FavorAttention::~FavorAttention() = default;

int64_t FavorAttention::FeatureDim(int64_t qk_dim) const {
  if (options_.no_projection) return qk_dim;
  const Tensor& matrix = projection_.matrix();
  return matrix.raw_data() != nullptr ? matrix.shape().dim(0)
                                      : projection_.NbFeatures(qk_dim);
}

absl::Status FavorAttention::Forward(const Context& ctx,
                                     const AttentionInputs& inputs,
                                     TensorView<float> out,
                                     AttentionCache* cache) {
  constexpr char kOp[] = "FavorAttention";
  FTX_ASSIGN_OR_RETURN(const AttentionDims dims,
                       ValidateAttentionForward(kOp, ctx, inputs, out));
  FTX_RETURN_IF_ERROR(ValidateFavorOptions(options_));
  FTX_RETURN_IF_ERROR(CheckMasks(kOp, options_, inputs, dims));
  if (ctx.device().type != DeviceType::kCpu) {
    return absl::UnimplementedError(
        absl::StrCat(kOp, ": only the CPU path exists so far"));
  }
  const int64_t N = dims.batch, L = dims.queries, S = dims.keys, H = dims.heads,
                E = dims.qk_dim, D = dims.value_dim;
  FTX_RETURN_IF_ERROR(projection_.Ensure(kOp, E));
  if (inputs.training && options_.feature_redraw_interval > 0) {
    if (calls_since_last_redraw_ >= options_.feature_redraw_interval) {
      FTX_RETURN_IF_ERROR(projection_.Redraw(kOp, E));
      calls_since_last_redraw_ = 0;
    } else {
      ++calls_since_last_redraw_;
    }
  }
  const Tensor& projection = projection_.matrix();
  const int64_t m = projection.shape().dim(0), F = FeatureDim(E);

  AttentionCache& saved = cache != nullptr ? *cache : scratch_;
  saved.saved.resize(kSavedCount);
  FTX_RETURN_IF_ERROR(
      EnsureTensor(saved.saved[kProjection], {m, E}, ctx.device()));
  FTX_RETURN_IF_ERROR(
      EnsureTensor(saved.saved[kQueryFeatures], {N, L, H, F}, ctx.device()));
  FTX_RETURN_IF_ERROR(
      EnsureTensor(saved.saved[kKeyFeatures], {N, S, H, F}, ctx.device()));
  FTX_RETURN_IF_ERROR(
      EnsureTensor(saved.saved[kDenominator], {N, L, H}, ctx.device()));
  FTX_RETURN_IF_ERROR(
      EnsureTensor(saved.saved[kOutput], {N, L, H, D}, ctx.device()));
  FTX_RETURN_IF_ERROR(saved.saved[kProjection].CopyFrom(projection));

  TensorView<float> query_features = saved.saved[kQueryFeatures].view<float>();
  TensorView<float> key_features = saved.saved[kKeyFeatures].view<float>();
  FTX_RETURN_IF_ERROR(kernel_->Forward(ctx, projection, inputs.queries, true,
                                       query_features.data()));
  FTX_RETURN_IF_ERROR(kernel_->Forward(ctx, projection, inputs.keys, false,
                                       key_features.data()));

  // performer masks padding by zeroing V only.
  TensorView<const float> values = inputs.values;
  if (!inputs.key_lengths.full()) {
    Tensor& masked = saved.saved[kMaskedValues];
    FTX_RETURN_IF_ERROR(EnsureTensor(masked, {N, S, H, D}, ctx.device()));
    TensorView<float> masked_view = masked.view<float>();
    ctx.pool().ParallelFor(N * S * H, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const float* row = Row(inputs.values, r);
        std::copy(row, row + D, masked_view.data() + r * D);
      }
    });
    ZeroPaddedKeys(ctx, inputs.key_lengths, masked_view);
    values = masked_view;
  }

  float* denominator = saved.saved[kDenominator].data<float>();
  TensorView<float> saved_out = saved.saved[kOutput].view<float>();
  const float* qf = query_features.data();
  if (!options_.causal) {
    FTX_RETURN_IF_ERROR(
        EnsureTensor(saved.saved[kContext], {H, N, F, D}, ctx.device()));
    FTX_RETURN_IF_ERROR(
        EnsureTensor(saved.saved[kKeySum], {N, H, F}, ctx.device()));
    TensorView<float> context = saved.saved[kContext].view<float>();
    float* key_sum = saved.saved[kKeySum].data<float>();
    const float* kf = key_features.data();
    ctx.pool().ParallelFor(N * H, [&](int64_t begin, int64_t end) {
      for (int64_t nh = begin; nh < end; ++nh) {
        const int64_t n = nh / H, h = nh % H;
        float* sum = key_sum + nh * F;
        std::fill(sum, sum + F, 0.0f);
        for (int64_t s = 0; s < S; ++s) {
          const float* row = kf + ((n * S + s) * H + h) * F;
          for (int64_t f = 0; f < F; ++f) sum[f] += row[f];
        }
      }
    });
    for (int64_t h = 0; h < H; ++h) {
      // context_h [N, F, D] = phi(K)_h^T V_h;  numerator_h [N, L, D] = phi(Q)_h
      // context_h.
      FTX_RETURN_IF_ERROR(MatMul(ctx, key_features.Select(2, h),
                                 values.Select(2, h), context.Select(0, h),
                                 {.transpose_a = true}));
      FTX_RETURN_IF_ERROR(MatMul(ctx, query_features.Select(2, h),
                                 context.Select(0, h), saved_out.Select(2, h)));
    }
    ctx.pool().ParallelFor(N * L * H, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t n = row / (L * H), h = row % H;
        const float* sum = key_sum + (n * H + h) * F;
        float dot = 0.0f;
        for (int64_t f = 0; f < F; ++f) dot += qf[row * F + f] * sum[f];
        denominator[row] = dot;
      }
    });
  } else {
    FTX_RETURN_IF_ERROR(
        CausalProduct(ctx, query_features, key_features, values, saved_out));
    ForEachPrefixSum(ctx, key_features.data(), N, L, H, F, kCausalCumsumEps,
                     [&](int64_t n, int64_t h, int64_t i, const float* prefix) {
                       const int64_t row = (n * L + i) * H + h;
                       float dot = 0.0f;
                       for (int64_t f = 0; f < F; ++f)
                         dot += qf[row * F + f] * prefix[f];
                       denominator[row] = dot;
                     });
  }
  ctx.pool().ParallelFor(N * L * H, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / (L * H), l = (row / H) % L, h = row % H;
      const float inverse = 1.0f / denominator[row];
      float* numerator = saved_out.data() + row * D;
      for (int64_t d = 0; d < D; ++d) {
        numerator[d] *= inverse;
        out.at(n, l, h, d) = numerator[d];
      }
    }
  });
  return absl::OkStatus();
}

absl::Status FavorAttention::Backward(const Context& ctx,
                                      const AttentionInputs& inputs,
                                      const AttentionCache& cache,
                                      TensorView<const float> d_out,
                                      const AttentionGrads& grads) {
  constexpr char kOp[] = "FavorAttentionBackward";
  FTX_ASSIGN_OR_RETURN(
      const AttentionDims dims,
      ValidateAttentionBackward(kOp, ctx, inputs, d_out, grads));
  FTX_RETURN_IF_ERROR(ValidateFavorOptions(options_));
  FTX_RETURN_IF_ERROR(CheckMasks(kOp, options_, inputs, dims));
  if (ctx.device().type != DeviceType::kCpu) {
    return absl::UnimplementedError(
        absl::StrCat(kOp, ": only the CPU path exists so far"));
  }
  const int64_t N = dims.batch, L = dims.queries, S = dims.keys, H = dims.heads,
                E = dims.qk_dim, D = dims.value_dim;
  const bool masked = !inputs.key_lengths.full();
  if (cache.saved.size() != kSavedCount ||
      cache.saved[kProjection].shape().rank() != 2 ||
      cache.saved[kProjection].shape().dim(1) != E ||
      cache.saved[kOutput].shape() != Shape{N, L, H, D} ||
      cache.saved[kQueryFeatures].shape().rank() != 4 ||
      cache.saved[kKeyFeatures].shape() !=
          Shape{N, S, H, cache.saved[kQueryFeatures].shape().dim(3)} ||
      (masked && cache.saved[kMaskedValues].shape() != Shape{N, S, H, D}) ||
      (!options_.causal && cache.saved[kContext].raw_data() == nullptr)) {
    return absl::FailedPreconditionError(
        absl::StrCat(kOp,
                     ": the cache does not come from a Forward with these "
                     "inputs (pass a cache "
                     "to Forward)"));
  }
  const Tensor& projection = cache.saved[kProjection];
  const int64_t F = cache.saved[kQueryFeatures].shape().dim(3);
  const TensorView<const float> query_features =
      cache.saved[kQueryFeatures].view<float>();
  const TensorView<const float> key_features =
      cache.saved[kKeyFeatures].view<float>();
  const TensorView<const float> values =
      masked ? cache.saved[kMaskedValues].view<float>() : inputs.values;
  const float* denominator = cache.saved[kDenominator].data<float>();
  const float* saved_out = cache.saved[kOutput].data<float>();

  grad_scratch_.saved.resize(kGradScratchCount);
  FTX_RETURN_IF_ERROR(EnsureTensor(grad_scratch_.saved[kScaledGrad],
                                   {N, L, H, D}, ctx.device()));
  FTX_RETURN_IF_ERROR(EnsureTensor(grad_scratch_.saved[kDenominatorGrad],
                                   {N, L, H}, ctx.device()));
  FTX_RETURN_IF_ERROR(EnsureTensor(grad_scratch_.saved[kQueryFeatureGrad],
                                   {N, L, H, F}, ctx.device()));
  FTX_RETURN_IF_ERROR(EnsureTensor(grad_scratch_.saved[kKeyFeatureGrad],
                                   {N, S, H, F}, ctx.device()));
  TensorView<float> scaled_grad =
      grad_scratch_.saved[kScaledGrad].view<float>();
  float* den_grad = grad_scratch_.saved[kDenominatorGrad].data<float>();
  TensorView<float> qf_grad =
      grad_scratch_.saved[kQueryFeatureGrad].view<float>();
  TensorView<float> kf_grad =
      grad_scratch_.saved[kKeyFeatureGrad].view<float>();

  // out = numerator / den: g = d_out / den, d_den = -(d_out . out) / den.
  ctx.pool().ParallelFor(N * L * H, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / (L * H), l = (row / H) % L, h = row % H;
      const float inverse = 1.0f / denominator[row];
      float dot = 0.0f;
      for (int64_t d = 0; d < D; ++d) {
        const float g = d_out.at(n, l, h, d) * inverse;
        scaled_grad.data()[row * D + d] = g;
        dot += g * saved_out[row * D + d];
      }
      den_grad[row] = -dot;
    }
  });
  const float* qf = query_features.data();
  if (!options_.causal) {
    FTX_RETURN_IF_ERROR(EnsureTensor(grad_scratch_.saved[kContextGrad],
                                     {H, N, F, D}, ctx.device()));
    FTX_RETURN_IF_ERROR(EnsureTensor(grad_scratch_.saved[kKeySumGrad],
                                     {N, H, F}, ctx.device()));
    const TensorView<const float> context = cache.saved[kContext].view<float>();
    const float* key_sum = cache.saved[kKeySum].data<float>();
    TensorView<float> context_grad =
        grad_scratch_.saved[kContextGrad].view<float>();
    float* key_sum_grad = grad_scratch_.saved[kKeySumGrad].data<float>();
    for (int64_t h = 0; h < H; ++h) {
      // d phi(Q)_h = g_h context_h^T;  d context_h = phi(Q)_h^T g_h.
      FTX_RETURN_IF_ERROR(MatMul(ctx, scaled_grad.Select(2, h),
                                 context.Select(0, h), qf_grad.Select(2, h),
                                 {.transpose_b = true}));
      FTX_RETURN_IF_ERROR(
          MatMul(ctx, query_features.Select(2, h), scaled_grad.Select(2, h),
                 context_grad.Select(0, h), {.transpose_a = true}));
      // d phi(K)_h = V_h d context_h^T;  d V_h = phi(K)_h d context_h.
      FTX_RETURN_IF_ERROR(MatMul(ctx, values.Select(2, h),
                                 context_grad.Select(0, h),
                                 kf_grad.Select(2, h), {.transpose_b = true}));
      FTX_RETURN_IF_ERROR(MatMul(ctx, key_features.Select(2, h),
                                 context_grad.Select(0, h),
                                 grads.d_values.Select(2, h)));
    }
    // den_l = phi(q_l) . key_sum: d phi(q_l) += d_den_l key_sum and every key,
    // padded or not, gets d key_sum = sum_l d_den_l phi(q_l).
    ctx.pool().ParallelFor(N * H, [&](int64_t begin, int64_t end) {
      for (int64_t nh = begin; nh < end; ++nh) {
        const int64_t n = nh / H, h = nh % H;
        const float* sum = key_sum + nh * F;
        float* sum_grad = key_sum_grad + nh * F;
        std::fill(sum_grad, sum_grad + F, 0.0f);
        for (int64_t l = 0; l < L; ++l) {
          const int64_t row = (n * L + l) * H + h;
          float* q_grad = qf_grad.data() + row * F;
          for (int64_t f = 0; f < F; ++f) {
            q_grad[f] += den_grad[row] * sum[f];
            sum_grad[f] += den_grad[row] * qf[row * F + f];
          }
        }
        for (int64_t s = 0; s < S; ++s) {
          float* k_grad = kf_grad.data() + ((n * S + s) * H + h) * F;
          for (int64_t f = 0; f < F; ++f) k_grad[f] += sum_grad[f];
        }
      }
    });
  } else {
    FTX_RETURN_IF_ERROR(CausalProductBackward(ctx, query_features, key_features,
                                              values, scaled_grad, qf_grad,
                                              kf_grad, grads.d_values));
    // den_i = phi(q_i) . (z_i + eps): d phi(q_i) += d_den_i (z_i + eps) and
    // d phi(k_j) += sum_{i>=j} d_den_i phi(q_i).
    ForEachPrefixSum(ctx, key_features.data(), N, L, H, F, kCausalCumsumEps,
                     [&](int64_t n, int64_t h, int64_t i, const float* prefix) {
                       const int64_t row = (n * L + i) * H + h;
                       float* q_grad = qf_grad.data() + row * F;
                       for (int64_t f = 0; f < F; ++f)
                         q_grad[f] += den_grad[row] * prefix[f];
                     });
    ctx.pool().ParallelFor(N * H, [&](int64_t begin, int64_t end) {
      std::vector<float> suffix(F);
      for (int64_t nh = begin; nh < end; ++nh) {
        const int64_t n = nh / H, h = nh % H;
        std::fill(suffix.begin(), suffix.end(), 0.0f);
        for (int64_t j = L - 1; j >= 0; --j) {
          const int64_t row = (n * L + j) * H + h;
          for (int64_t f = 0; f < F; ++f)
            suffix[f] += den_grad[row] * qf[row * F + f];
          float* k_grad = kf_grad.data() + row * F;
          for (int64_t f = 0; f < F; ++f) k_grad[f] += suffix[f];
        }
      }
    });
  }
  // V was masked with a constant fill: padded rows get no gradient.
  ZeroPaddedKeys(ctx, inputs.key_lengths, grads.d_values);
  FTX_RETURN_IF_ERROR(kernel_->Backward(ctx, projection, inputs.queries, true,
                                        qf, qf_grad.data(), grads.d_queries));
  return kernel_->Backward(ctx, projection, inputs.keys, false,
                           key_features.data(), kf_grad.data(), grads.d_keys);
}

namespace {

class FavorRunningSums : public RecurrentState {
 public:
  int64_t steps() const override { return steps_; }

  int64_t batch = 0, heads = 0, qk_dim = 0, value_dim = 0, features = 0;
  int64_t steps_ = 0;
  std::vector<float> kv;              // [N, H, F, D]
  std::vector<float> key_sum;         // [N, H, F]
  std::vector<float> query_features;  // [N, 1, H, F]
  std::vector<float> key_features;    // [N, 1, H, F]
};

FavorAttentionOptions RecurrentOptions(FavorAttentionOptions options) {
  options.causal = true;
  options.key_stabilizer = FavorKeyStabilizer::kZero;
  return options;
}

}  // namespace

RecurrentFavorAttention::RecurrentFavorAttention(
    const FavorAttentionOptions& options)
    : options_(RecurrentOptions(options)),
      projection_(options.nb_features, options.ortho_scaling,
                  options.qr_uniform_q, options.seed),
      kernel_(std::make_unique<PerformerKernel>(options_)) {}

RecurrentFavorAttention::~RecurrentFavorAttention() = default;

std::unique_ptr<RecurrentState> RecurrentFavorAttention::NewState() const {
  return std::make_unique<FavorRunningSums>();
}

absl::Status RecurrentFavorAttention::Step(const Context& ctx,
                                           TensorView<const float> query,
                                           TensorView<const float> key,
                                           TensorView<const float> value,
                                           TensorView<float> out,
                                           RecurrentState& state) {
  constexpr char kOp[] = "RecurrentFavorAttention";
  FTX_ASSIGN_OR_RETURN(const RecurrentStepDims dims,
                       ValidateRecurrentStep(kOp, query, key, value, out));
  const int64_t N = dims.batch, H = dims.heads, E = dims.qk_dim,
                D = dims.value_dim;
  if (ctx.device().type != DeviceType::kCpu) {
    return absl::UnimplementedError(
        absl::StrCat(kOp, ": only the CPU path exists so far"));
  }
  FTX_RETURN_IF_ERROR(ValidateFavorOptions(options_));
  auto* sums = dynamic_cast<FavorRunningSums*>(&state);
  if (sums == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": state was not made by this mechanism's NewState"));
  }
  if (sums->steps_ == 0) {
    FTX_RETURN_IF_ERROR(projection_.Ensure(kOp, E));
    const int64_t F =
        options_.no_projection ? E : projection_.matrix().shape().dim(0);
    sums->batch = N;
    sums->heads = H;
    sums->qk_dim = E;
    sums->value_dim = D;
    sums->features = F;
    sums->kv.assign(N * H * F * D, 0.0f);
    sums->key_sum.assign(N * H * F, 0.0f);
    sums->query_features.assign(N * H * F, 0.0f);
    sums->key_features.assign(N * H * F, 0.0f);
  }
  if (sums->batch != N || sums->heads != H || sums->qk_dim != E ||
      sums->value_dim != D) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": step shapes changed from [N=", sums->batch, ", H=", sums->heads,
        ", E=", sums->qk_dim, ", D=", sums->value_dim, "] to [N=", N, ", H=", H,
        ", E=", E, ", D=", D, "]"));
  }
  const int64_t F = sums->features;
  FTX_RETURN_IF_ERROR(kernel_->Forward(ctx, projection_.matrix(),
                                       query.Reshape({N, 1, H, E}), true,
                                       sums->query_features.data()));
  FTX_RETURN_IF_ERROR(kernel_->Forward(ctx, projection_.matrix(),
                                       key.Reshape({N, 1, H, E}), false,
                                       sums->key_features.data()));
  ++sums->steps_;
  ctx.pool().ParallelFor(N * H, [&](int64_t begin, int64_t end) {
    for (int64_t nh = begin; nh < end; ++nh) {
      float* kv = sums->kv.data() + nh * F * D;
      float* key_sum = sums->key_sum.data() + nh * F;
      const float* v = value.data() + nh * D;
      const float* k_row = sums->key_features.data() + nh * F;
      const float* q_row = sums->query_features.data() + nh * F;
      float* o = out.data() + nh * D;
      std::fill(o, o + D, 0.0f);
      float denominator = 0.0f;
      for (int64_t f = 0; f < F; ++f) {
        key_sum[f] += k_row[f];
        denominator += q_row[f] * (key_sum[f] + kCausalCumsumEps);
        float* kv_row = kv + f * D;
        for (int64_t d = 0; d < D; ++d) {
          kv_row[d] += k_row[f] * v[d];
          o[d] += q_row[f] * kv_row[d];
        }
      }
      const float inverse = 1.0f / denominator;
      for (int64_t d = 0; d < D; ++d) o[d] *= inverse;
    }
  });
  return absl::OkStatus();
}

namespace {

// The registry options as FavorAttentionOptions (validated).
absl::StatusOr<FavorAttentionOptions> FavorOptionsFrom(
    const AttentionOptions& o) {
  FavorAttentionOptions options;
  if (auto nb_features = o.Int("nb_features"))
    options.nb_features = *nb_features;
  options.ortho_scaling = static_cast<int>(o.Int("ortho_scaling").value_or(0));
  options.qr_uniform_q = o.Bool("qr_uniform_q").value_or(false);
  options.causal = o.Bool("causal").value_or(false);
  options.generalized_attention =
      o.Bool("generalized_attention").value_or(false);
  const std::string kernel_fn = o.String("kernel_fn").value_or("relu");
  absl::StatusOr<Activation> activation = ActivationFromName(kernel_fn);
  if (!activation.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("favor: kernel_fn: ", activation.status().message()));
  }
  options.kernel_fn = *activation;
  options.no_projection = o.Bool("no_projection").value_or(false);
  options.feature_redraw_interval =
      o.Int("feature_redraw_interval").value_or(1000);
  const std::string stabilizer =
      o.String("key_stabilizer").value_or("sequence_max");
  if (stabilizer == "sequence_max") {
    options.key_stabilizer = FavorKeyStabilizer::kSequenceMax;
  } else if (stabilizer == "zero") {
    options.key_stabilizer = FavorKeyStabilizer::kZero;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("favor: key_stabilizer \"", stabilizer,
                     "\" is not one of sequence_max, zero"));
  }
  options.seed = static_cast<uint64_t>(o.Int("seed").value_or(0));
  FTX_RETURN_IF_ERROR(ValidateFavorOptions(options));
  return options;
}

}  // namespace

AttentionSpec FavorAttentionSpec() {
  AttentionSpec spec;
  spec.name = "favor";
  spec.description =
      "FAVOR+ random-feature attention, O(L m (E + D)) (Choromanski et al. "
      "2020; "
      "performer-pytorch FastAttention)";
  spec.options = {
      {"nb_features", OptionType::kInt, std::nullopt,
       "random features m; default int(E ln E)"},
      {"ortho_scaling", OptionType::kInt, OptionValue(int64_t{0}),
       "projection row norms: 0 chi-distributed, 1 sqrt(E)"},
      {"qr_uniform_q", OptionType::kBool, OptionValue(false),
       "sign-symmetric projection rows (performer 1.1.4: false)"},
      {"causal", OptionType::kBool, OptionValue(false),
       "causal (prefix) attention; needs AttnMask::Causal() and L == S"},
      {"generalized_attention", OptionType::kBool, OptionValue(false),
       "phi = kernel_fn((c x) W^T) + 1e-3 instead of the softmax kernel"},
      {"kernel_fn", OptionType::kString, OptionValue(std::string("relu")),
       "kernel of generalized_attention: a kernels/activation name"},
      {"no_projection", OptionType::kBool, OptionValue(false),
       "phi(q) = softmax_E(q); phi(k) = exp(k) (causal) or softmax over the "
       "sequence"},
      {"feature_redraw_interval", OptionType::kInt, OptionValue(int64_t{1000}),
       "redraw the projection on training forward interval + 1, then every "
       "interval + 1; "
       "0 never"},
      {"key_stabilizer", OptionType::kString,
       OptionValue(std::string("sequence_max")),
       "softmax-kernel key offset: sequence_max (performer) or zero "
       "(decodable)"},
      {"seed", OptionType::kInt, OptionValue(int64_t{0}), "projection seed"}};
  spec.factory = [](const AttentionOptions& o,
                    std::vector<std::unique_ptr<Attention>>)
      -> absl::StatusOr<std::unique_ptr<Attention>> {
    FTX_ASSIGN_OR_RETURN(const FavorAttentionOptions options,
                         FavorOptionsFrom(o));
    return std::unique_ptr<Attention>(
        std::make_unique<FavorAttention>(options));
  };
  // The step-wise form decodes causal favor (with the decodable key
  // stabiliser).
  spec.recurrent_factory = [](const AttentionOptions& o)
      -> absl::StatusOr<std::unique_ptr<RecurrentAttention>> {
    FTX_ASSIGN_OR_RETURN(const FavorAttentionOptions options,
                         FavorOptionsFrom(o));
    return std::unique_ptr<RecurrentAttention>(
        std::make_unique<RecurrentFavorAttention>(options));
  };
  return spec;
}

}  // namespace ftx
