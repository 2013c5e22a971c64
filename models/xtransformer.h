// An encoder-decoder model, x-transformers' XTransformer (SEMANTICS.md 6.1):
//
//   enc    = encoder(src, mask = src_lengths, return_embeddings)  [B, S, C_enc]
//   logits = decoder(tgt, context = enc, context_mask = src_lengths)
//                                                                [B, T, V_dec]
//
// Both halves are TransformerWrappers (models/transformer.h). The encoder is
// an Encoder (causal = false); the decoder a Decoder(cross_attend = True):
// XTransformer forces decoder.causal and decoder.cross_attend on and sets
// decoder.context_dim to encoder.dim, so the two halves may have different
// widths (x-transformers shares one `dim`). Padded source positions
// (t >= src_lengths[b]) are masked as keys in the encoder's self-attention
// and in the decoder's cross-attention, so they do not affect the logits.
// XTransformer.forward's loss (the AutoregressiveWrapper shift) is left to the
// caller: Forward returns the decoder's logits for every target position.
//
// Parameters: ParamShapes() lists the encoder's parameters prefixed
// "encoder." and the decoder's prefixed "decoder." (x-transformers' state_dict
// names of the two halves, e.g. "encoder.token_emb.weight",
// "decoder.attn_layers.layers.1.cross_attn.key_projection.weight"). A
// TransformerWrapper reads its parameters under fixed names, so each half
// keeps them in its own ParamStore: XTransformerStore holds the two, and its
// ForEachParam presents them under the prefixed names.
//
// Not supported: tie_token_emb (x-transformers' `decoder.token_emb =
// encoder.token_emb`) would need one tensor in two ParamStores; Create
// returns Unimplemented for it. src_attn_mask is not available either.
// Encoder memory tokens (x-transformers enc_num_memory_tokens) are the
// encoder config's num_memory_tokens; they are stripped from the context.
//
// Gradient convention: Backward accumulates every parameter gradient (+=).
//
// Example:
//   FTX_ASSIGN_OR_RETURN(auto model, XTransformer::Create(config, registry));
//   FTX_ASSIGN_OR_RETURN(XTransformerStore store, model->CreateStore());
//   FTX_RETURN_IF_ERROR(model->InitParams(ctx, store));
//   FTX_RETURN_IF_ERROR(model->Forward(ctx, store, {.src = src, .tgt = tgt},
//                                      logits, /*save_for_backward=*/true));
//   FTX_RETURN_IF_ERROR(model->Backward(ctx, store, d_logits));
//   FTX_ASSIGN_OR_RETURN(auto tokens, GenerateWithSource(ctx, *model, store,
//                                         src, src_lengths, prompts, lengths,
//                                         options));
#ifndef FTX_MODELS_XTRANSFORMER_H_
#define FTX_MODELS_XTRANSFORMER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "attention/attention.h"
#include "attention/mask.h"
#include "attention/registry.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor.h"
#include "kernels/base/tensor_view.h"
#include "models/generate.h"
#include "models/param_store.h"
#include "models/transformer.h"

namespace ftx {

struct XTransformerConfig {
  TransformerConfig encoder;   // enc_*: causal and cross_attend must be false
  TransformerConfig decoder;   // dec_*: causal, cross_attend and context_dim
                               // are set by XTransformer
  bool tie_token_emb = false;  // Unimplemented (see above)
};

// InvalidArgument naming the first bad field ("XTransformerConfig.encoder:
// TransformerConfig.heads must be >= 1, got 0"); Unimplemented for
// tie_token_emb. Checks the config as given (before the decoder's fields are
// forced).
absl::Status ValidateXTransformerConfig(const XTransformerConfig& config);

// Reads a config from a JSON object with x-transformers' XTransformer keyword
// names (models/configs/enc_dec.json): "dim" (both halves' width),
// "tie_token_emb", and every other key prefixed "enc_" or "dec_", passed
// without the prefix to the half's TransformerConfigFromJson
// ("enc_num_tokens", "enc_depth", "dec_max_seq_len", "dec_ff_glu", ...;
// "enc_dim" / "dec_dim" override "dim", an ftx extension). ftx only: "seed"
// initialises the encoder with seed and the decoder with seed + 1 unless
// "enc_seed" / "dec_seed" are given. InvalidArgument naming the key for
// malformed JSON, unknown keys (without an enc_ / dec_ prefix, or unknown to
// TransformerConfigFromJson after it) or wrongly typed values; the result is
// not validated (ValidateXTransformerConfig does that).
absl::StatusOr<XTransformerConfig> XTransformerConfigFromJson(
    absl::string_view json);

// The parameters of both halves, each in its own ParamStore.
struct XTransformerStore {
  ParamStore encoder;
  ParamStore decoder;

  int64_t NumParams() const {
    return encoder.NumParams() + decoder.NumParams();
  }
  void ZeroGrads() {
    encoder.ZeroGrads();
    decoder.ZeroGrads();
  }
  // fn(ParamSlot) for every encoder parameter, then every decoder parameter,
  // named "encoder." / "decoder." + the half's name.
  template <class Fn>
  void ForEachParam(Fn&& fn) {
    ForEachPrefixed("encoder.", encoder, fn);
    ForEachPrefixed("decoder.", decoder, fn);
  }

 private:
  template <class Fn>
  static void ForEachPrefixed(const char* prefix, ParamStore& store, Fn& fn) {
    store.ForEachParam([&](ParamSlot slot) {
      const std::string name = prefix + slot.name;
      fn(ParamSlot{name, slot.value, slot.grad, slot.first_moment,
                   slot.second_moment, slot.trainable});
    });
  }
};

// Per-call inputs.
struct XTransformerInputs {
  TensorView<const int32_t> src;  // [B, S], each in [0, encoder.num_tokens)
  LengthMask src_lengths;         // [B] valid source tokens, or empty
  TensorView<const int32_t> tgt;  // [B, T], each in [0, decoder.num_tokens)
  LengthMask tgt_lengths;         // [B] or empty
  bool training = false;          // dropout
  uint64_t seed = 0;  // dropout masks: encoder seed, decoder seed + 1
};

class XTransformer {
 public:
  // ValidateXTransformerConfig's errors, or those of building either half.
  static absl::StatusOr<std::unique_ptr<XTransformer>> Create(
      const XTransformerConfig& config, const AttentionRegistry& registry);

  // The configs of the halves as built (the decoder's fields forced).
  const TransformerConfig& encoder_config() const { return encoder_->config(); }
  const TransformerConfig& decoder_config() const { return decoder_->config(); }
  TransformerWrapper& encoder() { return *encoder_; }
  TransformerWrapper& decoder() { return *decoder_; }

  // "encoder." + encoder parameters, then "decoder." + decoder parameters.
  std::vector<ParamShape> ParamShapes() const;
  // Zero-initialised stores of both halves.
  absl::StatusOr<XTransformerStore> CreateStore() const;
  // Each half from its own config.seed.
  absl::Status InitParams(const Context& ctx, XTransformerStore& store) const;

  // The encoder's output for `src`: encoded [B, S, encoder.dim], contiguous.
  absl::Status Encode(const Context& ctx, XTransformerStore& store,
                      TensorView<const int32_t> src,
                      const LengthMask& src_lengths, TensorView<float> encoded);

  // logits: [B, T, decoder.num_tokens], contiguous. InvalidArgument for
  // different batch sizes of src and tgt, and the halves' input errors
  // (lengths beyond max_seq_len, tokens out of range, bad shapes).
  absl::Status Forward(const Context& ctx, XTransformerStore& store,
                       const XTransformerInputs& inputs,
                       TensorView<float> logits, bool save_for_backward);
  // d_logits: Forward's logits shape. The decoder's backward gives the
  // gradient of the encoder output, which the encoder's backward takes.
  // Parameter gradients accumulate (+=). FailedPrecondition without a saving
  // Forward just before.
  absl::Status Backward(const Context& ctx, XTransformerStore& store,
                        TensorView<const float> d_logits);

 private:
  XTransformer(std::unique_ptr<TransformerWrapper> encoder,
               std::unique_ptr<TransformerWrapper> decoder)
      : encoder_(std::move(encoder)), decoder_(std::move(decoder)) {}

  std::unique_ptr<TransformerWrapper> encoder_;
  std::unique_ptr<TransformerWrapper> decoder_;
  // The encoder output of the last Forward [B, S, C_enc] (the decoder's
  // context, alive for Backward) and its gradient.
  Tensor encoded_, d_encoded_;
  bool saved_ = false;
};

// x-transformers' XTransformer.generate: encodes `src` [B, S] once, then
// decodes with Generate (models/generate.h) from `prompts` [B, P]
// (seq_out_start) with the encoder output as every step's cross-attention
// context, by re-running the decoder on the window (kAuto re-runs; kStep is
// InvalidArgument, the step form has no cross-attention). Errors of
// Generate and of the encoder are passed on.
absl::StatusOr<std::vector<std::vector<int32_t>>> GenerateWithSource(
    const Context& ctx, XTransformer& model, XTransformerStore& store,
    TensorView<const int32_t> src, const LengthMask& src_lengths,
    TensorView<const int32_t> prompts, const LengthMask& lengths,
    const GenerateOptions& options);

}  // namespace ftx

#endif  // FTX_MODELS_XTRANSFORMER_H_
