// Training-step utilities over a ParamStore:
//
//   AdamW            torch.optim.AdamW over every trainable parameter of the
//                    store (buffers are left alone), with
//                    the store's moment arenas as its state, a step counter
//                    and an optional per-parameter no-decay rule (the
//                    parameter groups of nanoGPT / minGPT)
//   ClipGradNorm     torch.nn.utils.clip_grad_norm_(params, max_norm) with
//                    norm_type 2: total = ||all gradients||_2; when
//                    max_norm / (total + 1e-6) < 1 every gradient is scaled
//                    by it
//   AverageGradients gradient accumulation: gradients summed over k
//                    micro-batches are scaled by 1 / k
//
// The store lives in host memory, so these take a CPU Context (its thread pool
// does the work). Every result is independent of the thread count.
//
// Example (one optimizer step with accumulation and clipping):
//   FTX_RETURN_IF_ERROR(AverageGradients(ctx, store, micro_batches));
//   FTX_ASSIGN_OR_RETURN(float norm, ClipGradNorm(ctx, store, 1.0));
//   FTX_RETURN_IF_ERROR(optimizer.Step(ctx, store, schedule.LearningRate(
//                                                      optimizer.step())));
//   store.ZeroGrads();
#ifndef FTX_MODELS_OPTIMIZER_H_
#define FTX_MODELS_OPTIMIZER_H_

#include <cstdint>
#include <functional>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kernels/base/context.h"
#include "kernels/base/shape.h"
#include "models/param_store.h"

namespace ftx {

// Chooses the parameters that get no weight decay.
using NoDecayRule =
    std::function<bool(absl::string_view name, const Shape& shape)>;

// By name: the last dotted component is "bias", or some component contains
// "norm" ("norm.weight", "attn_layers.layers.3.norm.g", "final_norm.gamma").
bool NoDecayBiasesAndNorms(absl::string_view name, const Shape& shape);

// By shape, as nanoGPT's configure_optimizers: every parameter of rank below 2
// (biases, norm gains, scalar gates) is not decayed; matrices and embeddings
// are.
bool NoDecayBelowRank2(absl::string_view name, const Shape& shape);

// torch.optim.AdamW's hyper-parameters except the learning rate, which each
// Step takes (from a schedule).
struct AdamWConfig {
  double beta1 = 0.9;          // in [0, 1)
  double beta2 = 0.999;        // in [0, 1)
  double eps = 1e-8;           // >= 0
  double weight_decay = 0.01;  // >= 0
  // Parameters for which this returns true use weight_decay 0; empty: every
  // parameter is decayed.
  NoDecayRule no_decay;
};

// AdamW (kernels/adamw) over a ParamStore: update t (1-based) of a parameter
// is
//   p = p (1 - lr wd)
//   m = beta1 m + (1 - beta1) g
//   v = beta2 v + (1 - beta2) g^2
//   p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
// with wd = 0 for no-decay parameters, m and v the store's moment arenas
// (zero-filled at creation, as torch's lazily created state). Neighbouring
// parameters with the same decay are updated by one kernel call.
class AdamW {
 public:
  // InvalidArgument naming a hyper-parameter outside its range.
  static absl::StatusOr<AdamW> Create(const AdamWConfig& config);

  // One update of every parameter of `store` from its gradient, with learning
  // rate lr (finite, >= 0). step() counts it only when it succeeds.
  absl::Status Step(const Context& ctx, ParamStore& store, double lr);

  // Updates done so far (torch's state["step"]).
  int64_t step() const { return step_; }
  // Resumes a run: the next Step is update step + 1 (restore the store's
  // moments with it). InvalidArgument for a negative step.
  absl::Status set_step(int64_t step);

  const AdamWConfig& config() const { return config_; }

 private:
  explicit AdamW(const AdamWConfig& config) : config_(config) {}

  AdamWConfig config_;
  int64_t step_ = 0;
};

// Scales every gradient of `store` by max_norm / (total + 1e-6) when that is
// below 1, where total is the L2 norm over all gradients (summed in double in
// fixed blocks); returns total, measured before clipping. A non-finite total
// leaves the gradients unchanged and is returned as it is, so the caller can
// skip the step (torch would scale by NaN or 0). max_norm must be finite and
// > 0.
absl::StatusOr<float> ClipGradNorm(const Context& ctx, ParamStore& store,
                                   double max_norm);

// Multiplies every gradient of `store` by 1 / num_micro_batches (>= 1): the
// mean over micro-batches whose gradients were accumulated (+=).
absl::Status AverageGradients(const Context& ctx, ParamStore& store,
                              int64_t num_micro_batches);

}  // namespace ftx

#endif  // FTX_MODELS_OPTIMIZER_H_
