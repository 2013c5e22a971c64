// "favor": FAVOR+ attention (Choromanski et al. 2020, "Rethinking Attention
// with Performers"), as performer-pytorch 1.1.4's FastAttention (SEMANTICS.md
// section 3.2).
//
// With a projection W [m, E] (m = nb_features, default int(E ln E)),
// c = E^-1/4, ratio = m^-1/2 and dd = (c x) W^T [m] per row x:
//   softmax kernel (default):
//     phi(x) = ratio (exp(dd - |x|^2 c^2 / 2 - stab) + 1e-4),
//     stab = max_f dd of the row for queries; for keys the max of dd over the
//     whole sequence and all features of the (n, h) slice. performer detaches
//     both maxima, so the backward treats them as constants, like autograd.
//   generalized_attention: phi(x) = kernel_fn(dd) + 1e-3 (default relu).
//   no_projection: phi(q) = softmax of q over E; phi(k) = exp(k) when causal,
//     softmax of k over the sequence otherwise (W is still drawn and kept).
// Then, with no eps in the non-causal normaliser and 1e-6 added to every
// element of the causal key cumsum:
//   non-causal: out_l = phi(q_l) sum_s phi(k_s) v_s^T
//                       / (phi(q_l) . sum_s phi(k_s)),
//   causal:     out_i = phi(q_i) sum_{j<=i} phi(k_j) v_j^T
//                       / (phi(q_i) . (sum_{j<=i} phi(k_j) + 1e-6)),
// the causal numerator by kernels/causal_product (L == S required).
//
// Masks: FastAttention takes none. Non-causal accepts AttnMask::All, causal
// accepts AttnMask::Causal() (offset 0); anything else is InvalidArgument. Key
// lengths zero the V rows of padded keys only, as performer's SelfAttention
// does (v.masked_fill_): padded keys still enter sum_s phi(k_s), the
// normaliser and the key max (performer quirk 3). Query lengths are ignored.
//
// Projection: W is drawn on the first Forward (or RedrawProjection) by
// performer's gaussian_orthogonal_random_matrix(m, E, ortho_scaling) from
// Philox Gaussians of `seed`; projection() / SetProjection() read and fix it
// (state_dict name "projection_matrix"). Like torch's QR, each block follows
// LAPACK's sign convention, so the rows of W are not sign-symmetric (the first
// row of each block always has a negative first entry). The softmax kernel
// uses exp(+w.x) only, so, as in performer, its estimate of exp(q.k / sqrt(E))
// keeps a bias that more features do not remove (about 9% relative RMS of the
// output in favor_test). qr_uniform_q = true fixes the signs (the option of
// earlier performer versions); the error then keeps falling like 1/sqrt(m).
//
// Redraw (performer's ProjectionUpdater, which lives in Performer): in
// training, a forward first checks calls_since_last_redraw >= interval, then
// redraws and resets the counter to 0, otherwise increments it, so the first
// redraw happens on forward number interval + 1. feature_redraw_interval = 0
// never redraws (performer's fix_projection_matrices_ sets None; performer
// itself would redraw on every training forward for 0). Evaluation forwards
// never redraw. Backward uses the projection saved by its Forward.
//
// Key stabiliser and recurrence (performer quirk 1): the key max spans the
// whole sequence, so a causal output depends, by O(eps), on later keys, and
// step-wise decoding cannot reproduce it. key_stabilizer = kZero subtracts
// nothing from the keys instead. The shift exp(-max) cancels between
// numerator and normaliser, so both choices give the same attention except for
// the eps terms: kSequenceMax equals kZero with the 1e-4 inside phi(k) and the
// 1e-6 of the causal cumsum multiplied by exp(max). kZero can overflow for
// large dd where the max cannot. RecurrentFavorAttention always uses kZero and
// equals the parallel causal form with kZero at every position.
//
// Cost: O(N H (L + S) m (E + D)) time, O(N H (L + S) m) memory for the saved
// features. Backward writes d_queries, d_keys and d_values (=); there are no
// parameters.
#ifndef FTX_ATTENTION_FAVOR_H_
#define FTX_ATTENTION_FAVOR_H_

#include <cstdint>
#include <memory>
#include <optional>

#include "absl/status/status.h"
#include "attention/attention.h"
#include "attention/recurrent.h"
#include "attention/registry.h"
#include "kernels/activation/activation.h"
#include "kernels/base/tensor.h"

namespace ftx {

// The feature computation and its scratch buffers (defined in favor.cc).
class PerformerKernel;

enum class FavorKeyStabilizer {
  kSequenceMax,  // performer: max of dd over the (n, h) slice, detached
  kZero,         // nothing subtracted; allows step-wise decoding
};

struct FavorAttentionOptions {
  std::optional<int64_t> nb_features;  // m; default int(E ln E)
  int ortho_scaling = 0;               // 0: chi row norms, 1: sqrt(E)
  bool qr_uniform_q = false;           // sign-symmetric W (not in 1.1.4)
  bool causal = false;
  bool generalized_attention = false;
  Activation kernel_fn = Activation::kRelu;  // generalized kernel only
  bool no_projection = false;
  int64_t feature_redraw_interval = 1000;  // training forwards; 0 never redraws
  FavorKeyStabilizer key_stabilizer = FavorKeyStabilizer::kSequenceMax;
  uint64_t seed = 0;
};

// InvalidArgument naming the option unless ortho_scaling is 0 or 1, nb_features
// >= 1 when given, and feature_redraw_interval >= 0.
absl::Status ValidateFavorOptions(const FavorAttentionOptions& options);

// The random projection W [m, E] of one FAVOR+ module and its draws.
class FavorProjection {
 public:
  FavorProjection(std::optional<int64_t> nb_features, int ortho_scaling,
                  bool uniform_q, uint64_t seed)
      : nb_features_(nb_features),
        ortho_scaling_(ortho_scaling),
        uniform_q_(uniform_q),
        seed_(seed) {}

  // m for inputs of dimension E: nb_features or int(E ln E).
  int64_t NbFeatures(int64_t qk_dim) const;
  // Draws W for E unless one exists; InvalidArgument if the existing W has
  // another E.
  absl::Status Ensure(const char* op, int64_t qk_dim);
  // Draws a fresh W [NbFeatures(E), E] (draw k uses Philox stream base + k).
  absl::Status Redraw(const char* op, int64_t qk_dim);
  // Copies a CPU [m, E] matrix (any strides); m must equal nb_features when
  // given.
  absl::Status Set(const char* op, TensorView<const float> projection);

  const Tensor& matrix() const { return matrix_; }
  int64_t draws() const { return draws_; }

 private:
  std::optional<int64_t> nb_features_;
  int ortho_scaling_;
  bool uniform_q_;
  uint64_t seed_;
  int64_t draws_ = 0;
  Tensor matrix_;
};

class FavorAttention : public Attention {
 public:
  explicit FavorAttention(const FavorAttentionOptions& options = {});
  ~FavorAttention() override;

  const char* name() const override { return "favor"; }
  const FavorAttentionOptions& options() const { return options_; }

  // projection_matrix [m, E]; empty before the first Forward, SetProjection or
  // RedrawProjection.
  const Tensor& projection() const { return projection_.matrix(); }
  absl::Status SetProjection(TensorView<const float> projection) {
    return projection_.Set("FavorAttention", projection);
  }
  // performer's redraw_projection_matrix for inputs of dimension E.
  absl::Status RedrawProjection(int64_t qk_dim) {
    return projection_.Redraw("FavorAttention", qk_dim);
  }
  int64_t projection_draws() const { return projection_.draws(); }

  // performer's ProjectionUpdater counter (buffer calls_since_last_redraw).
  int64_t calls_since_last_redraw() const { return calls_since_last_redraw_; }
  void set_calls_since_last_redraw(int64_t calls) {
    calls_since_last_redraw_ = calls;
  }

  // Feature dimension F: m, or E with no_projection.
  int64_t FeatureDim(int64_t qk_dim) const;

  absl::Status Forward(const Context& ctx, const AttentionInputs& inputs,
                       TensorView<float> out, AttentionCache* cache) override;
  absl::Status Backward(const Context& ctx, const AttentionInputs& inputs,
                        const AttentionCache& cache,
                        TensorView<const float> d_out,
                        const AttentionGrads& grads) override;

 private:
  FavorAttentionOptions options_;
  FavorProjection projection_;
  int64_t calls_since_last_redraw_ = 0;
  std::unique_ptr<PerformerKernel> kernel_;
  AttentionCache scratch_;
  AttentionCache grad_scratch_;
};

// Step-wise causal FAVOR+ for decoding: running sums S = sum_j phi(k_j) v_j^T
// [F, D] and z = sum_j phi(k_j) [F] per (n, h); out = phi(q) S / (phi(q) . (z +
// 1e-6)). The key features use the zero stabiliser (options.key_stabilizer and
// options.causal are ignored), so stepping through a sequence equals
// FavorAttention with causal = true and key_stabilizer = kZero at every
// position. The projection is drawn from `seed` on the first step like
// FavorAttention's first draw, or set with SetProjection (e.g. copied from a
// trained parallel twin); it is never redrawn.
class RecurrentFavorAttention : public RecurrentAttention {
 public:
  explicit RecurrentFavorAttention(const FavorAttentionOptions& options = {});
  ~RecurrentFavorAttention() override;

  const char* name() const override { return "favor"; }
  const Tensor& projection() const { return projection_.matrix(); }
  absl::Status SetProjection(TensorView<const float> projection) {
    return projection_.Set("RecurrentFavorAttention", projection);
  }

  std::unique_ptr<RecurrentState> NewState() const override;
  absl::Status Step(const Context& ctx, TensorView<const float> query,
                    TensorView<const float> key, TensorView<const float> value,
                    TensorView<float> out, RecurrentState& state) override;

 private:
  FavorAttentionOptions options_;
  FavorProjection projection_;
  std::unique_ptr<PerformerKernel> kernel_;
};

// Registry entry "favor" with options nb_features, ortho_scaling, qr_uniform_q,
// causal, generalized_attention, kernel_fn, no_projection,
// feature_redraw_interval, key_stabilizer and seed.
AttentionSpec FavorAttentionSpec();

}  // namespace ftx

#endif  // FTX_ATTENTION_FAVOR_H_
