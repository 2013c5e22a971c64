// State-dict map of Hugging Face transformers 4.46.3's BertModel
// (models/state_dict_map.h) into ftx's BertModel (models/bert.h), the rules of
// fast-transformers' HugginfaceBertEncoderMapper extended to the embeddings
// and the pooler. HF key -> ftx name (i = layer):
//   embeddings.{word,position,token_type}_embeddings.weight,
//   embeddings.LayerNorm.*, pooler.dense.* -> the same name
//   encoder.layer.{i}.attention.self.{query,key,value}.*
//       -> layers.{i}.attention.{query,key,value}_projection.*
//   encoder.layer.{i}.attention.output.dense.*
//       -> layers.{i}.attention.out_projection.*
//   encoder.layer.{i}.attention.output.LayerNorm.*   -> layers.{i}.norm1.*
//   encoder.layer.{i}.intermediate.dense.*           -> layers.{i}.linear1.*
//   encoder.layer.{i}.output.dense.*                 -> layers.{i}.linear2.*
//   encoder.layer.{i}.output.LayerNorm.*             -> layers.{i}.norm2.*
// The buffer embeddings.position_ids (positions 0..P-1, written by older
// transformers releases) is ignored on import and not written on export.
// Every tensor has the same shape in both libraries. Checkpoints of the task
// models (BertForMaskedLM and friends) hold these keys under "bert." plus
// their heads; they need the prefix stripped first.
//
// Example:
//   FTX_ASSIGN_OR_RETURN(BertConfig config, BertConfigFromJson(config_json));
//   FTX_ASSIGN_OR_RETURN(StateDictMap map, BertStateDictMap(config));
//   FTX_RETURN_IF_ERROR(ImportStateDict(file, map, store));
#ifndef FTX_MODELS_BERT_STATE_DICT_H_
#define FTX_MODELS_BERT_STATE_DICT_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "models/bert.h"
#include "models/state_dict_map.h"

namespace ftx {

inline constexpr char kBertLibrary[] = "hf-bert";

// The map for `config` (ValidateBertConfig's errors otherwise).
absl::StatusOr<StateDictMap> BertStateDictMap(const BertConfig& config);

// HF's tensor shapes (equal to ftx's) for ExportStateDict.
absl::StatusOr<std::map<std::string, std::vector<int64_t>>> BertReferenceShapes(
    const BertConfig& config);

// Registers "hf-bert" for `ftx convert`; its JSON is an HF BERT config.json
// (BertConfigFromJson). AlreadyExists when registered twice.
absl::Status RegisterBertConverter(StateDictConverterRegistry& registry);

}  // namespace ftx

#endif  // FTX_MODELS_BERT_STATE_DICT_H_
