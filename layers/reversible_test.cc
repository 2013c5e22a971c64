// ReversibleSequence over stacks of small tanh-MLP branches (written here): the
// forward against a double reference of the two-stream coupling with sum and
// mean merges; the reconstructing backward (inputs and every branch parameter)
// against central differences of that reference and against the plain
// computation that stores its activations; held memory independent of the
// depth; in-place use; bad inputs and branch errors.
#include "layers/reversible.h"

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/activation/activation.h"
#include "kernels/base/status_macros.h"
#include "kernels/linear/linear.h"
#include "tests/util/gradcheck.h"
#include "tests/util/random.h"
#include "tests/util/tolerance.h"

namespace ftx {
namespace {

using ::ftx::testing::AllNear;
using ::ftx::testing::Cast;
using ::ftx::testing::GradientMatches;
using ::ftx::testing::RandomUniformVector;

constexpr int64_t kBatch = 2, kLength = 3, kDim = 4, kHidden = 5;
constexpr int64_t kRows = kBatch * kLength;
constexpr float kGradStart = 0.5f;  // parameter gradients accumulate from here

std::unique_ptr<Context> MakeContext() {
  return Context::Create({.num_threads = 2}).value();
}

// y = W2 tanh(W1 x + b1) + b2 with W1 [H, C], W2 [C, H]; keeps W1 x + b1 and
// the tanh in its cache.
class MlpBranch final : public Block {
 public:
  MlpBranch(int64_t dim, int64_t hidden, uint64_t seed)
      : dim_(dim),
        hidden_(hidden),
        w1_(RandomUniformVector(hidden * dim, seed, -0.6, 0.6)),
        b1_(RandomUniformVector(hidden, seed + 1, -0.3, 0.3)),
        w2_(RandomUniformVector(dim * hidden, seed + 2, -0.6, 0.6)),
        b2_(RandomUniformVector(dim, seed + 3, -0.3, 0.3)),
        d_w1_(w1_.size(), kGradStart),
        d_b1_(b1_.size(), kGradStart),
        d_w2_(w2_.size(), kGradStart),
        d_b2_(b2_.size(), kGradStart) {}

  absl::Status Forward(const Context& ctx, TensorView<const float> x,
                       TensorView<float> y, BlockCache* cache) override {
    const Shape hidden_shape{x.NumElements() / dim_, hidden_};
    BlockCache& keep = cache != nullptr ? *cache : scratch_;
    keep.saved.resize(2);
    for (Tensor& tensor : keep.saved) {
      FTX_ASSIGN_OR_RETURN(tensor, Tensor::Create(DType::kF32, hidden_shape));
    }
    const TensorView<float> pre = keep.saved[0].view<float>();
    const TensorView<float> act = keep.saved[1].view<float>();
    FTX_RETURN_IF_ERROR(LinearForward(ctx, x, W1(), B1(), pre));
    FTX_RETURN_IF_ERROR(Activate(ctx, Activation::kTanh, pre, act));
    return LinearForward(ctx, act, W2(), B2(), y);
  }

  absl::Status Backward(const Context& ctx, TensorView<const float> x,
                        const BlockCache& cache, TensorView<const float> d_y,
                        TensorView<float> d_x) override {
    const TensorView<const float> pre = cache.saved[0].view<const float>();
    const TensorView<const float> act = cache.saved[1].view<const float>();
    FTX_ASSIGN_OR_RETURN(Tensor d_hidden,
                         Tensor::Create(DType::kF32, pre.shape()));
    const TensorView<float> d_h = d_hidden.view<float>();
    FTX_RETURN_IF_ERROR(
        LinearBackward(ctx, act, W2(), d_y, d_h,
                       TensorView<float>(d_w2_.data(), {dim_, hidden_}),
                       TensorView<float>(d_b2_.data(), {dim_})));
    FTX_RETURN_IF_ERROR(
        ActivateBackward(ctx, Activation::kTanh, pre, d_h, d_h));
    return LinearBackward(ctx, x, W1(), d_h, d_x,
                          TensorView<float>(d_w1_.data(), {hidden_, dim_}),
                          TensorView<float>(d_b1_.data(), {hidden_}));
  }

  // Parameters and accumulated gradients (minus their start), flattened as
  // (w1, b1, w2, b2).
  std::vector<double> Flat() const { return Concat(w1_, b1_, w2_, b2_, 0.0); }
  std::vector<double> FlatGrads() const {
    return Concat(d_w1_, d_b1_, d_w2_, d_b2_, kGradStart);
  }
  int64_t NumParams() const {
    return w1_.size() + b1_.size() + w2_.size() + b2_.size();
  }

 private:
  static std::vector<double> Concat(const std::vector<float>& a,
                                    const std::vector<float>& b,
                                    const std::vector<float>& c,
                                    const std::vector<float>& d, double minus) {
    std::vector<double> flat;
    for (const std::vector<float>* part : {&a, &b, &c, &d}) {
      for (float v : *part) flat.push_back(v - minus);
    }
    return flat;
  }
  TensorView<const float> W1() const {
    return TensorView<const float>(w1_.data(), {hidden_, dim_});
  }
  TensorView<const float> B1() const {
    return TensorView<const float>(b1_.data(), {hidden_});
  }
  TensorView<const float> W2() const {
    return TensorView<const float>(w2_.data(), {dim_, hidden_});
  }
  TensorView<const float> B2() const {
    return TensorView<const float>(b2_.data(), {dim_});
  }

  int64_t dim_, hidden_;
  std::vector<float> w1_, b1_, w2_, b2_, d_w1_, d_b1_, d_w2_, d_b2_;
  BlockCache scratch_;
};

// The same MLP in double, on rows of `dim`, parameters flattened as (w1, b1,
// w2, b2).
std::vector<double> ReferenceMlp(const double* p,
                                 const std::vector<double>& x) {
  const double* w1 = p;
  const double* b1 = w1 + kHidden * kDim;
  const double* w2 = b1 + kHidden;
  const double* b2 = w2 + kDim * kHidden;
  std::vector<double> y(x.size());
  for (size_t r = 0; r < x.size() / kDim; ++r) {
    double act[kHidden];
    for (int64_t j = 0; j < kHidden; ++j) {
      double sum = b1[j];
      for (int64_t k = 0; k < kDim; ++k)
        sum += w1[j * kDim + k] * x[r * kDim + k];
      act[j] = std::tanh(sum);
    }
    for (int64_t i = 0; i < kDim; ++i) {
      double sum = b2[i];
      for (int64_t j = 0; j < kHidden; ++j) sum += w2[i * kHidden + j] * act[j];
      y[r * kDim + i] = sum;
    }
  }
  return y;
}

constexpr int64_t kParamsPerBranch = 2 * kHidden * kDim + kHidden + kDim;

// x -> (x, x); per pair y1 = x1 + f(x2), y2 = x2 + g(y1); sum or mean. `params`
// holds the branches (f0, g0, f1, g1, ...) one after another.
std::vector<double> ReferenceReversible(const std::vector<double>& x,
                                        const std::vector<double>& params,
                                        int depth, ReversibleMerge merge) {
  std::vector<double> x1 = x, x2 = x;
  for (int l = 0; l < depth; ++l) {
    const std::vector<double> f =
        ReferenceMlp(&params[(2 * l) * kParamsPerBranch], x2);
    for (size_t i = 0; i < x1.size(); ++i) x1[i] += f[i];
    const std::vector<double> g =
        ReferenceMlp(&params[(2 * l + 1) * kParamsPerBranch], x1);
    for (size_t i = 0; i < x2.size(); ++i) x2[i] += g[i];
  }
  std::vector<double> y(x.size());
  for (size_t i = 0; i < y.size(); ++i) {
    y[i] = (x1[i] + x2[i]) * (merge == ReversibleMerge::kMean ? 0.5 : 1.0);
  }
  return y;
}

// `depth` pairs of fresh MLP branches and a sequence over them.
struct Stack {
  Stack(int depth, const ReversibleConfig& config, int64_t branch_dim = kDim) {
    std::vector<ReversiblePair> pairs;
    for (int i = 0; i < 2 * depth; ++i) {
      branches.push_back(
          std::make_unique<MlpBranch>(branch_dim, kHidden, 100 + 10 * i));
    }
    for (int l = 0; l < depth; ++l) {
      pairs.push_back({branches[2 * l].get(), branches[2 * l + 1].get()});
    }
    sequence = ReversibleSequence::Create(config, pairs).value();
  }
  std::vector<double> Params() const {
    std::vector<double> all;
    for (const auto& branch : branches) {
      const std::vector<double> p = branch->Flat();
      all.insert(all.end(), p.begin(), p.end());
    }
    return all;
  }
  std::vector<double> ParamGrads() const {
    std::vector<double> all;
    for (const auto& branch : branches) {
      const std::vector<double> p = branch->FlatGrads();
      all.insert(all.end(), p.begin(), p.end());
    }
    return all;
  }
  std::vector<std::unique_ptr<MlpBranch>> branches;
  std::unique_ptr<ReversibleSequence> sequence;
};

const Shape kShape{kBatch, kLength, kDim};

struct RunResult {
  std::vector<float> y, d_x;
  std::vector<double> param_grads;
  int64_t held_bytes = 0;
};

RunResult ForwardBackward(const Context& ctx, int depth,
                          const ReversibleConfig& config,
                          const std::vector<float>& x,
                          const std::vector<float>& d_y) {
  Stack stack(depth, config);
  RunResult run;
  run.y.resize(x.size());
  run.d_x.assign(x.size(), -7.0f);
  BlockCache cache;
  const TensorView<const float> x_view(x.data(), kShape);
  EXPECT_TRUE(stack.sequence
                  ->Forward(ctx, x_view,
                            TensorView<float>(run.y.data(), kShape), &cache)
                  .ok());
  run.held_bytes = cache.HeldBytes();
  EXPECT_TRUE(stack.sequence
                  ->Backward(ctx, x_view, cache,
                             TensorView<const float>(d_y.data(), kShape),
                             TensorView<float>(run.d_x.data(), kShape))
                  .ok());
  run.param_grads = stack.ParamGrads();
  return run;
}

class ReversibleMergeTest : public ::testing::TestWithParam<ReversibleMerge> {};

TEST_P(ReversibleMergeTest, MatchesReferenceAndCentralDifferences) {
  auto ctx = MakeContext();
  constexpr int kDepth = 3;
  const ReversibleMerge merge = GetParam();
  const std::vector<float> x = RandomUniformVector(kRows * kDim, 1, -1.5, 1.5);
  const std::vector<float> d_y = RandomUniformVector(kRows * kDim, 2);
  const RunResult run = ForwardBackward(*ctx, kDepth, {.merge = merge}, x, d_y);
  const std::vector<double> params = Stack(kDepth, {}).Params();
  const std::vector<double> x_d = Cast<double>(x);
  EXPECT_TRUE(AllNear(run.y, ReferenceReversible(x_d, params, kDepth, merge),
                      {1e-5, 1e-5}));
  const std::vector<double> w = Cast<double>(d_y);
  const testing::Tolerance tolerance{1e-5, 1e-4};
  EXPECT_TRUE(GradientMatches(
      [&](const std::vector<double>& v) {
        return testing::Dot(w, ReferenceReversible(v, params, kDepth, merge));
      },
      x_d, Cast<double>(run.d_x), tolerance));
  EXPECT_TRUE(GradientMatches(
      [&](const std::vector<double>& v) {
        return testing::Dot(w, ReferenceReversible(x_d, v, kDepth, merge));
      },
      params, run.param_grads, tolerance));
}

TEST_P(ReversibleMergeTest, ReconstructingEqualsStoringActivations) {
  auto ctx = MakeContext();
  const ReversibleMerge merge = GetParam();
  const std::vector<float> x = RandomUniformVector(kRows * kDim, 3, -1.5, 1.5);
  const std::vector<float> d_y = RandomUniformVector(kRows * kDim, 4);
  for (int depth : {1, 3, 5}) {
    SCOPED_TRACE(::testing::Message() << "depth " << depth);
    const RunResult reversible = ForwardBackward(
        *ctx, depth, {merge, ReversibleMemory::kReconstruct}, x, d_y);
    const RunResult plain = ForwardBackward(
        *ctx, depth, {merge, ReversibleMemory::kStoreActivations}, x, d_y);
    EXPECT_EQ(reversible.y,
              plain.y);  // the same float operations in the same order
    // Only the rebuilt inputs differ, by float rounding.
    EXPECT_TRUE(AllNear(reversible.d_x, plain.d_x, {1e-5, 1e-5}));
    EXPECT_TRUE(
        AllNear(reversible.param_grads, plain.param_grads, {1e-5, 1e-5}));
  }
}

INSTANTIATE_TEST_SUITE_P(SumAndMean, ReversibleMergeTest,
                         ::testing::Values(ReversibleMerge::kSum,
                                           ReversibleMerge::kMean));

TEST(ReversibleTest, HeldMemoryDoesNotGrowWithDepth) {
  auto ctx = MakeContext();
  const std::vector<float> x = RandomUniformVector(kRows * kDim, 5);
  const std::vector<float> d_y = RandomUniformVector(kRows * kDim, 6);
  const int64_t stream_bytes = kRows * kDim * sizeof(float);
  // Per pair, plain keeps x2 and y1 and each MLP keeps two [rows, hidden]
  // tensors.
  const int64_t plain_bytes_per_pair =
      2 * stream_bytes + 4 * kRows * kHidden * sizeof(float);
  for (int depth : {1, 2, 4, 8}) {
    SCOPED_TRACE(::testing::Message() << "depth " << depth);
    EXPECT_EQ(ForwardBackward(*ctx, depth, {}, x, d_y).held_bytes,
              2 * stream_bytes);
    EXPECT_EQ(
        ForwardBackward(*ctx, depth,
                        {.memory = ReversibleMemory::kStoreActivations}, x, d_y)
            .held_bytes,
        depth * plain_bytes_per_pair);
  }
}

TEST(ReversibleTest, InPlaceAndWithoutCache) {
  auto ctx = MakeContext();
  Stack stack(2, {});
  std::vector<float> x = RandomUniformVector(kRows * kDim, 7);
  std::vector<float> y(x.size());
  const TensorView<float> x_view(x.data(), kShape);
  ASSERT_TRUE(
      stack.sequence
          ->Forward(*ctx, x_view, TensorView<float>(y.data(), kShape), nullptr)
          .ok());
  ASSERT_TRUE(stack.sequence->Forward(*ctx, x_view, x_view, nullptr).ok());
  EXPECT_EQ(x, y);
}

void ExpectInvalid(const absl::Status& status, const std::string& fragment) {
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(std::string(status.message()).find(fragment), std::string::npos)
      << "message \"" << status.message() << "\" lacks \"" << fragment << "\"";
}

TEST(ReversibleTest, BadInputsAreErrors) {
  auto ctx = MakeContext();
  ExpectInvalid(ReversibleSequence::Create({}, {}).status(),
                "at least one (f, g) pair");
  MlpBranch branch(kDim, kHidden, 1);
  ExpectInvalid(
      ReversibleSequence::Create({}, {{&branch, &branch}, {&branch, nullptr}})
          .status(),
      "pair 1 has a null g branch");

  Stack stack(2, {});
  std::vector<float> x(kRows * kDim), y(kRows * kDim), d_x(kRows * kDim);
  const TensorView<const float> x_view(x.data(), kShape);
  const TensorView<float> y_view(y.data(), kShape);
  ExpectInvalid(
      stack.sequence->Forward(
          *ctx, x_view, TensorView<float>(y.data(), {kBatch, kDim, kLength}),
          nullptr),
      "y has shape");
  ExpectInvalid(
      stack.sequence->Forward(
          *ctx, TensorView<const float>(x.data(), kShape, Device::Cuda()),
          y_view, nullptr),
      "x is on cuda");
  ExpectInvalid(
      stack.sequence->Forward(*ctx, TensorView<const float>(nullptr, kShape),
                              y_view, nullptr),
      "x has null data");
  ExpectInvalid(
      stack.sequence->Forward(
          *ctx,
          TensorView<const float>(x.data(), {kBatch, kLength, 2},
                                  Strides{kLength * kDim, kDim, 2, 0}),
          TensorView<float>(y.data(), {kBatch, kLength, 2}), nullptr),
      "unit stride");

  // A cache from the other memory mode, or none at all.
  BlockCache cache;
  Stack storing(2, {.memory = ReversibleMemory::kStoreActivations});
  ASSERT_TRUE(storing.sequence->Forward(*ctx, x_view, y_view, &cache).ok());
  ExpectInvalid(stack.sequence->Backward(*ctx, x_view, cache, x_view,
                                         TensorView<float>(d_x.data(), kShape)),
                "the cache does not come from Forward of this sequence "
                "(kReconstruct, depth 2)");
  ExpectInvalid(stack.sequence->Backward(*ctx, x_view, BlockCache{}, x_view,
                                         TensorView<float>(d_x.data(), kShape)),
                "the cache does not come from Forward");
  ASSERT_TRUE(stack.sequence->Forward(*ctx, x_view, y_view, &cache).ok());
  ExpectInvalid(
      stack.sequence->Backward(*ctx, x_view, cache, x_view,
                               TensorView<float>(d_x.data(), {kRows, kDim})),
      "d_x has shape");

  // Branches built for 3 channels on a 4-channel stream: the branch error names
  // where.
  Stack mismatched(2, {}, kDim - 1);
  const absl::Status status =
      mismatched.sequence->Forward(*ctx, x_view, y_view, nullptr);
  ExpectInvalid(status, "ReversibleSequence: pair 0 branch f: LinearForward");
}

}  // namespace
}  // namespace ftx
