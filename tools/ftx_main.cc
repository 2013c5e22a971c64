// The ftx command-line tool.
//
//   ftx attention list      every registered attention mechanism with its options
//   ftx inspect FILE        tensors (name, dtype, shape, bytes) and metadata of a
//                           safetensors file, sorted by name, with the parameter count
//
// Errors go to stderr with a non-zero exit status; nothing here aborts on user input.
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "attention/builtin.h"
#include "attention/registry.h"
#include "models/safetensors.h"

namespace ftx {
namespace {

constexpr char kUsage[] =
    "usage: ftx <command> [arguments]\n"
    "\n"
    "commands:\n"
    "  attention list    list every attention mechanism with its options and defaults\n"
    "  inspect FILE      list the tensors and metadata of a safetensors file\n"
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

absl::Status Inspect(const std::string& path) {
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path);
  if (!file.ok()) return file.status();
  std::printf("%s\n", path.c_str());
  if (!file->metadata().empty()) {
    std::printf("metadata:\n");
    for (const auto& [key, value] : file->metadata()) {
      std::printf("  %s: %s\n", absl::Utf8SafeCEscape(key).c_str(),
                  absl::Utf8SafeCEscape(value).c_str());
    }
  }
  int name_width = 4;
  int dtype_width = 5;
  int shape_width = 5;
  for (const SafetensorsEntry& entry : file->entries()) {
    name_width = std::max(name_width, static_cast<int>(entry.name.size()));
    dtype_width = std::max(dtype_width, static_cast<int>(entry.dtype.size()));
    shape_width = std::max(shape_width, static_cast<int>(entry.ShapeString().size()));
  }
  std::printf("tensors:\n  %-*s  %-*s  %-*s  %s\n", name_width, "name", dtype_width,
              "dtype", shape_width, "shape", "bytes");
  int64_t parameters = 0;
  int64_t bytes = 0;
  for (const SafetensorsEntry& entry : file->entries()) {
    std::printf("  %-*s  %-*s  %-*s  %lld\n", name_width, entry.name.c_str(), dtype_width,
                entry.dtype.c_str(), shape_width, entry.ShapeString().c_str(),
                static_cast<long long>(entry.NumBytes()));
    parameters += entry.NumElements();
    bytes += entry.NumBytes();
  }
  std::printf("%zu tensors, %lld parameters, %lld bytes\n", file->entries().size(),
              static_cast<long long>(parameters), static_cast<long long>(bytes));
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
  if (args[0] == "inspect") {
    if (args.size() == 2) return Inspect(args[1]);
    return absl::InvalidArgumentError("usage: ftx inspect FILE");
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
