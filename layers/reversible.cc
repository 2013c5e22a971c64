#include "layers/reversible.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "attention/attention.h"
#include "kernels/base/status_macros.h"
#include "kernels/base/validate.h"
#include "kernels/elementwise/elementwise.h"

namespace ftx {
namespace {

constexpr char kOp[] = "ReversibleSequence";

// Prefixes a branch's error with where in the stack it happened.
absl::Status InBranch(absl::Status status, int pair, const char* branch) {
  if (status.ok()) return status;
  return absl::Status(status.code(),
                      absl::StrCat(kOp, ": pair ", pair, " branch ", branch,
                                   ": ", status.message()));
}

// dst = src (Scale by exactly 1 copies, strided views included).
absl::Status Copy(const Context& ctx, TensorView<const float> src,
                  TensorView<float> dst) {
  return Scale(ctx, 1.0f, src, dst);
}

}  // namespace

absl::StatusOr<std::unique_ptr<ReversibleSequence>> ReversibleSequence::Create(
    const ReversibleConfig& config, std::vector<ReversiblePair> pairs) {
  if (pairs.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": needs at least one (f, g) pair"));
  }
  for (size_t i = 0; i < pairs.size(); ++i) {
    if (pairs[i].f == nullptr || pairs[i].g == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(kOp, ": pair ", i, " has a null ",
                       pairs[i].f == nullptr ? "f" : "g", " branch"));
    }
  }
  return std::unique_ptr<ReversibleSequence>(
      new ReversibleSequence(config, std::move(pairs)));
}

absl::Status ReversibleSequence::Forward(const Context& ctx,
                                         TensorView<const float> x,
                                         TensorView<float> y,
                                         BlockCache* cache) {
  FTX_RETURN_IF_ERROR(CheckSameShapes(kOp, ctx, "x", x, Named("y", y)));
  const Shape& shape = x.shape();
  const Device device = ctx.device();
  const bool store =
      cache != nullptr && config_.memory == ReversibleMemory::kStoreActivations;
  const int64_t depth = pairs_.size();
  TensorView<float> s1, s2;  // the streams x1 -> y1 and x2 -> y2
  if (cache != nullptr) {
    cache->saved.resize(store ? 2 * depth : 2);
    cache->children.resize(store ? 2 * depth : 0);
  }
  if (cache != nullptr && !store) {
    FTX_RETURN_IF_ERROR(EnsureTensor(cache->saved[0], shape, device));
    FTX_RETURN_IF_ERROR(EnsureTensor(cache->saved[1], shape, device));
    s1 = cache->saved[0].view<float>();
    s2 = cache->saved[1].view<float>();
  } else {
    FTX_RETURN_IF_ERROR(EnsureTensor(stream1_, shape, device));
    FTX_RETURN_IF_ERROR(EnsureTensor(stream2_, shape, device));
    s1 = stream1_.view<float>();
    s2 = stream2_.view<float>();
  }
  FTX_RETURN_IF_ERROR(EnsureTensor(branch_out_, shape, device));
  const TensorView<float> out = branch_out_.view<float>();
  FTX_RETURN_IF_ERROR(Copy(ctx, x, s1));
  FTX_RETURN_IF_ERROR(Copy(ctx, x, s2));
  for (int64_t l = 0; l < depth; ++l) {
    TensorView<const float> f_input = s2, g_input = s1;
    BlockCache* f_cache = nullptr;
    BlockCache* g_cache = nullptr;
    if (store) {
      FTX_RETURN_IF_ERROR(EnsureTensor(cache->saved[2 * l], shape, device));
      FTX_RETURN_IF_ERROR(EnsureTensor(cache->saved[2 * l + 1], shape, device));
      FTX_RETURN_IF_ERROR(Copy(ctx, s2, cache->saved[2 * l].view<float>()));
      f_input = cache->saved[2 * l].view<const float>();
      g_input = cache->saved[2 * l + 1].view<const float>();
      f_cache = &cache->children[2 * l];
      g_cache = &cache->children[2 * l + 1];
    }
    FTX_RETURN_IF_ERROR(
        InBranch(pairs_[l].f->Forward(ctx, f_input, out, f_cache), l, "f"));
    FTX_RETURN_IF_ERROR(Add(ctx, s1, out, s1));
    if (store) {
      FTX_RETURN_IF_ERROR(Copy(ctx, s1, cache->saved[2 * l + 1].view<float>()));
    }
    FTX_RETURN_IF_ERROR(
        InBranch(pairs_[l].g->Forward(ctx, g_input, out, g_cache), l, "g"));
    FTX_RETURN_IF_ERROR(Add(ctx, s2, out, s2));
  }
  FTX_RETURN_IF_ERROR(Add(ctx, s1, s2, y));
  if (config_.merge == ReversibleMerge::kMean) {
    FTX_RETURN_IF_ERROR(Scale(ctx, 0.5f, y, y));
  }
  return absl::OkStatus();
}

absl::Status ReversibleSequence::Backward(const Context& ctx,
                                          TensorView<const float> x,
                                          const BlockCache& cache,
                                          TensorView<const float> d_y,
                                          TensorView<float> d_x) {
  FTX_RETURN_IF_ERROR(
      CheckSameShapes(kOp, ctx, "x", x, Named("d_y", d_y), Named("d_x", d_x)));
  const bool store = config_.memory == ReversibleMemory::kStoreActivations;
  const size_t depth = pairs_.size();
  const size_t expected_saved = store ? 2 * depth : 2;
  const size_t expected_children = store ? 2 * depth : 0;
  bool cache_matches = cache.saved.size() == expected_saved &&
                       cache.children.size() == expected_children;
  for (size_t i = 0; cache_matches && i < cache.saved.size(); ++i) {
    cache_matches = cache.saved[i].shape() == x.shape() &&
                    cache.saved[i].dtype() == DType::kF32 &&
                    cache.saved[i].device() == ctx.device();
  }
  if (!cache_matches) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": the cache does not come from Forward of this sequence (",
        store ? "kStoreActivations" : "kReconstruct", ", depth ", depth,
        ") with a cache on x ", x.shape().ToString()));
  }
  const Shape& shape = x.shape();
  const Device device = ctx.device();
  for (Tensor* tensor : {&grad1_, &grad2_, &branch_out_, &branch_grad_}) {
    FTX_RETURN_IF_ERROR(EnsureTensor(*tensor, shape, device));
  }
  // Both halves of the merged output receive d_y (sum) or d_y / 2 (mean).
  const float merge_scale =
      config_.merge == ReversibleMerge::kMean ? 0.5f : 1.0f;
  FTX_RETURN_IF_ERROR(Scale(ctx, merge_scale, d_y, grad1_.view<float>()));
  FTX_RETURN_IF_ERROR(Scale(ctx, merge_scale, d_y, grad2_.view<float>()));
  FTX_RETURN_IF_ERROR(store ? BackwardStored(ctx, cache)
                            : BackwardReconstruct(ctx, cache));
  // x feeds both streams.
  return Add(ctx, grad1_.view<const float>(), grad2_.view<const float>(), d_x);
}

absl::Status ReversibleSequence::BackwardReconstruct(const Context& ctx,
                                                     const BlockCache& cache) {
  FTX_RETURN_IF_ERROR(
      EnsureTensor(stream1_, cache.saved[0].shape(), ctx.device()));
  FTX_RETURN_IF_ERROR(
      EnsureTensor(stream2_, cache.saved[1].shape(), ctx.device()));
  const TensorView<float> s1 = stream1_.view<float>(),
                          s2 = stream2_.view<float>();
  const TensorView<float> d1 = grad1_.view<float>(), d2 = grad2_.view<float>();
  const TensorView<float> out = branch_out_.view<float>();
  const TensorView<float> branch_grad = branch_grad_.view<float>();
  FTX_RETURN_IF_ERROR(Copy(ctx, cache.saved[0].view<const float>(), s1));
  FTX_RETURN_IF_ERROR(Copy(ctx, cache.saved[1].view<const float>(), s2));
  // Invariant at the top of step l: (s1, s2) = (y1, y2) and (d1, d2) = their
  // gradients.
  for (int l = static_cast<int>(pairs_.size()) - 1; l >= 0; --l) {
    Block& f = *pairs_[l].f;
    Block& g = *pairs_[l].g;
    FTX_RETURN_IF_ERROR(InBranch(g.Forward(ctx, s1, out, &g_cache_), l, "g"));
    FTX_RETURN_IF_ERROR(Axpy(ctx, -1.0f, out, s2));  // x2 = y2 - g(y1)
    FTX_RETURN_IF_ERROR(
        InBranch(g.Backward(ctx, s1, g_cache_, d2, branch_grad), l, "g"));
    FTX_RETURN_IF_ERROR(
        Add(ctx, d1, branch_grad, d1));  // dL/dy1 through y2 as well
    FTX_RETURN_IF_ERROR(InBranch(f.Forward(ctx, s2, out, &f_cache_), l, "f"));
    FTX_RETURN_IF_ERROR(Axpy(ctx, -1.0f, out, s1));  // x1 = y1 - f(x2)
    FTX_RETURN_IF_ERROR(
        InBranch(f.Backward(ctx, s2, f_cache_, d1, branch_grad), l, "f"));
    FTX_RETURN_IF_ERROR(Add(ctx, d2, branch_grad, d2));  // dL/dx2; dL/dx1 = d1
  }
  return absl::OkStatus();
}

absl::Status ReversibleSequence::BackwardStored(const Context& ctx,
                                                const BlockCache& cache) {
  const TensorView<float> d1 = grad1_.view<float>(), d2 = grad2_.view<float>();
  const TensorView<float> branch_grad = branch_grad_.view<float>();
  for (int l = static_cast<int>(pairs_.size()) - 1; l >= 0; --l) {
    const TensorView<const float> x2 = cache.saved[2 * l].view<const float>();
    const TensorView<const float> y1 =
        cache.saved[2 * l + 1].view<const float>();
    FTX_RETURN_IF_ERROR(
        InBranch(pairs_[l].g->Backward(ctx, y1, cache.children[2 * l + 1], d2,
                                       branch_grad),
                 l, "g"));
    FTX_RETURN_IF_ERROR(Add(ctx, d1, branch_grad, d1));
    FTX_RETURN_IF_ERROR(InBranch(
        pairs_[l].f->Backward(ctx, x2, cache.children[2 * l], d1, branch_grad),
        l, "f"));
    FTX_RETURN_IF_ERROR(Add(ctx, d2, branch_grad, d2));
  }
  return absl::OkStatus();
}

}  // namespace ftx
