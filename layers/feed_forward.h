// Position-wise feed-forward block, as x-transformers 0.26.6 FeedForward (and
// the FeedForward of performer-pytorch and linear-attention-transformer, and
// fast-transformers' linear1 / activation / dropout / linear2, whose second
// dropout after linear2 is left to the caller), inner = int(dim * mult):
//   h = act(x W1^T + b1)        [..., inner]; or h = GluLayer(x) with glu
//   h = LayerNorm(h)            post_act_ln (torch LayerNorm(inner), eps 1e-5)
//   h = dropout(h)              training only
//   y = h W2^T + b2             [..., dim_out]
// act: relu_squared (relu(x)^2) takes precedence over swish (silu), which
// takes precedence over `activation` (gelu, the exact erf form, is the
// x-transformers / performer default; relu is fast-transformers'), exactly as
// x-transformers resolves ff_relu_squared / ff_swish. With glu the activation
// gates one half of a 2 * inner projection (layers/glu.h); glu_activated_half
// picks x-transformers' x * act(gate) (kSecond) or performer / LAT's
// act(x) * v (kFirst).
//
// Parameter names are x-transformers 0.26.6 state_dict keys relative to the
// FeedForward module, whose Sequential is `net` there (`ff` from 1.0.0):
//   net.0.0.weight    [inner, dim]       without glu
//   net.0.0.bias      [inner]            without glu, absent with no_bias
//   net.0.proj.weight [2 inner, dim]     with glu
//   net.0.proj.bias   [2 inner]          with glu, kept with no_bias: 0.26.6's
//                                        GLU Linear always has a bias
//   net.1.weight      [inner]            post_act_ln (net.1 is nn.Identity
//   net.1.bias        [inner]            otherwise, without parameters)
//   net.3.weight      [dim_out, inner]   (net.2 is the Dropout)
//   net.3.bias        [dim_out]          absent with no_bias
// performer / LAT call the two Linears w1 and w2 (w1 = net.0.0 or
// net.0.proj). Initialisation follows torch: Linears U(-1/sqrt(fan_in),
// 1/sqrt(fan_in)) for weight and bias, LayerNorm ones / zeros;
// zero_init_output sets net.3 to zero (x-transformers init_zero_).
//
// Dropout (probability p = `dropout`, only when the mode is training) keeps
// element (row * inner + column) of the flattened [R, inner] hidden tensor when
// RandomUniform(mode.seed, kFeedForwardDropoutStream, that index) >= p
// (kernels/base/philox.h) and scales it by 1 / (1 - p). The mask is thus the
// same for any chunking and thread count, and Backward regenerates it instead
// of storing it.
//
// chunks (performer / LAT ff_chunks, Chunk(chunks, ff, along_dim=1)) splits
// the R = B * T token rows of x (b-major) into pieces of ceil(R / chunks)
// rows, torch.chunk's sizes, and runs the block on one piece at a time;
// performer / LAT split T instead (B * ceil(T / chunks) rows a piece). The
// block is position-wise and each row gets the same arithmetic in any piece
// (kernels/matmul sums every output over k in one fixed order whatever the
// row count), so y and d_x are bitwise those of the unchunked block;
// parameter gradients add up the pieces in turn (float rounding differs).
// With more than one piece Forward saves no activations: Backward recomputes
// each piece's forward from x, then back-propagates it, so the activation
// buffers hold one piece (ActivationFloats). The block needs a CPU context
// when dropout is active or glu_activated_half is kFirst (CPU loops);
// otherwise it runs where its kernels run.
//
// Forward and Backward reuse buffers held by the object (allocated once per
// shape): one call at a time per object.
//
// Gradient convention: d_x is written (=); parameter gradients are accumulated
// (+=).
//
// Example:
//   FTX_ASSIGN_OR_RETURN(FeedForward ff, FeedForward::Create({.dim = C}));
//   FeedForwardCache cache;
//   FTX_RETURN_IF_ERROR(ff.Forward(ctx, params, x, {.training = true,
//                                  .seed = step}, y, &cache));
//   FTX_RETURN_IF_ERROR(ff.Backward(ctx, params, cache, x, d_y, d_x, grads));
#ifndef FTX_LAYERS_FEED_FORWARD_H_
#define FTX_LAYERS_FEED_FORWARD_H_

#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "attention/attention.h"
#include "kernels/activation/activation.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor.h"
#include "kernels/base/tensor_view.h"
#include "layers/glu.h"

namespace ftx {

// Philox stream of the dropout masks (element index row * inner + column).
inline constexpr uint64_t kFeedForwardDropoutStream = 0xFEEDF0;

struct FeedForwardConfig {
  int64_t dim = 0;      // C
  int64_t dim_out = 0;  // 0 means dim
  double mult = 4.0;    // inner = int(dim * mult)
  Activation activation = Activation::kGelu;
  bool swish = false;         // x-transformers ff_swish: silu
  bool relu_squared = false;  // x-transformers ff_relu_squared: relu(x)^2
  bool glu = false;
  GluActivatedHalf glu_activated_half = GluActivatedHalf::kSecond;
  bool post_act_ln = false;
  float dropout = 0.0f;  // in [0, 1)
  bool no_bias = false;
  bool zero_init_output = false;
  int64_t chunks = 1;  // ff_chunks, >= 1
};

// Training enables dropout; seed selects its mask.
struct FeedForwardMode {
  bool training = false;
  uint64_t seed = 0;
};

// Parameter (T = const float) or gradient / initialisation (T = float) views,
// in state_dict order. Absent parameters are empty views.
template <typename T>
struct FeedForwardTensors {
  TensorView<T> in_weight;    // net.0.0.weight or net.0.proj.weight
  TensorView<T> in_bias;      // net.0.0.bias or net.0.proj.bias
  TensorView<T> norm_weight;  // net.1.weight
  TensorView<T> norm_bias;    // net.1.bias
  TensorView<T> out_weight;   // net.3.weight
  TensorView<T> out_bias;     // net.3.bias
};
using FeedForwardParams = FeedForwardTensors<const float>;
using FeedForwardGrads = FeedForwardTensors<float>;

// What Forward keeps for Backward: the mode (so that Backward regenerates the
// same dropout mask) and, unless the forward ran in pieces, the activations of
// every row: the projection, the activation (and the LayerNorm output, mean
// and rstd with post_act_ln), the last one after dropout.
struct FeedForwardCache {
  int64_t rows = -1;  // R of the forward's x; -1 before any Forward
  FeedForwardMode mode;
  std::vector<Tensor> saved;  // empty when the forward ran in pieces
};

class FeedForward {
 public:
  // InvalidArgument for dim < 1, dim_out < 0, int(dim * mult) < 1, dropout
  // outside [0, 1), chunks < 1 or an activation outside the enum.
  static absl::StatusOr<FeedForward> Create(const FeedForwardConfig& config);

  const FeedForwardConfig& config() const { return config_; }
  int64_t inner_dim() const { return inner_; }
  int64_t dim_out() const { return dim_out_; }
  // The activation after x-transformers' precedence rules.
  Activation activation() const { return activation_; }

  // The parameters in state_dict order (see the names above).
  std::vector<ParamShape> ParamShapes() const;

  // torch initialisation from `seed` (Philox streams 0 and 1 for net.0, 2 and
  // 3 for net.3). CPU views; absent parameters are empty views.
  absl::Status InitParams(const Context& ctx, uint64_t seed,
                          const FeedForwardTensors<float>& params) const;

  // Rows per piece for an input of `rows` rows: ceil(rows / chunks).
  int64_t ChunkRows(int64_t rows) const;

  // Floats of activation buffers the layer and its cache hold for an input of
  // `rows` rows through Forward with a cache and Backward: per buffered row,
  // the projection (inner, 2 inner with glu), the activation (inner), with
  // post_act_ln the LayerNorm output (inner) and its mean and rstd (2), and
  // the backward's gradient of the hidden tensor (inner) plus, unchunked with
  // glu, of the projection (2 inner; a piece reuses its projection buffer).
  // Unchunked that is for all rows, in pieces for ChunkRows(rows) rows.
  int64_t ActivationFloats(int64_t rows) const;

  // x: [..., dim]; y: [..., dim_out] with the same leading axes, not
  // overlapping x. cache may be null at inference.
  absl::Status Forward(const Context& ctx, const FeedForwardParams& params,
                       TensorView<const float> x, const FeedForwardMode& mode,
                       TensorView<float> y, FeedForwardCache* cache);

  // d_y: [..., dim_out]; d_x: [..., dim] (=); grads: as params (+=). cache:
  // from Forward on this x (its mode is used again).
  absl::Status Backward(const Context& ctx, const FeedForwardParams& params,
                        const FeedForwardCache& cache,
                        TensorView<const float> x, TensorView<const float> d_y,
                        TensorView<float> d_x, const FeedForwardGrads& grads);

 private:
  // Views of the forward activations of n rows: T = float to write them,
  // const float to read them.
  template <typename T>
  struct RowBuffers {
    TensorView<T> projected;   // [n, inner] or [n, 2 inner] with glu
    TensorView<T> activated;   // [n, inner]
    TensorView<T> normalized;  // [n, inner], post_act_ln only
    TensorView<T> mean;        // [n], post_act_ln only
    TensorView<T> rstd;        // [n], post_act_ln only
  };

  FeedForward(const FeedForwardConfig& config, int64_t inner, int64_t dim_out,
              Activation activation, std::optional<GluLayer> glu)
      : config_(config),
        inner_(inner),
        dim_out_(dim_out),
        activation_(activation),
        glu_(std::move(glu)) {}

  bool DropoutActive(const FeedForwardMode& mode) const {
    return mode.training && config_.dropout > 0.0f;
  }
  // Checks parameter (prefix "") or gradient (prefix "d_") views against the
  // configuration.
  template <typename T>
  absl::Status CheckTensors(const Context& ctx,
                            const FeedForwardTensors<T>& tensors,
                            const char* prefix) const;
  absl::Status CheckMode(const Context& ctx, const FeedForwardMode& mode) const;
  // Makes `buffers` hold the forward activations of `rows` rows.
  absl::Status EnsureBuffers(const Context& ctx, int64_t rows,
                             std::vector<Tensor>& buffers) const;
  // Views of the first `rows` rows of buffers filled by EnsureBuffers.
  RowBuffers<float> BufferViews(std::vector<Tensor>& buffers,
                                int64_t rows) const;

  // The block on rows [row_offset, row_offset + n) of the input: x [n, dim];
  // y [n, dim_out], or an empty view to stop before the output projection
  // (Backward's recomputation).
  absl::Status ForwardRows(const Context& ctx, const FeedForwardParams& params,
                           TensorView<const float> x, int64_t row_offset,
                           const FeedForwardMode& mode,
                           const RowBuffers<float>& saved,
                           TensorView<float> y) const;
  // Its backward: d_hidden [n, inner] scratch; d_projected [n, 2 inner]
  // scratch with glu (may alias saved.projected), unused otherwise.
  absl::Status BackwardRows(const Context& ctx, const FeedForwardParams& params,
                            TensorView<const float> x, int64_t row_offset,
                            const FeedForwardMode& mode,
                            const RowBuffers<const float>& saved,
                            TensorView<const float> d_y,
                            TensorView<float> d_hidden,
                            TensorView<float> d_projected,
                            TensorView<float> d_x,
                            const FeedForwardGrads& grads) const;

  FeedForwardConfig config_;
  int64_t inner_;
  int64_t dim_out_;
  Activation activation_;
  std::optional<GluLayer> glu_;
  std::vector<Tensor> work_;  // forward buffers without a cache or in pieces
  Tensor d_hidden_;           // Backward's scratch
  Tensor d_projected_;        // Backward's scratch, unchunked glu only
};

}  // namespace ftx

#endif  // FTX_LAYERS_FEED_FORWARD_H_
