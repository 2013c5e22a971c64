// T5 relative position bias (Raffel et al. 2020), as x-transformers'
// RelativePositionBias (rel_pos_bias=True; 0.26.6 and 1.0.0 agree): a learned
// per-head score bias that depends on the bucketed query-key distance,
//   bias[h, l, s] = scale * W[bucket(s - q_l), h],   q_l = query_offset + l,
// added to the scaled scores through AttentionInputs::head_bias (see
// attention/full.h). With rel = s - q_l and n = -rel (how far back the key is):
//   non-causal: nb = num_buckets / 2, base = (n < 0) nb, n = |n|;
//   causal:     nb = num_buckets,     base = 0,          n = max(n, 0);
//   max_exact = nb / 2 (integer division);
//   bucket = base + n                                        if n < max_exact,
//   bucket = base + min(nb - 1, max_exact + trunc(log(n / max_exact)
//            / log(max_distance / max_exact) * (nb - max_exact)))   otherwise.
// The logarithm term is evaluated in float32 exactly as PyTorch does, so
// distances on a bucket boundary land where x-transformers puts them.
// W is "relative_attention_bias.weight" [num_buckets, H] (nn.Embedding over
// the full bucket count), initialised N(0, 1); x-transformers passes
// scale = sqrt(dim_head) (the bias is added to dots already scaled by
// dim_head^-0.5) and shares one module between all layers: compute the bias
// once per forward, give it to every layer, and sum the layers' d_head_bias
// before one Backward.
//
// Query positions: x-transformers 0.26.6 and 1.0.0 count queries and keys from
// 0 (query_offset = 0), which misaligns them when keys are longer (memories);
// later versions use q_l = S - L + l, i.e. query_offset = S - L, which cached
// decoding needs too.
//
// Gradient convention: Backward accumulates d_W (+=); the bias has no input.
#ifndef FTX_LAYERS_T5_RELATIVE_BIAS_H_
#define FTX_LAYERS_T5_RELATIVE_BIAS_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "attention/attention.h"
#include "kernels/base/context.h"

namespace ftx {

struct T5RelativeBiasConfig {
  int64_t heads = 0;  // H
  bool causal = false;
  int64_t num_buckets = 32;    // rel_pos_num_buckets
  int64_t max_distance = 128;  // rel_pos_max_distance
  float scale = 1.0f;          // x-transformers: sqrt(dim_head)
};

class T5RelativeBias {
 public:
  // InvalidArgument unless heads >= 1, num_buckets <= max_distance (as
  // x-transformers asserts) and the buckets leave max_exact >= 1 (num_buckets
  // >= 2 causal, >= 4 non-causal).
  static absl::StatusOr<T5RelativeBias> Create(
      const T5RelativeBiasConfig& config);

  // x-transformers' scale for a head dimension: dim_head ** 0.5.
  static float XTransformersScale(int64_t dim_head);

  // The bucket of key position minus query position `relative_position`
  // (_relative_position_bucket), for a valid configuration.
  static int64_t Bucket(int64_t relative_position, bool causal,
                        int64_t num_buckets, int64_t max_distance);

  const T5RelativeBiasConfig& config() const { return config_; }
  std::vector<ParamShape> ParamShapes() const {
    return {{"relative_attention_bias.weight",
             {config_.num_buckets, config_.heads}}};
  }

  // W ~ N(0, 1) from the Philox stream of `seed`. weight: [num_buckets, H].
  absl::Status InitParams(const Context& ctx, TensorView<float> weight,
                          uint64_t seed) const;

  // bias[h, l, s] = scale * W[bucket(s - query_offset - l), h].
  // weight: [num_buckets, H]; bias: [H, L, S] (written).
  absl::Status Forward(const Context& ctx, TensorView<const float> weight,
                       TensorView<float> bias, int64_t query_offset = 0) const;

  // d_W[bucket(s - q_l), h] += scale * d_bias[h, l, s] (+=).
  // d_bias: [H, L, S]; d_weight: [num_buckets, H].
  absl::Status Backward(const Context& ctx, TensorView<const float> d_bias,
                        TensorView<float> d_weight,
                        int64_t query_offset = 0) const;

 private:
  explicit T5RelativeBias(const T5RelativeBiasConfig& config)
      : config_(config) {}

  absl::Status CheckArguments(const char* op, const Context& ctx,
                              const char* weight_name,
                              TensorView<const float> weight,
                              TensorView<const float> bias) const;
  // The bucket of every relative position s - q_l, at index s - l + L - 1
  // ([L + S - 1] entries).
  std::vector<int32_t> BucketTable(int64_t queries, int64_t keys,
                                   int64_t query_offset) const;

  T5RelativeBiasConfig config_;
};

}  // namespace ftx

#endif  // FTX_LAYERS_T5_RELATIVE_BIAS_H_
