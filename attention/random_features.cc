#include "attention/random_features.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "attention/attention.h"
#include "kernels/base/status_macros.h"
#include "kernels/matmul/matmul.h"

namespace ftx {
namespace {

// Philox streams of the maps' omega draws; draw k of a map uses stream base +
// k.
constexpr uint64_t kRandomFourierStream = 0x52464600000000ull;
constexpr uint64_t kSmoothedStream = 0x53524646000000ull;
constexpr uint64_t kFavorStream = 0x46415600000000ull;
constexpr uint64_t kGeneralizedStream = 0x47524600000000ull;

// Consecutive elements of the Philox normal sequence of `random`, in double.
class GaussianSequence {
 public:
  explicit GaussianSequence(const RandomOptions& random)
      : seed_(random.seed), stream_(random.stream), next_(random.offset) {}
  double Next() { return RandomNormal(seed_, stream_, next_++); }
  // A row-major [rows, columns] matrix.
  std::vector<double> Matrix(int64_t rows, int64_t columns) {
    std::vector<double> matrix(rows * columns);
    for (double& value : matrix) value = Next();
    return matrix;
  }

 private:
  uint64_t seed_, stream_, next_;
};

absl::Status CheckMatrixOut(const char* op, TensorView<float> out) {
  if (out.rank() != 2 || out.device().type != DeviceType::kCpu ||
      (out.data() == nullptr && out.NumElements() > 0) || !out.IsContiguous()) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": out must be a contiguous CPU matrix, got shape ",
                     out.shape().ToString()));
  }
  return absl::OkStatus();
}

// Address of row r (over the three leading axes) of a rank-4 view.
template <typename T>
T* Row(const TensorView<T>& view, int64_t r) {
  const int64_t heads = view.dim(2), steps = view.dim(1);
  const int64_t h = r % heads, t = (r / heads) % steps, n = r / (heads * steps);
  return view.data() + n * view.stride(0) + t * view.stride(1) +
         h * view.stride(2);
}

absl::Status CheckRank4(const char* op, const char* name, const Context& ctx,
                        const TensorView<const float>& view) {
  if (view.rank() != 4) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": ", name, " must have rank 4 [N, T, H, *], got shape ",
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

}  // namespace

std::vector<double> HouseholderQ(const std::vector<double>& matrix, int64_t n,
                                 std::vector<double>* r_diagonal) {
  std::vector<double> a = matrix;  // becomes R above the diagonal, v below it
  std::vector<double> tau(n, 0.0);
  for (int64_t j = 0; j + 1 < n; ++j) {
    double below = 0.0;
    for (int64_t i = j + 1; i < n; ++i) below += a[i * n + j] * a[i * n + j];
    if (below == 0.0) continue;
    const double alpha = a[j * n + j];
    const double beta = -std::copysign(std::sqrt(alpha * alpha + below), alpha);
    tau[j] = (beta - alpha) / beta;
    const double inverse = 1.0 / (alpha - beta);
    for (int64_t i = j + 1; i < n; ++i) a[i * n + j] *= inverse;
    a[j * n + j] = beta;
    // Apply H_j = I - tau v v^T, v = (1, a[j+1:, j]), to the columns on the
    // right.
    for (int64_t k = j + 1; k < n; ++k) {
      double w = a[j * n + k];
      for (int64_t i = j + 1; i < n; ++i) w += a[i * n + j] * a[i * n + k];
      w *= tau[j];
      a[j * n + k] -= w;
      for (int64_t i = j + 1; i < n; ++i) a[i * n + k] -= w * a[i * n + j];
    }
  }
  if (r_diagonal != nullptr) {
    r_diagonal->resize(n);
    for (int64_t j = 0; j < n; ++j) (*r_diagonal)[j] = a[j * n + j];
  }
  // Q = H_0 H_1 ... H_{n-2}, applied to the identity from the last reflection
  // on.
  std::vector<double> q(n * n, 0.0);
  for (int64_t i = 0; i < n; ++i) q[i * n + i] = 1.0;
  for (int64_t j = n - 2; j >= 0; --j) {
    if (tau[j] == 0.0) continue;
    for (int64_t k = j; k < n; ++k) {
      double w = q[j * n + k];
      for (int64_t i = j + 1; i < n; ++i) w += a[i * n + j] * q[i * n + k];
      w *= tau[j];
      q[j * n + k] -= w;
      for (int64_t i = j + 1; i < n; ++i) q[i * n + k] -= w * a[i * n + j];
    }
  }
  return q;
}

absl::Status OrthogonalRandomMatrix(const RandomOptions& random,
                                    TensorView<float> out) {
  FTX_RETURN_IF_ERROR(CheckMatrixOut("OrthogonalRandomMatrix", out));
  const int64_t rows = out.dim(0), columns = out.dim(1);
  GaussianSequence gaussians(random);
  for (int64_t start = 0; start < columns; start += rows) {
    const int64_t width = std::min(rows, columns - start);
    const std::vector<double> block = gaussians.Matrix(rows, rows);
    const std::vector<double> q = HouseholderQ(block, rows);
    for (int64_t j = 0; j < width; ++j) {
      double norm = 0.0;
      for (int64_t b = 0; b < rows; ++b)
        norm += block[j * rows + b] * block[j * rows + b];
      norm = std::sqrt(norm);
      for (int64_t i = 0; i < rows; ++i) {
        out.at(i, start + j) = static_cast<float>(q[i * rows + j] * norm);
      }
    }
  }
  return absl::OkStatus();
}

absl::Status GaussianOrthogonalRandomMatrix(int scaling,
                                            const RandomOptions& random,
                                            TensorView<float> out,
                                            bool uniform_q) {
  constexpr char kOp[] = "GaussianOrthogonalRandomMatrix";
  FTX_RETURN_IF_ERROR(CheckMatrixOut(kOp, out));
  if (scaling != 0 && scaling != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": scaling must be 0 or 1, got ", scaling));
  }
  const int64_t rows = out.dim(0), columns = out.dim(1);
  GaussianSequence gaussians(random);
  // Rows [start, start + count) = the first `count` rows of Q^T of a fresh
  // block.
  for (int64_t start = 0; start < rows; start += columns) {
    const int64_t count = std::min(columns, rows - start);
    std::vector<double> r_diagonal;
    const std::vector<double> q =
        HouseholderQ(gaussians.Matrix(columns, columns), columns, &r_diagonal);
    for (int64_t i = 0; i < count; ++i) {
      // torch's sign(): -1, 0 or 1.
      const double sign = uniform_q ? (r_diagonal[i] > 0) -
                                          static_cast<double>(r_diagonal[i] < 0)
                                    : 1.0;
      for (int64_t e = 0; e < columns; ++e) {
        out.at(start + i, e) = static_cast<float>(sign * q[e * columns + i]);
      }
    }
  }
  for (int64_t i = 0; i < rows; ++i) {
    double multiplier = std::sqrt(static_cast<double>(columns));
    if (scaling == 0) {
      double norm = 0.0;
      for (int64_t e = 0; e < columns; ++e) {
        const double g = gaussians.Next();
        norm += g * g;
      }
      multiplier = std::sqrt(norm);
    }
    for (int64_t e = 0; e < columns; ++e) {
      out.at(i, e) = static_cast<float>(out.at(i, e) * multiplier);
    }
  }
  return absl::OkStatus();
}

RandomFeatureMap::RandomFeatureMap(const char* op,
                                   const RandomFeatureConfig& config,
                                   uint64_t stream)
    : op_(op), config_(config), stream_(stream) {}

float RandomFeatureMap::Temperature(int64_t qk_dim) const {
  return config_.softmax_temp.value_or(1.0f /
                                       std::sqrt(static_cast<float>(qk_dim)));
}

absl::Status RandomFeatureMap::NewFeatureMap(const Context& ctx,
                                             int64_t qk_dim) {
  if (config_.redraw < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(op_, ": redraw must be at least 1, got ", config_.redraw));
  }
  if (ctx.device().type != DeviceType::kCpu) {
    return absl::UnimplementedError(
        absl::StrCat(op_, ": only the CPU path exists so far"));
  }
  const int64_t columns = OmegaColumns(qk_dim);
  if (qk_dim < 1 || columns < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(op_, ": n_dims = ", NDims(qk_dim), " with E = ", qk_dim,
                     " gives no random features"));
  }
  if (omega_.raw_data() != nullptr &&
      omega_.shape() != Shape{qk_dim, columns}) {
    return absl::InvalidArgumentError(
        absl::StrCat(op_, ": omega has shape ", omega_.shape().ToString(),
                     " but the inputs have E = ", qk_dim));
  }
  if (omega_.raw_data() == nullptr) {
    FTX_ASSIGN_OR_RETURN(omega_,
                         Tensor::Create(DType::kF32, {qk_dim, columns}));
  }
  if (config_.deterministic_eval && !training_) return absl::OkStatus();
  ++calls_;
  if (calls_ % config_.redraw != 0) return absl::OkStatus();
  return Draw(ctx, qk_dim);
}

absl::Status RandomFeatureMap::Draw(const Context& ctx, int64_t qk_dim) {
  const RandomOptions random{.seed = config_.seed,
                             .stream = stream_ + static_cast<uint64_t>(draws_),
                             .offset = 0};
  ++draws_;
  if (config_.orthogonal)
    return OrthogonalRandomMatrix(random, omega_.view<float>());
  return FillNormal(ctx, omega_.view<float>(), 0.0f, 1.0f, random);
}

absl::Status RandomFeatureMap::SetOmega(TensorView<const float> omega) {
  if (omega.rank() != 2 || omega.device().type != DeviceType::kCpu ||
      (omega.data() == nullptr && omega.NumElements() > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat(op_, ": omega must be a CPU [E, C] matrix, got shape ",
                     omega.shape().ToString()));
  }
  const int64_t qk_dim = omega.dim(0), columns = OmegaColumns(qk_dim);
  if (qk_dim < 1 || columns < 1 || omega.dim(1) != columns) {
    return absl::InvalidArgumentError(absl::StrCat(
        op_, ": omega has shape ", omega.shape().ToString(), ", expected [",
        qk_dim, ", ", columns, "] for n_dims = ", NDims(qk_dim)));
  }
  FTX_ASSIGN_OR_RETURN(omega_, Tensor::Create(DType::kF32, {qk_dim, columns}));
  float* data = omega_.data<float>();
  for (int64_t e = 0; e < qk_dim; ++e) {
    for (int64_t c = 0; c < columns; ++c)
      data[e * columns + c] = omega.at(e, c);
  }
  return absl::OkStatus();
}

absl::Status RandomFeatureMap::CheckInput(const Context& ctx,
                                          TensorView<const float> x) const {
  if (ctx.device().type != DeviceType::kCpu) {
    return absl::UnimplementedError(
        absl::StrCat(op_, ": only the CPU path exists so far"));
  }
  FTX_RETURN_IF_ERROR(CheckRank4(op_, "x", ctx, x));
  if (omega_.raw_data() == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        op_, ": there is no omega yet (call NewFeatureMap or SetOmega first)"));
  }
  if (x.dim(3) != omega_.shape().dim(0)) {
    return absl::InvalidArgumentError(
        absl::StrCat(op_, ": x has E = ", x.dim(3), " but omega has shape ",
                     omega_.shape().ToString()));
  }
  return absl::OkStatus();
}

absl::Status RandomFeatureMap::CheckOutput(const Context& ctx,
                                           TensorView<const float> x,
                                           TensorView<const float> out,
                                           int64_t out_dim,
                                           const char* out_name) const {
  FTX_RETURN_IF_ERROR(CheckRank4(op_, out_name, ctx, out));
  const Shape expected{x.dim(0), x.dim(1), x.dim(2), out_dim};
  if (out.shape() != expected) {
    return absl::InvalidArgumentError(
        absl::StrCat(op_, ": ", out_name, " has shape ", out.shape().ToString(),
                     ", expected ", expected.ToString()));
  }
  return absl::OkStatus();
}

absl::Status RandomFeatureMap::CheckBackwardViews(
    const Context& ctx, TensorView<const float> x,
    TensorView<const float> features, TensorView<const float> d_features,
    TensorView<const float> d_x) const {
  FTX_RETURN_IF_ERROR(CheckInput(ctx, x));
  const int64_t E = x.dim(3);
  FTX_RETURN_IF_ERROR(CheckOutput(ctx, x, features, FeatureDim(E), "features"));
  FTX_RETURN_IF_ERROR(
      CheckOutput(ctx, x, d_features, FeatureDim(E), "d_features"));
  return CheckOutput(ctx, x, d_x, E, "d_x");
}

absl::Status RandomFeatureMap::Project(const Context& ctx,
                                       TensorView<const float> x, float scale) {
  const int64_t rows = x.dim(0) * x.dim(1) * x.dim(2), E = x.dim(3);
  const int64_t columns = omega_.shape().dim(1);
  FTX_RETURN_IF_ERROR(EnsureTensor(scaled_, {rows, E}, ctx.device()));
  FTX_RETURN_IF_ERROR(EnsureTensor(projected_, {rows, columns}, ctx.device()));
  float* scaled = scaled_.data<float>();
  ctx.pool().ParallelFor(rows, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* row = Row(x, r);
      for (int64_t e = 0; e < E; ++e) scaled[r * E + e] = row[e] * scale;
    }
  });
  return MatMul(ctx, scaled_.view<float>(), omega_.view<float>(),
                projected_.view<float>());
}

absl::Status RandomFeatureMap::ProjectBackward(const Context& ctx, int64_t rows,
                                               int64_t qk_dim) {
  FTX_RETURN_IF_ERROR(EnsureTensor(d_scaled_, {rows, qk_dim}, ctx.device()));
  return MatMul(ctx, d_projected_.view<float>(), omega_.view<float>(),
                d_scaled_.view<float>(), {.transpose_b = true});
}

// ---- RandomFourierFeatures ----

RandomFourierFeatures::RandomFourierFeatures(
    const RandomFourierFeaturesOptions& options)
    : RandomFeatureMap(
          "RandomFourierFeatures",
          {options.n_dims, options.softmax_temp, options.orthogonal,
           options.redraw, options.deterministic_eval, options.seed},
          kRandomFourierStream) {}

namespace {

// Fourier features of projected_ u [rows, C] into feature columns [0, 2C) of
// each row: scale [cos u, sin u].
void WriteFourierFeatures(const Context& ctx, const Tensor& projected,
                          float scale, TensorView<float> features) {
  const int64_t rows = projected.shape().dim(0),
                columns = projected.shape().dim(1);
  const float* u = projected.data<float>();
  ctx.pool().ParallelFor(rows, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float* out = Row(features, r);
      for (int64_t c = 0; c < columns; ++c) {
        out[c] = scale * std::cos(u[r * columns + c]);
        out[columns + c] = scale * std::sin(u[r * columns + c]);
      }
    }
  });
}

// d_u [rows, C] of the Fourier features from phi and d_phi (columns [0, 2C)):
// d(s cos u)/du = -s sin u = -phi[C + c], d(s sin u)/du = s cos u = phi[c].
void FourierBackward(const Context& ctx, TensorView<const float> features,
                     TensorView<const float> d_features, Tensor& d_projected) {
  const int64_t rows = d_projected.shape().dim(0),
                columns = d_projected.shape().dim(1);
  float* d_u = d_projected.data<float>();
  ctx.pool().ParallelFor(rows, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* phi = Row(features, r);
      const float* d_phi = Row(d_features, r);
      for (int64_t c = 0; c < columns; ++c) {
        d_u[r * columns + c] =
            phi[c] * d_phi[columns + c] - phi[columns + c] * d_phi[c];
      }
    }
  });
}

// d_x = scale * d_scaled for every row.
void WriteInputGrad(const Context& ctx, const Tensor& d_scaled, float scale,
                    TensorView<float> d_x) {
  const int64_t rows = d_scaled.shape().dim(0), E = d_scaled.shape().dim(1);
  const float* grad = d_scaled.data<float>();
  ctx.pool().ParallelFor(rows, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float* out = Row(d_x, r);
      for (int64_t e = 0; e < E; ++e) out[e] = scale * grad[r * E + e];
    }
  });
}

}  // namespace

absl::Status RandomFourierFeatures::Forward(const Context& ctx,
                                            TensorView<const float> x,
                                            bool is_query,
                                            TensorView<float> features) {
  FTX_RETURN_IF_ERROR(CheckInput(ctx, x));
  const int64_t E = x.dim(3);
  FTX_RETURN_IF_ERROR(CheckOutput(ctx, x, features, FeatureDim(E), "features"));
  FTX_RETURN_IF_ERROR(Project(ctx, x, std::sqrt(Temperature(E))));
  WriteFourierFeatures(ctx, projected_,
                       std::sqrt(2.0f / static_cast<float>(NDims(E))),
                       features);
  return absl::OkStatus();
}

absl::Status RandomFourierFeatures::Backward(const Context& ctx,
                                             TensorView<const float> x,
                                             bool is_query,
                                             TensorView<const float> features,
                                             TensorView<const float> d_features,
                                             TensorView<float> d_x) {
  FTX_RETURN_IF_ERROR(CheckBackwardViews(ctx, x, features, d_features, d_x));
  const int64_t E = x.dim(3);
  const int64_t rows = x.dim(0) * x.dim(1) * x.dim(2);
  FTX_RETURN_IF_ERROR(
      EnsureTensor(d_projected_, {rows, OmegaColumns(E)}, ctx.device()));
  FourierBackward(ctx, features, d_features, d_projected_);
  FTX_RETURN_IF_ERROR(ProjectBackward(ctx, rows, E));
  WriteInputGrad(ctx, d_scaled_, std::sqrt(Temperature(E)), d_x);
  return absl::OkStatus();
}

// ---- SmoothedRandomFourierFeatures ----

SmoothedRandomFourierFeatures::SmoothedRandomFourierFeatures(
    const SmoothedRandomFourierFeaturesOptions& options)
    : RandomFeatureMap(
          "SmoothedRandomFourierFeatures",
          {options.n_dims, options.softmax_temp, options.orthogonal,
           options.redraw, options.deterministic_eval, options.seed},
          kSmoothedStream),
      smoothing_(options.smoothing) {}

absl::Status SmoothedRandomFourierFeatures::Forward(
    const Context& ctx, TensorView<const float> x, bool is_query,
    TensorView<float> features) {
  FTX_RETURN_IF_ERROR(CheckInput(ctx, x));
  const int64_t E = x.dim(3), columns = OmegaColumns(E);
  FTX_RETURN_IF_ERROR(CheckOutput(ctx, x, features, FeatureDim(E), "features"));
  FTX_RETURN_IF_ERROR(Project(ctx, x, std::sqrt(Temperature(E))));
  WriteFourierFeatures(ctx, projected_,
                       std::sqrt(2.0f / static_cast<float>(NDims(E) - 1)),
                       features);
  const int64_t rows = x.dim(0) * x.dim(1) * x.dim(2);
  for (int64_t r = 0; r < rows; ++r) Row(features, r)[2 * columns] = smoothing_;
  return absl::OkStatus();
}

absl::Status SmoothedRandomFourierFeatures::Backward(
    const Context& ctx, TensorView<const float> x, bool is_query,
    TensorView<const float> features, TensorView<const float> d_features,
    TensorView<float> d_x) {
  FTX_RETURN_IF_ERROR(CheckBackwardViews(ctx, x, features, d_features, d_x));
  const int64_t E = x.dim(3);
  const int64_t rows = x.dim(0) * x.dim(1) * x.dim(2);
  FTX_RETURN_IF_ERROR(
      EnsureTensor(d_projected_, {rows, OmegaColumns(E)}, ctx.device()));
  // The smoothing constant has no gradient; the Fourier part is RFF's.
  FourierBackward(ctx, features, d_features, d_projected_);
  FTX_RETURN_IF_ERROR(ProjectBackward(ctx, rows, E));
  WriteInputGrad(ctx, d_scaled_, std::sqrt(Temperature(E)), d_x);
  return absl::OkStatus();
}

// ---- FavorFeatureMap ----

FavorFeatureMap::FavorFeatureMap(const FavorFeatureMapOptions& options)
    : RandomFeatureMap(
          "FavorFeatureMap",
          {options.n_dims, options.softmax_temp, options.orthogonal,
           options.redraw, options.deterministic_eval, options.seed},
          kFavorStream),
      stabilize_(options.stabilize) {}

namespace {

// For every (n, h) of x [N, T, H, *], the first t with the largest norms[n, t,
// h].
std::vector<int64_t> SequenceArgmax(const std::vector<float>& norms, int64_t N,
                                    int64_t T, int64_t H) {
  std::vector<int64_t> argmax(N * H, 0);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t t = 1; t < T; ++t) {
        if (norms[(n * T + t) * H + h] >
            norms[(n * T + argmax[n * H + h]) * H + h]) {
          argmax[n * H + h] = t;
        }
      }
    }
  }
  return argmax;
}

// |x'_r|^2 for every row of scaled [rows, E].
std::vector<float> SquaredRowNorms(const Context& ctx, const Tensor& scaled) {
  const int64_t rows = scaled.shape().dim(0), E = scaled.shape().dim(1);
  const float* x = scaled.data<float>();
  std::vector<float> norms(rows);
  ctx.pool().ParallelFor(rows, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float sum = 0.0f;
      for (int64_t e = 0; e < E; ++e) sum += x[r * E + e] * x[r * E + e];
      norms[r] = sum;
    }
  });
  return norms;
}

}  // namespace

absl::Status FavorFeatureMap::Forward(const Context& ctx,
                                      TensorView<const float> x, bool is_query,
                                      TensorView<float> features) {
  FTX_RETURN_IF_ERROR(CheckInput(ctx, x));
  const int64_t N = x.dim(0), T = x.dim(1), H = x.dim(2), E = x.dim(3);
  FTX_RETURN_IF_ERROR(CheckOutput(ctx, x, features, FeatureDim(E), "features"));
  const int64_t rows = N * T * H, columns = OmegaColumns(E);
  FTX_RETURN_IF_ERROR(Project(ctx, x, std::sqrt(Temperature(E))));
  const std::vector<float> squared_norms = SquaredRowNorms(ctx, scaled_);
  std::vector<float> sequence_max(N * H, 0.0f);
  if (stabilize_ && T > 0) {
    const std::vector<int64_t> argmax = SequenceArgmax(squared_norms, N, T, H);
    for (int64_t nh = 0; nh < N * H; ++nh) {
      sequence_max[nh] =
          squared_norms[((nh / H) * T + argmax[nh]) * H + nh % H];
    }
  }
  const float half_log_n = 0.5f * std::log(static_cast<float>(NDims(E)));
  const float* u = projected_.data<float>();
  ctx.pool().ParallelFor(rows, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t nh = (r / (T * H)) * H + r % H;
      const float offset =
          0.5f * squared_norms[r] + half_log_n + sequence_max[nh];
      float* out = Row(features, r);
      for (int64_t c = 0; c < columns; ++c) {
        out[c] = std::exp(u[r * columns + c] - offset);
        out[columns + c] = std::exp(-u[r * columns + c] - offset);
      }
    }
  });
  return absl::OkStatus();
}

// phi_c = exp(u_c - off), phi_{C+c} = exp(-u_c - off), u = x' omega,
// off = |x'|^2 / 2 (+ |x'_{s*}|^2 with s* the sequence argmax), so with
// a_c = d_phi_c phi_c and b_c = d_phi_{C+c} phi_{C+c}:
//   d_x'_r = omega (a - b) - x'_r sum_c (a + b),
//   d_x'_{s*} -= 2 x'_{s*} sum_rows sum_c (a + b) (stabilize only).
absl::Status FavorFeatureMap::Backward(const Context& ctx,
                                       TensorView<const float> x, bool is_query,
                                       TensorView<const float> features,
                                       TensorView<const float> d_features,
                                       TensorView<float> d_x) {
  FTX_RETURN_IF_ERROR(CheckBackwardViews(ctx, x, features, d_features, d_x));
  const int64_t E = x.dim(3);
  const int64_t N = x.dim(0), T = x.dim(1), H = x.dim(2);
  const int64_t rows = N * T * H, columns = OmegaColumns(E);
  const float root_temp = std::sqrt(Temperature(E));
  FTX_RETURN_IF_ERROR(Project(ctx, x, root_temp));
  FTX_RETURN_IF_ERROR(
      EnsureTensor(d_projected_, {rows, columns}, ctx.device()));
  float* d_u = d_projected_.data<float>();
  std::vector<float> offset_grad(rows);  // -d loss / d off per row
  ctx.pool().ParallelFor(rows, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* phi = Row(features, r);
      const float* d_phi = Row(d_features, r);
      float total = 0.0f;
      for (int64_t c = 0; c < columns; ++c) {
        const float a = d_phi[c] * phi[c];
        const float b = d_phi[columns + c] * phi[columns + c];
        d_u[r * columns + c] = a - b;
        total += a + b;
      }
      offset_grad[r] = total;
    }
  });
  FTX_RETURN_IF_ERROR(ProjectBackward(ctx, rows, E));
  float* d_scaled = d_scaled_.data<float>();
  const float* scaled = scaled_.data<float>();
  ctx.pool().ParallelFor(rows, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      for (int64_t e = 0; e < E; ++e) {
        d_scaled[r * E + e] -= scaled[r * E + e] * offset_grad[r];
      }
    }
  });
  if (stabilize_ && T > 0) {
    const std::vector<int64_t> argmax =
        SequenceArgmax(SquaredRowNorms(ctx, scaled_), N, T, H);
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t h = 0; h < H; ++h) {
        float total = 0.0f;
        for (int64_t t = 0; t < T; ++t)
          total += offset_grad[(n * T + t) * H + h];
        const int64_t r = (n * T + argmax[n * H + h]) * H + h;
        for (int64_t e = 0; e < E; ++e)
          d_scaled[r * E + e] -= 2.0f * scaled[r * E + e] * total;
      }
    }
  }
  WriteInputGrad(ctx, d_scaled_, root_temp, d_x);
  return absl::OkStatus();
}

// ---- GeneralizedRandomFeatures ----

GeneralizedRandomFeatures::GeneralizedRandomFeatures(
    const GeneralizedRandomFeaturesOptions& options)
    : RandomFeatureMap(
          "GeneralizedRandomFeatures",
          {options.n_dims, options.softmax_temp, options.orthogonal,
           options.redraw, options.deterministic_eval, options.seed},
          kGeneralizedStream),
      kernel_fn_(options.kernel_fn) {}

absl::Status GeneralizedRandomFeatures::Forward(const Context& ctx,
                                                TensorView<const float> x,
                                                bool is_query,
                                                TensorView<float> features) {
  FTX_RETURN_IF_ERROR(CheckInput(ctx, x));
  const int64_t E = x.dim(3), columns = OmegaColumns(E);
  FTX_RETURN_IF_ERROR(CheckOutput(ctx, x, features, FeatureDim(E), "features"));
  const int64_t rows = x.dim(0) * x.dim(1) * x.dim(2);
  FTX_RETURN_IF_ERROR(Project(ctx, x, std::sqrt(Temperature(E))));
  FTX_RETURN_IF_ERROR(Activate(ctx, kernel_fn_, projected_.view<float>(),
                               projected_.view<float>()));
  const float* phi = projected_.data<float>();
  ctx.pool().ParallelFor(rows, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      std::copy(phi + r * columns, phi + (r + 1) * columns, Row(features, r));
    }
  });
  return absl::OkStatus();
}

absl::Status GeneralizedRandomFeatures::Backward(
    const Context& ctx, TensorView<const float> x, bool is_query,
    TensorView<const float> features, TensorView<const float> d_features,
    TensorView<float> d_x) {
  FTX_RETURN_IF_ERROR(CheckBackwardViews(ctx, x, features, d_features, d_x));
  const int64_t E = x.dim(3), F = FeatureDim(E);
  const int64_t rows = x.dim(0) * x.dim(1) * x.dim(2);
  const float root_temp = std::sqrt(Temperature(E));
  FTX_RETURN_IF_ERROR(Project(ctx, x, root_temp));  // u, pre-activation
  FTX_RETURN_IF_ERROR(EnsureTensor(d_projected_, {rows, F}, ctx.device()));
  float* d_u = d_projected_.data<float>();
  ctx.pool().ParallelFor(rows, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* d_phi = Row(d_features, r);
      std::copy(d_phi, d_phi + F, d_u + r * F);
    }
  });
  FTX_RETURN_IF_ERROR(
      ActivateBackward(ctx, kernel_fn_, projected_.view<float>(),
                       d_projected_.view<float>(), d_projected_.view<float>()));
  FTX_RETURN_IF_ERROR(ProjectBackward(ctx, rows, E));
  WriteInputGrad(ctx, d_scaled_, root_temp, d_x);
  return absl::OkStatus();
}

}  // namespace ftx
