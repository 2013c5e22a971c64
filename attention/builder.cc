#include "attention/builder.h"

#include <set>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "kernels/base/status_macros.h"

namespace ftx {
namespace {

bool TypeMatches(OptionType type, const OptionValue& value) {
  switch (type) {
    case OptionType::kBool:
      return std::holds_alternative<bool>(value);
    case OptionType::kInt:
      return std::holds_alternative<int64_t>(value);
    case OptionType::kFloat:
      return std::holds_alternative<double>(value) ||
             std::holds_alternative<int64_t>(value);
    case OptionType::kString:
      return std::holds_alternative<std::string>(value);
  }
  return false;
}

std::string AllOptionNames(const AttentionRegistry& registry) {
  std::set<std::string> names;
  for (const AttentionSpec* spec : registry.Specs()) {
    for (const OptionSpec& option : spec->options) names.insert(option.name);
  }
  return absl::StrJoin(names, ", ");
}

}  // namespace

const OptionSpec* AttentionBuilder::FindOption(absl::string_view name) const {
  for (const AttentionSpec* spec : registry_.Specs()) {
    for (const OptionSpec& option : spec->options) {
      if (option.name == name) return &option;
    }
  }
  return nullptr;
}

absl::Status AttentionBuilder::Set(absl::string_view name, OptionValue value) {
  const OptionSpec* option = FindOption(name);
  if (option == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown attention option \"", name,
                     "\"; valid options: ", AllOptionNames(registry_)));
  }
  if (!TypeMatches(option->type, value)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "attention option \"", name, "\" takes a ",
        OptionTypeName(option->type), ", got ", OptionValueToString(value)));
  }
  values_[std::string(name)] = std::move(value);
  return absl::OkStatus();
}

absl::Status AttentionBuilder::SetFromString(absl::string_view assignment) {
  const size_t equals = assignment.find('=');
  if (equals == absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("expected name=value, got \"", assignment, "\""));
  }
  const absl::string_view name = assignment.substr(0, equals);
  const absl::string_view text = assignment.substr(equals + 1);
  const OptionSpec* option = FindOption(name);
  if (option == nullptr) return Set(name, std::string(text));
  switch (option->type) {
    case OptionType::kBool:
      if (text == "true" || text == "1") return Set(name, true);
      if (text == "false" || text == "0") return Set(name, false);
      break;
    case OptionType::kInt: {
      int64_t parsed;
      if (absl::SimpleAtoi(text, &parsed)) return Set(name, parsed);
      break;
    }
    case OptionType::kFloat: {
      double parsed;
      if (absl::SimpleAtod(text, &parsed)) return Set(name, parsed);
      break;
    }
    case OptionType::kString:
      return Set(name, std::string(text));
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "attention option \"", name, "\" takes a ", OptionTypeName(option->type),
      ", cannot parse \"", text, "\""));
}

absl::StatusOr<std::unique_ptr<Attention>> AttentionBuilder::Build(
    absl::string_view type) const {
  const size_t colon = type.find(':');
  const absl::string_view head = type.substr(0, colon);
  const AttentionSpec* spec = registry_.Find(head);
  if (spec == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown attention type \"", head,
        "\"; valid types: ", absl::StrJoin(registry_.Names(), ", ")));
  }
  std::vector<std::unique_ptr<Attention>> inner;
  if (colon != absl::string_view::npos) {
    const absl::string_view rest = type.substr(colon + 1);
    // "a:b:c" nests; "a:b,c" gives a several inner mechanisms.
    std::vector<absl::string_view> parts;
    if (rest.find(':') != absl::string_view::npos) {
      parts.push_back(rest);
    } else {
      parts = absl::StrSplit(rest, ',');
    }
    for (absl::string_view part : parts) {
      FTX_ASSIGN_OR_RETURN(std::unique_ptr<Attention> built, Build(part));
      inner.push_back(std::move(built));
    }
  }
  if (static_cast<int>(inner.size()) != spec->inner_count) {
    return absl::InvalidArgumentError(
        spec->inner_count == 0
            ? absl::StrCat("attention type \"", spec->name,
                           "\" does not decorate other mechanisms (got \"",
                           type, "\")")
            : absl::StrCat("attention type \"", spec->name, "\" wraps ",
                           spec->inner_count, " mechanism(s), e.g. \"",
                           spec->name, ":linear\"; got \"", type, "\""));
  }
  FTX_ASSIGN_OR_RETURN(const AttentionOptions options, ResolveOptions(*spec));
  return spec->factory(options, std::move(inner));
}

absl::StatusOr<AttentionOptions> AttentionBuilder::ResolveOptions(
    const AttentionSpec& spec) const {
  AttentionOptions options;
  for (const OptionSpec& option : spec.options) {
    auto it = values_.find(option.name);
    if (it != values_.end()) {
      options.Set(option.name, it->second);
    } else if (option.required) {
      return absl::InvalidArgumentError(
          absl::StrCat("attention type \"", spec.name, "\" requires option \"",
                       option.name, "\" (", OptionTypeName(option.type), ")"));
    } else if (option.default_value.has_value()) {
      options.Set(option.name, *option.default_value);
    }
  }
  return options;
}

namespace {

// Names of the registered types whose spec has the given factory.
template <typename Member>
std::string NamesWith(const AttentionRegistry& registry, Member member) {
  std::vector<std::string> names;
  for (const AttentionSpec* spec : registry.Specs()) {
    if (spec->*member) names.push_back(spec->name);
  }
  return absl::StrJoin(names, ", ");
}

}  // namespace

absl::StatusOr<std::unique_ptr<RecurrentAttention>>
AttentionBuilder::BuildRecurrent(absl::string_view type) const {
  const AttentionSpec* spec = registry_.Find(type);
  if (spec == nullptr || !spec->recurrent_factory) {
    return absl::InvalidArgumentError(absl::StrCat(
        "no recurrent attention \"", type, "\"; types with a recurrent form: ",
        NamesWith(registry_, &AttentionSpec::recurrent_factory)));
  }
  FTX_ASSIGN_OR_RETURN(const AttentionOptions options, ResolveOptions(*spec));
  return spec->recurrent_factory(options);
}

absl::StatusOr<std::unique_ptr<RecurrentCrossAttention>>
AttentionBuilder::BuildRecurrentCross(absl::string_view type) const {
  const AttentionSpec* spec = registry_.Find(type);
  if (spec == nullptr || !spec->recurrent_cross_factory) {
    return absl::InvalidArgumentError(absl::StrCat(
        "no recurrent cross attention \"", type, "\"; types with one: ",
        NamesWith(registry_, &AttentionSpec::recurrent_cross_factory)));
  }
  FTX_ASSIGN_OR_RETURN(const AttentionOptions options, ResolveOptions(*spec));
  return spec->recurrent_cross_factory(options);
}

}  // namespace ftx
