// "linformer" against a double reference (projections along the sequence, then
// full attention) for every sharing mode, masks and the (n, k) causal mask;
// input and parameter gradients by central differences; length and option
// errors.
#include "attention/linformer.h"

#include <cmath>
#include <memory>
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

// All trainable values of the mechanism, flattened in Parameters() order.
std::vector<double> FlattenParams(LinformerAttention& attention) {
  std::vector<double> flat;
  for (const ParamRef& param : attention.Parameters()) {
    const float* data = param.value->data<float>();
    flat.insert(flat.end(), data, data + param.value->NumElements());
  }
  return flat;
}

std::vector<double> FlattenGrads(LinformerAttention& attention) {
  std::vector<double> flat;
  for (const ParamRef& param : attention.Parameters()) {
    const float* data = param.grad->data<float>();
    flat.insert(flat.end(), data, data + param.grad->NumElements());
  }
  return flat;
}

// Double reference. params: flattened as FlattenParams; weights [k, n] then
// bias [k] per projection matrix, matrices ordered as the mechanism stores
// them.
std::vector<double> Reference(const AttentionCase& c,
                              const LinformerOptions& options,
                              const std::vector<double>& params,
                              std::vector<double> q, std::vector<double> k,
                              std::vector<double> v,
                              const std::vector<int64_t>& query_lengths,
                              const std::vector<int64_t>& key_lengths) {
  const int64_t K = options.k, n_len = options.seq_len;
  const int64_t per_matrix = K * n_len + (options.bias ? K : 0);
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
  std::vector<double> kp(c.n * K * c.h * c.e), vp(c.n * K * c.h * c.d);
  for (int which = 0; which < 2; ++which) {
    const std::vector<double>& source = which == 0 ? k : v;
    std::vector<double>& target = which == 0 ? kp : vp;
    const int64_t X = which == 0 ? c.e : c.d;
    for (int64_t h = 0; h < c.h; ++h) {
      const double* w = params.data() + index(which, h) * per_matrix;
      const double* b = options.bias ? w + K * n_len : nullptr;
      for (int64_t n = 0; n < c.n; ++n)
        for (int64_t j = 0; j < K; ++j)
          for (int64_t x = 0; x < X; ++x) {
            double sum = b ? b[j] : 0.0;
            for (int64_t s = 0; s < c.s; ++s) {
              sum +=
                  w[j * n_len + s] * source[((n * c.s + s) * c.h + h) * X + x];
            }
            target[((n * K + j) * c.h + h) * X + x] = sum;
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

class LinformerTest : public ::testing::TestWithParam<LinformerSharing> {
 protected:
  void SetUp() override { ctx_ = Context::Create({.num_threads = 2}).value(); }
  std::unique_ptr<Context> ctx_;
};

TEST_P(LinformerTest, ForwardAndGradientsMatchReference) {
  const AttentionCase c{2, 6, 6, 2, 3, 4};
  for (bool causal : {false, true}) {
    LinformerOptions options{.seq_len = 6,
                             .k = 3,
                             .heads = 2,
                             .sharing = GetParam(),
                             .causal = causal,
                             .seed = 5};
    auto attention = LinformerAttention::Create(options);
    ASSERT_TRUE(attention.ok()) << attention.status();
    const AttentionData data(c, 141, 2, -1.5, 1.5);
    AttentionInputs inputs = data.Inputs();
    inputs.query_lengths.lengths = {6, 5};
    inputs.key_lengths.lengths = {6, 4};
    const std::vector<double> params = FlattenParams(**attention);
    auto reference = [&](const std::vector<double>& q,
                         const std::vector<double>& k,
                         const std::vector<double>& v) {
      return Reference(c, options, params, q, k, v,
                       inputs.query_lengths.lengths,
                       inputs.key_lengths.lengths);
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
              w, Reference(c, options, p, q, k, v, inputs.query_lengths.lengths,
                           inputs.key_lengths.lengths));
        },
        params, FlattenGrads(**attention), {2e-5, 1e-4}))
        << "parameter gradients, causal " << causal;
  }
}

INSTANTIATE_TEST_SUITE_P(Sharing, LinformerTest,
                         ::testing::Values(LinformerSharing::kNone,
                                           LinformerSharing::kHeadwise,
                                           LinformerSharing::kKeyValue));

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

TEST(LinformerErrorsTest, BuilderValidatesOptions) {
  AttentionRegistry registry;
  ASSERT_TRUE(RegisterBuiltinAttentions(registry).ok());
  AttentionBuilder builder(registry);
  EXPECT_NE(builder.Build("linformer").status().message().find("seq_len"),
            std::string::npos);
  ASSERT_TRUE(builder.Set("seq_len", int64_t{16}).ok());
  ASSERT_TRUE(builder.Set("method", std::string("convolution")).ok());
  EXPECT_NE(builder.Build("linformer").status().message().find("convolution"),
            std::string::npos);
  ASSERT_TRUE(builder.Set("method", std::string("no_params")).ok());
  auto built = builder.Build("linformer");
  ASSERT_TRUE(built.ok()) << built.status();
  EXPECT_TRUE((*built)->Parameters().empty());
}

}  // namespace
}  // namespace ftx
