// Every state-dict converter ftx ships (models/state_dict_map.h), registered
// by reference library name for `ftx convert`: x-transformers,
// performer-pytorch, linear-attention-transformer, linformer-pytorch,
// fast-transformers, torch.nn.TransformerEncoder and Hugging Face BERT.
#ifndef FTX_MODELS_CONVERTERS_H_
#define FTX_MODELS_CONVERTERS_H_

#include "absl/status/status.h"
#include "models/state_dict_map.h"

namespace ftx {

absl::Status RegisterAllConverters(StateDictConverterRegistry& registry);

}  // namespace ftx

#endif  // FTX_MODELS_CONVERTERS_H_
