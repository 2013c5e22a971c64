// Benchmark of layers/reversible: activation memory held between forward and
// backward (BlockCache::HeldBytes after Forward) and the time of one forward +
// backward, against the depth, for the reconstructing stack (kReconstruct) and
// the plain two-stream stack that stores its activations (kStoreActivations).
// Every branch is a feed-forward block Linear(C, 4C) -> GELU -> Linear(4C, C)
// with B = 2, T = 256, C = 128, on all hardware threads.
//
//   bazel run -c opt //layers:reversible_bench
#include <cstdint>
#include <memory>
#include <vector>

#include "attention/attention.h"
#include "benchmark/benchmark.h"
#include "kernels/activation/activation.h"
#include "kernels/base/context.h"
#include "kernels/base/status_macros.h"
#include "kernels/base/tensor.h"
#include "kernels/linear/linear.h"
#include "layers/reversible.h"
#include "tests/util/random.h"

namespace ftx {
namespace {

constexpr int64_t kBatch = 2, kLength = 256, kDim = 128, kHidden = 4 * kDim;

// y = W2 gelu(W1 x + b1) + b2; the cache keeps W1 x + b1 and the GELU output.
class FeedForwardBranch final : public Block {
 public:
  explicit FeedForwardBranch(uint64_t seed)
      : w1_(testing::RandomUniformVector(kHidden * kDim, seed, -0.05, 0.05)),
        b1_(kHidden, 0.0f),
        w2_(testing::RandomUniformVector(kDim * kHidden, seed + 1, -0.05,
                                         0.05)),
        b2_(kDim, 0.0f),
        d_w1_(w1_.size()),
        d_b1_(b1_.size()),
        d_w2_(w2_.size()),
        d_b2_(b2_.size()) {}

  absl::Status Forward(const Context& ctx, TensorView<const float> x,
                       TensorView<float> y, BlockCache* cache) override {
    BlockCache& keep = cache != nullptr ? *cache : scratch_;
    keep.saved.resize(2);
    const Shape hidden_shape{x.NumElements() / kDim, kHidden};
    for (Tensor& tensor : keep.saved) {
      FTX_RETURN_IF_ERROR(EnsureTensor(tensor, hidden_shape, ctx.device()));
    }
    FTX_RETURN_IF_ERROR(LinearForward(ctx, x, View(w1_, {kHidden, kDim}),
                                      View(b1_, {kHidden}),
                                      keep.saved[0].view<float>()));
    FTX_RETURN_IF_ERROR(Activate(ctx, Activation::kGelu,
                                 keep.saved[0].view<const float>(),
                                 keep.saved[1].view<float>()));
    return LinearForward(ctx, keep.saved[1].view<const float>(),
                         View(w2_, {kDim, kHidden}), View(b2_, {kDim}), y);
  }

  absl::Status Backward(const Context& ctx, TensorView<const float> x,
                        const BlockCache& cache, TensorView<const float> d_y,
                        TensorView<float> d_x) override {
    FTX_RETURN_IF_ERROR(
        EnsureTensor(d_hidden_, cache.saved[0].shape(), ctx.device()));
    const TensorView<float> d_h = d_hidden_.view<float>();
    FTX_RETURN_IF_ERROR(LinearBackward(
        ctx, cache.saved[1].view<const float>(), View(w2_, {kDim, kHidden}),
        d_y, d_h, Grad(d_w2_, {kDim, kHidden}), Grad(d_b2_, {kDim})));
    FTX_RETURN_IF_ERROR(ActivateBackward(
        ctx, Activation::kGelu, cache.saved[0].view<const float>(), d_h, d_h));
    return LinearBackward(ctx, x, View(w1_, {kHidden, kDim}), d_h, d_x,
                          Grad(d_w1_, {kHidden, kDim}), Grad(d_b1_, {kHidden}));
  }

 private:
  static TensorView<const float> View(const std::vector<float>& v,
                                      const Shape& shape) {
    return TensorView<const float>(v.data(), shape);
  }
  static TensorView<float> Grad(std::vector<float>& v, const Shape& shape) {
    return TensorView<float>(v.data(), shape);
  }

  std::vector<float> w1_, b1_, w2_, b2_, d_w1_, d_b1_, d_w2_, d_b2_;
  BlockCache scratch_;
  Tensor d_hidden_;
};

// range(0): depth; range(1): 0 = kReconstruct, 1 = kStoreActivations.
void BM_ReversibleForwardBackward(benchmark::State& state) {
  const int depth = static_cast<int>(state.range(0));
  const ReversibleMemory memory = state.range(1) == 0
                                      ? ReversibleMemory::kReconstruct
                                      : ReversibleMemory::kStoreActivations;
  const auto ctx = Context::Create({.num_threads = 0}).value();
  std::vector<std::unique_ptr<FeedForwardBranch>> branches;
  std::vector<ReversiblePair> pairs;
  for (int i = 0; i < 2 * depth; ++i) {
    branches.push_back(std::make_unique<FeedForwardBranch>(10 + 2 * i));
  }
  for (int l = 0; l < depth; ++l)
    pairs.push_back({branches[2 * l].get(), branches[2 * l + 1].get()});
  const auto sequence =
      ReversibleSequence::Create({.memory = memory}, pairs).value();
  const Shape shape{kBatch, kLength, kDim};
  const std::vector<float> x =
      testing::RandomUniformVector(kBatch * kLength * kDim, 1);
  const std::vector<float> d_y = testing::RandomUniformVector(x.size(), 2);
  std::vector<float> y(x.size()), d_x(x.size());
  const TensorView<const float> x_view(x.data(), shape);
  BlockCache cache;
  int64_t held_bytes = 0;
  for (auto _ : state) {
    absl::Status status = sequence->Forward(
        *ctx, x_view, TensorView<float>(y.data(), shape), &cache);
    held_bytes = cache.HeldBytes();
    if (status.ok()) {
      status = sequence->Backward(*ctx, x_view, cache,
                                  TensorView<const float>(d_y.data(), shape),
                                  TensorView<float>(d_x.data(), shape));
    }
    if (!status.ok()) state.SkipWithError(status.ToString().c_str());
    benchmark::DoNotOptimize(d_x.data());
  }
  state.counters["held_bytes"] = static_cast<double>(held_bytes);
  state.counters["held_MiB"] = held_bytes / (1024.0 * 1024.0);
  state.counters["threads"] = ctx->num_threads();
  state.SetLabel(memory == ReversibleMemory::kReconstruct ? "reversible"
                                                          : "plain");
}

BENCHMARK(BM_ReversibleForwardBackward)
    ->ArgNames({"depth", "store"})
    ->ArgsProduct({{1, 2, 4, 8, 16}, {0, 1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
}  // namespace ftx
