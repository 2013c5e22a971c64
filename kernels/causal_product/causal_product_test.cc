// kernels/causal_product: every Highway target against the O(L^2) scalar
// reference over odd sizes on views strided in every leading axis; the
// reference against a hand-computed case and its backward against central
// differences; 1 vs 2 threads bitwise; bad input.
#include "kernels/causal_product/causal_product.h"

#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/reference/causal_product_ref.h"
#include "tests/util/gradcheck.h"
#include "tests/util/highway_targets.h"
#include "tests/util/random.h"
#include "tests/util/tolerance.h"

namespace ftx {
namespace {

using ::ftx::testing::AllNear;
using ::ftx::testing::ForEachHighwayTarget;
using reference::CausalProductShape;

constexpr float kSentinel = 1.0e30f;

// A [N, L, H, W] tensor strided in every leading axis: each (n, l, h) row is
// followed by 2 padding floats, each step by 1 more and each batch by 3 more,
// all holding a sentinel that kernels must neither read into results nor
// overwrite. The data starts one float past an aligned address.
class PaddedSequences {
 public:
  PaddedSequences(int64_t n, int64_t l, int64_t h, int64_t width, uint64_t seed)
      : shape_{n, l, h, width},
        head_stride_(width + 2),
        step_stride_(h * head_stride_ + 1),
        batch_stride_(l * step_stride_ + 3),
        storage_(1 + n * batch_stride_ + 1, kSentinel) {
    const std::vector<float> values =
        testing::RandomUniformVector(n * l * h * width, seed);
    int64_t i = 0;
    ForEachOffset([&](int64_t offset) { storage_[offset] = values[i++]; });
  }

  TensorView<float> view() {
    return TensorView<float>(storage_.data() + 1, shape_,
                             {batch_stride_, step_stride_, head_stride_, 1});
  }
  TensorView<const float> const_view() { return view(); }

  // The elements in row-major [N, L, H, W] order.
  std::vector<float> Dense() const {
    std::vector<float> dense;
    ForEachOffset([&](int64_t offset) { dense.push_back(storage_[offset]); });
    return dense;
  }

  bool PaddingIntact() const {
    std::vector<bool> is_element(storage_.size(), false);
    ForEachOffset([&](int64_t offset) { is_element[offset] = true; });
    for (size_t i = 0; i < storage_.size(); ++i) {
      if (!is_element[i] && storage_[i] != kSentinel) return false;
    }
    return true;
  }

 private:
  template <class Fn>
  void ForEachOffset(Fn fn) const {
    for (int64_t n = 0; n < shape_.dim(0); ++n)
      for (int64_t l = 0; l < shape_.dim(1); ++l)
        for (int64_t h = 0; h < shape_.dim(2); ++h)
          for (int64_t w = 0; w < shape_.dim(3); ++w)
            fn(1 + n * batch_stride_ + l * step_stride_ + h * head_stride_ + w);
  }

  Shape shape_;
  int64_t head_stride_, step_stride_, batch_stride_;
  std::vector<float> storage_;
};

// Float sums of L terms of E products: the error grows with both.
testing::Tolerance ToleranceFor(int64_t length, int64_t inner) {
  return {2e-6 * std::sqrt(static_cast<double>(length * (inner + 1))), 1e-5};
}

struct Case {
  int64_t n, l, h, e, d;
};

std::string Describe(const Case& c) {
  return "N=" + std::to_string(c.n) + " L=" + std::to_string(c.l) +
         " H=" + std::to_string(c.h) + " E=" + std::to_string(c.e) +
         " D=" + std::to_string(c.d);
}

std::vector<Case> OddCases() {
  std::vector<Case> cases;
  for (int64_t l : {1, 2, 7, 33, 130}) {
    for (int64_t e : {1, 3, 16, 17, 64}) {
      for (int64_t d : {1, 3, 16, 17, 64}) cases.push_back({2, l, 3, e, d});
    }
  }
  return cases;
}

class CausalProductTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto ctx = Context::Create({.num_threads = 2});
    ASSERT_TRUE(ctx.ok());
    ctx_ = std::move(ctx).value();
  }
  std::unique_ptr<Context> ctx_;
};

TEST_F(CausalProductTest, ForwardMatchesReferenceOnEveryTarget) {
  for (const Case& c : OddCases()) {
    SCOPED_TRACE(Describe(c));
    PaddedSequences q(c.n, c.l, c.h, c.e, 1), k(c.n, c.l, c.h, c.e, 2),
        v(c.n, c.l, c.h, c.d, 3), out(c.n, c.l, c.h, c.d, 4);
    const CausalProductShape shape{c.n, c.l, c.h, c.e, c.d};
    std::vector<double> expected(c.n * c.l * c.h * c.d);
    reference::CausalProduct(shape, testing::Cast<double>(q.Dense()).data(),
                             testing::Cast<double>(k.Dense()).data(),
                             testing::Cast<double>(v.Dense()).data(),
                             expected.data());
    ForEachHighwayTarget([&] {
      ASSERT_TRUE(CausalProduct(*ctx_, q.const_view(), k.const_view(),
                                v.const_view(), out.view())
                      .ok());
      EXPECT_TRUE(AllNear(out.Dense(), expected, ToleranceFor(c.l, c.e)));
      EXPECT_TRUE(out.PaddingIntact());
    });
  }
}

TEST_F(CausalProductTest, BackwardMatchesReferenceOnEveryTarget) {
  for (const Case& c : OddCases()) {
    SCOPED_TRACE(Describe(c));
    PaddedSequences q(c.n, c.l, c.h, c.e, 11), k(c.n, c.l, c.h, c.e, 12),
        v(c.n, c.l, c.h, c.d, 13), g(c.n, c.l, c.h, c.d, 14);
    PaddedSequences d_q(c.n, c.l, c.h, c.e, 15), d_k(c.n, c.l, c.h, c.e, 16),
        d_v(c.n, c.l, c.h, c.d, 17);
    const CausalProductShape shape{c.n, c.l, c.h, c.e, c.d};
    std::vector<double> expected_dq(c.n * c.l * c.h * c.e),
        expected_dk(expected_dq.size()), expected_dv(c.n * c.l * c.h * c.d);
    reference::CausalProductBackward(
        shape, testing::Cast<double>(q.Dense()).data(),
        testing::Cast<double>(k.Dense()).data(),
        testing::Cast<double>(v.Dense()).data(),
        testing::Cast<double>(g.Dense()).data(), expected_dq.data(),
        expected_dk.data(), expected_dv.data());
    ForEachHighwayTarget([&] {
      ASSERT_TRUE(CausalProductBackward(*ctx_, q.const_view(), k.const_view(),
                                        v.const_view(), g.const_view(),
                                        d_q.view(), d_k.view(), d_v.view())
                      .ok());
      EXPECT_TRUE(AllNear(d_q.Dense(), expected_dq, ToleranceFor(c.l, c.d)))
          << "d_queries";
      EXPECT_TRUE(AllNear(d_k.Dense(), expected_dk, ToleranceFor(c.l, c.d)))
          << "d_keys";
      EXPECT_TRUE(AllNear(d_v.Dense(), expected_dv, ToleranceFor(c.l, c.e)))
          << "d_values";
      EXPECT_TRUE(d_q.PaddingIntact() && d_k.PaddingIntact() &&
                  d_v.PaddingIntact());
    });
  }
}

TEST_F(CausalProductTest, ResultsDoNotDependOnThreadCount) {
  auto one_thread = Context::Create({.num_threads = 1}).value();
  const Case c{2, 130, 3, 17, 64};
  PaddedSequences q(c.n, c.l, c.h, c.e, 21), k(c.n, c.l, c.h, c.e, 22),
      v(c.n, c.l, c.h, c.d, 23), g(c.n, c.l, c.h, c.d, 24);
  std::vector<std::vector<float>> results[2];
  for (int run = 0; run < 2; ++run) {
    const Context& ctx = run == 0 ? *one_thread : *ctx_;
    PaddedSequences out(c.n, c.l, c.h, c.d, 25), d_q(c.n, c.l, c.h, c.e, 26),
        d_k(c.n, c.l, c.h, c.e, 27), d_v(c.n, c.l, c.h, c.d, 28);
    ASSERT_TRUE(CausalProduct(ctx, q.const_view(), k.const_view(),
                              v.const_view(), out.view())
                    .ok());
    ASSERT_TRUE(CausalProductBackward(ctx, q.const_view(), k.const_view(),
                                      v.const_view(), g.const_view(),
                                      d_q.view(), d_k.view(), d_v.view())
                    .ok());
    results[run] = {out.Dense(), d_q.Dense(), d_k.Dense(), d_v.Dense()};
  }
  for (int i = 0; i < 4; ++i) {
    ASSERT_EQ(results[0][i].size(), results[1][i].size());
    EXPECT_EQ(std::memcmp(results[0][i].data(), results[1][i].data(),
                          results[0][i].size() * sizeof(float)),
              0)
        << "output " << i;
  }
}

TEST_F(CausalProductTest, EmptyQkDimGivesZeros) {
  std::vector<float> values = testing::RandomUniformVector(2 * 3 * 5, 31);
  std::vector<float> out(values.size(), 7.0f), d_values(values.size(), 7.0f);
  TensorView<const float> no_features(values.data(), {2, 3, 1, 0});
  TensorView<const float> v(values.data(), {2, 3, 1, 5});
  ASSERT_TRUE(CausalProduct(*ctx_, no_features, no_features, v,
                            TensorView<float>(out.data(), {2, 3, 1, 5}))
                  .ok());
  ASSERT_TRUE(
      CausalProductBackward(*ctx_, no_features, no_features, v, v,
                            TensorView<float>(nullptr, {2, 3, 1, 0}),
                            TensorView<float>(nullptr, {2, 3, 1, 0}),
                            TensorView<float>(d_values.data(), {2, 3, 1, 5}))
          .ok());
  EXPECT_TRUE(AllNear(out, std::vector<float>(out.size(), 0.0f), {0, 0}));
  EXPECT_TRUE(
      AllNear(d_values, std::vector<float>(d_values.size(), 0.0f), {0, 0}));
}

// Worked by hand for N = H = 1, L = 2, E = 2, D = 1:
//   q = [[1, 2], [3, -1]], k = [[2, 0], [1, 1]], v = [[5], [-2]]
//   out_0 = (q_0 . k_0) v_0 = 2 * 5 = 10
//   out_1 = (q_1 . k_0) v_0 + (q_1 . k_1) v_1 = 6 * 5 + 2 * (-2) = 26
// and with g = [[1], [2]]:
//   d_q_0 = (g_0 . v_0) k_0 = [10, 0]
//   d_q_1 = (g_1 . v_0) k_0 + (g_1 . v_1) k_1 = 10 * [2, 0] - 4 * [1, 1]
//         = [16, -4]
//   d_k_0 = (g_0 . v_0) q_0 + (g_1 . v_0) q_1 = 5 * [1, 2] + 10 * [3, -1]
//         = [35, 0]
//   d_k_1 = (g_1 . v_1) q_1 = -4 * [3, -1] = [-12, 4]
//   d_v_0 = (q_0 . k_0) g_0 + (q_1 . k_0) g_1 = 2 + 12 = 14
//   d_v_1 = (q_1 . k_1) g_1 = 4
TEST(CausalProductReferenceTest, MatchesHandComputedCase) {
  const CausalProductShape shape{1, 2, 1, 2, 1};
  const std::vector<double> q = {1, 2, 3, -1}, k = {2, 0, 1, 1}, v = {5, -2},
                            g = {1, 2};
  std::vector<double> out(2), d_q(4), d_k(4), d_v(2);
  reference::CausalProduct(shape, q.data(), k.data(), v.data(), out.data());
  reference::CausalProductBackward(shape, q.data(), k.data(), v.data(),
                                   g.data(), d_q.data(), d_k.data(),
                                   d_v.data());
  EXPECT_EQ(out, (std::vector<double>{10, 26}));
  EXPECT_EQ(d_q, (std::vector<double>{10, 0, 16, -4}));
  EXPECT_EQ(d_k, (std::vector<double>{35, 0, -12, 4}));
  EXPECT_EQ(d_v, (std::vector<double>{14, 4}));
}

// The reference VJP is the oracle above; here it meets central differences.
TEST(CausalProductReferenceTest, BackwardMatchesCentralDifferences) {
  const CausalProductShape shape{2, 5, 2, 3, 4};
  const int64_t qk_size = 2 * 5 * 2 * 3, value_size = 2 * 5 * 2 * 4;
  const std::vector<double> q =
      testing::RandomUniformVector<double>(qk_size, 41);
  const std::vector<double> k =
      testing::RandomUniformVector<double>(qk_size, 42);
  const std::vector<double> v =
      testing::RandomUniformVector<double>(value_size, 43);
  const std::vector<double> w =
      testing::RandomUniformVector<double>(value_size, 44);
  std::vector<double> d_q(qk_size), d_k(qk_size), d_v(value_size);
  reference::CausalProductBackward(shape, q.data(), k.data(), v.data(),
                                   w.data(), d_q.data(), d_k.data(),
                                   d_v.data());
  auto loss = [&](const std::vector<double>& queries,
                  const std::vector<double>& keys,
                  const std::vector<double>& values) {
    std::vector<double> out(value_size);
    reference::CausalProduct(shape, queries.data(), keys.data(), values.data(),
                             out.data());
    return testing::Dot(w, out);
  };
  EXPECT_TRUE(testing::GradientMatches(
      [&](const std::vector<double>& x) { return loss(x, k, v); }, q, d_q))
      << "d_queries";
  EXPECT_TRUE(testing::GradientMatches(
      [&](const std::vector<double>& x) { return loss(q, x, v); }, k, d_k))
      << "d_keys";
  EXPECT_TRUE(testing::GradientMatches(
      [&](const std::vector<double>& x) { return loss(q, k, x); }, v, d_v))
      << "d_values";
}

void ExpectInvalid(const absl::Status& status, const std::string& fragment) {
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(std::string(status.message()).find(fragment), std::string::npos)
      << "expected \"" << fragment << "\" in: " << status;
}

TEST_F(CausalProductTest, BadInputIsAnErrorNamingTheProblem) {
  std::vector<float> a(2 * 4 * 3 * 5), b(a.size()), c(a.size()), d(a.size()),
      e(a.size()), f(a.size());
  const TensorView<const float> q(a.data(), {2, 4, 3, 5});
  const TensorView<const float> k(b.data(), {2, 4, 3, 5});
  const TensorView<const float> v(c.data(), {2, 4, 3, 5});
  const TensorView<float> out(d.data(), {2, 4, 3, 5});
  const TensorView<float> out2(e.data(), {2, 4, 3, 5});
  const TensorView<float> out3(f.data(), {2, 4, 3, 5});
  ASSERT_TRUE(CausalProduct(*ctx_, q, k, v, out).ok());

  // Keys of another length than the queries.
  ExpectInvalid(
      CausalProduct(*ctx_, q, TensorView<const float>(b.data(), {2, 3, 3, 5}),
                    v, out),
      "keys has shape [2, 3, 3, 5] but queries has shape [2, 4, 3, 5]");
  ExpectInvalid(
      CausalProduct(*ctx_, q, TensorView<const float>(b.data(), {2, 4, 3, 4}),
                    v, out),
      "keys has shape");
  ExpectInvalid(
      CausalProduct(*ctx_, q, k,
                    TensorView<const float>(c.data(), {1, 4, 3, 5}), out),
      "values must have shape [2, 4, 3, 5]");
  ExpectInvalid(
      CausalProduct(*ctx_, q, k, v, TensorView<float>(d.data(), {2, 4, 3, 4})),
      "out must have shape [2, 4, 3, 5]");
  ExpectInvalid(
      CausalProduct(*ctx_, TensorView<const float>(a.data(), {8, 3, 5}), k, v,
                    out),
      "queries must have rank 4");
  ExpectInvalid(
      CausalProduct(*ctx_, q, TensorView<const float>(nullptr, {2, 4, 3, 5}), v,
                    out),
      "keys has null data");
  ExpectInvalid(
      CausalProduct(
          *ctx_, q, k,
          TensorView<const float>(c.data(), {2, 4, 3, 5}, Device::Cuda()), out),
      "values is on cuda but the context is cpu");
  ExpectInvalid(
      CausalProduct(*ctx_, q, k, v,
                    TensorView<float>(d.data(), {2, 4, 3, 2}, {60, 15, 5, 2})),
      "out must have unit stride in its last axis, got stride 2");

  // Backward: every gradient must match its input.
  ASSERT_TRUE(CausalProductBackward(*ctx_, q, k, v, v, out, out2, out3).ok());
  ExpectInvalid(
      CausalProductBackward(*ctx_, q, k, v,
                            TensorView<const float>(c.data(), {2, 4, 3, 4}),
                            out, out, out),
      "d_out must have shape [2, 4, 3, 5]");
  ExpectInvalid(
      CausalProductBackward(*ctx_, q, k, v, v, out,
                            TensorView<float>(d.data(), {2, 4, 2, 5}), out),
      "d_keys must have shape [2, 4, 3, 5]");
  ExpectInvalid(
      CausalProductBackward(*ctx_, q, k, v, v,
                            TensorView<float>(nullptr, {2, 4, 3, 5}), out, out),
      "d_queries has null data");
  ExpectInvalid(CausalProductBackward(
                    *ctx_, q, k, v, v, out, out,
                    TensorView<float>(d.data(), {2, 4, 3, 5}, Device::Cuda())),
                "d_values is on cuda");
  ExpectInvalid(CausalProductBackward(
                    *ctx_, q, TensorView<const float>(b.data(), {2, 2, 3, 5}),
                    v, v, out, out, out),
                "keys has shape [2, 2, 3, 5]");
}

}  // namespace
}  // namespace ftx
