// AttentionLayer with "full" inner attention against a double reference of the
// whole layer (projections, grouped kv heads, persistent memory kv, masks, out
// projection): forward values, and every parameter and input gradient by
// central differences.
#include "attention/attention_layer.h"

#include <cmath>
#include <limits>
#include <memory>
#include <optional>
#include <vector>

#include "attention/full.h"
#include "attention/rotary.h"
#include "gtest/gtest.h"
#include "kernels/reference/attention_ref.h"
#include "tests/util/gradcheck.h"
#include "tests/util/random.h"
#include "tests/util/tolerance.h"

namespace ftx {
namespace {

using ::ftx::testing::AllNear;
using ::ftx::testing::RandomUniformVector;

struct LayerCase {
  int64_t n, l, s, c, h, e, d, kv_heads, memory;
  bool bias, self_attention, causal;
  int64_t rotary_dim = 0;        // > 0: half-split rotary on Q and K
  bool head_bias = false;        // the same [L, S] score bias for every head
  std::optional<bool> out_bias;  // unset: `bias`
  bool rotate_values = false;    // rotary on V too (x-transformers 0.26.6)
};

// Half-split rotary (RoFormer) of x [N, T, heads, E] over the first `dim`
// features, position of step t = t, written from the formula.
void Rotate(std::vector<double>& x, int64_t n, int64_t t_len, int64_t heads,
            int64_t e, int64_t dim) {
  for (int64_t i = 0; i < n * t_len * heads; ++i) {
    const int64_t t = (i / heads) % t_len;
    double* row = x.data() + i * e;
    for (int64_t j = 0; j < dim / 2; ++j) {
      const double angle = t * std::pow(10000.0, -2.0 * j / dim);
      const double a = row[j], b = row[j + dim / 2];
      row[j] = a * std::cos(angle) - b * std::sin(angle);
      row[j + dim / 2] = b * std::cos(angle) + a * std::sin(angle);
    }
  }
}

// Parameters flattened in ParamShapes() order.
struct FlatParams {
  std::vector<double> values;
  std::vector<std::pair<std::string, std::pair<int64_t, Shape>>>
      layout;  // offset, shape

  const double* Get(const std::string& name) const {
    for (const auto& [n, entry] : layout) {
      if (n == name) return values.data() + entry.first;
    }
    return nullptr;
  }
};

std::vector<double> Project(const std::vector<double>& x, int64_t rows,
                            int64_t in, const double* w, const double* b,
                            int64_t out) {
  std::vector<double> y(rows * out);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t o = 0; o < out; ++o) {
      double sum = b ? b[o] : 0.0;
      for (int64_t i = 0; i < in; ++i) sum += x[r * in + i] * w[o * in + i];
      y[r * out + o] = sum;
    }
  return y;
}

std::vector<double> ReferenceLayer(const LayerCase& t, const FlatParams& p,
                                   const std::vector<double>& x,
                                   const std::vector<double>& context,
                                   const std::vector<int64_t>& key_lengths,
                                   const std::vector<double>& bias = {}) {
  const std::vector<double>& source = t.self_attention ? x : context;
  const int64_t S = t.self_attention ? t.l : t.s, M = t.memory;
  auto q = Project(x, t.n * t.l, t.c, p.Get("query_projection.weight"),
                   p.Get("query_projection.bias"), t.h * t.e);
  auto k = Project(source, t.n * S, t.c, p.Get("key_projection.weight"),
                   p.Get("key_projection.bias"), t.kv_heads * t.e);
  auto v = Project(source, t.n * S, t.c, p.Get("value_projection.weight"),
                   p.Get("value_projection.bias"), t.kv_heads * t.d);
  if (t.rotary_dim > 0) {
    Rotate(q, t.n, t.l, t.h, t.e, t.rotary_dim);
    Rotate(k, t.n, S, t.kv_heads, t.e, t.rotary_dim);
    if (t.rotate_values) Rotate(v, t.n, S, t.kv_heads, t.d, t.rotary_dim);
  }
  // Expand: memory first, then key s of kv head h % kv_heads.
  std::vector<double> k_full(t.n * (M + S) * t.h * t.e),
      v_full(t.n * (M + S) * t.h * t.d);
  for (int64_t n = 0; n < t.n; ++n)
    for (int64_t s = 0; s < M + S; ++s)
      for (int64_t h = 0; h < t.h; ++h) {
        for (int64_t e = 0; e < t.e; ++e) {
          k_full[((n * (M + S) + s) * t.h + h) * t.e + e] =
              s < M ? p.Get("memory_keys")[(h * M + s) * t.e + e]
                    : k[((n * S + s - M) * t.kv_heads + h % t.kv_heads) * t.e +
                        e];
        }
        for (int64_t d = 0; d < t.d; ++d) {
          v_full[((n * (M + S) + s) * t.h + h) * t.d + d] =
              s < M ? p.Get("memory_values")[(h * M + s) * t.d + d]
                    : v[((n * S + s - M) * t.kv_heads + h % t.kv_heads) * t.d +
                        d];
        }
      }
  std::vector<int64_t> lengths = key_lengths;
  for (int64_t& length : lengths) length += M;
  std::vector<double> attended(t.n * t.l * t.h * t.d);
  const bool causal = t.causal;
  reference::FullAttention<double>(
      {t.n, t.l, M + S, t.h, t.e, t.d}, q.data(), k_full.data(), v_full.data(),
      1.0 / std::sqrt(double(t.e)),
      [&](int64_t l, int64_t s) {
        if (causal && s > l + M)
          return -std::numeric_limits<double>::infinity();
        return bias.empty() || s < M ? 0.0 : bias[l * S + s - M];
      },
      lengths, attended.data());
  return Project(attended, t.n * t.l, t.h * t.d, p.Get("out_projection.weight"),
                 p.Get("out_projection.bias"), t.c);
}

class AttentionLayerTest : public ::testing::TestWithParam<LayerCase> {
 protected:
  void SetUp() override { ctx_ = Context::Create({.num_threads = 2}).value(); }
  std::unique_ptr<Context> ctx_;
};

TEST_P(AttentionLayerTest, ForwardAndGradientsMatchReference) {
  const LayerCase t = GetParam();
  std::unique_ptr<QKTransform> rotary;
  if (t.rotary_dim > 0) {
    rotary = std::make_unique<RotaryEmbedding>(
        RotaryEmbedding::Create({t.rotary_dim, RotaryLayout::kHalfSplit})
            .value());
  }
  auto layer = AttentionLayer::Create({.d_model = t.c,
                                       .n_heads = t.h,
                                       .d_keys = t.e,
                                       .d_values = t.d,
                                       .kv_heads = t.kv_heads,
                                       .bias = t.bias,
                                       .out_bias = t.out_bias,
                                       .num_memory_kv = t.memory,
                                       .transform_values = t.rotate_values},
                                      std::make_unique<FullAttention>(),
                                      std::move(rotary));
  ASSERT_TRUE(layer.ok()) << layer.status();
  FlatParams flat;
  int64_t total = 0;
  for (const ParamShape& param : (*layer)->ParamShapes()) {
    flat.layout.push_back({param.name, {total, param.shape}});
    total += param.shape.NumElements();
  }
  flat.values = RandomUniformVector<double>(total, 7, -0.5, 0.5);
  std::vector<float> params(flat.values.begin(), flat.values.end());
  std::vector<float> grads(total,
                           0.25f);  // parameter gradients accumulate onto this
  auto view = [&](std::vector<float>& storage, const std::string& name) {
    for (const auto& [n, entry] : flat.layout) {
      if (n == name)
        return TensorView<float>(storage.data() + entry.first, entry.second);
    }
    return TensorView<float>();
  };
  const AttentionLayerParams layer_params{
      view(params, "query_projection.weight"),
      view(params, "query_projection.bias"),
      view(params, "key_projection.weight"),
      view(params, "key_projection.bias"),
      view(params, "value_projection.weight"),
      view(params, "value_projection.bias"),
      view(params, "out_projection.weight"),
      view(params, "out_projection.bias"),
      view(params, "memory_keys"),
      view(params, "memory_values")};
  AttentionLayerGrads layer_grads{view(grads, "query_projection.weight"),
                                  view(grads, "query_projection.bias"),
                                  view(grads, "key_projection.weight"),
                                  view(grads, "key_projection.bias"),
                                  view(grads, "value_projection.weight"),
                                  view(grads, "value_projection.bias"),
                                  view(grads, "out_projection.weight"),
                                  view(grads, "out_projection.bias"),
                                  view(grads, "memory_keys"),
                                  view(grads, "memory_values")};

  const int64_t S = t.self_attention ? t.l : t.s;
  const std::vector<float> x = RandomUniformVector(t.n * t.l * t.c, 8);
  const std::vector<float> context =
      t.self_attention ? std::vector<float>()
                       : RandomUniformVector(t.n * S * t.c, 9);
  AttentionLayerMasks masks;
  if (t.causal) masks.attn_mask = AttnMask::Causal();
  masks.key_lengths.lengths.assign(t.n, S);
  masks.key_lengths.lengths.back() = S - 1;
  // A head bias shared by all heads equals an additive [L, S] mask in the
  // reference.
  const std::vector<double> bias =
      t.head_bias ? RandomUniformVector<double>(t.l * S, 11)
                  : std::vector<double>();
  std::vector<float> head_bias, d_head_bias(t.h * t.l * S, 0.0f);
  for (int64_t h = 0; h < t.h && t.head_bias; ++h) {
    head_bias.insert(head_bias.end(), bias.begin(), bias.end());
  }
  if (t.head_bias) {
    masks.head_bias = TensorView<const float>(head_bias.data(), {t.h, t.l, S});
  }
  const TensorView<const float> x_view(x.data(), {t.n, t.l, t.c});
  const TensorView<const float> context_view =
      t.self_attention ? TensorView<const float>()
                       : TensorView<const float>(context.data(), {t.n, S, t.c});
  std::vector<float> out(t.n * t.l * t.c);
  AttentionLayerCache cache;
  ASSERT_TRUE((*layer)
                  ->Forward(*ctx_, layer_params, x_view, context_view, masks,
                            TensorView<float>(out.data(), {t.n, t.l, t.c}),
                            &cache)
                  .ok());
  const std::vector<double> xd(x.begin(), x.end()),
      cd(context.begin(), context.end());
  EXPECT_TRUE(AllNear(
      out, ReferenceLayer(t, flat, xd, cd, masks.key_lengths.lengths, bias),
      {1e-5, 1e-4}));

  if (t.head_bias) {
    layer_grads.head_bias =
        TensorView<float>(d_head_bias.data(), {t.h, t.l, S});
  }
  const std::vector<float> d_out = RandomUniformVector(out.size(), 10);
  std::vector<float> d_x(x.size()), d_context(context.size());
  const absl::Status status = (*layer)->Backward(
      *ctx_, layer_params, x_view, context_view, masks, cache,
      TensorView<const float>(d_out.data(), {t.n, t.l, t.c}),
      TensorView<float>(d_x.data(), {t.n, t.l, t.c}),
      t.self_attention ? TensorView<float>()
                       : TensorView<float>(d_context.data(), {t.n, S, t.c}),
      layer_grads);
  ASSERT_TRUE(status.ok()) << status;
  const std::vector<double> w(d_out.begin(), d_out.end());
  const testing::Tolerance tolerance{3e-5, 2e-4};
  EXPECT_TRUE(testing::GradientMatches(
      [&](const std::vector<double>& v) {
        return testing::Dot(
            w, ReferenceLayer(t, flat, v, cd, masks.key_lengths.lengths, bias));
      },
      xd, testing::Cast<double>(d_x), tolerance))
      << "d_x";
  if (!t.self_attention) {
    EXPECT_TRUE(testing::GradientMatches(
        [&](const std::vector<double>& v) {
          return testing::Dot(
              w,
              ReferenceLayer(t, flat, xd, v, masks.key_lengths.lengths, bias));
        },
        cd, testing::Cast<double>(d_context), tolerance))
        << "d_context";
  }
  std::vector<double> param_grads(grads.begin(), grads.end());
  for (double& g : param_grads) g -= 0.25;
  EXPECT_TRUE(testing::GradientMatches(
      [&](const std::vector<double>& v) {
        FlatParams perturbed = flat;
        perturbed.values = v;
        return testing::Dot(w, ReferenceLayer(t, perturbed, xd, cd,
                                              masks.key_lengths.lengths, bias));
      },
      flat.values, param_grads, tolerance))
      << "parameter gradients";
  if (t.head_bias) {
    const int64_t S_len = t.self_attention ? t.l : t.s;
    std::vector<double> d_bias(t.l * S_len, 0.0);
    for (int64_t h = 0; h < t.h; ++h) {
      for (int64_t i = 0; i < t.l * S_len; ++i)
        d_bias[i] += d_head_bias[h * t.l * S_len + i];
    }
    EXPECT_TRUE(testing::GradientMatches(
        [&](const std::vector<double>& v) {
          return testing::Dot(
              w, ReferenceLayer(t, flat, xd, cd, masks.key_lengths.lengths, v));
        },
        bias, d_bias, tolerance))
        << "head bias gradient";
  }
}

INSTANTIATE_TEST_SUITE_P(
    Configurations, AttentionLayerTest,
    ::testing::Values(
        // n, l, s, c, h, e, d, kv_heads, memory, bias, self, causal
        LayerCase{2, 4, 4, 6, 2, 3, 3, 2, 0, true, true,
                  false},  // fast-transformers
        LayerCase{2, 4, 5, 6, 2, 4, 2, 2, 0, false, false,
                  false},  // cross-attention
        LayerCase{1, 5, 5, 4, 4, 2, 3, 1, 0, false, true,
                  true},  // multi-query, causal
        LayerCase{2, 3, 3, 6, 4, 2, 2, 2, 2, true, true,
                  true},  // grouped kv + memory kv
        LayerCase{2, 3, 6, 6, 2, 3, 3, 2, 3, false, false,
                  false},  // memory kv, cross
        LayerCase{2, 5, 5, 8, 2, 4, 3, 2, 0, true, true, true,
                  4},  // rotary, causal
        LayerCase{1, 4, 4, 8, 4, 4, 2, 2, 2, false, true, false,
                  2},  // partial rotary + grouped kv + memory kv
        LayerCase{2, 4, 4, 6, 2, 3, 3, 2, 0, true, true, true, 0,
                  true},  // head bias, causal
        LayerCase{2, 3, 5, 6, 2, 3, 2, 1, 2, false, false, false, 0,
                  true},  // head bias + memory kv + multi-query, cross
        LayerCase{2, 4, 4, 6, 2, 3, 3, 2, 0, true, true, false, 0, false,
                  false},  // Q/K/V biases, no out bias
        LayerCase{2, 5, 5, 8, 2, 4, 4, 2, 1, false, true, true, 4, false, true,
                  true}));  // x-transformers 0.26.6: out bias only
                            // here, rotary on Q, K and V, memory kv

TEST(AttentionLayerConfigTest, BadConfigurationsAreErrors) {
  EXPECT_EQ(AttentionLayer::Create({.d_model = 6, .n_heads = 4},
                                   std::make_unique<FullAttention>())
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(AttentionLayer::Create({.d_model = 8, .n_heads = 4, .kv_heads = 3},
                                   std::make_unique<FullAttention>())
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(AttentionLayer::Create({.d_model = 8, .n_heads = 4}, nullptr)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ftx
