// Random-feature maps (fast-transformers 0.4.0 feature_maps): the orthogonal
// random matrices (QR convention, orthogonality, chi row/column norms), every
// map's forward against the double reference of its formula with a fixed omega,
// backward against central differences, the kernel each map approximates
// (statistically, fixed seeds), the redraw counter, and errors for bad input.
#include "attention/random_features.h"

#include <cmath>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/reference/favor_ref.h"
#include "tests/util/gradcheck.h"
#include "tests/util/random.h"
#include "tests/util/tolerance.h"

namespace ftx {
namespace {

using ::ftx::reference::FeatureShape;
using ::ftx::testing::AllNear;
using ::ftx::testing::Cast;
using ::ftx::testing::Dot;
using ::ftx::testing::GradientMatches;
using ::ftx::testing::RandomNormalVector;
using ::ftx::testing::RandomUniformVector;

// x [N, T, H, E] stored with `pad` extra floats per row, so every leading axis
// is strided.
class StridedInput {
 public:
  StridedInput(const FeatureShape& shape, uint64_t seed, double low = -1.0,
               double high = 1.0, int64_t pad = 3)
      : shape_(shape),
        pad_(pad),
        storage_(RandomUniformVector(
            shape.batch * shape.steps * shape.heads * (shape.qk_dim + pad),
            seed, low, high)) {}

  TensorView<const float> view() const { return View(); }
  TensorView<float> mutable_view() { return View(); }

  std::vector<double> Dense() const {
    const TensorView<const float> x = view();
    std::vector<double> dense;
    for (int64_t n = 0; n < x.dim(0); ++n)
      for (int64_t t = 0; t < x.dim(1); ++t)
        for (int64_t h = 0; h < x.dim(2); ++h)
          for (int64_t e = 0; e < x.dim(3); ++e)
            dense.push_back(x.at(n, t, h, e));
    return dense;
  }

 private:
  TensorView<float> View() const {
    const int64_t w = shape_.qk_dim + pad_;
    float* data = const_cast<float*>(storage_.data());
    return TensorView<float>(
        data, {shape_.batch, shape_.steps, shape_.heads, shape_.qk_dim},
        {shape_.steps * shape_.heads * w, shape_.heads * w, w, 1});
  }

  FeatureShape shape_;
  int64_t pad_;
  std::vector<float> storage_;
};

Shape ShapeOf(const FeatureShape& s, int64_t last) {
  return {s.batch, s.steps, s.heads, last};
}

int64_t Rows(const FeatureShape& s) { return s.batch * s.steps * s.heads; }

// One feature map under test: how to build it and its double reference.
struct MapCase {
  std::string label;
  std::function<std::unique_ptr<RandomFeatureMap>()> make;
  // reference(shape, x, omega) -> phi, all dense.
  std::function<std::vector<double>(const FeatureShape&,
                                    const std::vector<double>&,
                                    const std::vector<double>&)>
      reference;
};

std::vector<MapCase> MapCases(int64_t qk_dim) {
  const int64_t E = qk_dim;
  const double default_temp = 1.0 / std::sqrt(static_cast<double>(E));
  std::vector<MapCase> cases;
  cases.push_back({"RandomFourierFeatures n_dims=6",
                   [] {
                     return std::make_unique<RandomFourierFeatures>(
                         RandomFourierFeaturesOptions{.n_dims = 6});
                   },
                   [=](const FeatureShape& s, const std::vector<double>& x,
                       const std::vector<double>& w) {
                     std::vector<double> phi(Rows(s) * 6);
                     reference::RandomFourierFeatureMap<double>(
                         s, x.data(), w.data(), 3, 6, default_temp, phi.data());
                     return phi;
                   }});
  cases.push_back(
      {"RandomFourierFeatures n_dims=7 t=0.3",
       [] {
         return std::make_unique<RandomFourierFeatures>(
             RandomFourierFeaturesOptions{.n_dims = 7, .softmax_temp = 0.3f});
       },
       [=](const FeatureShape& s, const std::vector<double>& x,
           const std::vector<double>& w) {
         std::vector<double> phi(Rows(s) * 6);
         reference::RandomFourierFeatureMap<double>(s, x.data(), w.data(), 3, 7,
                                                    0.3f, phi.data());
         return phi;
       }});
  cases.push_back({"SmoothedRandomFourierFeatures n_dims=8 smoothing=0.5",
                   [] {
                     return std::make_unique<SmoothedRandomFourierFeatures>(
                         SmoothedRandomFourierFeaturesOptions{
                             .n_dims = 8, .smoothing = 0.5f});
                   },
                   [=](const FeatureShape& s, const std::vector<double>& x,
                       const std::vector<double>& w) {
                     std::vector<double> phi(Rows(s) * 7);
                     reference::SmoothedRandomFourierFeatureMap<double>(
                         s, x.data(), w.data(), 3, 8, default_temp, 0.5,
                         phi.data());
                     return phi;
                   }});
  for (bool stabilize : {false, true}) {
    cases.push_back(
        {std::string("FavorFeatureMap n_dims=10 stabilize=") +
             (stabilize ? "1" : "0"),
         [=] {
           return std::make_unique<FavorFeatureMap>(
               FavorFeatureMapOptions{.n_dims = 10, .stabilize = stabilize});
         },
         [=](const FeatureShape& s, const std::vector<double>& x,
             const std::vector<double>& w) {
           std::vector<double> phi(Rows(s) * 10);
           reference::FavorFeatureMap<double>(s, x.data(), w.data(), 5, 10,
                                              default_temp, stabilize,
                                              phi.data());
           return phi;
         }});
  }
  cases.push_back(
      {"FavorFeatureMap n_dims=5 t=0.7 stabilize",
       [] {
         return std::make_unique<FavorFeatureMap>(FavorFeatureMapOptions{
             .n_dims = 5, .softmax_temp = 0.7f, .stabilize = true});
       },
       [](const FeatureShape& s, const std::vector<double>& x,
          const std::vector<double>& w) {
         std::vector<double> phi(Rows(s) * 4);
         reference::FavorFeatureMap<double>(s, x.data(), w.data(), 2, 5, 0.7f,
                                            true, phi.data());
         return phi;
       }});
  cases.push_back({"GeneralizedRandomFeatures relu n_dims=9",
                   [] {
                     return std::make_unique<GeneralizedRandomFeatures>(
                         GeneralizedRandomFeaturesOptions{.n_dims = 9});
                   },
                   [](const FeatureShape& s, const std::vector<double>& x,
                      const std::vector<double>& w) {
                     std::vector<double> phi(Rows(s) * 9);
                     reference::GeneralizedRandomFeatureMap<double>(
                         s, x.data(), w.data(), 9, 1.0,
                         [](double v) { return v > 0 ? v : 0.0; }, phi.data());
                     return phi;
                   }});
  cases.push_back(
      {"GeneralizedRandomFeatures tanh t=0.5",
       [] {
         return std::make_unique<GeneralizedRandomFeatures>(
             GeneralizedRandomFeaturesOptions{.softmax_temp = 0.5f,
                                              .kernel_fn = Activation::kTanh});
       },
       [=](const FeatureShape& s, const std::vector<double>& x,
           const std::vector<double>& w) {
         std::vector<double> phi(Rows(s) * E);
         reference::GeneralizedRandomFeatureMap<double>(
             s, x.data(), w.data(), E, 0.5,
             [](double v) { return std::tanh(v); }, phi.data());
         return phi;
       }});
  return cases;
}

class RandomFeaturesTest : public ::testing::Test {
 protected:
  void SetUp() override { ctx_ = Context::Create({.num_threads = 2}).value(); }
  std::unique_ptr<Context> ctx_;
};

TEST_F(RandomFeaturesTest, HouseholderQMatchesLapackSignConvention) {
  // numpy.linalg.qr / torch.linalg.qr of [[1, 2], [3, 4]].
  const std::vector<double> q = HouseholderQ({1, 2, 3, 4}, 2);
  const std::vector<double> expected = {
      -0.31622776601683794, -0.9486832980505138, -0.9486832980505138,
      0.31622776601683794};
  EXPECT_TRUE(AllNear(q, expected, {1e-12, 1e-12}));
  // No reflection where the column below the diagonal is already zero.
  EXPECT_TRUE(AllNear(HouseholderQ({2, 1, 0, 3}, 2),
                      std::vector<double>{1, 0, 0, 1}, {0, 0}));
}

TEST_F(RandomFeaturesTest, HouseholderQIsOrthogonalAndTriangularizes) {
  for (int64_t n : {1, 2, 3, 7, 16}) {
    const std::vector<double> a = RandomNormalVector<double>(n * n, 10 + n);
    const std::vector<double> q = HouseholderQ(a, n);
    std::vector<double> gram(n * n), identity(n * n), lower, zeros;
    for (int64_t i = 0; i < n; ++i) {
      identity[i * n + i] = 1.0;
      for (int64_t j = 0; j < n; ++j) {
        double qq = 0, qa = 0;  // (Q^T Q)_ij and R_ij = (Q^T A)_ij
        for (int64_t k = 0; k < n; ++k) {
          qq += q[k * n + i] * q[k * n + j];
          qa += q[k * n + i] * a[k * n + j];
        }
        gram[i * n + j] = qq;
        if (i > j) {
          lower.push_back(qa);
          zeros.push_back(0.0);
        }
      }
    }
    EXPECT_TRUE(AllNear(gram, identity, {1e-12, 0})) << "n = " << n;
    EXPECT_TRUE(AllNear(lower, zeros, {1e-12, 0})) << "n = " << n;
  }
}

TEST_F(RandomFeaturesTest,
       OrthogonalRandomMatrixHasOrthogonalBlocksWithChiNorms) {
  // fast-transformers' orthogonal_random_matrix_ on a [5, 12] matrix: column
  // blocks [0, 5), [5, 10), [10, 12) from three 5 x 5 Gaussian blocks.
  const int64_t rows = 5, columns = 12;
  const RandomOptions random{.seed = 7, .stream = 3, .offset = 11};
  std::vector<float> w(rows * columns);
  ASSERT_TRUE(OrthogonalRandomMatrix(
                  random, TensorView<float>(w.data(), {rows, columns}))
                  .ok());
  for (int64_t j = 0; j < columns; ++j) {
    const int64_t block = j / rows, within = j % rows;
    // Row `within` of the Gaussian block that made this column.
    double expected_norm = 0;
    for (int64_t b = 0; b < rows; ++b) {
      const double g =
          RandomNormal(random.seed, random.stream,
                       random.offset + block * rows * rows + within * rows + b);
      expected_norm += g * g;
    }
    double norm = 0;
    for (int64_t i = 0; i < rows; ++i)
      norm += static_cast<double>(w[i * columns + j]) * w[i * columns + j];
    EXPECT_NEAR(std::sqrt(norm), std::sqrt(expected_norm), 1e-5)
        << "column " << j;
    for (int64_t k = block * rows; k < j; ++k) {
      double dot = 0, norm_k = 0;
      for (int64_t i = 0; i < rows; ++i) {
        dot += static_cast<double>(w[i * columns + j]) * w[i * columns + k];
        norm_k += static_cast<double>(w[i * columns + k]) * w[i * columns + k];
      }
      EXPECT_NEAR(dot / std::sqrt(norm * norm_k), 0.0, 1e-6)
          << "columns " << j << ", " << k;
    }
  }
}

TEST_F(RandomFeaturesTest, GaussianOrthogonalRandomMatrixFollowsPerformer) {
  // performer's gaussian_orthogonal_random_matrix(11, 4): row blocks [0, 4),
  // [4, 8), [8, 11) from three 4 x 4 Gaussian blocks, then the row multipliers.
  const int64_t m = 11, d = 4;
  const RandomOptions random{.seed = 5, .stream = 9, .offset = 0};
  for (int scaling : {0, 1}) {
    std::vector<float> w(m * d);
    ASSERT_TRUE(GaussianOrthogonalRandomMatrix(
                    scaling, random, TensorView<float>(w.data(), {m, d}))
                    .ok());
    for (int64_t i = 0; i < m; ++i) {
      double expected = std::sqrt(static_cast<double>(d));
      if (scaling == 0) {
        // Row i of the fresh [m, d] Gaussian drawn after the three blocks.
        double sum = 0;
        for (int64_t e = 0; e < d; ++e) {
          const double g =
              RandomNormal(random.seed, random.stream, 3 * d * d + i * d + e);
          sum += g * g;
        }
        expected = std::sqrt(sum);
      }
      double norm = 0;
      for (int64_t e = 0; e < d; ++e)
        norm += static_cast<double>(w[i * d + e]) * w[i * d + e];
      EXPECT_NEAR(std::sqrt(norm), expected, 1e-5)
          << "scaling " << scaling << " row " << i;
      for (int64_t k = (i / d) * d; k < i; ++k) {
        double dot = 0, norm_k = 0;
        for (int64_t e = 0; e < d; ++e) {
          dot += static_cast<double>(w[i * d + e]) * w[k * d + e];
          norm_k += static_cast<double>(w[k * d + e]) * w[k * d + e];
        }
        EXPECT_NEAR(dot / std::sqrt(norm * norm_k), 0.0, 1e-6)
            << "rows " << i << ", " << k;
      }
    }
  }
  // Without uniform_q (performer 1.1.4) the first row of each block is the
  // first column of LAPACK's Q, whose first entry is always negative; with
  // uniform_q each block is Q diag(sign R), i.e. Q^T G has a positive diagonal.
  for (bool uniform_q : {false, true}) {
    std::vector<float> w(m * d);
    ASSERT_TRUE(GaussianOrthogonalRandomMatrix(
                    1, random, TensorView<float>(w.data(), {m, d}), uniform_q)
                    .ok());
    for (int64_t block = 0; block < 2; ++block) {
      if (!uniform_q) {
        EXPECT_LT(w[block * d * d], 0.0f) << "block " << block;
      }
      for (int64_t j = 0; j < d; ++j) {
        // (Q^T G)_jj with Q^T = rows of the block / sqrt(d).
        double r_jj = 0;
        for (int64_t e = 0; e < d; ++e) {
          r_jj += w[(block * d + j) * d + e] /
                  std::sqrt(static_cast<double>(d)) *
                  RandomNormal(random.seed, random.stream,
                               block * d * d + e * d + j);
        }
        if (uniform_q) {
          EXPECT_GT(r_jj, 0.0) << "block " << block << " row " << j;
        }
      }
    }
  }
  std::vector<float> w(m * d);
  const absl::Status bad_scaling = GaussianOrthogonalRandomMatrix(
      2, random, TensorView<float>(w.data(), {m, d}));
  EXPECT_EQ(bad_scaling.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad_scaling.message().find("scaling"), std::string::npos)
      << bad_scaling;
  const absl::Status strided = GaussianOrthogonalRandomMatrix(
      0, random, TensorView<float>(w.data(), {m, 2}, {d, 1}));
  EXPECT_EQ(strided.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(strided.message().find("contiguous"), std::string::npos) << strided;
}

TEST_F(RandomFeaturesTest, ForwardMatchesReferenceWithFixedOmega) {
  const FeatureShape shapes[] = {
      {1, 1, 1, 3}, {2, 5, 3, 4}, {1, 17, 2, 7}, {3, 2, 1, 16}};
  for (const FeatureShape& shape : shapes) {
    for (const MapCase& map_case : MapCases(shape.qk_dim)) {
      std::unique_ptr<RandomFeatureMap> map = map_case.make();
      const int64_t C = map->OmegaColumns(shape.qk_dim),
                    F = map->FeatureDim(shape.qk_dim);
      const std::vector<float> omega = RandomNormalVector(shape.qk_dim * C, 21);
      ASSERT_TRUE(map->SetOmega(TensorView<const float>(omega.data(),
                                                        {shape.qk_dim, C}))
                      .ok());
      const StridedInput x(shape, 31, -1.0, 1.0);
      std::vector<float> features(Rows(shape) * F, NAN);
      const absl::Status status =
          map->Forward(*ctx_, x.view(), true,
                       TensorView<float>(features.data(), ShapeOf(shape, F)));
      ASSERT_TRUE(status.ok()) << status;
      const std::vector<double> expected =
          map_case.reference(shape, x.Dense(), Cast<double>(omega));
      EXPECT_TRUE(AllNear(features, expected, {1e-6, 1e-5}))
          << map_case.label << " shape "
          << ShapeOf(shape, shape.qk_dim).ToString();
    }
  }
}

TEST_F(RandomFeaturesTest, BackwardMatchesCentralDifferencesOfReference) {
  const FeatureShape shape{2, 4, 2, 5};
  for (const MapCase& map_case : MapCases(shape.qk_dim)) {
    std::unique_ptr<RandomFeatureMap> map = map_case.make();
    const int64_t C = map->OmegaColumns(shape.qk_dim),
                  F = map->FeatureDim(shape.qk_dim);
    const std::vector<float> omega = RandomNormalVector(shape.qk_dim * C, 22);
    ASSERT_TRUE(
        map->SetOmega(TensorView<const float>(omega.data(), {shape.qk_dim, C}))
            .ok());
    const StridedInput x(shape, 32, -0.8, 0.8);
    std::vector<float> features(Rows(shape) * F);
    const TensorView<float> features_view(features.data(), ShapeOf(shape, F));
    ASSERT_TRUE(map->Forward(*ctx_, x.view(), false, features_view).ok());
    const std::vector<float> d_features =
        RandomUniformVector(features.size(), 42);
    StridedInput d_x(shape, 0, 0.0, 0.0, 2);
    const absl::Status status = map->Backward(
        *ctx_, x.view(), false, features_view,
        TensorView<const float>(d_features.data(), ShapeOf(shape, F)),
        d_x.mutable_view());
    ASSERT_TRUE(status.ok()) << status;
    const std::vector<double> w = Cast<double>(d_features);
    const std::vector<double> omega_dense = Cast<double>(omega);
    EXPECT_TRUE(GradientMatches(
        [&](const std::vector<double>& point) {
          return Dot(w, map_case.reference(shape, point, omega_dense));
        },
        x.Dense(), d_x.Dense(), {2e-5, 1e-4}))
        << map_case.label;
  }
}

// phi(x_i) . phi(y_i) for rows x = points[0 .. P), y = points[P .. 2P) of one
// [1, 2P, 1, E] input.
std::vector<double> FeatureDots(const Context& ctx, RandomFeatureMap& map,
                                const std::vector<float>& points, int64_t pairs,
                                int64_t E) {
  const int64_t F = map.FeatureDim(E);
  std::vector<float> phi(2 * pairs * F);
  EXPECT_TRUE(
      map.Forward(ctx,
                  TensorView<const float>(points.data(), {1, 2 * pairs, 1, E}),
                  true, TensorView<float>(phi.data(), {1, 2 * pairs, 1, F}))
          .ok());
  std::vector<double> dots(pairs);
  for (int64_t i = 0; i < pairs; ++i) {
    for (int64_t f = 0; f < F; ++f) {
      dots[i] += static_cast<double>(phi[i * F + f]) * phi[(pairs + i) * F + f];
    }
  }
  return dots;
}

TEST_F(RandomFeaturesTest, MapsApproximateTheirKernels) {
  constexpr int64_t E = 4, kPairs = 12, kDims = 20000;
  const std::vector<float> points =
      RandomUniformVector(2 * kPairs * E, 77, -0.5, 0.5);
  auto x = [&](int64_t i, int64_t e) {
    return static_cast<double>(points[i * E + e]);
  };
  auto y = [&](int64_t i, int64_t e) {
    return static_cast<double>(points[(kPairs + i) * E + e]);
  };
  const double t = 0.5;
  for (bool orthogonal : {false, true}) {
    // RFF: exp(-t |x - y|^2 / 2); the smoothed map adds smoothing^2.
    RandomFourierFeatures rff({.n_dims = kDims,
                               .softmax_temp = static_cast<float>(t),
                               .orthogonal = orthogonal,
                               .seed = 1});
    SmoothedRandomFourierFeatures smoothed(
        {.n_dims = kDims + 1,
         .softmax_temp = static_cast<float>(t),
         .orthogonal = orthogonal,
         .smoothing = 0.5f,
         .seed = 2});
    ASSERT_TRUE(rff.NewFeatureMap(*ctx_, E).ok());
    ASSERT_TRUE(smoothed.NewFeatureMap(*ctx_, E).ok());
    const std::vector<double> rff_dots =
        FeatureDots(*ctx_, rff, points, kPairs, E);
    const std::vector<double> smoothed_dots =
        FeatureDots(*ctx_, smoothed, points, kPairs, E);
    std::vector<double> rbf(kPairs), rbf_smoothed(kPairs);
    for (int64_t i = 0; i < kPairs; ++i) {
      double distance = 0;
      for (int64_t e = 0; e < E; ++e)
        distance += (x(i, e) - y(i, e)) * (x(i, e) - y(i, e));
      rbf[i] = std::exp(-t * distance / 2);
      rbf_smoothed[i] = rbf[i] + 0.25;
    }
    EXPECT_TRUE(AllNear(rff_dots, rbf, {0.03, 0}))
        << "orthogonal " << orthogonal;
    EXPECT_LT(testing::Nmse(rff_dots.data(), rbf.data(), kPairs), 1e-3);
    EXPECT_TRUE(AllNear(smoothed_dots, rbf_smoothed, {0.03, 0}))
        << "orthogonal " << orthogonal;

    // Favor: exp(t x . y).
    FavorFeatureMap favor({.n_dims = kDims,
                           .softmax_temp = static_cast<float>(t),
                           .orthogonal = orthogonal,
                           .seed = 3});
    ASSERT_TRUE(favor.NewFeatureMap(*ctx_, E).ok());
    const std::vector<double> favor_dots =
        FeatureDots(*ctx_, favor, points, kPairs, E);
    std::vector<double> softmax_kernel(kPairs);
    for (int64_t i = 0; i < kPairs; ++i) {
      double dot = 0;
      for (int64_t e = 0; e < E; ++e) dot += x(i, e) * y(i, e);
      softmax_kernel[i] = std::exp(t * dot);
    }
    EXPECT_TRUE(AllNear(favor_dots, softmax_kernel, {0, 0.05}))
        << "orthogonal " << orthogonal;
  }
  // Generalized relu features with i.i.d. Gaussian omega: the arc-cosine kernel
  // of order 1 (Cho & Saul 2009), E[relu(w.x) relu(w.y)] = |x||y| (sin a + (pi
  // - a) cos a) / (2 pi). (Orthogonal omega is not sign-symmetric, see
  // random_features.h, so relu features estimate a slightly different kernel
  // there.)
  GeneralizedRandomFeatures generalized(
      {.n_dims = kDims, .orthogonal = false, .seed = 4});
  ASSERT_TRUE(generalized.NewFeatureMap(*ctx_, E).ok());
  std::vector<double> relu_dots =
      FeatureDots(*ctx_, generalized, points, kPairs, E);
  std::vector<double> arc_cosine(kPairs);
  for (int64_t i = 0; i < kPairs; ++i) {
    relu_dots[i] /= kDims;
    double dot = 0, xx = 0, yy = 0;
    for (int64_t e = 0; e < E; ++e) {
      dot += x(i, e) * y(i, e);
      xx += x(i, e) * x(i, e);
      yy += y(i, e) * y(i, e);
    }
    const double angle =
        std::acos(std::max(-1.0, std::min(1.0, dot / std::sqrt(xx * yy))));
    arc_cosine[i] = std::sqrt(xx * yy) *
                    (std::sin(angle) + (M_PI - angle) * std::cos(angle)) /
                    (2 * M_PI);
  }
  EXPECT_TRUE(AllNear(relu_dots, arc_cosine, {0.005, 0.05}));
}

std::vector<float> OmegaCopy(const RandomFeatureMap& map) {
  const float* data = map.omega().data<float>();
  return std::vector<float>(data, data + map.omega().NumElements());
}

TEST_F(RandomFeaturesTest, RedrawCounterFollowsFastTransformers) {
  RandomFourierFeatures map({.n_dims = 8, .redraw = 3, .seed = 9});
  EXPECT_EQ(map.calls(), -1);
  std::vector<std::vector<float>> omegas;
  for (int call = 0; call < 7; ++call) {
    ASSERT_TRUE(map.NewFeatureMap(*ctx_, 4).ok());
    EXPECT_EQ(map.calls(), call);
    omegas.push_back(OmegaCopy(map));
  }
  // Draws on calls 0, 3 and 6 (calls % redraw == 0); the first call always
  // draws.
  EXPECT_EQ(map.draws(), 3);
  for (int call = 1; call < 7; ++call) {
    const bool redrawn = call % 3 == 0;
    EXPECT_EQ(omegas[call] != omegas[call - 1], redrawn) << "call " << call;
  }
  EXPECT_NE(omegas[0], std::vector<float>(omegas[0].size(), 0.0f));

  // Evaluation with deterministic_eval neither counts nor draws.
  RandomFourierFeatures frozen(
      {.n_dims = 8, .deterministic_eval = true, .seed = 9});
  frozen.set_training(false);
  ASSERT_TRUE(frozen.NewFeatureMap(*ctx_, 4).ok());
  EXPECT_EQ(frozen.calls(), -1);
  // Before any draw omega is zero, like fast-transformers' zero-initialised
  // buffer.
  EXPECT_EQ(OmegaCopy(frozen), std::vector<float>(16, 0.0f));
  const std::vector<float> fixed = RandomNormalVector(16, 5);
  ASSERT_TRUE(
      frozen.SetOmega(TensorView<const float>(fixed.data(), {4, 4})).ok());
  ASSERT_TRUE(frozen.NewFeatureMap(*ctx_, 4).ok());
  EXPECT_EQ(OmegaCopy(frozen), fixed);
  // Back in training the first counted call draws, replacing the set omega.
  frozen.set_training(true);
  ASSERT_TRUE(frozen.NewFeatureMap(*ctx_, 4).ok());
  EXPECT_EQ(frozen.calls(), 0);
  EXPECT_NE(OmegaCopy(frozen), fixed);
  // Without deterministic_eval, evaluation still redraws (fast-transformers
  // quirk).
  RandomFourierFeatures eval_redraws({.n_dims = 8, .seed = 9});
  eval_redraws.set_training(false);
  ASSERT_TRUE(eval_redraws.NewFeatureMap(*ctx_, 4).ok());
  ASSERT_TRUE(eval_redraws.NewFeatureMap(*ctx_, 4).ok());
  EXPECT_EQ(eval_redraws.draws(), 2);
}

TEST_F(RandomFeaturesTest, DrawsDependOnlyOnTheSeed) {
  FavorFeatureMap a({.n_dims = 16, .seed = 12}), b({.n_dims = 16, .seed = 12}),
      c({.n_dims = 16, .seed = 13});
  for (FavorFeatureMap* map : {&a, &b, &c})
    ASSERT_TRUE(map->NewFeatureMap(*ctx_, 8).ok());
  EXPECT_EQ(OmegaCopy(a), OmegaCopy(b));
  EXPECT_NE(OmegaCopy(a), OmegaCopy(c));
  // Favor is orthogonal by default: omega [8, 8] is one block with orthogonal
  // columns.
  const std::vector<float> w = OmegaCopy(a);
  for (int64_t i = 0; i < 8; ++i) {
    for (int64_t j = 0; j < i; ++j) {
      double dot = 0, ni = 0, nj = 0;
      for (int64_t e = 0; e < 8; ++e) {
        dot += static_cast<double>(w[e * 8 + i]) * w[e * 8 + j];
        ni += static_cast<double>(w[e * 8 + i]) * w[e * 8 + i];
        nj += static_cast<double>(w[e * 8 + j]) * w[e * 8 + j];
      }
      EXPECT_NEAR(dot / std::sqrt(ni * nj), 0.0, 1e-6);
    }
  }
}

void ExpectInvalid(const absl::Status& status, const std::string& fragment) {
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(status.message().find(fragment), std::string::npos) << status;
}

TEST_F(RandomFeaturesTest, BadInputsAreErrors) {
  const FeatureShape shape{1, 3, 2, 4};
  const StridedInput x(shape, 3);
  std::vector<float> features(Rows(shape) * 8), d_x(Rows(shape) * 4),
      buffer(256);
  const TensorView<float> features_view(features.data(), ShapeOf(shape, 8));
  RandomFourierFeatures map({.n_dims = 8});
  const absl::Status before = map.Forward(*ctx_, x.view(), true, features_view);
  EXPECT_EQ(before.code(), absl::StatusCode::kFailedPrecondition) << before;
  ASSERT_TRUE(map.NewFeatureMap(*ctx_, 4).ok());
  ASSERT_TRUE(map.Forward(*ctx_, x.view(), true, features_view).ok());

  ExpectInvalid(
      map.Forward(*ctx_, TensorView<const float>(buffer.data(), {3, 2, 4}),
                  true, features_view),
      "rank 4");
  ExpectInvalid(
      map.Forward(*ctx_, TensorView<const float>(buffer.data(), {1, 3, 2, 5}),
                  true, TensorView<float>(buffer.data(), {1, 3, 2, 8})),
      "E = 5");
  ExpectInvalid(
      map.Forward(*ctx_, x.view(), true,
                  TensorView<float>(features.data(), ShapeOf(shape, 7))),
      "features has shape");
  ExpectInvalid(map.Forward(*ctx_,
                            TensorView<const float>(buffer.data(), {1, 3, 2, 4},
                                                    {48, 16, 8, 2}),
                            true, features_view),
                "unit stride");
  ExpectInvalid(
      map.Forward(*ctx_, TensorView<const float>(nullptr, {1, 3, 2, 4}), true,
                  features_view),
      "null data");
  ExpectInvalid(map.Forward(*ctx_,
                            TensorView<const float>(buffer.data(), {1, 3, 2, 4},
                                                    Device::Cuda()),
                            true, features_view),
                "is on cuda");
  ExpectInvalid(
      map.Backward(*ctx_, x.view(), true, features_view, features_view,
                   TensorView<float>(d_x.data(), ShapeOf(shape, 3))),
      "d_x has shape");
  ExpectInvalid(
      map.Backward(*ctx_, x.view(), true, features_view,
                   TensorView<float>(buffer.data(), ShapeOf(shape, 6)),
                   TensorView<float>(d_x.data(), ShapeOf(shape, 4))),
      "d_features has shape");
  ExpectInvalid(map.NewFeatureMap(*ctx_, 5), "E = 5");
  ExpectInvalid(map.SetOmega(TensorView<const float>(buffer.data(), {4, 3})),
                "expected [4, 4]");
  ExpectInvalid(map.SetOmega(TensorView<const float>(buffer.data(), {16})),
                "[E, C]");

  RandomFourierFeatures no_redraw({.redraw = 0});
  ExpectInvalid(no_redraw.NewFeatureMap(*ctx_, 4), "redraw");
  RandomFourierFeatures too_few({.n_dims = 1});
  ExpectInvalid(too_few.NewFeatureMap(*ctx_, 4), "no random features");
  SmoothedRandomFourierFeatures smoothed_too_few({.n_dims = 2});
  ExpectInvalid(smoothed_too_few.NewFeatureMap(*ctx_, 4), "no random features");
}

}  // namespace
}  // namespace ftx
