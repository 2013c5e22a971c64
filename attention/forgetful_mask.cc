#include "attention/forgetful_mask.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "kernels/base/philox.h"

namespace ftx {
namespace {

constexpr char kOp[] = "ForgetfulMask";

absl::Status CheckProbability(const ForgetfulMaskConfig& config) {
  if (!(config.mask_prob >= 0.0f && config.mask_prob < 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": mask_prob must be in [0, 1), got ", config.mask_prob));
  }
  return absl::OkStatus();
}

}  // namespace

int64_t ForgetfulMaskCount(const ForgetfulMaskConfig& config, int64_t seq_len) {
  const int64_t drawn = static_cast<int64_t>(
      std::floor(static_cast<double>(seq_len + 1) * config.mask_prob));
  return std::max<int64_t>(0, std::min(drawn, seq_len - 1));
}

absl::StatusOr<std::vector<uint8_t>> ForgetfulKeyMask(
    const ForgetfulMaskConfig& config, int64_t batch, int64_t seq_len,
    bool training, uint64_t seed) {
  if (absl::Status status = CheckProbability(config); !status.ok()) {
    return status;
  }
  if (batch < 1 || seq_len < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": batch and seq_len must be >= 1, got ", batch,
                     " and ", seq_len));
  }
  std::vector<uint8_t> keep(batch * seq_len, 1);
  const int64_t count = ForgetfulMaskCount(config, seq_len);
  if (!training || count == 0) return keep;
  std::vector<int64_t> order(seq_len - 1);
  std::vector<float> score(seq_len);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t j = 1; j < seq_len; ++j) {
      score[j] = RandomUniform(seed, kForgetfulMaskStream, b * seq_len + j);
    }
    std::iota(order.begin(), order.end(), 1);
    // The `count` highest scores are masked; ties broken by position.
    std::partial_sort(order.begin(), order.begin() + count, order.end(),
                      [&](int64_t a, int64_t c) {
                        return score[a] > score[c] ||
                               (score[a] == score[c] && a < c);
                      });
    for (int64_t i = 0; i < count; ++i) keep[b * seq_len + order[i]] = 0;
  }
  return keep;
}

absl::Status ForgetfulCausalAdditiveMask(const ForgetfulMaskConfig& config,
                                         const std::vector<uint8_t>& keep_row,
                                         TensorView<float> additive) {
  const int64_t n = static_cast<int64_t>(keep_row.size());
  if (n < 1 || additive.shape() != Shape{n, n} || additive.data() == nullptr ||
      !additive.IsContiguous() || additive.device().type != DeviceType::kCpu) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": additive must be a contiguous CPU [", n, ", ", n,
                     "] matrix for keep_row of ", n, " entries, got ",
                     additive.shape().ToString()));
  }
  const float drop = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      const bool visible =
          j <= i && (keep_row[j] != 0 || (config.keep_diagonal && i == j));
      additive.at(i, j) = visible ? 0.0f : drop;
    }
  }
  return absl::OkStatus();
}

}  // namespace ftx
