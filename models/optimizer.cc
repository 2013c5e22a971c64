#include "models/optimizer.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "kernels/adamw/adamw.h"
#include "kernels/base/status_macros.h"
#include "kernels/elementwise/elementwise.h"

namespace ftx {
namespace {

// Gradients per block of the norm's partial sums: fixed, so the sum does not
// depend on the thread count.
constexpr int64_t kNormBlock = 16384;

// sum(x[i]^2) in double, in four interleaved accumulators.
double SumOfSquares(const float* x, int64_t n) {
  double sums[4] = {0.0, 0.0, 0.0, 0.0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    for (int k = 0; k < 4; ++k) {
      const double value = x[i + k];
      sums[k] += value * value;
    }
  }
  for (; i < n; ++i) sums[0] += static_cast<double>(x[i]) * x[i];
  return (sums[0] + sums[1]) + (sums[2] + sums[3]);
}

absl::Status CheckHostContext(absl::string_view op, const Context& ctx) {
  if (ctx.device().type != DeviceType::kCpu) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": the ParamStore is in host memory but the context is ",
        DeviceTypeName(ctx.device().type)));
  }
  return absl::OkStatus();
}

// The whole gradient arena, [NumParams()].
TensorView<float> AllGradients(ParamStore& store) {
  return TensorView<float>(store.grads().data(), {store.NumParams()});
}

}  // namespace

bool NoDecayBiasesAndNorms(absl::string_view name, const Shape& shape) {
  const std::vector<absl::string_view> parts = absl::StrSplit(name, '.');
  if (parts.back() == "bias") return true;
  return std::any_of(parts.begin(), parts.end(), [](absl::string_view part) {
    return absl::StrContains(part, "norm");
  });
}

bool NoDecayBelowRank2(absl::string_view name, const Shape& shape) {
  return shape.rank() < 2;
}

absl::StatusOr<AdamW> AdamW::Create(const AdamWConfig& config) {
  auto error = [](absl::string_view name, double value,
                  absl::string_view expected) {
    return absl::InvalidArgumentError(absl::StrCat(
        "AdamW: config.", name, " must be ", expected, ", got ", value));
  };
  if (!(config.beta1 >= 0.0 && config.beta1 < 1.0)) {
    return error("beta1", config.beta1, "in [0, 1)");
  }
  if (!(config.beta2 >= 0.0 && config.beta2 < 1.0)) {
    return error("beta2", config.beta2, "in [0, 1)");
  }
  if (!(std::isfinite(config.eps) && config.eps >= 0.0)) {
    return error("eps", config.eps, "finite and >= 0");
  }
  if (!(std::isfinite(config.weight_decay) && config.weight_decay >= 0.0)) {
    return error("weight_decay", config.weight_decay, "finite and >= 0");
  }
  return AdamW(config);
}

absl::Status AdamW::set_step(int64_t step) {
  if (step < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("AdamW::set_step: step must be >= 0, got ", step));
  }
  step_ = step;
  return absl::OkStatus();
}

absl::Status AdamW::Step(const Context& ctx, ParamStore& store, double lr) {
  if (!(std::isfinite(lr) && lr >= 0.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("AdamW::Step: lr must be finite and >= 0, got ", lr));
  }
  AdamWOptions decayed;
  decayed.lr = lr;
  decayed.beta1 = config_.beta1;
  decayed.beta2 = config_.beta2;
  decayed.eps = config_.eps;
  decayed.weight_decay = config_.weight_decay;
  decayed.step = step_ + 1;
  AdamWOptions not_decayed = decayed;
  not_decayed.weight_decay = 0.0;

  // Neighbouring parameters with one decay setting, updated by one call.
  struct Run {
    float* value = nullptr;
    float* grad = nullptr;
    float* first_moment = nullptr;
    float* second_moment = nullptr;
    int64_t size = 0;
    bool decay = true;
  };
  Run run;
  absl::Status status;
  auto flush = [&] {
    if (run.size == 0 || !status.ok()) return;
    const Shape shape{run.size};
    status = AdamWStep(ctx, TensorView<float>(run.value, shape),
                       TensorView<const float>(run.grad, shape),
                       TensorView<float>(run.first_moment, shape),
                       TensorView<float>(run.second_moment, shape),
                       run.decay ? decayed : not_decayed);
    run.size = 0;
  };
  store.ForEachParam([&](const ParamSlot& slot) {
    if (!slot.trainable) {
      flush();
      return;
    }
    const bool decay =
        !(config_.no_decay && config_.no_decay(slot.name, slot.value.shape()));
    const bool extends_run =
        run.size > 0 && run.decay == decay &&
        slot.value.data() == run.value + run.size &&
        slot.grad.data() == run.grad + run.size &&
        slot.first_moment.data() == run.first_moment + run.size &&
        slot.second_moment.data() == run.second_moment + run.size;
    if (!extends_run) {
      flush();
      run.value = slot.value.data();
      run.grad = slot.grad.data();
      run.first_moment = slot.first_moment.data();
      run.second_moment = slot.second_moment.data();
      run.decay = decay;
    }
    run.size += slot.value.NumElements();
  });
  flush();
  FTX_RETURN_IF_ERROR(status);
  ++step_;
  return absl::OkStatus();
}

absl::StatusOr<float> ClipGradNorm(const Context& ctx, ParamStore& store,
                                   double max_norm) {
  if (!(std::isfinite(max_norm) && max_norm > 0.0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ClipGradNorm: max_norm must be finite and > 0, got ", max_norm));
  }
  FTX_RETURN_IF_ERROR(CheckHostContext("ClipGradNorm", ctx));
  const TensorView<float> grads = AllGradients(store);
  const int64_t n = grads.NumElements();
  const int64_t blocks = (n + kNormBlock - 1) / kNormBlock;
  std::vector<double> partial_sums(blocks);
  ctx.pool().ParallelFor(blocks, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      const int64_t offset = block * kNormBlock;
      partial_sums[block] =
          SumOfSquares(grads.data() + offset, std::min(kNormBlock, n - offset));
    }
  });
  double sum = 0.0;
  for (double partial : partial_sums) sum += partial;
  const double total = std::sqrt(sum);
  if (!std::isfinite(total)) return static_cast<float>(total);
  const double coefficient = max_norm / (total + 1e-6);
  if (coefficient < 1.0) {
    FTX_RETURN_IF_ERROR(
        Scale(ctx, static_cast<float>(coefficient), grads, grads));
  }
  return static_cast<float>(total);
}

absl::Status AverageGradients(const Context& ctx, ParamStore& store,
                              int64_t num_micro_batches) {
  if (num_micro_batches < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("AverageGradients: num_micro_batches must be >= 1, got ",
                     num_micro_batches));
  }
  FTX_RETURN_IF_ERROR(CheckHostContext("AverageGradients", ctx));
  if (num_micro_batches == 1) return absl::OkStatus();
  const TensorView<float> grads = AllGradients(store);
  return Scale(ctx, static_cast<float>(1.0 / num_micro_batches), grads, grads);
}

}  // namespace ftx
