// Product-key memory (Lample et al. 2019, "Large Memory Layers with Product
// Keys"), as lucidrains product-key-memory PKM, which
// linear-attention-transformer 0.19.1 puts in place of the feed-forward of its
// pkm_layers with the package defaults (LAT's pkm_num_keys is not passed on).
// Two releases, one computation up to the query norm; for x [B, T, C] and
// sub-key width d:
//   q = x Wq^T                      Wq [2 H d, C], no bias; channel
//                                   (p, h, e) = p H d + h d + e, p in {0, 1}
//   q = Norm(q)                     kLayerNorm: LayerNorm(d) per (p, h)
//                                   vector, eps 1e-5 (0.3.0 default
//                                   use_layernorm = True);
//                                   kBatchNormRunning: BatchNorm1d(2 H d) per
//                                   channel with its running statistics,
//                                   (q - mean) / sqrt(var + 1e-5) * w + b
//                                   (0.1.10, eval mode); in training mode
//                                   (0.1.10 train()) mean and the biased
//                                   var are those of the R = B T rows of
//                                   the batch, and the running statistics
//                                   are updated in place as torch does:
//                                   running_mean = 0.9 running_mean +
//                                   0.1 mean, running_var = 0.9
//                                   running_var + 0.1 var R / (R - 1)
//                                   (momentum 0.1, unbiased variance)
//   s[p, h, n] = q[p, h] . keys[h, n, p]            keys [H, K, 2, d]
//   (v_p, i_p) = topk_k(s[p, h, :])                 per half p
//   z[a * k + c] = v_0[a] + v_1[c],  index = i_0[a] * K + i_1[c]
//   (z', j) = topk_k(z)             the k best of the k^2 combinations
//   w = softmax(z')
//   out[b, t] = sum_h sum_k w[h, k] * values[index[h, j[h, k]]]
//                                   values [K^2, C] (nn.EmbeddingBag 'sum')
// Versions: 0.1.10 (pinned for LAT 0.19.1 in tools/fixtures/setup_venv.sh):
// PKM(dim, heads=4, num_keys=128, topk=32, dim_head=256), d = dim_head / 2,
// norm "norm.fn.{weight,bias,running_mean,running_var}" [2 H d]. 0.3.0:
// PKM(dim, heads=4, num_keys=128, topk=32, dim_head=128), d = dim_head,
// "norm.{weight,bias}" [d]. Both: "to_queries.weight" [2 H d, C], "keys"
// [H, K, 2, d], "values.weight" [K^2, C]. Initialisation: keys ~ N(0, 1/d) and
// values ~ N(0, 1/C) (the package's init_ over the last axis), to_queries as
// torch.nn.Linear, norm gains 1, biases 0, running mean 0 and variance 1.
// Buffers (ParamShape::trainable false; no gradient, never optimised) of
// kBatchNormRunning: "norm.fn.running_mean", "norm.fn.running_var" [2 H d] and
// BatchNorm1d's step counter "norm.fn.num_batches_tracked", an int64 scalar in
// torch kept as a float [1] here: initialised to 0 and incremented by 1 by
// every training-mode Forward, as torch does (it only feeds torch's momentum
// when momentum is None; PKM's is 0.1). Not supported: 0.1.10's input_mask;
// 0.3.0's options that are off by default (use_layernorm = False,
// pre_layernorm, differentiable_topk, concat_values_and_combine, norm_output,
// non_competitive_gates, gumbel noise, mem_trainable_mask). Dropouts are 0.
//
// Training-mode backward differentiates through the batch statistics:
//   d_q = inv_std / R (R g - sum_r g - q_hat sum_r g q_hat),  g = d_norm w.
// The top-k selections are piecewise constant: the backward differentiates
// through the selected scores only, like torch.topk's. Ties are broken by the
// lower index (torch leaves the order of ties unspecified).
// Forward and Backward reuse buffers held by the object: one call at a time.
// Gradient convention: d_x written (=); parameter gradients accumulated (+=);
// the buffers get none (Backward ignores the buffer views of its grads).
// CPU only (a CUDA context is Unimplemented).
#ifndef FTX_LAYERS_PRODUCT_KEY_MEMORY_H_
#define FTX_LAYERS_PRODUCT_KEY_MEMORY_H_

#include <cstdint>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "attention/attention.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor.h"
#include "kernels/base/tensor_view.h"
#include "layers/layernorm.h"

namespace ftx {

enum class PkmQueryNorm {
  kLayerNorm,         // product-key-memory 0.3.0
  kBatchNormRunning,  // product-key-memory 0.1.10 BatchNorm1d (train / eval)
};

struct ProductKeyMemoryConfig {
  int64_t dim = 0;         // C
  int64_t heads = 4;       // H
  int64_t num_keys = 128;  // K per half; K^2 memories
  int64_t topk = 32;       // k <= K
  int64_t key_dim = 128;   // d: 0.3.0 dim_head, 0.1.10 dim_head / 2
  PkmQueryNorm query_norm = PkmQueryNorm::kLayerNorm;
};

// Norm shapes: [d] for kLayerNorm, [2 H d] for kBatchNormRunning. The
// buffers (running statistics and step counter) exist for kBatchNormRunning
// only (empty views otherwise) and are never written by Backward.
template <typename T>
struct ProductKeyMemoryTensors {
  TensorView<T> to_queries;           // [2 H d, C]
  TensorView<T> norm_weight;          // [d] or [2 H d]
  TensorView<T> norm_bias;            // [d] or [2 H d]
  TensorView<T> keys;                 // [H, K, 2, d]
  TensorView<T> values;               // [K^2, C]
  TensorView<T> running_mean;         // [2 H d], kBatchNormRunning
  TensorView<T> running_var;          // [2 H d], kBatchNormRunning
  TensorView<T> num_batches_tracked;  // [1], kBatchNormRunning
};
using ProductKeyMemoryParams = ProductKeyMemoryTensors<const float>;
using ProductKeyMemoryGrads = ProductKeyMemoryTensors<float>;

// Training mode of Forward. For kBatchNormRunning the queries are
// normalised with the batch statistics, running_mean / running_var (the
// tensors of params.running_mean / running_var, [2 H d]) are updated in place
// and num_batches_tracked (params.num_batches_tracked's tensor, [1]) grows by
// 1; all three must be given. kLayerNorm computes the same in both modes
// (dropouts are 0) and takes no buffers.
struct ProductKeyMemoryTraining {
  bool training = false;
  TensorView<float> running_mean;         // [2 H d], kBatchNormRunning
  TensorView<float> running_var;          // [2 H d], kBatchNormRunning
  TensorView<float> num_batches_tracked;  // [1], kBatchNormRunning
};

// What Forward keeps for Backward (R = B * T rows).
struct ProductKeyMemoryCache {
  Tensor queries;       // [R, 2 H d], before the norm
  Tensor normalised;    // [R, 2 H d], after it
  LayerNormCache norm;  // kLayerNorm: statistics of the R 2 H vectors
  // kBatchNormRunning: the per-channel statistics Forward used, [2 H d]
  // (running or batch), and whether they were the batch's.
  bool batch_statistics = false;
  std::vector<double> mean, inverse_std;
  std::vector<int64_t> half_index;  // [R, H, 2, k]: i_p
  std::vector<int64_t> chosen;      // [R, H, k]: a * k + c of each pick
  std::vector<float> weights;       // [R, H, k]: softmax w
};

class ProductKeyMemory {
 public:
  // InvalidArgument for a size < 1 or topk > num_keys.
  static absl::StatusOr<ProductKeyMemory> Create(
      const ProductKeyMemoryConfig& config);

  const ProductKeyMemoryConfig& config() const { return config_; }

  // to_queries.weight, the norm's weight and bias, keys, values.weight, then
  // the buffers (trainable false; see above); in the order of
  // ProductKeyMemoryTensors.
  std::vector<ParamShape> ParamShapes() const;

  // The package's initialisation from `seed` (Philox streams 0: to_queries,
  // 1: keys, 2: values). CPU views.
  absl::Status InitParams(const Context& ctx, uint64_t seed,
                          const ProductKeyMemoryGrads& params) const;

  // x, y: [B, T, C] (y must not overlap x). cache may be null at inference.
  // Training mode with kBatchNormRunning needs B T >= 2 (torch: more than 1
  // value per channel) and the buffers to update; InvalidArgument otherwise.
  absl::Status Forward(const Context& ctx, const ProductKeyMemoryParams& params,
                       TensorView<const float> x, TensorView<float> y,
                       ProductKeyMemoryCache* cache,
                       const ProductKeyMemoryTraining& training = {});

  // d_y, d_x: [B, T, C]; d_x written (=); grads accumulated (+=). cache: from
  // Forward on this x.
  absl::Status Backward(const Context& ctx,
                        const ProductKeyMemoryParams& params,
                        const ProductKeyMemoryCache& cache,
                        TensorView<const float> x, TensorView<const float> d_y,
                        TensorView<float> d_x,
                        const ProductKeyMemoryGrads& grads);

 private:
  ProductKeyMemory(const ProductKeyMemoryConfig& config, LayerNormLayer norm)
      : config_(config), norm_(std::move(norm)) {}

  absl::Status CheckParams(absl::string_view prefix,
                           const ProductKeyMemoryParams& params) const;
  // kBatchNormRunning: saved.queries -> saved.normalised (rows x width) with
  // the running or the batch statistics (then updating the running ones).
  void NormaliseBatchNorm(const ProductKeyMemoryParams& params,
                          const ProductKeyMemoryTraining& training,
                          int64_t rows, int64_t width,
                          ProductKeyMemoryCache& saved) const;
  // kBatchNormRunning: d_normalised_ -> d_queries_ through the statistics.
  void BatchNormBackward(const ProductKeyMemoryParams& params,
                         const ProductKeyMemoryCache& cache, int64_t rows,
                         int64_t width);

  ProductKeyMemoryConfig config_;
  LayerNormLayer norm_;
  ProductKeyMemoryCache inference_cache_;  // Forward's state with no cache
  Tensor d_normalised_;                    // Backward's scratch [R, 2 H d]
  Tensor d_queries_;                       // Backward's scratch [R, 2 H d]
};

}  // namespace ftx

#endif  // FTX_LAYERS_PRODUCT_KEY_MEMORY_H_
