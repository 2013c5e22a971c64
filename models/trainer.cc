#include "models/trainer.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <system_error>
#include <utility>
#include <variant>

#include "absl/strings/str_cat.h"
#include "kernels/base/philox.h"
#include "kernels/base/status_macros.h"
#include "kernels/cross_entropy/cross_entropy.h"
#include "models/safetensors.h"
#include "nlohmann/json.hpp"

namespace ftx {
namespace {

using Json = nlohmann::json;

// Philox streams of the trainer's own draws (data batches use the step, which
// stays below 2^63, as their stream).
constexpr uint64_t kDropoutStream = (uint64_t{1} << 63) + 1;
constexpr uint64_t kEvalSeedStream = (uint64_t{1} << 63) + 2;

uint64_t Random64(uint64_t seed, uint64_t stream, uint64_t index) {
  return (static_cast<uint64_t>(RandomBits(seed, stream, 2 * index)) << 32) |
         RandomBits(seed, stream, 2 * index + 1);
}

absl::Status Bad(const char* field, const std::string& expected) {
  return absl::InvalidArgumentError(
      absl::StrCat("TrainConfig.", field, " must be ", expected));
}

absl::Status ValidateTrainConfig(const TrainConfig& c) {
  if (c.steps < 1) return Bad("steps", absl::StrCat(">= 1, got ", c.steps));
  if (c.batch_size < 1) {
    return Bad("batch_size", absl::StrCat(">= 1, got ", c.batch_size));
  }
  if (c.task == TrainTask::kCopy && (c.seq_len < 2 || c.seq_len % 2 != 0)) {
    return Bad("seq_len", absl::StrCat("even and >= 2 for the copy task, got ",
                                       c.seq_len));
  }
  if (c.seq_len < 1)
    return Bad("seq_len", absl::StrCat(">= 1, got ", c.seq_len));
  if (!(std::isfinite(c.lr) && c.lr >= 0.0)) {
    return Bad("lr", absl::StrCat("finite and >= 0, got ", c.lr));
  }
  if (!(c.min_lr >= 0.0 && c.min_lr <= c.lr)) {
    return Bad("min_lr",
               absl::StrCat("in [0, lr = ", c.lr, "], got ", c.min_lr));
  }
  if (c.warmup < 0 || c.warmup >= c.steps) {
    return Bad("warmup",
               absl::StrCat("in [0, steps = ", c.steps, "), got ", c.warmup));
  }
  if (!(std::isfinite(c.clip) && c.clip >= 0.0)) {
    return Bad("clip", absl::StrCat("finite and >= 0, got ", c.clip));
  }
  if (c.eval_every < 0) {
    return Bad("eval_every", absl::StrCat(">= 0, got ", c.eval_every));
  }
  if (c.eval_batches < 1) {
    return Bad("eval_batches", absl::StrCat(">= 1, got ", c.eval_batches));
  }
  if (c.task == TrainTask::kCopy && c.copy_alphabet < 1) {
    return Bad("copy_alphabet", absl::StrCat(">= 1, got ", c.copy_alphabet));
  }
  if (c.task == TrainTask::kBytes && c.data_path.empty()) {
    return Bad("data_path", "a file for the byte task");
  }
  return absl::OkStatus();
}

const char* TaskName(TrainTask task) {
  return task == TrainTask::kCopy ? "copy" : "bytes";
}

const char* NormName(NormType norm) {
  switch (norm) {
    case NormType::kLayerNorm:
      return "layernorm";
    case NormType::kRMSNorm:
      return "rmsnorm";
    case NormType::kScaleNorm:
      return "scalenorm";
  }
  return "layernorm";
}

Json ConfigJson(const TransformerConfig& c) {
  Json options = Json::object();
  for (const auto& [name, value] : c.attention_options) {
    std::visit([&options, &name = name](const auto& v) { options[name] = v; },
               value);
  }
  return Json{{"dim", c.dim},
              {"depth", c.depth},
              {"heads", c.heads},
              {"dim_head", c.dim_head},
              {"causal", c.causal},
              {"cross_attend", c.cross_attend},
              {"context_dim", c.context_dim},
              {"attention", c.attention},
              {"attention_options", options},
              {"cross_attention", c.cross_attention},
              {"norm", NormName(c.norm)},
              {"pre_norm", c.pre_norm},
              {"use_rezero", c.use_rezero},
              {"ff_mult", c.ff_mult},
              {"ff_glu", c.ff_glu},
              {"ff_activation", ActivationName(c.ff_activation)},
              {"ff_swish", c.ff_swish},
              {"ff_relu_squared", c.ff_relu_squared},
              {"rotary_pos_emb", c.rotary_pos_emb},
              {"rotary_emb_dim", c.rotary_emb_dim},
              {"attn_kv_heads", c.attn_kv_heads},
              {"attn_num_mem_kv", c.attn_num_mem_kv},
              {"num_tokens", c.num_tokens},
              {"max_seq_len", c.max_seq_len},
              {"use_abs_pos_emb", c.use_abs_pos_emb},
              {"final_norm", c.final_norm},
              {"seed", c.seed}};
}

// Writes `contents` to `path` through a temporary file renamed over it.
absl::Status WriteFileAtomically(const std::string& path,
                                 const std::string& contents) {
  const std::string temporary = absl::StrCat(path, ".tmp");
  {
    std::ofstream file(temporary, std::ios::binary | std::ios::trunc);
    file << contents;
    file.flush();
    if (!file) {
      std::remove(temporary.c_str());
      return absl::InternalError(
          absl::StrCat("cannot write \"", temporary, "\""));
    }
  }
  std::error_code error;
  std::filesystem::rename(temporary, path, error);
  if (error) {
    std::remove(temporary.c_str());
    return absl::InternalError(absl::StrCat("cannot rename \"", temporary,
                                            "\" to \"", path,
                                            "\": ", error.message()));
  }
  return absl::OkStatus();
}

}  // namespace

std::string TransformerConfigToJson(const TransformerConfig& config) {
  return ConfigJson(config).dump(2);
}

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(
    const Context& ctx, const AttentionRegistry& registry,
    const TrainConfig& config) {
  if (ctx.device().type != DeviceType::kCpu) {
    return absl::InvalidArgumentError("Trainer: needs a CPU context");
  }
  FTX_RETURN_IF_ERROR(ValidateTrainConfig(config));
  TrainConfig c = config;
  std::optional<CopyTask> copy_task;
  std::optional<ByteDataset> bytes;
  int64_t vocab = ByteDataset::kVocabSize;
  if (c.task == TrainTask::kCopy) {
    FTX_ASSIGN_OR_RETURN(CopyTask task, CopyTask::Create(c.copy_alphabet));
    vocab = task.vocab_size();
    copy_task = task;
  } else {
    FTX_ASSIGN_OR_RETURN(ByteDataset dataset,
                         ByteDataset::Open(c.data_path, c.held_out_fraction));
    for (DataSplit split : {DataSplit::kTrain, DataSplit::kHeldOut}) {
      if (dataset.SplitSize(split) < c.seq_len + 1) {
        return absl::InvalidArgumentError(
            absl::StrCat("Trainer: \"", c.data_path, "\" is too short: its ",
                         split == DataSplit::kTrain ? "training" : "held-out",
                         " split has ", dataset.SplitSize(split),
                         " bytes, seq_len + 1 = ", c.seq_len + 1, " needed"));
      }
    }
    bytes = std::move(dataset);
  }
  if (c.model.num_tokens == 0) c.model.num_tokens = vocab;
  if (c.model.max_seq_len == 0) c.model.max_seq_len = c.seq_len;
  if (c.model.num_tokens < vocab) {
    return Bad("model.num_tokens",
               absl::StrCat(">= the ", TaskName(c.task), " task's vocabulary ",
                            vocab, ", got ", c.model.num_tokens));
  }
  if (c.model.max_seq_len < c.seq_len) {
    return Bad("model.max_seq_len",
               absl::StrCat(">= seq_len = ", c.seq_len, ", got ",
                            c.model.max_seq_len));
  }
  FTX_ASSIGN_OR_RETURN(std::unique_ptr<TransformerWrapper> model,
                       TransformerWrapper::Create(c.model, registry));
  FTX_ASSIGN_OR_RETURN(ParamStore store,
                       ParamStore::Create(model->ParamShapes()));
  FTX_RETURN_IF_ERROR(model->InitParams(ctx, store));
  FTX_ASSIGN_OR_RETURN(AdamW optimizer,
                       AdamW::Create({.weight_decay = c.weight_decay,
                                      .no_decay = NoDecayBelowRank2}));
  FTX_ASSIGN_OR_RETURN(
      LearningRateSchedule schedule,
      LearningRateSchedule::WarmupCosine({.max_lr = c.lr,
                                          .min_lr = c.min_lr,
                                          .warmup_steps = c.warmup,
                                          .total_steps = c.steps}));
  std::unique_ptr<Trainer> trainer(new Trainer(ctx, c, std::move(model),
                                               std::move(store),
                                               std::move(optimizer), schedule));
  trainer->copy_task_ = copy_task;
  trainer->bytes_ = std::move(bytes);
  const int64_t rows = c.batch_size * c.seq_len;
  trainer->logits_.resize(rows * c.model.num_tokens);
  trainer->losses_.resize(rows);
  trainer->d_losses_.resize(rows);
  return trainer;
}

absl::StatusOr<TokenBatch> Trainer::TrainBatch(int64_t step) const {
  if (copy_task_.has_value()) {
    return copy_task_->Batch(config_.seed, static_cast<uint64_t>(step),
                             config_.batch_size, config_.seq_len);
  }
  return bytes_->Batch(DataSplit::kTrain, config_.seed,
                       static_cast<uint64_t>(step), config_.batch_size,
                       config_.seq_len);
}

absl::StatusOr<TokenBatch> Trainer::EvalBatch(int64_t index) const {
  const uint64_t eval_seed = Random64(config_.seed, kEvalSeedStream, 0);
  if (copy_task_.has_value()) {
    return copy_task_->Batch(eval_seed, static_cast<uint64_t>(index),
                             config_.batch_size, config_.seq_len);
  }
  return bytes_->Batch(DataSplit::kHeldOut, eval_seed,
                       static_cast<uint64_t>(index), config_.batch_size,
                       config_.seq_len);
}

absl::StatusOr<float> Trainer::LossAndGradients(const TokenBatch& batch,
                                                bool training,
                                                uint64_t dropout_seed) {
  const int64_t vocab = config_.model.num_tokens;
  if (batch.batch * batch.length * vocab !=
      static_cast<int64_t>(logits_.size())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Trainer::LossAndGradients: batch must be [", config_.batch_size, ", ",
        config_.seq_len, "], got [", batch.batch, ", ", batch.length, "]"));
  }
  store_.ZeroGrads();
  const Shape logits_shape{batch.batch, batch.length, vocab};
  TensorView<float> logits(logits_.data(), logits_shape);
  TensorView<const int32_t> targets = batch.targets_view();
  TensorView<float> losses(losses_.data(), {batch.batch, batch.length});
  TensorView<float> d_losses(d_losses_.data(), {batch.batch, batch.length});
  float mean = 0.0f;
  FTX_RETURN_IF_ERROR(model_->Forward(ctx_, store_,
                                      {.tokens = batch.tokens_view(),
                                       .training = training,
                                       .seed = dropout_seed},
                                      logits, /*save_for_backward=*/true));
  FTX_RETURN_IF_ERROR(CrossEntropyForward(ctx_, logits, targets, losses, {}));
  FTX_RETURN_IF_ERROR(
      MeanLoss(ctx_, losses, targets, TensorView<float>(&mean, {1}), d_losses));
  FTX_RETURN_IF_ERROR(
      CrossEntropyBackward(ctx_, logits, targets, d_losses, logits));
  FTX_RETURN_IF_ERROR(model_->Backward(ctx_, store_, logits));
  return mean;
}

absl::StatusOr<StepResult> Trainer::Step() {
  const int64_t step = optimizer_.step();
  FTX_ASSIGN_OR_RETURN(TokenBatch batch, TrainBatch(step));
  StepResult result;
  result.step = step;
  FTX_ASSIGN_OR_RETURN(result.loss,
                       LossAndGradients(batch, /*training=*/true,
                                        Random64(config_.seed, kDropoutStream,
                                                 static_cast<uint64_t>(step))));
  if (config_.clip > 0.0) {
    FTX_ASSIGN_OR_RETURN(result.grad_norm,
                         ClipGradNorm(ctx_, store_, config_.clip));
  } else {
    double sum = 0.0;
    const float* grads = store_.grads().data();
    for (int64_t i = 0; i < store_.NumParams(); ++i) {
      sum += static_cast<double>(grads[i]) * grads[i];
    }
    result.grad_norm = static_cast<float>(std::sqrt(sum));
  }
  if (!std::isfinite(result.grad_norm) || !std::isfinite(result.loss)) {
    return absl::InvalidArgumentError(
        absl::StrCat("Trainer: step ", step, " has loss ", result.loss,
                     " and gradient norm ", result.grad_norm,
                     "; no update (lower lr or enable clipping)"));
  }
  result.lr = schedule_.LearningRate(step);
  FTX_RETURN_IF_ERROR(optimizer_.Step(ctx_, store_, result.lr));
  return result;
}

absl::StatusOr<EvalResult> Trainer::Evaluate() {
  const int64_t vocab = config_.model.num_tokens;
  double loss_sum = 0.0;
  int64_t scored = 0, correct = 0, exact = 0;
  EvalResult result;
  for (int64_t index = 0; index < config_.eval_batches; ++index) {
    FTX_ASSIGN_OR_RETURN(TokenBatch batch, EvalBatch(index));
    TensorView<float> logits(logits_.data(),
                             {batch.batch, batch.length, vocab});
    TensorView<float> losses(losses_.data(), {batch.batch, batch.length});
    FTX_RETURN_IF_ERROR(model_->Forward(ctx_, store_,
                                        {.tokens = batch.tokens_view()}, logits,
                                        /*save_for_backward=*/false));
    FTX_RETURN_IF_ERROR(
        CrossEntropyForward(ctx_, logits, batch.targets_view(), losses, {}));
    for (int64_t b = 0; b < batch.batch; ++b) {
      bool all_right = true;
      for (int64_t t = 0; t < batch.length; ++t) {
        const int64_t row = b * batch.length + t;
        const int32_t target = batch.targets[row];
        if (target == kIgnoreTarget) continue;
        const float* z = logits_.data() + row * vocab;
        int64_t best = 0;
        for (int64_t v = 1; v < vocab; ++v) {
          if (z[v] > z[best]) best = v;
        }
        loss_sum += losses_[row];
        ++scored;
        if (best == target) {
          ++correct;
        } else {
          all_right = false;
        }
      }
      if (all_right) ++exact;
    }
    result.sequences += batch.batch;
  }
  result.loss = scored > 0 ? loss_sum / static_cast<double>(scored) : 0.0;
  result.token_accuracy =
      scored > 0 ? static_cast<double>(correct) / static_cast<double>(scored)
                 : 0.0;
  if (copy_task_.has_value()) {
    result.exact_copy_accuracy =
        static_cast<double>(exact) / static_cast<double>(result.sequences);
  }
  return result;
}

absl::Status Trainer::SaveCheckpoint(const std::string& dir) {
  std::error_code error;
  std::filesystem::create_directories(dir, error);
  if (error) {
    return absl::InternalError(absl::StrCat("cannot create directory \"", dir,
                                            "\": ", error.message()));
  }
  FTX_RETURN_IF_ERROR(
      SaveParams(absl::StrCat(dir, "/model.safetensors"), store_));
  const TrainConfig& c = config_;
  const Json train{{"task", TaskName(c.task)},
                   {"copy_alphabet", c.copy_alphabet},
                   {"data_path", c.data_path},
                   {"held_out_fraction", c.held_out_fraction},
                   {"steps", c.steps},
                   {"batch_size", c.batch_size},
                   {"seq_len", c.seq_len},
                   {"lr", c.lr},
                   {"warmup", c.warmup},
                   {"min_lr", c.min_lr},
                   {"weight_decay", c.weight_decay},
                   {"clip", c.clip},
                   {"seed", c.seed},
                   {"eval_every", c.eval_every},
                   {"eval_batches", c.eval_batches}};
  const Json root{{"step", optimizer_.step()},
                  {"model", ConfigJson(c.model)},
                  {"train", train}};
  return WriteFileAtomically(absl::StrCat(dir, "/checkpoint.json"),
                             root.dump(2) + "\n");
}

absl::Status Trainer::Run(
    const std::function<void(const TrainProgress&)>& on_progress) {
  const auto start = std::chrono::steady_clock::now();
  const int64_t first = optimizer_.step();
  while (optimizer_.step() < config_.steps) {
    TrainProgress progress;
    FTX_ASSIGN_OR_RETURN(progress.step, Step());
    const int64_t done = optimizer_.step();
    progress.elapsed_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count();
    const double per_step =
        progress.elapsed_seconds / static_cast<double>(done - first);
    progress.tokens_per_second =
        static_cast<double>(config_.batch_size * config_.seq_len) /
        std::max(per_step, 1e-12);
    progress.eta_seconds = per_step * static_cast<double>(config_.steps - done);
    if (on_progress) on_progress(progress);
    const bool last = done == config_.steps;
    if (last || (config_.eval_every > 0 && done % config_.eval_every == 0)) {
      FTX_ASSIGN_OR_RETURN(progress.eval, Evaluate());
      if (!config_.out_dir.empty()) {
        FTX_RETURN_IF_ERROR(SaveCheckpoint(config_.out_dir));
      }
      if (on_progress) on_progress(progress);
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<CheckpointInfo> ReadCheckpointInfo(const std::string& dir) {
  const std::string path = absl::StrCat(dir, "/checkpoint.json");
  std::ifstream file(path);
  if (!file) {
    return absl::NotFoundError(absl::StrCat("cannot open \"", path, "\""));
  }
  std::ostringstream contents;
  contents << file.rdbuf();
  const Json root = Json::parse(contents.str(), nullptr,
                                /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object() || !root.contains("step") ||
      !root["step"].is_number_integer() || !root.contains("model") ||
      !root["model"].is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", path,
                     "\" is not a checkpoint: expected a JSON object with an "
                     "integer \"step\" and an object \"model\""));
  }
  CheckpointInfo info;
  info.step = root["step"].get<int64_t>();
  absl::StatusOr<TransformerConfig> model =
      TransformerConfigFromJson(root["model"].dump());
  if (!model.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", path, "\": ", model.status().message()));
  }
  info.model = *std::move(model);
  return info;
}

}  // namespace ftx
