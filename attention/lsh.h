// Locality-sensitive hashing and Hamming-space k-means shared by clustered
// attention (Vyas et al. 2020, "Fast Transformers with Clustered Attention")
// and Reformer attention (Kitaev et al. 2020), as fast-transformers 0.4.0
// computes them:
//   - SIMPLE-LSH (hashing/hash_cpu.cpp): for planes a: [bits, E + 1],
//       bit b of hash(x) = [x . a_b[:E] > a_b[E]],  packed as 1 << b into an
//       int64,
//     bits <= 63 (hash_bias = false zeroes the last plane column: cosine LSH);
//   - Lloyd k-means in Hamming space (clustering/hamming/cluster_cpu.cpp): the
//   centroids
//     start at the hashes of chosen query positions; assign = argmin_c
//     popcount(h ^ c) (the first minimum wins); update = bitwise majority vote
//     of the members (a tie gives 0); `iterations - 1` assign + update rounds,
//     then a final assign; queries past their sequence's length get cluster -1
//     and count nowhere;
//   - Reformer's angular LSH (attention/reformer_attention.py): for planes R:
//   [bits, E],
//       bucket(x) = argmax([x R^T, -x R^T]) in [0, 2 bits)  (the first maximum
//       wins).
// Differences from fast-transformers, all for reproducibility:
//   - an empty cluster gets a random centroid from a seeded Philox stream
//     (ReseedCentroid), where fast-transformers' CPU kernel draws it from an
//     unseeded std::mt19937(std::random_device()) (its CUDA kernel: curand with
//     seed 1234);
//   - the initial centroid positions come from ChooseCentroidIndices (a seeded
//     choice of distinct positions), where fast-transformers 0.4.0 draws them
//     with np.random.choice(L, clusters, replace=False) in Python
//     (clustering/hamming/__init__.py; the kernel's own "first `clusters`
//     hashes" initialisation is commented out); pass the same positions to
//     HammingKMeans to reproduce a run.
#ifndef FTX_ATTENTION_LSH_H_
#define FTX_ATTENTION_LSH_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "attention/mask.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor.h"
#include "kernels/base/tensor_view.h"

namespace ftx {

// Most bits an int64 SIMPLE-LSH hash holds (the sign bit stays clear).
inline constexpr int64_t kMaxLshBits = 63;

// Philox streams of the hashing randomness (the key is the call seed).
inline constexpr uint64_t kLshPlaneStream = 0x15A0;
inline constexpr uint64_t kCentroidChoiceStream = 0x15A1;
// Low 16 bits of the reseed stream; the (n, h) sequence index fills the bits
// above.
inline constexpr uint64_t kCentroidReseedTag = 0x15A2;

// One seed from two (splitmix64 finaliser of a ^ rotated b): mechanisms combine
// their `seed` option with AttentionInputs::seed, so a training loop that
// advances the input seed redraws the hashing randomness every step, as
// fast-transformers redraws it on every forward, while repeated calls with
// equal seeds hash identically.
uint64_t CombineSeeds(uint64_t a, uint64_t b);

// Makes `tensor` a zero-filled tensor of `dtype` and `shape` on `device`,
// reusing its memory when it already matches.
absl::Status EnsureTypedTensor(Tensor& tensor, DType dtype, const Shape& shape,
                               Device device);

// SIMPLE-LSH hashes of every vector of x.
//   x: [N, L, H, E] (strided in its leading axes), planes: [bits, E + 1] (row
//   stride
//   >= E + 1), hashes: [N, H, L] contiguous int64 (written).
// projection_scratch is resized to [H, N, L, bits] and reused across calls.
absl::Status ComputeSimpleLshHashes(const Context& ctx,
                                    TensorView<const float> x,
                                    TensorView<const float> planes,
                                    Tensor& projection_scratch,
                                    TensorView<int64_t> hashes);

// Reformer buckets of every vector of x.
//   x: [N, L, H, E], planes: [bits, E], buckets: [N, H, L] contiguous int32 in
//   [0, 2 bits) (written). projection_scratch is resized to [H, N, L, bits].
absl::Status ComputeAngularBuckets(const Context& ctx,
                                   TensorView<const float> x,
                                   TensorView<const float> planes,
                                   Tensor& projection_scratch,
                                   TensorView<int32_t> buckets);

// `count` distinct positions in [0, range), each subset equally likely: a
// partial Fisher-Yates shuffle driven by Philox(seed, kCentroidChoiceStream).
// Precondition: 0 <= count <= range.
std::vector<int64_t> ChooseCentroidIndices(uint64_t seed, int64_t count,
                                           int64_t range);

// The centroid that empty cluster `cluster` of sequence `sequence` (= n * H +
// h) gets in update round `round` (0-based): 64 Philox bits (words 2i and 2i +
// 1 of stream (sequence << 16) | kCentroidReseedTag, i = round * clusters +
// cluster, high word first) masked to the low `bits` bits.
int64_t ReseedCentroid(uint64_t seed, int64_t sequence, int64_t round,
                       int64_t cluster, int64_t clusters, int64_t bits);

struct HammingKMeansOptions {
  int64_t iterations = 10;  // >= 0; 0 and 1 both mean a single assignment
  int64_t bits = 63;        // low bits of the hashes that count, 1..63
  uint64_t reseed_seed = 0;
};

// Lloyd k-means of the hashes of every (n, h) sequence, as described above.
//   hashes: [N, H, L] int64; lengths: valid positions per batch item (empty =
//   all); initial_indices: [C] positions in [0, L) whose hashes start every
//   sequence's centroids; outputs (contiguous, written): assignment [N, H, L]
//   int32 (-1 past the length), counts [N, H, C] int32, centroids [N, H, C]
//   int64 (the final centroids).
absl::Status HammingKMeans(const Context& ctx, TensorView<const int64_t> hashes,
                           const LengthMask& lengths,
                           const std::vector<int64_t>& initial_indices,
                           const HammingKMeansOptions& options,
                           TensorView<int32_t> assignment,
                           TensorView<int32_t> counts,
                           TensorView<int64_t> centroids);

}  // namespace ftx

#endif  // FTX_ATTENTION_LSH_H_
