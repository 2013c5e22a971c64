// The training loop of a TransformerWrapper language model on a CopyTask, a
// ListOpsTask or a ByteDataset (models/data.h). One step, with
// k = accumulation_steps micro-batches of B = batch_size sequences:
//
//   batch(seed, step) of k B sequences; for each micro-batch j (rows
//   j B .. (j + 1) B - 1): Forward (training: dropout seed = f(seed, step, j))
//   -> loss_j = mean cross-entropy over its targets that are not ignored
//   -> Backward, gradients accumulated (+=)
//   -> AverageGradients (1 / k) -> ClipGradNorm(clip)
//   -> AdamW with lr = WarmupCosine(step); the step's loss is mean_j loss_j
//
// which is nanoGPT's train.py loop (gradient_accumulation_steps, AdamW with
// betas (0.9, 0.999), no weight decay on parameters of rank < 2). Since the
// step's data does not depend on k, (B, k) and (k B, 1) see the same
// sequences, and give the same update (to float rounding) whenever every
// sequence scores as many positions (true of all three tasks) and there is
// no dropout. On a CPU
// context with a fixed thread count the run is deterministic: the same config
// gives bitwise the same losses and parameters.
//
// Evaluation runs eval_batches fixed batches (their own seed, the same at
// every evaluation; held-out windows for bytes) without dropout and reports
// the mean loss, the accuracy of the greedy argmax of every scored position
// under teacher forcing (for ListOps: the answer accuracy) and, for the copy
// task, the exact-copy accuracy: the
// fraction of sequences whose copied symbols are all predicted right.
//
// A checkpoint in directory D holds everything a run needs to go on as if it
// had never stopped:
//   D/model.safetensors      the parameter values (SaveParams, F32)
//   D/optimizer.safetensors  the AdamW moments, "m/<param>" and "v/<param>"
//                            (F32, the store's layout and order)
//   D/checkpoint.json        {"step": s, "model": TransformerConfig,
//                             "train": {...}, "optimizer": {"name": "AdamW",
//                             "step": s, betas, eps, weight_decay},
//                             "data": {"seed": seed, "next_batch": s},
//                             "files": {name: {"bytes": n, "fnv1a64": hex}}}
// Every file is written to a temporary file, fsynced and renamed (the JSON
// last), so a file is either the old or the new one. "files" ties the two
// safetensors files to the JSON: a save interrupted between renames, a
// truncated or altered file all fail the size or FNV-1a check on Resume.
// The data batches and dropout seeds are pure functions of (seed, step), so
// the step is the whole data/RNG position.
//
// Example:
//   FTX_ASSIGN_OR_RETURN(auto trainer, Trainer::Create(ctx, registry, config));
//   FTX_RETURN_IF_ERROR(trainer->Run([](const TrainProgress& p) { ... }));
//   // Later, in another process with the same config:
//   FTX_ASSIGN_OR_RETURN(auto resumed,
//                        Trainer::Resume(ctx, registry, config, dir));
#ifndef FTX_MODELS_TRAINER_H_
#define FTX_MODELS_TRAINER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "attention/registry.h"
#include "kernels/base/context.h"
#include "models/data.h"
#include "models/optimizer.h"
#include "models/param_store.h"
#include "models/schedule.h"
#include "models/transformer.h"

namespace ftx {

enum class TrainTask { kCopy, kBytes, kListOps };

struct TrainConfig {
  // num_tokens 0 becomes the task's vocabulary (copy_alphabet + 1, 256 or 18)
  // and
  // max_seq_len 0 becomes seq_len; otherwise they must be at least those.
  TransformerConfig model;
  TrainTask task = TrainTask::kCopy;
  int64_t copy_alphabet = 10;      // kCopy: symbols
  std::string data_path;           // kBytes: the file
  double held_out_fraction = 0.1;  // kBytes: the file's tail held out
  int64_t listops_max_depth = 10;  // kListOps: operator nesting, >= 1
  int64_t listops_max_args = 10;   // kListOps: arguments per operator, >= 2
  int64_t listops_max_length = 0;  // kListOps: expression tokens, >= 5;
                                   // 0: seq_len - 1
  int64_t steps = 1000;            // >= 1 optimizer steps
  int64_t batch_size = 16;         // B >= 1
  int64_t seq_len = 64;  // T >= 1 (even for the copy task, >= 6 for ListOps)
  int64_t accumulation_steps = 1;  // k >= 1 micro-batches per optimizer step
  double lr = 1e-3;                // peak learning rate
  int64_t warmup = 100;            // warm-up steps, < steps
  double min_lr = 1e-4;            // cosine floor, <= lr
  double weight_decay = 0.01;
  double clip = 1.0;         // max gradient norm; 0 turns clipping off
  uint64_t seed = 0;         // data, dropout and evaluation batches
  int64_t eval_every = 0;    // Run evaluates every this many steps (0: only
                             // at the end)
  int64_t eval_batches = 8;  // batches of batch_size per evaluation
  std::string out_dir;       // Run checkpoints here at every evaluation;
                             // empty: no checkpoints
};

struct StepResult {
  int64_t step = 0;        // 0-based number of the step just done
  float loss = 0.0f;       // before the update
  float grad_norm = 0.0f;  // before clipping
  double lr = 0.0;
};

struct EvalResult {
  double loss = 0.0;            // mean over every scored position
  double token_accuracy = 0.0;  // argmax == target over scored positions
                                // (ListOps: the answer accuracy)
  // Copy task only: sequences whose copied symbols are all right.
  std::optional<double> exact_copy_accuracy;
  int64_t sequences = 0;
};

// What Run reports after every step and after every evaluation.
struct TrainProgress {
  StepResult step;
  std::optional<EvalResult> eval;  // set right after an evaluation
  double elapsed_seconds = 0.0;    // wall time of the steps so far
  double tokens_per_second = 0.0;  // k * B * T * steps done / elapsed
  double eta_seconds = 0.0;        // remaining steps at the same rate
};

class Trainer {
 public:
  // InvalidArgument naming the first bad field of `config` (or of the model
  // config); NotFound / InvalidArgument from ByteDataset::Open. The model is
  // created and initialised from config.model.seed. `ctx` must be a CPU
  // context that outlives the trainer.
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(
      const Context& ctx, const AttentionRegistry& registry,
      const TrainConfig& config);

  const TrainConfig& config() const { return config_; }
  TransformerWrapper& model() { return *model_; }
  ParamStore& params() { return store_; }
  // Create(config), then restores the parameters, the AdamW moments and the
  // step from the checkpoint in `dir`: on the same CPU with the same thread
  // count the following steps give bitwise the losses and parameters of an
  // uninterrupted run. `config` must equal the checkpoint's (model config
  // with the task's defaults filled in, task, data, batch, optimizer,
  // schedule and seed) except for steps (>= the checkpoint's step; a
  // different value extends or shortens the cosine schedule from there on),
  // eval_every, eval_batches and out_dir. NotFound for a missing file,
  // InvalidArgument naming the file or field for anything corrupt or
  // different.
  static absl::StatusOr<std::unique_ptr<Trainer>> Resume(
      const Context& ctx, const AttentionRegistry& registry,
      const TrainConfig& config, const std::string& dir);

  // Steps done so far; the next Step is step number step().
  int64_t step() const { return optimizer_.step(); }

  // The training data of step `step`: accumulation_steps * batch_size
  // sequences (micro-batch j is rows j B .. (j + 1) B - 1).
  absl::StatusOr<TokenBatch> TrainBatch(int64_t step) const;
  // Zeroes the gradients, runs Forward (training with `dropout_seed`, or
  // not), the mean cross-entropy and Backward on a [batch_size, seq_len]
  // batch: the store's gradients are then those of the returned loss.
  absl::StatusOr<float> LossAndGradients(const TokenBatch& batch, bool training,
                                         uint64_t dropout_seed);
  // One optimizer step on TrainBatch(step()) as described above; after it
  // the store's gradients are the (averaged, clipped) ones it applied.
  // InvalidArgument (and no update) when the gradient norm is not finite.
  absl::StatusOr<StepResult> Step();
  // The evaluation described above (no parameter changes).
  absl::StatusOr<EvalResult> Evaluate();
  // Writes the checkpoint described above to dir, creating dir.
  absl::Status SaveCheckpoint(const std::string& dir);

  // Steps until config.steps, evaluating every eval_every steps and after the
  // last (checkpointing to out_dir then when it is set); `on_progress` (may
  // be empty) sees every step and every evaluation.
  absl::Status Run(
      const std::function<void(const TrainProgress&)>& on_progress);

 private:
  Trainer(const Context& ctx, const TrainConfig& config,
          std::unique_ptr<TransformerWrapper> model, ParamStore store,
          AdamW optimizer, LearningRateSchedule schedule)
      : ctx_(ctx),
        config_(config),
        model_(std::move(model)),
        store_(std::move(store)),
        optimizer_(std::move(optimizer)),
        schedule_(schedule) {}

  absl::StatusOr<TokenBatch> EvalBatch(int64_t index) const;
  // The task's batch of `batch_size` sequences for (seed, step).
  absl::StatusOr<TokenBatch> TaskBatch(DataSplit split, uint64_t seed,
                                       uint64_t step, int64_t batch_size) const;
  // LossAndGradients without zeroing: the batch's gradients are added.
  absl::StatusOr<float> AccumulateLossAndGradients(const TokenBatch& batch,
                                                   bool training,
                                                   uint64_t dropout_seed);

  const Context& ctx_;
  TrainConfig config_;
  std::unique_ptr<TransformerWrapper> model_;
  ParamStore store_;
  AdamW optimizer_;
  LearningRateSchedule schedule_;
  std::optional<CopyTask> copy_task_;
  std::optional<ListOpsTask> listops_;
  std::optional<ByteDataset> bytes_;
  std::vector<float> logits_, losses_, d_losses_;
};

// The config as a JSON object that TransformerConfigFromJson reads back to an
// equal config.
std::string TransformerConfigToJson(const TransformerConfig& config);

// What checkpoint.json records.
struct CheckpointInfo {
  int64_t step = 0;
  TransformerConfig model;
  TrainConfig train;  // train.model == model; train.out_dir is empty
};
// Reads dir/checkpoint.json. NotFound / InvalidArgument naming the file (and
// the field).
absl::StatusOr<CheckpointInfo> ReadCheckpointInfo(const std::string& dir);

}  // namespace ftx

#endif  // FTX_MODELS_TRAINER_H_
