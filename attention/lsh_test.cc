// Hashing and Hamming k-means helpers (attention/lsh.h) against the scalar
// references (kernels/reference/clustered_ref.h): SIMPLE-LSH hashes and
// Reformer buckets on strided inputs, k-means assignments/counts/centroids
// (exact integer equality, with padding, empty clusters and every iteration
// count), structural properties, seeded choices and bad inputs.
#include "attention/lsh.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <set>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/reference/clustered_ref.h"
#include "tests/util/attention_data.h"
#include "tests/util/random.h"

namespace ftx {
namespace {

using ::ftx::testing::AttentionCase;
using ::ftx::testing::AttentionData;
using ::ftx::testing::RandomNormalVector;

class LshTest : public ::testing::Test {
 protected:
  void SetUp() override { ctx_ = Context::Create({.num_threads = 3}).value(); }
  std::unique_ptr<Context> ctx_;
};

// Double-precision x . plane[:E] - plane[E] of bit b.
double Margin(const std::vector<double>& x, int64_t offset, int64_t dim,
              const std::vector<float>& planes, int64_t b) {
  double dot = 0;
  for (int64_t e = 0; e < dim; ++e)
    dot += x[offset + e] * planes[b * (dim + 1) + e];
  return dot - planes[b * (dim + 1) + dim];
}

TEST_F(LshTest, SimpleLshHashesMatchReference) {
  const AttentionCase cases[] = {
      {1, 1, 1, 1, 1, 1}, {2, 17, 1, 3, 5, 1}, {1, 33, 1, 2, 16, 1}};
  for (const AttentionCase& c : cases) {
    const AttentionData data(c, 5, 3, -2, 2);
    const std::vector<double> x = AttentionData::Dense(data.queries());
    for (int64_t bits : {1, 7, 32, 63}) {
      for (bool bias : {true, false}) {
        std::vector<float> planes =
            RandomNormalVector(bits * (c.e + 1), 9 + bits);
        if (!bias) {
          for (int64_t b = 0; b < bits; ++b) planes[b * (c.e + 1) + c.e] = 0.0f;
        }
        std::vector<int64_t> hashes(c.n * c.h * c.l, -1);
        Tensor scratch;
        ASSERT_TRUE(ComputeSimpleLshHashes(
                        *ctx_, data.queries(),
                        TensorView<const float>(planes.data(), {bits, c.e + 1}),
                        scratch,
                        TensorView<int64_t>(hashes.data(), {c.n, c.h, c.l}))
                        .ok());
        int64_t mismatches = 0;
        for (int64_t n = 0; n < c.n; ++n) {
          for (int64_t h = 0; h < c.h; ++h) {
            for (int64_t l = 0; l < c.l; ++l) {
              const int64_t offset = ((n * c.l + l) * c.h + h) * c.e;
              const int64_t expected = reference::SimpleLshHash(
                  x.data() + offset, c.e, planes.data(), bits);
              const int64_t actual = hashes[(n * c.h + h) * c.l + l];
              for (int64_t b = 0; b < bits; ++b) {
                if (((expected ^ actual) >> b) & 1) {
                  // Float and double may only disagree on a bit at the plane
                  // itself.
                  EXPECT_LT(std::fabs(Margin(x, offset, c.e, planes, b)), 1e-5);
                  ++mismatches;
                }
              }
              EXPECT_EQ(actual >> bits, 0) << "bits past `bits` are set";
            }
          }
        }
        EXPECT_LE(mismatches, 1) << "bits " << bits;
      }
    }
  }
}

TEST_F(LshTest, HashBitsAreSidesOfAffinePlanes) {
  // Plane b = (e_b, offset b / 4): bit b is x_b > b / 4.
  const int64_t E = 6;
  std::vector<float> planes(E * (E + 1), 0.0f);
  for (int64_t b = 0; b < E; ++b) {
    planes[b * (E + 1) + b] = 1.0f;
    planes[b * (E + 1) + E] = 0.25f * b;
  }
  const std::vector<float> x = {0.5f, 0.1f, 0.6f, 0.3f, 2.0f, -1.0f};
  std::vector<int64_t> hash(1);
  Tensor scratch;
  ASSERT_TRUE(ComputeSimpleLshHashes(
                  *ctx_, TensorView<const float>(x.data(), {1, 1, 1, E}),
                  TensorView<const float>(planes.data(), {E, E + 1}), scratch,
                  TensorView<int64_t>(hash.data(), {1, 1, 1}))
                  .ok());
  // 0.5 > 0, 0.1 <= 0.25, 0.6 > 0.5, 0.3 <= 0.75, 2.0 > 1.0, -1.0 <= 1.25.
  EXPECT_EQ(hash[0], 0b010101);
}

TEST_F(LshTest, AngularBucketsMatchReferenceAndPointAtPlanes) {
  const AttentionCase c{2, 19, 1, 3, 7, 1};
  const AttentionData data(c, 15, 2);
  const std::vector<double> x = AttentionData::Dense(data.queries());
  for (int64_t bits : {1, 4, 63}) {
    const std::vector<float> planes = RandomNormalVector(bits * c.e, 3 + bits);
    std::vector<int32_t> buckets(c.n * c.h * c.l, -1);
    Tensor scratch;
    ASSERT_TRUE(ComputeAngularBuckets(
                    *ctx_, data.queries(),
                    TensorView<const float>(planes.data(), {bits, c.e}),
                    scratch,
                    TensorView<int32_t>(buckets.data(), {c.n, c.h, c.l}))
                    .ok());
    for (int64_t n = 0; n < c.n; ++n) {
      for (int64_t h = 0; h < c.h; ++h) {
        for (int64_t l = 0; l < c.l; ++l) {
          const int64_t offset = ((n * c.l + l) * c.h + h) * c.e;
          EXPECT_EQ(buckets[(n * c.h + h) * c.l + l],
                    reference::AngularBucket(x.data() + offset, c.e,
                                             planes.data(), bits));
        }
      }
    }
  }
  // With planes = the identity, x = +-e_b lands in bucket b or bits + b.
  const int64_t E = 4;
  std::vector<float> identity(E * E, 0.0f);
  for (int64_t b = 0; b < E; ++b) identity[b * E + b] = 1.0f;
  const std::vector<float> points = {0, 0, 3, 0, 0, -2, 0, 0, 0, 0, 0, 0};
  std::vector<int32_t> buckets(3);
  Tensor scratch;
  ASSERT_TRUE(ComputeAngularBuckets(
                  *ctx_, TensorView<const float>(points.data(), {1, 3, 1, E}),
                  TensorView<const float>(identity.data(), {E, E}), scratch,
                  TensorView<int32_t>(buckets.data(), {1, 1, 3}))
                  .ok());
  EXPECT_EQ(buckets,
            (std::vector<int32_t>{2, E + 1, 0}));  // zero vector: first maximum
}

// Hashes [N, H, L] scattered around a few random codes with some flipped bits.
std::vector<int64_t> ClusteredHashes(int64_t count, int64_t bits, int64_t codes,
                                     uint64_t seed) {
  const int64_t mask = static_cast<int64_t>((uint64_t{1} << bits) - 1);
  std::vector<int64_t> centers(codes);
  for (int64_t c = 0; c < codes; ++c) {
    centers[c] =
        static_cast<int64_t>((uint64_t{RandomBits(seed, 1, 2 * c)} << 32) |
                             RandomBits(seed, 1, 2 * c + 1)) &
        mask;
  }
  std::vector<int64_t> hashes(count);
  for (int64_t i = 0; i < count; ++i) {
    int64_t hash = centers[RandomBits(seed, 2, i) % codes];
    for (int flip = 0; flip < 3; ++flip) {
      hash ^= int64_t{1} << (RandomBits(seed, 3 + flip, i) % bits);
    }
    hashes[i] = hash & mask;
  }
  return hashes;
}

TEST_F(LshTest, HammingKMeansMatchesReference) {
  struct Case {
    int64_t n, h, l, clusters, bits;
    std::vector<int64_t> lengths;
  };
  const Case cases[] = {{1, 1, 1, 1, 1, {}},
                        {2, 3, 17, 4, 63, {17, 9}},
                        {3, 2, 33, 5, 8, {0, 33, 2}},
                        {1, 4, 64, 7, 31, {}}};
  for (const Case& c : cases) {
    const std::vector<int64_t> hashes =
        ClusteredHashes(c.n * c.h * c.l, c.bits, 4, 77);
    for (int64_t iterations : {0, 1, 2, 10}) {
      // A repeated initial position leaves a cluster empty: the reseed rule
      // runs too.
      std::vector<int64_t> initial =
          ChooseCentroidIndices(iterations, c.clusters, c.l);
      if (c.clusters > 2) initial[1] = initial[0];
      LengthMask lengths{c.lengths};
      std::vector<int32_t> assignment(c.n * c.h * c.l),
          counts(c.n * c.h * c.clusters);
      std::vector<int64_t> centroids(c.n * c.h * c.clusters);
      const uint64_t seed = 1234 + iterations;
      ASSERT_TRUE(
          HammingKMeans(
              *ctx_, TensorView<const int64_t>(hashes.data(), {c.n, c.h, c.l}),
              lengths, initial,
              {.iterations = iterations, .bits = c.bits, .reseed_seed = seed},
              TensorView<int32_t>(assignment.data(), {c.n, c.h, c.l}),
              TensorView<int32_t>(counts.data(), {c.n, c.h, c.clusters}),
              TensorView<int64_t>(centroids.data(), {c.n, c.h, c.clusters}))
              .ok());
      for (int64_t n = 0; n < c.n; ++n) {
        for (int64_t h = 0; h < c.h; ++h) {
          const int64_t sequence = n * c.h + h;
          std::vector<int32_t> expected(c.l);
          std::vector<int64_t> expected_centroids(c.clusters);
          reference::HammingKMeans(hashes.data() + sequence * c.l, c.l,
                                   lengths.Length(n, c.l), initial, iterations,
                                   c.bits, seed, sequence, expected.data(),
                                   expected_centroids.data());
          EXPECT_EQ(
              std::vector<int32_t>(assignment.begin() + sequence * c.l,
                                   assignment.begin() + (sequence + 1) * c.l),
              expected)
              << "n " << n << " h " << h << " iterations " << iterations;
          EXPECT_EQ(std::vector<int64_t>(
                        centroids.begin() + sequence * c.clusters,
                        centroids.begin() + (sequence + 1) * c.clusters),
                    expected_centroids);
          std::vector<int32_t> expected_counts(c.clusters, 0);
          for (int32_t a : expected) {
            if (a >= 0) ++expected_counts[a];
          }
          EXPECT_EQ(std::vector<int32_t>(
                        counts.begin() + sequence * c.clusters,
                        counts.begin() + (sequence + 1) * c.clusters),
                    expected_counts);
        }
      }
    }
  }
}

TEST_F(LshTest, KMeansRecoversSeparatedGroupsAndSkipsPadding) {
  // Three groups of identical hashes, far apart; one initial position per
  // group.
  const int64_t L = 12;
  const std::vector<int64_t> codes = {0x0, 0x3FFFF, 0xFFFC0000};
  std::vector<int64_t> hashes(L);
  std::vector<int32_t> group(L);
  for (int64_t l = 0; l < L; ++l) {
    group[l] = static_cast<int32_t>((l * 7) % 3);
    hashes[l] = codes[group[l]];
  }
  const std::vector<int64_t> initial = {1, 0, 2};  // groups 1, 0, 2
  std::vector<int32_t> assignment(L), counts(3);
  std::vector<int64_t> centroids(3);
  LengthMask lengths{{10}};
  ASSERT_TRUE(HammingKMeans(*ctx_,
                            TensorView<const int64_t>(hashes.data(), {1, 1, L}),
                            lengths, initial, {.iterations = 10, .bits = 32},
                            TensorView<int32_t>(assignment.data(), {1, 1, L}),
                            TensorView<int32_t>(counts.data(), {1, 1, 3}),
                            TensorView<int64_t>(centroids.data(), {1, 1, 3}))
                  .ok());
  const int32_t cluster_of_group[3] = {1, 0, 2};
  int32_t total = 0;
  for (int64_t l = 0; l < L; ++l) {
    EXPECT_EQ(assignment[l], l < 10 ? cluster_of_group[group[l]] : -1) << l;
  }
  for (int c = 0; c < 3; ++c) {
    EXPECT_EQ(centroids[c], codes[group[initial[c]]]);
    total += counts[c];
  }
  EXPECT_EQ(total, 10);
}

TEST_F(LshTest, EmptyClustersAreReseededFromTheSeed) {
  const int64_t L = 8, C = 3, bits = 20;
  const std::vector<int64_t> hashes(L, 0x5);  // everything in one cluster
  const auto run = [&](uint64_t seed) {
    std::vector<int32_t> assignment(L), counts(C);
    std::vector<int64_t> centroids(C);
    EXPECT_TRUE(HammingKMeans(
                    *ctx_, TensorView<const int64_t>(hashes.data(), {1, 1, L}),
                    {}, {0, 1, 2},
                    {.iterations = 3, .bits = bits, .reseed_seed = seed},
                    TensorView<int32_t>(assignment.data(), {1, 1, L}),
                    TensorView<int32_t>(counts.data(), {1, 1, C}),
                    TensorView<int64_t>(centroids.data(), {1, 1, C}))
                    .ok());
    EXPECT_EQ(counts, (std::vector<int32_t>{L, 0, 0}));
    return centroids;
  };
  const std::vector<int64_t> a = run(7), b = run(7), other = run(8);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, other);
  EXPECT_EQ(a[0], 0x5);
  for (int64_t c = 1; c < C; ++c) {
    EXPECT_EQ(a[c],
              ReseedCentroid(7, 0, 1, c, C, bits));  // the last update round
    EXPECT_GE(a[c], 0);
    EXPECT_LT(a[c], int64_t{1} << bits);
  }
}

TEST_F(LshTest, ChooseCentroidIndicesIsSeededDistinctAndUniform) {
  const std::vector<int64_t> a = ChooseCentroidIndices(3, 10, 40);
  EXPECT_EQ(a, ChooseCentroidIndices(3, 10, 40));
  EXPECT_NE(a, ChooseCentroidIndices(4, 10, 40));
  EXPECT_EQ(std::set<int64_t>(a.begin(), a.end()).size(), 10u);
  for (int64_t i : a) {
    EXPECT_GE(i, 0);
    EXPECT_LT(i, 40);
  }
  EXPECT_EQ(ChooseCentroidIndices(1, 5, 5).size(), 5u);
  // Each position is picked with probability count / range = 1/4.
  std::vector<int> hits(8, 0);
  const int trials = 4000;
  for (int t = 0; t < trials; ++t) {
    for (int64_t i : ChooseCentroidIndices(t, 2, 8)) ++hits[i];
  }
  for (int count : hits) EXPECT_NEAR(count / double(trials), 0.25, 0.03);
}

TEST_F(LshTest, CombineSeedsDependsOnBothSeeds) {
  EXPECT_EQ(CombineSeeds(1, 2), CombineSeeds(1, 2));
  EXPECT_NE(CombineSeeds(1, 2), CombineSeeds(2, 1));
  EXPECT_NE(CombineSeeds(0, 0), CombineSeeds(0, 1));
  EXPECT_NE(CombineSeeds(0, 0), CombineSeeds(1, 0));
}

TEST_F(LshTest, BadInputsAreErrors) {
  std::vector<float> buffer(4096);
  std::vector<int64_t> hashes(64);
  Tensor scratch;
  const TensorView<const float> x(buffer.data(), {1, 4, 2, 3});
  const TensorView<int64_t> hash_view(hashes.data(), {1, 2, 4});
  // bits > 63.
  absl::Status status = ComputeSimpleLshHashes(
      *ctx_, x, TensorView<const float>(buffer.data(), {64, 4}), scratch,
      hash_view);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("64 rows (bits)"), std::string::npos)
      << status;
  // Planes without the offset column.
  status = ComputeSimpleLshHashes(
      *ctx_, x, TensorView<const float>(buffer.data(), {8, 3}), scratch,
      hash_view);
  EXPECT_NE(status.message().find("planes must be [bits, 4]"),
            std::string::npos)
      << status;
  // Wrong output shape.
  status = ComputeSimpleLshHashes(
      *ctx_, x, TensorView<const float>(buffer.data(), {8, 4}), scratch,
      TensorView<int64_t>(hashes.data(), {1, 4, 2}));
  EXPECT_NE(status.message().find("hashes must be a contiguous [1, 2, 4]"),
            std::string::npos)
      << status;
  // Non-unit inner stride.
  status = ComputeSimpleLshHashes(
      *ctx_,
      TensorView<const float>(buffer.data(), {1, 4, 2, 3}, {48, 12, 6, 2}),
      TensorView<const float>(buffer.data(), {8, 4}), scratch, hash_view);
  EXPECT_NE(status.message().find("unit stride"), std::string::npos) << status;
  // Null data.
  status = ComputeAngularBuckets(
      *ctx_, TensorView<const float>(nullptr, {1, 4, 2, 3}),
      TensorView<const float>(buffer.data(), {8, 3}), scratch,
      TensorView<int32_t>(nullptr, {1, 2, 4}));
  EXPECT_NE(status.message().find("x has null data"), std::string::npos)
      << status;

  std::vector<int32_t> assignment(8), counts(2);
  std::vector<int64_t> centroids(2);
  const auto kmeans = [&](const std::vector<int64_t>& initial, int64_t bits,
                          const LengthMask& lengths) {
    return HammingKMeans(*ctx_,
                         TensorView<const int64_t>(hashes.data(), {1, 2, 4}),
                         lengths, initial, {.iterations = 2, .bits = bits},
                         TensorView<int32_t>(assignment.data(), {1, 2, 4}),
                         TensorView<int32_t>(counts.data(), {1, 2, 1}),
                         TensorView<int64_t>(centroids.data(), {1, 2, 1}));
  };
  EXPECT_NE(kmeans({4}, 8, {}).message().find("initial_indices[0] = 4"),
            std::string::npos);
  EXPECT_NE(kmeans({0}, 64, {}).message().find("bits = 64"), std::string::npos);
  EXPECT_NE(kmeans({0}, 8, LengthMask{{5}}).message().find("lengths[0] = 5"),
            std::string::npos);
  EXPECT_NE(kmeans({}, 8, {}).message().find("at least one centroid"),
            std::string::npos);
  EXPECT_NE(kmeans({0, 1}, 8, {})
                .message()
                .find("counts must be a contiguous [1, 2, 2]"),
            std::string::npos);
}

}  // namespace
}  // namespace ftx
