// linformer-pytorch 0.19.3 (tatp22) models: the Linformer encoder stack, the
// LinformerLM language model and the LinformerEncDec sequence-to-sequence
// model (SEMANTICS.md section 5; Wang et al. 2020, "Linformer: Self-Attention
// with Linear Complexity").
//
// Linformer (x [B, n, C], n = input_size exactly), per depth index i:
//   x = LayerNorm(x + MHAttention_i(x))              post-norm Residual
//   x = LayerNorm(resample(x) + FeedForward_i(x))    include_ff
//   decoder_mode adds, per depth index:
//   x = LayerNorm(x + MHAttention_ctx_i(x, embeddings))   K, V from embeddings
//   x = LayerNorm(x + FeedForward_ctx_i(x))               include_ff
// MHAttention: per head h, Q_h = x Wq_h^T, K_h = x Wk_h^T, V_h = x Wv_h^T
// (Linear(channels, d, bias = False), d = dim_d or channels / nhead), then
// the "linformer" mechanism (attention/linformer.h: E, F projections along
// the sequence to k_i = max(1, dim_k - i k_reduce_by_layer), method
// learnable / convolution / no_params), the heads concatenated, w_o (or w_o_1
// then w_o_2 with w_o_intermediate_dim), dropout. FeedForward: w_1, act (gelu
// erf form or relu), dropout, w_2, dropout. resample is a Linear only where
// ff_intermediate changes the channel count (layer i reads ff_intermediate
// channels for i > 0 and writes them for i < depth - 1).
// Causal: the mechanism's (n, k_i) mask (not truly causal: linformer-pytorch
// issue 16), or the (n, n) lower triangle with full_attention. Quirk kept: in
// decoder_mode only the context attention is causal, the self-attention is
// not. Masks: input_lengths zero rows of K and V (input_mask), and
// embeddings_lengths zero rows of Q (embeddings_mask), in every attention.
//
// parameter_sharing: none (E and F per head per layer), headwise (E and F per
// layer), kv (one matrix per layer), layerwise (one matrix for every layer,
// head, E and F). The model owns every E / F in its ParamStore and binds
// views of them to the mechanisms (LinformerAttention::BindProjections), so
// the optimizer and checkpoints see them. no_params matrices are fixed, not
// parameters: the model holds them (FixedProjections).
//
// checkpoint_level: C1 wraps every sublayer in a RecomputeBlock
// (layers/recompute.h): its activations are recomputed in the backward. C2
// is linformer-pytorch's C1 plus one checkpoint per head; here the heads of
// a sublayer run in one mechanism call, so C2 recomputes exactly as C1.
// Unlike linformer-pytorch, masks and embeddings work with C1 / C2.
//
// Deliberate differences: layerwise sharing with k_reduce_by_layer > 0 is
// InvalidArgument (linformer-pytorch silently keeps dim_k in every layer);
// causal with k_reduce_by_layer builds each layer's (n, k_i) mask
// (linformer-pytorch fails on the shape mismatch). Dropout masks come from
// ftx's Philox streams, so training-mode outputs differ from PyTorch's.
//
// Parameter names are linformer-pytorch's state_dict keys, relative to the
// Linformer module ("seq.{s}." for the s-th sublayer in the order above):
//   seq.{s}.fn.heads.{h}.E.weight [k_i, n] (learnable) / [d, d, n / k_i]
//     (convolution), .E.bias [k_i] / [d]; F likewise
//   seq.{s}.fn.to_q.{h}.weight [d, C_in]; to_k, to_v likewise
//   seq.{s}.fn.w_o.weight [C_in, H d], .bias; or w_o_1 [w, H d], w_o_2
//   seq.{s}.fn.w_1.weight [dim_ff, C_in], .bias; fn.w_2 [C_out, dim_ff]
//   seq.{s}.resample.weight [C_out, C_in], .bias      ff_intermediate only
//   seq.{s}.norm.weight, .bias [C_out]
// A shared E / F appears in the ParamStore once, under its first state_dict
// key (headwise: heads.0.E / heads.0.F of the sublayer; kv: heads.0.E;
// layerwise: seq.0.fn.heads.0.E); its other keys are listed by
// SharedProjectionAliases. Initialisation as torch: Linear / Conv1d
// U(+-1/sqrt(fan_in)), learnable E / F xavier_normal, LayerNorm ones / zeros,
// nn.Embedding N(0, 1).
//
// LinformerLM: token_emb + [sin | cos] positions (base 1e5), dropout_tokens,
// Linformer (inside project_in / project_out Linears when emb_dim !=
// channels), to_logits (absent with return_emb); no final norm. Names:
// to_token_emb.weight [V, emb], linformer.* (or linformer.fn.*,
// linformer.project_in.*, linformer.project_out.*), to_logits.weight/bias.
// LinformerEncDec: encoder = LinformerLM(return_emb), decoder =
// LinformerLM(decoder_mode, causal) reading the encoder output as its
// embeddings; names encoder.*, decoder.*.
//
// Gradient convention: parameter gradients accumulate in the ParamStore (+=);
// input gradients are written (=).
//
// Example:
//   FTX_ASSIGN_OR_RETURN(auto lm, LinformerLM::Create(config));
//   FTX_ASSIGN_OR_RETURN(ParamStore store,
//   ParamStore::Create(lm->ParamShapes()));
//   FTX_RETURN_IF_ERROR(lm->InitParams(ctx, store));
//   FTX_RETURN_IF_ERROR(lm->Forward(ctx, store, {.tokens = tokens}, logits,
//                                   /*save_for_backward=*/true));
//   FTX_RETURN_IF_ERROR(lm->Backward(ctx, store, d_logits));
#ifndef FTX_MODELS_LINFORMER_H_
#define FTX_MODELS_LINFORMER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "attention/attention.h"
#include "attention/linformer.h"
#include "attention/mask.h"
#include "kernels/activation/activation.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor.h"
#include "kernels/base/tensor_view.h"
#include "layers/recompute.h"
#include "models/param_store.h"

namespace ftx {

enum class LinformerParameterSharing {
  kNone,
  kHeadwise,
  kKeyValue,
  kLayerwise
};
enum class LinformerCheckpointLevel { kC0, kC1, kC2 };

// linformer-pytorch Linformer's arguments and defaults (0 = None).
struct LinformerConfig {
  int64_t input_size = 0;  // n
  int64_t channels = 0;    // C
  int64_t dim_k = 0;       // k
  int64_t dim_ff = 256;
  int64_t dim_d = 0;  // d; 0: channels / nhead
  float dropout_ff = 0.15f;
  int64_t nhead = 4;
  int64_t depth = 1;
  float dropout = 0.1f;
  Activation activation = Activation::kGelu;  // kGelu or kRelu
  LinformerCheckpointLevel checkpoint_level = LinformerCheckpointLevel::kC0;
  LinformerParameterSharing parameter_sharing =
      LinformerParameterSharing::kLayerwise;
  int64_t k_reduce_by_layer = 0;
  bool full_attention = false;
  bool include_ff = true;
  int64_t w_o_intermediate_dim = 0;
  bool decoder_mode = false;
  bool causal = false;
  LinformerMethod method = LinformerMethod::kLearnable;
  int64_t ff_intermediate = 0;
  uint64_t seed = 0;  // initialisation
};

// InvalidArgument naming the first bad field.
absl::Status ValidateLinformerConfig(const LinformerConfig& config);

struct LinformerInputs {
  // [B, n, C]: decoder_mode only (the context attention's keys and values).
  TensorView<const float> embeddings;
  LengthMask input_lengths;       // [B] or empty: zero rows of K and V
  LengthMask embeddings_lengths;  // [B] or empty: zero rows of Q
  bool training = false;          // dropout
  uint64_t seed = 0;              // dropout masks
};

// A no_params projection: its name ("seq.0.fn.heads.0.E", as the reference
// attribute path) and the matrix in ftx layout [k, n] (linformer-pytorch's
// head.E, shape (n, k), transposed).
struct FixedProjection {
  std::string name;
  TensorView<float> matrix;
};

class Linformer {
 public:
  // InvalidArgument for a bad config.
  static absl::StatusOr<std::unique_ptr<Linformer>> Create(
      const LinformerConfig& config);
  ~Linformer();

  const LinformerConfig& config() const { return config_; }
  int64_t head_dim() const;  // d
  int64_t num_sublayers() const {
    return static_cast<int64_t>(sublayers_.size());
  }

  // Relative names (see the top of this file), in state_dict order.
  std::vector<ParamShape> ParamShapes() const;
  // (alias, parameter): the state_dict keys of shared E / F tensors that are
  // not ParamStore names, each with the ParamStore name it aliases.
  std::vector<std::pair<std::string, std::string>> SharedProjectionAliases()
      const;
  absl::Status InitParams(const Context& ctx, ParamStore& store,
                          absl::string_view prefix) const;
  // The fixed matrices of method no_params (empty otherwise), one per
  // distinct matrix, drawn N(0, 1/k) from config.seed; writable.
  std::vector<FixedProjection> FixedProjections();

  // x, y: [B, n, C] (y may not alias x). InvalidArgument for a length other
  // than input_size, bad shapes, embeddings without decoder_mode or missing
  // in decoder_mode.
  absl::Status Forward(const Context& ctx, ParamStore& store,
                       absl::string_view prefix, TensorView<const float> x,
                       const LinformerInputs& inputs, TensorView<float> y,
                       bool save_for_backward);
  // d_y, d_x: [B, n, C] (=); d_embeddings [B, n, C] (=) or empty to skip;
  // parameter gradients (+=). Needs a saving Forward just before whose x and
  // embeddings views are still alive.
  absl::Status Backward(const Context& ctx, ParamStore& store,
                        absl::string_view prefix, TensorView<const float> d_y,
                        TensorView<float> d_x,
                        TensorView<float> d_embeddings = {});

 private:
  class Sublayer;
  struct ProjectionSlot {
    std::string name;   // relative, e.g. "seq.0.fn.heads.0.E"
    int64_t owner = 0;  // sublayer listing it in ParamShapes
    Tensor fixed;       // no_params: the matrix [k, n]
  };
  explicit Linformer(const LinformerConfig& config);
  absl::Status Build();
  absl::Status Bind(ParamStore& store, absl::string_view prefix);

  LinformerConfig config_;
  std::vector<std::unique_ptr<Sublayer>> sublayers_;
  std::vector<std::unique_ptr<RecomputeBlock>> recompute_;
  std::vector<ProjectionSlot> slots_;
  // Forward state: the input of every sublayer and the output [B, n, C_s].
  std::vector<Tensor> activations_;
  std::vector<BlockCache> caches_;
  LinformerInputs last_inputs_;
  TensorView<const float> last_x_;
  bool saved_ = false;
  Tensor d_current_, d_next_;
};

// LinformerLM: Linformer's arguments (with LinformerLM's defaults, see
// LanguageModelStackDefaults) plus the wrapper's.
struct LinformerLMConfig {
  int64_t num_tokens = 0;  // V
  float dropout_tokens = 0.1f;
  int64_t emb_dim = 0;  // 0: channels; must be even (the sinusoid)
  bool return_emb = false;
  LinformerConfig linformer = LanguageModelStackDefaults();

  // Linformer's fields with LinformerLM's defaults: dim_k 64, dim_ff 1024,
  // dropout_ff 0.1, nhead 4, depth 2, dropout 0.05.
  static LinformerConfig LanguageModelStackDefaults();
};

absl::Status ValidateLinformerLMConfig(const LinformerLMConfig& config);

// Reads a config from a JSON object whose keys are LinformerLM's argument
// names (models/configs/linformer_lm.json): num_tokens, input_size,
// channels, dim_k, dim_ff, dim_d, dropout_ff, dropout_tokens, nhead, depth,
// ff_intermediate, dropout, activation ("gelu" | "relu"), checkpoint_level
// ("C0" | "C1" | "C2"), parameter_sharing ("none" | "headwise" | "kv" |
// "layerwise"), k_reduce_by_layer, full_attention, include_ff,
// w_o_intermediate_dim, emb_dim, return_emb, decoder_mode, causal, method
// ("learnable" | "convolution" | "no_params"), plus "seed"; integers may be
// null (None). InvalidArgument naming the key for malformed JSON, unknown
// keys or wrong types; the result is not validated.
absl::StatusOr<LinformerLMConfig> LinformerLMConfigFromJson(
    absl::string_view json);

struct LinformerLMInputs {
  TensorView<const int32_t> tokens;    // [B, n], each in [0, num_tokens)
  TensorView<const float> embeddings;  // [B, n, channels], decoder_mode only
  LengthMask input_lengths;
  LengthMask embeddings_lengths;
  bool training = false;
  uint64_t seed = 0;
};

class LinformerLM {
 public:
  static absl::StatusOr<std::unique_ptr<LinformerLM>> Create(
      const LinformerLMConfig& config);

  const LinformerLMConfig& config() const { return config_; }
  Linformer& linformer() { return *linformer_; }
  int64_t emb_dim() const;
  // The last axis of Forward's output: num_tokens, or emb_dim with
  // return_emb.
  int64_t output_dim() const;
  // The Linformer's parameters sit under this prefix ("linformer." or
  // "linformer.fn.").
  std::string linformer_prefix() const;

  std::vector<ParamShape> ParamShapes() const;
  std::vector<std::pair<std::string, std::string>> SharedProjectionAliases()
      const;
  absl::Status InitParams(const Context& ctx, ParamStore& store,
                          absl::string_view prefix = "") const;

  // out: [B, n, output_dim()]. InvalidArgument for a length other than
  // input_size, tokens out of range or bad shapes.
  absl::Status Forward(const Context& ctx, ParamStore& store,
                       const LinformerLMInputs& inputs, TensorView<float> out,
                       bool save_for_backward, absl::string_view prefix = "");
  // d_out: Forward's out shape; d_embeddings (=) or empty; parameter
  // gradients (+=).
  absl::Status Backward(const Context& ctx, ParamStore& store,
                        TensorView<const float> d_out,
                        TensorView<float> d_embeddings = {},
                        absl::string_view prefix = "");

 private:
  LinformerLM(const LinformerLMConfig& config,
              std::unique_ptr<Linformer> linformer)
      : config_(config), linformer_(std::move(linformer)) {}
  bool projects() const { return emb_dim() != config_.linformer.channels; }

  LinformerLMConfig config_;
  std::unique_ptr<Linformer> linformer_;
  std::vector<int32_t> tokens_;
  int64_t batch_ = 0;
  bool saved_ = false;
  LinformerLMInputs last_inputs_;
  // [B, n, emb] embedded, [B, n, C] projected in, [B, n, C] stack out,
  // [B, n, emb] hidden (stack or project_out output).
  Tensor embedded_, projected_in_, stack_out_, hidden_;
  Tensor d_hidden_, d_stack_out_, d_projected_in_, d_embedded_;
};

struct LinformerEncDecConfig {
  // return_emb is forced on.
  LinformerLMConfig encoder;
  // decoder_mode and causal are forced on. The encoder's output [B, n_enc,
  // emb_enc] is the decoder's embeddings, so n_enc must equal the decoder's
  // input_size and emb_enc its channels.
  LinformerLMConfig decoder;
};

class LinformerEncDec {
 public:
  static absl::StatusOr<std::unique_ptr<LinformerEncDec>> Create(
      const LinformerEncDecConfig& config);

  LinformerLM& encoder() { return *encoder_; }
  LinformerLM& decoder() { return *decoder_; }

  // "encoder.*" then "decoder.*".
  std::vector<ParamShape> ParamShapes() const;
  std::vector<std::pair<std::string, std::string>> SharedProjectionAliases()
      const;
  absl::Status InitParams(const Context& ctx, ParamStore& store) const;

  // source [B, n] encoder tokens; target [B, n] decoder tokens, or empty for
  // source (linformer-pytorch's y = None); logits [B, n, V_dec].
  absl::Status Forward(const Context& ctx, ParamStore& store,
                       TensorView<const int32_t> source,
                       TensorView<const int32_t> target,
                       TensorView<float> logits, bool save_for_backward,
                       bool training = false, uint64_t seed = 0);
  absl::Status Backward(const Context& ctx, ParamStore& store,
                        TensorView<const float> d_logits);

 private:
  LinformerEncDec(std::unique_ptr<LinformerLM> encoder,
                  std::unique_ptr<LinformerLM> decoder)
      : encoder_(std::move(encoder)), decoder_(std::move(decoder)) {}

  std::unique_ptr<LinformerLM> encoder_, decoder_;
  Tensor encoded_, d_encoded_;
};

}  // namespace ftx

#endif  // FTX_MODELS_LINFORMER_H_
