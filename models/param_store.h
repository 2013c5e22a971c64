// ParamStore: every trainable tensor of a model in one arena, with its gradient
// and the two AdamW moments in parallel arenas of the same layout (llm.c's flat
// buffers, made safe by deriving offsets from one (name, shape) table). Names
// are the reference library's state_dict keys ("layers.0.0.fn.to_q.weight"), so
// weights move through safetensors unchanged. ForEachParam is the one loop
// behind zeroing, the optimizer, checkpoints, counting and gradient checks.
//
// Buffers (ParamShape::trainable false) sit in the same arenas so that they
// are saved, loaded and mapped like weights; the optimizer skips them.
//
// Example:
//   FTX_ASSIGN_OR_RETURN(ParamStore store,
//   ParamStore::Create(model.ParamShapes()));
//   FTX_ASSIGN_OR_RETURN(TensorView<float> w, store.Value("to_logits.weight"));
#ifndef FTX_MODELS_PARAM_STORE_H_
#define FTX_MODELS_PARAM_STORE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "attention/attention.h"
#include "kernels/base/tensor.h"

namespace ftx {

// One parameter as ForEachParam presents it.
struct ParamSlot {
  const std::string& name;
  TensorView<float> value;
  TensorView<float> grad;
  TensorView<float> first_moment;   // AdamW m
  TensorView<float> second_moment;  // AdamW v
  bool trainable;                   // false for buffers (ParamShape::trainable)
};

class ParamStore {
 public:
  // InvalidArgument for duplicate names, empty names or invalid shapes.
  static absl::StatusOr<ParamStore> Create(
      const std::vector<ParamShape>& shapes);

  ParamStore(ParamStore&&) = default;
  ParamStore& operator=(ParamStore&&) = default;

  int64_t NumParams() const { return total_; }
  int64_t NumTensors() const { return static_cast<int64_t>(entries_.size()); }
  const std::vector<ParamShape>& shapes() const { return shapes_; }
  bool Contains(absl::string_view name) const { return index_.contains(name); }

  // NotFound naming the parameter otherwise.
  absl::StatusOr<TensorView<float>> Value(absl::string_view name);
  absl::StatusOr<TensorView<float>> Grad(absl::string_view name);

  // The whole arenas, [NumParams()].
  TensorView<float> values() { return values_.view<float>(); }
  TensorView<float> grads() { return grads_.view<float>(); }

  void ZeroGrads();

  // fn(ParamSlot) for every parameter in creation order.
  template <class Fn>
  void ForEachParam(Fn&& fn) {
    for (size_t i = 0; i < entries_.size(); ++i) {
      const Entry& entry = entries_[i];
      fn(ParamSlot{shapes_[i].name, Slice(values_, entry), Slice(grads_, entry),
                   Slice(first_moments_, entry), Slice(second_moments_, entry),
                   shapes_[i].trainable});
    }
  }

 private:
  struct Entry {
    int64_t offset;
    Shape shape;
  };
  ParamStore() = default;
  static TensorView<float> Slice(Tensor& arena, const Entry& entry) {
    return TensorView<float>(arena.data<float>() + entry.offset, entry.shape);
  }
  absl::StatusOr<const Entry*> Find(absl::string_view name) const;

  std::vector<ParamShape> shapes_;
  std::vector<Entry> entries_;
  absl::flat_hash_map<std::string, size_t> index_;
  int64_t total_ = 0;
  Tensor values_, grads_, first_moments_, second_moments_;
};

// Prefixes every name: ("layers.0.", {"g", ...}) -> {"layers.0.g", ...}.
std::vector<ParamShape> WithPrefix(absl::string_view prefix,
                                   const std::vector<ParamShape>& shapes);

}  // namespace ftx

#endif  // FTX_MODELS_PARAM_STORE_H_
