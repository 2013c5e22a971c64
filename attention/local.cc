#include "attention/local.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "attention/rotary.h"
#include "kernels/base/philox.h"
#include "kernels/base/status_macros.h"
#include "kernels/matmul/matmul.h"

namespace ftx {
namespace {

// Philox stream of local attention-dropout masks.
constexpr uint64_t kDropoutStream = 0x10CA1;
// fast-transformers' additive_matrix_finite and the local_product score
// pre-fill.
constexpr float kFastTransformersMasked = -1e24f;
// Rows per query block of "local" when local_context is small: enough rows for
// the block matmuls to run at speed.
constexpr int64_t kMinCenteredBlock = 32;

enum Saved : int {
  // Softmax over each query's slots, stored densely per block [N, H, L, W_max].
  kProbabilities,
  // The weight of one masked slot [N, H, L] (0 unless the row sees no key).
  kFillProbabilities,
};

// Keys of one query's window: slot 0 holds key `start`; [lo, hi) are the slots
// inside the sequence; [begin, end) ⊆ [lo, hi) are the visible (unmasked) keys.
struct RowWindow {
  int64_t start = 0, lo = 0, hi = 0, begin = 0, end = 0;
};

// Which keys a query sees and how it scores them; shared by both flavours.
struct BandRule {
  // Slots per query: c, or (look_backward + 1 + look_forward) * window.
  int64_t width = 1;
  // Windows start at multiples of `window` (lucidrains) or are centred on l.
  bool aligned = false;
  int64_t half = 0;    // centred: slot 0 holds key l - half
  int64_t window = 1;  // aligned: window size
  int64_t look_backward = 0;
  int64_t block = 1;  // query rows per matmul block
  bool causal = false;
  int64_t causal_offset = 0;  // causal: keys s <= l + causal_offset
  int64_t exact_lag = -1;     // >= 0: keys s >= l - exact_lag
  bool mask_queries = false;  // queries at or past the key length see nothing
  float scale = 1.0f;         // z = scale * (q . k + bias)
  float fill = 0.0f;          // score of every masked slot
  float pad_value = 0.0f;     // value of the slots outside the sequence
  const AttnMask* bias = nullptr;  // additive attn_mask, or null

  RowWindow Window(int64_t l, int64_t keys, int64_t key_length) const {
    RowWindow row;
    row.start = aligned ? (l / window - look_backward) * window : l - half;
    row.lo = std::clamp<int64_t>(row.start, 0, keys);
    row.hi = std::clamp<int64_t>(row.start + width, row.lo, keys);
    row.begin = row.lo;
    row.end = std::min(row.hi, key_length);
    if (causal) row.end = std::min(row.end, l + causal_offset + 1);
    if (exact_lag >= 0) row.begin = std::max(row.begin, l - exact_lag);
    if (mask_queries && l >= key_length) row.end = row.begin;
    row.end = std::max(row.end, row.begin);
    return row;
  }

  float Bias(int64_t l, int64_t s) const {
    if (bias == nullptr) return 0.0f;
    const float value = bias->additive().at(l, s);
    return std::isinf(value) && value < 0 ? kFastTransformersMasked : value;
  }
};

// Query block [l0, l1) and the key range [k0, k1) holding all its windows.
struct Block {
  int64_t l0, l1, k0, k1;
};

struct BlockPlan {
  std::vector<Block> blocks;
  // The widest key range: the row length of the saved probabilities.
  int64_t width = 1;
};

BlockPlan PlanBlocks(const BandRule& rule, int64_t queries, int64_t keys) {
  BlockPlan plan;
  for (int64_t l0 = 0; l0 < queries; l0 += rule.block) {
    const int64_t l1 = std::min(queries, l0 + rule.block);
    const int64_t k0 = rule.Window(l0, keys, keys).lo;
    const int64_t k1 = std::max(k0, rule.Window(l1 - 1, keys, keys).hi);
    plan.blocks.push_back({l0, l1, k0, k1});
    plan.width = std::max(plan.width, k1 - k0);
  }
  return plan;
}

struct Dropout {
  bool active = false;
  float p = 0.0f;
  uint64_t seed = 0;
  // keep / (1 - p) for Philox element `index`.
  float Scale(uint64_t index) const {
    return RandomUniform(seed, kDropoutStream, index) >= p ? 1.0f / (1.0f - p)
                                                           : 0.0f;
  }
};

// One banded attention call: queries [N, L, H, E], keys [N, S, H, E], values
// [N, S, H, D], any leading strides.
struct BandProblem {
  BandRule rule;
  TensorView<const float> queries, keys, values;
  const LengthMask* key_lengths = nullptr;
  Dropout dropout;

  int64_t batch() const { return queries.dim(0); }
  int64_t length() const { return queries.dim(1); }
  int64_t heads() const { return queries.dim(2); }
  int64_t key_count() const { return keys.dim(1); }
  // Philox element of slot `slot` of query l of (n, h) = nh.
  uint64_t DropoutIndex(int64_t nh, int64_t l, int64_t slot) const {
    return static_cast<uint64_t>((nh * length() + l) * rule.width + slot);
  }
  // Sum over the out-of-sequence slots of their dropout scales (their count
  // without dropout): the factor of pad_value in the output of a fully masked
  // row.
  float PadMass(int64_t nh, int64_t l, const RowWindow& row) const {
    const int64_t before = row.lo - row.start;
    const int64_t after = rule.width - (row.hi - row.start);
    if (!dropout.active) return static_cast<float>(before + after);
    float mass = 0.0f;
    for (int64_t j = 0; j < before; ++j)
      mass += dropout.Scale(DropoutIndex(nh, l, j));
    for (int64_t j = rule.width - after; j < rule.width; ++j) {
      mass += dropout.Scale(DropoutIndex(nh, l, j));
    }
    return mass;
  }
};

// The [rows, cols] matrix at `data` with row stride `stride`.
template <typename T>
TensorView<T> Rows(T* data, int64_t rows, int64_t cols, int64_t stride) {
  return TensorView<T>(data, {rows, cols}, {stride, 1, 0, 0});
}

// Turns row l's raw dots (columns = keys k0 + j) into softmax probabilities
// over its slots, with every masked slot scored rule.fill. Columns outside the
// window become 0, masked in-sequence columns the fill probability, which is
// also returned.
float RowSoftmax(const BandRule& rule, int64_t l, const RowWindow& row,
                 int64_t k0, int64_t width, float* p) {
  const int64_t visible = row.end - row.begin;
  const int64_t masked = rule.width - visible;
  float max_score =
      masked > 0 ? rule.fill : -std::numeric_limits<float>::infinity();
  for (int64_t s = row.begin; s < row.end; ++s) {
    const float z = rule.scale * (p[s - k0] + rule.Bias(l, s));
    p[s - k0] = z;
    max_score = std::max(max_score, z);
  }
  float total = 0.0f;
  for (int64_t s = row.begin; s < row.end; ++s) {
    p[s - k0] = std::exp(p[s - k0] - max_score);
    total += p[s - k0];
  }
  const float fill_weight = masked > 0 ? std::exp(rule.fill - max_score) : 0.0f;
  total += static_cast<float>(masked) * fill_weight;
  const float inverse = 1.0f / total;
  for (int64_t s = row.begin; s < row.end; ++s) p[s - k0] *= inverse;
  const float fill_probability = fill_weight * inverse;
  std::fill(p, p + (row.lo - k0), 0.0f);
  std::fill(p + (row.lo - k0), p + (row.begin - k0), fill_probability);
  std::fill(p + (row.end - k0), p + (row.hi - k0), fill_probability);
  std::fill(p + (row.hi - k0), p + width, 0.0f);
  return fill_probability;
}

absl::Status FirstError(const std::vector<absl::Status>& statuses) {
  for (const absl::Status& status : statuses) {
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

// out [N, L, H, D] = banded attention; saves the probabilities for
// BandBackward.
absl::Status BandForward(const Context& ctx, const BandProblem& problem,
                         TensorView<float> out, absl::Span<Tensor> saved) {
  const BandRule& rule = problem.rule;
  const int64_t N = problem.batch(), L = problem.length(), H = problem.heads();
  const int64_t S = problem.key_count(), D = problem.values.dim(3);
  const BlockPlan plan = PlanBlocks(rule, L, S);
  const int64_t W = plan.width;
  FTX_RETURN_IF_ERROR(
      EnsureTensor(saved[kProbabilities], {N, H, L, W}, ctx.device()));
  FTX_RETURN_IF_ERROR(
      EnsureTensor(saved[kFillProbabilities], {N, H, L}, ctx.device()));
  float* probabilities = saved[kProbabilities].data<float>();
  float* fill_probabilities = saved[kFillProbabilities].data<float>();
  std::vector<absl::Status> statuses(N * H);
  ctx.pool().ParallelFor(N * H, [&](int64_t begin, int64_t end) {
    std::vector<float> dropped(problem.dropout.active ? rule.block * W : 0);
    for (int64_t nh = begin; nh < end; ++nh) {
      const int64_t n = nh / H, h = nh % H;
      const int64_t key_length = problem.key_lengths->Length(n, S);
      const TensorView<const float> q =
          problem.queries.Select(0, n).Select(1, h);
      const TensorView<const float> k = problem.keys.Select(0, n).Select(1, h);
      const TensorView<const float> v =
          problem.values.Select(0, n).Select(1, h);
      const TensorView<float> o = out.Select(0, n).Select(1, h);
      for (const Block& block : plan.blocks) {
        const int64_t rows = block.l1 - block.l0, cols = block.k1 - block.k0;
        float* p = probabilities + (nh * L + block.l0) * W;
        if (cols > 0) {
          absl::Status status =
              MatMul(ctx, q.Slice(0, block.l0, block.l1),
                     k.Slice(0, block.k0, block.k1), Rows(p, rows, cols, W),
                     {.transpose_b = true});
          if (!status.ok()) {
            statuses[nh] = std::move(status);
            return;
          }
        }
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t l = block.l0 + r;
          const RowWindow row = rule.Window(l, S, key_length);
          fill_probabilities[nh * L + l] =
              RowSoftmax(rule, l, row, block.k0, W, p + r * W);
        }
        const float* attended = p;
        if (problem.dropout.active) {
          for (int64_t r = 0; r < rows; ++r) {
            const int64_t l = block.l0 + r;
            const int64_t start = rule.Window(l, S, key_length).start;
            for (int64_t j = 0; j < cols; ++j) {
              const float weight = p[r * W + j];
              dropped[r * W + j] =
                  weight == 0.0f
                      ? 0.0f
                      : weight * problem.dropout.Scale(problem.DropoutIndex(
                                     nh, l, block.k0 + j - start));
            }
          }
          attended = dropped.data();
        }
        const TensorView<float> o_rows = o.Slice(0, block.l0, block.l1);
        if (cols > 0) {
          absl::Status status = MatMul(ctx, Rows(attended, rows, cols, W),
                                       v.Slice(0, block.k0, block.k1), o_rows);
          if (!status.ok()) {
            statuses[nh] = std::move(status);
            return;
          }
        } else {
          for (int64_t r = 0; r < rows; ++r)
            std::fill_n(&o_rows.at(r, 0), D, 0.0f);
        }
        if (rule.pad_value == 0.0f) continue;
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t l = block.l0 + r;
          const float fill_probability = fill_probabilities[nh * L + l];
          if (fill_probability == 0.0f) continue;
          const float pad =
              rule.pad_value * fill_probability *
              problem.PadMass(nh, l, rule.Window(l, S, key_length));
          float* o_row = &o_rows.at(r, 0);
          for (int64_t d = 0; d < D; ++d) o_row[d] += pad;
        }
      }
    }
  });
  return FirstError(statuses);
}

// Backward of BandForward: d_queries, d_keys, d_values written (=).
absl::Status BandBackward(const Context& ctx, const BandProblem& problem,
                          absl::Span<const Tensor> saved,
                          TensorView<const float> d_out,
                          const AttentionGrads& grads) {
  const BandRule& rule = problem.rule;
  const int64_t N = problem.batch(), L = problem.length(), H = problem.heads();
  const int64_t S = problem.key_count(), E = problem.queries.dim(3);
  const int64_t D = problem.values.dim(3);
  const BlockPlan plan = PlanBlocks(rule, L, S);
  const int64_t W = plan.width;
  const float* probabilities = saved[kProbabilities].data<float>();
  const float* fill_probabilities = saved[kFillProbabilities].data<float>();
  std::vector<absl::Status> statuses(N * H);
  ctx.pool().ParallelFor(N * H, [&](int64_t begin, int64_t end) {
    std::vector<float> d_scores(rule.block * W);
    std::vector<float> dropped(problem.dropout.active ? rule.block * W : 0);
    for (int64_t nh = begin; nh < end; ++nh) {
      const int64_t n = nh / H, h = nh % H;
      const int64_t key_length = problem.key_lengths->Length(n, S);
      const TensorView<const float> q =
          problem.queries.Select(0, n).Select(1, h);
      const TensorView<const float> k = problem.keys.Select(0, n).Select(1, h);
      const TensorView<const float> v =
          problem.values.Select(0, n).Select(1, h);
      const TensorView<const float> g = d_out.Select(0, n).Select(1, h);
      const TensorView<float> dq = grads.d_queries.Select(0, n).Select(1, h);
      const TensorView<float> dk = grads.d_keys.Select(0, n).Select(1, h);
      const TensorView<float> dv = grads.d_values.Select(0, n).Select(1, h);
      for (int64_t s = 0; s < S; ++s) {
        std::fill_n(&dk.at(s, 0), E, 0.0f);
        std::fill_n(&dv.at(s, 0), D, 0.0f);
      }
      auto fail = [&](absl::Status status) {
        statuses[nh] = std::move(status);
      };
      for (const Block& block : plan.blocks) {
        const int64_t rows = block.l1 - block.l0, cols = block.k1 - block.k0;
        if (cols == 0) {
          for (int64_t l = block.l0; l < block.l1; ++l)
            std::fill_n(&dq.at(l, 0), E, 0.0f);
          continue;
        }
        const float* p = probabilities + (nh * L + block.l0) * W;
        const TensorView<const float> g_rows = g.Slice(0, block.l0, block.l1);
        const TensorView<const float> k_range = k.Slice(0, block.k0, block.k1);
        // d(attended) = d_out V^T over the block's key range.
        absl::Status status =
            MatMul(ctx, g_rows, v.Slice(0, block.k0, block.k1),
                   Rows(d_scores.data(), rows, cols, W), {.transpose_b = true});
        if (!status.ok()) return fail(std::move(status));
        const float* attended = p;
        if (problem.dropout.active) {
          for (int64_t r = 0; r < rows; ++r) {
            const int64_t l = block.l0 + r;
            const int64_t start = rule.Window(l, S, key_length).start;
            for (int64_t j = 0; j < cols; ++j) {
              const float weight = p[r * W + j];
              const float scale =
                  weight == 0.0f ? 0.0f
                                 : problem.dropout.Scale(problem.DropoutIndex(
                                       nh, l, block.k0 + j - start));
              dropped[r * W + j] = weight * scale;
              d_scores[r * W + j] *= scale;  // now d(probabilities)
            }
          }
          attended = dropped.data();
        }
        // d_V[key range] += attended^T d_out.
        status = MatMul(ctx, Rows(attended, rows, cols, W), g_rows,
                        dv.Slice(0, block.k0, block.k1),
                        {.transpose_a = true, .beta = 1.0f});
        if (!status.ok()) return fail(std::move(status));
        // Softmax backward, keeping only the visible keys (the scores of masked
        // slots do not depend on q or k).
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t l = block.l0 + r;
          const RowWindow row = rule.Window(l, S, key_length);
          const float* p_row = p + r * W;
          float* d_row = d_scores.data() + r * W;
          float weighted = 0.0f;
          for (int64_t s = row.lo; s < row.hi; ++s) {
            weighted += p_row[s - block.k0] * d_row[s - block.k0];
          }
          const float fill_probability = fill_probabilities[nh * L + l];
          if (rule.pad_value != 0.0f && fill_probability != 0.0f) {
            float g_sum = 0.0f;
            for (int64_t d = 0; d < D; ++d) g_sum += g_rows.at(r, d);
            weighted += fill_probability * rule.pad_value * g_sum *
                        problem.PadMass(nh, l, row);
          }
          std::fill(d_row, d_row + (row.begin - block.k0), 0.0f);
          for (int64_t s = row.begin; s < row.end; ++s) {
            const int64_t j = s - block.k0;
            d_row[j] = rule.scale * p_row[j] * (d_row[j] - weighted);
          }
          std::fill(d_row + (row.end - block.k0), d_row + cols, 0.0f);
        }
        const TensorView<const float> d_dots =
            Rows<const float>(d_scores.data(), rows, cols, W);
        status = MatMul(ctx, d_dots, k_range, dq.Slice(0, block.l0, block.l1));
        if (!status.ok()) return fail(std::move(status));
        status = MatMul(ctx, d_dots, q.Slice(0, block.l0, block.l1),
                        dk.Slice(0, block.k0, block.k1),
                        {.transpose_a = true, .beta = 1.0f});
        if (!status.ok()) return fail(std::move(status));
      }
    }
  });
  return FirstError(statuses);
}

absl::Status CheckSaved(const char* op, absl::Span<const Tensor> saved,
                        const BandProblem& problem) {
  const int64_t N = problem.batch(), L = problem.length(), H = problem.heads();
  const BlockPlan plan = PlanBlocks(problem.rule, L, problem.key_count());
  if (saved.size() != LocalWindowedAttention::kSavedCount ||
      saved[kProbabilities].shape() != Shape{N, H, L, plan.width} ||
      saved[kFillProbabilities].shape() != Shape{N, H, L}) {
    return absl::FailedPreconditionError(
        absl::StrCat(op,
                     ": the cache does not come from a Forward with these "
                     "inputs (pass a cache to Forward)"));
  }
  return absl::OkStatus();
}

absl::Status CheckDropout(const char* op, float dropout) {
  if (!(dropout >= 0.0f && dropout < 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": attention_dropout must be in [0, 1), got ", dropout));
  }
  return absl::OkStatus();
}

Dropout MakeDropout(const AttentionInputs& inputs, float p) {
  Dropout dropout;
  dropout.active = inputs.training && p > 0.0f;
  dropout.p = p;
  dropout.seed = inputs.seed;
  return dropout;
}

// fast-transformers "local" on validated inputs.
BandProblem FastTransformersProblem(const LocalAttentionOptions& options,
                                    const AttentionInputs& inputs,
                                    int64_t queries) {
  BandProblem problem;
  BandRule& rule = problem.rule;
  const int64_t E = inputs.queries.dim(3);
  rule.width = options.local_context;
  rule.half = options.local_context / 2;
  // Blocks of about c/2 rows: each block's key range is c + rows - 1 wide.
  rule.block = std::min(std::max(options.local_context / 2, kMinCenteredBlock),
                        std::max<int64_t>(queries, 1));
  rule.scale = SoftmaxTemperature(options.softmax_temp, E);
  rule.fill = rule.scale * kFastTransformersMasked;
  switch (inputs.attn_mask.kind()) {
    case AttnMask::Kind::kAll:
      break;
    case AttnMask::Kind::kCausal:
      rule.causal = true;
      rule.causal_offset = inputs.attn_mask.causal_offset();
      break;
    case AttnMask::Kind::kAdditive:
      rule.bias = &inputs.attn_mask;
      break;
  }
  problem.queries = inputs.queries;
  problem.keys = inputs.keys;
  problem.values = inputs.values;
  problem.key_lengths = &inputs.key_lengths;
  problem.dropout = MakeDropout(inputs, options.attention_dropout);
  return problem;
}

absl::Status CheckCpu(const char* op, const Context& ctx) {
  if (ctx.device().type != DeviceType::kCpu) {
    return absl::UnimplementedError(
        absl::StrCat(op, ": only the CPU path exists so far"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateLocalAttentionOptions(
    const LocalAttentionOptions& options) {
  if (options.local_context <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("LocalAttention: local_context must be positive, got ",
                     options.local_context));
  }
  if (options.softmax_temp.has_value() &&
      !std::isfinite(*options.softmax_temp)) {
    return absl::InvalidArgumentError(
        "LocalAttention: softmax_temp must be finite");
  }
  return CheckDropout("LocalAttention", options.attention_dropout);
}

absl::Status LocalAttention::Forward(const Context& ctx,
                                     const AttentionInputs& inputs,
                                     TensorView<float> out,
                                     AttentionCache* cache) {
  constexpr char kOp[] = "LocalAttention";
  FTX_RETURN_IF_ERROR(ValidateLocalAttentionOptions(options_));
  FTX_ASSIGN_OR_RETURN(const AttentionDims dims,
                       ValidateAttentionForward(kOp, ctx, inputs, out));
  FTX_RETURN_IF_ERROR(CheckCpu(kOp, ctx));
  AttentionCache& saved = cache != nullptr ? *cache : scratch_;
  saved.saved.resize(LocalWindowedAttention::kSavedCount);
  return BandForward(ctx,
                     FastTransformersProblem(options_, inputs, dims.queries),
                     out, absl::MakeSpan(saved.saved));
}

absl::Status LocalAttention::Backward(const Context& ctx,
                                      const AttentionInputs& inputs,
                                      const AttentionCache& cache,
                                      TensorView<const float> d_out,
                                      const AttentionGrads& grads) {
  constexpr char kOp[] = "LocalAttentionBackward";
  FTX_RETURN_IF_ERROR(ValidateLocalAttentionOptions(options_));
  FTX_ASSIGN_OR_RETURN(
      const AttentionDims dims,
      ValidateAttentionBackward(kOp, ctx, inputs, d_out, grads));
  FTX_RETURN_IF_ERROR(CheckCpu(kOp, ctx));
  const BandProblem problem =
      FastTransformersProblem(options_, inputs, dims.queries);
  const absl::Span<const Tensor> saved(cache.saved);
  FTX_RETURN_IF_ERROR(CheckSaved(kOp, saved, problem));
  return BandBackward(ctx, problem, saved, d_out, grads);
}

absl::Status ValidateLocalWindowedAttentionOptions(
    const LocalWindowedAttentionOptions& options) {
  constexpr char kOp[] = "LocalWindowedAttention";
  if (options.window_size <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": window_size must be positive, got ", options.window_size));
  }
  if (options.look_backward < 0 || options.LookForward() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": look_backward and look_forward must be >= 0, got ",
                     options.look_backward, " and ", options.LookForward()));
  }
  if (options.causal && options.LookForward() > 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp,
                     ": look_forward must be 0 when causal (you cannot look "
                     "forward if causal), got ",
                     options.LookForward()));
  }
  return CheckDropout(kOp, options.attention_dropout);
}

namespace {

// to [N, T', H, W] = from [N, T, H, W] in its first T rows, 0 in the rest.
void CopyRows(const Context& ctx, TensorView<const float> from,
              TensorView<float> to) {
  const int64_t N = from.dim(0), T = from.dim(1), H = from.dim(2),
                W = from.dim(3);
  ctx.pool().ParallelFor(N * to.dim(1), [&](int64_t begin, int64_t end) {
    for (int64_t nt = begin; nt < end; ++nt) {
      const int64_t n = nt / to.dim(1), t = nt % to.dim(1);
      for (int64_t h = 0; h < H; ++h) {
        float* row = &to.at(n, t, h, 0);
        if (t < T) {
          std::copy_n(&from.at(n, t, h, 0), W, row);
        } else {
          std::fill_n(row, W, 0.0f);
        }
      }
    }
  });
}

}  // namespace

absl::Status LocalWindowedAttention::Forward(const Context& ctx,
                                             const AttentionInputs& inputs,
                                             TensorView<float> out,
                                             AttentionCache* cache) {
  AttentionCache& saved = cache != nullptr ? *cache : scratch_;
  saved.saved.resize(kSavedCount);
  return ForwardInto(ctx, inputs, out, absl::MakeSpan(saved.saved));
}

absl::Status LocalWindowedAttention::Backward(const Context& ctx,
                                              const AttentionInputs& inputs,
                                              const AttentionCache& cache,
                                              TensorView<const float> d_out,
                                              const AttentionGrads& grads) {
  return BackwardFrom(ctx, inputs, cache.saved, d_out, grads);
}

namespace {

// The rule, the padded length and whether working copies are needed, after
// checking the inputs against the options.
struct WindowedPlan {
  BandRule rule;
  int64_t padded = 0;
  bool copies = false;
};

absl::StatusOr<WindowedPlan> PlanWindowed(
    const char* op, const LocalWindowedAttentionOptions& options,
    const AttentionInputs& inputs, const AttentionDims& dims) {
  FTX_RETURN_IF_ERROR(ValidateLocalWindowedAttentionOptions(options));
  if (dims.queries != dims.keys) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": self-attention only, needs L == S; got L = ", dims.queries,
        " and S = ", dims.keys));
  }
  const int64_t w = options.window_size;
  if (!options.autopad && dims.queries % w != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": sequence length ", dims.queries,
        " must be divisible by window_size ", w, " (or set autopad)"));
  }
  if (options.rel_pos_emb && dims.qk_dim % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": rel_pos_emb needs an even head dimension E, got ", dims.qk_dim));
  }
  WindowedPlan plan;
  BandRule& rule = plan.rule;
  rule.aligned = true;
  rule.window = w;
  rule.look_backward = options.look_backward;
  rule.width = (options.look_backward + 1 + options.LookForward()) * w;
  rule.block = w;
  rule.causal = options.causal;
  rule.causal_offset = 0;
  switch (inputs.attn_mask.kind()) {
    case AttnMask::Kind::kAll:
      break;
    case AttnMask::Kind::kCausal:
      rule.causal_offset =
          rule.causal ? std::min<int64_t>(0, inputs.attn_mask.causal_offset())
                      : inputs.attn_mask.causal_offset();
      rule.causal = true;
      break;
    case AttnMask::Kind::kAdditive:
      return absl::InvalidArgumentError(absl::StrCat(
          op,
          ": additive attn_mask is not supported (lucidrains' local attention "
          "has none); use AttnMask::All, AttnMask::Causal or key_lengths"));
  }
  if (options.causal && options.exact_windowsize)
    rule.exact_lag = w * options.look_backward;
  rule.mask_queries = !inputs.key_lengths.full();
  rule.scale = 1.0f / std::sqrt(static_cast<float>(dims.qk_dim));
  rule.fill = -std::numeric_limits<float>::max();
  rule.pad_value = -1.0f;
  plan.padded = options.autopad ? (dims.queries + w - 1) / w * w : dims.queries;
  plan.copies = options.rel_pos_emb || plan.padded != dims.queries;
  return plan;
}

absl::StatusOr<RotaryEmbedding> WindowRotary(int64_t qk_dim) {
  return RotaryEmbedding::Create({.rotary_dim = qk_dim,
                                  .layout = RotaryLayout::kHalfSplit,
                                  .base = 10000.0});
}

// Working copies of the inputs for rotary and autopad: q, k [N, T, H, E]
// rotated, v [N, T, H, D], zero rows past the sequence.
enum Work : int { kWorkQueries, kWorkKeys, kWorkValues, kWorkOut, kWorkCount };

absl::Status MakeWorkingCopies(const Context& ctx,
                               const LocalWindowedAttentionOptions& options,
                               const AttentionInputs& inputs,
                               const AttentionDims& dims, int64_t padded,
                               std::vector<Tensor>& work) {
  const int64_t N = dims.batch, H = dims.heads;
  work.resize(kWorkCount);
  FTX_RETURN_IF_ERROR(EnsureTensor(work[kWorkQueries],
                                   {N, padded, H, dims.qk_dim}, ctx.device()));
  FTX_RETURN_IF_ERROR(
      EnsureTensor(work[kWorkKeys], {N, padded, H, dims.qk_dim}, ctx.device()));
  FTX_RETURN_IF_ERROR(EnsureTensor(
      work[kWorkValues], {N, padded, H, dims.value_dim}, ctx.device()));
  FTX_RETURN_IF_ERROR(EnsureTensor(
      work[kWorkOut], {N, padded, H, dims.value_dim}, ctx.device()));
  CopyRows(ctx, inputs.queries, work[kWorkQueries].view<float>());
  CopyRows(ctx, inputs.keys, work[kWorkKeys].view<float>());
  CopyRows(ctx, inputs.values, work[kWorkValues].view<float>());
  if (options.rel_pos_emb) {
    FTX_ASSIGN_OR_RETURN(const RotaryEmbedding rotary,
                         WindowRotary(dims.qk_dim));
    FTX_RETURN_IF_ERROR(
        rotary.Forward(ctx, work[kWorkQueries].view<float>(), 0));
    FTX_RETURN_IF_ERROR(rotary.Forward(ctx, work[kWorkKeys].view<float>(), 0));
  }
  return absl::OkStatus();
}

BandProblem WindowedProblem(const WindowedPlan& plan,
                            const AttentionInputs& inputs,
                            const std::vector<Tensor>* work, float dropout) {
  BandProblem problem;
  problem.rule = plan.rule;
  if (work != nullptr) {
    problem.queries = (*work)[kWorkQueries].view<float>();
    problem.keys = (*work)[kWorkKeys].view<float>();
    problem.values = (*work)[kWorkValues].view<float>();
  } else {
    problem.queries = inputs.queries;
    problem.keys = inputs.keys;
    problem.values = inputs.values;
  }
  problem.key_lengths = &inputs.key_lengths;
  problem.dropout = MakeDropout(inputs, dropout);
  return problem;
}

}  // namespace

absl::Status LocalWindowedAttention::ForwardInto(const Context& ctx,
                                                 const AttentionInputs& inputs,
                                                 TensorView<float> out,
                                                 absl::Span<Tensor> saved) {
  constexpr char kOp[] = "LocalWindowedAttention";
  FTX_ASSIGN_OR_RETURN(const AttentionDims dims,
                       ValidateAttentionForward(kOp, ctx, inputs, out));
  FTX_RETURN_IF_ERROR(CheckCpu(kOp, ctx));
  FTX_ASSIGN_OR_RETURN(const WindowedPlan plan,
                       PlanWindowed(kOp, options_, inputs, dims));
  if (saved.size() != kSavedCount) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": needs ", kSavedCount, " saved tensors, got ", saved.size()));
  }
  if (!plan.copies) {
    return BandForward(
        ctx, WindowedProblem(plan, inputs, nullptr, options_.attention_dropout),
        out, saved);
  }
  FTX_RETURN_IF_ERROR(
      MakeWorkingCopies(ctx, options_, inputs, dims, plan.padded, work_));
  const TensorView<float> padded_out = work_[kWorkOut].view<float>();
  FTX_RETURN_IF_ERROR(BandForward(
      ctx, WindowedProblem(plan, inputs, &work_, options_.attention_dropout),
      padded_out, saved));
  CopyRows(ctx, padded_out.Slice(1, 0, dims.queries), out);
  return absl::OkStatus();
}

absl::Status LocalWindowedAttention::BackwardFrom(
    const Context& ctx, const AttentionInputs& inputs,
    absl::Span<const Tensor> saved, TensorView<const float> d_out,
    const AttentionGrads& grads) {
  constexpr char kOp[] = "LocalWindowedAttentionBackward";
  FTX_ASSIGN_OR_RETURN(
      const AttentionDims dims,
      ValidateAttentionBackward(kOp, ctx, inputs, d_out, grads));
  FTX_RETURN_IF_ERROR(CheckCpu(kOp, ctx));
  FTX_ASSIGN_OR_RETURN(const WindowedPlan plan,
                       PlanWindowed(kOp, options_, inputs, dims));
  if (!plan.copies) {
    const BandProblem problem =
        WindowedProblem(plan, inputs, nullptr, options_.attention_dropout);
    FTX_RETURN_IF_ERROR(CheckSaved(kOp, saved, problem));
    return BandBackward(ctx, problem, saved, d_out, grads);
  }
  FTX_RETURN_IF_ERROR(
      MakeWorkingCopies(ctx, options_, inputs, dims, plan.padded, work_));
  const BandProblem problem =
      WindowedProblem(plan, inputs, &work_, options_.attention_dropout);
  FTX_RETURN_IF_ERROR(CheckSaved(kOp, saved, problem));
  const int64_t N = dims.batch, T = plan.padded, H = dims.heads;
  // The padded rows of the output were dropped: their gradient is zero.
  const TensorView<float> padded_d_out = work_[kWorkOut].view<float>();
  CopyRows(ctx, d_out, padded_d_out);
  grad_work_.resize(3);
  FTX_RETURN_IF_ERROR(
      EnsureTensor(grad_work_[0], {N, T, H, dims.qk_dim}, ctx.device()));
  FTX_RETURN_IF_ERROR(
      EnsureTensor(grad_work_[1], {N, T, H, dims.qk_dim}, ctx.device()));
  FTX_RETURN_IF_ERROR(
      EnsureTensor(grad_work_[2], {N, T, H, dims.value_dim}, ctx.device()));
  const TensorView<float> d_queries = grad_work_[0].view<float>();
  const TensorView<float> d_keys = grad_work_[1].view<float>();
  const TensorView<float> d_values = grad_work_[2].view<float>();
  FTX_RETURN_IF_ERROR(BandBackward(ctx, problem, saved, padded_d_out,
                                   {d_queries, d_keys, d_values}));
  if (options_.rel_pos_emb) {
    FTX_ASSIGN_OR_RETURN(const RotaryEmbedding rotary,
                         WindowRotary(dims.qk_dim));
    FTX_RETURN_IF_ERROR(rotary.Backward(ctx, d_queries, 0));
    FTX_RETURN_IF_ERROR(rotary.Backward(ctx, d_keys, 0));
  }
  const int64_t L = dims.queries;
  CopyRows(ctx, d_queries.Slice(1, 0, L), grads.d_queries);
  CopyRows(ctx, d_keys.Slice(1, 0, L), grads.d_keys);
  CopyRows(ctx, d_values.Slice(1, 0, L), grads.d_values);
  return absl::OkStatus();
}

// Recurrent form.

namespace {

class LocalWindowState : public RecurrentState {
 public:
  int64_t steps() const override { return steps_; }

  int64_t steps_ = 0;
  int64_t batch = 0, heads = 0, qk_dim = 0, value_dim = 0;
  // Per (n, h): the last `capacity` keys [capacity, E] and values
  // [capacity, D], position p in slot p % capacity.
  std::vector<float> keys, values;
  Tensor rotated_query, rotated_key;  // [N, 1, H, E] with rel_pos_emb
};

}  // namespace

absl::StatusOr<std::unique_ptr<RecurrentLocalAttention>>
RecurrentLocalAttention::Create(const LocalAttentionOptions& options) {
  FTX_RETURN_IF_ERROR(ValidateLocalAttentionOptions(options));
  std::unique_ptr<RecurrentLocalAttention> attention(
      new RecurrentLocalAttention());
  attention->local_ = options;
  attention->capacity_ = options.local_context / 2 + 1;
  return attention;
}

absl::StatusOr<std::unique_ptr<RecurrentLocalAttention>>
RecurrentLocalAttention::Create(const LocalWindowedAttentionOptions& options) {
  FTX_RETURN_IF_ERROR(ValidateLocalWindowedAttentionOptions(options));
  if (!options.causal) {
    return absl::InvalidArgumentError(
        "RecurrentLocalAttention: local-windowed attention has a step-by-step "
        "form only when causal");
  }
  std::unique_ptr<RecurrentLocalAttention> attention(
      new RecurrentLocalAttention());
  attention->windowed_ = true;
  attention->windowed_options_ = options;
  attention->capacity_ = (options.look_backward + 1) * options.window_size;
  return attention;
}

std::unique_ptr<RecurrentState> RecurrentLocalAttention::NewState() const {
  return std::make_unique<LocalWindowState>();
}

int64_t RecurrentLocalAttention::FirstVisible(int64_t position) const {
  if (!windowed_)
    return std::max<int64_t>(0, position - local_.local_context / 2);
  const int64_t w = windowed_options_.window_size;
  const int64_t look_backward = windowed_options_.look_backward;
  int64_t first = std::max<int64_t>(0, (position / w - look_backward) * w);
  if (windowed_options_.exact_windowsize) {
    first = std::max(first, position - w * look_backward);
  }
  return first;
}

absl::Status RecurrentLocalAttention::Step(const Context& ctx,
                                           TensorView<const float> query,
                                           TensorView<const float> key,
                                           TensorView<const float> value,
                                           TensorView<float> out,
                                           RecurrentState& state) {
  constexpr char kOp[] = "RecurrentLocalAttention";
  FTX_ASSIGN_OR_RETURN(const RecurrentStepDims dims,
                       ValidateRecurrentStep(kOp, query, key, value, out));
  const int64_t N = dims.batch, H = dims.heads, E = dims.qk_dim,
                D = dims.value_dim;
  auto* window = dynamic_cast<LocalWindowState*>(&state);
  if (window == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": state was not made by this mechanism's NewState"));
  }
  const bool rotary = windowed_ && windowed_options_.rel_pos_emb;
  if (window->steps_ == 0) {
    if (rotary && E % 2 != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          kOp, ": rel_pos_emb needs an even head dimension E, got ", E));
    }
    window->batch = N;
    window->heads = H;
    window->qk_dim = E;
    window->value_dim = D;
    window->keys.assign(N * H * capacity_ * E, 0.0f);
    window->values.assign(N * H * capacity_ * D, 0.0f);
    if (rotary) {
      FTX_RETURN_IF_ERROR(
          EnsureTensor(window->rotated_query, {N, 1, H, E}, ctx.device()));
      FTX_RETURN_IF_ERROR(
          EnsureTensor(window->rotated_key, {N, 1, H, E}, ctx.device()));
    }
  }
  if (window->batch != N || window->heads != H || window->qk_dim != E ||
      window->value_dim != D) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": step shapes changed from [N=", window->batch, ", H=",
        window->heads, ", E=", window->qk_dim, ", D=", window->value_dim,
        "] to [N=", N, ", H=", H, ", E=", E, ", D=", D, "]"));
  }
  const int64_t position = window->steps_;
  const float* q_data = query.data();
  const float* k_data = key.data();
  if (rotary) {
    FTX_ASSIGN_OR_RETURN(const RotaryEmbedding rotation, WindowRotary(E));
    std::copy_n(q_data, N * H * E, window->rotated_query.data<float>());
    std::copy_n(k_data, N * H * E, window->rotated_key.data<float>());
    FTX_RETURN_IF_ERROR(
        rotation.Forward(ctx, window->rotated_query.view<float>(), position));
    FTX_RETURN_IF_ERROR(
        rotation.Forward(ctx, window->rotated_key.view<float>(), position));
    q_data = window->rotated_query.data<float>();
    k_data = window->rotated_key.data<float>();
  }
  const float scale = windowed_ ? 1.0f / std::sqrt(static_cast<float>(E))
                                : SoftmaxTemperature(local_.softmax_temp, E);
  const int64_t first = FirstVisible(position);
  const int64_t slot = position % capacity_;
  ctx.pool().ParallelFor(N * H, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(position - first + 1);
    for (int64_t nh = begin; nh < end; ++nh) {
      float* keys = window->keys.data() + nh * capacity_ * E;
      float* values = window->values.data() + nh * capacity_ * D;
      std::copy_n(k_data + nh * E, E, keys + slot * E);
      std::copy_n(value.data() + nh * D, D, values + slot * D);
      const float* q = q_data + nh * E;
      float max_score = -std::numeric_limits<float>::infinity();
      for (int64_t p = first; p <= position; ++p) {
        const float* k = keys + (p % capacity_) * E;
        float dot = 0.0f;
        for (int64_t e = 0; e < E; ++e) dot += q[e] * k[e];
        scores[p - first] = scale * dot;
        max_score = std::max(max_score, scores[p - first]);
      }
      float total = 0.0f;
      for (float& score : scores) {
        score = std::exp(score - max_score);
        total += score;
      }
      float* o = out.data() + nh * D;
      std::fill_n(o, D, 0.0f);
      for (int64_t p = first; p <= position; ++p) {
        const float weight = scores[p - first] / total;
        const float* v = values + (p % capacity_) * D;
        for (int64_t d = 0; d < D; ++d) o[d] += weight * v[d];
      }
    }
  });
  ++window->steps_;
  return absl::OkStatus();
}

// Registry entries.

namespace {

absl::StatusOr<LocalAttentionOptions> LocalOptionsFrom(
    const AttentionOptions& o) {
  LocalAttentionOptions options;
  const std::optional<int64_t> context = o.Int("local_context");
  if (!context.has_value()) {
    return absl::InvalidArgumentError(
        "local: the option local_context is required");
  }
  options.local_context = *context;
  if (auto temp = o.Float("softmax_temp"))
    options.softmax_temp = static_cast<float>(*temp);
  options.attention_dropout =
      static_cast<float>(o.Float("attention_dropout").value_or(0.1));
  FTX_RETURN_IF_ERROR(ValidateLocalAttentionOptions(options));
  return options;
}

absl::StatusOr<LocalWindowedAttentionOptions> WindowedOptionsFrom(
    const AttentionOptions& o) {
  LocalWindowedAttentionOptions options;
  const std::optional<int64_t> window = o.Int("window_size");
  if (!window.has_value()) {
    return absl::InvalidArgumentError(
        "local-windowed: the option window_size is required");
  }
  options.window_size = *window;
  options.causal = o.Bool("causal").value_or(false);
  options.look_backward = o.Int("look_backward").value_or(1);
  if (auto forward = o.Int("look_forward")) options.look_forward = *forward;
  options.autopad = o.Bool("autopad").value_or(false);
  options.exact_windowsize = o.Bool("exact_windowsize").value_or(false);
  options.rel_pos_emb = o.Bool("rel_pos_emb").value_or(false);
  options.attention_dropout =
      static_cast<float>(o.Float("attention_dropout").value_or(0.0));
  FTX_RETURN_IF_ERROR(ValidateLocalWindowedAttentionOptions(options));
  return options;
}

}  // namespace

AttentionSpec LocalAttentionSpec() {
  AttentionSpec spec;
  spec.name = "local";
  spec.description =
      "softmax over the local_context keys around each query, O(L c) "
      "(fast-transformers LocalAttention)";
  spec.options = {
      {"local_context", OptionType::kInt, std::nullopt,
       "window width c: query l sees keys [l - c/2, l + (c+1)/2)", true},
      {"softmax_temp", OptionType::kFloat, std::nullopt,
       "softmax temperature; default 1/sqrt(E)"},
      {"attention_dropout", OptionType::kFloat, OptionValue(0.1),
       "dropout on the attention probabilities (training only)"}};
  spec.factory = [](const AttentionOptions& o,
                    std::vector<std::unique_ptr<Attention>>)
      -> absl::StatusOr<std::unique_ptr<Attention>> {
    FTX_ASSIGN_OR_RETURN(const LocalAttentionOptions options,
                         LocalOptionsFrom(o));
    return std::unique_ptr<Attention>(
        std::make_unique<LocalAttention>(options));
  };
  spec.recurrent_factory = [](const AttentionOptions& o)
      -> absl::StatusOr<std::unique_ptr<RecurrentAttention>> {
    FTX_ASSIGN_OR_RETURN(const LocalAttentionOptions options,
                         LocalOptionsFrom(o));
    FTX_ASSIGN_OR_RETURN(std::unique_ptr<RecurrentLocalAttention> attention,
                         RecurrentLocalAttention::Create(options));
    return std::unique_ptr<RecurrentAttention>(std::move(attention));
  };
  return spec;
}

AttentionSpec LocalWindowedAttentionSpec() {
  AttentionSpec spec;
  spec.name = "local-windowed";
  spec.description =
      "softmax within fixed windows plus look-back/look-ahead windows, O(L w) "
      "(lucidrains local-attention 1.4.4; performer and "
      "linear-attention-transformer local heads)";
  spec.options = {
      {"window_size", OptionType::kInt, std::nullopt, "window length w", true},
      {"causal", OptionType::kBool, OptionValue(false),
       "mask keys after the query"},
      {"look_backward", OptionType::kInt, OptionValue(int64_t{1}),
       "windows before the query's window that it sees"},
      {"look_forward", OptionType::kInt, std::nullopt,
       "windows after the query's window that it sees; default 0 if causal "
       "else 1"},
      {"autopad", OptionType::kBool, OptionValue(false),
       "zero-pad the sequence to a multiple of window_size"},
      {"exact_windowsize", OptionType::kBool, OptionValue(false),
       "causal: also mask keys more than window_size * look_backward behind"},
      {"rel_pos_emb", OptionType::kBool, OptionValue(false),
       "rotary embedding on q and k inside the mechanism (rel_pos_emb_config)"},
      {"attention_dropout", OptionType::kFloat, OptionValue(0.0),
       "dropout on the attention probabilities (training only)"}};
  spec.factory = [](const AttentionOptions& o,
                    std::vector<std::unique_ptr<Attention>>)
      -> absl::StatusOr<std::unique_ptr<Attention>> {
    FTX_ASSIGN_OR_RETURN(const LocalWindowedAttentionOptions options,
                         WindowedOptionsFrom(o));
    return std::unique_ptr<Attention>(
        std::make_unique<LocalWindowedAttention>(options));
  };
  spec.recurrent_factory = [](const AttentionOptions& o)
      -> absl::StatusOr<std::unique_ptr<RecurrentAttention>> {
    FTX_ASSIGN_OR_RETURN(const LocalWindowedAttentionOptions options,
                         WindowedOptionsFrom(o));
    FTX_ASSIGN_OR_RETURN(std::unique_ptr<RecurrentLocalAttention> attention,
                         RecurrentLocalAttention::Create(options));
    return std::unique_ptr<RecurrentAttention>(std::move(attention));
  };
  return spec;
}

}  // namespace ftx
