#include "attention/aft.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/base/rng.h"
#include "kernels/base/status_macros.h"
#include "kernels/matmul/matmul.h"

namespace ftx {
namespace {

// Philox streams of the u and v initialisations.
constexpr uint64_t kUStream = 0xAF70;
constexpr uint64_t kVStream = 0xAF71;

// aft-full cache:
//   saved[0] = position bias w [L, S] (masks folded in);
//   saved[1] = weighted averages A [N, L, H, D] (out = sigmoid(Q) * A);
//   saved[2] = log-normalisers max + log(sum exp) [N, L, H, D].
constexpr int kBias = 0;
constexpr int kAverages = 1;
constexpr int kLogNormalizers = 2;

// aft-simple cache:
//   non-causal: saved[0] = A [N, H, D], saved[1] = log-normalisers [N, H, D];
//   causal:     saved[0] = W [N, S, H, D], saved[1] = A [N, L, H, D].
constexpr int kSimpleFirst = 0;
constexpr int kSimpleSecond = 1;

constexpr float kNegativeInfinity = -std::numeric_limits<float>::infinity();

float Sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

absl::Status CheckEqualDims(absl::string_view op, const AttentionDims& dims) {
  if (dims.qk_dim != dims.value_dim) {
    return absl::InvalidArgumentError(absl::StrCat(
        op,
        ": AFT needs queries, keys and values of one size per head, got E = ",
        dims.qk_dim, " and D = ", dims.value_dim));
  }
  return absl::OkStatus();
}

absl::Status CheckCpu(absl::string_view op, const Context& ctx) {
  if (ctx.device().type == DeviceType::kCpu) return absl::OkStatus();
  return absl::UnimplementedError(
      absl::StrCat(op, ": only the CPU path exists so far"));
}

// Row pointers of a [N, T, H, X] view (unit stride in X).
template <typename T>
T* Row(const TensorView<T>& view, int64_t n, int64_t t, int64_t h) {
  return &view.at(n, t, h, 0);
}

// For one (n, l, h) row: d_average = d_out * sigmoid(q), and d_q unless null.
void GateBackward(const float* q, const float* d_out, const float* average,
                  int64_t D, float* d_average, float* d_q) {
  for (int64_t d = 0; d < D; ++d) {
    const float gate = Sigmoid(q[d]);
    d_average[d] = d_out[d] * gate;
    if (d_q != nullptr) d_q[d] = d_out[d] * average[d] * gate * (1.0f - gate);
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<AftFullAttention>> AftFullAttention::Create(
    const AftFullAttentionOptions& options) {
  if (options.max_sequence_length < 1 || options.aft_parameterization < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "AftFullAttention: max_sequence_length and aft_parameterization must "
        "be >= 1, got ",
        options.max_sequence_length, " and ", options.aft_parameterization));
  }
  std::unique_ptr<AftFullAttention> attention(new AftFullAttention(options));
  FTX_RETURN_IF_ERROR(attention->Initialize());
  return attention;
}

absl::Status AftFullAttention::Initialize() {
  const Shape shape{options_.max_sequence_length,
                    options_.aft_parameterization};
  for (Tensor* tensor : {&u_, &v_, &u_grad_, &v_grad_}) {
    FTX_ASSIGN_OR_RETURN(*tensor, Tensor::Create(DType::kF32, shape));
  }
  // torch.randn(max_sequence_length, aft_parameterization) * 0.01.
  for (auto [tensor, stream] :
       {std::pair{&u_, kUStream}, std::pair{&v_, kVStream}}) {
    float* data = tensor->data<float>();
    for (int64_t i = 0; i < tensor->NumElements(); ++i) {
      data[i] = 0.01f * RandomNormal(options_.seed, stream, i);
    }
  }
  return absl::OkStatus();
}

std::vector<ParamRef> AftFullAttention::Parameters() {
  return {{"u", &u_, &u_grad_}, {"v", &v_, &v_grad_}};
}

absl::Status AftFullAttention::PositionBias(const Context& ctx,
                                            const AttentionInputs& inputs,
                                            int64_t queries, int64_t keys,
                                            Tensor& bias) {
  FTX_RETURN_IF_ERROR(EnsureTensor(bias, {queries, keys}, ctx.device()));
  TensorView<float> w = bias.view<float>();
  FTX_RETURN_IF_ERROR(MatMul(ctx, u_.view<float>().Slice(0, 0, queries),
                             v_.view<float>().Slice(0, 0, keys), w,
                             {.transpose_b = true}));
  if (inputs.attn_mask.kind() != AttnMask::Kind::kAll) {
    for (int64_t l = 0; l < queries; ++l) {
      for (int64_t s = 0; s < keys; ++s)
        w.at(l, s) += inputs.attn_mask.At(l, s);
    }
  }
  return absl::OkStatus();
}

absl::Status AftFullAttention::Forward(const Context& ctx,
                                       const AttentionInputs& inputs,
                                       TensorView<float> out,
                                       AttentionCache* cache) {
  FTX_ASSIGN_OR_RETURN(
      const AttentionDims dims,
      ValidateAttentionForward("AftFullAttention", ctx, inputs, out));
  FTX_RETURN_IF_ERROR(CheckEqualDims("AftFullAttention", dims));
  if (dims.queries > options_.max_sequence_length ||
      dims.keys > options_.max_sequence_length) {
    return absl::InvalidArgumentError(absl::StrCat(
        "AftFullAttention: L = ", dims.queries, " and S = ", dims.keys,
        " must not exceed max_sequence_length = ",
        options_.max_sequence_length));
  }
  FTX_RETURN_IF_ERROR(CheckCpu("AftFullAttention", ctx));
  AttentionCache& saved = cache != nullptr ? *cache : scratch_;
  saved.saved.resize(3);
  FTX_RETURN_IF_ERROR(
      PositionBias(ctx, inputs, dims.queries, dims.keys, saved.saved[kBias]));
  const Shape per_channel{dims.batch, dims.queries, dims.heads, dims.value_dim};
  FTX_RETURN_IF_ERROR(
      EnsureTensor(saved.saved[kAverages], per_channel, ctx.device()));
  FTX_RETURN_IF_ERROR(
      EnsureTensor(saved.saved[kLogNormalizers], per_channel, ctx.device()));
  const float* bias = saved.saved[kBias].data<float>();
  const TensorView<float> averages = saved.saved[kAverages].view<float>();
  const TensorView<float> log_normalizers =
      saved.saved[kLogNormalizers].view<float>();

  const int64_t S = dims.keys, H = dims.heads, D = dims.value_dim;
  ctx.pool().ParallelFor(
      dims.batch * dims.queries * H, [&](int64_t begin, int64_t end) {
        std::vector<float> row_max(D), total(D), weighted(D);
        for (int64_t r = begin; r < end; ++r) {
          const int64_t n = r / (dims.queries * H), l = (r / H) % dims.queries,
                        h = r % H;
          const float* w = bias + l * S;
          const int64_t valid_keys = inputs.key_lengths.Length(n, S);
          // Pass 1: per-channel max of the logits K[s, d] * w[s].
          std::fill(row_max.begin(), row_max.end(), kNegativeInfinity);
          for (int64_t s = 0; s < valid_keys; ++s) {
            if (w[s] == kNegativeInfinity) continue;
            const float* k = Row(inputs.keys, n, s, h);
            for (int64_t d = 0; d < D; ++d)
              row_max[d] = std::max(row_max[d], k[d] * w[s]);
          }
          // Pass 2: sums of exp and of exp * V.
          std::fill(total.begin(), total.end(), 0.0f);
          std::fill(weighted.begin(), weighted.end(), 0.0f);
          for (int64_t s = 0; s < valid_keys; ++s) {
            if (w[s] == kNegativeInfinity) continue;
            const float* k = Row(inputs.keys, n, s, h);
            const float* v = Row(inputs.values, n, s, h);
            for (int64_t d = 0; d < D; ++d) {
              const float weight = std::exp(k[d] * w[s] - row_max[d]);
              total[d] += weight;
              weighted[d] += weight * v[d];
            }
          }
          const float* q = Row(inputs.queries, n, l, h);
          float* average = Row(averages, n, l, h);
          float* log_normalizer = Row(log_normalizers, n, l, h);
          float* o = Row(out, n, l, h);
          for (int64_t d = 0; d < D; ++d) {
            const bool usable = total[d] > 0.0f;
            average[d] = usable ? weighted[d] / total[d] : 0.0f;
            log_normalizer[d] =
                usable ? row_max[d] + std::log(total[d]) : kNegativeInfinity;
            o[d] = Sigmoid(q[d]) * average[d];
          }
        }
      });
  return absl::OkStatus();
}

absl::Status AftFullAttention::Backward(const Context& ctx,
                                        const AttentionInputs& inputs,
                                        const AttentionCache& cache,
                                        TensorView<const float> d_out,
                                        const AttentionGrads& grads) {
  FTX_ASSIGN_OR_RETURN(const AttentionDims dims,
                       ValidateAttentionBackward("AftFullAttentionBackward",
                                                 ctx, inputs, d_out, grads));
  FTX_RETURN_IF_ERROR(CheckEqualDims("AftFullAttentionBackward", dims));
  const Shape per_channel{dims.batch, dims.queries, dims.heads, dims.value_dim};
  if (cache.saved.size() != 3 ||
      cache.saved[kBias].shape() != Shape{dims.queries, dims.keys} ||
      cache.saved[kAverages].shape() != per_channel) {
    return absl::FailedPreconditionError(
        "AftFullAttentionBackward: the cache does not come from a Forward with "
        "these inputs (pass a cache to Forward)");
  }
  const float* bias = cache.saved[kBias].data<float>();
  const TensorView<const float> averages = cache.saved[kAverages].view<float>();
  const TensorView<const float> log_normalizers =
      cache.saved[kLogNormalizers].view<float>();
  const int64_t L = dims.queries, S = dims.keys, H = dims.heads,
                D = dims.value_dim;

  // Key s weighs p = exp(K * w - log_normalizer) in (n, l, h, d), and
  // d_logit = d_A * p * (V - A) for A = sum_s p V.
  // Pass 1, per (n, h): d_Q, d_K = sum_l d_logit w, d_V = sum_l d_A p.
  ctx.pool().ParallelFor(dims.batch * H, [&](int64_t begin, int64_t end) {
    std::vector<float> d_average(D);
    for (int64_t pair = begin; pair < end; ++pair) {
      const int64_t n = pair / H, h = pair % H;
      const int64_t valid_keys = inputs.key_lengths.Length(n, S);
      for (int64_t s = 0; s < S; ++s) {
        std::fill_n(Row(grads.d_keys, n, s, h), D, 0.0f);
        std::fill_n(Row(grads.d_values, n, s, h), D, 0.0f);
      }
      for (int64_t l = 0; l < L; ++l) {
        const float* average = Row(averages, n, l, h);
        const float* log_normalizer = Row(log_normalizers, n, l, h);
        GateBackward(Row(inputs.queries, n, l, h), Row(d_out, n, l, h), average,
                     D, d_average.data(), Row(grads.d_queries, n, l, h));
        const float* w = bias + l * S;
        for (int64_t s = 0; s < valid_keys; ++s) {
          if (w[s] == kNegativeInfinity) continue;
          const float* k = Row(inputs.keys, n, s, h);
          const float* v = Row(inputs.values, n, s, h);
          float* d_k = Row(grads.d_keys, n, s, h);
          float* d_v = Row(grads.d_values, n, s, h);
          for (int64_t d = 0; d < D; ++d) {
            const float p = std::exp(k[d] * w[s] - log_normalizer[d]);
            d_v[d] += d_average[d] * p;
            d_k[d] += d_average[d] * p * (v[d] - average[d]) * w[s];
          }
        }
      }
    }
  });

  // Pass 2, per l: d_w[l, s] = sum_{n, h, d} d_logit * K.
  FTX_RETURN_IF_ERROR(EnsureTensor(bias_grad_, {L, S}, ctx.device()));
  float* d_bias = bias_grad_.data<float>();
  ctx.pool().ParallelFor(L, [&](int64_t begin, int64_t end) {
    std::vector<float> d_average(D);
    for (int64_t l = begin; l < end; ++l) {
      const float* w = bias + l * S;
      float* d_w = d_bias + l * S;
      std::fill_n(d_w, S, 0.0f);
      for (int64_t n = 0; n < dims.batch; ++n) {
        const int64_t valid_keys = inputs.key_lengths.Length(n, S);
        for (int64_t h = 0; h < H; ++h) {
          const float* average = Row(averages, n, l, h);
          const float* log_normalizer = Row(log_normalizers, n, l, h);
          GateBackward(Row(inputs.queries, n, l, h), Row(d_out, n, l, h),
                       average, D, d_average.data(), nullptr);
          for (int64_t s = 0; s < valid_keys; ++s) {
            if (w[s] == kNegativeInfinity) continue;
            const float* k = Row(inputs.keys, n, s, h);
            const float* v = Row(inputs.values, n, s, h);
            float sum = 0.0f;
            for (int64_t d = 0; d < D; ++d) {
              const float p = std::exp(k[d] * w[s] - log_normalizer[d]);
              sum += d_average[d] * p * (v[d] - average[d]) * k[d];
            }
            d_w[s] += sum;
          }
        }
      }
    }
  });
  // w = u[:L] v[:S]^T (+ mask): d_u[:L] += d_w v[:S];  d_v[:S] += d_w^T u[:L].
  const TensorView<const float> d_w = bias_grad_.view<float>();
  FTX_RETURN_IF_ERROR(MatMul(ctx, d_w, v_.view<float>().Slice(0, 0, S),
                             u_grad_.view<float>().Slice(0, 0, L),
                             {.beta = 1.0f}));
  FTX_RETURN_IF_ERROR(MatMul(ctx, d_w, u_.view<float>().Slice(0, 0, L),
                             v_grad_.view<float>().Slice(0, 0, S),
                             {.transpose_a = true, .beta = 1.0f}));
  return absl::OkStatus();
}

namespace {

// The causal form of aft-simple: true for AttnMask::Causal(0), false for All;
// InvalidArgument for any other mask or for a causal L != S.
absl::StatusOr<bool> SimpleIsCausal(absl::string_view op,
                                    const AttentionInputs& inputs,
                                    const AttentionDims& dims) {
  const AttnMask& mask = inputs.attn_mask;
  if (mask.kind() == AttnMask::Kind::kAll) return false;
  if (mask.kind() != AttnMask::Kind::kCausal || mask.causal_offset() != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(op,
                     ": attn_mask must be all-ones or causal with offset 0 "
                     "(general masks would make it quadratic; use aft-full)"));
  }
  if (dims.queries != dims.keys) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": a causal attn_mask needs L == S, got L = ", dims.queries,
        " and S = ", dims.keys));
  }
  return true;
}

}  // namespace

absl::Status AftSimpleAttention::Forward(const Context& ctx,
                                         const AttentionInputs& inputs,
                                         TensorView<float> out,
                                         AttentionCache* cache) {
  FTX_ASSIGN_OR_RETURN(
      const AttentionDims dims,
      ValidateAttentionForward("AftSimpleAttention", ctx, inputs, out));
  FTX_RETURN_IF_ERROR(CheckEqualDims("AftSimpleAttention", dims));
  FTX_ASSIGN_OR_RETURN(const bool causal,
                       SimpleIsCausal("AftSimpleAttention", inputs, dims));
  FTX_RETURN_IF_ERROR(CheckCpu("AftSimpleAttention", ctx));
  AttentionCache& saved = cache != nullptr ? *cache : scratch_;
  saved.saved.resize(2);
  const int64_t L = dims.queries, S = dims.keys, H = dims.heads,
                D = dims.value_dim;
  if (causal) {
    FTX_RETURN_IF_ERROR(EnsureTensor(saved.saved[kSimpleFirst],
                                     {dims.batch, S, H, D}, ctx.device()));
    FTX_RETURN_IF_ERROR(EnsureTensor(saved.saved[kSimpleSecond],
                                     {dims.batch, L, H, D}, ctx.device()));
  } else {
    for (Tensor& tensor : saved.saved) {
      FTX_RETURN_IF_ERROR(
          EnsureTensor(tensor, {dims.batch, H, D}, ctx.device()));
    }
  }
  const TensorView<float> first = saved.saved[kSimpleFirst].view<float>();
  const TensorView<float> second = saved.saved[kSimpleSecond].view<float>();

  ctx.pool().ParallelFor(dims.batch * H, [&](int64_t begin, int64_t end) {
    std::vector<float> running_max(D), running_total(D), accumulated(D);
    for (int64_t pair = begin; pair < end; ++pair) {
      const int64_t n = pair / H, h = pair % H;
      const int64_t valid_keys = inputs.key_lengths.Length(n, S);
      std::fill(running_max.begin(), running_max.end(), kNegativeInfinity);
      std::fill(running_total.begin(), running_total.end(), 0.0f);
      std::fill(accumulated.begin(), accumulated.end(), 0.0f);
      if (causal) {
        // W_s = exp(K_s - m_s) / sum_{j<=s} exp(K_j - m_s), m_s the prefix max.
        for (int64_t s = 0; s < S; ++s) {
          const float* k = Row(inputs.keys, n, s, h);
          const float* v = Row(inputs.values, n, s, h);
          float* weight = &first.at(n, s, h, 0);
          for (int64_t d = 0; d < D; ++d) {
            weight[d] = 0.0f;
            if (s < valid_keys) {
              if (k[d] > running_max[d]) {
                running_total[d] =
                    running_total[d] * std::exp(running_max[d] - k[d]) + 1.0f;
                running_max[d] = k[d];
              } else {
                running_total[d] += std::exp(k[d] - running_max[d]);
              }
              weight[d] = std::exp(k[d] - running_max[d]) / running_total[d];
            }
            accumulated[d] += weight[d] * v[d];
          }
          const float* q = Row(inputs.queries, n, s, h);
          float* o = Row(out, n, s, h);
          std::copy(accumulated.begin(), accumulated.end(),
                    &second.at(n, s, h, 0));
          for (int64_t d = 0; d < D; ++d) o[d] = Sigmoid(q[d]) * accumulated[d];
        }
        continue;
      }
      for (int64_t s = 0; s < valid_keys; ++s) {
        const float* k = Row(inputs.keys, n, s, h);
        for (int64_t d = 0; d < D; ++d)
          running_max[d] = std::max(running_max[d], k[d]);
      }
      for (int64_t s = 0; s < valid_keys; ++s) {
        const float* k = Row(inputs.keys, n, s, h);
        const float* v = Row(inputs.values, n, s, h);
        for (int64_t d = 0; d < D; ++d) {
          const float weight = std::exp(k[d] - running_max[d]);
          running_total[d] += weight;
          accumulated[d] += weight * v[d];
        }
      }
      float* average = &first.at(n, h, 0);
      float* log_normalizer = &second.at(n, h, 0);
      for (int64_t d = 0; d < D; ++d) {
        const bool usable = running_total[d] > 0.0f;
        average[d] = usable ? accumulated[d] / running_total[d] : 0.0f;
        log_normalizer[d] = usable ? running_max[d] + std::log(running_total[d])
                                   : kNegativeInfinity;
      }
      for (int64_t l = 0; l < L; ++l) {
        const float* q = Row(inputs.queries, n, l, h);
        float* o = Row(out, n, l, h);
        for (int64_t d = 0; d < D; ++d) o[d] = Sigmoid(q[d]) * average[d];
      }
    }
  });
  return absl::OkStatus();
}

absl::Status AftSimpleAttention::Backward(const Context& ctx,
                                          const AttentionInputs& inputs,
                                          const AttentionCache& cache,
                                          TensorView<const float> d_out,
                                          const AttentionGrads& grads) {
  FTX_ASSIGN_OR_RETURN(const AttentionDims dims,
                       ValidateAttentionBackward("AftSimpleAttentionBackward",
                                                 ctx, inputs, d_out, grads));
  FTX_RETURN_IF_ERROR(CheckEqualDims("AftSimpleAttentionBackward", dims));
  FTX_ASSIGN_OR_RETURN(
      const bool causal,
      SimpleIsCausal("AftSimpleAttentionBackward", inputs, dims));
  const int64_t L = dims.queries, S = dims.keys, H = dims.heads,
                D = dims.value_dim;
  const Shape first_shape =
      causal ? Shape{dims.batch, S, H, D} : Shape{dims.batch, H, D};
  if (cache.saved.size() != 2 ||
      cache.saved[kSimpleFirst].shape() != first_shape) {
    return absl::FailedPreconditionError(
        "AftSimpleAttentionBackward: the cache does not come from a Forward "
        "with these inputs (pass a cache to Forward)");
  }
  const TensorView<const float> first = cache.saved[kSimpleFirst].view<float>();
  const TensorView<const float> second =
      cache.saved[kSimpleSecond].view<float>();

  ctx.pool().ParallelFor(dims.batch * H, [&](int64_t begin, int64_t end) {
    std::vector<float> d_average(D), suffix(D), carry(D), next_weight(D);
    for (int64_t pair = begin; pair < end; ++pair) {
      const int64_t n = pair / H, h = pair % H;
      const int64_t valid_keys = inputs.key_lengths.Length(n, S);
      if (causal) {
        // With G_j = sum_{l>=j} d_A_l and dW_j = G_j V_j:
        //   d_V_j = W_j G_j,  d_K_j = W_j (dW_j - T_j),
        //   T_j = dW_j W_j + (1 - W_{j+1}) T_{j+1},
        // from e_j / c_s = W_j prod_{j<i<=s} (1 - W_i), c_s = sum_{i<=s} e_i.
        std::fill(suffix.begin(), suffix.end(), 0.0f);
        std::fill(carry.begin(), carry.end(), 0.0f);
        std::fill(next_weight.begin(), next_weight.end(), 0.0f);
        for (int64_t j = S - 1; j >= 0; --j) {
          GateBackward(Row(inputs.queries, n, j, h), Row(d_out, n, j, h),
                       &second.at(n, j, h, 0), D, d_average.data(),
                       Row(grads.d_queries, n, j, h));
          const float* weight = &first.at(n, j, h, 0);
          const float* v = Row(inputs.values, n, j, h);
          float* d_k = Row(grads.d_keys, n, j, h);
          float* d_v = Row(grads.d_values, n, j, h);
          for (int64_t d = 0; d < D; ++d) {
            suffix[d] += d_average[d];
            d_v[d] = weight[d] * suffix[d];
            const float d_weight = suffix[d] * v[d];
            carry[d] =
                d_weight * weight[d] + (1.0f - next_weight[d]) * carry[d];
            d_k[d] = weight[d] * (d_weight - carry[d]);
            next_weight[d] = weight[d];
          }
        }
        continue;
      }
      const float* average = &first.at(n, h, 0);
      const float* log_normalizer = &second.at(n, h, 0);
      std::fill(d_average.begin(), d_average.end(), 0.0f);
      for (int64_t l = 0; l < L; ++l) {
        const float* q = Row(inputs.queries, n, l, h);
        const float* d_o = Row(d_out, n, l, h);
        float* d_q = Row(grads.d_queries, n, l, h);
        for (int64_t d = 0; d < D; ++d) {
          const float gate = Sigmoid(q[d]);
          d_average[d] += d_o[d] * gate;
          d_q[d] = d_o[d] * average[d] * gate * (1.0f - gate);
        }
      }
      for (int64_t s = 0; s < S; ++s) {
        const float* k = Row(inputs.keys, n, s, h);
        const float* v = Row(inputs.values, n, s, h);
        float* d_k = Row(grads.d_keys, n, s, h);
        float* d_v = Row(grads.d_values, n, s, h);
        for (int64_t d = 0; d < D; ++d) {
          const float p =
              s < valid_keys ? std::exp(k[d] - log_normalizer[d]) : 0.0f;
          d_v[d] = p * d_average[d];
          d_k[d] = p * d_average[d] * (v[d] - average[d]);
        }
      }
    }
  });
  return absl::OkStatus();
}

AttentionSpec AftFullAttentionSpec() {
  AttentionSpec spec;
  spec.name = "aft-full";
  spec.description =
      "Attention Free Transformer with a learned low-rank position bias, O(L S "
      "D) (Zhai et al. 2021; fast-transformers AFTFullAttention)";
  spec.options = {
      {"max_sequence_length", OptionType::kInt, OptionValue(int64_t{1024}),
       "rows of the position-bias factors u, v (longest L and S)"},
      {"aft_parameterization", OptionType::kInt, OptionValue(int64_t{64}),
       "rank of the position bias u v^T"},
      {"seed", OptionType::kInt, OptionValue(int64_t{0}),
       "initialisation seed of u and v"}};
  spec.factory = [](const AttentionOptions& o,
                    std::vector<std::unique_ptr<Attention>>)
      -> absl::StatusOr<std::unique_ptr<Attention>> {
    AftFullAttentionOptions options;
    options.max_sequence_length = o.Int("max_sequence_length").value_or(1024);
    options.aft_parameterization = o.Int("aft_parameterization").value_or(64);
    options.seed = static_cast<uint64_t>(o.Int("seed").value_or(0));
    FTX_ASSIGN_OR_RETURN(auto attention, AftFullAttention::Create(options));
    return std::unique_ptr<Attention>(std::move(attention));
  };
  return spec;
}

AttentionSpec AftSimpleAttentionSpec() {
  AttentionSpec spec;
  spec.name = "aft-simple";
  spec.description =
      "Attention Free Transformer without position bias, O(L D) (Zhai et al. "
      "2021; fast-transformers AFTSimpleAttention)";
  spec.factory = [](const AttentionOptions&,
                    std::vector<std::unique_ptr<Attention>>)
      -> absl::StatusOr<std::unique_ptr<Attention>> {
    return std::unique_ptr<Attention>(std::make_unique<AftSimpleAttention>());
  };
  return spec;
}

}  // namespace ftx
