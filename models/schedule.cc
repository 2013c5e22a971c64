#include "models/schedule.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace ftx {
namespace {

constexpr double kPi = 3.14159265358979323846;

}  // namespace

absl::StatusOr<LearningRateSchedule> LearningRateSchedule::Constant(double lr) {
  if (!(std::isfinite(lr) && lr >= 0.0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "LearningRateSchedule::Constant: lr must be finite and >= 0, got ",
        lr));
  }
  return LearningRateSchedule(WarmupCosineConfig{lr, lr, 0, 1});
}

absl::StatusOr<LearningRateSchedule> LearningRateSchedule::WarmupCosine(
    const WarmupCosineConfig& config) {
  auto error = [](auto... pieces) {
    return absl::InvalidArgumentError(
        absl::StrCat("LearningRateSchedule::WarmupCosine: ", pieces...));
  };
  if (!(config.min_lr >= 0.0 && std::isfinite(config.min_lr))) {
    return error("min_lr must be finite and >= 0, got ", config.min_lr);
  }
  if (!(config.max_lr >= config.min_lr && std::isfinite(config.max_lr))) {
    return error("max_lr must be finite and >= min_lr (", config.min_lr,
                 "), got ", config.max_lr);
  }
  if (config.warmup_steps < 0) {
    return error("warmup_steps must be >= 0, got ", config.warmup_steps);
  }
  if (config.total_steps <= config.warmup_steps) {
    return error("total_steps must be > warmup_steps (", config.warmup_steps,
                 "), got ", config.total_steps);
  }
  return LearningRateSchedule(config);
}

double LearningRateSchedule::LearningRate(int64_t step) const {
  const WarmupCosineConfig& c = config_;
  if (step < 0) step = 0;
  if (step < c.warmup_steps) {
    return c.max_lr * static_cast<double>(step + 1) /
           static_cast<double>(c.warmup_steps);
  }
  if (step >= c.total_steps) return c.min_lr;
  const double progress = static_cast<double>(step - c.warmup_steps) /
                          static_cast<double>(c.total_steps - c.warmup_steps);
  return c.min_lr +
         0.5 * (c.max_lr - c.min_lr) * (1.0 + std::cos(kPi * progress));
}

}  // namespace ftx
