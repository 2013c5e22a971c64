// ALiBi: slopes for power-of-two and other head counts against their closed
// forms, the bias of every x-transformers variant (1.0.0 symmetric, 0.26.6
// key index, signed, bidirectional) against the formulas in double with
// partial ALiBi heads and L != S, log-slope gradients by central differences,
// parameter names and init, bad inputs.
#include "layers/alibi.h"

#include <cmath>
#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "tests/util/gradcheck.h"
#include "tests/util/random.h"
#include "tests/util/tolerance.h"

namespace ftx {
namespace {

using ::ftx::testing::AllNear;
using ::ftx::testing::RandomUniformVector;

// bias[h, l, s] in double for a form, given per-head past / future slopes
// (heads past the slopes get 0).
std::vector<double> ReferenceBias(AlibiForm form, int64_t heads,
                                  const std::vector<double>& past,
                                  const std::vector<double>& future,
                                  int64_t queries, int64_t keys) {
  std::vector<double> bias(heads * queries * keys, 0.0);
  for (int64_t h = 0; h < static_cast<int64_t>(past.size()); ++h)
    for (int64_t l = 0; l < queries; ++l)
      for (int64_t s = 0; s < keys; ++s) {
        double value = 0;
        switch (form) {
          case AlibiForm::kSymmetric:
            value = -std::abs(double(s - l)) * past[h];
            break;
          case AlibiForm::kKeyIndex:
            value = double(s) * past[h];
            break;
          case AlibiForm::kSigned:
            value = double(s - l) * past[h];
            break;
          case AlibiForm::kAbsoluteBidirectional:
            value = std::abs(double(s - l)) * (s > l ? future[h] : past[h]);
            break;
        }
        bias[(h * queries + l) * keys + s] = value;
      }
  return bias;
}

class AlibiTest : public ::testing::Test {
 protected:
  void SetUp() override { ctx_ = Context::Create({.num_threads = 2}).value(); }
  std::unique_ptr<Context> ctx_;
};

TEST_F(AlibiTest, SlopesForEightAndTwelveHeads) {
  // 8 heads: (2^(-8/8))^(h+1) = 2^-(h+1).
  std::vector<double> eight;
  for (int h = 0; h < 8; ++h) eight.push_back(std::pow(2.0, -(h + 1)));
  EXPECT_TRUE(AllNear(Alibi::Slopes(8), eight, {0, 1e-14}));
  // 12 heads: the 8 slopes of 8, then slopes(16)[0::2][:4] with
  // slopes(16)_i = 2^(-(i+1)/2): 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5.
  std::vector<double> twelve = eight;
  for (double e : {0.5, 1.5, 2.5, 3.5}) twelve.push_back(std::pow(2.0, -e));
  EXPECT_TRUE(AllNear(Alibi::Slopes(12), twelve, {0, 1e-14}));
  // 6 heads: 2^-2, 2^-4, 2^-6, 2^-8, then 2^-1, 2^-3 from slopes(8).
  EXPECT_TRUE(AllNear(
      Alibi::Slopes(6),
      std::vector<double>{0.25, 1.0 / 16, 1.0 / 64, 1.0 / 256, 0.5, 0.125},
      {0, 1e-14}));
  EXPECT_TRUE(
      AllNear(Alibi::Slopes(1), std::vector<double>{1.0 / 256}, {0, 1e-14}));
  // 16 heads: 2^(-8/16 (h+1)).
  std::vector<double> sixteen;
  for (int h = 0; h < 16; ++h) sixteen.push_back(std::pow(2.0, -0.5 * (h + 1)));
  EXPECT_TRUE(AllNear(Alibi::Slopes(16), sixteen, {0, 1e-14}));
}

TEST_F(AlibiTest, VersionsPickTheReferenceForms) {
  auto form = [](AlibiVersion version, bool causal, bool learned) {
    return Alibi::Create({.heads = 4,
                          .causal = causal,
                          .learned = learned,
                          .version = version})
        .value()
        .form();
  };
  const AlibiVersion v0 = AlibiVersion::kXTransformers0_26_6;
  const AlibiVersion v1 = AlibiVersion::kXTransformers1_0_0;
  EXPECT_EQ(form(v1, true, false), AlibiForm::kSymmetric);
  EXPECT_EQ(form(v1, false, true), AlibiForm::kSymmetric);
  EXPECT_EQ(form(v0, true, false), AlibiForm::kKeyIndex);
  EXPECT_EQ(form(v0, true, true), AlibiForm::kSigned);
  EXPECT_EQ(form(v0, false, false), AlibiForm::kAbsoluteBidirectional);
  // 0.26.6 encoders are always learned.
  EXPECT_TRUE(Alibi::Create({.heads = 4, .version = v0}).value().learned());
  EXPECT_FALSE(Alibi::Create({.heads = 4, .version = v1}).value().learned());
}

TEST_F(AlibiTest, ForwardMatchesFormulas) {
  const int64_t heads = 12, alibi_heads = 6, queries = 5, keys = 9;
  struct Case {
    AlibiVersion version;
    bool causal, learned;
  };
  const Case cases[] = {{AlibiVersion::kXTransformers1_0_0, false, false},
                        {AlibiVersion::kXTransformers1_0_0, true, true},
                        {AlibiVersion::kXTransformers0_26_6, true, false},
                        {AlibiVersion::kXTransformers0_26_6, true, true},
                        {AlibiVersion::kXTransformers0_26_6, false, false}};
  for (const Case& c : cases) {
    const Alibi alibi = Alibi::Create({.heads = heads,
                                       .alibi_heads = alibi_heads,
                                       .causal = c.causal,
                                       .learned = c.learned,
                                       .version = c.version})
                            .value();
    const std::vector<ParamShape> shapes = alibi.ParamShapes();
    // Learned slopes: random log-slopes, different for the future ones.
    std::vector<float> log_past = RandomUniformVector(alibi_heads, 1, -4, 0);
    std::vector<float> log_future = RandomUniformVector(alibi_heads, 2, -4, 0);
    std::vector<double> past, future;
    for (int64_t h = 0; h < alibi_heads; ++h) {
      past.push_back(alibi.learned() ? std::exp(double(log_past[h]))
                                     : float(Alibi::Slopes(alibi_heads)[h]));
      future.push_back(std::exp(double(log_future[h])));
    }
    TensorView<const float> past_view, future_view;
    if (!shapes.empty()) past_view = {log_past.data(), shapes[0].shape};
    if (shapes.size() > 1) future_view = {log_future.data(), shapes[1].shape};

    const int64_t row = keys + 2;
    std::vector<float> storage(heads * queries * row, 7.0f);
    ASSERT_TRUE(
        alibi
            .Forward(*ctx_, past_view, future_view,
                     TensorView<float>(storage.data(), {heads, queries, keys},
                                       {queries * row, row, 1}))
            .ok());
    const std::vector<double> dense =
        ReferenceBias(alibi.form(), heads, past, future, queries, keys);
    std::vector<double> expected(storage.size(), 7.0);
    for (int64_t r = 0; r < heads * queries; ++r)
      for (int64_t s = 0; s < keys; ++s)
        expected[r * row + s] = dense[r * keys + s];
    EXPECT_TRUE(AllNear(storage, expected, {1e-7, 1e-6}))
        << "form " << static_cast<int>(alibi.form());
  }
}

TEST_F(AlibiTest, LearnedBackwardMatchesCentralDifferences) {
  const int64_t heads = 5, alibi_heads = 3, queries = 4, keys = 7;
  struct Case {
    AlibiVersion version;
    bool causal;
  };
  for (const Case& c : {Case{AlibiVersion::kXTransformers1_0_0, false},
                        Case{AlibiVersion::kXTransformers0_26_6, true},
                        Case{AlibiVersion::kXTransformers0_26_6, false}}) {
    const Alibi alibi = Alibi::Create({.heads = heads,
                                       .alibi_heads = alibi_heads,
                                       .causal = c.causal,
                                       .learned = true,
                                       .version = c.version})
                            .value();
    const std::vector<ParamShape> shapes = alibi.ParamShapes();
    const bool bidirectional = shapes.size() == 2;
    const std::vector<float> log_past =
        RandomUniformVector(alibi_heads, 3, -3, 0);
    const std::vector<float> log_future =
        RandomUniformVector(alibi_heads, 4, -3, 0);
    const std::vector<float> d_bias =
        RandomUniformVector(heads * queries * keys, 5);
    std::vector<float> d_past(alibi_heads, 0.5f), d_future(alibi_heads, 0.5f);
    const TensorView<const float> future_view =
        bidirectional
            ? TensorView<const float>(log_future.data(), shapes[1].shape)
            : TensorView<const float>();
    ASSERT_TRUE(
        alibi
            .Backward(
                *ctx_,
                TensorView<const float>(log_past.data(), shapes[0].shape),
                future_view,
                TensorView<const float>(d_bias.data(), {heads, queries, keys}),
                TensorView<float>(d_past.data(), shapes[0].shape),
                bidirectional
                    ? TensorView<float>(d_future.data(), shapes[1].shape)
                    : TensorView<float>())
            .ok());
    const std::vector<double> w(d_bias.begin(), d_bias.end());
    auto loss = [&](const std::vector<double>& past_logs,
                    const std::vector<double>& future_logs) {
      std::vector<double> past, future;
      for (double v : past_logs) past.push_back(std::exp(v));
      for (double v : future_logs) future.push_back(std::exp(v));
      return testing::Dot(
          w, ReferenceBias(alibi.form(), heads, past, future, queries, keys));
    };
    const std::vector<double> past_d = testing::Cast<double>(log_past);
    const std::vector<double> future_d = testing::Cast<double>(log_future);
    std::vector<double> analytic_past = testing::Cast<double>(d_past);
    for (double& g : analytic_past) g -= 0.5;
    EXPECT_TRUE(testing::GradientMatches(
        [&](const std::vector<double>& v) { return loss(v, future_d); }, past_d,
        analytic_past, {1e-5, 1e-5}))
        << "form " << static_cast<int>(alibi.form());
    if (bidirectional) {
      std::vector<double> analytic_future = testing::Cast<double>(d_future);
      for (double& g : analytic_future) g -= 0.5;
      EXPECT_TRUE(testing::GradientMatches(
          [&](const std::vector<double>& v) { return loss(past_d, v); },
          future_d, analytic_future, {1e-5, 1e-5}));
    }
  }
}

TEST_F(AlibiTest, ParameterNamesShapesAndInit) {
  const Alibi fixed = Alibi::Create({.heads = 8, .causal = true}).value();
  EXPECT_TRUE(fixed.ParamShapes().empty());
  const Alibi learned_v1 =
      Alibi::Create({.heads = 8, .alibi_heads = 4, .learned = true}).value();
  ASSERT_EQ(learned_v1.ParamShapes().size(), 1u);
  EXPECT_EQ(learned_v1.ParamShapes()[0].name, "learned_logslopes");
  EXPECT_EQ(learned_v1.ParamShapes()[0].shape, (Shape{4, 1, 1}));
  const Alibi encoder_v0 =
      Alibi::Create({.heads = 8, .version = AlibiVersion::kXTransformers0_26_6})
          .value();
  ASSERT_EQ(encoder_v0.ParamShapes().size(), 2u);
  EXPECT_EQ(encoder_v0.ParamShapes()[0].name, "learned_logslopes");
  EXPECT_EQ(encoder_v0.ParamShapes()[0].shape, (Shape{1, 8, 1, 1}));
  EXPECT_EQ(encoder_v0.ParamShapes()[1].name, "learned_logslopes_future");
  EXPECT_EQ(encoder_v0.ParamShapes()[1].shape, (Shape{1, 8, 1, 1}));

  std::vector<float> past(8, NAN), future(8, NAN);
  ASSERT_TRUE(encoder_v0
                  .InitParams(TensorView<float>(past.data(), {1, 8, 1, 1}),
                              TensorView<float>(future.data(), {1, 8, 1, 1}))
                  .ok());
  for (int h = 0; h < 8; ++h) {
    // log of the float32 slope 2^-(h+1).
    EXPECT_FLOAT_EQ(past[h], static_cast<float>(-(h + 1) * std::log(2.0)));
    EXPECT_EQ(future[h], past[h]);
  }
  // Learned slopes at init reproduce the fixed bias.
  std::vector<float> from_fixed(8 * 3 * 4), from_learned(8 * 3 * 4);
  const Alibi fixed_v1 = Alibi::Create({.heads = 8}).value();
  const Alibi learned_all =
      Alibi::Create({.heads = 8, .learned = true}).value();
  std::vector<float> logs(8);
  ASSERT_TRUE(
      learned_all.InitParams(TensorView<float>(logs.data(), {8, 1, 1}), {})
          .ok());
  ASSERT_TRUE(fixed_v1
                  .Forward(*ctx_, {}, {},
                           TensorView<float>(from_fixed.data(), {8, 3, 4}))
                  .ok());
  ASSERT_TRUE(learned_all
                  .Forward(*ctx_,
                           TensorView<const float>(logs.data(), {8, 1, 1}), {},
                           TensorView<float>(from_learned.data(), {8, 3, 4}))
                  .ok());
  EXPECT_TRUE(AllNear(from_learned, from_fixed, {0, 1e-6}));
}

TEST_F(AlibiTest, BadInputsAreErrors) {
  auto expect_error = [](const absl::Status& status, const char* text) {
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_NE(status.message().find(text), std::string::npos) << status;
  };
  expect_error(Alibi::Create({.heads = 4, .alibi_heads = 5}).status(),
               "need 1 <= alibi_heads <= heads");
  expect_error(Alibi::Create({.heads = 0}).status(), "alibi_heads <= heads");
  std::vector<float> buffer(200), logs(4);
  const Alibi fixed = Alibi::Create({.heads = 4}).value();
  expect_error(
      fixed.Forward(*ctx_, {}, {}, TensorView<float>(buffer.data(), {3, 2, 2})),
      "the bias must be [H = 4, L, S]");
  expect_error(
      fixed.Forward(*ctx_, TensorView<const float>(logs.data(), {4, 1, 1}), {},
                    TensorView<float>(buffer.data(), {4, 2, 2})),
      "learned_logslopes given, but this configuration has no such");
  expect_error(
      fixed.Backward(*ctx_, {}, {},
                     TensorView<const float>(buffer.data(), {4, 2, 2}), {}, {}),
      "fixed ALiBi has no parameters");
  const Alibi learned = Alibi::Create({.heads = 4, .learned = true}).value();
  expect_error(learned.Forward(*ctx_, {}, {},
                               TensorView<float>(buffer.data(), {4, 2, 2})),
               "learned_logslopes must be a contiguous CPU [4, 1, 1]");
  expect_error(learned.Forward(
                   *ctx_, TensorView<const float>(logs.data(), {4, 1, 1}), {},
                   TensorView<float>(buffer.data(), {4, 2, 2}, {8, 4, 2})),
               "unit stride");
  std::vector<float> d_logs(4);
  expect_error(
      learned.Backward(*ctx_, TensorView<const float>(logs.data(), {4, 1, 1}),
                       {}, TensorView<const float>(buffer.data(), {4, 2, 2}),
                       TensorView<float>(d_logs.data(), {4}), {}),
      "d_learned_logslopes must be a contiguous CPU [4, 1, 1]");
}

}  // namespace
}  // namespace ftx
