// "linformer": Linformer self-attention (Wang et al. 2020, "Linformer:
// Self-Attention with Linear Complexity", eq. 7): keys and values are projected
// along the sequence from n = seq_len positions to k,
//   K' = E K + b_E,  V' = F V + b_F   (per head: E, F are [k, n]),
//   out = softmax(t Q K'^T [+ causal (n, k) mask]) V',
// as linformer-pytorch 0.19.3's LinearAttentionHead with method "learnable"
// (nn.Linear(n, k) with bias, xavier_normal init) or "no_params" (a fixed N(0,
// 1/k) matrix, not trainable, not in state_dict), and as lucidrains' linformer
// (used by linear-attention-transformer's LinformerSettings) with bias = false
// and init = kUniform (U(+-1/sqrt(k))). Sharing (linformer-pytorch
// parameter_sharing): kNone = an E and an F per head, kHeadwise = one E and one
// F for all heads, kKeyValue = one matrix for E and F.
// ("layerwise" sharing is one mechanism object used by every layer.)
// Masks as linformer-pytorch: key lengths zero rows of K and V (input_mask),
// query lengths zero rows of Q (embeddings_mask); the optional causal mask is
// its (n, k) gen_causal_mask, which is not truly causal (projected columns mix
// all positions). Any sequence length other than seq_len is InvalidArgument.
//
// Parameter names: "E.weight", "E.bias", "F.weight", "F.bias" (shared), or
// "heads.{h}.E.weight", ... (kNone).
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
enum class LinformerMethod { kLearnable, kNoParams };
enum class LinformerInit { kXavierNormal, kUniform };

struct LinformerOptions {
  int64_t seq_len = 0;  // n, required
  int64_t k = 256;      // projected length
  int64_t heads = 1;    // H, needed to create per-head projections (kNone)
  LinformerMethod method = LinformerMethod::kLearnable;
  LinformerSharing sharing = LinformerSharing::kHeadwise;
  LinformerInit init = LinformerInit::kXavierNormal;
  bool bias = true;
  bool causal = false;  // linformer-pytorch's (n, k) causal mask
  std::optional<float> softmax_temp;
  float attention_dropout = 0.0f;
  uint64_t seed = 0;
};

class LinformerAttention : public Attention {
 public:
  static absl::StatusOr<std::unique_ptr<LinformerAttention>> Create(
      const LinformerOptions& options);

  const char* name() const override { return "linformer"; }
  const LinformerOptions& options() const { return options_; }
  std::vector<ParamRef> Parameters() override;

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

  LinformerOptions options_;
  // weights[i]: [k, n]; biases[i]: [k] (when bias); matching gradients.
  std::vector<Tensor> weights_, biases_, weight_grads_, bias_grads_;
  FullAttention inner_;
  Tensor padded_mask_;
  AttentionCache grad_scratch_;
};

AttentionSpec LinformerAttentionSpec();

}  // namespace ftx

#endif  // FTX_ATTENTION_LINFORMER_H_
