// ShiftTokens: the reference shift sets; the forward against the torch recipe
// in double (split into chunks, zero masked rows of shifted chunks, pad/crop
// along time) for encoder and decoder sets, a channel count that leaves a
// remainder, shifts beyond the length, masks and padded views; the backward by
// central differences; bad inputs.
#include "layers/shift_tokens.h"

#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/util/gradcheck.h"
#include "tests/util/matrix.h"
#include "tests/util/random.h"
#include "tests/util/tolerance.h"

namespace ftx {
namespace {

using ::ftx::testing::AllNear;
using ::ftx::testing::Cast;
using ::ftx::testing::RandomUniformVector;
using ::ftx::testing::StridedMatrix;

constexpr int64_t kBatch = 3, kLength = 6;

std::unique_ptr<Context> MakeContext() {
  return Context::Create({.num_threads = 3}).value();
}

TensorView<float> Sequence(StridedMatrix& rows, int64_t batch, int64_t length) {
  return TensorView<float>(
      rows.data(), {batch, length, rows.cols()},
      Strides{length * rows.stride(), rows.stride(), 1, 0});
}

// torch: x.split(C // S, dim=-1); chunk i (i < S) -> shift(chunk, shifts[i],
// mask); cat(shifted chunks, rest). shift: masked_fill(~mask, 0) then F.pad(t,
// (0, 0, a, -a)).
std::vector<double> Reference(const std::vector<double>& x, int64_t channels,
                              const std::vector<int64_t>& shifts,
                              const std::vector<int64_t>& lengths) {
  const int64_t segments = shifts.size(), width = channels / segments;
  std::vector<double> y = x;  // the unshifted remainder and a = 0 chunks stay
  for (int64_t i = 0; i < segments; ++i) {
    const int64_t a = shifts[i];
    if (a == 0) continue;
    for (int64_t b = 0; b < kBatch; ++b) {
      const int64_t length = lengths.empty() ? kLength : lengths[b];
      std::vector<double> chunk(kLength * width);  // masked copy of chunk i
      for (int64_t t = 0; t < kLength; ++t) {
        for (int64_t c = 0; c < width; ++c) {
          chunk[t * width + c] =
              t < length ? x[(b * kLength + t) * channels + i * width + c] : 0;
        }
      }
      for (int64_t t = 0; t < kLength; ++t) {
        const int64_t source = t - a;
        for (int64_t c = 0; c < width; ++c) {
          y[(b * kLength + t) * channels + i * width + c] =
              source >= 0 && source < kLength ? chunk[source * width + c] : 0.0;
        }
      }
    }
  }
  return y;
}

TEST(ShiftTokensTest, ReferenceShiftSets) {
  EXPECT_EQ(XTransformersShifts(2, false),
            (std::vector<int64_t>{-2, -1, 0, 1, 2}));
  EXPECT_EQ(XTransformersShifts(2, true), (std::vector<int64_t>{0, 1, 2}));
  EXPECT_EQ(XTransformersShifts(1, true), (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(PerformerShifts(true), (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(PerformerShifts(false), (std::vector<int64_t>{-1, 0, 1}));
  EXPECT_EQ(LinearAttentionTransformerShifts(true),
            (std::vector<int64_t>{1, 0}));
  EXPECT_EQ(LinearAttentionTransformerShifts(false),
            (std::vector<int64_t>{1, 0, -1}));
}

struct Case {
  std::vector<int64_t> shifts;
  int64_t channels;
  std::vector<int64_t> lengths;
};

TEST(ShiftTokensTest, ForwardMatchesReference) {
  auto ctx = MakeContext();
  const std::vector<Case> cases = {
      {PerformerShifts(false), 11, {6, 3, 0}},  // remainder of 2 channels
      {PerformerShifts(true), 8, {}},           // no mask
      {LinearAttentionTransformerShifts(false), 9, {}},  // LAT: no mask zeroing
      {XTransformersShifts(2, false), 10, {2, 6, 5}},    // shifts of 2
      {XTransformersShifts(2, true), 3, {1, 1, 6}},  // one channel per chunk
      {{7, -6, 0, 3}, 13, {4, 6, 1}},                // |a| >= T gives zeros
      {{1}, 5, {5, 0, 2}},                           // one chunk
  };
  uint64_t seed = 1;
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message()
                 << "channels " << c.channels << " shifts " << c.shifts.size()
                 << " first " << c.shifts[0]);
    const ShiftTokens layer = ShiftTokens::Create({c.shifts}).value();
    StridedMatrix x(kBatch * kLength, c.channels, 2, ++seed);
    StridedMatrix y(kBatch * kLength, c.channels, 3, ++seed);
    const LengthMask lengths{c.lengths};
    ASSERT_TRUE(layer
                    .Forward(*ctx, Sequence(x, kBatch, kLength), lengths,
                             Sequence(y, kBatch, kLength))
                    .ok());
    EXPECT_TRUE(AllNear(
        y.Dense(),
        Reference(Cast<double>(x.Dense()), c.channels, c.shifts, c.lengths),
        {0, 0}));
    EXPECT_TRUE(y.PaddingIntact());
  }
}

TEST(ShiftTokensTest, BackwardMatchesCentralDifferences) {
  auto ctx = MakeContext();
  const std::vector<Case> cases = {
      {PerformerShifts(false), 11, {6, 3, 0}},
      {{2, 0, -1, -3}, 9, {}},
  };
  uint64_t seed = 20;
  for (const Case& c : cases) {
    const ShiftTokens layer = ShiftTokens::Create({c.shifts}).value();
    const int64_t n = kBatch * kLength * c.channels;
    const std::vector<float> d_y = RandomUniformVector(n, ++seed);
    StridedMatrix d_x(kBatch * kLength, c.channels, 1, ++seed);
    ASSERT_TRUE(layer
                    .Backward(*ctx, LengthMask{c.lengths},
                              TensorView<const float>(
                                  d_y.data(), {kBatch, kLength, c.channels}),
                              Sequence(d_x, kBatch, kLength))
                    .ok());
    const std::vector<double> w = Cast<double>(d_y);
    const std::vector<double> x = RandomUniformVector<double>(n, ++seed);
    EXPECT_TRUE(testing::GradientMatches(
        [&](const std::vector<double>& v) {
          return testing::Dot(w, Reference(v, c.channels, c.shifts, c.lengths));
        },
        x, Cast<double>(d_x.Dense())));
    EXPECT_TRUE(d_x.PaddingIntact());
  }
}

void ExpectInvalid(const absl::Status& status, const std::string& fragment) {
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(std::string(status.message()).find(fragment), std::string::npos)
      << "message \"" << status.message() << "\" lacks \"" << fragment << "\"";
}

TEST(ShiftTokensTest, BadInputsAreErrors) {
  auto ctx = MakeContext();
  ExpectInvalid(ShiftTokens::Create({}).status(), "at least one shift");
  const ShiftTokens layer =
      ShiftTokens::Create({PerformerShifts(false)}).value();
  std::vector<float> x(2 * 4 * 5), y(2 * 4 * 5);
  const TensorView<const float> x_view(x.data(), {2, 4, 5});
  const TensorView<float> y_view(y.data(), {2, 4, 5});
  ExpectInvalid(
      layer.Forward(*ctx, TensorView<const float>(x.data(), {2, 4, 2}), {},
                    TensorView<float>(y.data(), {2, 4, 2})),
      "fewer than the 3 shifts");
  ExpectInvalid(layer.Forward(*ctx, TensorView<const float>(x.data(), {8, 5}),
                              {}, TensorView<float>(y.data(), {8, 5})),
                "must be [B, T, C]");
  ExpectInvalid(
      layer.Forward(*ctx, x_view, {}, TensorView<float>(y.data(), {2, 5, 4})),
      "has shape");
  ExpectInvalid(layer.Forward(*ctx, x_view, LengthMask{{4}}, y_view),
                "lengths has 1 entries");
  ExpectInvalid(layer.Forward(*ctx, x_view, LengthMask{{4, 5}}, y_view),
                "outside [0, 4]");
  ExpectInvalid(layer.Forward(*ctx, x_view, {},
                              TensorView<float>(x.data() + 3, {2, 4, 5})),
                "y overlaps x");
  ExpectInvalid(
      layer.Forward(
          *ctx, TensorView<const float>(x.data(), {2, 4, 5}, Device::Cuda()),
          {}, y_view),
      "x is on cuda");
  ExpectInvalid(layer.Forward(*ctx, TensorView<const float>(nullptr, {2, 4, 5}),
                              {}, y_view),
                "null data");
  ExpectInvalid(
      layer.Forward(
          *ctx,
          TensorView<const float>(x.data(), {2, 4, 5}, Strides{20, 5, 1, 0}),
          {}, TensorView<float>(y.data(), {2, 4, 2}, Strides{20, 5, 2, 0})),
      "unit stride");
  ExpectInvalid(
      layer.Backward(*ctx, {}, x_view, TensorView<float>(x.data(), {2, 4, 5})),
      "d_x overlaps d_y");
}

}  // namespace
}  // namespace ftx
