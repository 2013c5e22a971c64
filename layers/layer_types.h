// The block order of an x-transformers AttentionLayers stack (x-transformers
// 0.26.6 AttentionLayers.__init__, unchanged through 2.x): the sequence of
// layer types 'a' (self-attention), 'c' (cross-attention) and 'f'
// (feed-forward) that the stack runs in order.
//   default block: ('a', 'f'); cross_attend: ('a', 'c', 'f'); cross_attend
//                  and only_cross: ('c', 'f'); macaron prepends 'f'
//   custom_layers: the given sequence, as is (takes precedence)
//   par_ratio r (Press et al. 2020, "Improving Transformer Models by
//     Reordering their Sublayers"; integer, 1 < r <= depth * |block|):
//     par_depth = depth * |block|, block' = block without 'f',
//     par_attn = par_depth // r, depth_cut = 2 * par_depth // 3,
//     par_width = (depth_cut + depth_cut // par_attn) // par_attn,
//     par_block = block' + 'f' * (par_width - |block'|) (needs
//     |block'| <= par_width), then par_block * par_attn padded with 'f'
//     up to par_depth layers
//   sandwich_coef s (1 <= s <= depth): 'a' * s + block * (depth - s) + 'f' * s
//   otherwise: block * depth
// With macaron every feed-forward branch is scaled by 0.5 (x-transformers
// Scale(0.5, FeedForward)); feed_forward_scale carries that.
// The reference's asserts become InvalidArgument naming the option.
#ifndef FTX_LAYERS_LAYER_TYPES_H_
#define FTX_LAYERS_LAYER_TYPES_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace ftx {

enum class LayerType : char {
  kAttention = 'a',
  kCrossAttention = 'c',
  kFeedForward = 'f',
};

struct LayerTypesConfig {
  int64_t depth = 0;
  bool cross_attend = false;
  bool only_cross = false;
  bool macaron = false;
  std::optional<std::vector<LayerType>> custom_layers;
  std::optional<int64_t> par_ratio;
  std::optional<int64_t> sandwich_coef;
};

struct LayerPlan {
  std::vector<LayerType> types;
  // 0.5 with macaron (every 'f' branch output is halved), 1 otherwise.
  float feed_forward_scale = 1.0f;
};

// The x-transformers layer sequence for `config`. InvalidArgument for depth < 1
// (unless custom_layers is given), a par_ratio or sandwich_coef out of range,
// a block too large for par_ratio, only_cross without cross_attend, or empty
// custom_layers.
absl::StatusOr<LayerPlan> BuildLayerPlan(const LayerTypesConfig& config);

// "afaf" -> {kAttention, kFeedForward, ...}; InvalidArgument for any other
// character or an empty string.
absl::StatusOr<std::vector<LayerType>> ParseLayerTypes(absl::string_view text);

// {kAttention, kFeedForward} -> "af".
std::string LayerTypesToString(const std::vector<LayerType>& types);

// Number of layers of `type` (x-transformers num_attn_layers counts 'a').
int64_t CountLayers(const std::vector<LayerType>& types, LayerType type);

}  // namespace ftx

#endif  // FTX_LAYERS_LAYER_TYPES_H_
