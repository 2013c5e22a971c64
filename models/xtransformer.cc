#include "models/xtransformer.h"

#include <string>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"
#include "nlohmann/json.hpp"

namespace ftx {
namespace {

using Json = nlohmann::json;

absl::Status JsonKeyError(const std::string& key, absl::string_view message) {
  return absl::InvalidArgumentError(
      absl::StrCat("XTransformerConfig JSON: \"", key, "\": ", message));
}

// One half's keys (prefix stripped) read by TransformerConfigFromJson. Each
// key is read on its own first so that an error names the prefixed key.
absl::StatusOr<TransformerConfig> HalfFromJson(const Json& half,
                                               absl::string_view prefix) {
  for (const auto& [key, value] : half.items()) {
    Json single_key = Json::object();
    single_key[key] = value;
    const absl::StatusOr<TransformerConfig> single =
        TransformerConfigFromJson(single_key.dump());
    if (!single.ok()) {
      return JsonKeyError(absl::StrCat(prefix, key), single.status().message());
    }
  }
  return TransformerConfigFromJson(half.dump());
}

// The decoder config as built: a cross-attending Decoder over the encoder.
TransformerConfig DecoderConfig(const XTransformerConfig& config) {
  TransformerConfig decoder = config.decoder;
  decoder.causal = true;
  decoder.cross_attend = true;
  decoder.context_dim = config.encoder.dim;
  return decoder;
}

absl::Status Prefixed(const char* half, const absl::Status& status) {
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat("XTransformerConfig.", half,
                                                  ": ", status.message()));
}

// A contiguous [B, S, C] float buffer, reallocated when the shape changes.
absl::StatusOr<TensorView<float>> Buffer(Tensor& tensor, const Shape& shape) {
  if (!(tensor.shape() == shape)) {
    FTX_ASSIGN_OR_RETURN(tensor, Tensor::Create(DType::kF32, shape));
  }
  return tensor.view<float>();
}

}  // namespace

absl::StatusOr<XTransformerConfig> XTransformerConfigFromJson(
    absl::string_view json) {
  const Json root = Json::parse(json.begin(), json.end(), nullptr,
                                /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object()) {
    return absl::InvalidArgumentError(
        "XTransformerConfig JSON: expected a JSON object");
  }
  XTransformerConfig config;
  Json encoder = Json::object(), decoder = Json::object();
  for (const auto& [key, value] : root.items()) {
    if (key == "dim") {
      if (!value.is_number_integer())
        return JsonKeyError(key, "must be an integer");
      encoder.emplace("dim", value);
      decoder.emplace("dim", value);
    } else if (key == "tie_token_emb") {
      if (!value.is_boolean()) return JsonKeyError(key, "must be a boolean");
      config.tie_token_emb = value.get<bool>();
    } else if (key == "seed") {
      if (!value.is_number_unsigned()) {
        return JsonKeyError(key, "must be a non-negative integer");
      }
      encoder.emplace("seed", value.get<uint64_t>());
      decoder.emplace("seed", value.get<uint64_t>() + 1);
    } else if (absl::StartsWith(key, "enc_") && key.size() > 4) {
      encoder[key.substr(4)] = value;
    } else if (absl::StartsWith(key, "dec_") && key.size() > 4) {
      decoder[key.substr(4)] = value;
    } else {
      return JsonKeyError(key,
                          "unknown key (XTransformer takes dim, "
                          "tie_token_emb, seed and enc_* / dec_* keys)");
    }
  }
  FTX_ASSIGN_OR_RETURN(config.encoder, HalfFromJson(encoder, "enc_"));
  FTX_ASSIGN_OR_RETURN(config.decoder, HalfFromJson(decoder, "dec_"));
  return config;
}

absl::Status ValidateXTransformerConfig(const XTransformerConfig& config) {
  if (config.tie_token_emb) {
    return absl::UnimplementedError(
        "XTransformerConfig.tie_token_emb is not supported: the halves keep "
        "their parameters in separate ParamStores and cannot share "
        "token_emb.weight");
  }
  if (config.encoder.causal) {
    return absl::InvalidArgumentError(
        "XTransformerConfig.encoder.causal must be false (an Encoder)");
  }
  if (config.encoder.cross_attend) {
    return absl::InvalidArgumentError(
        "XTransformerConfig.encoder.cross_attend must be false");
  }
  FTX_RETURN_IF_ERROR(
      Prefixed("encoder", ValidateTransformerConfig(config.encoder,
                                                    /*require_wrapper=*/true)));
  if (config.decoder.context_dim != 0 &&
      config.decoder.context_dim != config.encoder.dim) {
    return absl::InvalidArgumentError(absl::StrCat(
        "XTransformerConfig.decoder.context_dim must be 0 or encoder.dim = ",
        config.encoder.dim, ", got ", config.decoder.context_dim));
  }
  return Prefixed("decoder",
                  ValidateTransformerConfig(DecoderConfig(config),
                                            /*require_wrapper=*/true));
}

absl::StatusOr<std::unique_ptr<XTransformer>> XTransformer::Create(
    const XTransformerConfig& config, const AttentionRegistry& registry) {
  FTX_RETURN_IF_ERROR(ValidateXTransformerConfig(config));
  auto encoder = TransformerWrapper::Create(config.encoder, registry);
  FTX_RETURN_IF_ERROR(Prefixed("encoder", encoder.status()));
  auto decoder = TransformerWrapper::Create(DecoderConfig(config), registry);
  FTX_RETURN_IF_ERROR(Prefixed("decoder", decoder.status()));
  return std::unique_ptr<XTransformer>(
      new XTransformer(std::move(encoder).value(), std::move(decoder).value()));
}

std::vector<ParamShape> XTransformer::ParamShapes() const {
  std::vector<ParamShape> shapes =
      WithPrefix("encoder.", encoder_->ParamShapes());
  for (ParamShape& shape : WithPrefix("decoder.", decoder_->ParamShapes())) {
    shapes.push_back(std::move(shape));
  }
  return shapes;
}

absl::StatusOr<XTransformerStore> XTransformer::CreateStore() const {
  FTX_ASSIGN_OR_RETURN(ParamStore encoder,
                       ParamStore::Create(encoder_->ParamShapes()));
  FTX_ASSIGN_OR_RETURN(ParamStore decoder,
                       ParamStore::Create(decoder_->ParamShapes()));
  return XTransformerStore{std::move(encoder), std::move(decoder)};
}

absl::Status XTransformer::InitParams(const Context& ctx,
                                      XTransformerStore& store) const {
  FTX_RETURN_IF_ERROR(encoder_->InitParams(ctx, store.encoder));
  return decoder_->InitParams(ctx, store.decoder);
}

absl::Status XTransformer::Encode(const Context& ctx, XTransformerStore& store,
                                  TensorView<const int32_t> src,
                                  const LengthMask& src_lengths,
                                  TensorView<float> encoded) {
  saved_ = false;
  TransformerInputs inputs;
  inputs.tokens = src;
  inputs.lengths = src_lengths;
  inputs.return_embeddings = true;
  return encoder_->Forward(ctx, store.encoder, inputs, encoded,
                           /*save_for_backward=*/false);
}

absl::Status XTransformer::Forward(const Context& ctx, XTransformerStore& store,
                                   const XTransformerInputs& inputs,
                                   TensorView<float> logits,
                                   bool save_for_backward) {
  saved_ = false;
  if (inputs.src.rank() != 2 || inputs.tgt.rank() != 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "XTransformer: src and tgt must be [B, S] and [B, T], got ",
        inputs.src.shape().ToString(), " and ", inputs.tgt.shape().ToString()));
  }
  if (inputs.src.dim(0) != inputs.tgt.dim(0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "XTransformer: src and tgt must have the same batch size, got ",
        inputs.src.dim(0), " and ", inputs.tgt.dim(0)));
  }
  FTX_ASSIGN_OR_RETURN(TensorView<float> encoded,
                       Buffer(encoded_, {inputs.src.dim(0), inputs.src.dim(1),
                                         encoder_->config().dim}));
  TransformerInputs encoder_inputs;
  encoder_inputs.tokens = inputs.src;
  encoder_inputs.lengths = inputs.src_lengths;
  encoder_inputs.return_embeddings = true;
  encoder_inputs.training = inputs.training;
  encoder_inputs.seed = inputs.seed;
  FTX_RETURN_IF_ERROR(encoder_->Forward(ctx, store.encoder, encoder_inputs,
                                        encoded, save_for_backward));
  TransformerInputs decoder_inputs;
  decoder_inputs.tokens = inputs.tgt;
  decoder_inputs.lengths = inputs.tgt_lengths;
  decoder_inputs.context = encoded;
  decoder_inputs.context_lengths = inputs.src_lengths;
  decoder_inputs.training = inputs.training;
  decoder_inputs.seed = inputs.seed + 1;
  FTX_RETURN_IF_ERROR(decoder_->Forward(ctx, store.decoder, decoder_inputs,
                                        logits, save_for_backward));
  saved_ = save_for_backward;
  return absl::OkStatus();
}

absl::Status XTransformer::Backward(const Context& ctx,
                                    XTransformerStore& store,
                                    TensorView<const float> d_logits) {
  if (!saved_) {
    return absl::FailedPreconditionError(
        "XTransformer::Backward needs a Forward with save_for_backward");
  }
  FTX_ASSIGN_OR_RETURN(TensorView<float> d_encoded,
                       Buffer(d_encoded_, encoded_.shape()));
  FTX_RETURN_IF_ERROR(
      decoder_->Backward(ctx, store.decoder, d_logits, d_encoded));
  return encoder_->Backward(ctx, store.encoder, d_encoded);
}

absl::StatusOr<std::vector<std::vector<int32_t>>> GenerateWithSource(
    const Context& ctx, XTransformer& model, XTransformerStore& store,
    TensorView<const int32_t> src, const LengthMask& src_lengths,
    TensorView<const int32_t> prompts, const LengthMask& lengths,
    const GenerateOptions& options) {
  if (src.rank() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("GenerateWithSource: src must be [B, S], got ",
                     src.shape().ToString()));
  }
  FTX_ASSIGN_OR_RETURN(
      Tensor encoded,
      Tensor::Create(DType::kF32,
                     {src.dim(0), src.dim(1), model.encoder_config().dim}));
  FTX_RETURN_IF_ERROR(
      model.Encode(ctx, store, src, src_lengths, encoded.view<float>()));
  GenerationSource source;
  source.context = encoded.view<float>();
  source.context_lengths = src_lengths;
  return Generate(ctx, model.decoder(), store.decoder, prompts, lengths,
                  options, source);
}

}  // namespace ftx
