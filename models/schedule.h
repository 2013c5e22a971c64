// Learning-rate schedules, indexed by the 0-based number of the optimizer step
// about to run (AdamW::step() before the update):
//
//   Constant:      lr(s) = lr
//   WarmupCosine:  lr(s) = max_lr * (s + 1) / warmup_steps      s < warmup
//                  lr(s) = min_lr + (max_lr - min_lr) / 2
//                          * (1 + cos(pi * (s - warmup) / (total - warmup)))
//                                                                warmup <= s
//                                                                  < total
//                  lr(s) = min_lr                                s >= total
//
// The warm-up is llm.c's (the first step already moves, max_lr is reached at
// step warmup - 1); the decay is nanoGPT's get_lr cosine, which
// transformers' get_cosine_schedule_with_warmup matches when min_lr = 0.
// Computed in double.
//
// Example:
//   FTX_ASSIGN_OR_RETURN(LearningRateSchedule schedule,
//                        LearningRateSchedule::WarmupCosine(
//                            {.max_lr = 6e-4, .min_lr = 6e-5,
//                             .warmup_steps = 700, .total_steps = 20000}));
//   FTX_RETURN_IF_ERROR(optimizer.Step(ctx, store,
//                       schedule.LearningRate(optimizer.step())));
#ifndef FTX_MODELS_SCHEDULE_H_
#define FTX_MODELS_SCHEDULE_H_

#include <cstdint>

#include "absl/status/statusor.h"

namespace ftx {

struct WarmupCosineConfig {
  double max_lr = 0.0;       // finite, >= min_lr
  double min_lr = 0.0;       // >= 0
  int64_t warmup_steps = 0;  // >= 0
  int64_t total_steps = 0;   // > warmup_steps: min_lr is reached here
};

class LearningRateSchedule {
 public:
  // lr at every step. InvalidArgument unless finite and >= 0.
  static absl::StatusOr<LearningRateSchedule> Constant(double lr);
  // Linear warm-up then cosine decay to min_lr. InvalidArgument naming the
  // field that breaks the ranges in WarmupCosineConfig.
  static absl::StatusOr<LearningRateSchedule> WarmupCosine(
      const WarmupCosineConfig& config);

  // The learning rate of step `step` (0-based; a negative step counts as 0).
  double LearningRate(int64_t step) const;

 private:
  explicit LearningRateSchedule(const WarmupCosineConfig& config)
      : config_(config) {}

  // Constant(lr) is stored as WarmupCosine with max_lr = min_lr = lr, no
  // warm-up and one decay step.
  WarmupCosineConfig config_;
};

}  // namespace ftx

#endif  // FTX_MODELS_SCHEDULE_H_
