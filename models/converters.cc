#include "models/converters.h"

#include "kernels/base/status_macros.h"
#include "models/bert_state_dict.h"
#include "models/ft_state_dict.h"
#include "models/lat_state_dict.h"
#include "models/linformer_state_dict.h"
#include "models/performer_state_dict.h"
#include "models/x_state_dict.h"

namespace ftx {

absl::Status RegisterAllConverters(StateDictConverterRegistry& registry) {
  FTX_RETURN_IF_ERROR(RegisterXTransformersConverter(registry));
  FTX_RETURN_IF_ERROR(RegisterPerformerConverter(registry));
  FTX_RETURN_IF_ERROR(RegisterLatConverter(registry));
  FTX_RETURN_IF_ERROR(RegisterLinformerConverter(registry));
  FTX_RETURN_IF_ERROR(RegisterFastTransformersConverters(registry));
  FTX_RETURN_IF_ERROR(RegisterBertConverter(registry));
  return absl::OkStatus();
}

}  // namespace ftx
