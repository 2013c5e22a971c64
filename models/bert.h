// BERT (Devlin et al. 2019) as Hugging Face transformers 4.46.3's BertModel,
// built on ftx's fast-transformers encoder (models/ft_transformers.h), in the
// spirit of fast-transformers' HugginfaceBertEncoderMapper: the BERT layer is
// fast-transformers' post-norm encoder layer with biased projections, softmax
// attention at temperature 1/sqrt(C / H), no inner feed-forward dropout and no
// final norm.
//
//   embeddings:  e[n, l] = word[input_ids[n, l]] + position[l]
//                          + token_type[token_type_ids[n, l]]
//                x = dropout(LayerNorm(e))                        eps below
//   encoder:     per layer  x = LayerNorm(x + dropout(Attention(x)))
//                           x = LayerNorm(x + dropout(W2 act(W1 x + b1) + b2))
//                last_hidden_state = x [N, L, C]
//   pooler:      pooler_output = tanh(W_p x[:, 0] + b_p) [N, C]  (optional)
//
// act is gelu (erf form, HF "gelu") or relu; every LayerNorm, the embeddings'
// included, has eps layer_norm_eps (HF default 1e-12). The attention mask
// masks keys only (HF adds a large negative number to the scores of padded
// keys): padded query rows still produce outputs, as in HF, and ftx's full
// attention ignores query lengths, so all rows match. Positions are 0..L-1
// (HF's default position_ids). The word embedding row pad_token_id gets no
// gradient (nn.Embedding(padding_idx=pad_token_id)).
//
// Parameter names (C = hidden_size, F = intermediate_size, V = vocab_size,
// P = max_position_embeddings, T = type_vocab_size):
//   embeddings.word_embeddings.weight [V, C]
//   embeddings.position_embeddings.weight [P, C]
//   embeddings.token_type_embeddings.weight [T, C]
//   embeddings.LayerNorm.{weight,bias} [C]
//   layers.{i}.*  the FtTransformerEncoder's (fast-transformers) names
//   pooler.dense.weight [C, C], pooler.dense.bias [C]   add_pooling_layer
// models/bert_state_dict.h maps them to HF's state_dict keys. InitParams
// follows HF's _init_weights: Linear weights and embeddings
// N(0, initializer_range^2), biases 0, the padding row 0, LayerNorm 1 / 0.
//
// Gradient convention: Backward accumulates every parameter gradient (+=);
// the inputs are token ids, so there is no input gradient. CPU contexts only
// (Unimplemented otherwise).
//
// Example:
//   FTX_ASSIGN_OR_RETURN(BertConfig config, BertConfigFromJson(json));
//   FTX_ASSIGN_OR_RETURN(auto bert, BertModel::Create(config));
//   FTX_ASSIGN_OR_RETURN(ParamStore store,
//                        ParamStore::Create(bert->ParamShapes()));
//   FTX_RETURN_IF_ERROR(bert->Forward(ctx, store, {.input_ids = ids},
//                                     hidden, pooled, true));
//   FTX_RETURN_IF_ERROR(bert->Backward(ctx, store, d_hidden, d_pooled));
#ifndef FTX_MODELS_BERT_H_
#define FTX_MODELS_BERT_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "attention/attention.h"
#include "attention/mask.h"
#include "attention/registry.h"
#include "kernels/activation/activation.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor.h"
#include "kernels/base/tensor_view.h"
#include "layers/layernorm.h"
#include "models/ft_transformers.h"
#include "models/param_store.h"

namespace ftx {

// HF BertConfig's fields (same names and defaults) plus BertModel's
// add_pooling_layer and ftx's init seed.
struct BertConfig {
  int64_t vocab_size = 30522;  // V
  int64_t hidden_size = 768;   // C
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 12;           // H, dividing C
  int64_t intermediate_size = 3072;           // F
  Activation hidden_act = Activation::kGelu;  // kGelu or kRelu
  int64_t max_position_embeddings = 512;      // P
  int64_t type_vocab_size = 2;                // T
  float layer_norm_eps = 1e-12f;
  float hidden_dropout_prob = 0.1f;           // embeddings and residuals
  float attention_probs_dropout_prob = 0.1f;  // attention weights
  float initializer_range = 0.02f;
  int64_t pad_token_id = 0;  // in [0, V)
  bool add_pooling_layer = true;
  uint64_t seed = 0;  // InitParams
};

// InvalidArgument naming the first bad field.
absl::Status ValidateBertConfig(const BertConfig& config);

// Reads an HF config.json (models/configs/bert_tiny.json). Keys read:
// vocab_size, hidden_size, num_hidden_layers, num_attention_heads,
// intermediate_size, hidden_act ("gelu" | "relu"), max_position_embeddings,
// type_vocab_size, layer_norm_eps, hidden_dropout_prob,
// attention_probs_dropout_prob, initializer_range, pad_token_id, plus ftx's
// add_pooling_layer and seed. HF's bookkeeping keys that do not change the
// encoder (architectures, transformers_version, torch_dtype, use_cache,
// classifier_dropout, gradient_checkpointing) are accepted and ignored;
// model_type must be "bert" and position_embedding_type "absolute". Any other
// key, a wrong type or malformed JSON is InvalidArgument naming the key. The
// result is not validated.
absl::StatusOr<BertConfig> BertConfigFromJson(absl::string_view json);

// The FtTransformerEncoder config of BERT's encoder (full attention, d_keys =
// d_values = C / H, no final norm, no feed-forward hidden dropout).
FtTransformerConfig BertEncoderConfig(const BertConfig& config);

struct BertInputs {
  TensorView<const int32_t> input_ids;       // [N, L], each in [0, V)
  TensorView<const int32_t> token_type_ids;  // [N, L] in [0, T), or empty: 0
  // The keys to attend, at most one of: lengths [N] (each in [1, L]) or HF's
  // attention_mask [N, L] (1 = attend, 0 = padding; every row ones then
  // zeros, at least one 1). Neither: every position.
  LengthMask lengths;
  TensorView<const int32_t> attention_mask;
  bool training = false;  // dropout
  uint64_t seed = 0;      // dropout masks
};

class BertModel {
 public:
  // InvalidArgument for a bad config.
  static absl::StatusOr<std::unique_ptr<BertModel>> Create(
      const BertConfig& config);

  const BertConfig& config() const { return config_; }
  FtTransformerEncoder& encoder() { return *encoder_; }

  std::vector<ParamShape> ParamShapes() const;
  absl::Status InitParams(const Context& ctx, ParamStore& store) const;

  // hidden: contiguous [N, L, C] (last_hidden_state); pooled: [N, C]
  // (pooler_output) or empty to skip; needs add_pooling_layer when given.
  // InvalidArgument for bad shapes, ids out of range, L > P or a bad mask.
  absl::Status Forward(const Context& ctx, ParamStore& store,
                       const BertInputs& inputs, TensorView<float> hidden,
                       TensorView<float> pooled, bool save_for_backward);
  // d_hidden: [N, L, C]; d_pooled: [N, C] or empty (zero). Needs a saving
  // Forward just before; parameter gradients (+=).
  absl::Status Backward(const Context& ctx, ParamStore& store,
                        TensorView<const float> d_hidden,
                        TensorView<const float> d_pooled);

 private:
  BertModel(const BertConfig& config, LayerNormLayer norm)
      : config_(config), norm_(norm) {}

  // Checks the inputs and returns the key lengths they describe.
  absl::StatusOr<LengthMask> CheckInputs(const BertInputs& inputs) const;

  BertConfig config_;
  AttentionRegistry registry_;
  std::unique_ptr<FtTransformerEncoder> encoder_;
  LayerNormLayer norm_;  // embeddings.LayerNorm
  // Forward state: ids, token types, the embedding sum (LayerNorm input)
  // [N, L, C], the encoder input [N, L, C], the pooler input x[:, 0] and its
  // pre-activation [N, C].
  std::vector<int32_t> ids_, types_;
  int64_t batch_ = 0, length_ = 0;
  Tensor sum_, embedded_, first_, pre_pool_;
  LayerNormCache norm_cache_;
  bool training_ = false;
  uint64_t seed_ = 0;
  bool pooled_ = false;
  bool saved_ = false;
  Tensor d_total_, d_embedded_, d_first_, d_pre_pool_;
};

}  // namespace ftx

#endif  // FTX_MODELS_BERT_H_
