// Recurrent (one step at a time) attention for autoregressive decoding, as
// fast-transformers' recurrent/attention modules: each call sees one new query,
// key and value per sequence and head, and a state object carries the history:
//   - "full": a KV cache that grows by one entry per step (O(t) per step);
//   - "linear" / "causal-linear": running sums S = sum phi(k) v^T and z = sum
//   phi(k)
//     (O(1) per step in the sequence length).
// Recurrent cross-attention (fixed keys/values from an encoder memory) lives in
// recurrent_cross.h.
//
// Shapes per step: query [N, H, E], key [N, H, E], value [N, H, D], out [N, H,
// D]. Stepping through a sequence gives the same outputs as the parallel
// mechanism with a causal mask, position by position (tested).
#ifndef FTX_ATTENTION_RECURRENT_H_
#define FTX_ATTENTION_RECURRENT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "attention/feature_map.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor_view.h"

namespace ftx {

// History of one decoding run; create it with RecurrentAttention::NewState.
class RecurrentState {
 public:
  virtual ~RecurrentState() = default;
  // Steps taken so far.
  virtual int64_t steps() const = 0;
};

// N, H, E and D of one step.
struct RecurrentStepDims {
  int64_t batch = 0, heads = 0, qk_dim = 0, value_dim = 0;
  bool operator==(const RecurrentStepDims& other) const {
    return batch == other.batch && heads == other.heads &&
           qk_dim == other.qk_dim && value_dim == other.value_dim;
  }
};

// Checks one step's views (contiguous CPU query/key [N, H, E], value/out [N, H,
// D]); InvalidArgument naming the bad view otherwise.
absl::StatusOr<RecurrentStepDims> ValidateRecurrentStep(
    const char* op, TensorView<const float> query, TensorView<const float> key,
    TensorView<const float> value, TensorView<float> out);

// InvalidArgument when a later step's shapes differ from the first step's.
absl::Status CheckSameStepDims(const char* op, const RecurrentStepDims& first,
                               const RecurrentStepDims& now);

class RecurrentAttention {
 public:
  virtual ~RecurrentAttention() = default;
  virtual const char* name() const = 0;

  virtual std::unique_ptr<RecurrentState> NewState() const = 0;

  // One step. The first step fixes N, H, E and D; later steps must match them
  // (InvalidArgument otherwise), as fast-transformers requires a constant
  // batch.
  virtual absl::Status Step(const Context& ctx, TensorView<const float> query,
                            TensorView<const float> key,
                            TensorView<const float> value,
                            TensorView<float> out, RecurrentState& state) = 0;
};

// R "full": softmax(t q K^T) V over every key so far, t = softmax_temp or
// 1/sqrt(E). An optional probability observer receives each step's weights
// A [N, H, steps] (fast-transformers 0.4.0's AttentionEvent layout, "nhs");
// they are written out only while one is set.
class RecurrentFullAttention : public RecurrentAttention {
 public:
  // Receives A [N, H, steps], a view valid during the call only.
  using ProbabilityObserver =
      std::function<void(TensorView<const float> probabilities)>;

  explicit RecurrentFullAttention(
      std::optional<float> softmax_temp = std::nullopt)
      : softmax_temp_(softmax_temp) {}
  const char* name() const override { return "full"; }
  std::unique_ptr<RecurrentState> NewState() const override;
  absl::Status Step(const Context& ctx, TensorView<const float> query,
                    TensorView<const float> key, TensorView<const float> value,
                    TensorView<float> out, RecurrentState& state) override;
  // Called by every later Step until replaced; nullptr removes it.
  void SetProbabilityObserver(ProbabilityObserver observer) {
    probability_observer_ = std::move(observer);
  }

 private:
  std::optional<float> softmax_temp_;
  ProbabilityObserver probability_observer_;
  std::vector<float> probabilities_;  // [N, H, steps] while observed
};

// R "linear" / "causal-linear": out = phi(q) S / (phi(q) . z + eps) after
// adding phi(k) v^T to S and phi(k) to z.
class RecurrentLinearAttention : public RecurrentAttention {
 public:
  explicit RecurrentLinearAttention(
      std::unique_ptr<FeatureMap> feature_map = nullptr, float eps = 1e-6f);
  const char* name() const override { return "linear"; }
  std::unique_ptr<RecurrentState> NewState() const override;
  absl::Status Step(const Context& ctx, TensorView<const float> query,
                    TensorView<const float> key, TensorView<const float> value,
                    TensorView<float> out, RecurrentState& state) override;

 private:
  std::unique_ptr<FeatureMap> feature_map_;
  float eps_;
};

}  // namespace ftx

#endif  // FTX_ATTENTION_RECURRENT_H_
