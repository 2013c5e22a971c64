// RecomputeBlock over a small tanh-MLP block (written here): the same output
// and bit for bit the same gradients as the block run directly, the block's
// forward re-run in backward, nothing held between forward and backward,
// nesting (linformer's C2), the gradients against central differences of a
// double reference, and bad inputs.
#include "layers/recompute.h"

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

using ::ftx::testing::Cast;
using ::ftx::testing::GradientMatches;
using ::ftx::testing::RandomUniformVector;

constexpr int64_t kBatch = 2, kLength = 3, kDim = 4, kHidden = 6;
constexpr int64_t kRows = kBatch * kLength;
constexpr float kGradStart =
    -0.25f;  // parameter gradients accumulate from here
const Shape kShape{kBatch, kLength, kDim};

std::unique_ptr<Context> MakeContext() {
  return Context::Create({.num_threads = 2}).value();
}

// y = W2 tanh(W1 x + b1) + b2 with W1 [H, C], W2 [C, H]; counts its forward
// calls.
class MlpBlock final : public Block {
 public:
  explicit MlpBlock(uint64_t seed)
      : w1_(RandomUniformVector(kHidden * kDim, seed, -0.7, 0.7)),
        b1_(RandomUniformVector(kHidden, seed + 1, -0.3, 0.3)),
        w2_(RandomUniformVector(kDim * kHidden, seed + 2, -0.7, 0.7)),
        b2_(RandomUniformVector(kDim, seed + 3, -0.3, 0.3)),
        grads_(w1_.size() + b1_.size() + w2_.size() + b2_.size(), kGradStart) {}

  absl::Status Forward(const Context& ctx, TensorView<const float> x,
                       TensorView<float> y, BlockCache* cache) override {
    ++forward_calls_;
    BlockCache& keep = cache != nullptr ? *cache : scratch_;
    keep.saved.resize(2);
    for (Tensor& tensor : keep.saved) {
      FTX_ASSIGN_OR_RETURN(
          tensor,
          Tensor::Create(DType::kF32, {x.NumElements() / kDim, kHidden}));
    }
    FTX_RETURN_IF_ERROR(
        LinearForward(ctx, x, W1(), B1(), keep.saved[0].view<float>()));
    FTX_RETURN_IF_ERROR(Activate(ctx, Activation::kTanh,
                                 keep.saved[0].view<const float>(),
                                 keep.saved[1].view<float>()));
    return LinearForward(ctx, keep.saved[1].view<const float>(), W2(), B2(), y);
  }

  absl::Status Backward(const Context& ctx, TensorView<const float> x,
                        const BlockCache& cache, TensorView<const float> d_y,
                        TensorView<float> d_x) override {
    FTX_ASSIGN_OR_RETURN(Tensor d_hidden,
                         Tensor::Create(DType::kF32, cache.saved[0].shape()));
    const TensorView<float> d_h = d_hidden.view<float>();
    float* d_w1 = grads_.data();
    float* d_b1 = d_w1 + w1_.size();
    float* d_w2 = d_b1 + b1_.size();
    float* d_b2 = d_w2 + w2_.size();
    FTX_RETURN_IF_ERROR(LinearBackward(ctx, cache.saved[1].view<const float>(),
                                       W2(), d_y, d_h,
                                       TensorView<float>(d_w2, {kDim, kHidden}),
                                       TensorView<float>(d_b2, {kDim})));
    FTX_RETURN_IF_ERROR(ActivateBackward(
        ctx, Activation::kTanh, cache.saved[0].view<const float>(), d_h, d_h));
    return LinearBackward(ctx, x, W1(), d_h, d_x,
                          TensorView<float>(d_w1, {kHidden, kDim}),
                          TensorView<float>(d_b1, {kHidden}));
  }

  // (w1, b1, w2, b2) flattened.
  std::vector<double> Params() const {
    std::vector<double> flat;
    for (const std::vector<float>* part : {&w1_, &b1_, &w2_, &b2_}) {
      flat.insert(flat.end(), part->begin(), part->end());
    }
    return flat;
  }
  // What Backward accumulated, in the order of Params().
  const std::vector<float>& grads() const { return grads_; }
  int forward_calls() const { return forward_calls_; }

 private:
  TensorView<const float> W1() const {
    return TensorView<const float>(w1_.data(), {kHidden, kDim});
  }
  TensorView<const float> B1() const {
    return TensorView<const float>(b1_.data(), {kHidden});
  }
  TensorView<const float> W2() const {
    return TensorView<const float>(w2_.data(), {kDim, kHidden});
  }
  TensorView<const float> B2() const {
    return TensorView<const float>(b2_.data(), {kDim});
  }

  std::vector<float> w1_, b1_, w2_, b2_, grads_;
  BlockCache scratch_;
  int forward_calls_ = 0;
};

std::vector<double> ReferenceMlp(const std::vector<double>& p,
                                 const std::vector<double>& x) {
  const double* w1 = p.data();
  const double* b1 = w1 + kHidden * kDim;
  const double* w2 = b1 + kHidden;
  const double* b2 = w2 + kDim * kHidden;
  std::vector<double> y(x.size());
  for (int64_t r = 0; r < kRows; ++r) {
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

struct Result {
  std::vector<float> y, d_x, grads;
  int64_t held_bytes = 0;
};

// Forward with a cache, then Backward, through `block`.
Result ForwardBackward(const Context& ctx, Block& block, const MlpBlock& params,
                       const std::vector<float>& x,
                       const std::vector<float>& d_y) {
  Result result;
  result.y.assign(x.size(), 0.0f);
  result.d_x.assign(x.size(), 9.0f);
  const TensorView<const float> x_view(x.data(), kShape);
  BlockCache cache;
  EXPECT_TRUE(block
                  .Forward(ctx, x_view,
                           TensorView<float>(result.y.data(), kShape), &cache)
                  .ok());
  result.held_bytes = cache.HeldBytes();
  EXPECT_TRUE(block
                  .Backward(ctx, x_view, cache,
                            TensorView<const float>(d_y.data(), kShape),
                            TensorView<float>(result.d_x.data(), kShape))
                  .ok());
  result.grads = params.grads();
  return result;
}

TEST(RecomputeTest, GradientsEqualTheBlockRunDirectly) {
  auto ctx = MakeContext();
  const std::vector<float> x = RandomUniformVector(kRows * kDim, 1, -1.5, 1.5);
  const std::vector<float> d_y = RandomUniformVector(kRows * kDim, 2);
  MlpBlock direct_block(10), wrapped_block(10);
  const Result direct =
      ForwardBackward(*ctx, direct_block, direct_block, x, d_y);
  RecomputeBlock recompute(wrapped_block);
  const Result recomputed =
      ForwardBackward(*ctx, recompute, wrapped_block, x, d_y);
  EXPECT_EQ(recomputed.y, direct.y);
  EXPECT_EQ(recomputed.d_x, direct.d_x);
  EXPECT_EQ(recomputed.grads, direct.grads);
  EXPECT_EQ(direct_block.forward_calls(), 1);
  EXPECT_EQ(wrapped_block.forward_calls(), 2);  // once more inside Backward
  // The direct block keeps W1 x + b1 and tanh of it; the wrapper keeps nothing.
  EXPECT_EQ(direct.held_bytes,
            2 * kRows * kHidden * static_cast<int64_t>(sizeof(float)));
  EXPECT_EQ(recomputed.held_bytes, 0);
}

TEST(RecomputeTest, NestedCheckpointsAgree) {
  auto ctx = MakeContext();
  const std::vector<float> x = RandomUniformVector(kRows * kDim, 3);
  const std::vector<float> d_y = RandomUniformVector(kRows * kDim, 4);
  MlpBlock direct_block(20), nested_block(20);
  const Result direct =
      ForwardBackward(*ctx, direct_block, direct_block, x, d_y);
  RecomputeBlock inner(nested_block);
  RecomputeBlock outer(inner);
  const Result nested = ForwardBackward(*ctx, outer, nested_block, x, d_y);
  EXPECT_EQ(nested.y, direct.y);
  EXPECT_EQ(nested.d_x, direct.d_x);
  EXPECT_EQ(nested.grads, direct.grads);
  EXPECT_EQ(nested.held_bytes, 0);
}

TEST(RecomputeTest, GradientsMatchCentralDifferences) {
  auto ctx = MakeContext();
  const std::vector<float> x = RandomUniformVector(kRows * kDim, 5, -1.5, 1.5);
  const std::vector<float> d_y = RandomUniformVector(kRows * kDim, 6);
  MlpBlock block(30);
  RecomputeBlock recompute(block);
  const Result result = ForwardBackward(*ctx, recompute, block, x, d_y);
  const std::vector<double> params = block.Params(), x_d = Cast<double>(x);
  const std::vector<double> w = Cast<double>(d_y);
  EXPECT_TRUE(
      testing::AllNear(result.y, ReferenceMlp(params, x_d), {1e-6, 1e-5}));
  const testing::Tolerance tolerance{1e-5, 1e-4};
  EXPECT_TRUE(GradientMatches(
      [&](const std::vector<double>& v) {
        return testing::Dot(w, ReferenceMlp(params, v));
      },
      x_d, Cast<double>(result.d_x), tolerance));
  std::vector<double> analytic = Cast<double>(result.grads);
  for (double& v : analytic) v -= kGradStart;
  EXPECT_TRUE(GradientMatches(
      [&](const std::vector<double>& v) {
        return testing::Dot(w, ReferenceMlp(v, x_d));
      },
      params, analytic, tolerance));
}

// Three blocks in a row, as a model runs them: with checkpoints the caches hold
// nothing between the forward and the backward pass.
TEST(RecomputeTest, StackHoldsLessMemory) {
  auto ctx = MakeContext();
  constexpr int kDepth = 3;
  auto held_bytes = [&](bool checkpoint) {
    std::vector<std::unique_ptr<MlpBlock>> blocks;
    std::vector<std::unique_ptr<RecomputeBlock>> wrappers;
    std::vector<Block*> stack;
    for (int i = 0; i < kDepth; ++i) {
      blocks.push_back(std::make_unique<MlpBlock>(40 + 10 * i));
      wrappers.push_back(std::make_unique<RecomputeBlock>(*blocks.back()));
      stack.push_back(checkpoint ? static_cast<Block*>(wrappers.back().get())
                                 : blocks.back().get());
    }
    // Layer inputs (kept by the caller either way) and the caches.
    std::vector<std::vector<float>> activations(kDepth + 1);
    activations[0] = RandomUniformVector(kRows * kDim, 7);
    std::vector<BlockCache> caches(kDepth);
    for (int i = 0; i < kDepth; ++i) {
      activations[i + 1].resize(kRows * kDim);
      EXPECT_TRUE(
          stack[i]
              ->Forward(*ctx,
                        TensorView<const float>(activations[i].data(), kShape),
                        TensorView<float>(activations[i + 1].data(), kShape),
                        &caches[i])
              .ok());
    }
    int64_t bytes = 0;
    for (const BlockCache& cache : caches) bytes += cache.HeldBytes();
    std::vector<float> grad = RandomUniformVector(kRows * kDim, 8),
                       d_x(kRows * kDim);
    for (int i = kDepth - 1; i >= 0; --i) {
      EXPECT_TRUE(
          stack[i]
              ->Backward(
                  *ctx, TensorView<const float>(activations[i].data(), kShape),
                  caches[i], TensorView<const float>(grad.data(), kShape),
                  TensorView<float>(d_x.data(), kShape))
              .ok());
      grad = d_x;
    }
    return std::make_pair(bytes, grad);
  };
  const auto [plain_bytes, plain_grad] = held_bytes(false);
  const auto [checkpoint_bytes, checkpoint_grad] = held_bytes(true);
  EXPECT_EQ(plain_bytes,
            kDepth * 2 * kRows * kHidden * static_cast<int64_t>(sizeof(float)));
  EXPECT_EQ(checkpoint_bytes, 0);
  EXPECT_EQ(checkpoint_grad, plain_grad);
}

void ExpectInvalid(const absl::Status& status, const std::string& fragment) {
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(std::string(status.message()).find(fragment), std::string::npos)
      << "message \"" << status.message() << "\" lacks \"" << fragment << "\"";
}

TEST(RecomputeTest, BadInputsAreErrors) {
  auto ctx = MakeContext();
  MlpBlock block(50);
  RecomputeBlock recompute(block);
  std::vector<float> x(kRows * kDim), y(kRows * kDim), d_x(kRows * kDim);
  const TensorView<const float> x_view(x.data(), kShape);
  BlockCache cache;
  ExpectInvalid(
      recompute.Forward(
          *ctx, TensorView<const float>(x.data(), kShape, Device::Cuda()),
          TensorView<float>(y.data(), kShape), &cache),
      "RecomputeBlock: x is on cuda");
  ExpectInvalid(recompute.Forward(*ctx, x_view,
                                  TensorView<float>(nullptr, kShape), &cache),
                "RecomputeBlock: y has null data");
  ExpectInvalid(recompute.Backward(*ctx, x_view, cache,
                                   TensorView<const float>(nullptr, kShape),
                                   TensorView<float>(d_x.data(), kShape)),
                "RecomputeBlock: d_y has null data");
  ExpectInvalid(recompute.Backward(
                    *ctx, x_view, cache, x_view,
                    TensorView<float>(d_x.data(), {kBatch, kLength, 2},
                                      Strides{kLength * kDim, kDim, 2, 0})),
                "RecomputeBlock: d_x must have unit stride");
  // The wrapped block's own checks still apply: a 3-channel output from a
  // 4-channel MLP.
  ExpectInvalid(
      recompute.Forward(*ctx, x_view, TensorView<float>(y.data(), {kRows, 3}),
                        &cache),
      "LinearForward");
}

}  // namespace
}  // namespace ftx
