// Registers every attention mechanism ftx ships under its fast-transformers
// name
// ("full", "linear", ...), with the registry defaults of fast-transformers
// 0.4.0.
#ifndef FTX_ATTENTION_BUILTIN_H_
#define FTX_ATTENTION_BUILTIN_H_

#include "absl/status/status.h"
#include "attention/registry.h"

namespace ftx {

absl::Status RegisterBuiltinAttentions(AttentionRegistry& registry);

}  // namespace ftx

#endif  // FTX_ATTENTION_BUILTIN_H_
