#include "layers/recompute.h"

#include "kernels/base/status_macros.h"
#include "kernels/base/validate.h"

namespace ftx {

int64_t BlockCache::HeldBytes() const {
  int64_t bytes = 0;
  for (const Tensor& tensor : saved)
    bytes += static_cast<int64_t>(tensor.nbytes());
  for (const BlockCache& child : children) bytes += child.HeldBytes();
  return bytes;
}

absl::Status RecomputeBlock::Forward(const Context& ctx,
                                     TensorView<const float> x,
                                     TensorView<float> y, BlockCache* cache) {
  constexpr char kOp[] = "RecomputeBlock";
  FTX_RETURN_IF_ERROR(CheckRowsView(kOp, "x", x, ctx));
  FTX_RETURN_IF_ERROR(CheckRowsView(kOp, "y", y, ctx));
  if (cache != nullptr) {
    cache->saved.clear();
    cache->children.clear();
  }
  return inner_.Forward(ctx, x, y, nullptr);
}

absl::Status RecomputeBlock::Backward(const Context& ctx,
                                      TensorView<const float> x,
                                      const BlockCache& cache,
                                      TensorView<const float> d_y,
                                      TensorView<float> d_x) {
  constexpr char kOp[] = "RecomputeBlock";
  FTX_RETURN_IF_ERROR(CheckRowsView(kOp, "x", x, ctx));
  FTX_RETURN_IF_ERROR(CheckRowsView(kOp, "d_y", d_y, ctx));
  FTX_RETURN_IF_ERROR(CheckRowsView(kOp, "d_x", d_x, ctx));
  // The recomputed output is not needed, only the cache; it is as large as d_y.
  FTX_ASSIGN_OR_RETURN(Tensor recomputed_y,
                       Tensor::Create(DType::kF32, d_y.shape(), ctx.device()));
  BlockCache recomputed;
  FTX_RETURN_IF_ERROR(
      inner_.Forward(ctx, x, recomputed_y.view<float>(), &recomputed));
  return inner_.Backward(ctx, x, recomputed, d_y, d_x);
}

}  // namespace ftx
