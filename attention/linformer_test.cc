// "linformer" against a double reference (projections along the sequence by
// Linear or Conv1d, then full attention) for every method and sharing mode,
// masks, the (n, k) causal mask, full_attention and slice_shorter; input and
// parameter gradients by central differences; external projections
// (BindProjections), shared between two mechanisms; length, option and binding
// errors.
#include "attention/linformer.h"

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "attention/builder.h"
#include "attention/builtin.h"
#include "gtest/gtest.h"
#include "kernels/reference/attention_ref.h"
#include "tests/util/attention_data.h"
#include "tests/util/tolerance.h"

namespace ftx {
namespace {

using ::ftx::testing::AllNear;
using ::ftx::testing::AttentionCase;
using ::ftx::testing::AttentionData;

// Every projection tensor of the mechanism (weight then bias per projection),
// flattened; or their gradients (the ones that exist).
std::vector<double> FlattenProjections(const LinformerAttention& attention,
                                       bool gradients) {
  std::vector<double> flat;
  for (int i = 0; i < attention.NumProjections(); ++i) {
    const LinformerProjection& p = attention.projection(i);
    for (const TensorView<float>& view :
         {gradients ? p.d_weight : p.weight, gradients ? p.d_bias : p.bias}) {
      if (view.data() == nullptr) continue;
      flat.insert(flat.end(), view.data(), view.data() + view.NumElements());
    }
  }
  return flat;
}

// Double reference. params: as FlattenProjections (weight [k, n] or [d, d, w],
// then the bias when there is one, per projection).
std::vector<double> Reference(const AttentionCase& c,
                              const LinformerOptions& options,
                              const std::vector<double>& params,
                              std::vector<double> q, std::vector<double> k,
                              std::vector<double> v,
                              const std::vector<int64_t>& query_lengths,
                              const std::vector<int64_t>& key_lengths) {
  const bool conv = options.method == LinformerMethod::kConvolution;
  const bool has_bias =
      options.bias && options.method != LinformerMethod::kNoParams;
  const int64_t n_len = options.seq_len, d = options.head_dim;
  const int64_t w = conv ? n_len / options.k : 0;
  const int64_t K = options.full_attention ? c.s : conv ? n_len / w : options.k;
  const int64_t weight_size = conv ? d * d * w : options.k * n_len;
  const int64_t per_matrix =
      weight_size + (has_bias ? (conv ? d : options.k) : 0);
  auto index = [&](int which, int64_t h) -> int64_t {
    switch (options.sharing) {
      case LinformerSharing::kNone:
        return 2 * h + which;
      case LinformerSharing::kHeadwise:
        return which;
      case LinformerSharing::kKeyValue:
        return 0;
    }
    return 0;
  };
  auto zero_rows = [&](std::vector<double>& x, int64_t steps, int64_t width,
                       const std::vector<int64_t>& lengths) {
    for (int64_t n = 0; n < c.n && !lengths.empty(); ++n)
      for (int64_t t = lengths[n]; t < steps; ++t)
        for (int64_t i = 0; i < c.h * width; ++i)
          x[(n * steps + t) * c.h * width + i] = 0;
  };
  zero_rows(q, c.l, c.e, query_lengths);
  zero_rows(k, c.s, c.e, key_lengths);
  zero_rows(v, c.s, c.d, key_lengths);
  std::vector<double> kp = k, vp = v;
  if (!options.full_attention) {
    kp.assign(c.n * K * c.h * c.e, 0.0);
    vp.assign(c.n * K * c.h * c.d, 0.0);
    for (int which = 0; which < 2; ++which) {
      const std::vector<double>& source = which == 0 ? k : v;
      std::vector<double>& target = which == 0 ? kp : vp;
      const int64_t X = which == 0 ? c.e : c.d;
      for (int64_t h = 0; h < c.h; ++h) {
        const double* wt = params.data() + index(which, h) * per_matrix;
        const double* b = has_bias ? wt + weight_size : nullptr;
        auto src = [&](int64_t n, int64_t s, int64_t x) {
          return source[((n * c.s + s) * c.h + h) * X + x];
        };
        for (int64_t n = 0; n < c.n; ++n)
          for (int64_t j = 0; j < K; ++j)
            for (int64_t x = 0; x < X; ++x) {
              double sum = 0.0;
              if (conv) {
                sum = b ? b[x] : 0.0;
                for (int64_t i = 0; i < X; ++i)
                  for (int64_t t = 0; t < w; ++t)
                    sum += wt[(x * X + i) * w + t] * src(n, j * w + t, i);
              } else {
                sum = b ? b[j] : 0.0;
                for (int64_t s = 0; s < c.s; ++s)
                  sum += wt[j * n_len + s] * src(n, s, x);
              }
              target[((n * K + j) * c.h + h) * X + x] = sum;
            }
      }
    }
  }
  std::vector<double> out(c.n * c.l * c.h * c.d);
  const bool causal = options.causal;
  reference::FullAttention<double>(
      {c.n, c.l, K, c.h, c.e, c.d}, q.data(), kp.data(), vp.data(),
      1.0 / std::sqrt(double(c.e)),
      [causal](int64_t i, int64_t j) {
        return causal && j > i ? -INFINITY : 0.0;
      },
      {}, out.data());
  return out;
}

struct Variant {
  LinformerMethod method;
  LinformerSharing sharing;
};

class LinformerTest : public ::testing::TestWithParam<Variant> {
 protected:
  void SetUp() override { ctx_ = Context::Create({.num_threads = 2}).value(); }

  // Forward against the reference, then input and parameter gradients.
  void CheckAgainstReference(const AttentionCase& c,
                             const LinformerOptions& options,
                             const std::vector<int64_t>& query_lengths,
                             const std::vector<int64_t>& key_lengths) {
    auto attention = LinformerAttention::Create(options);
    ASSERT_TRUE(attention.ok()) << attention.status();
    const AttentionData data(c, 141, 2, -1.5, 1.5);
    AttentionInputs inputs = data.Inputs();
    inputs.query_lengths.lengths = query_lengths;
    inputs.key_lengths.lengths = key_lengths;
    const std::vector<double> params = FlattenProjections(**attention, false);
    auto reference = [&](const std::vector<double>& q,
                         const std::vector<double>& k,
                         const std::vector<double>& v) {
      return Reference(c, options, params, q, k, v, query_lengths, key_lengths);
    };
    std::vector<float> out(data.OutSize());
    ASSERT_TRUE((*attention)
                    ->Forward(*ctx_, inputs,
                              TensorView<float>(out.data(), data.OutShape()),
                              nullptr)
                    .ok());
    EXPECT_TRUE(AllNear(out,
                        reference(AttentionData::Dense(data.queries()),
                                  AttentionData::Dense(data.keys()),
                                  AttentionData::Dense(data.values())),
                        {1e-5, 1e-4}));
    // Input gradients (also fills the parameter gradients, starting from zero).
    testing::ExpectGradientsMatch(*ctx_, **attention, data, inputs, reference);
    if (options.method == LinformerMethod::kNoParams) return;
    const std::vector<double> w = [&] {
      const std::vector<float> d_out =
          testing::RandomUniformVector(out.size(), 99);
      return std::vector<double>(d_out.begin(), d_out.end());
    }();
    const auto q = AttentionData::Dense(data.queries()),
               k = AttentionData::Dense(data.keys()),
               v = AttentionData::Dense(data.values());
    EXPECT_TRUE(testing::GradientMatches(
        [&](const std::vector<double>& p) {
          return testing::Dot(
              w, Reference(c, options, p, q, k, v, query_lengths, key_lengths));
        },
        params, FlattenProjections(**attention, true), {2e-5, 1e-4}))
        << "parameter gradients";
  }

  std::unique_ptr<Context> ctx_;
};

TEST_P(LinformerTest, ForwardAndGradientsMatchReference) {
  for (bool causal : {false, true}) {
    SCOPED_TRACE(causal ? "causal" : "not causal");
    // n = 7, k = 3: a convolution has kernel = stride = 2 and 3 outputs, and
    // position 6 feeds none.
    const AttentionCase c{2, 7, 7, 2, 3, 3};
    const LinformerOptions options{.seq_len = 7,
                                   .k = 3,
                                   .heads = 2,
                                   .head_dim = 3,
                                   .method = GetParam().method,
                                   .sharing = GetParam().sharing,
                                   .causal = causal,
                                   .seed = 5};
    CheckAgainstReference(c, options, {7, 5}, {7, 4});
  }
}

INSTANTIATE_TEST_SUITE_P(
    MethodsAndSharing, LinformerTest,
    ::testing::Values(
        Variant{LinformerMethod::kLearnable, LinformerSharing::kNone},
        Variant{LinformerMethod::kLearnable, LinformerSharing::kHeadwise},
        Variant{LinformerMethod::kLearnable, LinformerSharing::kKeyValue},
        Variant{LinformerMethod::kConvolution, LinformerSharing::kNone},
        Variant{LinformerMethod::kConvolution, LinformerSharing::kHeadwise},
        Variant{LinformerMethod::kConvolution, LinformerSharing::kKeyValue},
        Variant{LinformerMethod::kNoParams, LinformerSharing::kHeadwise}));

TEST_F(LinformerTest, FullAttentionSkipsTheProjections) {
  for (bool causal : {false, true}) {
    SCOPED_TRACE(causal ? "causal" : "not causal");
    const LinformerOptions options{.seq_len = 6,
                                   .k = 2,
                                   .heads = 2,
                                   .causal = causal,
                                   .full_attention = true};
    CheckAgainstReference({2, 6, 6, 2, 3, 4}, options, {6, 3}, {6, 5});
  }
}

TEST_F(LinformerTest, SliceShorterUsesTheFirstColumns) {
  // lucidrains: keys shorter than seq_len read E[:, :S] and F[:, :S].
  LinformerOptions options{.seq_len = 9,
                           .k = 3,
                           .heads = 2,
                           .init = LinformerInit::kUniform,
                           .bias = false,
                           .slice_shorter = true};
  auto long_attention = LinformerAttention::Create(options).value();
  options.seq_len = 6;
  auto short_attention = LinformerAttention::Create(options).value();
  for (int i = 0; i < 2; ++i) {
    const LinformerProjection& source = long_attention->projection(i);
    const LinformerProjection& target = short_attention->projection(i);
    for (int64_t j = 0; j < 3; ++j)
      for (int64_t s = 0; s < 6; ++s)
        target.weight.at(j, s) = source.weight.at(j, s);
  }
  const AttentionData data({2, 6, 6, 2, 3, 4}, 17);
  std::vector<float> sliced(data.OutSize()), direct(data.OutSize());
  ASSERT_TRUE(long_attention
                  ->Forward(*ctx_, data.Inputs(),
                            TensorView<float>(sliced.data(), data.OutShape()),
                            nullptr)
                  .ok());
  ASSERT_TRUE(short_attention
                  ->Forward(*ctx_, data.Inputs(),
                            TensorView<float>(direct.data(), data.OutShape()),
                            nullptr)
                  .ok());
  EXPECT_TRUE(AllNear(sliced, direct, {1e-6, 1e-6}));
}

TEST_F(LinformerTest, BoundProjectionsAreReadAndShared) {
  // Two mechanisms bound to the same external projection (layerwise sharing):
  // outputs as with owned copies, gradients of both add up in one place.
  const LinformerOptions options{.seq_len = 6,
                                 .k = 3,
                                 .heads = 2,
                                 .head_dim = 3,
                                 .method = LinformerMethod::kConvolution,
                                 .sharing = LinformerSharing::kKeyValue,
                                 .seed = 8};
  auto owner = LinformerAttention::Create(options).value();
  const Shape weight_shape = owner->ProjectionWeightShape();
  const Shape bias_shape = owner->ProjectionBiasShape();
  std::vector<float> weight(weight_shape.NumElements()),
      bias(bias_shape.NumElements()), d_weight(weight.size(), 0.0f),
      d_bias(bias.size(), 0.0f);
  const LinformerProjection& owned = owner->projection(0);
  std::copy(owned.weight.data(), owned.weight.data() + weight.size(),
            weight.begin());
  std::copy(owned.bias.data(), owned.bias.data() + bias.size(), bias.begin());
  const LinformerProjection external{
      TensorView<float>(weight.data(), weight_shape),
      TensorView<float>(bias.data(), bias_shape),
      TensorView<float>(d_weight.data(), weight_shape),
      TensorView<float>(d_bias.data(), bias_shape)};
  auto first =
      LinformerAttention::Create({.seq_len = 6,
                                  .k = 3,
                                  .heads = 2,
                                  .head_dim = 3,
                                  .method = LinformerMethod::kConvolution,
                                  .sharing = LinformerSharing::kKeyValue,
                                  .seed = 99})
          .value();
  auto second = LinformerAttention::Create(options).value();
  ASSERT_TRUE(first->BindProjections({external}).ok());
  ASSERT_TRUE(second->BindProjections({external}).ok());
  EXPECT_TRUE(first->Parameters().empty());
  EXPECT_FALSE(owner->Parameters().empty());

  const AttentionData data({2, 6, 6, 2, 3, 3}, 23);
  const std::vector<float> d_out =
      testing::RandomUniformVector(data.OutSize(), 5);
  std::vector<float> out_owner(data.OutSize()), out_first(data.OutSize());
  std::vector<float> d_q(data.OutSize()), d_k(data.OutSize()),
      d_v(data.OutSize());
  const AttentionGrads grads{TensorView<float>(d_q.data(), data.OutShape()),
                             TensorView<float>(d_k.data(), data.OutShape()),
                             TensorView<float>(d_v.data(), data.OutShape())};
  const TensorView<const float> d_out_view(d_out.data(), data.OutShape());
  for (LinformerAttention* attention :
       {owner.get(), first.get(), second.get()}) {
    AttentionCache cache;
    std::vector<float>& out = attention == owner.get() ? out_owner : out_first;
    ASSERT_TRUE(attention
                    ->Forward(*ctx_, data.Inputs(),
                              TensorView<float>(out.data(), data.OutShape()),
                              &cache)
                    .ok());
    ASSERT_TRUE(
        attention->Backward(*ctx_, data.Inputs(), cache, d_out_view, grads)
            .ok());
  }
  EXPECT_TRUE(AllNear(out_first, out_owner, {1e-6, 1e-6}));
  std::vector<float> twice_weight, twice_bias;
  for (int64_t i = 0; i < owned.d_weight.NumElements(); ++i)
    twice_weight.push_back(2 * owned.d_weight.data()[i]);
  for (int64_t i = 0; i < owned.d_bias.NumElements(); ++i)
    twice_bias.push_back(2 * owned.d_bias.data()[i]);
  EXPECT_TRUE(AllNear(d_weight, twice_weight, {1e-5, 1e-5}));
  EXPECT_TRUE(AllNear(d_bias, twice_bias, {1e-5, 1e-5}));
}

TEST(LinformerErrorsTest, BindingChecksCountAndShapes) {
  auto attention = LinformerAttention::Create({.seq_len = 6, .k = 3}).value();
  std::vector<float> storage(64);
  const LinformerProjection wrong{TensorView<float>(storage.data(), {3, 5}),
                                  TensorView<float>(storage.data(), {3})};
  absl::Status status = attention->BindProjections({wrong, wrong});
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("projections[0].weight"), std::string::npos)
      << status;
  status = attention->BindProjections({wrong});
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("expected 2"), std::string::npos) << status;
}

TEST(LinformerErrorsTest, LengthOtherThanSeqLenIsAnError) {
  auto ctx = Context::Create({.num_threads = 1}).value();
  auto attention = LinformerAttention::Create({.seq_len = 8, .k = 4}).value();
  const AttentionData data({1, 6, 6, 1, 2, 2}, 151);
  std::vector<float> out(data.OutSize());
  const absl::Status status = attention->Forward(
      *ctx, data.Inputs(), TensorView<float>(out.data(), data.OutShape()),
      nullptr);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("seq_len 8"), std::string::npos) << status;
}

TEST(LinformerErrorsTest, ConvolutionNeedsHeadDim) {
  auto ctx = Context::Create({.num_threads = 1}).value();
  EXPECT_EQ(LinformerAttention::Create(
                {.seq_len = 8, .k = 4, .method = LinformerMethod::kConvolution})
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      LinformerAttention::Create({.seq_len = 8,
                                  .k = 9,
                                  .head_dim = 2,
                                  .method = LinformerMethod::kConvolution})
          .status()
          .code(),
      absl::StatusCode::kInvalidArgument);
  auto attention =
      LinformerAttention::Create({.seq_len = 6,
                                  .k = 3,
                                  .head_dim = 4,
                                  .method = LinformerMethod::kConvolution})
          .value();
  const AttentionData data({1, 6, 6, 1, 2, 2}, 151);
  std::vector<float> out(data.OutSize());
  const absl::Status status = attention->Forward(
      *ctx, data.Inputs(), TensorView<float>(out.data(), data.OutShape()),
      nullptr);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("head_dim 4"), std::string::npos) << status;
}

TEST(LinformerErrorsTest, BuilderValidatesOptions) {
  AttentionRegistry registry;
  ASSERT_TRUE(RegisterBuiltinAttentions(registry).ok());
  AttentionBuilder builder(registry);
  EXPECT_NE(builder.Build("linformer").status().message().find("seq_len"),
            std::string::npos);
  ASSERT_TRUE(builder.Set("seq_len", int64_t{16}).ok());
  ASSERT_TRUE(builder.Set("method", std::string("convolution")).ok());
  EXPECT_NE(builder.Build("linformer").status().message().find("head_dim"),
            std::string::npos);
  ASSERT_TRUE(builder.Set("head_dim", int64_t{4}).ok());
  EXPECT_NE(builder.Build("linformer").status().message().find("k <= seq_len"),
            std::string::npos);
  ASSERT_TRUE(builder.Set("k", int64_t{4}).ok());
  ASSERT_TRUE(builder.Build("linformer").ok());
  ASSERT_TRUE(builder.Set("method", std::string("strided")).ok());
  EXPECT_NE(builder.Build("linformer").status().message().find("strided"),
            std::string::npos);
  ASSERT_TRUE(builder.Set("method", std::string("no_params")).ok());
  auto built = builder.Build("linformer");
  ASSERT_TRUE(built.ok()) << built.status();
  EXPECT_TRUE((*built)->Parameters().empty());
}

}  // namespace
}  // namespace ftx
