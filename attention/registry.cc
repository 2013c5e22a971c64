#include "attention/registry.h"

#include <sstream>

#include "absl/strings/str_cat.h"

namespace ftx {

const char* OptionTypeName(OptionType type) {
  switch (type) {
    case OptionType::kBool:
      return "bool";
    case OptionType::kInt:
      return "int";
    case OptionType::kFloat:
      return "float";
    case OptionType::kString:
      return "string";
  }
  return "?";
}

std::string OptionValueToString(const OptionValue& value) {
  if (const bool* b = std::get_if<bool>(&value)) return *b ? "true" : "false";
  if (const int64_t* i = std::get_if<int64_t>(&value)) return absl::StrCat(*i);
  if (const double* d = std::get_if<double>(&value)) {
    std::ostringstream stream;
    stream << *d;
    return stream.str();
  }
  return std::get<std::string>(value);
}

std::optional<int64_t> AttentionOptions::Int(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) return std::nullopt;
  if (const int64_t* i = std::get_if<int64_t>(&it->second)) return *i;
  return std::nullopt;
}

std::optional<double> AttentionOptions::Float(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) return std::nullopt;
  if (const double* d = std::get_if<double>(&it->second)) return *d;
  if (const int64_t* i = std::get_if<int64_t>(&it->second))
    return static_cast<double>(*i);
  return std::nullopt;
}

std::optional<bool> AttentionOptions::Bool(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) return std::nullopt;
  if (const bool* b = std::get_if<bool>(&it->second)) return *b;
  return std::nullopt;
}

std::optional<std::string> AttentionOptions::String(
    const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) return std::nullopt;
  if (const std::string* s = std::get_if<std::string>(&it->second)) return *s;
  return std::nullopt;
}

absl::Status AttentionRegistry::Register(AttentionSpec spec) {
  if (spec.name.empty() || spec.name.find_first_of(":,") != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("attention name \"", spec.name,
                     "\" must be non-empty without ':' or ','"));
  }
  if (spec.inner_count < 0 || !spec.factory) {
    return absl::InvalidArgumentError(absl::StrCat(
        "attention \"", spec.name, "\" needs a factory and inner_count >= 0"));
  }
  // The builder sets options by name for every mechanism at once, so one name
  // must mean one type everywhere.
  for (const OptionSpec& option : spec.options) {
    for (const auto& [other_name, other] : specs_) {
      for (const OptionSpec& existing : other.options) {
        if (existing.name == option.name && existing.type != option.type) {
          return absl::InvalidArgumentError(absl::StrCat(
              "attention \"", spec.name, "\" declares option \"", option.name,
              "\" as ", OptionTypeName(option.type), " but \"", other_name,
              "\" declares it as ", OptionTypeName(existing.type)));
        }
      }
    }
  }
  if (specs_.count(spec.name) > 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("attention \"", spec.name, "\" is already registered"));
  }
  std::string name = spec.name;
  specs_.emplace(std::move(name), std::move(spec));
  return absl::OkStatus();
}

const AttentionSpec* AttentionRegistry::Find(absl::string_view name) const {
  auto it = specs_.find(name);
  return it == specs_.end() ? nullptr : &it->second;
}

std::vector<std::string> AttentionRegistry::Names() const {
  std::vector<std::string> names;
  for (const auto& [name, spec] : specs_) names.push_back(name);
  return names;
}

std::vector<const AttentionSpec*> AttentionRegistry::Specs() const {
  std::vector<const AttentionSpec*> specs;
  for (const auto& [name, spec] : specs_) specs.push_back(&spec);
  return specs;
}

}  // namespace ftx
