// AttentionBuilder: fast-transformers' AttentionBuilder
// (builders/attention_builders.py) in C++. Options are set by name (validated
// against every registered mechanism at once), then Build("type") makes a
// mechanism. Decorators use fast-transformers' syntax:
// "conditional-full:linear" builds "linear" and wraps it; "a:b,c" gives
// decorator a the mechanisms b and c.
//
// Example:
//   AttentionBuilder builder(registry);
//   FTX_RETURN_IF_ERROR(builder.Set("softmax_temp", 0.125));
//   FTX_ASSIGN_OR_RETURN(auto attention, builder.Build("full"));
#ifndef FTX_ATTENTION_BUILDER_H_
#define FTX_ATTENTION_BUILDER_H_

#include <map>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "attention/registry.h"

namespace ftx {

class AttentionBuilder {
 public:
  explicit AttentionBuilder(const AttentionRegistry& registry)
      : registry_(registry) {}

  // InvalidArgument (listing the valid options) when no registered mechanism
  // has an option `name`, or when the value's type does not match (ints pass as
  // floats).
  absl::Status Set(absl::string_view name, OptionValue value);

  // "name=value", the value parsed with the option's declared type.
  absl::Status SetFromString(absl::string_view assignment);

  // InvalidArgument listing the valid names for an unknown type, and naming any
  // missing required option.
  absl::StatusOr<std::unique_ptr<Attention>> Build(
      absl::string_view type) const;

  // The step-wise (decoding) forms; InvalidArgument listing the types that have
  // one.
  absl::StatusOr<std::unique_ptr<RecurrentAttention>> BuildRecurrent(
      absl::string_view type) const;
  absl::StatusOr<std::unique_ptr<RecurrentCrossAttention>> BuildRecurrentCross(
      absl::string_view type) const;

 private:
  const OptionSpec* FindOption(absl::string_view name) const;
  // The spec's options: set values, else defaults; error for missing required
  // ones.
  absl::StatusOr<AttentionOptions> ResolveOptions(
      const AttentionSpec& spec) const;

  const AttentionRegistry& registry_;
  std::map<std::string, OptionValue> values_;
};

}  // namespace ftx

#endif  // FTX_ATTENTION_BUILDER_H_
