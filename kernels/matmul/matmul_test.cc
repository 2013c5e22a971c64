// kernels/matmul: every Highway target against the scalar reference (run in
// double) over odd shapes, all transpose combinations, alpha/beta, strided
// rows, batches with broadcast and NaN in an unread c; thread-count
// independence; the reference backward against central differences and the
// CPU backward against the reference; bad input.
#include "kernels/matmul/matmul.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/reference/matmul_ref.h"
#include "tests/util/gradcheck.h"
#include "tests/util/highway_targets.h"
#include "tests/util/matrix.h"
#include "tests/util/random.h"
#include "tests/util/tolerance.h"

namespace ftx {
namespace {

using ::ftx::testing::AllNear;
using ::ftx::testing::ForEachHighwayTarget;
using ::ftx::testing::StridedMatrix;
using ::ftx::testing::Tolerance;

// A test operand: `batch` items of rows x cols (batch 0: a rank-2 view), rows
// padded with sentinels and, with gap_rows > 0, unused rows between items (so
// items are not evenly spaced rows).
class TestMatrix {
 public:
  TestMatrix(int64_t batch, int64_t rows, int64_t cols, uint64_t seed,
             int64_t gap_rows = 0, int64_t padding = 3)
      : batch_(batch),
        rows_(rows),
        cols_(cols),
        item_rows_(rows + gap_rows),
        storage_(std::max<int64_t>(batch, 1) * (rows + gap_rows), cols, padding,
                 seed) {}

  TensorView<float> view() {
    if (batch_ == 0) {
      return TensorView<float>(storage_.data(), {rows_, cols_},
                               {storage_.stride(), 1, 0, 0});
    }
    return TensorView<float>(
        storage_.data(), {batch_, rows_, cols_},
        {item_rows_ * storage_.stride(), storage_.stride(), 1, 0});
  }
  TensorView<const float> const_view() { return view(); }

  int64_t items() const { return std::max<int64_t>(batch_, 1); }
  float& at(int64_t item, int64_t row, int64_t col) {
    return storage_.at(item * item_rows_ + row, col);
  }

  // The items' values, dense, in double.
  std::vector<double> Dense() const {
    std::vector<double> dense;
    for (int64_t item = 0; item < items(); ++item) {
      for (int64_t row = 0; row < rows_; ++row) {
        for (int64_t col = 0; col < cols_; ++col) {
          dense.push_back(storage_.at(item * item_rows_ + row, col));
        }
      }
    }
    return dense;
  }

  void Fill(float value) {
    for (int64_t item = 0; item < items(); ++item) {
      for (int64_t row = 0; row < rows_; ++row) {
        for (int64_t col = 0; col < cols_; ++col) at(item, row, col) = value;
      }
    }
  }

  bool PaddingIntact() const { return storage_.PaddingIntact(); }

  // The reference's view of Dense(): rank 2 broadcasts (batch stride 0).
  template <typename T>
  reference::BatchedMatrix<T> Reference(T* dense) const {
    return {dense, cols_, batch_ == 0 ? 0 : rows_ * cols_};
  }

 private:
  int64_t batch_, rows_, cols_, item_rows_;
  StridedMatrix storage_;
};

// c = op(a) @ op(b) with op(a) [m, k], op(b) [k, n]; a batch of 0 means a
// rank-2 operand; a_gap_rows unused rows between the items of a.
struct Problem {
  Problem(int64_t m, int64_t n, int64_t k, int64_t a_batch = 0,
          int64_t b_batch = 0, int64_t a_gap_rows = 0,
          MatMulOptions options = {})
      : m(m),
        n(n),
        k(k),
        a_batch(a_batch),
        b_batch(b_batch),
        a_gap_rows(a_gap_rows),
        options(options) {}

  int64_t m, n, k;
  int64_t a_batch, b_batch;
  int64_t a_gap_rows;
  MatMulOptions options;
};

int64_t BatchOf(const Problem& p) { return std::max(p.a_batch, p.b_batch); }

// The operands of `p` as stored (transposes swap the stored rows and columns).
struct Operands {
  explicit Operands(const Problem& p, uint64_t seed)
      : a(p.a_batch, p.options.transpose_a ? p.k : p.m,
          p.options.transpose_a ? p.m : p.k, seed, p.a_gap_rows, 3),
        b(p.b_batch, p.options.transpose_b ? p.n : p.k,
          p.options.transpose_b ? p.k : p.n, seed + 1, 0, 5),
        c(BatchOf(p), p.m, p.n, seed + 2, 0, 2) {}
  TestMatrix a, b, c;
};

reference::MatMulDims DimsOf(const Problem& p) {
  return {std::max<int64_t>(BatchOf(p), 1), p.m, p.n, p.k};
}

reference::MatMulParams<double> ParamsOf(const MatMulOptions& options) {
  return {options.transpose_a, options.transpose_b, options.alpha,
          options.beta};
}

// Error bound of a float sum of k products of values in [-1, 1].
Tolerance SumTolerance(int64_t k) { return {2e-7 * (k + 4), 1e-5}; }

std::string Describe(const Problem& p) {
  return absl::StrCat("m=", p.m, " n=", p.n, " k=", p.k, " a_batch=", p.a_batch,
                      " b_batch=", p.b_batch, " gap=", p.a_gap_rows,
                      " transpose_a=", p.options.transpose_a,
                      " transpose_b=", p.options.transpose_b,
                      " alpha=", p.options.alpha, " beta=", p.options.beta);
}

class MatMulTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto ctx = Context::Create({.num_threads = 2});
    ASSERT_TRUE(ctx.ok());
    ctx_ = std::move(ctx).value();
  }

  // Runs MatMul on `p` and compares c with the reference in double.
  void ExpectMatchesReference(const Problem& p, bool nan_in_c = false) {
    SCOPED_TRACE(Describe(p));
    Operands x(p, 7 * p.m + 11 * p.n + 13 * p.k);
    if (nan_in_c) x.c.Fill(std::numeric_limits<float>::quiet_NaN());
    std::vector<double> a = x.a.Dense(), b = x.b.Dense(), c = x.c.Dense();
    reference::MatMul<double>(DimsOf(p), x.a.Reference<const double>(a.data()),
                              x.b.Reference<const double>(b.data()),
                              x.c.Reference(c.data()), ParamsOf(p.options));
    ASSERT_TRUE(
        MatMul(*ctx_, x.a.const_view(), x.b.const_view(), x.c.view(), p.options)
            .ok());
    EXPECT_TRUE(AllNear(x.c.Dense(), c, SumTolerance(p.k)));
    EXPECT_TRUE(x.c.PaddingIntact());
  }

  std::unique_ptr<Context> ctx_;
};

const int64_t kSizes[] = {1, 3, 7, 16, 17, 33, 65};
const bool kBools[] = {false, true};

TEST_F(MatMulTest, OddShapesAndTransposesMatchReference) {
  ForEachHighwayTarget([&] {
    for (bool transpose_a : kBools) {
      for (bool transpose_b : kBools) {
        MatMulOptions options{.transpose_a = transpose_a,
                              .transpose_b = transpose_b};
        for (int64_t m : kSizes) {
          for (int64_t n : kSizes) {
            for (int64_t k : kSizes) {
              ExpectMatchesReference({m, n, k, 0, 0, 0, options});
            }
          }
        }
        ExpectMatchesReference({129, 131, 257, 0, 0, 0, options});
      }
    }
  });
}

// Several column blocks (n > 1024) and k blocks (k > 256), where a row-major
// a is packed rather than read in place (n > 512).
TEST_F(MatMulTest, WideAndDeepProductsMatchReference) {
  ForEachHighwayTarget([&] {
    for (bool transpose_a : kBools) {
      for (bool transpose_b : kBools) {
        ExpectMatchesReference({7,
                                1100,
                                300,
                                0,
                                0,
                                0,
                                {.transpose_a = transpose_a,
                                 .transpose_b = transpose_b,
                                 .alpha = 0.5f,
                                 .beta = 1.5f}});
        ExpectMatchesReference(
            {13,
             600,
             17,
             0,
             0,
             0,
             {.transpose_a = transpose_a, .transpose_b = transpose_b}});
      }
    }
  });
}

TEST_F(MatMulTest, AlphaBetaAndNaNInUnreadC) {
  ForEachHighwayTarget([&] {
    for (bool transpose_a : kBools) {
      for (bool transpose_b : kBools) {
        for (auto [m, n, k] : {std::tuple<int64_t, int64_t, int64_t>{3, 7, 1},
                               {17, 33, 16},
                               {65, 17, 7},
                               {129, 131, 257}}) {
          MatMulOptions options{.transpose_a = transpose_a,
                                .transpose_b = transpose_b,
                                .alpha = -0.75f,
                                .beta = 0.5f};
          ExpectMatchesReference({m, n, k, 0, 0, 0, options});
          options.beta = 0.0f;
          options.alpha = 2.0f;
          ExpectMatchesReference({m, n, k, 0, 0, 0, options},
                                 /*nan_in_c=*/true);
        }
      }
    }
  });
}

TEST_F(MatMulTest, BatchesWithBroadcastMatchReference) {
  ForEachHighwayTarget([&] {
    for (bool transpose_a : kBools) {
      for (bool transpose_b : kBools) {
        const MatMulOptions options{.transpose_a = transpose_a,
                                    .transpose_b = transpose_b,
                                    .alpha = 1.5f,
                                    .beta = -1.0f};
        // Both batched; shared b (evenly spaced rows of a fold into one GEMM,
        // gapped ones do not); shared a.
        ExpectMatchesReference({17, 33, 7, 3, 3, 0, options});
        ExpectMatchesReference({17, 33, 7, 4, 0, 0, options});
        ExpectMatchesReference({5, 40, 19, 3, 0, 2, options});
        ExpectMatchesReference({13, 9, 33, 0, 5, 0, options});
        ExpectMatchesReference({1, 65, 16, 6, 0, 0, options});
        ExpectMatchesReference({3, 1, 1, 2, 2, 1, options});
      }
    }
  });
}

TEST_F(MatMulTest, EmptyProductScalesC) {
  ExpectMatchesReference({4, 5, 0, 0, 0, 0, {.beta = 2.0f}});
  ExpectMatchesReference({4, 5, 0, 3, 3, 0, {.beta = 0.0f}},
                         /*nan_in_c=*/true);
}

// Each element is summed in the same order whatever the split: 1 and 2
// threads give bitwise equal results on shapes that exercise row splits,
// column splits (few rows) and batch splits.
TEST(MatMulThreadsTest, ResultsDoNotDependOnThreadCount) {
  auto one = Context::Create({.num_threads = 1}).value();
  auto two = Context::Create({.num_threads = 2}).value();
  const Problem problems[] = {
      {129, 131, 257},
      {1000, 64, 64},
      {3, 1000, 300},
      {37, 45, 500, 4, 0, 0, {.transpose_b = true}},
      {37, 45, 61, 3, 3, 0, {.transpose_a = true, .beta = 0.5f}},
      {300, 900, 1000, 0, 0, 0, {.transpose_a = true, .transpose_b = true}},
  };
  for (const Problem& p : problems) {
    SCOPED_TRACE(Describe(p));
    Operands x1(p, 3), x2(p, 3);
    ASSERT_TRUE(MatMul(*one, x1.a.const_view(), x1.b.const_view(), x1.c.view(),
                       p.options)
                    .ok());
    ASSERT_TRUE(MatMul(*two, x2.a.const_view(), x2.b.const_view(), x2.c.view(),
                       p.options)
                    .ok());
    EXPECT_TRUE(AllNear(x2.c.Dense(), x1.c.Dense(), {0, 0}));
  }
}

// The reference VJPs are the oracle below; here they meet central differences
// of loss = <w, c> in double, for every transpose and for a shared b.
TEST(MatMulReferenceGradientTest, MatchesCentralDifferences) {
  for (bool transpose_a : kBools) {
    for (bool transpose_b : kBools) {
      for (int64_t b_batch : {int64_t{0}, int64_t{2}}) {
        const Problem p{3,
                        4,
                        5,
                        2,
                        b_batch,
                        0,
                        {.transpose_a = transpose_a,
                         .transpose_b = transpose_b,
                         .alpha = 0.75f}};
        SCOPED_TRACE(Describe(p));
        Operands x(p, 40);
        const std::vector<double> a0 = x.a.Dense(), b0 = x.b.Dense();
        const std::vector<double> w =
            testing::RandomUniformVector<double>(x.c.Dense().size(), 41);
        const reference::MatMulDims dims = DimsOf(p);
        const reference::MatMulParams<double> params = ParamsOf(p.options);
        std::vector<double> d_a(a0.size()), d_b(b0.size());
        reference::MatMulBackward<double>(
            dims, x.a.Reference<const double>(a0.data()),
            x.b.Reference<const double>(b0.data()),
            x.c.Reference<const double>(w.data()), x.a.Reference(d_a.data()),
            x.b.Reference(d_b.data()), params, false, false);
        const auto loss = [&](const std::vector<double>& a,
                              const std::vector<double>& b) {
          std::vector<double> c(w.size());
          reference::MatMul<double>(dims, x.a.Reference<const double>(a.data()),
                                    x.b.Reference<const double>(b.data()),
                                    x.c.Reference(c.data()), params);
          return testing::Dot(w, c);
        };
        EXPECT_TRUE(testing::GradientMatches(
            [&](const std::vector<double>& a) { return loss(a, b0); }, a0,
            d_a));
        EXPECT_TRUE(testing::GradientMatches(
            [&](const std::vector<double>& b) { return loss(a0, b); }, b0,
            d_b));
      }
    }
  }
}

TEST_F(MatMulTest, BackwardMatchesReference) {
  ForEachHighwayTarget([&] {
    const Problem shapes[] = {
        {17, 33, 7},          {129, 65, 131},
        {7, 16, 33, 3, 3},     // both batched
        {17, 33, 9, 4, 0},     // shared b, evenly spaced rows of a
        {5, 17, 16, 3, 0, 2},  // shared b, gapped a
        {13, 9, 33, 0, 5},     // shared a
    };
    for (Problem p : shapes) {
      for (bool transpose_a : kBools) {
        for (bool transpose_b : kBools) {
          for (bool accumulate : kBools) {
            p.options = {.transpose_a = transpose_a,
                         .transpose_b = transpose_b,
                         .alpha = -1.25f};
            const MatMulGradOptions grad_options{.accumulate_a = accumulate,
                                                 .accumulate_b = !accumulate};
            SCOPED_TRACE(Describe(p) +
                         " accumulate_a=" + std::to_string(accumulate));
            Operands x(p, 50), grads(p, 60);
            // d_c takes the place of c; grads.a / grads.b hold the initial
            // gradients (accumulated into when asked).
            std::vector<double> a = x.a.Dense(), b = x.b.Dense(),
                                d_c = x.c.Dense();
            std::vector<double> d_a = grads.a.Dense(), d_b = grads.b.Dense();
            reference::MatMulBackward<double>(
                DimsOf(p), x.a.Reference<const double>(a.data()),
                x.b.Reference<const double>(b.data()),
                x.c.Reference<const double>(d_c.data()),
                x.a.Reference(d_a.data()), x.b.Reference(d_b.data()),
                ParamsOf(p.options), grad_options.accumulate_a,
                grad_options.accumulate_b);
            ASSERT_TRUE(MatMulBackward(*ctx_, x.a.const_view(),
                                       x.b.const_view(), x.c.const_view(),
                                       grads.a.view(), grads.b.view(),
                                       p.options, grad_options)
                            .ok());
            const int64_t batch = std::max<int64_t>(BatchOf(p), 1);
            EXPECT_TRUE(
                AllNear(grads.a.Dense(), d_a, SumTolerance(batch * p.n)));
            EXPECT_TRUE(
                AllNear(grads.b.Dense(), d_b, SumTolerance(batch * p.m)));
            EXPECT_TRUE(grads.a.PaddingIntact() && grads.b.PaddingIntact());
          }
        }
      }
    }
  });
}

TEST_F(MatMulTest, BackwardSkipsEmptyOutputs) {
  const Problem p{7, 9, 5, 2, 0};
  Operands x(p, 70), grads(p, 80);
  const std::vector<double> d_b_before = grads.b.Dense();
  ASSERT_TRUE(MatMulBackward(*ctx_, x.a.const_view(), x.b.const_view(),
                             x.c.const_view(), grads.a.view(),
                             TensorView<float>())
                  .ok());
  EXPECT_TRUE(AllNear(grads.b.Dense(), d_b_before, {0, 0}));
  std::vector<double> a = x.a.Dense(), b = x.b.Dense(), d_c = x.c.Dense();
  std::vector<double> d_a(a.size());
  reference::MatMulBackward<double>(
      DimsOf(p), x.a.Reference<const double>(a.data()),
      x.b.Reference<const double>(b.data()),
      x.c.Reference<const double>(d_c.data()), x.a.Reference(d_a.data()),
      reference::BatchedMatrix<double>(), ParamsOf(p.options), false, false);
  EXPECT_TRUE(AllNear(grads.a.Dense(), d_a, SumTolerance(p.n)));
  ASSERT_TRUE(MatMulBackward(*ctx_, x.a.const_view(), x.b.const_view(),
                             x.c.const_view(), TensorView<float>(),
                             TensorView<float>())
                  .ok());
}

// Expects `status` to be InvalidArgument with `fragment` in its message.
void ExpectInvalid(const absl::Status& status, const std::string& fragment) {
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(std::string(status.message()).find(fragment), std::string::npos)
      << "expected \"" << fragment << "\" in: " << status;
}

TEST_F(MatMulTest, BadInputIsAnErrorNamingTheProblem) {
  std::vector<float> storage(4096, 1.0f);
  float* p = storage.data();
  const TensorView<const float> a(p, {3, 4}), b(p, {4, 5});
  const TensorView<float> c(p + 1024, {3, 5});
  ASSERT_TRUE(MatMul(*ctx_, a, b, c).ok());

  ExpectInvalid(MatMul(*ctx_, a, TensorView<const float>(p, {5, 5}), c),
                "inner dimensions disagree");
  ExpectInvalid(MatMul(*ctx_, a, b, c, {.transpose_b = true}),
                "inner dimensions disagree");
  ExpectInvalid(MatMul(*ctx_, a, b, TensorView<float>(p + 1024, {3, 6})),
                "c has shape [3, 6]");
  ExpectInvalid(MatMul(*ctx_, TensorView<const float>(p, {2, 3, 4}),
                       TensorView<const float>(p, {3, 4, 5}),
                       TensorView<float>(p + 1024, {2, 3, 5})),
                "batch sizes disagree");
  ExpectInvalid(MatMul(*ctx_, TensorView<const float>(p, {2, 3, 4}), b, c),
                "c has shape [3, 5]");
  ExpectInvalid(
      MatMul(*ctx_, TensorView<const float>(p, {3, 4}, Device::Cuda()), b, c),
      "a is on cuda");
  ExpectInvalid(MatMul(*ctx_, a, TensorView<const float>(nullptr, {4, 5}), c),
                "b has null data");
  ExpectInvalid(
      MatMul(*ctx_, a, b, TensorView<float>(p + 1024, {3, 5}, {10, 2, 0, 0})),
      "unit stride");
  ExpectInvalid(
      MatMul(*ctx_, TensorView<const float>(p, {3, 4}, {2, 1, 0, 0}), b, c),
      "row stride 2");
  ExpectInvalid(MatMul(*ctx_, TensorView<const float>(p, {1, 1, 3, 4}), b, c),
                "rank 2 or 3");
  ExpectInvalid(MatMul(*ctx_, TensorView<const float>(p, {12}), b, c),
                "rank 2 or 3");
  ExpectInvalid(MatMul(*ctx_, TensorView<const float>(p, {2, 3, 4}), b,
                       TensorView<float>(p + 1024, {2, 3, 5}, {5, 5, 1, 0})),
                "overlap");

  const TensorView<float> d_a(p + 2048, {3, 4}), d_b(p + 3072, {4, 5});
  ASSERT_TRUE(MatMulBackward(*ctx_, a, b, c, d_a, d_b).ok());
  ExpectInvalid(
      MatMulBackward(*ctx_, a, b, TensorView<const float>(p, {3, 4}), d_a, d_b),
      "d_c has shape [3, 4]");
  ExpectInvalid(
      MatMulBackward(*ctx_, a, b, c, TensorView<float>(p + 2048, {4, 3}), d_b),
      "d_a has shape [4, 3] but a has shape [3, 4]");
  ExpectInvalid(
      MatMulBackward(*ctx_, a, b, c, d_a, TensorView<float>(nullptr, {4, 5})),
      "d_b has null data");
  ExpectInvalid(
      MatMulBackward(*ctx_, a, TensorView<const float>(p, {5, 5}), c, d_a, d_b),
      "inner dimensions disagree");
  ExpectInvalid(
      MatMulBackward(*ctx_, a, b, c,
                     TensorView<float>(p + 2048, {3, 4}, Device::Cuda()), d_b),
      "d_a is on cuda");
  ExpectInvalid(
      MatMulBackward(*ctx_, a, b, c, d_a,
                     TensorView<float>(p + 3072, {4, 5}, {5, 2, 0, 0})),
      "unit stride");
}

}  // namespace
}  // namespace ftx
