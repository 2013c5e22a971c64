// fast-transformers 0.4.0 builders (builders/transformer_builders.py,
// builders/base.py) over ftx's FtTransformerEncoder / Decoder and their
// recurrent twins (models/ft_transformers.h): parameters are set by
// fast-transformers' keyword names, one at a time or from a JSON dictionary
// (from_dictionary / from_kwargs), then Get() builds a model. A builder can be
// changed and Get() called again.
//
// Keywords and defaults (fast-transformers' BaseTransformerBuilder):
//   n_layers 4, n_heads 4, feed_forward_dimensions 1024, query_dimensions 64
//   (per head), value_dimensions 64 (per head), model_dimensions
//   (default value_dimensions * n_heads), dropout 0.1, activation "relu"
//   ("relu" or "gelu"), final_normalization true;
//   encoders: attention_type "full";
//   decoders: self_attention_type "full", cross_attention_type "full",
//   cross_n_heads, cross_query_dimensions, cross_value_dimensions (default
//   the self-attention values), cross_model_dimensions (the memory width,
//   default cross_n_heads * cross_value_dimensions);
//   event_dispatcher "" (a string naming a shared dispatcher,
//   FtEventDispatcher::Get(key) in models/ft_events.h, "" the default one, as
//   fast-transformers' EventDispatcher.get; SetEventDispatcher also takes a
//   dispatcher object) is given to every built model (its SetEventDispatcher);
//   ftx only: seed (parameter initialisation, default 0).
// model_dimensions and the cross_* keywords are those of fast-transformers'
// GitHub HEAD (2ad36b9); the 0.4.0 release on PyPI lacks them (its d_model is
// always value_dimensions * n_heads and its cross-attention copies the
// self-attention sizes), which is what the defaults reproduce.
// Any other keyword is an attention option (attention/registry.h) checked
// against every registered mechanism and passed to the attention builders
// (both of a decoder), as fast-transformers forwards unknown attributes;
// query_dimensions also reaches mechanisms that declare it ("linear").
// Attention types are registry names or compositions ("conditional-full:
// linear"); recurrent builders need a recurrent form (and a recurrent cross
// form for cross_attention_type).
//
// Errors are absl::Status (fast-transformers raises ValueError /
// AttributeError): InvalidArgument naming the keyword and the bad value.
//
// Example:
//   TransformerEncoderBuilder builder(registry);
//   FTX_RETURN_IF_ERROR(builder.FromDictionary(
//       R"({"n_layers": 2, "attention_type": "linear"})"));
//   FTX_ASSIGN_OR_RETURN(std::unique_ptr<FtTransformerEncoder> encoder,
//                        builder.Get());
#ifndef FTX_MODELS_FT_BUILDERS_H_
#define FTX_MODELS_FT_BUILDERS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "attention/registry.h"
#include "models/ft_events.h"
#include "models/ft_transformers.h"

namespace ftx {

// The parameters shared by the four builders.
class FtTransformerBuilderBase {
 public:
  // Sets keyword `name` (see the top of this file); InvalidArgument naming it
  // for an unknown keyword, a wrongly typed value or a value out of range.
  absl::Status Set(absl::string_view name, const OptionValue& value);
  // Sets every key of a JSON object in turn (booleans, integers, numbers and
  // strings; null resets an attention option to its default).
  // InvalidArgument naming the first bad key; keys before it stay set.
  absl::Status FromDictionary(absl::string_view json);

  absl::Status SetNLayers(int64_t value);
  absl::Status SetNHeads(int64_t value);
  absl::Status SetFeedForwardDimensions(int64_t value);
  absl::Status SetQueryDimensions(int64_t value);
  absl::Status SetValueDimensions(int64_t value);
  absl::Status SetModelDimensions(int64_t value);
  absl::Status SetDropout(double value);
  absl::Status SetActivation(absl::string_view value);
  void SetFinalNormalization(bool value) { final_normalization_ = value; }
  void SetSeed(uint64_t value) { seed_ = value; }
  // event_dispatcher: the shared dispatcher named `key` (FtEventDispatcher::
  // Get(key)), or a given one (a null one builds models without events).
  void SetEventDispatcher(absl::string_view key) {
    event_dispatcher_ = FtEventDispatcher::Get(key);
  }
  void SetEventDispatcher(std::shared_ptr<FtEventDispatcher> dispatcher) {
    event_dispatcher_ = std::move(dispatcher);
  }

  int64_t n_layers() const { return n_layers_; }
  int64_t n_heads() const { return n_heads_; }
  int64_t feed_forward_dimensions() const { return d_ff_; }
  int64_t query_dimensions() const { return d_query_; }
  int64_t value_dimensions() const { return d_value_; }
  int64_t model_dimensions() const {
    return d_model_ > 0 ? d_model_ : d_value_ * n_heads_;
  }
  double dropout() const { return dropout_; }
  const std::string& activation() const { return activation_; }
  bool final_normalization() const { return final_normalization_; }
  const std::shared_ptr<FtEventDispatcher>& event_dispatcher() const {
    return event_dispatcher_;
  }
  const std::map<std::string, OptionValue>& attention_options() const {
    return attention_options_;
  }

  // The resolved model configuration.
  FtTransformerConfig Config() const;

 protected:
  FtTransformerBuilderBase(const AttentionRegistry& registry,
                           const char* class_name, bool decoder,
                           bool recurrent);

  const AttentionRegistry& registry() const { return *registry_; }
  // InvalidArgument unless `type` names registered mechanisms with the
  // needed (recurrent / recurrent cross) form.
  absl::Status CheckAttentionType(absl::string_view keyword,
                                  absl::string_view type, bool cross) const;
  absl::Status Error(absl::string_view keyword,
                     absl::string_view message) const;
  // `model` with this builder's event dispatcher.
  template <typename Model>
  absl::StatusOr<std::unique_ptr<Model>> WithEvents(
      absl::StatusOr<std::unique_ptr<Model>> model) const {
    if (model.ok()) (*model)->SetEventDispatcher(event_dispatcher_);
    return model;
  }

  std::string attention_type_ = "full";  // self_attention_type for decoders
  std::string cross_attention_type_ = "full";
  int64_t cross_n_heads_ = 0, cross_d_query_ = 0, cross_d_value_ = 0,
          cross_d_model_ = 0;

 private:
  absl::Status SetPositive(absl::string_view keyword, int64_t value,
                           int64_t& target);
  absl::Status SetAttentionOption(absl::string_view name,
                                  const OptionValue& value);

  const AttentionRegistry* registry_;
  const char* class_name_;
  bool decoder_;
  bool recurrent_;
  int64_t n_layers_ = 4;
  int64_t n_heads_ = 4;
  int64_t d_ff_ = 1024;
  int64_t d_query_ = 64;
  int64_t d_value_ = 64;
  int64_t d_model_ = 0;  // 0: value_dimensions * n_heads
  double dropout_ = 0.1;
  std::string activation_ = "relu";
  bool final_normalization_ = true;
  uint64_t seed_ = 0;
  std::shared_ptr<FtEventDispatcher> event_dispatcher_ =
      FtEventDispatcher::Get();
  std::map<std::string, OptionValue> attention_options_;
};

class FtEncoderBuilderBase : public FtTransformerBuilderBase {
 public:
  absl::Status SetAttentionType(absl::string_view type);
  const std::string& attention_type() const { return attention_type_; }

 protected:
  using FtTransformerBuilderBase::FtTransformerBuilderBase;
};

class FtDecoderBuilderBase : public FtTransformerBuilderBase {
 public:
  absl::Status SetSelfAttentionType(absl::string_view type);
  absl::Status SetCrossAttentionType(absl::string_view type);
  absl::Status SetCrossNHeads(int64_t value);
  absl::Status SetCrossQueryDimensions(int64_t value);
  absl::Status SetCrossValueDimensions(int64_t value);
  absl::Status SetCrossModelDimensions(int64_t value);

  const std::string& self_attention_type() const { return attention_type_; }
  const std::string& cross_attention_type() const {
    return cross_attention_type_;
  }
  int64_t cross_n_heads() const {
    return cross_n_heads_ > 0 ? cross_n_heads_ : n_heads();
  }
  int64_t cross_query_dimensions() const {
    return cross_d_query_ > 0 ? cross_d_query_ : query_dimensions();
  }
  int64_t cross_value_dimensions() const {
    return cross_d_value_ > 0 ? cross_d_value_ : value_dimensions();
  }
  int64_t cross_model_dimensions() const {
    return cross_d_model_ > 0 ? cross_d_model_
                              : cross_n_heads() * cross_value_dimensions();
  }

 protected:
  using FtTransformerBuilderBase::FtTransformerBuilderBase;
};

class TransformerEncoderBuilder : public FtEncoderBuilderBase {
 public:
  explicit TransformerEncoderBuilder(const AttentionRegistry& registry)
      : FtEncoderBuilderBase(registry, "TransformerEncoderBuilder",
                             /*decoder=*/false, /*recurrent=*/false) {}
  absl::StatusOr<std::unique_ptr<FtTransformerEncoder>> Get() const;
};

class RecurrentEncoderBuilder : public FtEncoderBuilderBase {
 public:
  explicit RecurrentEncoderBuilder(const AttentionRegistry& registry)
      : FtEncoderBuilderBase(registry, "RecurrentEncoderBuilder",
                             /*decoder=*/false, /*recurrent=*/true) {}
  absl::StatusOr<std::unique_ptr<FtRecurrentEncoder>> Get() const;
};

class TransformerDecoderBuilder : public FtDecoderBuilderBase {
 public:
  explicit TransformerDecoderBuilder(const AttentionRegistry& registry)
      : FtDecoderBuilderBase(registry, "TransformerDecoderBuilder",
                             /*decoder=*/true, /*recurrent=*/false) {}
  absl::StatusOr<std::unique_ptr<FtTransformerDecoder>> Get() const;
};

class RecurrentDecoderBuilder : public FtDecoderBuilderBase {
 public:
  explicit RecurrentDecoderBuilder(const AttentionRegistry& registry)
      : FtDecoderBuilderBase(registry, "RecurrentDecoderBuilder",
                             /*decoder=*/true, /*recurrent=*/true) {}
  absl::StatusOr<std::unique_ptr<FtRecurrentDecoder>> Get() const;
};

}  // namespace ftx

#endif  // FTX_MODELS_FT_BUILDERS_H_
