// Random-feature maps for linear attention, reproducing fast-transformers
// 0.4.0 (feature_maps/fourier_features.py, SEMANTICS.md section 2.5), plus the
// orthogonal random matrices of fast-transformers and of performer-pytorch.
//
// With x' = x sqrt(t), a random omega [E, C] and u = x' omega:
//   RandomFourierFeatures (Rahimi & Recht 2007):
//     phi = sqrt(2/n) [cos u, sin u] ~ exp(-t |x - y|^2 / 2); C = n/2, F = 2C.
//   SmoothedRandomFourierFeatures: the above with n - 1 dims, then the
//     constant `smoothing`: ~ exp(-t |x - y|^2 / 2) + smoothing^2;
//     C = (n - 1)/2, F = 2C + 1 (n = 64 gives 63 features, as there).
//   FavorFeatureMap (Choromanski et al. 2020, "Rethinking Attention with
//     Performers", Lemma 1; fast-transformers' Favor):
//     phi = [exp(u - off), exp(-u - off)] ~ exp(t x.y), C = n/2, F = 2C,
//     off = |x'|^2/2 + log(n)/2 (+ max over the sequence of |x'|^2 with
//     `stabilize`).
//   GeneralizedRandomFeatures: phi = kernel_fn(u) (default relu, t = 1);
//     C = F = n.
// n = n_dims (default E). An odd n drops one feature (C = n/2 rounds down)
// but keeps the sqrt(2/n) and log(n) constants, as fast-transformers does.
//
// omega is drawn from Philox Gaussians (kernels/base/rng.h) with the map's
// seed, either i.i.d. N(0, 1) or, with `orthogonal`, by fast-transformers'
// orthogonal_random_matrix_ (QR of E x E Gaussian blocks, columns scaled by
// the row norms of the same block). Q follows LAPACK's sign convention like
// torch's QR, so, as in both libraries, the orthogonal columns are not
// sign-symmetric (the first column of each block always has a negative first
// entry): maps even in omega (cos/sin, exp(+-u)) do not notice; relu features
// of GeneralizedRandomFeatures estimate a slightly different kernel.
//
// Redraw: NewFeatureMap counts calls from -1 and draws when
// calls % redraw == 0, so the first call always draws; with
// deterministic_eval and training off it returns at once. Before any draw
// omega is zero, like fast-transformers' zero-initialised buffer. omega() and
// SetOmega() read and fix the matrix (state_dict name "omega").
//
// Shapes: x [N, T, H, E] (strided in its leading axes, unit stride in the
// last), features [N, T, H, F]. Backward writes d_x (=); the maps have no
// parameters. `stabilize` takes the max over axis 1 (T), as
// fast-transformers' max(1) on [N, L, H, E]; the gradient flows through that
// max to its (first) argmax row, like autograd. A recurrent step sees T = 1,
// so the max is the token's own norm there (fast-transformers' recurrent step
// tensors are [N, H, E], where max(1) spans the heads).
#ifndef FTX_ATTENTION_RANDOM_FEATURES_H_
#define FTX_ATTENTION_RANDOM_FEATURES_H_

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "attention/feature_map.h"
#include "kernels/activation/activation.h"
#include "kernels/base/context.h"
#include "kernels/base/rng.h"
#include "kernels/base/tensor.h"

namespace ftx {

// Q [n, n] of the QR decomposition A = Q R of a row-major [n, n] matrix, by
// Householder reflections with LAPACK's conventions (dgeqrf + dorgqr: R_jj =
// -sign(a) |column|, no reflection when the sub-column below the diagonal is
// zero), so it equals torch.linalg.qr's Q for the same matrix up to rounding.
// `r_diagonal`, when given, receives the diagonal of R [n].
std::vector<double> HouseholderQ(const std::vector<double>& matrix, int64_t n,
                                 std::vector<double>* r_diagonal = nullptr);

// fast-transformers' orthogonal_random_matrix_: out [rows, columns] filled
// block by block of `rows` columns; each block takes a [rows, rows] Gaussian G,
// its Q, and sets column j = Q[:, j] * |G[j, :]|. Gaussians are elements
// offset, offset + 1, ... of the Philox normal sequence (random.seed,
// random.stream), in the order torch.randn would fill them. out must be a
// contiguous CPU [rows, columns] view.
absl::Status OrthogonalRandomMatrix(const RandomOptions& random,
                                    TensorView<float> out);

// performer-pytorch's gaussian_orthogonal_random_matrix(nb_rows, nb_columns,
// scaling): out [nb_rows, nb_columns] stacks Q^T of floor(nb_rows / nb_columns)
// Gaussian [nb_columns, nb_columns] blocks (plus the first rows of one more),
// then scales row i by |G'[i, :]| for a fresh Gaussian G' [nb_rows, nb_columns]
// (scaling 0) or by sqrt(nb_columns) (scaling 1). Gaussians are drawn in that
// order from the Philox normal sequence. `uniform_q` multiplies the columns of
// each Q by sign(diag R) (earlier performer versions' qr_uniform_q), which
// makes the rows sign-symmetric (Haar); without it, as in performer 1.1.4, they
// are not. InvalidArgument for another scaling or a bad view.
absl::Status GaussianOrthogonalRandomMatrix(int scaling,
                                            const RandomOptions& random,
                                            TensorView<float> out,
                                            bool uniform_q = false);

// What every random map shares (fast-transformers' RandomFourierFeatures
// arguments).
struct RandomFeatureConfig {
  std::optional<int64_t> n_dims;      // default E
  std::optional<float> softmax_temp;  // default 1/sqrt(E)
  bool orthogonal = false;
  int64_t redraw = 1;  // draw every `redraw` calls of NewFeatureMap (>= 1)
  bool deterministic_eval = false;
  uint64_t seed = 0;
};

// The random matrix, the redraw counter and the projection x' omega shared by
// the maps.
class RandomFeatureMap : public FeatureMap {
 public:
  // nn.Module.train() / .eval(); only read with deterministic_eval. Default:
  // training.
  void set_training(bool training) { training_ = training; }
  bool training() const { return training_; }

  // fast-transformers' new_feature_map (see the file comment). The first call
  // fixes E; a later call with another E is InvalidArgument.
  absl::Status NewFeatureMap(const Context& ctx, int64_t qk_dim) override;

  // omega [E, C]; empty before the first NewFeatureMap or SetOmega.
  const Tensor& omega() const { return omega_; }
  // Copies a CPU [E, OmegaColumns(E)] matrix (any strides) into omega.
  absl::Status SetOmega(TensorView<const float> omega);

  // fast-transformers' _calls (starts at -1) and the number of draws so far.
  int64_t calls() const { return calls_; }
  int64_t draws() const { return draws_; }

  // C for inputs of dimension E.
  virtual int64_t OmegaColumns(int64_t qk_dim) const = 0;

 protected:
  RandomFeatureMap(const char* op, const RandomFeatureConfig& config,
                   uint64_t stream);

  int64_t NDims(int64_t qk_dim) const {
    return config_.n_dims.value_or(qk_dim);
  }
  float Temperature(int64_t qk_dim) const;

  // Checks x [N, T, H, E] against omega (FailedPrecondition before omega
  // exists) and the context (UnimplementedError unless CPU).
  absl::Status CheckInput(const Context& ctx, TensorView<const float> x) const;
  // Checks `out` [N, T, H, out_dim] against a checked x.
  absl::Status CheckOutput(const Context& ctx, TensorView<const float> x,
                           TensorView<const float> out, int64_t out_dim,
                           const char* out_name) const;
  // Both of the above for a Backward call.
  absl::Status CheckBackwardViews(const Context& ctx, TensorView<const float> x,
                                  TensorView<const float> features,
                                  TensorView<const float> d_features,
                                  TensorView<const float> d_x) const;
  // scaled_ [rows, E] = x * scale (contiguous) and projected_ [rows, C] =
  // scaled_ omega.
  absl::Status Project(const Context& ctx, TensorView<const float> x,
                       float scale);
  // d_scaled_ [rows, E] = d_projected_ [rows, C] omega^T.
  absl::Status ProjectBackward(const Context& ctx, int64_t rows,
                               int64_t qk_dim);

  Tensor scaled_, projected_, d_projected_, d_scaled_;

 private:
  absl::Status Draw(const Context& ctx, int64_t qk_dim);

  const char* op_;
  RandomFeatureConfig config_;
  uint64_t stream_;
  bool training_ = true;
  int64_t calls_ = -1;
  int64_t draws_ = 0;
  Tensor omega_;
};

struct RandomFourierFeaturesOptions {
  std::optional<int64_t> n_dims;      // default E; should be even
  std::optional<float> softmax_temp;  // default 1/sqrt(E)
  bool orthogonal = false;
  int64_t redraw = 1;
  bool deterministic_eval = false;
  uint64_t seed = 0;
};

class RandomFourierFeatures : public RandomFeatureMap {
 public:
  explicit RandomFourierFeatures(
      const RandomFourierFeaturesOptions& options = {});
  const char* name() const override { return "random_fourier"; }
  int64_t FeatureDim(int64_t qk_dim) const override {
    return 2 * OmegaColumns(qk_dim);
  }
  int64_t OmegaColumns(int64_t qk_dim) const override {
    return NDims(qk_dim) / 2;
  }
  absl::Status Forward(const Context& ctx, TensorView<const float> x,
                       bool is_query, TensorView<float> features) override;
  absl::Status Backward(const Context& ctx, TensorView<const float> x,
                        bool is_query, TensorView<const float> features,
                        TensorView<const float> d_features,
                        TensorView<float> d_x) override;
};

struct SmoothedRandomFourierFeaturesOptions {
  std::optional<int64_t> n_dims;  // default E; the Fourier part gets n_dims - 1
  std::optional<float> softmax_temp;
  bool orthogonal = false;
  float smoothing = 1.0f;
  int64_t redraw = 1;
  bool deterministic_eval = false;
  uint64_t seed = 0;
};

class SmoothedRandomFourierFeatures : public RandomFeatureMap {
 public:
  explicit SmoothedRandomFourierFeatures(
      const SmoothedRandomFourierFeaturesOptions& options = {});
  const char* name() const override { return "smoothed_random_fourier"; }
  int64_t FeatureDim(int64_t qk_dim) const override {
    return 2 * OmegaColumns(qk_dim) + 1;
  }
  int64_t OmegaColumns(int64_t qk_dim) const override {
    return (NDims(qk_dim) - 1) / 2;
  }
  absl::Status Forward(const Context& ctx, TensorView<const float> x,
                       bool is_query, TensorView<float> features) override;
  absl::Status Backward(const Context& ctx, TensorView<const float> x,
                        bool is_query, TensorView<const float> features,
                        TensorView<const float> d_features,
                        TensorView<float> d_x) override;

 private:
  float smoothing_;
};

struct FavorFeatureMapOptions {
  std::optional<int64_t> n_dims;  // default E; should be even
  std::optional<float> softmax_temp;
  bool orthogonal = true;
  bool stabilize = false;
  int64_t redraw = 1;
  bool deterministic_eval = false;
  uint64_t seed = 0;
};

// fast-transformers' Favor (named apart from the "favor" attention of favor.h).
class FavorFeatureMap : public RandomFeatureMap {
 public:
  explicit FavorFeatureMap(const FavorFeatureMapOptions& options = {});
  const char* name() const override { return "favor"; }
  int64_t FeatureDim(int64_t qk_dim) const override {
    return 2 * OmegaColumns(qk_dim);
  }
  int64_t OmegaColumns(int64_t qk_dim) const override {
    return NDims(qk_dim) / 2;
  }
  absl::Status Forward(const Context& ctx, TensorView<const float> x,
                       bool is_query, TensorView<float> features) override;
  absl::Status Backward(const Context& ctx, TensorView<const float> x,
                        bool is_query, TensorView<const float> features,
                        TensorView<const float> d_features,
                        TensorView<float> d_x) override;

 private:
  bool stabilize_;
};

struct GeneralizedRandomFeaturesOptions {
  std::optional<int64_t> n_dims;  // default E
  float softmax_temp = 1.0f;
  bool orthogonal = true;
  Activation kernel_fn = Activation::kRelu;
  int64_t redraw = 1;
  bool deterministic_eval = false;
  uint64_t seed = 0;
};

class GeneralizedRandomFeatures : public RandomFeatureMap {
 public:
  explicit GeneralizedRandomFeatures(
      const GeneralizedRandomFeaturesOptions& options = {});
  const char* name() const override { return "generalized_random"; }
  int64_t FeatureDim(int64_t qk_dim) const override {
    return OmegaColumns(qk_dim);
  }
  int64_t OmegaColumns(int64_t qk_dim) const override { return NDims(qk_dim); }
  absl::Status Forward(const Context& ctx, TensorView<const float> x,
                       bool is_query, TensorView<float> features) override;
  absl::Status Backward(const Context& ctx, TensorView<const float> x,
                        bool is_query, TensorView<const float> features,
                        TensorView<const float> d_features,
                        TensorView<float> d_x) override;

 private:
  Activation kernel_fn_;
};

}  // namespace ftx

#endif  // FTX_ATTENTION_RANDOM_FEATURES_H_
