// ALiBi, attention with linear biases (Press et al. 2022), as x-transformers'
// AlibiPositionalBias / LearnedAlibiPositionalBias (alibi_pos_bias,
// alibi_num_heads, alibi_learned): a per-head score bias proportional to the
// query-key distance, added to the scaled scores through
// AttentionInputs::head_bias (see attention/full.h). Queries and keys both
// count from 0 (l, s), as in the references.
//
// Slopes for A = alibi_num_heads heads: for A a power of two,
// s_h = (2^(-8 / A))^(h + 1); otherwise, with p the largest power of two
// below A, the p slopes of p followed by every other slope of 2p (the first
// A - p of slopes(2p)[0::2]). Heads h >= A get no bias. Fixed slopes are the
// float32 roundings of those; learned ones are exp(log-slope parameters)
// initialised to log(float slopes).
//
// The bias, by version (x-transformers picks the class from causal and
// alibi_learned):
//   1.0.0, fixed or learned:  bias[h, l, s] = -|s - l| s_h
//   0.26.6, causal, fixed:    bias[h, l, s] = s s_h (key index only; equals
//                             -(l - s) s_h up to a per-row constant, which
//                             softmax ignores)
//   0.26.6, causal, learned:  bias[h, l, s] = (s - l) s_h
//   0.26.6, non-causal (always learned, bidirectional):
//                             bias[h, l, s] = |s - l| s_h for s <= l,
//                                             |s - l| f_h for s > l,
// with separate learned past (s_h) and future (f_h) slopes; note that the bias
// is positive and grows with distance on both sides (0.26.6 takes abs() of
// the distance before tril/triu), as in the reference.
// Parameters (learned only): "learned_logslopes" [A, 1, 1] (1.0.0) or
// [1, A, 1, 1] (0.26.6), plus "learned_logslopes_future" [1, A, 1, 1] for
// the 0.26.6 non-causal form. The references' cached bias buffer is not
// reproduced (it returns a stale slice when L grows while S shrinks).
//
// Gradient convention: Backward accumulates the log-slope gradients (+=);
// fixed ALiBi has no parameters and no backward.
#ifndef FTX_LAYERS_ALIBI_H_
#define FTX_LAYERS_ALIBI_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "attention/attention.h"
#include "kernels/base/context.h"

namespace ftx {

enum class AlibiVersion {
  kXTransformers0_26_6,
  kXTransformers1_0_0,
};

struct AlibiConfig {
  int64_t heads = 0;        // H of the attention
  int64_t alibi_heads = 0;  // A = alibi_num_heads; 0 means H
  bool causal = false;
  bool learned = false;  // alibi_learned
  AlibiVersion version = AlibiVersion::kXTransformers1_0_0;
};

// What the configuration computes (see the header comment).
enum class AlibiForm {
  kSymmetric,              // -|s - l| slope          (1.0.0)
  kKeyIndex,               // s slope                 (0.26.6 causal, fixed)
  kSigned,                 // (s - l) slope           (0.26.6 causal, learned)
  kAbsoluteBidirectional,  // |s - l| past / future  (0.26.6 non-causal)
};

class Alibi {
 public:
  // InvalidArgument unless 1 <= A <= H.
  static absl::StatusOr<Alibi> Create(const AlibiConfig& config);

  // The slopes of `heads` heads in double, as x-transformers' _get_slopes.
  static std::vector<double> Slopes(int64_t heads);

  const AlibiConfig& config() const { return config_; }
  int64_t alibi_heads() const { return alibi_heads_; }
  AlibiForm form() const { return form_; }
  // Whether the slopes are parameters (0.26.6 non-causal is always learned).
  bool learned() const {
    return form_ == AlibiForm::kAbsoluteBidirectional || config_.learned;
  }

  // Learned: "learned_logslopes" (and "learned_logslopes_future"); fixed:
  // none.
  std::vector<ParamShape> ParamShapes() const;

  // log_slopes[h] = log(float(s_h)); log_slopes_future likewise for the
  // bidirectional form (else leave it default-constructed). Shapes as
  // ParamShapes().
  absl::Status InitParams(TensorView<float> log_slopes,
                          TensorView<float> log_slopes_future) const;

  // bias: [H, L, S] (written). log_slopes / log_slopes_future: the learned
  // parameters, or default-constructed views when not learned / not
  // bidirectional.
  absl::Status Forward(const Context& ctx, TensorView<const float> log_slopes,
                       TensorView<const float> log_slopes_future,
                       TensorView<float> bias) const;

  // d_log_slopes[h] += sum_{l,s} d_bias[h, l, s] d(bias)/d(log s_h) (+=), and
  // the future slopes likewise. Only for learned configurations. d_bias:
  // [H, L, S].
  absl::Status Backward(const Context& ctx, TensorView<const float> log_slopes,
                        TensorView<const float> log_slopes_future,
                        TensorView<const float> d_bias,
                        TensorView<float> d_log_slopes,
                        TensorView<float> d_log_slopes_future) const;

 private:
  Alibi(const AlibiConfig& config, int64_t alibi_heads, AlibiForm form);

  // `prefix` names gradients ("d_") in the messages.
  absl::Status CheckParams(const char* op, const char* prefix,
                           TensorView<const float> log_slopes,
                           TensorView<const float> log_slopes_future) const;
  absl::Status CheckBias(const char* op, const Context& ctx,
                         TensorView<const float> bias) const;

  AlibiConfig config_;
  int64_t alibi_heads_;
  AlibiForm form_;
  std::vector<float> fixed_slopes_;  // [A], float32 roundings of Slopes(A)
};

}  // namespace ftx

#endif  // FTX_LAYERS_ALIBI_H_
