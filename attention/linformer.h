// "linformer": Linformer self-attention (Wang et al. 2020, "Linformer:
// Self-Attention with Linear Complexity", eq. 7): keys and values are projected
// along the sequence from n = seq_len positions to k,
//   K' = E K + b_E,  V' = F V + b_F   (per head: E, F are [k, n]),
//   out = softmax(t Q K'^T [+ causal (n, k) mask]) V',
// as linformer-pytorch 0.19.3's LinearAttentionHead with method "learnable"
// (nn.Linear(n, k) with bias, xavier_normal init), "no_params" (a fixed N(0,
// 1/k) matrix, not trainable, not in state_dict) or "convolution"
// (nn.Conv1d(d, d, kernel_size = stride = n / k) over the sequence, so
//   K'[j, o] = b[o] + sum_{t < n/k, i < d} W[o, i, t] K[j (n/k) + t, i]
// with k' = n / (n / k) projected positions, integer divisions, positions past
// k' (n / k) unused; it needs E = D = head_dim), and as lucidrains' linformer
// 0.2.3 LinformerSelfAttention (used by linear-attention-transformer's
// LinformerSettings) with bias = false, init = kUniform (U(+-1/sqrt(k))) and
// slice_shorter (keys shorter than seq_len use the first S columns of E and
// F). Sharing (linformer-pytorch parameter_sharing): kNone = an E and an F per
// head, kHeadwise = one E and one F for all heads, kKeyValue = one matrix for
// E and F. ("layerwise" sharing is kKeyValue in every layer with the
// projection bound to the same external tensors: see BindProjections.)
// full_attention is linformer-pytorch's full_attention: no projection at all
// (E and F still exist and get zero gradients), the causal mask is then the
// lower triangle of (n, n).
// Masks as linformer-pytorch: key lengths zero rows of K and V (input_mask),
// query lengths zero rows of Q (embeddings_mask); the optional causal mask is
// its (n, k) gen_causal_mask, which is not truly causal (projected columns mix
// all positions). Any sequence length other than seq_len is InvalidArgument
// (shorter ones too unless slice_shorter).
//
// Parameters: by default the mechanism owns its projections and lists them in
// Parameters() as "E.weight", "E.bias", "F.weight", "F.bias" (shared), or
// "heads.{h}.E.weight", ... (kNone). A model that keeps them in its own
// ParamStore binds views instead (BindProjections); the mechanism then owns
// no parameter and Parameters() is empty.
#ifndef FTX_ATTENTION_LINFORMER_H_
#define FTX_ATTENTION_LINFORMER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "attention/attention.h"
#include "attention/full.h"
#include "attention/registry.h"

namespace ftx {

enum class LinformerSharing { kNone, kHeadwise, kKeyValue };
enum class LinformerMethod { kLearnable, kConvolution, kNoParams };
enum class LinformerInit { kXavierNormal, kUniform };

struct LinformerOptions {
  int64_t seq_len = 0;   // n, required
  int64_t k = 256;       // projected length (dim_k)
  int64_t heads = 1;     // H, needed to create per-head projections (kNone)
  int64_t head_dim = 0;  // d = E = D, required for kConvolution
  LinformerMethod method = LinformerMethod::kLearnable;
  LinformerSharing sharing = LinformerSharing::kHeadwise;
  LinformerInit init = LinformerInit::kXavierNormal;
  bool bias = true;
  bool causal = false;  // linformer-pytorch's (n, k) causal mask
  bool full_attention = false;
  bool slice_shorter = false;  // lucidrains: S < seq_len slices E and F
  std::optional<float> softmax_temp;
  float attention_dropout = 0.0f;
  uint64_t seed = 0;
};

// One E or F projection as views: values, and gradients accumulated (+=) by
// Backward. A fixed projection (no_params) has no bias and empty gradients.
struct LinformerProjection {
  TensorView<float> weight;    // [k, n], or [d, d, n / k] (convolution)
  TensorView<float> bias;      // [k], or [d] (convolution); empty without
  TensorView<float> d_weight;  // weight's shape, or empty: not trained
  TensorView<float> d_bias;    // bias's shape, or empty
};

class LinformerAttention : public Attention {
 public:
  // InvalidArgument for a non-positive seq_len, k or heads, a convolution
  // without head_dim or with k > seq_len, or slice_shorter with convolution.
  static absl::StatusOr<std::unique_ptr<LinformerAttention>> Create(
      const LinformerOptions& options);

  const char* name() const override { return "linformer"; }
  const LinformerOptions& options() const { return options_; }
  std::vector<ParamRef> Parameters() override;

  // k' (the number of projected positions): k, or n / (n / k) for
  // convolution.
  int64_t projected_length() const;
  // Projections: 2 H (kNone, E of head h at 2 h, F at 2 h + 1), 2
  // (kHeadwise, E then F) or 1 (kKeyValue).
  int NumProjections() const;
  // Shapes of one projection's weight and bias (bias: {0} without one).
  Shape ProjectionWeightShape() const;
  Shape ProjectionBiasShape() const;
  // The projection Forward and Backward use (bound or owned).
  const LinformerProjection& projection(int index) const {
    return projections_[index];
  }

  // Reads every projection from `projections` (NumProjections() of them, the
  // shapes above; CPU memory that must outlive the mechanism's use) from now
  // on. Bind the same views to several mechanisms to share them (layerwise);
  // their gradients then add up. InvalidArgument for a wrong count or shape.
  absl::Status BindProjections(
      const std::vector<LinformerProjection>& projections);

  absl::Status Forward(const Context& ctx, const AttentionInputs& inputs,
                       TensorView<float> out, AttentionCache* cache) override;
  absl::Status Backward(const Context& ctx, const AttentionInputs& inputs,
                        const AttentionCache& cache,
                        TensorView<const float> d_out,
                        const AttentionGrads& grads) override;

 private:
  explicit LinformerAttention(const LinformerOptions& options);
  absl::Status Initialize();
  // Projection of head h: 0 for E (keys), 1 for F (values).
  int ProjectionIndex(int which, int64_t head) const;
  // projected [N, k', X] = projection `index` of source [N, S, X] (one head).
  absl::Status Project(const Context& ctx, int index,
                       TensorView<const float> source,
                       TensorView<float> projected);
  // Its backward: d_source (=), the projection's gradients (+=; convolution
  // weights through conv_weight_grads_[index]).
  absl::Status ProjectBackward(const Context& ctx, int index,
                               TensorView<const float> source,
                               TensorView<const float> d_projected,
                               TensorView<float> d_source);
  // Convolution weights [d, d, w] rearranged to [w, d, d] (tap-major).
  void RearrangeConvolutionWeights();

  LinformerOptions options_;
  // Owned projections (before BindProjections); weights and biases as
  // described on LinformerProjection, with gradients.
  std::vector<Tensor> weights_, biases_, weight_grads_, bias_grads_;
  bool bound_ = false;
  std::vector<LinformerProjection> projections_;
  FullAttention inner_;
  // Convolution: per projection, the weights by tap [P, w, d, d] and their
  // gradients.
  Tensor conv_weights_, conv_weight_grads_;
  AttentionCache grad_scratch_;
};

AttentionSpec LinformerAttentionSpec();

}  // namespace ftx

#endif  // FTX_ATTENTION_LINFORMER_H_
