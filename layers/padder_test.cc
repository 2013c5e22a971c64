// Padder: pad / strip values, token padding, the backward identities checked
// by central differences, and shape errors.
#include "layers/padder.h"

#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "tests/util/gradcheck.h"
#include "tests/util/random.h"

namespace ftx {
namespace {

using ::ftx::testing::GradientMatches;
using ::ftx::testing::RandomUniformVector;

class PadderTest : public ::testing::Test {
 protected:
  void SetUp() override { ctx_ = Context::Create({.num_threads = 1}).value(); }
  std::unique_ptr<Context> ctx_;
};

TEST_F(PadderTest, PadsWithZerosAndStripsBack) {
  const Padder padder = Padder::Create(5).value();
  const std::vector<float> x = RandomUniformVector<float>(2 * 3 * 2, 1);
  std::vector<float> padded(2 * 5 * 2, 7.0f), back(x.size());
  ASSERT_TRUE(padder
                  .Pad(*ctx_, TensorView<const float>(x.data(), {2, 3, 2}),
                       TensorView<float>(padded.data(), {2, 5, 2}))
                  .ok());
  for (int b = 0; b < 2; ++b) {
    for (int t = 0; t < 5; ++t) {
      for (int c = 0; c < 2; ++c) {
        EXPECT_EQ(padded[(b * 5 + t) * 2 + c],
                  t < 3 ? x[(b * 3 + t) * 2 + c] : 0.0f);
      }
    }
  }
  ASSERT_TRUE(padder
                  .Strip(*ctx_,
                         TensorView<const float>(padded.data(), {2, 5, 2}),
                         TensorView<float>(back.data(), {2, 3, 2}))
                  .ok());
  EXPECT_EQ(back, x);
  const std::vector<int32_t> tokens = {4, 5, 6, 7};
  std::vector<int32_t> padded_tokens(10, 9);
  ASSERT_TRUE(padder
                  .PadTokens(*ctx_,
                             TensorView<const int32_t>(tokens.data(), {2, 2}),
                             TensorView<int32_t>(padded_tokens.data(), {2, 5}))
                  .ok());
  EXPECT_EQ(padded_tokens,
            (std::vector<int32_t>{4, 5, 0, 0, 0, 6, 7, 0, 0, 0}));
}

TEST_F(PadderTest, BackwardsMatchCentralDifferences) {
  const Padder padder = Padder::Create(4).value();
  const std::vector<double> w_long = RandomUniformVector<double>(2 * 4 * 3, 2);
  const std::vector<double> w_short = RandomUniformVector<double>(2 * 3 * 3, 3);
  // Pad: loss = <w_long, Pad(x)>; its gradient is PadBackward(w_long).
  std::vector<float> d_long(w_long.begin(), w_long.end()), d_x(18);
  ASSERT_TRUE(
      padder
          .PadBackward(*ctx_, TensorView<const float>(d_long.data(), {2, 4, 3}),
                       TensorView<float>(d_x.data(), {2, 3, 3}))
          .ok());
  auto pad_loss = [&](const std::vector<double>& x) {
    const std::vector<float> xf(x.begin(), x.end());
    std::vector<float> padded(24);
    EXPECT_TRUE(padder
                    .Pad(*ctx_, TensorView<const float>(xf.data(), {2, 3, 3}),
                         TensorView<float>(padded.data(), {2, 4, 3}))
                    .ok());
    return testing::Dot(w_long,
                        std::vector<double>(padded.begin(), padded.end()));
  };
  EXPECT_TRUE(GradientMatches(pad_loss, RandomUniformVector<double>(18, 4),
                              std::vector<double>(d_x.begin(), d_x.end()),
                              {1e-4, 1e-4}, 1e-2));
  // Strip: loss = <w_short, Strip(p)>; its gradient is StripBackward(w_short).
  std::vector<float> d_short(w_short.begin(), w_short.end()), d_p(24, 5.0f);
  ASSERT_TRUE(padder
                  .StripBackward(
                      *ctx_, TensorView<const float>(d_short.data(), {2, 3, 3}),
                      TensorView<float>(d_p.data(), {2, 4, 3}))
                  .ok());
  auto strip_loss = [&](const std::vector<double>& p) {
    const std::vector<float> pf(p.begin(), p.end());
    std::vector<float> out(18);
    EXPECT_TRUE(padder
                    .Strip(*ctx_, TensorView<const float>(pf.data(), {2, 4, 3}),
                           TensorView<float>(out.data(), {2, 3, 3}))
                    .ok());
    return testing::Dot(w_short, std::vector<double>(out.begin(), out.end()));
  };
  EXPECT_TRUE(GradientMatches(strip_loss, RandomUniformVector<double>(24, 5),
                              std::vector<double>(d_p.begin(), d_p.end()),
                              {1e-4, 1e-4}, 1e-2));
}

TEST_F(PadderTest, BadShapesAreInvalidArgument) {
  EXPECT_EQ(Padder::Create(0).status().code(),
            absl::StatusCode::kInvalidArgument);
  const Padder padder = Padder::Create(4).value();
  std::vector<float> x(2 * 5 * 3), padded(2 * 4 * 3);
  absl::Status status =
      padder.Pad(*ctx_, TensorView<const float>(x.data(), {2, 5, 3}),
                 TensorView<float>(padded.data(), {2, 4, 3}));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("input_size 4"), std::string::npos) << status;
  status =
      padder.Strip(*ctx_, TensorView<const float>(padded.data(), {2, 4, 3}),
                   TensorView<float>(x.data(), {2, 3, 2}));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("out"), std::string::npos) << status;
}

}  // namespace
}  // namespace ftx
