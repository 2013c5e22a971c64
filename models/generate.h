// Autoregressive generation from a TransformerWrapper language model: the
// generate() loops of performer-pytorch's and x-transformers' (0.26.6)
// AutoregressiveWrapper (SEMANTICS.md sections 3.4 and 6.6). One step for
// every unfinished sequence:
//
//   window = the last max_seq_len tokens of prompt + generated so far
//   logits = model(window)[last position]                      [V]
//   logits = RepetitionPenalty(logits)   (performer, before filtering)
//   logits = TopK -> TopP -> TopA        (each only when enabled)
//   token  = argmax(logits)                                   (greedy)
//          | sample from softmax(logits / temperature)        (otherwise)
//
// and a sequence stops after max_new_tokens tokens or right after it emits
// the eos token. Two ways to get the logits (GenerateOptions.decode):
//  - re-run: the model's whole forward is re-run on the window at every step
//    (O(T^2) per sequence), which is exact for every attention mechanism,
//    causal or not: the window starts at position 0, as the references' cut
//    `x[:, -max_seq_len:]` does;
//  - step: TransformerWrapper::Step (models/transformer.h) feeds each prompt
//    token once (prefill, one position per call; rows in lockstep, a shorter
//    prompt starts generating while longer ones still prefill), then one Step
//    per new token: O(T) per sequence for a KV cache, O(1) per token for
//    linear attention's running sums. It needs a decoder the model can step
//    (StepSupport) and every sequence to fit in max_seq_len (prompt +
//    max_new_tokens - 1 positions, as the window never slides then), where
//    its tokens are those of the re-run form up to float rounding.
// kAuto takes the step form when both hold, else re-runs.
//
// Filters (on one row of V logits; removed tokens become -inf):
//   TopK(k)            keeps the k largest logits (ties: the lower index
//                      wins). The references derive k from filter_thres:
//                      performer int((1 - thres) V), x-transformers
//                      ceil((1 - thres) V) (TopKFromThreshold).
//   TopP(p)            nucleus: sort by probability (softmax of the logits)
//                      descending, and remove every token whose preceding
//                      cumulative probability is > p, so the first token is
//                      always kept and so is the token that crosses p. The
//                      references take filter_thres = 1 - p (their
//                      thres = 0.9 is a nucleus of p = 0.1).
//   TopA(pow, ratio)   x-transformers' top_a: probs = softmax(logits),
//                      limit = max(probs)^pow * ratio; tokens with
//                      probs < limit are removed and, as in x-transformers,
//                      the kept logits all become 1 (so sampling is uniform
//                      over the kept tokens; quirk reproduced).
//   RepetitionPenalty  performer: the logits of tokens seen in the context
//                      are divided by theta (a negative logit therefore
//                      becomes more likely: reproduced, as in performer).
//
// Deliberate differences from the references:
//  - Performer's repetition context is `out[-ctx:]`, which slices the *batch*
//    dimension (the last ctx sequences) and penalises every token seen in
//    any of them, for every row (SEMANTICS.md 3.5 item 8). Here each
//    sequence uses its own last repetition_context tokens (prompt included).
//  - x-transformers' top_a takes max(probs) over the whole batch tensor; here
//    the maximum is per sequence.
//  - The references apply one filter_logits_fn; here TopK, TopP and TopA may
//    be combined, in that order (TopP then normalises over what TopK kept).
//  - A k of 0 from TopKFromThreshold (performer's int() with a small V)
//    would remove every token and give NaN probabilities there; it is raised
//    to 1 here.
//  - The references keep sampling every row until all rows have emitted eos
//    and then overwrite what follows the first eos with pad_value; here a
//    sequence simply stops at its eos (the visible tokens are the same).
//  - Sampling is an inverse-CDF draw with one Philox uniform (seed, stream
//    + b, step) per sequence b and step (kernels/base/philox.h), so a seed
//    reproduces a run exactly and a sequence's draws do not depend on the
//    other sequences of the batch. Probabilities are computed in double.
//
// Example:
//   FTX_ASSIGN_OR_RETURN(GenerationModel loaded,
//                        LoadGenerationModel(dir, registry));
//   GenerateOptions options;
//   options.max_new_tokens = 64;
//   options.sampling.top_k = 10;
//   FTX_ASSIGN_OR_RETURN(auto tokens,
//                        Generate(ctx, *loaded.model, loaded.store, prompts,
//                                 lengths, options));
#ifndef FTX_MODELS_GENERATE_H_
#define FTX_MODELS_GENERATE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "attention/mask.h"
#include "attention/registry.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor_view.h"
#include "models/param_store.h"
#include "models/transformer.h"

namespace ftx {

// How top-k turns filter_thres into k.
enum class TopKRounding {
  kFloor,  // performer-pytorch, linear-attention-transformer: int((1-thres)V)
  kCeil,   // x-transformers: ceil((1 - thres) V)
};

// k for filter_thres `thres` over `vocab` tokens, at least 1 (see above).
int64_t TopKFromThreshold(double thres, int64_t vocab, TopKRounding rounding);

// The filters, in place on one row of logits [V]; removed tokens become
// -inf. InvalidArgument for a k < 1, p outside (0, 1], theta <= 0, or
// min_p_ratio < 0.
absl::Status TopKFilter(int64_t k, absl::Span<float> logits);
absl::Status TopPFilter(double p, absl::Span<float> logits);
absl::Status TopAFilter(double min_p_pow, double min_p_ratio,
                        absl::Span<float> logits);
// Divides the logit of every distinct token of `context` by theta. Tokens
// outside [0, V) are an error.
absl::Status RepetitionPenalty(double theta, absl::Span<const int32_t> context,
                               absl::Span<float> logits);

struct SamplingOptions {
  bool greedy = false;          // argmax (after the repetition penalty)
  double temperature = 1.0;     // > 0; divides the filtered logits
  int64_t top_k = 0;            // 0: off
  std::optional<double> top_p;  // nucleus probability in (0, 1]
  bool top_a = false;
  double min_p_pow = 2.0;  // x-transformers' defaults
  double min_p_ratio = 0.02;
  double repetition_penalty = 1.0;  // theta; 1 (or less, as performer): off
  int64_t repetition_context = 32;  // tokens of the sequence looked back at
};

// The next token of one row of logits [V] (modified in place by the
// penalty and the filters); `uniform` in [0, 1) is the draw used when not
// greedy. `context`: the sequence so far, for the repetition penalty.
absl::StatusOr<int32_t> SampleToken(const SamplingOptions& options,
                                    absl::Span<const int32_t> context,
                                    float uniform, absl::Span<float> logits);

// How Generate computes each step's logits (see the top of this file).
enum class DecodeMode {
  kAuto,   // step-wise when the model and lengths allow it, else re-run
  kStep,   // step-wise; InvalidArgument when the model or lengths do not allow
  kRerun,  // the whole forward on the window at every step
};

struct GenerateOptions {
  int64_t max_new_tokens = 32;  // >= 0 per sequence
  DecodeMode decode = DecodeMode::kAuto;
  std::optional<int32_t> eos_token;  // stop right after emitting it
  SamplingOptions sampling;
  uint64_t seed = 0;    // Philox key of the draws
  uint64_t stream = 0;  // sequence b draws from Philox stream stream + b
};

// prompts: [B, P] token ids, left-aligned: row b's prompt is its first
// lengths[b] tokens (1 <= lengths[b] <= P; empty lengths: all P), the rest
// is ignored. Returns the tokens generated for every sequence (up to
// max_new_tokens, ending with eos when it was emitted). InvalidArgument for
// bad shapes, lengths, tokens outside [0, num_tokens), or options;
// Unimplemented for a CUDA context (the loop reads logits on the host);
// errors of the model's Forward are passed on.
absl::StatusOr<std::vector<std::vector<int32_t>>> Generate(
    const Context& ctx, TransformerWrapper& model, ParamStore& store,
    TensorView<const int32_t> prompts, const LengthMask& lengths,
    const GenerateOptions& options);

// The encoded source of an encoder-decoder model (models/xtransformer.h):
// the cross-attention context of a cross_attend decoder.
struct GenerationSource {
  TensorView<const float> context;  // [B, S, context_dim], contiguous, CPU
  LengthMask context_lengths;       // [B] valid source positions, or empty
};

// Generate for a cross-attending decoder: every step re-runs the decoder's
// forward on the window with `source` as its context (row b of the window
// attends to source row b). The step form has no cross-attention, so kAuto
// re-runs and kStep is InvalidArgument. InvalidArgument also for a model
// that is not cross_attend or a source of the wrong shape or lengths.
absl::StatusOr<std::vector<std::vector<int32_t>>> Generate(
    const Context& ctx, TransformerWrapper& model, ParamStore& store,
    TensorView<const int32_t> prompts, const LengthMask& lengths,
    const GenerateOptions& options, const GenerationSource& source);

// A model restored from a checkpoint directory written by Trainer
// (models/trainer.h): DIR/checkpoint.json and DIR/model.safetensors.
struct GenerationModel {
  int64_t step = 0;
  std::string task;           // "copy" or "bytes" (checkpoint.json "train")
  int64_t copy_alphabet = 0;  // copy task: symbols 0 .. A-1, separator A
  std::unique_ptr<TransformerWrapper> model;
  ParamStore store;
};

// NotFound when a file is missing; InvalidArgument (naming the file) for a
// corrupt checkpoint.json, an unknown task, a model config the registry
// rejects, or a model.safetensors that does not match the config.
absl::StatusOr<GenerationModel> LoadGenerationModel(
    const std::string& dir, const AttentionRegistry& registry);

}  // namespace ftx

#endif  // FTX_MODELS_GENERATE_H_
