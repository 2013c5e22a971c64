// Reversible residual stack (RevNet coupling, Gomez et al. 2017), as
// performer-pytorch 1.1.4 and linear-attention-transformer 0.19.1
// ReversibleSequence (reversible.py):
//   x1 = x2 = x                                  (torch.cat([x, x], dim=-1))
//   for each pair (f, g):  y1 = x1 + f(x2),  y2 = x2 + g(y1)
//   y = y1 + y2 (performer, kSum)  or  (y1 + y2) / 2 (LAT, kMean)
// Every branch maps [B, T, C] -> [B, T, C]; any Block (attention block with its
// norm, feed-forward, ...) can be one.
//
// Memory (ReversibleMemory):
//   kReconstruct (the references' behaviour): Forward runs the branches without
//     caches and keeps only the last (y1, y2), 2 [B, T, C] tensors whatever the
//     depth. Backward walks the pairs from the last and rebuilds each pair's
//     inputs from its outputs, x2 = y2 - g(y1), x1 = y1 - f(x2), re-running
//     each branch forward with a temporary cache before its backward. The
//     rebuilt inputs carry float rounding, so gradients agree with
//     kStoreActivations to rounding, not bit for bit.
//   kStoreActivations: the plain two-stream computation with autograd-like
//   memory:
//     Forward keeps every pair's branch inputs (x2, y1) and branch caches;
//     Backward reads them. Same function, same gradients, memory linear in the
//     depth.
// The references also replay the RNG state around each branch (Deterministic);
// ftx branches are deterministic given their seeds, so nothing is replayed
// here.
//
// Gradient convention: d_x written (=), branch parameter gradients accumulated
// (+=).
#ifndef FTX_LAYERS_REVERSIBLE_H_
#define FTX_LAYERS_REVERSIBLE_H_

#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor.h"
#include "layers/recompute.h"

namespace ftx {

enum class ReversibleMerge {
  kSum,   // y1 + y2: performer-pytorch
  kMean,  // (y1 + y2) / 2: linear-attention-transformer
};

enum class ReversibleMemory { kReconstruct, kStoreActivations };

struct ReversibleConfig {
  ReversibleMerge merge = ReversibleMerge::kSum;
  ReversibleMemory memory = ReversibleMemory::kReconstruct;
};

// One coupling layer: f (performer: the attention branch) and g (the
// feed-forward). The blocks are not owned and must outlive the sequence.
struct ReversiblePair {
  Block* f = nullptr;
  Block* g = nullptr;
};

class ReversibleSequence final : public Block {
 public:
  // InvalidArgument for no pairs or a null branch.
  static absl::StatusOr<std::unique_ptr<ReversibleSequence>> Create(
      const ReversibleConfig& config, std::vector<ReversiblePair> pairs);

  const ReversibleConfig& config() const { return config_; }
  int depth() const { return static_cast<int>(pairs_.size()); }

  // x, y: [B, T, C]; y may alias x. cache may be null (inference).
  absl::Status Forward(const Context& ctx, TensorView<const float> x,
                       TensorView<float> y, BlockCache* cache) override;

  // d_y, d_x: [B, T, C] (d_x may alias d_y); d_x written (=), branch parameter
  // gradients (+=). `cache` must come from Forward of this sequence on x.
  absl::Status Backward(const Context& ctx, TensorView<const float> x,
                        const BlockCache& cache, TensorView<const float> d_y,
                        TensorView<float> d_x) override;

 private:
  ReversibleSequence(const ReversibleConfig& config,
                     std::vector<ReversiblePair> pairs)
      : config_(config), pairs_(std::move(pairs)) {}

  absl::Status BackwardReconstruct(const Context& ctx, const BlockCache& cache);
  absl::Status BackwardStored(const Context& ctx, const BlockCache& cache);

  ReversibleConfig config_;
  std::vector<ReversiblePair> pairs_;
  // Working tensors [B, T, C], allocated once per shape and reused: the two
  // streams, their gradients, one branch output and one branch input gradient.
  Tensor stream1_, stream2_, grad1_, grad2_, branch_out_, branch_grad_;
  // Caches of the re-run branches in kReconstruct backward (one pair at a
  // time).
  BlockCache f_cache_, g_cache_;
};

}  // namespace ftx

#endif  // FTX_LAYERS_REVERSIBLE_H_
