// Recurrent cross-attention for decoders, as fast-transformers'
// recurrent/attention/cross_attention: each step brings one query per sequence
// and head and attends to a fixed memory (encoder output) of S keys and values.
// The memory is read on the first step only and cached in the state, as
// RecurrentCrossAttentionLayer does:
//   - "full": softmax(t q K^T + key-length mask) V, O(S) per step;
//   - "linear": S = sum_s phi(k_s) v_s^T and z = sum_s phi(k_s) over unpadded
//   keys,
//     computed once; out = phi(q) S / (phi(q) . z + eps), O(1) in S per step.
//
// Shapes: query [N, H, E]; keys [N, S, H, E]; values [N, S, H, D]; out [N, H,
// D].
#ifndef FTX_ATTENTION_RECURRENT_CROSS_H_
#define FTX_ATTENTION_RECURRENT_CROSS_H_

#include <functional>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "attention/feature_map.h"
#include "attention/mask.h"
#include "attention/recurrent.h"

namespace ftx {

class RecurrentCrossAttention {
 public:
  virtual ~RecurrentCrossAttention() = default;
  virtual const char* name() const = 0;
  virtual std::unique_ptr<RecurrentState> NewState() const = 0;

  // keys, values and key_lengths are read on the first step of `state` only.
  virtual absl::Status Step(const Context& ctx, TensorView<const float> query,
                            TensorView<const float> keys,
                            TensorView<const float> values,
                            const LengthMask& key_lengths,
                            TensorView<float> out, RecurrentState& state) = 0;
};

// RC "full". An optional probability observer receives each step's weights
// A [N, S, H] (fast-transformers 0.4.0's AttentionEvent layout, "nsh"; masked
// keys 0); they are written out only while one is set.
class RecurrentCrossFullAttention : public RecurrentCrossAttention {
 public:
  // Receives A [N, S, H], a view valid during the call only.
  using ProbabilityObserver =
      std::function<void(TensorView<const float> probabilities)>;

  explicit RecurrentCrossFullAttention(
      std::optional<float> softmax_temp = std::nullopt)
      : softmax_temp_(softmax_temp) {}
  const char* name() const override { return "full"; }
  std::unique_ptr<RecurrentState> NewState() const override;
  absl::Status Step(const Context& ctx, TensorView<const float> query,
                    TensorView<const float> keys,
                    TensorView<const float> values,
                    const LengthMask& key_lengths, TensorView<float> out,
                    RecurrentState& state) override;
  // Called by every later Step until replaced; nullptr removes it.
  void SetProbabilityObserver(ProbabilityObserver observer) {
    probability_observer_ = std::move(observer);
  }

 private:
  std::optional<float> softmax_temp_;
  ProbabilityObserver probability_observer_;
  std::vector<float> probabilities_;  // [N, S, H] while observed
};

class RecurrentCrossLinearAttention : public RecurrentCrossAttention {
 public:
  explicit RecurrentCrossLinearAttention(
      std::unique_ptr<FeatureMap> feature_map = nullptr, float eps = 1e-6f);
  const char* name() const override { return "linear"; }
  std::unique_ptr<RecurrentState> NewState() const override;
  absl::Status Step(const Context& ctx, TensorView<const float> query,
                    TensorView<const float> keys,
                    TensorView<const float> values,
                    const LengthMask& key_lengths, TensorView<float> out,
                    RecurrentState& state) override;

 private:
  std::unique_ptr<FeatureMap> feature_map_;
  float eps_;
};

}  // namespace ftx

#endif  // FTX_ATTENTION_RECURRENT_CROSS_H_
