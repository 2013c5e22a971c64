// Local attention ("local" and "local-windowed") against the scalar references
// of kernels/reference/local_ref.h in double: forward over window widths (1,
// odd, even, wider than the sequence), L != S, masks, key lengths and strided
// inputs; backward against central differences of the references; dropout; the
// recurrent form against the parallel causal forward; bad inputs and the
// registry entries.
#include "attention/local.h"

#include <cmath>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "attention/builder.h"
#include "attention/full.h"
#include "gtest/gtest.h"
#include "kernels/reference/attention_ref.h"
#include "kernels/reference/local_ref.h"
#include "tests/util/attention_data.h"
#include "tests/util/gradcheck.h"
#include "tests/util/random.h"
#include "tests/util/tolerance.h"

namespace ftx {
namespace {

using ::ftx::testing::AllNear;
using ::ftx::testing::AttentionCase;
using ::ftx::testing::AttentionData;
using ::ftx::testing::RandomUniformVector;
using ::ftx::testing::StepThrough;

reference::AdditiveMaskFn MaskFunction(const AttnMask& mask) {
  return [mask](int64_t l, int64_t s) {
    return static_cast<double>(mask.At(l, s));
  };
}

reference::AttentionShape RefShape(const AttentionCase& c) {
  return {c.n, c.l, c.s, c.h, c.e, c.d};
}

std::vector<float> RunForward(const Context& ctx, Attention& attention,
                              const AttentionData& data,
                              const AttentionInputs& inputs,
                              AttentionCache* cache = nullptr) {
  std::vector<float> out(data.OutSize(), NAN);
  const absl::Status status = attention.Forward(
      ctx, inputs, TensorView<float>(out.data(), data.OutShape()), cache);
  EXPECT_TRUE(status.ok()) << status;
  return out;
}

std::vector<double> FtReference(const AttentionCase& c,
                                const std::vector<double>& q,
                                const std::vector<double>& k,
                                const std::vector<double>& v, int64_t context,
                                double temp, const AttnMask& mask,
                                const std::vector<int64_t>& key_lengths) {
  std::vector<double> out(c.n * c.l * c.h * c.d);
  reference::FastTransformersLocalAttention<double>(
      RefShape(c), q.data(), k.data(), v.data(), context, temp,
      MaskFunction(mask), key_lengths, out.data());
  return out;
}

reference::WindowedLocalOptions RefOptions(
    const LocalWindowedAttentionOptions& o) {
  reference::WindowedLocalOptions options;
  options.window_size = o.window_size;
  options.causal = o.causal;
  options.look_backward = o.look_backward;
  options.look_forward = o.LookForward();
  options.autopad = o.autopad;
  options.exact_windowsize = o.exact_windowsize;
  options.rel_pos_emb = o.rel_pos_emb;
  return options;
}

std::vector<double> WindowedReference(
    const AttentionCase& c, const std::vector<double>& q,
    const std::vector<double>& k, const std::vector<double>& v,
    const LocalWindowedAttentionOptions& options,
    const std::vector<int64_t>& key_lengths) {
  std::vector<double> out(c.n * c.l * c.h * c.d);
  reference::WindowedLocalAttention<double>(RefShape(c), q.data(), k.data(),
                                            v.data(), RefOptions(options),
                                            key_lengths, out.data());
  return out;
}

class LocalAttentionTest : public ::testing::Test {
 protected:
  void SetUp() override { ctx_ = Context::Create({.num_threads = 2}).value(); }
  std::unique_ptr<Context> ctx_;
};

// "local" (fast-transformers).

TEST_F(LocalAttentionTest, ForwardMatchesReference) {
  const AttentionCase cases[] = {{1, 1, 1, 1, 1, 1},   {2, 7, 7, 3, 4, 6},
                                 {2, 9, 5, 2, 5, 3},   {1, 5, 11, 2, 8, 4},
                                 {1, 40, 40, 2, 3, 2}, {2, 70, 70, 1, 4, 5}};
  std::vector<float> additive;
  for (const AttentionCase& c : cases) {
    const AttentionData data(c, 11, 3, -2, 2);
    additive = RandomUniformVector(c.l * c.s, 5, -1, 1);
    additive[0] = -std::numeric_limits<float>::infinity();
    if (c.l * c.s > 4)
      additive[c.l * c.s / 2] = -std::numeric_limits<float>::infinity();
    const AttnMask masks[] = {AttnMask::All(), AttnMask::Causal(),
                              AttnMask::Causal(2),
                              AttnMask::Additive(TensorView<const float>(
                                  additive.data(), {c.l, c.s}))};
    const std::vector<double> q = AttentionData::Dense(data.queries());
    const std::vector<double> k = AttentionData::Dense(data.keys());
    const std::vector<double> v = AttentionData::Dense(data.values());
    for (const int64_t context :
         {int64_t{1}, int64_t{2}, int64_t{3}, int64_t{4}, int64_t{7},
          int64_t{8}, 2 * c.s + 1, int64_t{100}}) {
      for (const AttnMask& mask : masks) {
        for (const bool padded : {false, true}) {
          AttentionInputs inputs = data.Inputs();
          inputs.attn_mask = mask;
          if (padded) {
            inputs.key_lengths.lengths.assign(c.n, c.s);
            inputs.key_lengths.lengths[0] =
                c.s / 2;  // 0 for S = 1: all keys padded
          }
          for (const std::optional<float> temp :
               {std::optional<float>(), std::optional<float>(0.7f)}) {
            LocalAttention attention(
                {.local_context = context, .softmax_temp = temp});
            const std::vector<float> out =
                RunForward(*ctx_, attention, data, inputs);
            const double t =
                temp.has_value() ? *temp : 1.0 / std::sqrt(double(c.e));
            EXPECT_TRUE(AllNear(out,
                                FtReference(c, q, k, v, context, t, mask,
                                            inputs.key_lengths.lengths),
                                {2e-6, 2e-5}))
                << "case " << c.n << "x" << c.l << "x" << c.s << " c "
                << context << " mask " << static_cast<int>(mask.kind())
                << " padded " << padded;
          }
        }
      }
    }
  }
}

TEST_F(LocalAttentionTest, WideWindowEqualsFullAttention) {
  // fast-transformers' own test: with c >= 2L the window covers every key.
  const AttentionCase c{2, 13, 13, 3, 5, 4};
  const AttentionData data(c, 17);
  for (const AttnMask& mask : {AttnMask::All(), AttnMask::Causal()}) {
    AttentionInputs inputs = data.Inputs();
    inputs.attn_mask = mask;
    inputs.key_lengths.lengths = {13, 6};
    LocalAttention local({.local_context = 2 * c.l});
    FullAttention full;
    EXPECT_TRUE(AllNear(RunForward(*ctx_, local, data, inputs),
                        RunForward(*ctx_, full, data, inputs), {1e-6, 1e-5}));
  }
}

TEST_F(LocalAttentionTest, QueryWithoutVisibleKeysAveragesItsSlots) {
  // Every key of batch 0 is padded: each slot scores -1e24 * t, so the c slots
  // get 1/c each and the output is the sum of the in-range values over c.
  const AttentionCase c{1, 6, 6, 1, 2, 3};
  const AttentionData data(c, 23);
  AttentionInputs inputs = data.Inputs();
  inputs.key_lengths.lengths = {0};
  const int64_t context = 4;
  LocalAttention attention({.local_context = context});
  const std::vector<float> out = RunForward(*ctx_, attention, data, inputs);
  const std::vector<double> v = AttentionData::Dense(data.values());
  for (int64_t l = 0; l < c.l; ++l) {
    for (int64_t d = 0; d < c.d; ++d) {
      double expected = 0;
      for (int64_t s = std::max<int64_t>(0, l - context / 2);
           s < std::min(c.s, l + (context + 1) / 2); ++s) {
        expected += v[s * c.d + d] / context;
      }
      EXPECT_NEAR(out[l * c.d + d], expected, 1e-6) << "l " << l << " d " << d;
    }
  }
}

TEST_F(LocalAttentionTest, SavedProbabilitiesAreBanded) {
  const AttentionCase c{1, 300, 300, 1, 4, 4};
  const AttentionData data(c, 29, 0);
  LocalAttention attention({.local_context = 16});
  AttentionCache cache;
  RunForward(*ctx_, attention, data, data.Inputs(), &cache);
  ASSERT_EQ(cache.saved.size(), 2u);
  // Blocks of 32 queries see 32 + 16 - 1 keys: O(L c), not O(L S).
  EXPECT_LE(cache.saved[0].shape().dim(3), 47);
}

TEST_F(LocalAttentionTest, BackwardAcrossQueryBlocksMatchesReference) {
  // 37 queries make two blocks of 32 rows with overlapping key ranges.
  const AttentionCase c{1, 37, 37, 1, 2, 2};
  const AttentionData data(c, 33, 1, -2, 2);
  for (const int64_t context : {3, 8}) {
    for (const AttnMask& mask : {AttnMask::All(), AttnMask::Causal()}) {
      AttentionInputs inputs = data.Inputs();
      inputs.attn_mask = mask;
      inputs.key_lengths.lengths = {30};
      LocalAttention attention({.local_context = context});
      testing::ExpectGradientsMatch(
          *ctx_, attention, data, inputs,
          [&](const std::vector<double>& q, const std::vector<double>& k,
              const std::vector<double>& v) {
            return FtReference(c, q, k, v, context, 1.0 / std::sqrt(2.0), mask,
                               inputs.key_lengths.lengths);
          });
    }
  }
}

TEST_F(LocalAttentionTest, BackwardMatchesCentralDifferencesOfReference) {
  const AttentionCase c{2, 6, 7, 2, 3, 4};
  const AttentionData data(c, 31, 2, -2, 2);
  std::vector<float> additive = RandomUniformVector(c.l * c.s, 7, -1, 1);
  const AttnMask masks[] = {
      AttnMask::All(), AttnMask::Causal(),
      AttnMask::Additive(TensorView<const float>(additive.data(), {c.l, c.s}))};
  for (const int64_t context : {1, 3, 4, 20}) {
    for (const AttnMask& mask : masks) {
      AttentionInputs inputs = data.Inputs();
      inputs.attn_mask = mask;
      inputs.key_lengths.lengths = {7, 5};
      LocalAttention attention(
          {.local_context = context, .softmax_temp = 0.6f});
      testing::ExpectGradientsMatch(
          *ctx_, attention, data, inputs,
          [&](const std::vector<double>& q, const std::vector<double>& k,
              const std::vector<double>& v) {
            return FtReference(c, q, k, v, context, 0.6, mask,
                               inputs.key_lengths.lengths);
          });
    }
  }
}

// Forward with training dropout as a function of the queries: its backward must
// match central differences of the float forward itself (same seed, so the same
// mask).
template <class MakeAttention>
void ExpectDropoutBackwardMatchesForward(const Context& ctx,
                                         const AttentionData& data,
                                         AttentionInputs inputs,
                                         MakeAttention make) {
  const AttentionCase& c = data.shape();
  inputs.training = true;
  inputs.seed = 1234;
  std::unique_ptr<Attention> attention = make();
  AttentionCache cache;
  const std::vector<float> out =
      RunForward(ctx, *attention, data, inputs, &cache);
  const std::vector<float> d_out = RandomUniformVector(out.size(), 77);
  std::vector<float> d_q(c.n * c.l * c.h * c.e), d_k(c.n * c.s * c.h * c.e),
      d_v(c.n * c.s * c.h * c.d);
  ASSERT_TRUE(
      attention
          ->Backward(ctx, inputs, cache,
                     TensorView<const float>(d_out.data(), data.OutShape()),
                     {TensorView<float>(d_q.data(), {c.n, c.l, c.h, c.e}),
                      TensorView<float>(d_k.data(), {c.n, c.s, c.h, c.e}),
                      TensorView<float>(d_v.data(), {c.n, c.s, c.h, c.d})})
          .ok());
  const std::vector<double> dense_q = AttentionData::Dense(data.queries());
  const std::vector<double> dense_v = AttentionData::Dense(data.values());
  const std::vector<float> q(dense_q.begin(), dense_q.end());
  const std::vector<float> v(dense_v.begin(), dense_v.end());
  auto loss = [&](const std::vector<float>& queries,
                  const std::vector<float>& values) {
    AttentionInputs shifted = inputs;
    shifted.queries =
        TensorView<const float>(queries.data(), {c.n, c.l, c.h, c.e});
    shifted.values =
        TensorView<const float>(values.data(), {c.n, c.s, c.h, c.d});
    const std::vector<float> o = RunForward(ctx, *attention, data, shifted);
    double sum = 0;
    for (size_t i = 0; i < o.size(); ++i) sum += double(o[i]) * d_out[i];
    return sum;
  };
  const float h = 1e-2f;
  for (size_t i = 0; i < q.size(); ++i) {
    std::vector<float> plus = q, minus = q;
    plus[i] += h;
    minus[i] -= h;
    const double numeric = (loss(plus, v) - loss(minus, v)) / (2 * h);
    EXPECT_NEAR(d_q[i], numeric, 2e-3 + 2e-3 * std::fabs(numeric))
        << "d_queries " << i;
  }
  for (size_t i = 0; i < v.size(); ++i) {
    std::vector<float> plus = v, minus = v;
    plus[i] += h;
    minus[i] -= h;
    const double numeric = (loss(q, plus) - loss(q, minus)) / (2 * h);
    EXPECT_NEAR(d_v[i], numeric, 2e-3 + 2e-3 * std::fabs(numeric))
        << "d_values " << i;
  }
}

TEST_F(LocalAttentionTest, DropoutIsSeededOnlyInTrainingAndDifferentiable) {
  const AttentionCase c{1, 12, 12, 2, 3, 3};
  const AttentionData data(c, 41, 0);
  AttentionInputs inputs = data.Inputs();
  LocalAttention attention({.local_context = 5, .attention_dropout = 0.4f});
  const std::vector<float> eval = RunForward(*ctx_, attention, data, inputs);
  LocalAttention no_dropout({.local_context = 5, .attention_dropout = 0.0f});
  EXPECT_EQ(eval, RunForward(*ctx_, no_dropout, data, inputs));
  inputs.training = true;
  inputs.seed = 5;
  const std::vector<float> a = RunForward(*ctx_, attention, data, inputs);
  EXPECT_EQ(a, RunForward(*ctx_, attention, data, inputs));
  EXPECT_NE(a, eval);
  inputs.seed = 6;
  EXPECT_NE(a, RunForward(*ctx_, attention, data, inputs));
  inputs.training = false;
  ExpectDropoutBackwardMatchesForward(*ctx_, data, inputs, [] {
    return std::make_unique<LocalAttention>(
        LocalAttentionOptions{.local_context = 5, .attention_dropout = 0.4f});
  });
}

// "local-windowed" (lucidrains local-attention 1.4.4).

std::vector<LocalWindowedAttentionOptions> WindowedSweep() {
  std::vector<LocalWindowedAttentionOptions> sweep;
  for (const int64_t window : {1, 2, 3, 4}) {
    for (const bool causal : {false, true}) {
      for (const int64_t back : {0, 1, 2}) {
        for (const int64_t forward : {0, 1, 2}) {
          if (causal && forward > 0) continue;
          LocalWindowedAttentionOptions o;
          o.window_size = window;
          o.causal = causal;
          o.look_backward = back;
          o.look_forward = forward;
          sweep.push_back(o);
          if (causal) {
            o.exact_windowsize = true;
            sweep.push_back(o);
          }
        }
      }
    }
  }
  return sweep;
}

TEST_F(LocalAttentionTest, WindowedForwardMatchesReference) {
  const AttentionCase c{2, 12, 12, 2, 4, 3};
  const AttentionData data(c, 51, 2, -2, 2);
  const std::vector<double> q = AttentionData::Dense(data.queries());
  const std::vector<double> k = AttentionData::Dense(data.keys());
  const std::vector<double> v = AttentionData::Dense(data.values());
  for (const LocalWindowedAttentionOptions& options : WindowedSweep()) {
    for (const bool padded : {false, true}) {
      AttentionInputs inputs = data.Inputs();
      // Batch 1's last positions are padding: its padded queries see nothing
      // and get the uniform mean of their slots, -1 padding included.
      if (padded) inputs.key_lengths.lengths = {12, 7};
      LocalWindowedAttention attention(options);
      EXPECT_TRUE(AllNear(
          RunForward(*ctx_, attention, data, inputs),
          WindowedReference(c, q, k, v, options, inputs.key_lengths.lengths),
          {2e-6, 2e-5}))
          << "window " << options.window_size << " causal " << options.causal
          << " back " << options.look_backward << " forward "
          << options.LookForward() << " exact " << options.exact_windowsize
          << " padded " << padded;
    }
  }
}

TEST_F(LocalAttentionTest, WindowedAutopadAndRotaryMatchReference) {
  for (const int64_t length : {1, 5, 7, 13}) {
    const AttentionCase c{2, length, length, 2, 6, 3};
    const AttentionData data(c, 53, 1, -2, 2);
    const std::vector<double> q = AttentionData::Dense(data.queries());
    const std::vector<double> k = AttentionData::Dense(data.keys());
    const std::vector<double> v = AttentionData::Dense(data.values());
    for (const bool causal : {false, true}) {
      for (const bool rotary : {false, true}) {
        for (const bool padded : {false, true}) {
          LocalWindowedAttentionOptions options;
          options.window_size = 4;
          options.causal = causal;
          options.autopad = true;
          options.rel_pos_emb = rotary;
          AttentionInputs inputs = data.Inputs();
          if (padded) inputs.key_lengths.lengths = {length, length / 2};
          LocalWindowedAttention attention(options);
          EXPECT_TRUE(AllNear(RunForward(*ctx_, attention, data, inputs),
                              WindowedReference(c, q, k, v, options,
                                                inputs.key_lengths.lengths),
                              {2e-6, 2e-5}))
              << "L " << length << " causal " << causal << " rotary " << rotary
              << " padded " << padded;
        }
      }
    }
  }
}

TEST_F(LocalAttentionTest, WindowedCausalMaskIntersectsTheWindow) {
  const AttentionCase c{1, 8, 8, 2, 3, 3};
  const AttentionData data(c, 57);
  LocalWindowedAttentionOptions causal_options;
  causal_options.window_size = 4;
  causal_options.causal = true;
  LocalWindowedAttention causal(causal_options);
  LocalWindowedAttentionOptions open_options = causal_options;
  open_options.causal = false;
  open_options.look_forward = 0;
  LocalWindowedAttention open(open_options);
  AttentionInputs masked = data.Inputs();
  masked.attn_mask = AttnMask::Causal();
  EXPECT_TRUE(AllNear(RunForward(*ctx_, open, data, masked),
                      RunForward(*ctx_, causal, data, data.Inputs()),
                      {1e-7, 1e-6}));
}

TEST_F(LocalAttentionTest,
       WindowedBackwardMatchesCentralDifferencesOfReference) {
  const AttentionCase c{2, 7, 7, 2, 4, 3};
  const AttentionData data(c, 61, 2, -2, 2);
  std::vector<LocalWindowedAttentionOptions> sweep;
  LocalWindowedAttentionOptions o;
  o.window_size = 2;
  o.autopad = true;
  sweep.push_back(o);
  o.causal = true;
  o.exact_windowsize = true;
  sweep.push_back(o);
  o.window_size = 3;
  o.causal = false;
  o.exact_windowsize = false;
  o.look_backward = 2;
  o.look_forward = 0;
  o.rel_pos_emb = true;
  sweep.push_back(o);
  o.window_size = 7;
  o.autopad = false;
  o.look_backward = 1;
  o.look_forward = std::nullopt;
  sweep.push_back(o);
  for (const LocalWindowedAttentionOptions& options : sweep) {
    for (const bool padded : {false, true}) {
      AttentionInputs inputs = data.Inputs();
      if (padded) inputs.key_lengths.lengths = {7, 4};
      LocalWindowedAttention attention(options);
      testing::ExpectGradientsMatch(
          *ctx_, attention, data, inputs,
          [&](const std::vector<double>& q, const std::vector<double>& k,
              const std::vector<double>& v) {
            return WindowedReference(c, q, k, v, options,
                                     inputs.key_lengths.lengths);
          });
    }
  }
}

TEST_F(LocalAttentionTest, WindowedDropoutBackwardMatchesForward) {
  const AttentionCase c{1, 8, 8, 2, 3, 3};
  const AttentionData data(c, 67, 0);
  AttentionInputs inputs = data.Inputs();
  inputs.key_lengths.lengths = {
      5};  // padded queries: dropout on the -1 slots too
  ExpectDropoutBackwardMatchesForward(*ctx_, data, inputs, [] {
    LocalWindowedAttentionOptions options;
    options.window_size = 2;
    options.attention_dropout = 0.3f;
    return std::make_unique<LocalWindowedAttention>(options);
  });
}

// Recurrent form.

TEST_F(LocalAttentionTest, RecurrentStepsEqualCausalParallelForward) {
  const AttentionCase c{2, 17, 17, 3, 4, 5};
  const AttentionData data(c, 71, 1, -2, 2);
  AttentionInputs causal = data.Inputs();
  causal.attn_mask = AttnMask::Causal();
  for (const int64_t context : {1, 2, 5, 8, 40}) {
    const LocalAttentionOptions options{.local_context = context,
                                        .softmax_temp = 0.8f};
    std::unique_ptr<RecurrentLocalAttention> recurrent =
        RecurrentLocalAttention::Create(options).value();
    LocalAttention parallel(options);
    EXPECT_TRUE(AllNear(StepThrough(*ctx_, *recurrent, data),
                        RunForward(*ctx_, parallel, data, causal),
                        {1e-6, 1e-5}))
        << "local_context " << context;
  }
}

TEST_F(LocalAttentionTest, WindowedRecurrentStepsEqualCausalParallelForward) {
  const AttentionCase c{2, 17, 17, 2, 4, 3};
  const AttentionData data(c, 73, 1, -2, 2);
  for (const int64_t window : {1, 3, 4}) {
    for (const int64_t back : {0, 1, 2}) {
      for (const bool exact : {false, true}) {
        for (const bool rotary : {false, true}) {
          LocalWindowedAttentionOptions options;
          options.window_size = window;
          options.causal = true;
          options.look_backward = back;
          options.exact_windowsize = exact;
          options.rel_pos_emb = rotary;
          options.autopad = true;
          std::unique_ptr<RecurrentLocalAttention> recurrent =
              RecurrentLocalAttention::Create(options).value();
          LocalWindowedAttention parallel(options);
          EXPECT_TRUE(AllNear(StepThrough(*ctx_, *recurrent, data),
                              RunForward(*ctx_, parallel, data, data.Inputs()),
                              {1e-6, 1e-5}))
              << "window " << window << " back " << back << " exact " << exact
              << " rotary " << rotary;
        }
      }
    }
  }
}

TEST_F(LocalAttentionTest, RecurrentShapeChangeIsAnError) {
  std::unique_ptr<RecurrentLocalAttention> attention =
      RecurrentLocalAttention::Create(LocalAttentionOptions{.local_context = 3})
          .value();
  std::unique_ptr<RecurrentState> state = attention->NewState();
  std::vector<float> buffer(64, 0.5f), out(64);
  ASSERT_TRUE(attention
                  ->Step(*ctx_,
                         TensorView<const float>(buffer.data(), {2, 2, 3}),
                         TensorView<const float>(buffer.data(), {2, 2, 3}),
                         TensorView<const float>(buffer.data(), {2, 2, 4}),
                         TensorView<float>(out.data(), {2, 2, 4}), *state)
                  .ok());
  const absl::Status status =
      attention->Step(*ctx_, TensorView<const float>(buffer.data(), {1, 2, 3}),
                      TensorView<const float>(buffer.data(), {1, 2, 3}),
                      TensorView<const float>(buffer.data(), {1, 2, 4}),
                      TensorView<float>(out.data(), {1, 2, 4}), *state);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("changed"), std::string::npos) << status;
}

// Errors and registry.

void ExpectInvalid(const absl::Status& status, const std::string& needle) {
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(status.message().find(needle), std::string::npos) << status;
}

TEST_F(LocalAttentionTest, BadInputsAreErrors) {
  std::vector<float> buffer(2000);
  const TensorView<const float> q(buffer.data(), {1, 4, 2, 3});
  const TensorView<const float> k(buffer.data(), {1, 4, 2, 3});
  const TensorView<const float> v(buffer.data(), {1, 4, 2, 6});
  const TensorView<float> out(buffer.data() + 1000, {1, 4, 2, 6});
  const AttentionInputs ok{.queries = q, .keys = k, .values = v};

  for (const int64_t context : {0, -3}) {
    LocalAttention attention({.local_context = context});
    ExpectInvalid(attention.Forward(*ctx_, ok, out, nullptr), "local_context");
  }
  LocalAttention dropout_one({.local_context = 3, .attention_dropout = 1.0f});
  ExpectInvalid(dropout_one.Forward(*ctx_, ok, out, nullptr),
                "attention_dropout");

  LocalAttention attention({.local_context = 3});
  AttentionInputs wrong_keys = ok;
  wrong_keys.keys = TensorView<const float>(buffer.data(), {1, 4, 2, 5});
  ExpectInvalid(attention.Forward(*ctx_, wrong_keys, out, nullptr), "keys");
  AttentionInputs bad_lengths = ok;
  bad_lengths.key_lengths.lengths = {5};
  ExpectInvalid(attention.Forward(*ctx_, bad_lengths, out, nullptr),
                "key_lengths[0] = 5");
  AttentionInputs strided = ok;
  strided.queries =
      TensorView<const float>(buffer.data(), {1, 4, 2, 3}, {24, 6, 3, 2});
  ExpectInvalid(attention.Forward(*ctx_, strided, out, nullptr), "unit stride");

  std::vector<float> grad(2000);
  const AttentionGrads grads{
      TensorView<float>(grad.data(), {1, 4, 2, 3}),
      TensorView<float>(grad.data() + 100, {1, 4, 2, 3}),
      TensorView<float>(grad.data() + 200, {1, 4, 2, 6})};
  AttentionCache empty;
  EXPECT_EQ(attention.Backward(*ctx_, ok, empty, out, grads).code(),
            absl::StatusCode::kFailedPrecondition);

  LocalWindowedAttentionOptions windowed;
  windowed.window_size = 3;
  ExpectInvalid(
      LocalWindowedAttention(windowed).Forward(*ctx_, ok, out, nullptr),
      "divisible by window_size 3");
  windowed.window_size = 0;
  ExpectInvalid(
      LocalWindowedAttention(windowed).Forward(*ctx_, ok, out, nullptr),
      "window_size must be positive");
  windowed.window_size = 2;
  windowed.causal = true;
  windowed.look_forward = 1;
  ExpectInvalid(
      LocalWindowedAttention(windowed).Forward(*ctx_, ok, out, nullptr),
      "look_forward");
  windowed.look_forward = std::nullopt;
  windowed.rel_pos_emb = true;
  ExpectInvalid(
      LocalWindowedAttention(windowed).Forward(*ctx_, ok, out, nullptr),
      "even head dimension");
  windowed.rel_pos_emb = false;
  AttentionInputs cross = ok;
  cross.keys = TensorView<const float>(buffer.data(), {1, 6, 2, 3});
  cross.values = TensorView<const float>(buffer.data(), {1, 6, 2, 6});
  ExpectInvalid(
      LocalWindowedAttention(windowed).Forward(*ctx_, cross, out, nullptr),
      "L == S");
  std::vector<float> mask(16);
  AttentionInputs additive = ok;
  additive.attn_mask =
      AttnMask::Additive(TensorView<const float>(mask.data(), {4, 4}));
  ExpectInvalid(
      LocalWindowedAttention(windowed).Forward(*ctx_, additive, out, nullptr),
      "additive attn_mask");

  windowed.causal = false;
  EXPECT_EQ(RecurrentLocalAttention::Create(windowed).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      RecurrentLocalAttention::Create(LocalAttentionOptions{.local_context = 0})
          .status()
          .code(),
      absl::StatusCode::kInvalidArgument);
}

TEST_F(LocalAttentionTest, RegistryEntriesBuildAndValidate) {
  AttentionRegistry registry;
  ASSERT_TRUE(registry.Register(LocalAttentionSpec()).ok());
  ASSERT_TRUE(registry.Register(LocalWindowedAttentionSpec()).ok());
  {
    AttentionBuilder builder(registry);
    EXPECT_FALSE(builder.Build("local").ok());  // local_context is required
    ASSERT_TRUE(builder.Set("local_context", int64_t{5}).ok());
    absl::StatusOr<std::unique_ptr<Attention>> local = builder.Build("local");
    ASSERT_TRUE(local.ok()) << local.status();
    EXPECT_STREQ((*local)->name(), "local");
    EXPECT_EQ(static_cast<LocalAttention&>(**local).options().attention_dropout,
              0.1f);
    EXPECT_TRUE(builder.BuildRecurrent("local").ok());
    ASSERT_TRUE(builder.Set("local_context", int64_t{0}).ok());
    ExpectInvalid(builder.Build("local").status(), "local_context");
  }
  {
    AttentionBuilder builder(registry);
    ASSERT_TRUE(builder.Set("window_size", int64_t{4}).ok());
    absl::StatusOr<std::unique_ptr<Attention>> windowed =
        builder.Build("local-windowed");
    ASSERT_TRUE(windowed.ok()) << windowed.status();
    EXPECT_EQ(static_cast<LocalWindowedAttention&>(**windowed)
                  .options()
                  .LookForward(),
              1);
    EXPECT_FALSE(builder.BuildRecurrent("local-windowed").ok());  // not causal
    ASSERT_TRUE(builder.Set("causal", true).ok());
    EXPECT_TRUE(builder.BuildRecurrent("local-windowed").ok());
    ASSERT_TRUE(builder.Set("look_forward", int64_t{1}).ok());
    ExpectInvalid(builder.Build("local-windowed").status(), "look_forward");
  }
}

}  // namespace
}  // namespace ftx
