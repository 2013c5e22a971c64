// Attention registry: string names -> factories with typed, documented options,
// as fast-transformers' AttentionRegistry (attention_registry/registry.py), but
// with explicit registration (RegisterBuiltinAttentions) instead of import-time
// side effects. Option names and defaults follow fast-transformers' registry
// entries.
//
// Example:
//   AttentionRegistry registry;
//   RegisterBuiltinAttentions(registry);
//   for (const AttentionSpec& spec : registry.Specs()) std::cout << spec.name;
#ifndef FTX_ATTENTION_REGISTRY_H_
#define FTX_ATTENTION_REGISTRY_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "attention/attention.h"
#include "attention/recurrent.h"
#include "attention/recurrent_cross.h"

namespace ftx {

enum class OptionType { kBool, kInt, kFloat, kString };

const char* OptionTypeName(OptionType type);

using OptionValue = std::variant<bool, int64_t, double, std::string>;

// Human-readable form of a value ("true", "32", "0.1", "elu+1").
std::string OptionValueToString(const OptionValue& value);

struct OptionSpec {
  std::string name;
  OptionType type;
  // Default; empty for required options and for "derived" defaults described in
  // help.
  std::optional<OptionValue> default_value;
  std::string help;
  bool required = false;
};

// Option values given to a factory, already checked against the spec.
class AttentionOptions {
 public:
  void Set(const std::string& name, OptionValue value) {
    values_[name] = std::move(value);
  }
  bool Has(const std::string& name) const { return values_.count(name) > 0; }

  // Typed reads; the spec's default applies when unset (the builder fills
  // defaults in).
  std::optional<int64_t> Int(const std::string& name) const;
  std::optional<double> Float(const std::string& name) const;
  std::optional<bool> Bool(const std::string& name) const;
  std::optional<std::string> String(const std::string& name) const;

 private:
  std::map<std::string, OptionValue> values_;
};

// Builds one mechanism from options; decorators ("conditional-full") also
// receive the mechanisms they wrap.
using AttentionFactory =
    std::function<absl::StatusOr<std::unique_ptr<Attention>>(
        const AttentionOptions& options,
        std::vector<std::unique_ptr<Attention>> inner)>;

// Step-wise forms for decoding (fast-transformers' RecurrentAttentionRegistry
// and RecurrentCrossAttentionRegistry entries of the same name).
using RecurrentFactory =
    std::function<absl::StatusOr<std::unique_ptr<RecurrentAttention>>(
        const AttentionOptions& options)>;
using RecurrentCrossFactory =
    std::function<absl::StatusOr<std::unique_ptr<RecurrentCrossAttention>>(
        const AttentionOptions& options)>;

struct AttentionSpec {
  std::string name;
  std::string description;
  std::vector<OptionSpec> options;
  // Number of inner mechanisms a decorator takes ("a:b" syntax); 0 for plain
  // ones.
  int inner_count = 0;
  AttentionFactory factory;
  // Empty when the mechanism has no recurrent (self) or recurrent cross form.
  RecurrentFactory recurrent_factory;
  RecurrentCrossFactory recurrent_cross_factory;
};

class AttentionRegistry {
 public:
  // InvalidArgument when the name is taken or a decorator has inner_count < 0.
  absl::Status Register(AttentionSpec spec);

  const AttentionSpec* Find(absl::string_view name) const;
  std::vector<std::string> Names() const;
  std::vector<const AttentionSpec*> Specs() const;

 private:
  std::map<std::string, AttentionSpec, std::less<>> specs_;
};

}  // namespace ftx

#endif  // FTX_ATTENTION_REGISTRY_H_
