#include "attention/reformer.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "attention/lsh.h"
#include "kernels/base/philox.h"
#include "kernels/base/rng.h"
#include "kernels/base/status_macros.h"
#include "kernels/dropout/dropout.h"
#include "kernels/matmul/matmul.h"
#include "kernels/softmax/softmax.h"

namespace ftx {
namespace {

// Philox stream of the attention dropout (key: AttentionInputs::seed).
constexpr uint64_t kDropoutStream = 0x5EF0;

// Cache layout of a forward.
enum Saved : int {
  kNormalizedKeys,  // K = Q / |Q|, zero for padded keys [N, L, H, E]
  kInverseNorms,    // 1 / |q| where K is not zero, else 0 [N, L, H]
  kOrder,           // positions sorted by bucket, per round [R, N, H, L] i32
  kProbabilities,   // softmax over the 2 chunk_size slots of each sorted query
                    // [R, N * H, L, 2 chunk_size]
  kSavedCount
};

float Dot(const float* a, const float* b, int64_t n) {
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

void Axpy(float alpha, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

template <typename T>
T* Row(const TensorView<T>& view, int64_t n, int64_t l, int64_t h) {
  return &view.at(n, l, h, 0);
}

// Work buffers (ReformerAttention::work_), per sequence nh = n * H + h and in
// the sorted order of the current round; B = L / C chunks, W = 2 C slots.
enum Work : int {
  kSortedQueries,      // [NH, L, E]
  kSortedKeys,         // [NH, C + L, E]: C zero rows, then K in sorted order
  kSortedValues,       // [NH, C + L, D]: likewise for V
  kSortedOut,          // forward: P V [NH, L, D]; backward: d_out / rounds
  kAttended,           // dropout(P) [NH, L, W]
  kSlotGrad,           // d P, then d scores [NH, L, W]
  kQueryGrad,          // d sorted queries [NH, L, E]
  kOwnKeyGrad,         // d keys through the own-chunk half [NH, L, E]
  kPreviousKeyGrad,    // d keys through the previous-chunk half [NH, L, E]
  kOwnValueGrad,       // [NH, L, D]
  kPreviousValueGrad,  // [NH, L, D]
  kKeyGrad,            // d K [N, L, H, E]
  kWorkCount
};

// Sequence nh of a [NH, L, X] buffer as chunks [B, C, X].
TensorView<float> Chunks(float* data, int64_t nh, int64_t L, int64_t C,
                         int64_t X) {
  return TensorView<float>(data + nh * L * X, {L / C, C, X});
}
TensorView<float> Chunks(Tensor& tensor, int64_t nh, int64_t L, int64_t C,
                         int64_t X) {
  return Chunks(tensor.data<float>(), nh, L, C, X);
}
TensorView<const float> Chunks(const float* data, int64_t nh, int64_t L,
                               int64_t C, int64_t X) {
  return TensorView<const float>(data + nh * L * X, {L / C, C, X});
}

// Look-back windows of sequence nh of a padded [NH, C + L, X] buffer: window b
// covers sorted positions [(b - 1) C, (b + 1) C) ([B, 2C, X], overlapping).
TensorView<float> Windows(Tensor& tensor, int64_t nh, int64_t L, int64_t C,
                          int64_t X) {
  return TensorView<float>(tensor.data<float>() + nh * (L + C) * X,
                           {L / C, 2 * C, X}, {C * X, X, 1, 0});
}

// One half of every chunk's slots in a [NH, L, 2C] buffer: half 0 = the
// previous chunk's slots, half 1 = the own chunk's ([B, C, C]).
TensorView<const float> Half(const float* data, int64_t nh, int64_t L,
                             int64_t C, int half) {
  return TensorView<const float>(data + nh * L * 2 * C + half * C,
                                 {L / C, C, C}, {C * 2 * C, 2 * C, 1, 0});
}

// out[i] = in[i] * keep / (1 - p), keep ~ Bernoulli(1 - p) from element
// offset + i of the dropout stream (the same draw in forward and backward).
void ApplyDropout(const Context& ctx, float p, uint64_t seed, uint64_t offset,
                  int64_t count, const float* in, float* out) {
  DropoutInto(ctx, {p, seed, kDropoutStream, offset}, count, in, out);
}

}  // namespace

absl::StatusOr<std::unique_ptr<ReformerAttention>> ReformerAttention::Create(
    const ReformerAttentionOptions& options) {
  if (options.chunk_size < 1 || options.bits < 1 || options.rounds < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ReformerAttention: chunk_size, bits and rounds must be >= 1, got ",
        options.chunk_size, ", ", options.bits, ", ", options.rounds));
  }
  if (!(options.attention_dropout >= 0.0f &&
        options.attention_dropout < 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ReformerAttention: attention_dropout = ", options.attention_dropout,
        " is outside [0, 1)"));
  }
  if (options.softmax_temp.has_value() &&
      !std::isfinite(*options.softmax_temp)) {
    return absl::InvalidArgumentError(
        "ReformerAttention: softmax_temp must be finite");
  }
  return std::unique_ptr<ReformerAttention>(new ReformerAttention(options));
}

absl::Status ReformerAttention::SetPlanes(TensorView<const float> planes) {
  if (planes.rank() != 3 || planes.dim(0) != options_.rounds ||
      planes.dim(1) != options_.bits || planes.dim(2) < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("ReformerAttention: planes must be [rounds, bits, E] = [",
                     options_.rounds, ", ", options_.bits, ", E], got shape ",
                     planes.shape().ToString()));
  }
  if (planes.data() == nullptr || planes.device().type != DeviceType::kCpu) {
    return absl::InvalidArgumentError(
        "ReformerAttention: planes must be non-null CPU memory");
  }
  FTX_RETURN_IF_ERROR(EnsureTypedTensor(fixed_planes_, DType::kF32,
                                        planes.shape(), Device::Cpu()));
  float* copy = fixed_planes_.data<float>();
  for (int64_t r = 0; r < planes.dim(0); ++r) {
    for (int64_t b = 0; b < planes.dim(1); ++b) {
      for (int64_t e = 0; e < planes.dim(2); ++e) {
        *copy++ = planes.at(r, b, e);
      }
    }
  }
  return absl::OkStatus();
}

float ReformerAttention::Temperature(int64_t qk_dim) const {
  return SoftmaxTemperature(options_.softmax_temp, qk_dim);
}

absl::Status ReformerAttention::CheckCall(const char* op,
                                          const AttentionDims& dims) const {
  if (dims.keys != dims.queries) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": Reformer is self-attention: values need S = L = ", dims.queries,
        " positions (keys are ignored), got S = ", dims.keys));
  }
  if (dims.queries % options_.chunk_size != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": L = ", dims.queries,
        " is not divisible by chunk_size = ", options_.chunk_size));
  }
  if (fixed_planes_.raw_data() != nullptr &&
      fixed_planes_.shape() !=
          Shape{options_.rounds, options_.bits, dims.qk_dim}) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": the planes given to SetPlanes have shape ",
        fixed_planes_.shape().ToString(), ", expected [rounds, bits, E] = [",
        options_.rounds, ", ", options_.bits, ", ", dims.qk_dim, "]"));
  }
  return absl::OkStatus();
}

absl::Status ReformerAttention::Forward(const Context& ctx,
                                        const AttentionInputs& inputs,
                                        TensorView<float> out,
                                        AttentionCache* cache) {
  constexpr const char* kOp = "ReformerAttention";
  FTX_ASSIGN_OR_RETURN(const AttentionDims dims,
                       ValidateAttentionForward(kOp, ctx, inputs, out));
  FTX_RETURN_IF_ERROR(CheckCall(kOp, dims));
  if (ctx.device().type != DeviceType::kCpu) {
    return absl::UnimplementedError(
        "ReformerAttention: only the CPU path exists so far");
  }
  const int64_t N = dims.batch, L = dims.queries, H = dims.heads,
                E = dims.qk_dim, D = dims.value_dim;
  const int64_t C = options_.chunk_size, R = options_.rounds, W = 2 * C;
  const int64_t NH = N * H;
  const float temperature = Temperature(E);
  const bool dropout = DropoutActive(inputs);
  AttentionCache& saved = cache != nullptr ? *cache : scratch_;
  saved.saved.resize(kSavedCount);
  FTX_RETURN_IF_ERROR(
      EnsureTensor(saved.saved[kNormalizedKeys], {N, L, H, E}, ctx.device()));
  FTX_RETURN_IF_ERROR(
      EnsureTensor(saved.saved[kInverseNorms], {N, L, H}, ctx.device()));
  FTX_RETURN_IF_ERROR(EnsureTypedTensor(saved.saved[kOrder], DType::kI32,
                                        {R, N, H, L}, ctx.device()));
  FTX_RETURN_IF_ERROR(
      EnsureTensor(saved.saved[kProbabilities], {R, NH, L, W}, ctx.device()));
  FTX_RETURN_IF_ERROR(EnsureWork(ctx, dims, /*backward=*/false));
  float* keys = saved.saved[kNormalizedKeys].data<float>();
  float* inverse_norms = saved.saved[kInverseNorms].data<float>();
  int32_t* orders = saved.saved[kOrder].data<int32_t>();
  float* probabilities = saved.saved[kProbabilities].data<float>();

  // K = Q / |Q|, zero for padded keys and zero queries.
  ctx.pool().ParallelFor(N * L, [&](int64_t begin, int64_t end) {
    for (int64_t nl = begin; nl < end; ++nl) {
      const int64_t n = nl / L, l = nl % L;
      const bool valid = l < inputs.key_lengths.Length(n, L);
      for (int64_t h = 0; h < H; ++h) {
        const float* q = Row(inputs.queries, n, l, h);
        float* k = keys + (nl * H + h) * E;
        const float norm = std::sqrt(Dot(q, q, E));
        if (!valid || norm == 0.0f) {
          std::fill(k, k + E, 0.0f);
          inverse_norms[nl * H + h] = 0.0f;
          continue;
        }
        for (int64_t e = 0; e < E; ++e) k[e] = q[e] / norm;
        inverse_norms[nl * H + h] = 1.0f / norm;
      }
      for (int64_t h = 0; h < H; ++h) std::fill_n(Row(out, n, l, h), D, 0.0f);
    }
  });

  TensorView<const float> planes;
  if (fixed_planes_.raw_data() != nullptr) {
    planes = fixed_planes_.view<float>();
  } else {
    FTX_RETURN_IF_ERROR(EnsureTypedTensor(planes_, DType::kF32,
                                          {R, options_.bits, E}, ctx.device()));
    FTX_RETURN_IF_ERROR(
        FillNormal(ctx, planes_.view<float>(), 0.0f, 1.0f,
                   {.seed = CombineSeeds(options_.seed, inputs.seed),
                    .stream = kLshPlaneStream}));
    planes = planes_.view<float>();
  }
  FTX_RETURN_IF_ERROR(
      EnsureTypedTensor(buckets_, DType::kI32, {N, H, L}, ctx.device()));
  const TensorView<const float> key_view =
      saved.saved[kNormalizedKeys].view<float>();
  const float inf = std::numeric_limits<float>::infinity();
  for (int64_t r = 0; r < R; ++r) {
    FTX_RETURN_IF_ERROR(ComputeAngularBuckets(ctx, key_view,
                                              planes.Select(0, r), projections_,
                                              buckets_.view<int32_t>()));
    const int32_t* buckets = buckets_.data<int32_t>();
    int32_t* round_orders = orders + r * NH * L;
    ctx.pool().ParallelFor(NH, [&](int64_t begin, int64_t end) {
      for (int64_t nh = begin; nh < end; ++nh) {
        int32_t* order = round_orders + nh * L;
        const int32_t* bucket = buckets + nh * L;
        std::iota(order, order + L, 0);
        std::stable_sort(order, order + L, [bucket](int32_t a, int32_t b) {
          return bucket[a] < bucket[b];
        });
      }
    });
    GatherSorted(ctx, dims, inputs, keys, round_orders);

    // Scores of each chunk against its look-back window, then mask + softmax.
    float* round_probabilities = probabilities + r * NH * L * W;
    for (int64_t nh = 0; nh < NH; ++nh) {
      FTX_RETURN_IF_ERROR(MatMul(
          ctx, Chunks(work_.saved[kSortedQueries], nh, L, C, E),
          Windows(work_.saved[kSortedKeys], nh, L, C, E),
          Chunks(round_probabilities, nh, L, C, W), {.transpose_b = true}));
    }
    ctx.pool().ParallelFor(NH, [&](int64_t begin, int64_t end) {
      std::vector<float> mask(W);
      for (int64_t nh = begin; nh < end; ++nh) {
        const int64_t n = nh / H;
        const int64_t valid_keys = inputs.key_lengths.Length(n, L);
        const int32_t* order = round_orders + nh * L;
        for (int64_t i = 0; i < L; ++i) {
          // Slot j holds sorted position (chunk - 1) * C + j; negative ones are
          // the zero keys in front of chunk 0.
          const int64_t first = (i / C - 1) * C;
          const int64_t query_position = order[i];
          bool all_infinite = true;
          for (int64_t j = 0; j < W; ++j) {
            if (first + j < 0) {
              mask[j] = -inf;
              continue;
            }
            const int64_t key_position = order[first + j];
            float m = key_position < valid_keys ? 0.0f : -inf;
            if (options_.masked && key_position == query_position) m += -1e9f;
            m += inputs.attn_mask.At(query_position, key_position);
            mask[j] = m;
            all_infinite = all_infinite && std::isinf(m);
          }
          float* row = round_probabilities + (nh * L + i) * W;
          float max_score = -inf;
          for (int64_t j = 0; j < W; ++j) {
            row[j] = temperature * (row[j] + (all_infinite ? 0.0f : mask[j]));
            max_score = std::max(max_score, row[j]);
          }
          float total = 0.0f;
          for (int64_t j = 0; j < W; ++j) {
            row[j] = std::exp(row[j] - max_score);
            total += row[j];
          }
          for (int64_t j = 0; j < W; ++j) row[j] /= total;
        }
      }
    });
    const float* attended = round_probabilities;
    if (dropout) {
      float* dropped = work_.saved[kAttended].data<float>();
      ApplyDropout(ctx, options_.attention_dropout, inputs.seed, r * NH * L * W,
                   NH * L * W, round_probabilities, dropped);
      attended = dropped;
    }
    for (int64_t nh = 0; nh < NH; ++nh) {
      FTX_RETURN_IF_ERROR(
          MatMul(ctx, Chunks(attended, nh, L, C, W),
                 Windows(work_.saved[kSortedValues], nh, L, C, D),
                 Chunks(work_.saved[kSortedOut], nh, L, C, D)));
    }
    // out[order[i]] += sorted out[i] / rounds.
    const float round_weight = 1.0f / static_cast<float>(R);
    const float* sorted_out = work_.saved[kSortedOut].data<float>();
    ctx.pool().ParallelFor(NH, [&](int64_t begin, int64_t end) {
      for (int64_t nh = begin; nh < end; ++nh) {
        const int64_t n = nh / H, h = nh % H;
        const int32_t* order = round_orders + nh * L;
        for (int64_t i = 0; i < L; ++i) {
          Axpy(round_weight, sorted_out + (nh * L + i) * D,
               Row(out, n, order[i], h), D);
        }
      }
    });
  }
  return absl::OkStatus();
}

absl::Status ReformerAttention::Backward(const Context& ctx,
                                         const AttentionInputs& inputs,
                                         const AttentionCache& cache,
                                         TensorView<const float> d_out,
                                         const AttentionGrads& grads) {
  constexpr const char* kOp = "ReformerAttentionBackward";
  FTX_ASSIGN_OR_RETURN(
      const AttentionDims dims,
      ValidateAttentionBackward(kOp, ctx, inputs, d_out, grads));
  FTX_RETURN_IF_ERROR(CheckCall(kOp, dims));
  if (ctx.device().type != DeviceType::kCpu) {
    return absl::UnimplementedError(
        "ReformerAttentionBackward: only the CPU path exists so far");
  }
  const int64_t N = dims.batch, L = dims.queries, H = dims.heads,
                E = dims.qk_dim, D = dims.value_dim;
  const int64_t C = options_.chunk_size, R = options_.rounds, W = 2 * C;
  const int64_t NH = N * H;
  if (cache.saved.size() != kSavedCount ||
      cache.saved[kNormalizedKeys].shape() != Shape{N, L, H, E} ||
      cache.saved[kOrder].shape() != Shape{R, N, H, L} ||
      cache.saved[kProbabilities].shape() != Shape{R, NH, L, W}) {
    return absl::FailedPreconditionError(
        "ReformerAttentionBackward: the cache does not come from a Forward "
        "with these inputs (pass a cache to Forward)");
  }
  const float* keys = cache.saved[kNormalizedKeys].data<float>();
  const float* inverse_norms = cache.saved[kInverseNorms].data<float>();
  const int32_t* orders = cache.saved[kOrder].data<int32_t>();
  const float* probabilities = cache.saved[kProbabilities].data<float>();
  FTX_RETURN_IF_ERROR(EnsureWork(ctx, dims, /*backward=*/true));
  float* key_grad = work_.saved[kKeyGrad].data<float>();
  const float temperature = Temperature(E);
  const bool dropout = DropoutActive(inputs);
  const float round_weight = 1.0f / static_cast<float>(R);

  ctx.pool().ParallelFor(N * L, [&](int64_t begin, int64_t end) {
    for (int64_t nl = begin; nl < end; ++nl) {
      const int64_t n = nl / L, l = nl % L;
      for (int64_t h = 0; h < H; ++h) {
        std::fill_n(Row(grads.d_queries, n, l, h), E, 0.0f);
        std::fill_n(Row(grads.d_keys, n, l, h), E, 0.0f);
        std::fill_n(Row(grads.d_values, n, l, h), D, 0.0f);
      }
      std::fill_n(key_grad + nl * H * E, H * E, 0.0f);
    }
  });
  float* sorted_grad = work_.saved[kSortedOut].data<float>();
  float* slot_grad = work_.saved[kSlotGrad].data<float>();
  for (int64_t r = 0; r < R; ++r) {
    const int32_t* round_orders = orders + r * NH * L;
    const float* round_probabilities = probabilities + r * NH * L * W;
    GatherSorted(ctx, dims, inputs, keys, round_orders);
    // sorted_grad[i] = d_out[order[i]] / rounds.
    ctx.pool().ParallelFor(NH, [&](int64_t begin, int64_t end) {
      for (int64_t nh = begin; nh < end; ++nh) {
        const int64_t n = nh / H, h = nh % H;
        for (int64_t i = 0; i < L; ++i) {
          const float* g = Row(d_out, n, round_orders[nh * L + i], h);
          float* target = sorted_grad + (nh * L + i) * D;
          for (int64_t d = 0; d < D; ++d) target[d] = round_weight * g[d];
        }
      }
    });
    const float* attended = round_probabilities;
    if (dropout) {
      float* dropped = work_.saved[kAttended].data<float>();
      ApplyDropout(ctx, options_.attention_dropout, inputs.seed, r * NH * L * W,
                   NH * L * W, round_probabilities, dropped);
      attended = dropped;
    }
    // d attended = sorted_grad V_window^T, then undo dropout and the softmax.
    for (int64_t nh = 0; nh < NH; ++nh) {
      FTX_RETURN_IF_ERROR(
          MatMul(ctx, Chunks(sorted_grad, nh, L, C, D),
                 Windows(work_.saved[kSortedValues], nh, L, C, D),
                 Chunks(slot_grad, nh, L, C, W), {.transpose_b = true}));
    }
    if (dropout) {
      ApplyDropout(ctx, options_.attention_dropout, inputs.seed, r * NH * L * W,
                   NH * L * W, slot_grad, slot_grad);
    }
    const TensorView<float> slot_rows(slot_grad, {NH * L, W});
    FTX_RETURN_IF_ERROR(SoftmaxBackward(
        ctx, TensorView<const float>(round_probabilities, {NH * L, W}),
        slot_rows, slot_rows, {.scale = temperature}));
    for (int64_t nh = 0; nh < NH; ++nh) {
      const TensorView<float> sorted_queries =
          Chunks(work_.saved[kSortedQueries], nh, L, C, E);
      const TensorView<float> sorted_grads = Chunks(sorted_grad, nh, L, C, D);
      // d sorted queries = d scores K_window.
      FTX_RETURN_IF_ERROR(MatMul(ctx, Chunks(slot_grad, nh, L, C, W),
                                 Windows(work_.saved[kSortedKeys], nh, L, C, E),
                                 Chunks(work_.saved[kQueryGrad], nh, L, C, E)));
      // The two halves of each window: the previous chunk and the own chunk.
      for (int half = 0; half < 2; ++half) {
        const int key_target = half == 0 ? kPreviousKeyGrad : kOwnKeyGrad;
        const int value_target = half == 0 ? kPreviousValueGrad : kOwnValueGrad;
        FTX_RETURN_IF_ERROR(MatMul(ctx, Half(slot_grad, nh, L, C, half),
                                   sorted_queries,
                                   Chunks(work_.saved[key_target], nh, L, C, E),
                                   {.transpose_a = true}));
        FTX_RETURN_IF_ERROR(
            MatMul(ctx, Half(attended, nh, L, C, half), sorted_grads,
                   Chunks(work_.saved[value_target], nh, L, C, D),
                   {.transpose_a = true}));
      }
    }
    // Scatter back: sorted position i is slot i % C of its own chunk's window
    // and slot i % C of the next chunk's previous half.
    const float* query_grad = work_.saved[kQueryGrad].data<float>();
    const float* own_keys = work_.saved[kOwnKeyGrad].data<float>();
    const float* previous_keys = work_.saved[kPreviousKeyGrad].data<float>();
    const float* own_values = work_.saved[kOwnValueGrad].data<float>();
    const float* previous_values =
        work_.saved[kPreviousValueGrad].data<float>();
    ctx.pool().ParallelFor(NH, [&](int64_t begin, int64_t end) {
      for (int64_t nh = begin; nh < end; ++nh) {
        const int64_t n = nh / H, h = nh % H;
        for (int64_t i = 0; i < L; ++i) {
          const int64_t position = round_orders[nh * L + i];
          const int64_t row = nh * L + i;
          const bool has_next = i + C < L;
          Axpy(1.0f, query_grad + row * E, Row(grads.d_queries, n, position, h),
               E);
          float* dk = key_grad + ((n * L + position) * H + h) * E;
          Axpy(1.0f, own_keys + row * E, dk, E);
          if (has_next) Axpy(1.0f, previous_keys + (row + C) * E, dk, E);
          float* dv = Row(grads.d_values, n, position, h);
          Axpy(1.0f, own_values + row * D, dv, D);
          if (has_next) Axpy(1.0f, previous_values + (row + C) * D, dv, D);
        }
      }
    });
  }
  // K = Q / |Q|: d q += (d K - K (K . d K)) / |q|.
  ctx.pool().ParallelFor(N * L, [&](int64_t begin, int64_t end) {
    for (int64_t nl = begin; nl < end; ++nl) {
      const int64_t n = nl / L, l = nl % L;
      for (int64_t h = 0; h < H; ++h) {
        const int64_t index = nl * H + h;
        const float inverse_norm = inverse_norms[index];
        if (inverse_norm == 0.0f) continue;
        const float* k = keys + index * E;
        const float* dk = key_grad + index * E;
        const float projection = Dot(k, dk, E);
        float* dq = Row(grads.d_queries, n, l, h);
        for (int64_t e = 0; e < E; ++e) {
          dq[e] += inverse_norm * (dk[e] - projection * k[e]);
        }
      }
    }
  });
  return absl::OkStatus();
}

absl::Status ReformerAttention::EnsureWork(const Context& ctx,
                                           const AttentionDims& dims,
                                           bool backward) {
  const int64_t NH = dims.batch * dims.heads, L = dims.queries, E = dims.qk_dim,
                D = dims.value_dim;
  const int64_t C = options_.chunk_size, W = 2 * C;
  work_.saved.resize(kWorkCount);
  const Shape shapes[kWorkCount] = {
      {NH, L, E}, {NH, L + C, E}, {NH, L + C, D},
      {NH, L, D}, {NH, L, W},     {NH, L, W},
      {NH, L, E}, {NH, L, E},     {NH, L, E},
      {NH, L, D}, {NH, L, D},     {dims.batch, L, dims.heads, E}};
  const int count = backward ? kWorkCount : kSlotGrad;
  for (int i = 0; i < count; ++i) {
    FTX_RETURN_IF_ERROR(EnsureTensor(work_.saved[i], shapes[i], ctx.device()));
  }
  return absl::OkStatus();
}

void ReformerAttention::GatherSorted(const Context& ctx,
                                     const AttentionDims& dims,
                                     const AttentionInputs& inputs,
                                     const float* keys, const int32_t* orders) {
  const int64_t N = dims.batch, L = dims.queries, H = dims.heads,
                E = dims.qk_dim, D = dims.value_dim;
  const int64_t C = options_.chunk_size;
  float* sorted_queries = work_.saved[kSortedQueries].data<float>();
  float* sorted_keys = work_.saved[kSortedKeys].data<float>();
  float* sorted_values = work_.saved[kSortedValues].data<float>();
  ctx.pool().ParallelFor(N * H, [&](int64_t begin, int64_t end) {
    for (int64_t nh = begin; nh < end; ++nh) {
      const int64_t n = nh / H, h = nh % H;
      float* padded_keys = sorted_keys + nh * (L + C) * E;
      float* padded_values = sorted_values + nh * (L + C) * D;
      std::fill(padded_keys, padded_keys + C * E, 0.0f);
      std::fill(padded_values, padded_values + C * D, 0.0f);
      for (int64_t i = 0; i < L; ++i) {
        const int64_t position = orders[nh * L + i];
        std::copy_n(Row(inputs.queries, n, position, h), E,
                    sorted_queries + (nh * L + i) * E);
        std::copy_n(keys + ((n * L + position) * H + h) * E, E,
                    padded_keys + (C + i) * E);
        std::copy_n(Row(inputs.values, n, position, h), D,
                    padded_values + (C + i) * D);
      }
    }
  });
}

AttentionSpec ReformerAttentionSpec() {
  AttentionSpec spec;
  spec.name = "reformer";
  spec.description =
      "shared-QK LSH attention in sorted chunks with a one-chunk look-back "
      "(Kitaev et al. 2020)";
  spec.options = {
      {"chunk_size", OptionType::kInt, OptionValue(int64_t{32}),
       "sorted positions per chunk (must divide L)"},
      {"bits", OptionType::kInt, OptionValue(int64_t{63}),
       "hashing planes per round (2 bits buckets)"},
      {"rounds", OptionType::kInt, OptionValue(int64_t{4}),
       "hashing rounds, averaged"},
      {"masked", OptionType::kBool, OptionValue(false),
       "a query does not attend to itself unless nothing else is visible"},
      {"softmax_temp", OptionType::kFloat, std::nullopt,
       "softmax temperature; default 1/sqrt(E)"},
      {"attention_dropout", OptionType::kFloat, OptionValue(0.1),
       "dropout on the attention probabilities (training only)"},
      {"seed", OptionType::kInt, OptionValue(int64_t{0}),
       "seed of the hashing planes (combined with the call's seed)"}};
  spec.factory = [](const AttentionOptions& o,
                    std::vector<std::unique_ptr<Attention>>)
      -> absl::StatusOr<std::unique_ptr<Attention>> {
    ReformerAttentionOptions options;
    options.chunk_size = o.Int("chunk_size").value_or(32);
    options.bits = o.Int("bits").value_or(63);
    options.rounds = o.Int("rounds").value_or(4);
    options.masked = o.Bool("masked").value_or(false);
    if (auto temp = o.Float("softmax_temp"))
      options.softmax_temp = static_cast<float>(*temp);
    options.attention_dropout =
        static_cast<float>(o.Float("attention_dropout").value_or(0.1));
    options.seed = static_cast<uint64_t>(o.Int("seed").value_or(0));
    FTX_ASSIGN_OR_RETURN(auto attention, ReformerAttention::Create(options));
    return std::unique_ptr<Attention>(std::move(attention));
  };
  return spec;
}

}  // namespace ftx
