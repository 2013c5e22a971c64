#include "attention/lsh.h"

#include <algorithm>
#include <array>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "kernels/base/philox.h"
#include "kernels/base/status_macros.h"
#include "kernels/matmul/matmul.h"

namespace ftx {
namespace {

absl::Status CheckCpu(absl::string_view op, const Context& ctx) {
  if (ctx.device().type != DeviceType::kCpu) {
    return absl::UnimplementedError(
        absl::StrCat(op, ": only the CPU path exists"));
  }
  return absl::OkStatus();
}

template <typename T>
absl::Status CheckView(absl::string_view op, absl::string_view name,
                       const TensorView<T>& view, int rank) {
  if (view.rank() != rank) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", name, " must have rank ", rank, ", got shape ",
                     view.shape().ToString()));
  }
  if (view.data() == nullptr && view.NumElements() > 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", name, " has null data"));
  }
  if (view.device().type != DeviceType::kCpu) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", name, " must be in CPU memory"));
  }
  if (view.stride(rank - 1) != 1 && view.dim(rank - 1) > 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": ", name, " must have unit stride in its last axis"));
  }
  return absl::OkStatus();
}

template <typename T>
absl::Status CheckOutput(absl::string_view op, absl::string_view name,
                         const TensorView<T>& view, const Shape& expected) {
  FTX_RETURN_IF_ERROR(CheckView(op, name, view, expected.rank()));
  if (view.shape() != expected || !view.IsContiguous()) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": ", name, " must be a contiguous ", expected.ToString(),
        " tensor, got shape ", view.shape().ToString()));
  }
  return absl::OkStatus();
}

// Checks x [N, L, H, E] and planes [bits, E + extra_columns]; returns bits.
absl::Status CheckHashInputs(absl::string_view op,
                             const TensorView<const float>& x,
                             const TensorView<const float>& planes,
                             int64_t extra_columns, int64_t max_bits) {
  FTX_RETURN_IF_ERROR(CheckView(op, "x", x, 4));
  FTX_RETURN_IF_ERROR(CheckView(op, "planes", planes, 2));
  const int64_t columns = x.dim(3) + extra_columns;
  if (planes.dim(1) != columns) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": planes must be [bits, ", columns, "] for vectors of size ",
        x.dim(3), ", got shape ", planes.shape().ToString()));
  }
  if (planes.dim(0) < 1 || planes.dim(0) > max_bits) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": planes has ", planes.dim(0),
                     " rows (bits), expected 1 to ", max_bits));
  }
  return absl::OkStatus();
}

// scratch[h] [N, L, bits] = x[:, :, h, :] [N, L, E] planes[:, :E]^T.
absl::Status ProjectOnPlanes(const Context& ctx,
                             const TensorView<const float>& x,
                             const TensorView<const float>& planes,
                             Tensor& projection_scratch) {
  const int64_t N = x.dim(0), L = x.dim(1), H = x.dim(2), E = x.dim(3);
  const int64_t bits = planes.dim(0);
  FTX_RETURN_IF_ERROR(EnsureTypedTensor(projection_scratch, DType::kF32,
                                        {H, N, L, bits}, ctx.device()));
  const TensorView<float> projections = projection_scratch.view<float>();
  const TensorView<const float> directions = planes.Slice(1, 0, E);
  for (int64_t h = 0; h < H; ++h) {
    FTX_RETURN_IF_ERROR(MatMul(ctx, x.Select(2, h), directions,
                               projections.Select(0, h),
                               {.transpose_b = true}));
  }
  return absl::OkStatus();
}

// Popcount of a 64-bit word.
int HammingWeight(uint64_t x) { return __builtin_popcountll(x); }

// Index of the centroid nearest to `hash` (the first minimum).
int32_t NearestCentroid(int64_t hash, const int64_t* centroids,
                        int64_t clusters) {
  int best_distance = 65;
  int32_t best = 0;
  for (int64_t c = 0; c < clusters; ++c) {
    const int distance =
        HammingWeight(static_cast<uint64_t>(hash ^ centroids[c]));
    if (distance < best_distance) {
      best_distance = distance;
      best = static_cast<int32_t>(c);
    }
  }
  return best;
}

}  // namespace

uint64_t CombineSeeds(uint64_t a, uint64_t b) {
  uint64_t z = a ^ ((b << 29) | (b >> 35)) ^ (b * 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

absl::Status EnsureTypedTensor(Tensor& tensor, DType dtype, const Shape& shape,
                               Device device) {
  if (tensor.raw_data() != nullptr && tensor.shape() == shape &&
      tensor.dtype() == dtype && tensor.device() == device) {
    return absl::OkStatus();
  }
  FTX_ASSIGN_OR_RETURN(tensor, Tensor::Create(dtype, shape, device));
  return absl::OkStatus();
}

absl::Status ComputeSimpleLshHashes(const Context& ctx,
                                    TensorView<const float> x,
                                    TensorView<const float> planes,
                                    Tensor& projection_scratch,
                                    TensorView<int64_t> hashes) {
  constexpr absl::string_view kOp = "ComputeSimpleLshHashes";
  FTX_RETURN_IF_ERROR(CheckCpu(kOp, ctx));
  FTX_RETURN_IF_ERROR(CheckHashInputs(kOp, x, planes, 1, kMaxLshBits));
  const int64_t N = x.dim(0), L = x.dim(1), H = x.dim(2), E = x.dim(3);
  FTX_RETURN_IF_ERROR(CheckOutput(kOp, "hashes", hashes, {N, H, L}));
  FTX_RETURN_IF_ERROR(ProjectOnPlanes(ctx, x, planes, projection_scratch));
  const int64_t bits = planes.dim(0);
  const float* projections = projection_scratch.data<float>();
  ctx.pool().ParallelFor(N * H, [&](int64_t begin, int64_t end) {
    for (int64_t nh = begin; nh < end; ++nh) {
      const int64_t n = nh / H, h = nh % H;
      for (int64_t l = 0; l < L; ++l) {
        const float* row = projections + ((h * N + n) * L + l) * bits;
        int64_t hash = 0;
        for (int64_t b = 0; b < bits; ++b) {
          hash |= static_cast<int64_t>(row[b] > planes.at(b, E)) << b;
        }
        hashes.data()[nh * L + l] = hash;
      }
    }
  });
  return absl::OkStatus();
}

absl::Status ComputeAngularBuckets(const Context& ctx,
                                   TensorView<const float> x,
                                   TensorView<const float> planes,
                                   Tensor& projection_scratch,
                                   TensorView<int32_t> buckets) {
  constexpr absl::string_view kOp = "ComputeAngularBuckets";
  FTX_RETURN_IF_ERROR(CheckCpu(kOp, ctx));
  FTX_RETURN_IF_ERROR(CheckHashInputs(kOp, x, planes, 0, int64_t{1} << 30));
  const int64_t N = x.dim(0), L = x.dim(1), H = x.dim(2);
  FTX_RETURN_IF_ERROR(CheckOutput(kOp, "buckets", buckets, {N, H, L}));
  FTX_RETURN_IF_ERROR(ProjectOnPlanes(ctx, x, planes, projection_scratch));
  const int64_t bits = planes.dim(0);
  const float* projections = projection_scratch.data<float>();
  ctx.pool().ParallelFor(N * H, [&](int64_t begin, int64_t end) {
    for (int64_t nh = begin; nh < end; ++nh) {
      const int64_t n = nh / H, h = nh % H;
      for (int64_t l = 0; l < L; ++l) {
        const float* row = projections + ((h * N + n) * L + l) * bits;
        // argmax over [p_0 .. p_{bits-1}, -p_0 .. -p_{bits-1}], first maximum.
        int64_t best = 0;
        float best_value = row[0];
        for (int64_t b = 1; b < bits; ++b) {
          if (row[b] > best_value) {
            best_value = row[b];
            best = b;
          }
        }
        for (int64_t b = 0; b < bits; ++b) {
          if (-row[b] > best_value) {
            best_value = -row[b];
            best = bits + b;
          }
        }
        buckets.data()[nh * L + l] = static_cast<int32_t>(best);
      }
    }
  });
  return absl::OkStatus();
}

std::vector<int64_t> ChooseCentroidIndices(uint64_t seed, int64_t count,
                                           int64_t range) {
  std::vector<int64_t> positions(range);
  std::iota(positions.begin(), positions.end(), 0);
  for (int64_t i = 0; i < count; ++i) {
    const uint64_t draw = RandomBits(seed, kCentroidChoiceStream, i);
    const int64_t j =
        i + static_cast<int64_t>(draw % static_cast<uint64_t>(range - i));
    std::swap(positions[i], positions[j]);
  }
  positions.resize(count);
  return positions;
}

int64_t ReseedCentroid(uint64_t seed, int64_t sequence, int64_t round,
                       int64_t cluster, int64_t clusters, int64_t bits) {
  const uint64_t stream =
      (static_cast<uint64_t>(sequence) << 16) | kCentroidReseedTag;
  const uint64_t index = 2 * static_cast<uint64_t>(round * clusters + cluster);
  const uint64_t value =
      (static_cast<uint64_t>(RandomBits(seed, stream, index)) << 32) |
      RandomBits(seed, stream, index + 1);
  return static_cast<int64_t>(value & ((uint64_t{1} << bits) - 1));
}

absl::Status HammingKMeans(const Context& ctx, TensorView<const int64_t> hashes,
                           const LengthMask& lengths,
                           const std::vector<int64_t>& initial_indices,
                           const HammingKMeansOptions& options,
                           TensorView<int32_t> assignment,
                           TensorView<int32_t> counts,
                           TensorView<int64_t> centroids) {
  constexpr absl::string_view kOp = "HammingKMeans";
  FTX_RETURN_IF_ERROR(CheckCpu(kOp, ctx));
  FTX_RETURN_IF_ERROR(CheckView(kOp, "hashes", hashes, 3));
  if (!hashes.IsContiguous()) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": hashes must be contiguous"));
  }
  const int64_t N = hashes.dim(0), H = hashes.dim(1), L = hashes.dim(2);
  const int64_t C = static_cast<int64_t>(initial_indices.size());
  if (C < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": initial_indices must name at least one centroid"));
  }
  for (int64_t c = 0; c < C; ++c) {
    if (initial_indices[c] < 0 || initial_indices[c] >= L) {
      return absl::InvalidArgumentError(
          absl::StrCat(kOp, ": initial_indices[", c, "] = ", initial_indices[c],
                       " is outside [0, ", L, ")"));
    }
  }
  if (options.bits < 1 || options.bits > kMaxLshBits) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": bits = ", options.bits, " is outside [1, ", kMaxLshBits, "]"));
  }
  if (options.iterations < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": iterations = ", options.iterations, " must be >= 0"));
  }
  FTX_RETURN_IF_ERROR(lengths.Validate(kOp, "lengths", N, L));
  FTX_RETURN_IF_ERROR(CheckOutput(kOp, "assignment", assignment, {N, H, L}));
  FTX_RETURN_IF_ERROR(CheckOutput(kOp, "counts", counts, {N, H, C}));
  FTX_RETURN_IF_ERROR(CheckOutput(kOp, "centroids", centroids, {N, H, C}));

  const int64_t bits = options.bits;
  const int64_t mask =
      static_cast<int64_t>((uint64_t{1} << static_cast<uint64_t>(bits)) - 1);
  ctx.pool().ParallelFor(N * H, [&](int64_t begin, int64_t end) {
    // Per cluster: members and, per bit, how many members have it set.
    std::vector<int32_t> members(C);
    std::vector<std::array<int32_t, kMaxLshBits>> ones(C);
    for (int64_t nh = begin; nh < end; ++nh) {
      const int64_t valid = lengths.Length(nh / H, L);
      const int64_t* hash = hashes.data() + nh * L;
      int32_t* cluster = assignment.data() + nh * L;
      int64_t* centroid = centroids.data() + nh * C;
      for (int64_t c = 0; c < C; ++c)
        centroid[c] = hash[initial_indices[c]] & mask;
      std::fill(cluster, cluster + L, -1);
      const auto assign = [&] {
        for (int64_t l = 0; l < valid; ++l) {
          cluster[l] = NearestCentroid(hash[l] & mask, centroid, C);
        }
      };
      for (int64_t round = 0; round + 1 < options.iterations; ++round) {
        assign();
        std::fill(members.begin(), members.end(), 0);
        for (auto& row : ones) row.fill(0);
        for (int64_t l = 0; l < valid; ++l) {
          const int32_t c = cluster[l];
          ++members[c];
          for (int64_t b = 0; b < bits; ++b) ones[c][b] += (hash[l] >> b) & 1;
        }
        for (int64_t c = 0; c < C; ++c) {
          if (members[c] == 0) {
            centroid[c] =
                ReseedCentroid(options.reseed_seed, nh, round, c, C, bits);
            continue;
          }
          int64_t majority = 0;
          for (int64_t b = 0; b < bits; ++b) {
            majority |= static_cast<int64_t>(2 * ones[c][b] > members[c]) << b;
          }
          centroid[c] = majority;
        }
      }
      assign();
      int32_t* count = counts.data() + nh * C;
      std::fill(count, count + C, 0);
      for (int64_t l = 0; l < valid; ++l) ++count[cluster[l]];
    }
  });
  return absl::OkStatus();
}

}  // namespace ftx
