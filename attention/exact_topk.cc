#include "attention/exact_topk.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/base/philox.h"
#include "kernels/base/status_macros.h"
#include "kernels/base/validate.h"
#include "kernels/dropout/dropout.h"
#include "kernels/matmul/matmul.h"

namespace ftx {
namespace {

// Philox stream of exact-topk's attention-dropout masks.
constexpr uint64_t kDropoutStream = 0x70BC;

// Cache layout: saved[0] = normalised probabilities P [H, N, L, S];
// saved[1] = P after dropout (only when dropout is active).
constexpr int kProbabilities = 0;
constexpr int kDroppedProbabilities = 1;

constexpr float kNegativeInfinity = -std::numeric_limits<float>::infinity();

absl::Status ValidateOptions(const ExactTopKAttentionOptions& options) {
  if (options.topk < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ExactTopKAttention: topk must be >= 1, got ", options.topk));
  }
  if (!(options.attention_dropout >= 0.0f &&
        options.attention_dropout < 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ExactTopKAttention: attention_dropout must be in [0, 1), got ",
        options.attention_dropout));
  }
  return absl::OkStatus();
}

// One row: the selected entries stay, the others become -inf. `scratch` holds
// at least `cols` floats.
void KeepTopKRow(float* row, int64_t cols, int64_t k, TopKSelection selection,
                 std::vector<float>& scratch) {
  for (int64_t s = 0; s < cols; ++s) {
    if (std::isnan(row[s])) return;
    scratch[s] = row[s];
  }
  std::nth_element(scratch.begin(), scratch.begin() + (k - 1),
                   scratch.begin() + cols, std::greater<float>());
  const float kth = scratch[k - 1];
  if (selection == TopKSelection::kKeepTies) {
    for (int64_t s = 0; s < cols; ++s) {
      if (row[s] < kth) row[s] = kNegativeInfinity;
    }
    return;
  }
  int64_t ties_left = k;
  for (int64_t s = 0; s < cols; ++s) ties_left -= row[s] > kth ? 1 : 0;
  for (int64_t s = 0; s < cols; ++s) {
    if (row[s] > kth) continue;
    if (row[s] == kth && ties_left > 0) {
      --ties_left;
      continue;
    }
    row[s] = kNegativeInfinity;
  }
}

}  // namespace

void ApplyScoreMasks(const Context& ctx, const AttentionInputs& inputs,
                     const AttentionDims& dims, float* scores) {
  const AttnMask& mask = inputs.attn_mask;
  if (mask.kind() == AttnMask::Kind::kAll && inputs.key_lengths.full()) return;
  const int64_t rows = dims.heads * dims.batch * dims.queries;
  ctx.pool().ParallelFor(rows, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t l = r % dims.queries;
      const int64_t n = (r / dims.queries) % dims.batch;
      float* row = scores + r * dims.keys;
      if (mask.kind() != AttnMask::Kind::kAll) {
        for (int64_t s = 0; s < dims.keys; ++s) row[s] += mask.At(l, s);
      }
      for (int64_t s = inputs.key_lengths.Length(n, dims.keys); s < dims.keys;
           ++s) {
        row[s] = kNegativeInfinity;
      }
    }
  });
}

void ApplyDropoutMask(const Context& ctx, float p, uint64_t seed,
                      uint64_t stream, uint64_t offset, int64_t count,
                      const float* in, float* out) {
  DropoutInto(ctx, {p, seed, stream, offset}, count, in, out);
}

absl::Status KeepTopK(const Context& ctx, TensorView<float> scores, int64_t k,
                      TopKSelection selection) {
  FTX_RETURN_IF_ERROR(CheckRowsView("KeepTopK", "scores", scores, ctx));
  if (k < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("KeepTopK: k must be >= 1, got ", k));
  }
  if (ctx.device().type != DeviceType::kCpu) {
    return absl::UnimplementedError("KeepTopK: only the CPU path exists");
  }
  const MatrixView<float> rows = AsMatrix(scores);
  if (k >= rows.cols) return absl::OkStatus();
  ctx.pool().ParallelFor(
      rows.rows,
      [&](int64_t begin, int64_t end) {
        std::vector<float> scratch(rows.cols);
        for (int64_t r = begin; r < end; ++r) {
          KeepTopKRow(rows.Row(r), rows.cols, k, selection, scratch);
        }
      },
      8);
  return absl::OkStatus();
}

float ExactTopKAttention::Temperature(int64_t qk_dim) const {
  return SoftmaxTemperature(options_.softmax_temp, qk_dim);
}

absl::Status ExactTopKAttention::Forward(const Context& ctx,
                                         const AttentionInputs& inputs,
                                         TensorView<float> out,
                                         AttentionCache* cache) {
  FTX_ASSIGN_OR_RETURN(
      const AttentionDims dims,
      ValidateAttentionForward("ExactTopKAttention", ctx, inputs, out));
  FTX_RETURN_IF_ERROR(ValidateOptions(options_));
  if (ctx.device().type != DeviceType::kCpu) {
    return absl::UnimplementedError(
        "ExactTopKAttention: only the CPU path exists so far");
  }
  AttentionCache& saved = cache != nullptr ? *cache : scratch_;
  const bool dropout = DropoutActive(inputs);
  saved.saved.resize(dropout ? 2 : 1);
  const Shape scores_shape{dims.heads, dims.batch, dims.queries, dims.keys};
  for (Tensor& tensor : saved.saved) {
    FTX_RETURN_IF_ERROR(EnsureTensor(tensor, scores_shape, ctx.device()));
  }
  TensorView<float> probabilities = saved.saved[kProbabilities].view<float>();

  // fast-transformers selects on unscaled dots and scales (dots + masks) by
  // t in the softmax; x-transformers scales the dots before masks and
  // selection.
  const float t = Temperature(dims.qk_dim);
  const bool ties = options_.sparse_topk_ties;
  for (int64_t h = 0; h < dims.heads; ++h) {
    FTX_RETURN_IF_ERROR(
        MatMul(ctx, inputs.queries.Select(2, h), inputs.keys.Select(2, h),
               probabilities.Select(0, h),
               {.transpose_b = true, .alpha = ties ? t : 1.0f}));
  }
  ApplyScoreMasks(ctx, inputs, dims, probabilities.data());
  const TensorView<float> rows = probabilities.Reshape(
      {dims.heads * dims.batch * dims.queries, dims.keys});
  FTX_RETURN_IF_ERROR(
      KeepTopK(ctx, rows, options_.topk,
               ties ? TopKSelection::kKeepTies : TopKSelection::kExactlyK));
  FTX_RETURN_IF_ERROR(
      Normalize(ctx, normalizer(), rows, rows, ties ? 1.0f : t));

  TensorView<float> attended = probabilities;
  if (dropout) {
    attended = saved.saved[kDroppedProbabilities].view<float>();
    ApplyDropoutMask(ctx, options_.attention_dropout, inputs.seed,
                     kDropoutStream, 0, probabilities.NumElements(),
                     probabilities.data(), attended.data());
  }
  // out_h [N, L, D] = P_h [N, L, S] V_h [N, S, D].
  for (int64_t h = 0; h < dims.heads; ++h) {
    FTX_RETURN_IF_ERROR(MatMul(ctx, attended.Select(0, h),
                               inputs.values.Select(2, h), out.Select(2, h)));
  }
  return absl::OkStatus();
}

absl::Status ExactTopKAttention::Backward(const Context& ctx,
                                          const AttentionInputs& inputs,
                                          const AttentionCache& cache,
                                          TensorView<const float> d_out,
                                          const AttentionGrads& grads) {
  FTX_ASSIGN_OR_RETURN(const AttentionDims dims,
                       ValidateAttentionBackward("ExactTopKAttentionBackward",
                                                 ctx, inputs, d_out, grads));
  const bool dropout = DropoutActive(inputs);
  const Shape scores_shape{dims.heads, dims.batch, dims.queries, dims.keys};
  if (cache.saved.size() != (dropout ? 2u : 1u) ||
      cache.saved[kProbabilities].shape() != scores_shape) {
    return absl::FailedPreconditionError(
        "ExactTopKAttentionBackward: the cache does not come from a Forward "
        "with these inputs (pass a cache to Forward)");
  }
  const TensorView<const float> probabilities =
      cache.saved[kProbabilities].view<float>();
  const TensorView<const float> attended =
      dropout ? cache.saved[kDroppedProbabilities].view<float>()
              : probabilities;

  FTX_RETURN_IF_ERROR(EnsureTensor(
      grad_scratch_, {dims.batch, dims.queries, dims.keys}, ctx.device()));
  TensorView<float> d_scores = grad_scratch_.view<float>();  // [N, L, S]
  const TensorView<float> d_score_rows =
      d_scores.Reshape({dims.batch * dims.queries, dims.keys});
  const float t = Temperature(dims.qk_dim);
  const bool ties = options_.sparse_topk_ties;
  // z = pre_scale * Q K^T (+ masks), P = normalize(normalizer_scale * z).
  const float pre_scale = ties ? t : 1.0f;
  const float normalizer_scale = ties ? 1.0f : t;

  for (int64_t h = 0; h < dims.heads; ++h) {
    const TensorView<const float> d_out_h = d_out.Select(2, h);  // [N, L, D]
    // d_V_h [N, S, D] = P_h^T d_out_h;  d_P_h [N, L, S] = d_out_h V_h^T.
    FTX_RETURN_IF_ERROR(MatMul(ctx, attended.Select(0, h), d_out_h,
                               grads.d_values.Select(2, h),
                               {.transpose_a = true}));
    FTX_RETURN_IF_ERROR(MatMul(ctx, d_out_h, inputs.values.Select(2, h),
                               d_scores, {.transpose_b = true}));
    if (dropout) {
      ApplyDropoutMask(ctx, options_.attention_dropout, inputs.seed,
                       kDropoutStream, h * d_scores.NumElements(),
                       d_scores.NumElements(), d_scores.data(),
                       d_scores.data());
    }
    // Unselected and masked entries have P = 0, so they get no gradient.
    const TensorView<const float> p_rows = probabilities.Select(0, h).Reshape(
        {dims.batch * dims.queries, dims.keys});
    FTX_RETURN_IF_ERROR(NormalizeBackward(ctx, normalizer(), p_rows,
                                          d_score_rows, d_score_rows,
                                          normalizer_scale));
    // d_Q_h = pre_scale d_z K_h;  d_K_h = pre_scale d_z^T Q_h.
    FTX_RETURN_IF_ERROR(MatMul(ctx, d_scores, inputs.keys.Select(2, h),
                               grads.d_queries.Select(2, h),
                               {.alpha = pre_scale}));
    FTX_RETURN_IF_ERROR(MatMul(ctx, d_scores, inputs.queries.Select(2, h),
                               grads.d_keys.Select(2, h),
                               {.transpose_a = true, .alpha = pre_scale}));
  }
  return absl::OkStatus();
}

AttentionSpec ExactTopKAttentionSpec() {
  AttentionSpec spec;
  spec.name = "exact-topk";
  spec.description =
      "softmax over each query's k largest dots, O(L S) (fast-transformers "
      "ExactTopKAttention; x-transformers sparse_topk)";
  spec.options = {
      {"topk", OptionType::kInt, OptionValue(int64_t{32}),
       "keys kept per query"},
      {"softmax_temp", OptionType::kFloat, std::nullopt,
       "softmax temperature; default 1/sqrt(E)"},
      {"attention_dropout", OptionType::kFloat, OptionValue(0.1),
       "dropout on the attention probabilities (training only)"},
      {"sparse_topk_ties", OptionType::kBool, OptionValue(false),
       "x-transformers sparse_topk: keep every dot >= the k-th largest (ties "
       "kept), selected after temperature and masks"},
      {"use_entmax15", OptionType::kBool, OptionValue(false),
       "entmax-1.5 instead of softmax (x-transformers attn_use_entmax15)"}};
  spec.factory = [](const AttentionOptions& o,
                    std::vector<std::unique_ptr<Attention>>)
      -> absl::StatusOr<std::unique_ptr<Attention>> {
    ExactTopKAttentionOptions options;
    options.topk = o.Int("topk").value_or(32);
    if (auto temp = o.Float("softmax_temp")) options.softmax_temp = *temp;
    options.attention_dropout =
        static_cast<float>(o.Float("attention_dropout").value_or(0.1));
    options.sparse_topk_ties = o.Bool("sparse_topk_ties").value_or(false);
    options.use_entmax15 = o.Bool("use_entmax15").value_or(false);
    FTX_RETURN_IF_ERROR(ValidateOptions(options));
    return std::unique_ptr<Attention>(
        std::make_unique<ExactTopKAttention>(options));
  };
  return spec;
}

}  // namespace ftx
