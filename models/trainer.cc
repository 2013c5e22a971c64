#include "models/trainer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <system_error>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "kernels/base/philox.h"
#include "kernels/base/status_macros.h"
#include "kernels/cross_entropy/cross_entropy.h"
#include "models/atomic_file.h"
#include "models/safetensors.h"
#include "nlohmann/json.hpp"

namespace ftx {
namespace {

using Json = nlohmann::json;

// Philox streams of the trainer's own draws (data batches use the step, which
// stays below 2^63, as their stream).
constexpr uint64_t kDropoutStream = (uint64_t{1} << 63) + 1;
constexpr uint64_t kEvalSeedStream = (uint64_t{1} << 63) + 2;
// Dropout seed of micro-batch j = the step's seed + j * this (2^64 / golden
// ratio, so the micro-batches' seeds are far apart).
constexpr uint64_t kMicroBatchSeedIncrement = 0x9E3779B97F4A7C15ull;

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
  if (c.task == TrainTask::kListOps && c.seq_len < 6) {
    return Bad("seq_len",
               absl::StrCat(">= 6 for the ListOps task, got ", c.seq_len));
  }
  if (c.seq_len < 1)
    return Bad("seq_len", absl::StrCat(">= 1, got ", c.seq_len));
  if (c.accumulation_steps < 1) {
    return Bad("accumulation_steps",
               absl::StrCat(">= 1, got ", c.accumulation_steps));
  }
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
  switch (task) {
    case TrainTask::kCopy:
      return "copy";
    case TrainTask::kBytes:
      return "bytes";
    case TrainTask::kListOps:
      return "listops";
  }
  return "copy";
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

constexpr char kModelFile[] = "model.safetensors";
constexpr char kOptimizerFile[] = "optimizer.safetensors";
constexpr char kInfoFile[] = "checkpoint.json";
constexpr char kFirstMomentPrefix[] = "m/";
constexpr char kSecondMomentPrefix[] = "v/";

absl::StatusOr<std::string> ReadWholeFile(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) {
    return absl::NotFoundError(absl::StrCat("cannot open \"", path, "\""));
  }
  std::ostringstream contents;
  contents << file.rdbuf();
  if (file.bad()) {
    return absl::DataLossError(absl::StrCat("cannot read \"", path, "\""));
  }
  return contents.str();
}

// 64-bit FNV-1a of `bytes`, as 16 hex digits: the checkpoint's check that a
// file is the one its checkpoint.json was written with.
std::string Fnv1a64(absl::string_view bytes) {
  uint64_t hash = 0xcbf29ce484222325ull;
  for (const char byte : bytes) {
    hash ^= static_cast<unsigned char>(byte);
    hash *= 0x100000001b3ull;
  }
  return absl::StrCat(absl::Hex(hash, absl::kZeroPad16));
}

Json TrainJson(const TrainConfig& c) {
  return Json{{"task", TaskName(c.task)},
              {"copy_alphabet", c.copy_alphabet},
              {"data_path", c.data_path},
              {"held_out_fraction", c.held_out_fraction},
              {"listops_max_depth", c.listops_max_depth},
              {"listops_max_args", c.listops_max_args},
              {"listops_max_length", c.listops_max_length},
              {"steps", c.steps},
              {"batch_size", c.batch_size},
              {"seq_len", c.seq_len},
              {"accumulation_steps", c.accumulation_steps},
              {"lr", c.lr},
              {"warmup", c.warmup},
              {"min_lr", c.min_lr},
              {"weight_decay", c.weight_decay},
              {"clip", c.clip},
              {"seed", c.seed},
              {"eval_every", c.eval_every},
              {"eval_batches", c.eval_batches}};
}

// Reads object[key] into `value` when it has T's JSON type; otherwise an
// InvalidArgument naming `source` and `where`.key.
template <typename T>
absl::Status ReadField(const Json& object, const char* key,
                       const std::string& source, const char* where, T& value) {
  const auto found = object.find(key);
  bool ok = found != object.end();
  if (ok) {
    if constexpr (std::is_same_v<T, bool>) {
      ok = found->is_boolean();
    } else if constexpr (std::is_same_v<T, std::string>) {
      ok = found->is_string();
    } else if constexpr (std::is_same_v<T, uint64_t>) {
      ok = found->is_number_unsigned();
    } else if constexpr (std::is_integral_v<T>) {
      ok = found->is_number_integer();
    } else {
      ok = found->is_number();
    }
  }
  if (!ok) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", source, "\": ", where, ".", key,
                     " is missing or of the wrong type"));
  }
  value = found->get<T>();
  return absl::OkStatus();
}

absl::StatusOr<TrainConfig> TrainConfigFromJson(const Json& train,
                                                const std::string& source) {
  if (!train.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", source, "\": \"train\" is not an object"));
  }
  TrainConfig c;
  std::string task;
  FTX_RETURN_IF_ERROR(ReadField(train, "task", source, "train", task));
  if (task == TaskName(TrainTask::kCopy)) {
    c.task = TrainTask::kCopy;
  } else if (task == TaskName(TrainTask::kBytes)) {
    c.task = TrainTask::kBytes;
  } else if (task == TaskName(TrainTask::kListOps)) {
    c.task = TrainTask::kListOps;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", source,
                     "\": train.task must be \"copy\", \"bytes\" or "
                     "\"listops\", got \"",
                     task, "\""));
  }
  // Fields newer than the first checkpoints: absent means the default.
  for (const auto& [key, value] :
       {std::pair<const char*, int64_t*>{"listops_max_depth",
                                         &c.listops_max_depth},
        {"listops_max_args", &c.listops_max_args},
        {"listops_max_length", &c.listops_max_length},
        {"accumulation_steps", &c.accumulation_steps}}) {
    if (train.contains(key)) {
      FTX_RETURN_IF_ERROR(ReadField(train, key, source, "train", *value));
    }
  }
  FTX_RETURN_IF_ERROR(
      ReadField(train, "copy_alphabet", source, "train", c.copy_alphabet));
  FTX_RETURN_IF_ERROR(
      ReadField(train, "data_path", source, "train", c.data_path));
  FTX_RETURN_IF_ERROR(ReadField(train, "held_out_fraction", source, "train",
                                c.held_out_fraction));
  FTX_RETURN_IF_ERROR(ReadField(train, "steps", source, "train", c.steps));
  FTX_RETURN_IF_ERROR(
      ReadField(train, "batch_size", source, "train", c.batch_size));
  FTX_RETURN_IF_ERROR(ReadField(train, "seq_len", source, "train", c.seq_len));
  FTX_RETURN_IF_ERROR(ReadField(train, "lr", source, "train", c.lr));
  FTX_RETURN_IF_ERROR(ReadField(train, "warmup", source, "train", c.warmup));
  FTX_RETURN_IF_ERROR(ReadField(train, "min_lr", source, "train", c.min_lr));
  FTX_RETURN_IF_ERROR(
      ReadField(train, "weight_decay", source, "train", c.weight_decay));
  FTX_RETURN_IF_ERROR(ReadField(train, "clip", source, "train", c.clip));
  FTX_RETURN_IF_ERROR(ReadField(train, "seed", source, "train", c.seed));
  FTX_RETURN_IF_ERROR(
      ReadField(train, "eval_every", source, "train", c.eval_every));
  FTX_RETURN_IF_ERROR(
      ReadField(train, "eval_batches", source, "train", c.eval_batches));
  return c;
}

// checkpoint.json parsed: what ReadCheckpointInfo returns and the JSON
// object (whose optimizer, data and files parts only Resume needs).
struct ParsedCheckpoint {
  CheckpointInfo info;
  Json root;
  std::string path;
};

absl::StatusOr<ParsedCheckpoint> ParseCheckpoint(const std::string& dir) {
  ParsedCheckpoint parsed;
  parsed.path = absl::StrCat(dir, "/", kInfoFile);
  FTX_ASSIGN_OR_RETURN(const std::string contents, ReadWholeFile(parsed.path));
  parsed.root = Json::parse(contents, nullptr, /*allow_exceptions=*/false);
  const Json& root = parsed.root;
  if (root.is_discarded() || !root.is_object() || !root.contains("step") ||
      !root["step"].is_number_integer() || !root.contains("model") ||
      !root["model"].is_object() || !root.contains("train")) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", parsed.path,
                     "\" is not a checkpoint: expected a JSON object with an "
                     "integer \"step\", an object \"model\" and \"train\""));
  }
  CheckpointInfo& info = parsed.info;
  info.step = root["step"].get<int64_t>();
  if (info.step < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "\"", parsed.path, "\": step must be >= 0, got ", info.step));
  }
  absl::StatusOr<TransformerConfig> model =
      TransformerConfigFromJson(root["model"].dump());
  if (!model.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", parsed.path, "\": ", model.status().message()));
  }
  info.model = *std::move(model);
  FTX_ASSIGN_OR_RETURN(info.train,
                       TrainConfigFromJson(root["train"], parsed.path));
  info.train.model = info.model;
  return parsed;
}

// The first key whose value differs between the objects `requested` and
// `stored` (ignoring `ignored`), as an InvalidArgument naming both values.
absl::Status CheckSameConfig(const Json& requested, const Json& stored,
                             const char* prefix,
                             const std::vector<std::string>& ignored,
                             const std::string& dir) {
  for (const auto& [key, value] : requested.items()) {
    if (std::find(ignored.begin(), ignored.end(), key) != ignored.end()) {
      continue;
    }
    const auto found = stored.find(key);
    const std::string stored_text =
        found == stored.end() ? "nothing" : found->dump();
    if (found == stored.end() || *found != value) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Trainer::Resume: the checkpoint in \"", dir, "\" has ", prefix, key,
          " = ", stored_text, " but the requested config has ", value.dump(),
          "; resume with the checkpoint's settings"));
    }
  }
  return absl::OkStatus();
}

// Reads dir/name whole and checks it against checkpoint.json's "files" entry.
absl::StatusOr<std::string> ReadCheckedFile(const ParsedCheckpoint& parsed,
                                            const std::string& dir,
                                            const char* name) {
  const std::string path = absl::StrCat(dir, "/", name);
  const Json& files =
      parsed.root.contains("files") ? parsed.root["files"] : Json::object();
  int64_t bytes = 0;
  std::string digest;
  if (!files.is_object() || !files.contains(name) ||
      !ReadField(files[name], "bytes", parsed.path, "files", bytes).ok() ||
      !ReadField(files[name], "fnv1a64", parsed.path, "files", digest).ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", parsed.path, "\" has no valid files.\"", name,
                     "\" entry (bytes, fnv1a64): not a resumable checkpoint"));
  }
  FTX_ASSIGN_OR_RETURN(std::string contents, ReadWholeFile(path));
  if (static_cast<int64_t>(contents.size()) != bytes ||
      Fnv1a64(contents) != digest) {
    return absl::InvalidArgumentError(absl::StrCat(
        "\"", path, "\" is corrupt or from another save: ", contents.size(),
        " bytes with FNV-1a ", Fnv1a64(contents), ", but \"", parsed.path,
        "\" records ", bytes, " bytes with FNV-1a ", digest));
  }
  return contents;
}

// Every tensor of `file` must be F32, so that loading restores exact bits.
absl::Status CheckAllF32(const SafetensorsFile& file) {
  for (const SafetensorsEntry& entry : file.entries()) {
    if (entry.dtype != "F32") {
      return absl::InvalidArgumentError(
          absl::StrCat("\"", file.source(), "\": tensor \"", entry.name,
                       "\" is ", entry.dtype, ", a checkpoint stores F32"));
    }
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
  std::optional<ListOpsTask> listops;
  std::optional<ByteDataset> bytes;
  int64_t vocab = ByteDataset::kVocabSize;
  if (c.task == TrainTask::kCopy) {
    FTX_ASSIGN_OR_RETURN(CopyTask task, CopyTask::Create(c.copy_alphabet));
    vocab = task.vocab_size();
    copy_task = task;
  } else if (c.task == TrainTask::kListOps) {
    absl::StatusOr<ListOpsTask> task =
        ListOpsTask::Create({.max_depth = c.listops_max_depth,
                             .max_args = c.listops_max_args,
                             .max_length = c.listops_max_length});
    if (!task.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("TrainConfig.listops_*: ", task.status().message()));
    }
    vocab = task->vocab_size();
    listops = *task;
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
  trainer->listops_ = listops;
  trainer->bytes_ = std::move(bytes);
  const int64_t rows = c.batch_size * c.seq_len;
  trainer->logits_.resize(rows * c.model.num_tokens);
  trainer->losses_.resize(rows);
  trainer->d_losses_.resize(rows);
  return trainer;
}

absl::StatusOr<TokenBatch> Trainer::TaskBatch(DataSplit split, uint64_t seed,
                                              uint64_t step,
                                              int64_t batch_size) const {
  if (copy_task_.has_value()) {
    return copy_task_->Batch(seed, step, batch_size, config_.seq_len);
  }
  if (listops_.has_value()) {
    return listops_->Batch(seed, step, batch_size, config_.seq_len);
  }
  return bytes_->Batch(split, seed, step, batch_size, config_.seq_len);
}

absl::StatusOr<TokenBatch> Trainer::TrainBatch(int64_t step) const {
  return TaskBatch(DataSplit::kTrain, config_.seed, static_cast<uint64_t>(step),
                   config_.accumulation_steps * config_.batch_size);
}

absl::StatusOr<TokenBatch> Trainer::EvalBatch(int64_t index) const {
  return TaskBatch(DataSplit::kHeldOut,
                   Random64(config_.seed, kEvalSeedStream, 0),
                   static_cast<uint64_t>(index), config_.batch_size);
}

absl::StatusOr<float> Trainer::LossAndGradients(const TokenBatch& batch,
                                                bool training,
                                                uint64_t dropout_seed) {
  store_.ZeroGrads();
  return AccumulateLossAndGradients(batch, training, dropout_seed);
}

absl::StatusOr<float> Trainer::AccumulateLossAndGradients(
    const TokenBatch& batch, bool training, uint64_t dropout_seed) {
  const int64_t vocab = config_.model.num_tokens;
  if (batch.batch * batch.length * vocab !=
      static_cast<int64_t>(logits_.size())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Trainer::LossAndGradients: batch must be [", config_.batch_size, ", ",
        config_.seq_len, "], got [", batch.batch, ", ", batch.length, "]"));
  }
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
  FTX_ASSIGN_OR_RETURN(const TokenBatch data, TrainBatch(step));
  StepResult result;
  result.step = step;
  const int64_t micro_batches = config_.accumulation_steps;
  const int64_t rows = config_.batch_size * config_.seq_len;
  TokenBatch micro;
  micro.batch = config_.batch_size;
  micro.length = config_.seq_len;
  store_.ZeroGrads();
  double loss_sum = 0.0;
  for (int64_t j = 0; j < micro_batches; ++j) {
    micro.tokens.assign(data.tokens.begin() + j * rows,
                        data.tokens.begin() + (j + 1) * rows);
    micro.targets.assign(data.targets.begin() + j * rows,
                         data.targets.begin() + (j + 1) * rows);
    // Micro-batch 0 keeps the seed of a step without accumulation.
    const uint64_t dropout_seed =
        Random64(config_.seed, kDropoutStream, static_cast<uint64_t>(step)) +
        static_cast<uint64_t>(j) * kMicroBatchSeedIncrement;
    FTX_ASSIGN_OR_RETURN(
        const float loss,
        AccumulateLossAndGradients(micro, /*training=*/true, dropout_seed));
    loss_sum += loss;
  }
  result.loss =
      static_cast<float>(loss_sum / static_cast<double>(micro_batches));
  if (micro_batches > 1) {
    FTX_RETURN_IF_ERROR(AverageGradients(ctx_, store_, micro_batches));
  }
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
  const int64_t step = optimizer_.step();
  const SafetensorsWriteOptions options{
      .dtype = DType::kF32, .metadata = {{"step", absl::StrCat(step)}}};
  FTX_RETURN_IF_ERROR(
      SaveParams(absl::StrCat(dir, "/", kModelFile), store_, options));
  std::vector<std::pair<std::string, TensorView<const float>>> moments;
  moments.reserve(2 * store_.NumTensors());
  store_.ForEachParam([&moments](const ParamSlot& slot) {
    moments.emplace_back(absl::StrCat(kFirstMomentPrefix, slot.name),
                         slot.first_moment);
  });
  store_.ForEachParam([&moments](const ParamSlot& slot) {
    moments.emplace_back(absl::StrCat(kSecondMomentPrefix, slot.name),
                         slot.second_moment);
  });
  FTX_RETURN_IF_ERROR(WriteSafetensors(absl::StrCat(dir, "/", kOptimizerFile),
                                       moments, options));
  Json files = Json::object();
  for (const char* name : {kModelFile, kOptimizerFile}) {
    FTX_ASSIGN_OR_RETURN(const std::string contents,
                         ReadWholeFile(absl::StrCat(dir, "/", name)));
    files[name] =
        Json{{"bytes", contents.size()}, {"fnv1a64", Fnv1a64(contents)}};
  }
  const AdamWConfig& adamw = optimizer_.config();
  const Json root{{"step", step},
                  {"model", ConfigJson(config_.model)},
                  {"train", TrainJson(config_)},
                  {"optimizer", Json{{"name", "AdamW"},
                                     {"step", step},
                                     {"beta1", adamw.beta1},
                                     {"beta2", adamw.beta2},
                                     {"eps", adamw.eps},
                                     {"weight_decay", adamw.weight_decay}}},
                  {"data", Json{{"seed", config_.seed}, {"next_batch", step}}},
                  {"files", files}};
  return WriteFileAtomically(absl::StrCat(dir, "/", kInfoFile),
                             root.dump(2) + "\n");
}

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Resume(
    const Context& ctx, const AttentionRegistry& registry,
    const TrainConfig& config, const std::string& dir) {
  FTX_ASSIGN_OR_RETURN(std::unique_ptr<Trainer> trainer,
                       Create(ctx, registry, config));
  FTX_ASSIGN_OR_RETURN(const ParsedCheckpoint parsed, ParseCheckpoint(dir));
  const CheckpointInfo& info = parsed.info;
  const TrainConfig& c = trainer->config_;
  if (info.train.task != c.task) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Trainer::Resume: the checkpoint in \"", dir, "\" was trained on the ",
        TaskName(info.train.task), " task but the requested config is the ",
        TaskName(c.task), " task"));
  }
  if (info.step > c.steps) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Trainer::Resume: the checkpoint in \"", dir, "\" is at step ",
        info.step, ", beyond TrainConfig.steps = ", c.steps));
  }
  FTX_RETURN_IF_ERROR(CheckSameConfig(
      ConfigJson(c.model), ConfigJson(info.model), "model.", {}, dir));
  FTX_RETURN_IF_ERROR(CheckSameConfig(TrainJson(c), TrainJson(info.train), "",
                                      {"steps", "eval_every", "eval_batches"},
                                      dir));

  const Json& root = parsed.root;
  const Json no_object;
  const Json& adamw =
      root.contains("optimizer") ? root["optimizer"] : no_object;
  const Json& data = root.contains("data") ? root["data"] : no_object;
  std::string name;
  int64_t optimizer_step = 0, next_batch = 0;
  double beta1 = 0.0, beta2 = 0.0, eps = 0.0;
  uint64_t data_seed = 0;
  if (!adamw.is_object() || !data.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", parsed.path,
                     "\" has no \"optimizer\" and \"data\" state: not a "
                     "resumable checkpoint"));
  }
  FTX_RETURN_IF_ERROR(ReadField(adamw, "name", parsed.path, "optimizer", name));
  FTX_RETURN_IF_ERROR(
      ReadField(adamw, "step", parsed.path, "optimizer", optimizer_step));
  FTX_RETURN_IF_ERROR(
      ReadField(adamw, "beta1", parsed.path, "optimizer", beta1));
  FTX_RETURN_IF_ERROR(
      ReadField(adamw, "beta2", parsed.path, "optimizer", beta2));
  FTX_RETURN_IF_ERROR(ReadField(adamw, "eps", parsed.path, "optimizer", eps));
  FTX_RETURN_IF_ERROR(ReadField(data, "seed", parsed.path, "data", data_seed));
  FTX_RETURN_IF_ERROR(
      ReadField(data, "next_batch", parsed.path, "data", next_batch));
  const AdamWConfig& expected = trainer->optimizer_.config();
  if (name != "AdamW" || beta1 != expected.beta1 || beta2 != expected.beta2 ||
      eps != expected.eps) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", parsed.path, "\": optimizer ", adamw.dump(),
                     " is not the trainer's AdamW (betas ", expected.beta1,
                     ", ", expected.beta2, ", eps ", expected.eps, ")"));
  }
  if (optimizer_step != info.step || next_batch != info.step ||
      data_seed != c.seed) {
    return absl::InvalidArgumentError(absl::StrCat(
        "\"", parsed.path, "\" is inconsistent: step ", info.step,
        ", optimizer.step ", optimizer_step, ", data.next_batch ", next_batch,
        ", data.seed ", data_seed, " (train.seed ", c.seed, ")"));
  }

  FTX_ASSIGN_OR_RETURN(std::string model_bytes,
                       ReadCheckedFile(parsed, dir, kModelFile));
  FTX_ASSIGN_OR_RETURN(
      const SafetensorsFile model_file,
      SafetensorsFile::FromBytes(std::move(model_bytes),
                                 absl::StrCat(dir, "/", kModelFile)));
  FTX_RETURN_IF_ERROR(CheckAllF32(model_file));
  FTX_RETURN_IF_ERROR(LoadParams(model_file, trainer->store_));

  FTX_ASSIGN_OR_RETURN(std::string optimizer_bytes,
                       ReadCheckedFile(parsed, dir, kOptimizerFile));
  FTX_ASSIGN_OR_RETURN(
      const SafetensorsFile optimizer_file,
      SafetensorsFile::FromBytes(std::move(optimizer_bytes),
                                 absl::StrCat(dir, "/", kOptimizerFile)));
  FTX_RETURN_IF_ERROR(CheckAllF32(optimizer_file));
  ParamStore& store = trainer->store_;
  if (static_cast<int64_t>(optimizer_file.entries().size()) !=
      2 * store.NumTensors()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "\"", optimizer_file.source(), "\" has ",
        optimizer_file.entries().size(), " tensors, expected ",
        2 * store.NumTensors(), " (m/ and v/ of every parameter)"));
  }
  absl::Status loaded = absl::OkStatus();
  store.ForEachParam([&](const ParamSlot& slot) {
    if (!loaded.ok()) return;
    loaded = optimizer_file.ReadFloat(
        absl::StrCat(kFirstMomentPrefix, slot.name), slot.first_moment);
    if (loaded.ok()) {
      loaded = optimizer_file.ReadFloat(
          absl::StrCat(kSecondMomentPrefix, slot.name), slot.second_moment);
    }
  });
  if (!loaded.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", optimizer_file.source(), "\": ", loaded.message()));
  }
  FTX_RETURN_IF_ERROR(trainer->optimizer_.set_step(info.step));
  return trainer;
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
        static_cast<double>(config_.accumulation_steps * config_.batch_size *
                            config_.seq_len) /
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
  FTX_ASSIGN_OR_RETURN(ParsedCheckpoint parsed, ParseCheckpoint(dir));
  return std::move(parsed.info);
}

}  // namespace ftx
