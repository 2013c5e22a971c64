#include "models/ft_builders.h"

#include <utility>
#include <variant>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "attention/builder.h"
#include "kernels/base/status_macros.h"
#include "nlohmann/json.hpp"

namespace ftx {
namespace {

std::string Describe(const OptionValue& value) {
  if (std::holds_alternative<std::string>(value)) {
    return absl::StrCat("\"", std::get<std::string>(value), "\"");
  }
  return OptionValueToString(value);
}

}  // namespace

FtTransformerBuilderBase::FtTransformerBuilderBase(
    const AttentionRegistry& registry, const char* class_name, bool decoder,
    bool recurrent)
    : registry_(&registry),
      class_name_(class_name),
      decoder_(decoder),
      recurrent_(recurrent) {}

absl::Status FtTransformerBuilderBase::Error(absl::string_view keyword,
                                             absl::string_view message) const {
  return absl::InvalidArgumentError(
      absl::StrCat(class_name_, ": ", keyword, " ", message));
}

absl::Status FtTransformerBuilderBase::SetPositive(absl::string_view keyword,
                                                   int64_t value,
                                                   int64_t& target) {
  if (value < 1) {
    return Error(keyword, absl::StrCat("must be >= 1, got ", value));
  }
  target = value;
  return absl::OkStatus();
}

absl::Status FtTransformerBuilderBase::SetNLayers(int64_t value) {
  return SetPositive("n_layers", value, n_layers_);
}
absl::Status FtTransformerBuilderBase::SetNHeads(int64_t value) {
  return SetPositive("n_heads", value, n_heads_);
}
absl::Status FtTransformerBuilderBase::SetFeedForwardDimensions(int64_t value) {
  return SetPositive("feed_forward_dimensions", value, d_ff_);
}
absl::Status FtTransformerBuilderBase::SetQueryDimensions(int64_t value) {
  return SetPositive("query_dimensions", value, d_query_);
}
absl::Status FtTransformerBuilderBase::SetValueDimensions(int64_t value) {
  return SetPositive("value_dimensions", value, d_value_);
}
absl::Status FtTransformerBuilderBase::SetModelDimensions(int64_t value) {
  return SetPositive("model_dimensions", value, d_model_);
}

absl::Status FtTransformerBuilderBase::SetDropout(double value) {
  if (!(value >= 0.0 && value < 1.0)) {
    return Error("dropout", absl::StrCat("must be in [0, 1), got ", value));
  }
  dropout_ = value;
  return absl::OkStatus();
}

absl::Status FtTransformerBuilderBase::SetActivation(absl::string_view value) {
  if (value != "relu" && value != "gelu") {
    return Error(
        "activation",
        absl::StrCat("must be \"relu\" or \"gelu\", got \"", value, "\""));
  }
  activation_ = std::string(value);
  return absl::OkStatus();
}

absl::Status FtTransformerBuilderBase::CheckAttentionType(
    absl::string_view keyword, absl::string_view type, bool cross) const {
  if (type.empty()) return Error(keyword, "must name an attention, got \"\"");
  const std::vector<std::string> levels = absl::StrSplit(type, ':');
  for (size_t level = 0; level < levels.size(); ++level) {
    for (absl::string_view name : absl::StrSplit(levels[level], ',')) {
      const AttentionSpec* spec = registry_->Find(name);
      if (spec == nullptr) {
        return Error(
            keyword,
            absl::StrCat("\"", type, "\" is not an available ",
                         "attention type (unknown \"", name, "\"; registered: ",
                         absl::StrJoin(registry_->Names(), ", "), ")"));
      }
      if (recurrent_ && level == 0) {
        const bool has_form =
            cross ? static_cast<bool>(spec->recurrent_cross_factory)
                  : static_cast<bool>(spec->recurrent_factory);
        if (!has_form) {
          return Error(keyword, absl::StrCat("\"", name, "\" has no recurrent",
                                             cross ? " cross" : "", " form"));
        }
      }
    }
  }
  return absl::OkStatus();
}

absl::Status FtTransformerBuilderBase::SetAttentionOption(
    absl::string_view name, const OptionValue& value) {
  AttentionBuilder probe(*registry_);
  const absl::Status status = probe.Set(name, value);
  if (!status.ok()) {
    return Error(name,
                 absl::StrCat("is neither a builder parameter nor a valid "
                              "attention parameter: ",
                              status.message()));
  }
  attention_options_[std::string(name)] = value;
  return absl::OkStatus();
}

absl::Status FtTransformerBuilderBase::Set(absl::string_view name,
                                           const OptionValue& value) {
  const int64_t* as_int = std::get_if<int64_t>(&value);
  auto need_int = [&](absl::Status (FtTransformerBuilderBase::*setter)(
                      int64_t)) -> absl::Status {
    if (as_int == nullptr) {
      return Error(name,
                   absl::StrCat("must be an integer, got ", Describe(value)));
    }
    return (this->*setter)(*as_int);
  };
  auto need_positive = [&](int64_t& target) -> absl::Status {
    if (as_int == nullptr) {
      return Error(name,
                   absl::StrCat("must be an integer, got ", Describe(value)));
    }
    return SetPositive(name, *as_int, target);
  };
  auto need_string = [&]() -> absl::StatusOr<std::string> {
    const std::string* text = std::get_if<std::string>(&value);
    if (text == nullptr) {
      return Error(name,
                   absl::StrCat("must be a string, got ", Describe(value)));
    }
    return *text;
  };
  if (name == "n_layers")
    return need_int(&FtTransformerBuilderBase::SetNLayers);
  if (name == "n_heads") return need_int(&FtTransformerBuilderBase::SetNHeads);
  if (name == "feed_forward_dimensions") {
    return need_int(&FtTransformerBuilderBase::SetFeedForwardDimensions);
  }
  if (name == "query_dimensions") {
    // fast-transformers also gives it to the attention builder ("linear").
    return need_int(&FtTransformerBuilderBase::SetQueryDimensions);
  }
  if (name == "value_dimensions") {
    return need_int(&FtTransformerBuilderBase::SetValueDimensions);
  }
  if (name == "model_dimensions") {
    return need_int(&FtTransformerBuilderBase::SetModelDimensions);
  }
  if (name == "dropout") {
    if (const double* number = std::get_if<double>(&value)) {
      return SetDropout(*number);
    }
    if (as_int != nullptr) return SetDropout(static_cast<double>(*as_int));
    return Error(name, absl::StrCat("must be a number, got ", Describe(value)));
  }
  if (name == "activation") {
    FTX_ASSIGN_OR_RETURN(std::string text, need_string());
    return SetActivation(text);
  }
  if (name == "final_normalization") {
    const bool* flag = std::get_if<bool>(&value);
    if (flag == nullptr) {
      return Error(name,
                   absl::StrCat("must be a boolean, got ", Describe(value)));
    }
    SetFinalNormalization(*flag);
    return absl::OkStatus();
  }
  if (name == "seed") {
    if (as_int == nullptr || *as_int < 0) {
      return Error(name, absl::StrCat("must be a non-negative integer, got ",
                                      Describe(value)));
    }
    SetSeed(static_cast<uint64_t>(*as_int));
    return absl::OkStatus();
  }
  if (name == "event_dispatcher") {
    FTX_ASSIGN_OR_RETURN(std::string key, need_string());
    SetEventDispatcher(key);
    return absl::OkStatus();
  }
  const bool self_type =
      decoder_ ? name == "self_attention_type" : name == "attention_type";
  if (self_type || (decoder_ && name == "cross_attention_type")) {
    FTX_ASSIGN_OR_RETURN(std::string type, need_string());
    const bool cross = name == "cross_attention_type";
    FTX_RETURN_IF_ERROR(CheckAttentionType(name, type, cross));
    (cross ? cross_attention_type_ : attention_type_) = type;
    return absl::OkStatus();
  }
  if (decoder_) {
    if (name == "cross_n_heads") return need_positive(cross_n_heads_);
    if (name == "cross_query_dimensions") return need_positive(cross_d_query_);
    if (name == "cross_value_dimensions") return need_positive(cross_d_value_);
    if (name == "cross_model_dimensions") return need_positive(cross_d_model_);
  }
  return SetAttentionOption(name, value);
}

absl::Status FtTransformerBuilderBase::FromDictionary(absl::string_view json) {
  using Json = nlohmann::json;
  const Json root = Json::parse(json.begin(), json.end(), nullptr,
                                /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(class_name_, ": the dictionary must be a JSON object"));
  }
  for (const auto& [key, value] : root.items()) {
    OptionValue option;
    if (value.is_boolean()) {
      option = value.get<bool>();
    } else if (value.is_number_integer()) {
      option = value.get<int64_t>();
    } else if (value.is_number()) {
      option = value.get<double>();
    } else if (value.is_string()) {
      option = value.get<std::string>();
    } else if (value.is_null() && attention_options_.count(key) > 0) {
      attention_options_.erase(key);
      continue;
    } else {
      return Error(key, absl::StrCat("must be a boolean, number or string, "
                                     "got ",
                                     value.dump()));
    }
    FTX_RETURN_IF_ERROR(Set(key, option));
  }
  return absl::OkStatus();
}

FtTransformerConfig FtTransformerBuilderBase::Config() const {
  FtTransformerConfig c;
  c.n_layers = n_layers_;
  c.n_heads = n_heads_;
  c.d_model = model_dimensions();
  c.d_keys = d_query_;
  c.d_values = d_value_;
  c.d_ff = d_ff_;
  c.dropout = static_cast<float>(dropout_);
  c.activation = activation_ == "gelu" ? Activation::kGelu : Activation::kRelu;
  c.final_normalization = final_normalization_;
  c.attention_type = attention_type_;
  c.attention_options = attention_options_;
  c.seed = seed_;
  if (decoder_) {
    c.cross_attention_type = cross_attention_type_;
    c.cross_n_heads = cross_n_heads_ > 0 ? cross_n_heads_ : n_heads_;
    c.cross_d_keys = cross_d_query_ > 0 ? cross_d_query_ : d_query_;
    c.cross_d_values = cross_d_value_ > 0 ? cross_d_value_ : d_value_;
    c.memory_dim = cross_d_model_ > 0 ? cross_d_model_
                                      : c.cross_n_heads * c.cross_d_values;
  }
  return c;
}

absl::Status FtEncoderBuilderBase::SetAttentionType(absl::string_view type) {
  return Set("attention_type", std::string(type));
}

absl::Status FtDecoderBuilderBase::SetSelfAttentionType(
    absl::string_view type) {
  return Set("self_attention_type", std::string(type));
}
absl::Status FtDecoderBuilderBase::SetCrossAttentionType(
    absl::string_view type) {
  return Set("cross_attention_type", std::string(type));
}
absl::Status FtDecoderBuilderBase::SetCrossNHeads(int64_t value) {
  return Set("cross_n_heads", value);
}
absl::Status FtDecoderBuilderBase::SetCrossQueryDimensions(int64_t value) {
  return Set("cross_query_dimensions", value);
}
absl::Status FtDecoderBuilderBase::SetCrossValueDimensions(int64_t value) {
  return Set("cross_value_dimensions", value);
}
absl::Status FtDecoderBuilderBase::SetCrossModelDimensions(int64_t value) {
  return Set("cross_model_dimensions", value);
}

absl::StatusOr<std::unique_ptr<FtTransformerEncoder>>
TransformerEncoderBuilder::Get() const {
  return WithEvents(FtTransformerEncoder::Create(Config(), registry()));
}

absl::StatusOr<std::unique_ptr<FtRecurrentEncoder>>
RecurrentEncoderBuilder::Get() const {
  return WithEvents(FtRecurrentEncoder::Create(Config(), registry()));
}

absl::StatusOr<std::unique_ptr<FtTransformerDecoder>>
TransformerDecoderBuilder::Get() const {
  return WithEvents(FtTransformerDecoder::Create(Config(), registry()));
}

absl::StatusOr<std::unique_ptr<FtRecurrentDecoder>>
RecurrentDecoderBuilder::Get() const {
  return WithEvents(FtRecurrentDecoder::Create(Config(), registry()));
}

}  // namespace ftx
