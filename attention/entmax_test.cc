// entmax-1.5 against a bisection reference in double
// (kernels/reference/topk_aft_ref.h): odd widths, scales, broadcast masks with
// -inf, strided rows, in place, special rows; the backward against central
// differences of the reference; the normaliser switch; bad inputs.
#include "attention/entmax.h"

#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/reference/softmax_ref.h"
#include "kernels/reference/topk_aft_ref.h"
#include "tests/util/gradcheck.h"
#include "tests/util/random.h"
#include "tests/util/tolerance.h"

namespace ftx {
namespace {

using ::ftx::testing::AllNear;
using ::ftx::testing::GradientMatches;
using ::ftx::testing::RandomUniformVector;

constexpr float kInf = std::numeric_limits<float>::infinity();

class EntmaxTest : public ::testing::Test {
 protected:
  void SetUp() override { ctx_ = Context::Create({.num_threads = 2}).value(); }
  std::unique_ptr<Context> ctx_;
};

// entmax15(scale * x + mask) of `rows` dense rows of `cols`, by bisection in
// double.
std::vector<double> Expected(const std::vector<double>& x, int64_t rows,
                             int64_t cols, double scale,
                             const std::vector<float>& mask,
                             int64_t mask_rows) {
  std::vector<double> y(rows * cols), z(cols);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      z[c] = scale * x[r * cols + c] +
             (mask.empty() ? 0.0 : mask[(r % mask_rows) * cols + c]);
    }
    reference::Entmax15Bisect(z.data(), cols, &y[r * cols]);
  }
  return y;
}

TEST_F(EntmaxTest, ForwardMatchesBisectionOnStridedRowsWithMasks) {
  const int64_t rows = 6, pad = 3, mask_rows = 3;
  for (int64_t cols : {1, 2, 3, 7, 15, 16, 17, 33, 257}) {
    for (double range : {1.0, 4.0, 30.0}) {
      for (bool masked : {false, true}) {
        const int64_t stride = cols + pad;
        std::vector<float> storage =
            RandomUniformVector(rows * stride, 3 + cols, -range, range);
        std::vector<float> mask;
        if (masked) {
          mask = RandomUniformVector(mask_rows * cols, 5, -1, 1);
          mask[0] =
              -kInf;  // drops an entry; a width-1 row becomes fully masked
          if (cols > 2) mask[cols + 2] = -kInf;
        }
        const float scale = 0.7f;
        std::vector<float> output(rows * stride, 123.0f);
        TensorView<const float> x(storage.data(), {rows, cols}, {stride, 1});
        TensorView<float> y(output.data(), {rows, cols}, {stride, 1});
        EntmaxOptions options{.scale = scale};
        if (masked) {
          options.additive_mask =
              TensorView<const float>(mask.data(), {mask_rows, cols});
        }
        ASSERT_TRUE(Entmax15(*ctx_, x, y, options).ok());
        std::vector<double> dense_x(rows * cols);
        std::vector<float> dense_y(rows * cols);
        for (int64_t r = 0; r < rows; ++r) {
          for (int64_t c = 0; c < cols; ++c) {
            dense_x[r * cols + c] = storage[r * stride + c];
            dense_y[r * cols + c] = output[r * stride + c];
          }
          for (int64_t c = cols; c < stride; ++c) {
            EXPECT_EQ(output[r * stride + c], 123.0f) << "padding overwritten";
          }
        }
        EXPECT_TRUE(AllNear(
            dense_y, Expected(dense_x, rows, cols, scale, mask, mask_rows),
            {1e-6, 1e-5}))
            << "cols " << cols << " range " << range << " masked " << masked;
      }
    }
  }
}

TEST_F(EntmaxTest, InPlaceSparseAndSpecialRows) {
  // Row 0: a clear winner (sparse, one-hot); row 1: all equal (uniform); row 2:
  // fully masked (zeros); row 3: NaN (NaN); row 4: +inf (NaN); row 5: two close
  // logits and a far one (exactly two nonzero).
  const int64_t cols = 3;
  std::vector<float> data = {10, 0,   -1, 2, 2,    2, -kInf, -kInf, -kInf,
                             0,  NAN, 1,  0, kInf, 1, 1.0f,  0.9f,  -5.0f};
  const std::vector<float> original = data;
  TensorView<float> rows(data.data(), {6, cols});
  ASSERT_TRUE(Entmax15(*ctx_, rows, rows).ok());
  EXPECT_FLOAT_EQ(data[0], 1.0f);
  EXPECT_EQ(data[1], 0.0f);
  EXPECT_EQ(data[2], 0.0f);
  for (int c = 3; c < 6; ++c) EXPECT_NEAR(data[c], 1.0 / 3.0, 1e-6);
  for (int c = 6; c < 9; ++c) EXPECT_EQ(data[c], 0.0f);
  for (int c = 9; c < 15; ++c) EXPECT_TRUE(std::isnan(data[c])) << c;
  EXPECT_GT(data[15], data[16]);
  EXPECT_GT(data[16], 0.0f);
  EXPECT_EQ(data[17], 0.0f);
  std::vector<double> expected(cols);
  const std::vector<double> z(original.begin() + 15, original.end());
  reference::Entmax15Bisect(z.data(), cols, expected.data());
  EXPECT_TRUE(AllNear(std::vector<float>(data.begin() + 15, data.end()),
                      expected, {1e-6, 1e-5}));
}

TEST_F(EntmaxTest, ReferenceBackwardMatchesCentralDifferences) {
  for (int64_t cols : {1, 2, 5, 17}) {
    const std::vector<double> z =
        RandomUniformVector<double>(cols, 7 + cols, -2, 2);
    const std::vector<double> dy = RandomUniformVector<double>(cols, 8 + cols);
    std::vector<double> y(cols), dz(cols);
    reference::Entmax15Bisect(z.data(), cols, y.data());
    reference::Entmax15Backward(y.data(), dy.data(), cols, dz.data());
    EXPECT_TRUE(GradientMatches(
        [&](const std::vector<double>& x) {
          std::vector<double> out(cols);
          reference::Entmax15Bisect(x.data(), cols, out.data());
          return testing::Dot(dy, out);
        },
        z, dz, {1e-7, 1e-6}))
        << "cols " << cols;
  }
}

TEST_F(EntmaxTest, BackwardMatchesCentralDifferencesOfBisection) {
  const int64_t rows = 4, mask_rows = 2;
  for (int64_t cols : {1, 3, 8, 17, 33}) {
    const std::vector<float> x =
        RandomUniformVector(rows * cols, 11 + cols, -3, 3);
    const std::vector<float> d_y = RandomUniformVector(rows * cols, 12 + cols);
    std::vector<float> mask =
        RandomUniformVector(mask_rows * cols, 13, -0.5, 0.5);
    mask[mask_rows * cols - 1] = -kInf;
    const float scale = 1.3f;
    const EntmaxOptions options{.scale = scale,
                                .additive_mask = TensorView<const float>(
                                    mask.data(), {mask_rows, cols})};
    std::vector<float> y(rows * cols), d_x(rows * cols);
    const Shape shape{rows, cols};
    ASSERT_TRUE(Entmax15(*ctx_, TensorView<const float>(x.data(), shape),
                         TensorView<float>(y.data(), shape), options)
                    .ok());
    ASSERT_TRUE(Entmax15Backward(*ctx_,
                                 TensorView<const float>(y.data(), shape),
                                 TensorView<const float>(d_y.data(), shape),
                                 TensorView<float>(d_x.data(), shape), options)
                    .ok());
    const std::vector<double> w(d_y.begin(), d_y.end());
    EXPECT_TRUE(GradientMatches(
        [&](const std::vector<double>& input) {
          return testing::Dot(
              w, Expected(input, rows, cols, scale, mask, mask_rows));
        },
        std::vector<double>(x.begin(), x.end()),
        std::vector<double>(d_x.begin(), d_x.end()), {2e-6, 2e-5}))
        << "cols " << cols;

    // In place: d_x may alias d_y.
    std::vector<float> in_place = d_y;
    ASSERT_TRUE(
        Entmax15Backward(*ctx_, TensorView<const float>(y.data(), shape),
                         TensorView<const float>(in_place.data(), shape),
                         TensorView<float>(in_place.data(), shape), options)
            .ok());
    EXPECT_EQ(in_place, d_x);
  }
}

TEST_F(EntmaxTest, NormalizerSwitchPicksSoftmaxOrEntmax) {
  const int64_t rows = 3, cols = 9;
  const std::vector<float> x = RandomUniformVector(rows * cols, 21, -3, 3);
  const std::vector<float> d_y = RandomUniformVector(rows * cols, 22);
  const Shape shape{rows, cols};
  const float scale = 0.5f;
  std::vector<double> softmax(rows * cols), entmax(rows * cols);
  const std::vector<double> x_double(x.begin(), x.end());
  reference::Softmax<double>(rows, cols, x_double.data(), cols, scale, nullptr,
                             1, 0, softmax.data(), cols);
  entmax = Expected(x_double, rows, cols, scale, {}, 1);
  for (auto [normalizer, expected] :
       {std::pair{AttentionNormalizer::kSoftmax, softmax},
        std::pair{AttentionNormalizer::kEntmax15, entmax}}) {
    std::vector<float> y(rows * cols), d_x(rows * cols);
    ASSERT_TRUE(Normalize(*ctx_, normalizer,
                          TensorView<const float>(x.data(), shape),
                          TensorView<float>(y.data(), shape), scale)
                    .ok());
    EXPECT_TRUE(AllNear(y, expected, {1e-6, 1e-5}));
    ASSERT_TRUE(NormalizeBackward(*ctx_, normalizer,
                                  TensorView<const float>(y.data(), shape),
                                  TensorView<const float>(d_y.data(), shape),
                                  TensorView<float>(d_x.data(), shape), scale)
                    .ok());
    std::vector<double> expected_d_x(rows * cols);
    for (int64_t r = 0; r < rows; ++r) {
      std::vector<double> y_row(y.begin() + r * cols,
                                y.begin() + (r + 1) * cols);
      std::vector<double> dy_row(d_y.begin() + r * cols,
                                 d_y.begin() + (r + 1) * cols);
      if (normalizer == AttentionNormalizer::kEntmax15) {
        reference::Entmax15Backward(y_row.data(), dy_row.data(), cols,
                                    &expected_d_x[r * cols]);
      } else {
        double dot = 0;
        for (int64_t c = 0; c < cols; ++c) dot += y_row[c] * dy_row[c];
        for (int64_t c = 0; c < cols; ++c) {
          expected_d_x[r * cols + c] = y_row[c] * (dy_row[c] - dot);
        }
      }
      for (int64_t c = 0; c < cols; ++c) expected_d_x[r * cols + c] *= scale;
    }
    EXPECT_TRUE(AllNear(d_x, expected_d_x, {1e-6, 1e-5}));
  }
}

TEST_F(EntmaxTest, BadInputsAreErrors) {
  std::vector<float> buffer(64);
  TensorView<const float> x(buffer.data(), {4, 8});
  TensorView<float> y(buffer.data() + 32, {4, 8});

  absl::Status status =
      Entmax15(*ctx_, x, TensorView<float>(buffer.data(), {4, 7}));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("y has shape"), std::string::npos) << status;

  status = Entmax15(*ctx_, TensorView<const float>(nullptr, {4, 8}), y);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("null data"), std::string::npos) << status;

  status = Entmax15(*ctx_,
                    TensorView<const float>(buffer.data(), {4, 8}, {8, 2}), y);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("unit stride"), std::string::npos) << status;

  status = Entmax15(
      *ctx_, TensorView<const float>(buffer.data(), {4, 8}, Device::Cuda(0)),
      y);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("is on cuda"), std::string::npos) << status;

  std::vector<float> mask(3 * 8);
  status =
      Entmax15(*ctx_, x, y,
               {.additive_mask = TensorView<const float>(mask.data(), {3, 8})});
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("additive_mask"), std::string::npos)
      << status;

  status =
      Entmax15Backward(*ctx_, x, x, TensorView<float>(buffer.data(), {8, 4}));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("d_x has shape"), std::string::npos)
      << status;
}

}  // namespace
}  // namespace ftx
