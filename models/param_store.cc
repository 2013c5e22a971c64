#include "models/param_store.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"

namespace ftx {

absl::StatusOr<ParamStore> ParamStore::Create(
    const std::vector<ParamShape>& shapes) {
  ParamStore store;
  store.shapes_ = shapes;
  for (size_t i = 0; i < shapes.size(); ++i) {
    const ParamShape& param = shapes[i];
    if (param.name.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("parameter ", i, " has no name"));
    }
    if (!param.shape.IsValid() || param.shape.rank() == 0) {
      return absl::InvalidArgumentError(absl::StrCat("parameter ", param.name,
                                                     " has invalid shape ",
                                                     param.shape.ToString()));
    }
    if (!store.index_.emplace(param.name, i).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("parameter name ", param.name, " appears twice"));
    }
    store.entries_.push_back({store.total_, param.shape});
    store.total_ += param.shape.NumElements();
  }
  for (Tensor* arena : {&store.values_, &store.grads_, &store.first_moments_,
                        &store.second_moments_}) {
    FTX_ASSIGN_OR_RETURN(
        *arena,
        Tensor::Create(DType::kF32, {std::max<int64_t>(store.total_, 1)}));
  }
  return store;
}

absl::StatusOr<const ParamStore::Entry*> ParamStore::Find(
    absl::string_view name) const {
  auto it = index_.find(name);
  if (it == index_.end()) {
    return absl::NotFoundError(absl::StrCat("no parameter named ", name));
  }
  return &entries_[it->second];
}

absl::StatusOr<TensorView<float>> ParamStore::Value(absl::string_view name) {
  FTX_ASSIGN_OR_RETURN(const Entry* entry, Find(name));
  return Slice(values_, *entry);
}

absl::StatusOr<TensorView<float>> ParamStore::Grad(absl::string_view name) {
  FTX_ASSIGN_OR_RETURN(const Entry* entry, Find(name));
  return Slice(grads_, *entry);
}

void ParamStore::ZeroGrads() {
  float* grads = grads_.data<float>();
  std::fill(grads, grads + total_, 0.0f);
}

std::vector<ParamShape> WithPrefix(absl::string_view prefix,
                                   const std::vector<ParamShape>& shapes) {
  std::vector<ParamShape> prefixed;
  prefixed.reserve(shapes.size());
  for (const ParamShape& param : shapes) {
    prefixed.push_back(
        {absl::StrCat(prefix, param.name), param.shape, param.trainable});
  }
  return prefixed;
}

}  // namespace ftx
