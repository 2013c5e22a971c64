// The Block interface of layer wrappers, and activation checkpointing
// ("recompute in backward") for any Block.
//
// Block: a differentiable map y = f(x), x [B, T, C_in] -> y [B, T, C_out], that
// holds its own parameter and gradient views (an attention block, a
// feed-forward, a reversible branch, ...). Forward with a cache keeps what
// Backward needs; with a null cache it keeps nothing (inference). Backward
// takes the same x and that cache. Gradient convention: d_x written (=), the
// block's parameter gradients (+=).
//
// RecomputeBlock is torch.utils.checkpoint as linformer-pytorch uses it
// (checkpoint_level "C1": one checkpoint per layer; "C2": C1 plus one per head,
// i.e. wrap the per-head blocks too, nesting is allowed): Forward runs the
// wrapped block without a cache, and Backward re-runs its Forward with a cache,
// then its Backward. Between Forward and Backward only the input lives, and
// that is the caller's x (ftx backward signatures take the inputs, as torch's
// checkpoint keeps a reference to them): the wrapper's own cache holds no
// tensor. The recomputed activations live only during Backward. Gradients equal
// the wrapped block's bit for bit when its Forward is deterministic (ftx
// dropout is seeded, so it is). Unlike linformer-pytorch's C1, masks work:
// blocks carry them as state.
#ifndef FTX_LAYERS_RECOMPUTE_H_
#define FTX_LAYERS_RECOMPUTE_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor.h"
#include "kernels/base/tensor_view.h"

namespace ftx {

// What a Block's Forward keeps for its Backward. Blocks size the tensors on
// first use and may reuse them while the shapes stay the same; blocks that wrap
// others keep the wrapped blocks' caches in `children`.
struct BlockCache {
  std::vector<Tensor> saved;
  std::vector<BlockCache> children;

  // Bytes of every saved tensor here and in the children: the activation memory
  // held between Forward and Backward.
  int64_t HeldBytes() const;
};

class Block {
 public:
  virtual ~Block() = default;

  // x: [B, T, C_in]; y: [B, T, C_out]. `cache` may be null (inference).
  virtual absl::Status Forward(const Context& ctx, TensorView<const float> x,
                               TensorView<float> y, BlockCache* cache) = 0;

  // `cache` comes from Forward on the same x and parameters. d_y: [B, T,
  // C_out]; d_x: [B, T, C_in] written (=); parameter gradients accumulated
  // (+=).
  virtual absl::Status Backward(const Context& ctx, TensorView<const float> x,
                                const BlockCache& cache,
                                TensorView<const float> d_y,
                                TensorView<float> d_x) = 0;
};

// Activation checkpointing of `inner`, which must outlive the wrapper.
class RecomputeBlock final : public Block {
 public:
  explicit RecomputeBlock(Block& inner) : inner_(inner) {}

  // y = inner(x); the wrapped block keeps nothing, the cache stays empty.
  absl::Status Forward(const Context& ctx, TensorView<const float> x,
                       TensorView<float> y, BlockCache* cache) override;

  // Re-runs inner.Forward(x) with a temporary cache, then inner.Backward. d_x
  // (=), the inner parameter gradients (+=).
  absl::Status Backward(const Context& ctx, TensorView<const float> x,
                        const BlockCache& cache, TensorView<const float> d_y,
                        TensorView<float> d_x) override;

 private:
  Block& inner_;
};

}  // namespace ftx

#endif  // FTX_LAYERS_RECOMPUTE_H_
