// Axial positional embedding (Ho et al. 2019, "Axial Attention"; Reformer), as
// the axial-positional-embedding package's AxialPositionalEmbedding(dim,
// axial_shape, axial_dims=None) used by performer-pytorch
// (axial_position_emb, shape (ceil(max_seq_len / 64), 64)) and
// linear-attention-transformer (use_axial_pos_emb, shape
// (ceil(max_seq_len / window), window)). Positions are laid out row-major on
// an R x K grid; position p = offset + t sits at row p / K, column p % K:
//   summed (axial_dims absent, both axes C wide):
//     pos[t] = W0[p / K] + W1[p % K]
//   concatenated (axial_dims = (C0, C1), C0 + C1 = C):
//     pos[t] = [W0[p / K] | W1[p % K]]
//   y[b, t] = x[b, t] + pos[t],  p < R K.
// Parameters, named as the package's state_dict: "weights_0" [1, R, 1, C0] and
// "weights_1" [1, 1, K, C1] (C0 = C1 = C when summed), initialised N(0, 1).
// The package always starts at position 0; `offset` lets cached generation
// continue a sequence. Positions past R K are InvalidArgument, where the
// package asserts.
//
// Gradient convention: the input gradient is d_y itself (y = x + pos), so
// Backward only accumulates d_W0 and d_W1 (+=).
#ifndef FTX_LAYERS_AXIAL_POSITIONS_H_
#define FTX_LAYERS_AXIAL_POSITIONS_H_

#include <array>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "attention/attention.h"
#include "kernels/base/context.h"

namespace ftx {

struct AxialPositionsConfig {
  int64_t dim = 0;                    // C
  std::array<int64_t, 2> shape = {};  // (R, K): max_seq_len = R K
  // (C0, C1) with C0 + C1 = C for concatenated axes; {0, 0} sums two C-wide
  // embeddings (the package's default, axial_dims=None).
  std::array<int64_t, 2> axial_dims = {};

  // performer-pytorch's default: shape (ceil(max_seq_len / 64), 64), summed.
  static AxialPositionsConfig Performer(int64_t dim, int64_t max_seq_len);
};

class AxialPositions {
 public:
  explicit AxialPositions(const AxialPositionsConfig& config)
      : config_(config) {}

  const AxialPositionsConfig& config() const { return config_; }
  bool summed() const {
    return config_.axial_dims[0] == 0 && config_.axial_dims[1] == 0;
  }
  // Width of axis 0 and 1: C when summed, else axial_dims.
  int64_t AxisDim(int axis) const {
    return summed() ? config_.dim : config_.axial_dims[axis];
  }
  int64_t max_seq_len() const { return config_.shape[0] * config_.shape[1]; }

  std::vector<ParamShape> ParamShapes() const {
    return {{"weights_0", {1, config_.shape[0], 1, AxisDim(0)}},
            {"weights_1", {1, 1, config_.shape[1], AxisDim(1)}}};
  }

  // W0, W1 ~ N(0, 1) from the Philox stream of `seed` (W1 continues W0's
  // sequence).
  absl::Status InitParams(const Context& ctx, TensorView<float> weights_0,
                          TensorView<float> weights_1, uint64_t seed) const;

  // table[t] = pos[offset + t]. table: [T, C].
  absl::Status Table(const Context& ctx, TensorView<const float> weights_0,
                     TensorView<const float> weights_1, int64_t offset,
                     TensorView<float> table) const;

  // x[b, t] += pos[offset + t], in place. x: [B, T, C].
  absl::Status Forward(const Context& ctx, TensorView<const float> weights_0,
                       TensorView<const float> weights_1, int64_t offset,
                       TensorView<float> x) const;

  // d_W0[r] += sum of d_y[b, t] (its first C0 columns) over b and the t on
  // row r; d_W1[k] likewise over column k (its last C1 columns). d_y: [B, T, C]
  // (Forward's output gradient) or [T, C] (Table's). Accumulated (+=).
  absl::Status Backward(const Context& ctx, int64_t offset,
                        TensorView<const float> d_y,
                        TensorView<float> d_weights_0,
                        TensorView<float> d_weights_1) const;

 private:
  absl::Status CheckConfig(const char* op, const Context& ctx) const;
  // `prefix` names gradients ("d_") in the messages.
  absl::Status CheckWeights(const char* op, const char* prefix,
                            TensorView<const float> weights_0,
                            TensorView<const float> weights_1) const;
  absl::Status CheckRange(const char* op, int64_t offset, int64_t length) const;

  AxialPositionsConfig config_;
};

}  // namespace ftx

#endif  // FTX_LAYERS_AXIAL_POSITIONS_H_
