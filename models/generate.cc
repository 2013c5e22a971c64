#include "models/generate.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <numeric>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/base/philox.h"
#include "kernels/base/status_macros.h"
#include "kernels/base/tensor.h"
#include "models/safetensors.h"
#include "models/trainer.h"
#include "nlohmann/json.hpp"

namespace ftx {
namespace {

constexpr float kRemoved = -std::numeric_limits<float>::infinity();

// softmax(logits) in double; removed (-inf) tokens get 0.
std::vector<double> Probabilities(absl::Span<const float> logits) {
  double max_logit = -std::numeric_limits<double>::infinity();
  for (float logit : logits) max_logit = std::max<double>(max_logit, logit);
  std::vector<double> probs(logits.size(), 0.0);
  if (!std::isfinite(max_logit)) return probs;
  double sum = 0.0;
  for (size_t i = 0; i < logits.size(); ++i) {
    probs[i] = std::exp(static_cast<double>(logits[i]) - max_logit);
    sum += probs[i];
  }
  for (double& prob : probs) prob /= sum;
  return probs;
}

// Token indices sorted by logit, largest first; ties keep index order.
std::vector<int64_t> DescendingOrder(absl::Span<const float> logits) {
  std::vector<int64_t> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return logits[a] > logits[b]; });
  return order;
}

absl::Status CheckLogits(const char* op, absl::Span<const float> logits) {
  if (logits.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": logits must hold at least one token"));
  }
  for (float logit : logits) {
    if (std::isnan(logit) || logit == std::numeric_limits<float>::infinity()) {
      return absl::InvalidArgumentError(
          absl::StrCat(op, ": logits must be finite or -inf, got ", logit));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateSampling(const SamplingOptions& s) {
  auto bad = [](const char* field, const std::string& expected) {
    return absl::InvalidArgumentError(
        absl::StrCat("Generate: sampling.", field, " must be ", expected));
  };
  if (!s.greedy && !(s.temperature > 0.0 && std::isfinite(s.temperature))) {
    return bad("temperature", absl::StrCat("> 0, got ", s.temperature));
  }
  if (s.top_k < 0) return bad("top_k", absl::StrCat(">= 0, got ", s.top_k));
  if (s.top_p.has_value() && !(*s.top_p > 0.0 && *s.top_p <= 1.0)) {
    return bad("top_p", absl::StrCat("in (0, 1], got ", *s.top_p));
  }
  if (s.top_a && !(s.min_p_ratio >= 0.0)) {
    return bad("min_p_ratio", absl::StrCat(">= 0, got ", s.min_p_ratio));
  }
  if (!(s.repetition_penalty > 0.0)) {
    return bad("repetition_penalty",
               absl::StrCat("> 0, got ", s.repetition_penalty));
  }
  if (s.repetition_context < 0) {
    return bad("repetition_context",
               absl::StrCat(">= 0, got ", s.repetition_context));
  }
  return absl::OkStatus();
}

// Samples row b's next token from `row` [V] (draw number generated[b].size()
// of its Philox stream) and appends it; returns whether row b goes on.
absl::StatusOr<bool> EmitToken(const GenerateOptions& options, int64_t b,
                               const float* row, int64_t vocab,
                               std::vector<std::vector<int32_t>>& sequences,
                               std::vector<std::vector<int32_t>>& generated,
                               std::vector<float>& row_logits) {
  std::copy(row, row + vocab, row_logits.begin());
  const float uniform =
      RandomUniform(options.seed, options.stream + b,
                    static_cast<uint64_t>(generated[b].size()));
  FTX_ASSIGN_OR_RETURN(const int32_t token,
                       SampleToken(options.sampling, sequences[b], uniform,
                                   absl::MakeSpan(row_logits)));
  sequences[b].push_back(token);
  generated[b].push_back(token);
  const bool stopped =
      options.eos_token.has_value() && token == *options.eos_token;
  return !stopped &&
         static_cast<int64_t>(generated[b].size()) < options.max_new_tokens;
}

// The step-wise loop: position t feeds token t of every row (a placeholder
// for rows already done) and samples for the rows whose last token that was.
absl::Status GenerateByStepping(const Context& ctx, TransformerWrapper& model,
                                ParamStore& store,
                                const GenerateOptions& options,
                                std::vector<std::vector<int32_t>>& sequences,
                                std::vector<std::vector<int32_t>>& generated) {
  const int64_t batch = static_cast<int64_t>(sequences.size());
  const int64_t vocab = model.config().num_tokens;
  FTX_ASSIGN_OR_RETURN(DecodeState state, model.NewDecodeState(batch));
  std::vector<bool> active(batch, options.max_new_tokens > 0);
  int64_t remaining = options.max_new_tokens > 0 ? batch : 0;
  std::vector<int32_t> column(batch);
  std::vector<float> logits(batch * vocab);
  std::vector<float> row_logits(vocab);
  for (int64_t t = 0; remaining > 0; ++t) {
    for (int64_t b = 0; b < batch; ++b) {
      const bool fed = t < static_cast<int64_t>(sequences[b].size());
      column[b] = fed ? sequences[b][t] : 0;
    }
    FTX_RETURN_IF_ERROR(model.Step(
        ctx, store, TensorView<const int32_t>(column.data(), {batch}), state,
        TensorView<float>(logits.data(), {batch, vocab})));
    for (int64_t b = 0; b < batch; ++b) {
      if (!active[b] || t + 1 != static_cast<int64_t>(sequences[b].size())) {
        continue;
      }
      FTX_ASSIGN_OR_RETURN(const bool goes_on,
                           EmitToken(options, b, logits.data() + b * vocab,
                                     vocab, sequences, generated, row_logits));
      if (!goes_on) {
        active[b] = false;
        --remaining;
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

int64_t TopKFromThreshold(double thres, int64_t vocab, TopKRounding rounding) {
  const double kept = (1.0 - thres) * static_cast<double>(vocab);
  const int64_t k = rounding == TopKRounding::kFloor
                        ? static_cast<int64_t>(kept)
                        : static_cast<int64_t>(std::ceil(kept));
  return std::clamp<int64_t>(k, 1, std::max<int64_t>(vocab, 1));
}

absl::Status TopKFilter(int64_t k, absl::Span<float> logits) {
  FTX_RETURN_IF_ERROR(CheckLogits("TopKFilter", logits));
  if (k < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("TopKFilter: k must be >= 1, got ", k));
  }
  const std::vector<int64_t> order = DescendingOrder(logits);
  for (size_t rank = static_cast<size_t>(std::min<int64_t>(k, logits.size()));
       rank < order.size(); ++rank) {
    logits[order[rank]] = kRemoved;
  }
  return absl::OkStatus();
}

absl::Status TopPFilter(double p, absl::Span<float> logits) {
  FTX_RETURN_IF_ERROR(CheckLogits("TopPFilter", logits));
  if (!(p > 0.0 && p <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("TopPFilter: p must be in (0, 1], got ", p));
  }
  const std::vector<double> probs = Probabilities(logits);
  const std::vector<int64_t> order = DescendingOrder(logits);
  double preceding = 0.0;
  for (int64_t token : order) {
    if (preceding > p) logits[token] = kRemoved;
    preceding += probs[token];
  }
  return absl::OkStatus();
}

absl::Status TopAFilter(double min_p_pow, double min_p_ratio,
                        absl::Span<float> logits) {
  FTX_RETURN_IF_ERROR(CheckLogits("TopAFilter", logits));
  if (!(min_p_ratio >= 0.0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "TopAFilter: min_p_ratio must be >= 0, got ", min_p_ratio));
  }
  const std::vector<double> probs = Probabilities(logits);
  const double max_prob = *std::max_element(probs.begin(), probs.end());
  const double limit = std::pow(max_prob, min_p_pow) * min_p_ratio;
  for (size_t i = 0; i < logits.size(); ++i) {
    logits[i] = probs[i] < limit ? kRemoved : 1.0f;
  }
  return absl::OkStatus();
}

absl::Status RepetitionPenalty(double theta, absl::Span<const int32_t> context,
                               absl::Span<float> logits) {
  if (!(theta > 0.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("RepetitionPenalty: theta must be > 0, got ", theta));
  }
  std::vector<bool> seen(logits.size(), false);
  for (int32_t token : context) {
    if (token < 0 || static_cast<size_t>(token) >= logits.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("RepetitionPenalty: context token ", token,
                       " is outside [0, ", logits.size(), ")"));
    }
    seen[token] = true;
  }
  for (size_t i = 0; i < logits.size(); ++i) {
    if (seen[i]) logits[i] = static_cast<float>(logits[i] / theta);
  }
  return absl::OkStatus();
}

absl::StatusOr<int32_t> SampleToken(const SamplingOptions& options,
                                    absl::Span<const int32_t> context,
                                    float uniform, absl::Span<float> logits) {
  FTX_RETURN_IF_ERROR(ValidateSampling(options));
  FTX_RETURN_IF_ERROR(CheckLogits("SampleToken", logits));
  if (options.repetition_penalty > 1.0) {
    const size_t looked_at = std::min<size_t>(
        context.size(), static_cast<size_t>(options.repetition_context));
    FTX_RETURN_IF_ERROR(
        RepetitionPenalty(options.repetition_penalty,
                          context.subspan(context.size() - looked_at), logits));
  }
  if (options.greedy) {
    return static_cast<int32_t>(DescendingOrder(logits).front());
  }
  if (options.top_k > 0) FTX_RETURN_IF_ERROR(TopKFilter(options.top_k, logits));
  if (options.top_p.has_value()) {
    FTX_RETURN_IF_ERROR(TopPFilter(*options.top_p, logits));
  }
  if (options.top_a) {
    FTX_RETURN_IF_ERROR(
        TopAFilter(options.min_p_pow, options.min_p_ratio, logits));
  }
  for (float& logit : logits) {
    logit = static_cast<float>(logit / options.temperature);
  }
  const std::vector<double> probs = Probabilities(logits);
  const double target = static_cast<double>(uniform);
  double cumulative = 0.0;
  int32_t last_kept = 0;
  for (size_t i = 0; i < probs.size(); ++i) {
    if (probs[i] <= 0.0) continue;
    cumulative += probs[i];
    last_kept = static_cast<int32_t>(i);
    if (cumulative > target) return last_kept;
  }
  // Rounding left the total just below the draw.
  return last_kept;
}

namespace {

// Checks a source against the model and the batch (see GenerationSource).
absl::Status ValidateSource(const TransformerConfig& config, int64_t batch,
                            const GenerationSource& source) {
  if (!config.cross_attend) {
    return absl::InvalidArgumentError(
        "Generate: a source needs a cross-attending model (cross_attend)");
  }
  const int64_t width =
      config.context_dim > 0 ? config.context_dim : config.dim;
  const TensorView<const float>& context = source.context;
  if (context.rank() != 3 || context.dim(0) != batch || context.dim(1) < 1 ||
      context.dim(2) != width) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Generate: source context must be [B = ", batch, ", S >= 1, ", width,
        "], got ", context.shape().ToString()));
  }
  if (context.data() == nullptr || !context.IsContiguous()) {
    return absl::InvalidArgumentError(
        "Generate: source context must be contiguous with non-null data");
  }
  if (context.device().type != DeviceType::kCpu) {
    return absl::InvalidArgumentError(
        "Generate: source context must be in CPU memory");
  }
  return source.context_lengths.Validate("Generate", "context_lengths", batch,
                                         context.dim(1));
}

// Generate with an optional source (null: none).
absl::StatusOr<std::vector<std::vector<int32_t>>> GenerateFrom(
    const Context& ctx, TransformerWrapper& model, ParamStore& store,
    TensorView<const int32_t> prompts, const LengthMask& lengths,
    const GenerateOptions& options, const GenerationSource* source) {
  const int64_t vocab = model.config().num_tokens;
  const int64_t max_seq_len = model.config().max_seq_len;
  if (prompts.rank() != 2 || prompts.dim(0) < 1 || prompts.dim(1) < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("Generate: prompts must be [B, P] with B, P >= 1, got ",
                     prompts.shape().ToString()));
  }
  if (prompts.data() == nullptr) {
    return absl::InvalidArgumentError("Generate: prompts has null data");
  }
  if (prompts.device().type != DeviceType::kCpu) {
    return absl::InvalidArgumentError(
        "Generate: prompts must be in CPU memory");
  }
  if (ctx.device().type != DeviceType::kCpu) {
    return absl::UnimplementedError(
        "Generate: only CPU contexts are supported");
  }
  const int64_t batch = prompts.dim(0);
  const int64_t prompt_len = prompts.dim(1);
  FTX_RETURN_IF_ERROR(
      lengths.Validate("Generate", "lengths", batch, prompt_len));
  if (options.max_new_tokens < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Generate: max_new_tokens must be >= 0, got ", options.max_new_tokens));
  }
  if (options.eos_token.has_value() &&
      (*options.eos_token < 0 || *options.eos_token >= vocab)) {
    return absl::InvalidArgumentError(
        absl::StrCat("Generate: eos_token must be in [0, ", vocab, "), got ",
                     *options.eos_token));
  }
  FTX_RETURN_IF_ERROR(ValidateSampling(options.sampling));
  if (source != nullptr) {
    FTX_RETURN_IF_ERROR(ValidateSource(model.config(), batch, *source));
    if (options.decode == DecodeMode::kStep) {
      return absl::InvalidArgumentError(
          "Generate: step-wise decoding (DecodeMode::kStep) does not support "
          "a source (cross-attention); use kRerun or kAuto");
    }
  }

  std::vector<std::vector<int32_t>> sequences(batch);
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t length = lengths.Length(b, prompt_len);
    if (length < 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Generate: every prompt needs at least one token; lengths[", b,
          "] is 0"));
    }
    for (int64_t t = 0; t < length; ++t) {
      const int32_t token = prompts.at(b, t);
      if (token < 0 || token >= vocab) {
        return absl::InvalidArgumentError(
            absl::StrCat("Generate: prompts[", b, ", ", t, "] = ", token,
                         " is outside [0, ", vocab, ")"));
      }
      sequences[b].push_back(token);
    }
  }

  std::vector<std::vector<int32_t>> generated(batch);
  int64_t positions_needed = 0;
  for (const std::vector<int32_t>& sequence : sequences) {
    positions_needed = std::max<int64_t>(
        positions_needed, static_cast<int64_t>(sequence.size()) +
                              std::max<int64_t>(options.max_new_tokens - 1, 0));
  }
  const bool fits = positions_needed <= max_seq_len;
  if (options.decode == DecodeMode::kStep) {
    FTX_RETURN_IF_ERROR(model.StepSupport());
    if (!fits) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Generate: step-wise decoding needs prompt + max_new_tokens - 1 = ",
          positions_needed, " positions, more than max_seq_len ", max_seq_len));
    }
  }
  if (options.decode == DecodeMode::kStep ||
      (options.decode == DecodeMode::kAuto && source == nullptr && fits &&
       model.StepSupport().ok())) {
    FTX_RETURN_IF_ERROR(
        GenerateByStepping(ctx, model, store, options, sequences, generated));
    return generated;
  }
  std::vector<int64_t> active;
  if (options.max_new_tokens > 0) {
    active.resize(batch);
    std::iota(active.begin(), active.end(), 0);
  }
  std::vector<int32_t> window_tokens;
  std::vector<float> row_logits(vocab);
  // The active sequences' source rows, [A, S, C_ctx], when there is a source.
  std::vector<float> active_context;
  while (!active.empty()) {
    // The active sequences' windows, left-aligned in [A, W].
    const int64_t rows = static_cast<int64_t>(active.size());
    LengthMask window_lengths;
    int64_t width = 0;
    for (int64_t b : active) {
      const int64_t length = std::min<int64_t>(
          static_cast<int64_t>(sequences[b].size()), max_seq_len);
      window_lengths.lengths.push_back(length);
      width = std::max(width, length);
    }
    const bool ragged = std::any_of(
        window_lengths.lengths.begin(), window_lengths.lengths.end(),
        [&](int64_t length) { return length != width; });
    if (!ragged) window_lengths.lengths.clear();
    window_tokens.assign(rows * width, 0);
    for (int64_t r = 0; r < rows; ++r) {
      const std::vector<int32_t>& sequence = sequences[active[r]];
      const int64_t length = window_lengths.Length(r, width);
      std::copy(sequence.end() - length, sequence.end(),
                window_tokens.begin() + r * width);
    }
    FTX_ASSIGN_OR_RETURN(Tensor logits,
                         Tensor::Create(DType::kF32, {rows, width, vocab}));
    TransformerInputs inputs;
    inputs.tokens =
        TensorView<const int32_t>(window_tokens.data(), {rows, width});
    inputs.lengths = window_lengths;
    if (source != nullptr) {
      const int64_t source_len = source->context.dim(1);
      const int64_t row_size = source_len * source->context.dim(2);
      active_context.resize(rows * row_size);
      inputs.context_lengths.lengths.clear();
      for (int64_t r = 0; r < rows; ++r) {
        const float* row = source->context.data() + active[r] * row_size;
        std::copy(row, row + row_size, active_context.begin() + r * row_size);
        if (!source->context_lengths.full()) {
          inputs.context_lengths.lengths.push_back(
              source->context_lengths.lengths[active[r]]);
        }
      }
      inputs.context = TensorView<const float>(
          active_context.data(), {rows, source_len, source->context.dim(2)});
    }
    FTX_RETURN_IF_ERROR(model.Forward(ctx, store, inputs, logits.view<float>(),
                                      /*save_for_backward=*/false));

    std::vector<int64_t> still_active;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t b = active[r];
      const int64_t last = window_lengths.Length(r, width) - 1;
      const float* row = logits.data<float>() + (r * width + last) * vocab;
      FTX_ASSIGN_OR_RETURN(
          const bool goes_on,
          EmitToken(options, b, row, vocab, sequences, generated, row_logits));
      if (goes_on) still_active.push_back(b);
    }
    active = std::move(still_active);
  }
  return generated;
}

}  // namespace

absl::StatusOr<std::vector<std::vector<int32_t>>> Generate(
    const Context& ctx, TransformerWrapper& model, ParamStore& store,
    TensorView<const int32_t> prompts, const LengthMask& lengths,
    const GenerateOptions& options) {
  return GenerateFrom(ctx, model, store, prompts, lengths, options,
                      /*source=*/nullptr);
}

absl::StatusOr<std::vector<std::vector<int32_t>>> Generate(
    const Context& ctx, TransformerWrapper& model, ParamStore& store,
    TensorView<const int32_t> prompts, const LengthMask& lengths,
    const GenerateOptions& options, const GenerationSource& source) {
  return GenerateFrom(ctx, model, store, prompts, lengths, options, &source);
}

absl::StatusOr<GenerationModel> LoadGenerationModel(
    const std::string& dir, const AttentionRegistry& registry) {
  FTX_ASSIGN_OR_RETURN(CheckpointInfo info, ReadCheckpointInfo(dir));
  const std::string json_path = absl::StrCat(dir, "/checkpoint.json");
  std::ifstream file(json_path);
  std::ostringstream contents;
  contents << file.rdbuf();
  const nlohmann::json root = nlohmann::json::parse(contents.str(), nullptr,
                                                    /*allow_exceptions=*/false);
  std::string task = "copy";
  int64_t copy_alphabet = 0;
  const bool has_train = !root.is_discarded() && root.contains("train") &&
                         root["train"].is_object();
  const nlohmann::json train = has_train ? root["train"] : nlohmann::json();
  if (!has_train || !train.contains("task") || !train["task"].is_string() ||
      (train["task"] != "copy" && train["task"] != "bytes")) {
    return absl::InvalidArgumentError(absl::StrCat(
        "\"", json_path,
        "\": expected \"train\": {\"task\": \"copy\" or \"bytes\", ...}"));
  }
  task = train["task"].get<std::string>();
  if (task == "copy") {
    if (!train.contains("copy_alphabet") ||
        !train["copy_alphabet"].is_number_integer() ||
        train["copy_alphabet"].get<int64_t>() < 1 ||
        train["copy_alphabet"].get<int64_t>() >= info.model.num_tokens) {
      return absl::InvalidArgumentError(absl::StrCat(
          "\"", json_path,
          "\": the copy task needs an integer \"copy_alphabet\" in [1, "
          "num_tokens)"));
    }
    copy_alphabet = train["copy_alphabet"].get<int64_t>();
  } else if (info.model.num_tokens < 256) {
    return absl::InvalidArgumentError(absl::StrCat(
        "\"", json_path, "\": a byte model needs num_tokens >= 256, got ",
        info.model.num_tokens));
  }
  absl::StatusOr<std::unique_ptr<TransformerWrapper>> model =
      TransformerWrapper::Create(info.model, registry);
  if (!model.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", json_path, "\": ", model.status().message()));
  }
  FTX_ASSIGN_OR_RETURN(ParamStore store,
                       ParamStore::Create((*model)->ParamShapes()));
  FTX_RETURN_IF_ERROR(
      LoadParams(absl::StrCat(dir, "/model.safetensors"), store));
  return GenerationModel{info.step, task, copy_alphabet, *std::move(model),
                         std::move(store)};
}

}  // namespace ftx
