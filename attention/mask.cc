#include "attention/mask.h"

#include <limits>

#include "absl/strings/str_cat.h"

namespace ftx {

float AttnMask::At(int64_t l, int64_t s) const {
  switch (kind_) {
    case Kind::kAll:
      return 0.0f;
    case Kind::kCausal:
      return s <= l + causal_offset_ ? 0.0f
                                     : -std::numeric_limits<float>::infinity();
    case Kind::kAdditive:
      return additive_.at(l, s);
  }
  return 0.0f;
}

absl::Status AttnMask::Validate(absl::string_view op, int64_t queries,
                                int64_t keys) const {
  if (kind_ != Kind::kAdditive) return absl::OkStatus();
  if (additive_.data() == nullptr || additive_.rank() != 2 ||
      additive_.dim(0) != queries || additive_.dim(1) != keys) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": attn_mask must be an additive [L, S] = [", queries, ", ", keys,
        "] matrix, got shape ", additive_.shape().ToString()));
  }
  if (additive_.device().type != DeviceType::kCpu) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": attn_mask must be in CPU memory"));
  }
  return absl::OkStatus();
}

absl::Status LengthMask::Validate(absl::string_view op, absl::string_view name,
                                  int64_t batch, int64_t max_length) const {
  if (lengths.empty()) return absl::OkStatus();
  if (static_cast<int64_t>(lengths.size()) != batch) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", name, " has ", lengths.size(),
                     " entries for a batch of ", batch));
  }
  for (size_t i = 0; i < lengths.size(); ++i) {
    if (lengths[i] < 0 || lengths[i] > max_length) {
      return absl::InvalidArgumentError(
          absl::StrCat(op, ": ", name, "[", i, "] = ", lengths[i],
                       " is outside [0, ", max_length, "]"));
    }
  }
  return absl::OkStatus();
}

}  // namespace ftx
