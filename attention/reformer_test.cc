// "reformer" against the scalar reference (kernels/reference/clustered_ref.h)
// in double given the same planes: forward over chunk sizes, rounds, bits, the
// diagonal mask, attn masks and key lengths (including fully masked rows);
// backward against central differences with the sort orders asserted unchanged;
// one chunk = full shared-QK attention whatever the hashing; keys ignored;
// seeds, dropout, spec, bad inputs.
#include "attention/reformer.h"

#include <cmath>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "attention/lsh.h"
#include "gtest/gtest.h"
#include "kernels/reference/attention_ref.h"
#include "kernels/reference/clustered_ref.h"
#include "tests/util/attention_data.h"
#include "tests/util/gradcheck.h"
#include "tests/util/random.h"
#include "tests/util/tolerance.h"

namespace ftx {
namespace {

using ::ftx::testing::AllNear;
using ::ftx::testing::AttentionCase;
using ::ftx::testing::AttentionData;
using ::ftx::testing::RandomNormalVector;
using ::ftx::testing::RandomUniformVector;

reference::AdditiveMaskFn MaskFunction(const AttnMask& mask) {
  return [mask](int64_t l, int64_t s) {
    return static_cast<double>(mask.At(l, s));
  };
}

std::vector<double> Reference(const AttentionCase& c,
                              const ReformerAttentionOptions& options,
                              const std::vector<float>& planes,
                              const AttentionInputs& inputs,
                              const std::vector<double>& q,
                              const std::vector<double>& v,
                              std::vector<int64_t>* orders = nullptr) {
  reference::ReformerConfig config;
  config.chunk_size = options.chunk_size;
  config.rounds = options.rounds;
  config.bits = options.bits;
  config.masked = options.masked;
  config.temp = options.softmax_temp.has_value() ? *options.softmax_temp
                                                 : 1.0 / std::sqrt(double(c.e));
  config.planes = planes.data();
  std::vector<double> out(c.n * c.l * c.h * c.d);
  reference::ReformerAttention<double>(
      {c.n, c.l, c.s, c.h, c.e, c.d}, q.data(), v.data(), config,
      MaskFunction(inputs.attn_mask), inputs.key_lengths.lengths, out.data(),
      orders);
  return out;
}

std::unique_ptr<ReformerAttention> MakeFixed(
    const ReformerAttentionOptions& options, const std::vector<float>& planes,
    int64_t E) {
  auto attention = ReformerAttention::Create(options).value();
  EXPECT_TRUE(attention
                  ->SetPlanes(TensorView<const float>(
                      planes.data(), {options.rounds, options.bits, E}))
                  .ok());
  return attention;
}

std::vector<float> RunForward(const Context& ctx, Attention& attention,
                              const AttentionInputs& inputs,
                              const AttentionCase& c,
                              AttentionCache* cache = nullptr) {
  std::vector<float> out(c.n * c.l * c.h * c.d, NAN);
  const absl::Status status = attention.Forward(
      ctx, inputs, TensorView<float>(out.data(), {c.n, c.l, c.h, c.d}), cache);
  EXPECT_TRUE(status.ok()) << status;
  return out;
}

// The integer tensors of a cache: the sort orders of every round.
std::vector<int32_t> SortOrders(const AttentionCache& cache) {
  std::vector<int32_t> orders;
  for (const Tensor& tensor : cache.saved) {
    if (tensor.dtype() != DType::kI32 || tensor.raw_data() == nullptr) continue;
    orders.insert(orders.end(), tensor.data<int32_t>(),
                  tensor.data<int32_t>() + tensor.NumElements());
  }
  return orders;
}

class ReformerAttentionTest : public ::testing::Test {
 protected:
  void SetUp() override { ctx_ = Context::Create({.num_threads = 3}).value(); }
  std::unique_ptr<Context> ctx_;
};

TEST_F(ReformerAttentionTest, ForwardMatchesReference) {
  struct Case {
    AttentionCase shape;
    int64_t chunk;
  };
  const Case cases[] = {{{1, 1, 1, 1, 1, 1}, 1},
                        {{1, 4, 4, 1, 3, 2}, 2},
                        {{2, 12, 12, 3, 5, 4}, 3},
                        {{2, 16, 16, 2, 8, 6}, 4},
                        {{1, 21, 21, 2, 4, 3}, 7}};
  for (const Case& test : cases) {
    const AttentionCase& c = test.shape;
    const AttentionData data(c, 7, 2, -1.5, 1.5);
    const std::vector<double> q = AttentionData::Dense(data.queries());
    const std::vector<double> v = AttentionData::Dense(data.values());
    std::vector<float> additive = RandomUniformVector(c.l * c.l, 8, -1, 1);
    additive[0] = -std::numeric_limits<float>::infinity();
    const AttnMask masks[] = {AttnMask::All(), AttnMask::Causal(),
                              AttnMask::Additive(TensorView<const float>(
                                  additive.data(), {c.l, c.l}))};
    for (const AttnMask& mask : masks) {
      for (int64_t rounds : {1, 3}) {
        for (int64_t bits : {2, 63}) {
          for (bool masked : {false, true}) {
            for (bool padded : {false, true}) {
              ReformerAttentionOptions options;
              options.chunk_size = test.chunk;
              options.rounds = rounds;
              options.bits = bits;
              options.masked = masked;
              AttentionInputs inputs = data.Inputs();
              inputs.attn_mask = mask;
              if (padded) {
                // A key length of 1 leaves whole chunks fully masked.
                inputs.key_lengths.lengths.assign(c.n, c.l);
                inputs.key_lengths.lengths[0] = 1;
              }
              const std::vector<float> planes =
                  RandomNormalVector(rounds * bits * c.e, 30 + rounds + bits);
              auto attention = MakeFixed(options, planes, c.e);
              const std::vector<float> out =
                  RunForward(*ctx_, *attention, inputs, c);
              const std::vector<double> expected =
                  Reference(c, options, planes, inputs, q, v);
              EXPECT_TRUE(AllNear(out, expected, {1e-5, 1e-4}))
                  << "L " << c.l << " chunk " << test.chunk << " mask "
                  << static_cast<int>(mask.kind()) << " rounds " << rounds
                  << " bits " << bits << " masked " << masked << " padded "
                  << padded;
            }
          }
        }
      }
    }
  }
}

TEST_F(ReformerAttentionTest, OneChunkIsFullSharedQKAttention) {
  // With chunk_size = L every round sees every position, whatever the hashing.
  const AttentionCase c{2, 10, 10, 3, 6, 5};
  const AttentionData data(c, 17, 1, -2, 2);
  const std::vector<double> q = AttentionData::Dense(data.queries());
  const std::vector<double> v = AttentionData::Dense(data.values());
  std::vector<double> k(q.size());
  for (size_t row = 0; row < q.size() / c.e; ++row) {
    double norm = 0;
    for (int64_t e = 0; e < c.e; ++e)
      norm += q[row * c.e + e] * q[row * c.e + e];
    for (int64_t e = 0; e < c.e; ++e)
      k[row * c.e + e] = q[row * c.e + e] / std::sqrt(norm);
  }
  const double temp = 1.0 / std::sqrt(double(c.e));
  for (int64_t rounds : {1, 3}) {
    for (bool masked : {false, true}) {
      for (const AttnMask& mask : {AttnMask::All(), AttnMask::Causal()}) {
        ReformerAttentionOptions options;
        options.chunk_size = c.l;
        options.rounds = rounds;
        options.masked = masked;
        options.seed = 3;
        auto attention = ReformerAttention::Create(options).value();
        AttentionInputs inputs = data.Inputs();
        inputs.attn_mask = mask;
        inputs.key_lengths.lengths = {10, 6};
        const std::vector<float> out = RunForward(*ctx_, *attention, inputs, c);
        std::vector<double> expected(out.size());
        // The -1e9 of the diagonal is added before the temperature, as in
        // fast-transformers.
        reference::FullAttention<double>(
            {c.n, c.l, c.s, c.h, c.e, c.d}, q.data(), k.data(), v.data(), temp,
            [&](int64_t l, int64_t s) {
              return double(mask.At(l, s)) +
                     (masked && l == s ? -1e9 * temp : 0.0);
            },
            inputs.key_lengths.lengths, expected.data());
        EXPECT_TRUE(AllNear(out, expected, {1e-5, 1e-4}))
            << "rounds " << rounds << " masked " << masked;
      }
    }
  }
}

TEST_F(ReformerAttentionTest, BackwardMatchesCentralDifferencesOfReference) {
  const AttentionCase c{2, 6, 6, 2, 3, 4};
  const AttentionData data(c, 27, 2, -1.5, 1.5);
  for (bool masked : {false, true}) {
    ReformerAttentionOptions options;
    options.chunk_size = 2;
    options.rounds = 2;
    options.bits = 3;
    options.masked = masked;
    const std::vector<float> planes = RandomNormalVector(2 * 3 * c.e, 28);
    auto attention = MakeFixed(options, planes, c.e);
    AttentionInputs inputs = data.Inputs();
    inputs.attn_mask = AttnMask::Causal();
    inputs.key_lengths.lengths = {6, 4};
    std::vector<int64_t> base_orders;
    Reference(c, options, planes, inputs, AttentionData::Dense(data.queries()),
              AttentionData::Dense(data.values()), &base_orders);
    int64_t changed = 0;
    testing::ExpectGradientsMatch(
        *ctx_, *attention, data, inputs,
        [&](const std::vector<double>& q, const std::vector<double>&,
            const std::vector<double>& v) {
          std::vector<int64_t> orders;
          auto out = Reference(c, options, planes, inputs, q, v, &orders);
          if (orders != base_orders) ++changed;
          return out;
        });
    EXPECT_EQ(changed, 0) << "a perturbation changed the sort orders";
  }
}

TEST_F(ReformerAttentionTest, DropoutBackwardMatchesDirectionalDifferences) {
  const AttentionCase c{1, 8, 8, 2, 4, 3};
  ReformerAttentionOptions options;
  options.chunk_size = 4;
  options.rounds = 2;
  options.bits = 2;
  options.attention_dropout = 0.3f;
  const std::vector<float> planes = RandomNormalVector(2 * 2 * c.e, 38);
  auto attention = MakeFixed(options, planes, c.e);
  std::vector<float> q = RandomUniformVector(c.n * c.l * c.h * c.e, 1);
  std::vector<float> v = RandomUniformVector(c.n * c.l * c.h * c.d, 2);
  const auto inputs_for = [&](const std::vector<float>& queries,
                              const std::vector<float>& values) {
    AttentionInputs inputs;
    inputs.queries =
        TensorView<const float>(queries.data(), {c.n, c.l, c.h, c.e});
    inputs.keys = inputs.queries;
    inputs.values =
        TensorView<const float>(values.data(), {c.n, c.l, c.h, c.d});
    inputs.training = true;
    inputs.seed = 5;
    return inputs;
  };
  const std::vector<float> w = RandomUniformVector(c.n * c.l * c.h * c.d, 3);
  AttentionCache cache;
  RunForward(*ctx_, *attention, inputs_for(q, v), c, &cache);
  std::vector<float> d_q(q.size()), d_k(q.size()), d_v(v.size());
  ASSERT_TRUE(
      attention
          ->Backward(*ctx_, inputs_for(q, v), cache,
                     TensorView<const float>(w.data(), {c.n, c.l, c.h, c.d}),
                     {TensorView<float>(d_q.data(), {c.n, c.l, c.h, c.e}),
                      TensorView<float>(d_k.data(), {c.n, c.l, c.h, c.e}),
                      TensorView<float>(d_v.data(), {c.n, c.l, c.h, c.d})})
          .ok());
  const std::vector<float> q_dir = RandomUniformVector(q.size(), 4);
  const std::vector<float> v_dir = RandomUniformVector(v.size(), 5);
  double analytic = 0;
  for (size_t i = 0; i < q.size(); ++i) analytic += double(d_q[i]) * q_dir[i];
  for (size_t i = 0; i < v.size(); ++i) analytic += double(d_v[i]) * v_dir[i];
  const float step = 1e-3f;
  double loss[2];
  for (int side = 0; side < 2; ++side) {
    std::vector<float> q_moved = q, v_moved = v;
    const float sign = side == 0 ? 1.0f : -1.0f;
    for (size_t i = 0; i < q.size(); ++i) q_moved[i] += sign * step * q_dir[i];
    for (size_t i = 0; i < v.size(); ++i) v_moved[i] += sign * step * v_dir[i];
    AttentionCache moved;
    const std::vector<float> out =
        RunForward(*ctx_, *attention, inputs_for(q_moved, v_moved), c, &moved);
    ASSERT_EQ(SortOrders(moved), SortOrders(cache))
        << "the step changed the sort orders";
    loss[side] = 0;
    for (size_t i = 0; i < out.size(); ++i) loss[side] += double(out[i]) * w[i];
  }
  const double numeric = (loss[0] - loss[1]) / (2 * step);
  EXPECT_NEAR(analytic, numeric, 2e-3 + 1e-2 * std::fabs(numeric));
  for (float g : d_k) EXPECT_EQ(g, 0.0f);
}

TEST_F(ReformerAttentionTest, KeysAreIgnored) {
  const AttentionCase c{2, 8, 8, 2, 4, 3};
  const AttentionData data(c, 47, 1), other(c, 48, 1);
  ReformerAttentionOptions options;
  options.chunk_size = 4;
  auto attention = ReformerAttention::Create(options).value();
  AttentionInputs inputs = data.Inputs();
  const std::vector<float> a = RunForward(*ctx_, *attention, inputs, c);
  inputs.keys = other.keys();
  EXPECT_EQ(a, RunForward(*ctx_, *attention, inputs, c));
}

TEST_F(ReformerAttentionTest, SeedsMakeHashingReproducible) {
  const AttentionCase c{2, 32, 32, 2, 6, 4};
  const AttentionData data(c, 57, 1);
  ReformerAttentionOptions options;
  options.chunk_size = 4;
  options.bits = 4;
  options.seed = 1;
  auto first = ReformerAttention::Create(options).value();
  auto second = ReformerAttention::Create(options).value();
  options.seed = 2;
  auto other = ReformerAttention::Create(options).value();
  AttentionInputs inputs = data.Inputs();
  const std::vector<float> a = RunForward(*ctx_, *first, inputs, c);
  EXPECT_EQ(a, RunForward(*ctx_, *second, inputs, c));
  EXPECT_EQ(a, RunForward(*ctx_, *first, inputs, c));
  EXPECT_NE(a, RunForward(*ctx_, *other, inputs, c));
  inputs.seed = 9;
  EXPECT_NE(a, RunForward(*ctx_, *first, inputs, c));
}

TEST_F(ReformerAttentionTest, DropoutIsSeededAndOnlyInTraining) {
  const AttentionCase c{1, 16, 16, 2, 4, 4};
  const AttentionData data(c, 67, 0);
  ReformerAttentionOptions options;
  options.chunk_size = 4;
  options.attention_dropout = 0.5f;
  auto attention = ReformerAttention::Create(options).value();
  AttentionInputs inputs = data.Inputs();
  inputs.seed = 3;
  const std::vector<float> eval = RunForward(*ctx_, *attention, inputs, c);
  inputs.training = true;
  const std::vector<float> a = RunForward(*ctx_, *attention, inputs, c);
  EXPECT_EQ(a, RunForward(*ctx_, *attention, inputs, c));
  EXPECT_NE(a, eval);
}

TEST_F(ReformerAttentionTest, SpecFollowsFastTransformersRegistry) {
  const AttentionSpec spec = ReformerAttentionSpec();
  EXPECT_EQ(spec.name, "reformer");
  std::map<std::string, const OptionSpec*> options;
  for (const OptionSpec& option : spec.options) options[option.name] = &option;
  EXPECT_EQ(std::get<int64_t>(*options.at("chunk_size")->default_value), 32);
  EXPECT_EQ(std::get<int64_t>(*options.at("bits")->default_value), 63);
  EXPECT_EQ(std::get<int64_t>(*options.at("rounds")->default_value), 4);
  EXPECT_FALSE(std::get<bool>(*options.at("masked")->default_value));
  EXPECT_FALSE(options.at("softmax_temp")->default_value.has_value());
  EXPECT_DOUBLE_EQ(
      std::get<double>(*options.at("attention_dropout")->default_value), 0.1);
  EXPECT_EQ(std::get<int64_t>(*options.at("seed")->default_value), 0);
  AttentionOptions values;
  values.Set("chunk_size", int64_t{8});
  values.Set("masked", true);
  auto built = spec.factory(values, {});
  ASSERT_TRUE(built.ok()) << built.status();
  const auto& reformer = static_cast<ReformerAttention&>(**built);
  EXPECT_STREQ(reformer.name(), "reformer");
  EXPECT_EQ(reformer.options().chunk_size, 8);
  EXPECT_TRUE(reformer.options().masked);
  EXPECT_EQ(reformer.options().bits, 63);
  EXPECT_EQ(reformer.options().rounds, 4);
  values.Set("rounds", int64_t{0});
  EXPECT_EQ(spec.factory(values, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(ReformerAttentionTest, BadInputsAreErrors) {
  ReformerAttentionOptions options;
  options.chunk_size = 0;
  EXPECT_NE(
      ReformerAttention::Create(options).status().message().find("chunk_size"),
      std::string::npos);
  options.chunk_size = 4;
  options.attention_dropout = -0.5f;
  EXPECT_EQ(ReformerAttention::Create(options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options.attention_dropout = 0.1f;

  std::vector<float> buffer(4000);
  const TensorView<const float> q(buffer.data(), {1, 6, 2, 3});
  const TensorView<const float> v(buffer.data(), {1, 6, 2, 5});
  const TensorView<float> out(buffer.data() + 2000, {1, 6, 2, 5});
  auto attention = ReformerAttention::Create(options).value();
  AttentionInputs inputs{.queries = q, .keys = q, .values = v};
  absl::Status status = attention->Forward(*ctx_, inputs, out, nullptr);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("L = 6 is not divisible by chunk_size = 4"),
            std::string::npos)
      << status;

  options.chunk_size = 3;
  attention = ReformerAttention::Create(options).value();
  EXPECT_TRUE(attention->Forward(*ctx_, inputs, out, nullptr).ok());
  // Values with S != L.
  AttentionInputs cross{
      .queries = q,
      .keys = TensorView<const float>(buffer.data(), {1, 3, 2, 3}),
      .values = TensorView<const float>(buffer.data(), {1, 3, 2, 5})};
  status = attention->Forward(*ctx_, cross, out, nullptr);
  EXPECT_NE(status.message().find("self-attention"), std::string::npos)
      << status;
  // Planes.
  status =
      attention->SetPlanes(TensorView<const float>(buffer.data(), {4, 62, 3}));
  EXPECT_NE(status.message().find("[rounds, bits, E] = [4, 63, E]"),
            std::string::npos)
      << status;
  ASSERT_TRUE(
      attention->SetPlanes(TensorView<const float>(buffer.data(), {4, 63, 2}))
          .ok());
  status = attention->Forward(*ctx_, inputs, out, nullptr);
  EXPECT_NE(status.message().find("expected [rounds, bits, E] = [4, 63, 3]"),
            std::string::npos)
      << status;
  // Strides, null data, wrong shapes.
  attention = ReformerAttention::Create(options).value();
  AttentionInputs strided = inputs;
  strided.queries =
      TensorView<const float>(buffer.data(), {1, 6, 2, 3}, {72, 12, 6, 2});
  EXPECT_NE(attention->Forward(*ctx_, strided, out, nullptr)
                .message()
                .find("unit stride"),
            std::string::npos);
  AttentionInputs null_values = inputs;
  null_values.values = TensorView<const float>(nullptr, {1, 6, 2, 5});
  EXPECT_NE(attention->Forward(*ctx_, null_values, out, nullptr)
                .message()
                .find("null data"),
            std::string::npos);
  EXPECT_NE(
      attention
          ->Forward(*ctx_, inputs,
                    TensorView<float>(buffer.data(), {1, 6, 2, 4}), nullptr)
          .message()
          .find("out has shape"),
      std::string::npos);
  // Backward without a cache.
  std::vector<float> grad(200);
  status = attention->Backward(*ctx_, inputs, AttentionCache(), out,
                               {TensorView<float>(grad.data(), {1, 6, 2, 3}),
                                TensorView<float>(grad.data(), {1, 6, 2, 3}),
                                TensorView<float>(grad.data(), {1, 6, 2, 5})});
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
}

}  // namespace
}  // namespace ftx
