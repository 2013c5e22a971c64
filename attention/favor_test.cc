// "favor" (performer-pytorch FastAttention) against the double reference of
// kernels/reference/favor_ref.h with a fixed projection: softmax, generalized
// and no_projection kernels, causal and not, key lengths; backward against
// central differences of the reference with the detached stabilisers frozen;
// projection redraw semantics; approximation of exact softmax attention
// improving with nb_features; the recurrent form against the parallel causal
// form; the two key stabilisers; the registry spec; errors for bad input.
#include "attention/favor.h"

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/reference/attention_ref.h"
#include "kernels/reference/favor_ref.h"
#include "tests/util/attention_data.h"
#include "tests/util/random.h"
#include "tests/util/tolerance.h"

namespace ftx {
namespace {

using ::ftx::testing::AllNear;
using ::ftx::testing::AttentionCase;
using ::ftx::testing::AttentionData;
using ::ftx::testing::Cast;
using ::ftx::testing::RandomNormalVector;
using ::ftx::testing::StepThrough;

reference::FavorRefOptions<double> RefOptions(
    const FavorAttentionOptions& options) {
  reference::FavorRefOptions<double> ref;
  ref.kernel = options.no_projection ? reference::FavorKernel::kNoProjection
               : options.generalized_attention
                   ? reference::FavorKernel::kGeneralized
                   : reference::FavorKernel::kSoftmax;
  ref.causal = options.causal;
  ref.key_max_stabilizer =
      options.key_stabilizer == FavorKeyStabilizer::kSequenceMax;
  if (options.kernel_fn == Activation::kSigmoid) {
    ref.kernel_fn = [](double x) { return 1.0 / (1.0 + std::exp(-x)); };
  }
  return ref;
}

// The reference forward on dense [N, T, H, *] inputs with projection w [m, E].
std::vector<double> Reference(
    const AttentionCase& c, const std::vector<double>& q,
    const std::vector<double>& k, const std::vector<double>& v,
    const std::vector<double>& w, int64_t m,
    const FavorAttentionOptions& options,
    const std::vector<int64_t>& key_lengths,
    const reference::FavorOffsets<double>* offsets = nullptr) {
  std::vector<double> out(c.n * c.l * c.h * c.d);
  reference::FavorAttention<double>(
      {c.n, c.l, c.s, c.h, c.e, c.d}, q.data(), k.data(), v.data(), w.data(), m,
      RefOptions(options), key_lengths, offsets, out.data());
  return out;
}

struct Config {
  std::string label;
  FavorAttentionOptions options;
};

std::vector<Config> Configs(bool causal) {
  std::vector<Config> configs;
  FavorAttentionOptions softmax;
  softmax.causal = causal;
  configs.push_back({"softmax", softmax});
  FavorAttentionOptions zero = softmax;
  zero.key_stabilizer = FavorKeyStabilizer::kZero;
  configs.push_back({"softmax, zero key stabiliser", zero});
  FavorAttentionOptions relu = softmax;
  relu.generalized_attention = true;
  configs.push_back({"generalized relu", relu});
  FavorAttentionOptions sigmoid = relu;
  sigmoid.kernel_fn = Activation::kSigmoid;
  configs.push_back({"generalized sigmoid", sigmoid});
  FavorAttentionOptions no_projection = softmax;
  no_projection.no_projection = true;
  configs.push_back({"no_projection", no_projection});
  return configs;
}

std::string Describe(const Config& config, const AttentionCase& c) {
  return absl::StrCat(config.label, (config.options.causal ? ", causal" : ""),
                      ", N=", c.n, " L=", c.l, " S=", c.s, " H=", c.h,
                      " E=", c.e, " D=", c.d);
}

class FavorTest : public ::testing::Test {
 protected:
  void SetUp() override { ctx_ = Context::Create({.num_threads = 2}).value(); }

  // Forward into a fresh [N, L, H, D] buffer.
  std::vector<float> Run(FavorAttention& attention, const AttentionData& data,
                         const AttentionInputs& inputs,
                         AttentionCache* cache = nullptr) {
    std::vector<float> out(data.OutSize(), NAN);
    const absl::Status status = attention.Forward(
        *ctx_, inputs, TensorView<float>(out.data(), data.OutShape()), cache);
    EXPECT_TRUE(status.ok()) << status;
    return out;
  }

  std::unique_ptr<Context> ctx_;
};

TEST_F(FavorTest, ForwardMatchesReferenceWithFixedProjection) {
  const AttentionCase cases[] = {{1, 1, 1, 1, 2, 1},
                                 {2, 5, 7, 3, 4, 6},
                                 {2, 9, 9, 2, 17, 5},
                                 {1, 33, 33, 4, 8, 8}};
  for (const AttentionCase& c : cases) {
    for (bool causal : {false, true}) {
      if (causal && c.l != c.s) continue;
      const AttentionData data(c, 41, 3, -1, 1);
      const int64_t m = 7 + c.e;
      const std::vector<float> w = RandomNormalVector(m * c.e, 43);
      for (const Config& config : Configs(causal)) {
        for (bool padded : {false, true}) {
          AttentionInputs inputs = data.Inputs();
          if (causal) inputs.attn_mask = AttnMask::Causal();
          if (padded) {
            inputs.key_lengths.lengths.assign(c.n, c.s);
            inputs.key_lengths.lengths[0] = c.s / 2;
          }
          FavorAttention attention(config.options);
          ASSERT_TRUE(
              attention
                  .SetProjection(TensorView<const float>(w.data(), {m, c.e}))
                  .ok());
          const std::vector<float> out = Run(attention, data, inputs);
          const std::vector<double> expected =
              Reference(c, AttentionData::Dense(data.queries()),
                        AttentionData::Dense(data.keys()),
                        AttentionData::Dense(data.values()), Cast<double>(w), m,
                        config.options, inputs.key_lengths.lengths);
          EXPECT_TRUE(AllNear(out, expected, {1e-5, 1e-4}))
              << Describe(config, c) << (padded ? ", padded" : "");
        }
      }
    }
  }
}

TEST_F(FavorTest, PaddedKeysOnlyLoseTheirValues) {
  // performer zeroes padded V rows only: the same output as zeroing those V
  // rows by hand and passing no key lengths, and not the same as dropping the
  // keys.
  const AttentionCase c{1, 4, 6, 1, 3, 2};
  const AttentionData data(c, 44, 0);
  FavorAttentionOptions options;
  options.nb_features = 16;
  FavorAttention attention(options);
  AttentionInputs inputs = data.Inputs();
  inputs.key_lengths.lengths = {4};
  const std::vector<float> padded = Run(attention, data, inputs);
  std::vector<float> values(data.values().data(),
                            data.values().data() + data.values().NumElements());
  for (int64_t s = 4; s < 6; ++s) {
    for (int64_t d = 0; d < 2; ++d) values[s * 2 + d] = 0.0f;
  }
  AttentionInputs zeroed = data.Inputs();
  zeroed.values = TensorView<const float>(values.data(), {1, 6, 1, 2});
  EXPECT_TRUE(AllNear(padded, Run(attention, data, zeroed), {1e-7, 1e-6}));
  AttentionInputs truncated = data.Inputs();
  truncated.keys = data.keys().Slice(1, 0, 4);
  truncated.values = data.values().Slice(1, 0, 4);
  const std::vector<float> dropped = Run(attention, data, truncated);
  EXPECT_FALSE(AllNear(padded, dropped, {1e-4, 1e-4}));
}

TEST_F(FavorTest, BackwardMatchesCentralDifferencesOfReference) {
  const AttentionCase non_causal{2, 4, 5, 2, 3, 4};
  const AttentionCase causal{2, 5, 5, 2, 3, 4};
  for (bool is_causal : {false, true}) {
    const AttentionCase c = is_causal ? causal : non_causal;
    const AttentionData data(c, 61, 2, -0.8, 0.8);
    const int64_t m = 6;
    const std::vector<float> w = RandomNormalVector(m * c.e, 63);
    const std::vector<double> w_dense = Cast<double>(w);
    for (const Config& config : Configs(is_causal)) {
      AttentionInputs inputs = data.Inputs();
      if (is_causal) inputs.attn_mask = AttnMask::Causal();
      inputs.key_lengths.lengths = {c.s, c.s - 2};
      FavorAttention attention(config.options);
      ASSERT_TRUE(
          attention.SetProjection(TensorView<const float>(w.data(), {m, c.e}))
              .ok());
      // performer detaches the max stabilisers: freeze them at the base point.
      const reference::FavorOffsets<double> offsets =
          reference::PerformerSoftmaxOffsets<double>(
              {c.n, c.l, c.s, c.h, c.e, c.d},
              AttentionData::Dense(data.queries()).data(),
              AttentionData::Dense(data.keys()).data(), w_dense.data(), m,
              config.options.key_stabilizer ==
                  FavorKeyStabilizer::kSequenceMax);
      SCOPED_TRACE(Describe(config, c));
      testing::ExpectGradientsMatch(
          *ctx_, attention, data, inputs,
          [&](const std::vector<double>& q, const std::vector<double>& k,
              const std::vector<double>& v) {
            return Reference(c, q, k, v, w_dense, m, config.options,
                             inputs.key_lengths.lengths, &offsets);
          });
    }
  }
}

std::vector<float> ProjectionCopy(const FavorAttention& attention) {
  const float* data = attention.projection().data<float>();
  return std::vector<float>(data, data + attention.projection().NumElements());
}

TEST_F(FavorTest, ProjectionRedrawFollowsPerformerProjectionUpdater) {
  const AttentionData data({1, 3, 3, 1, 4, 2}, 71);
  FavorAttentionOptions options;
  options.nb_features = 8;
  options.feature_redraw_interval = 2;
  FavorAttention attention(options);
  EXPECT_EQ(attention.projection().raw_data(), nullptr);
  AttentionInputs training = data.Inputs();
  training.training = true;
  std::vector<std::vector<float>> projections;
  for (int forward = 1; forward <= 6; ++forward) {
    Run(attention, data, training);
    projections.push_back(ProjectionCopy(attention));
  }
  // Forward 1 draws the initial matrix; redraws on forwards interval + 1 = 3
  // and 6.
  EXPECT_EQ(attention.projection_draws(), 3);
  EXPECT_EQ(projections[1], projections[0]);
  EXPECT_NE(projections[2], projections[1]);
  EXPECT_EQ(projections[3], projections[2]);
  EXPECT_EQ(projections[4], projections[3]);
  EXPECT_NE(projections[5], projections[4]);
  EXPECT_EQ(attention.calls_since_last_redraw(), 0);
  // Evaluation neither counts nor redraws.
  Run(attention, data, data.Inputs());
  Run(attention, data, data.Inputs());
  Run(attention, data, data.Inputs());
  EXPECT_EQ(attention.calls_since_last_redraw(), 0);
  EXPECT_EQ(ProjectionCopy(attention), projections[5]);
  // A loaded counter at the interval redraws on the next training forward.
  attention.set_calls_since_last_redraw(2);
  Run(attention, data, training);
  EXPECT_EQ(attention.projection_draws(), 4);

  // Interval 0 keeps the (set) projection for good.
  options.feature_redraw_interval = 0;
  FavorAttention fixed(options);
  const std::vector<float> w = RandomNormalVector(8 * 4, 73);
  ASSERT_TRUE(
      fixed.SetProjection(TensorView<const float>(w.data(), {8, 4})).ok());
  for (int forward = 0; forward < 5; ++forward) Run(fixed, data, training);
  EXPECT_EQ(ProjectionCopy(fixed), w);
  EXPECT_EQ(fixed.projection_draws(), 0);
}

TEST_F(FavorTest, ProjectionDependsOnlyOnTheSeedAndDefaultsToELogE) {
  const AttentionData data({1, 2, 2, 1, 64, 2}, 74);
  FavorAttention a, b;
  FavorAttentionOptions other;
  other.seed = 1;
  FavorAttention c(other);
  for (FavorAttention* attention : {&a, &b, &c})
    Run(*attention, data, data.Inputs());
  // performer: nb_features = int(64 ln 64) = 266.
  EXPECT_EQ(a.projection().shape(), (Shape{266, 64}));
  EXPECT_EQ(a.FeatureDim(64), 266);
  EXPECT_EQ(ProjectionCopy(a), ProjectionCopy(b));
  EXPECT_NE(ProjectionCopy(a), ProjectionCopy(c));
}

TEST_F(FavorTest, BackwardUsesTheProjectionOfItsForward) {
  const AttentionCase c{1, 4, 4, 2, 3, 2};
  const AttentionData data(c, 75);
  FavorAttentionOptions options;
  options.nb_features = 5;
  options.feature_redraw_interval = 1;
  FavorAttention attention(options);
  AttentionInputs inputs = data.Inputs();
  inputs.training = true;
  auto backward = [&](const AttentionCache& cache) {
    std::vector<float> d_q(c.n * c.l * c.h * c.e), d_k(d_q.size()),
        d_v(c.n * c.s * c.h * c.d);
    const std::vector<float> d_out(data.OutSize(), 1.0f);
    const AttentionGrads grads{
        TensorView<float>(d_q.data(), {c.n, c.l, c.h, c.e}),
        TensorView<float>(d_k.data(), {c.n, c.s, c.h, c.e}),
        TensorView<float>(d_v.data(), {c.n, c.s, c.h, c.d})};
    EXPECT_TRUE(
        attention
            .Backward(*ctx_, inputs, cache,
                      TensorView<const float>(d_out.data(), data.OutShape()),
                      grads)
            .ok());
    d_q.insert(d_q.end(), d_k.begin(), d_k.end());
    return d_q;
  };
  AttentionCache cache;
  Run(attention, data, inputs, &cache);
  const std::vector<float> before = backward(cache);
  const int64_t draws = attention.projection_draws();
  Run(attention, data, inputs);  // counter 1 -> no redraw
  Run(attention, data, inputs);  // redraw
  ASSERT_GT(attention.projection_draws(), draws);
  EXPECT_EQ(backward(cache), before);
}

// Relative RMS error of FAVOR+ against exact softmax attention, averaged over
// seeds.
double ApproximationError(const Context& ctx, int64_t nb_features, bool causal,
                          bool qr_uniform_q) {
  const AttentionCase c{1, 24, 24, 2, 8, 4};
  double total = 0;
  constexpr int kSeeds = 4;
  for (int seed = 0; seed < kSeeds; ++seed) {
    const AttentionData data(c, 100 + seed, 1, -1, 1);
    FavorAttentionOptions options;
    options.nb_features = nb_features;
    options.causal = causal;
    options.qr_uniform_q = qr_uniform_q;
    options.seed = 1000 + seed;
    FavorAttention attention(options);
    AttentionInputs inputs = data.Inputs();
    if (causal) inputs.attn_mask = AttnMask::Causal();
    std::vector<float> out(data.OutSize());
    EXPECT_TRUE(attention
                    .Forward(ctx, inputs,
                             TensorView<float>(out.data(), data.OutShape()),
                             nullptr)
                    .ok());
    std::vector<double> exact(data.OutSize());
    reference::FullAttention<double>(
        {c.n, c.l, c.s, c.h, c.e, c.d},
        AttentionData::Dense(data.queries()).data(),
        AttentionData::Dense(data.keys()).data(),
        AttentionData::Dense(data.values()).data(),
        1.0 / std::sqrt(static_cast<double>(c.e)),
        [&](int64_t l, int64_t s) { return causal && s > l ? -INFINITY : 0.0; },
        {}, exact.data());
    total += std::sqrt(testing::Nmse(out.data(), exact.data(), data.OutSize()));
  }
  return total / kSeeds;
}

TEST_F(FavorTest, ApproximationOfSoftmaxAttentionImprovesWithFeatures) {
  for (bool causal : {false, true}) {
    // Sign-symmetric projection rows: the error keeps falling like 1/sqrt(m).
    double previous = INFINITY;
    for (int64_t m : {16, 128, 1024, 8192}) {
      const double error = ApproximationError(*ctx_, m, causal, true);
      EXPECT_LT(error, previous)
          << "qr_uniform_q, nb_features " << m << (causal ? ", causal" : "");
      previous = error;
    }
    EXPECT_LT(previous, 0.06) << (causal ? "causal" : "non-causal");
    // performer 1.1.4's projection: better with more features, down to its
    // bias.
    double performer_previous = INFINITY;
    for (int64_t m : {16, 128, 1024}) {
      const double error = ApproximationError(*ctx_, m, causal, false);
      EXPECT_LT(error, performer_previous)
          << "nb_features " << m << (causal ? ", causal" : "");
      performer_previous = error;
    }
    EXPECT_LT(performer_previous, 0.2) << (causal ? "causal" : "non-causal");
    EXPECT_LT(previous, ApproximationError(*ctx_, 8192, causal, false));
  }
}

TEST_F(FavorTest, RecurrentStepsEqualParallelCausalWithZeroKeyStabilizer) {
  const AttentionData data({2, 13, 13, 3, 5, 4}, 81, 1, -1, 1);
  for (const Config& config : Configs(/*causal=*/true)) {
    FavorAttentionOptions options = config.options;
    options.nb_features = 11;
    options.seed = 5;
    // The recurrent form draws the same projection from the same seed.
    RecurrentFavorAttention recurrent(options);
    const std::vector<float> stepped = StepThrough(*ctx_, recurrent, data);
    options.key_stabilizer = FavorKeyStabilizer::kZero;
    FavorAttention parallel(options);
    AttentionInputs inputs = data.Inputs();
    inputs.attn_mask = AttnMask::Causal();
    EXPECT_TRUE(AllNear(stepped, Run(parallel, data, inputs), {1e-6, 1e-5}))
        << config.label;
    EXPECT_EQ(
        ProjectionCopy(parallel),
        std::vector<float>(recurrent.projection().data<float>(),
                           recurrent.projection().data<float>() + 11 * 5));
  }
  // A projection copied from a parallel twin.
  FavorAttentionOptions options;
  options.causal = true;
  options.key_stabilizer = FavorKeyStabilizer::kZero;
  options.nb_features = 9;
  FavorAttention parallel(options);
  AttentionInputs inputs = data.Inputs();
  inputs.attn_mask = AttnMask::Causal();
  const std::vector<float> expected = Run(parallel, data, inputs);
  options.seed = 99;
  RecurrentFavorAttention recurrent(options);
  ASSERT_TRUE(
      recurrent.SetProjection(parallel.projection().view<float>()).ok());
  EXPECT_TRUE(
      AllNear(StepThrough(*ctx_, recurrent, data), expected, {1e-6, 1e-5}));
}

TEST_F(FavorTest, KeyStabilizersAgreeUpToTheEpsTerms) {
  const AttentionCase c{2, 17, 17, 2, 6, 3};
  const AttentionData data(c, 91, 1, -1, 1);
  const int64_t m = 32;
  const std::vector<float> w = RandomNormalVector(m * c.e, 93);
  const std::vector<double> q = AttentionData::Dense(data.queries()),
                            k = AttentionData::Dense(data.keys()),
                            v = AttentionData::Dense(data.values());
  for (bool causal : {false, true}) {
    FavorAttentionOptions sequence_max, zero;
    sequence_max.causal = zero.causal = causal;
    zero.key_stabilizer = FavorKeyStabilizer::kZero;
    // Without the eps terms the shift exp(-max) cancels exactly.
    reference::FavorRefOptions<double> a = RefOptions(sequence_max),
                                       b = RefOptions(zero);
    a.softmax_eps = b.softmax_eps = a.causal_eps = b.causal_eps = 0.0;
    std::vector<double> out_a(data.OutSize()), out_b(data.OutSize());
    reference::FavorAttention<double>(
        {c.n, c.l, c.s, c.h, c.e, c.d}, q.data(), k.data(), v.data(),
        Cast<double>(w).data(), m, a, {}, nullptr, out_a.data());
    reference::FavorAttention<double>(
        {c.n, c.l, c.s, c.h, c.e, c.d}, q.data(), k.data(), v.data(),
        Cast<double>(w).data(), m, b, {}, nullptr, out_b.data());
    EXPECT_TRUE(AllNear(out_a, out_b, {1e-12, 1e-10})) << "causal " << causal;
    // With performer's eps the mechanisms differ, but only by the eps effect.
    AttentionInputs inputs = data.Inputs();
    if (causal) inputs.attn_mask = AttnMask::Causal();
    FavorAttention with_max(sequence_max), with_zero(zero);
    for (FavorAttention* attention : {&with_max, &with_zero}) {
      ASSERT_TRUE(
          attention->SetProjection(TensorView<const float>(w.data(), {m, c.e}))
              .ok());
    }
    const std::vector<float> max_out = Run(with_max, data, inputs);
    const std::vector<float> zero_out = Run(with_zero, data, inputs);
    EXPECT_TRUE(AllNear(max_out, zero_out, {2e-3, 2e-3}))
        << "causal " << causal;
    EXPECT_NE(max_out, zero_out) << "causal " << causal;
  }
}

void ExpectInvalid(const absl::Status& status, const std::string& fragment) {
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(status.message().find(fragment), std::string::npos) << status;
}

TEST_F(FavorTest, BadInputsAreErrors) {
  const AttentionCase c{1, 3, 3, 1, 4, 2};
  const AttentionData data(c, 111);
  std::vector<float> out(data.OutSize()), buffer(256);
  const TensorView<float> out_view(out.data(), data.OutShape());
  FavorAttentionOptions options;
  options.nb_features = 8;
  FavorAttention non_causal(options);
  options.causal = true;
  FavorAttention causal(options);

  AttentionInputs inputs = data.Inputs();
  inputs.attn_mask = AttnMask::Causal();
  ExpectInvalid(non_causal.Forward(*ctx_, inputs, out_view, nullptr),
                "all-ones");
  const std::vector<float> additive(9, 0.0f);
  inputs.attn_mask =
      AttnMask::Additive(TensorView<const float>(additive.data(), {3, 3}));
  ExpectInvalid(non_causal.Forward(*ctx_, inputs, out_view, nullptr),
                "all-ones");
  ExpectInvalid(causal.Forward(*ctx_, inputs, out_view, nullptr),
                "causal attn_mask");
  inputs.attn_mask = AttnMask::Causal(1);
  ExpectInvalid(causal.Forward(*ctx_, inputs, out_view, nullptr),
                "causal attn_mask");
  ExpectInvalid(causal.Forward(*ctx_, data.Inputs(), out_view, nullptr),
                "causal attn_mask");

  const AttentionData longer({1, 3, 5, 1, 4, 2}, 112);
  AttentionInputs cross = longer.Inputs();
  cross.attn_mask = AttnMask::Causal();
  ExpectInvalid(causal.Forward(*ctx_, cross, out_view, nullptr),
                "as many keys");

  inputs = data.Inputs();
  inputs.values = TensorView<const float>(buffer.data(), {1, 4, 1, 2});
  ExpectInvalid(non_causal.Forward(*ctx_, inputs, out_view, nullptr),
                "values has shape");
  inputs = data.Inputs();
  inputs.queries =
      TensorView<const float>(buffer.data(), {1, 3, 1, 4}, Device::Cuda());
  ExpectInvalid(non_causal.Forward(*ctx_, inputs, out_view, nullptr),
                "is on cuda");
  inputs = data.Inputs();
  inputs.keys = TensorView<const float>(nullptr, {1, 3, 1, 4});
  ExpectInvalid(non_causal.Forward(*ctx_, inputs, out_view, nullptr),
                "null data");
  inputs = data.Inputs();
  inputs.queries =
      TensorView<const float>(buffer.data(), {1, 3, 1, 4}, {24, 8, 8, 2});
  ExpectInvalid(non_causal.Forward(*ctx_, inputs, out_view, nullptr),
                "unit stride");
  inputs = data.Inputs();
  inputs.key_lengths.lengths = {7};
  ExpectInvalid(non_causal.Forward(*ctx_, inputs, out_view, nullptr),
                "key_lengths");

  ExpectInvalid(
      non_causal.SetProjection(TensorView<const float>(buffer.data(), {7, 4})),
      "nb_features = 8");
  ExpectInvalid(
      non_causal.SetProjection(TensorView<const float>(buffer.data(), {32})),
      "[m, E]");
  ASSERT_TRUE(
      non_causal.SetProjection(TensorView<const float>(buffer.data(), {8, 5}))
          .ok());
  ExpectInvalid(non_causal.Forward(*ctx_, data.Inputs(), out_view, nullptr),
                "E = 4");

  FavorAttentionOptions bad;
  bad.ortho_scaling = 2;
  ExpectInvalid(
      FavorAttention(bad).Forward(*ctx_, data.Inputs(), out_view, nullptr),
      "ortho_scaling");
  bad = {};
  bad.nb_features = 0;
  ExpectInvalid(ValidateFavorOptions(bad), "nb_features");
  bad = {};
  bad.feature_redraw_interval = -1;
  ExpectInvalid(ValidateFavorOptions(bad), "feature_redraw_interval");
  // int(E ln E) = 0 features for E = 1.
  const AttentionData tiny({1, 2, 2, 1, 1, 1}, 113);
  std::vector<float> tiny_out(tiny.OutSize());
  ExpectInvalid(
      FavorAttention().Forward(
          *ctx_, tiny.Inputs(),
          TensorView<float>(tiny_out.data(), tiny.OutShape()), nullptr),
      "at least one feature");

  // Backward needs the cache of a forward.
  std::vector<float> d_q(12), d_k(12), d_v(6);
  const AttentionGrads grads{TensorView<float>(d_q.data(), {1, 3, 1, 4}),
                             TensorView<float>(d_k.data(), {1, 3, 1, 4}),
                             TensorView<float>(d_v.data(), {1, 3, 1, 2})};
  FavorAttention fresh(options);
  inputs = data.Inputs();
  inputs.attn_mask = AttnMask::Causal();
  const absl::Status no_cache = fresh.Backward(
      *ctx_, inputs, AttentionCache{},
      TensorView<const float>(out.data(), data.OutShape()), grads);
  EXPECT_EQ(no_cache.code(), absl::StatusCode::kFailedPrecondition) << no_cache;
  const AttentionGrads bad_grads{TensorView<float>(d_q.data(), {1, 3, 1, 3}),
                                 grads.d_keys, grads.d_values};
  AttentionCache cache;
  ASSERT_TRUE(fresh.Forward(*ctx_, inputs, out_view, &cache).ok());
  ExpectInvalid(
      fresh.Backward(*ctx_, inputs, cache,
                     TensorView<const float>(out.data(), data.OutShape()),
                     bad_grads),
      "d_queries");

  // Recurrent steps.
  RecurrentFavorAttention recurrent(options);
  std::unique_ptr<RecurrentState> state = recurrent.NewState();
  std::vector<float> step(64, 0.5f), step_out(64);
  ASSERT_TRUE(recurrent
                  .Step(*ctx_, TensorView<const float>(step.data(), {2, 2, 3}),
                        TensorView<const float>(step.data(), {2, 2, 3}),
                        TensorView<const float>(step.data(), {2, 2, 4}),
                        TensorView<float>(step_out.data(), {2, 2, 4}), *state)
                  .ok());
  ExpectInvalid(
      recurrent.Step(*ctx_, TensorView<const float>(step.data(), {1, 2, 3}),
                     TensorView<const float>(step.data(), {1, 2, 3}),
                     TensorView<const float>(step.data(), {1, 2, 4}),
                     TensorView<float>(step_out.data(), {1, 2, 4}), *state),
      "changed");
  ExpectInvalid(
      recurrent.Step(*ctx_, TensorView<const float>(step.data(), {2, 2, 3}),
                     TensorView<const float>(step.data(), {2, 2, 4}),
                     TensorView<const float>(step.data(), {2, 2, 4}),
                     TensorView<float>(step_out.data(), {2, 2, 4}), *state),
      "expected query and key");
}

TEST_F(FavorTest, SpecBuildsFromOptions) {
  const AttentionSpec spec = FavorAttentionSpec();
  EXPECT_EQ(spec.name, "favor");
  std::vector<std::string> names;
  for (const OptionSpec& option : spec.options) names.push_back(option.name);
  EXPECT_EQ(names, (std::vector<std::string>{
                       "nb_features", "ortho_scaling", "qr_uniform_q", "causal",
                       "generalized_attention", "kernel_fn", "no_projection",
                       "feature_redraw_interval", "key_stabilizer", "seed"}));
  AttentionOptions options;
  options.Set("nb_features", int64_t{7});
  options.Set("qr_uniform_q", true);
  options.Set("causal", true);
  options.Set("generalized_attention", true);
  options.Set("kernel_fn", std::string("sigmoid"));
  options.Set("key_stabilizer", std::string("zero"));
  options.Set("feature_redraw_interval", int64_t{0});
  options.Set("seed", int64_t{3});
  auto built = spec.factory(options, {});
  ASSERT_TRUE(built.ok()) << built.status();
  auto& favor = static_cast<FavorAttention&>(**built);
  EXPECT_STREQ(favor.name(), "favor");
  EXPECT_EQ(*favor.options().nb_features, 7);
  EXPECT_TRUE(favor.options().qr_uniform_q);
  EXPECT_TRUE(favor.options().causal);
  EXPECT_TRUE(favor.options().generalized_attention);
  EXPECT_EQ(favor.options().kernel_fn, Activation::kSigmoid);
  EXPECT_EQ(favor.options().key_stabilizer, FavorKeyStabilizer::kZero);
  EXPECT_EQ(favor.options().feature_redraw_interval, 0);
  EXPECT_EQ(favor.options().seed, 3u);

  AttentionOptions bad_kernel;
  bad_kernel.Set("kernel_fn", std::string("swishy"));
  ExpectInvalid(spec.factory(bad_kernel, {}).status(), "kernel_fn");
  AttentionOptions bad_stabilizer;
  bad_stabilizer.Set("key_stabilizer", std::string("max"));
  ExpectInvalid(spec.factory(bad_stabilizer, {}).status(), "key_stabilizer");
  AttentionOptions bad_scaling;
  bad_scaling.Set("ortho_scaling", int64_t{5});
  ExpectInvalid(spec.factory(bad_scaling, {}).status(), "ortho_scaling");
}

}  // namespace
}  // namespace ftx
