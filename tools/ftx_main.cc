// The ftx command-line tool.
//
//   ftx attention list      every registered attention mechanism with its options
//
// Errors go to stderr with a non-zero exit status; nothing here aborts on user input.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "attention/builtin.h"
#include "attention/registry.h"

namespace ftx {
namespace {

constexpr char kUsage[] =
    "usage: ftx <command> [arguments]\n"
    "\n"
    "commands:\n"
    "  attention list    list every attention mechanism with its options and defaults\n"
    "  help              show this message\n";

absl::Status AttentionList() {
  AttentionRegistry registry;
  if (absl::Status status = RegisterBuiltinAttentions(registry); !status.ok()) {
    return status;
  }
  for (const AttentionSpec* spec : registry.Specs()) {
    std::printf("%s%s\n    %s\n", spec->name.c_str(),
                spec->inner_count > 0
                    ? absl::StrCat(" (decorator of ", spec->inner_count,
                                   " mechanism(s): \"", spec->name, ":<inner>\")")
                          .c_str()
                    : "",
                spec->description.c_str());
    if (spec->recurrent_factory || spec->recurrent_cross_factory) {
      std::printf("    recurrent forms:%s%s\n", spec->recurrent_factory ? " self" : "",
                  spec->recurrent_cross_factory ? " cross" : "");
    }
    for (const OptionSpec& option : spec->options) {
      const std::string default_text =
          option.required ? "required"
          : option.default_value.has_value()
              ? absl::StrCat("default ", OptionValueToString(*option.default_value))
              : "default derived";
      std::printf("    --%s (%s, %s): %s\n", option.name.c_str(),
                  OptionTypeName(option.type), default_text.c_str(),
                  option.help.c_str());
    }
  }
  return absl::OkStatus();
}

absl::Status Run(const std::vector<std::string>& args) {
  if (args.empty() || args[0] == "help" || args[0] == "--help" || args[0] == "-h") {
    std::printf("%s", kUsage);
    return absl::OkStatus();
  }
  if (args[0] == "attention") {
    if (args.size() == 2 && args[1] == "list") return AttentionList();
    return absl::InvalidArgumentError("usage: ftx attention list");
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown command \"", args[0], "\"; run 'ftx help'"));
}

}  // namespace
}  // namespace ftx

int main(int argc, char** argv) {
  const std::vector<std::string> args(argv + 1, argv + argc);
  const absl::Status status = ftx::Run(args);
  if (!status.ok()) {
    std::fprintf(stderr, "ftx: %s\n", std::string(status.message()).c_str());
    return 2;
  }
  return 0;
}
