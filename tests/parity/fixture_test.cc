// Tests of the parity helpers themselves, on a file written here.
#include "tests/parity/fixture.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest-spi.h"
#include "gtest/gtest.h"

namespace ftx::parity {
namespace {

std::string WriteFixture() {
  const std::string path =
      absl::StrCat(::testing::TempDir(), "/fixture.safetensors");
  static const std::vector<float> weight = {1, 2, 3, 4, 5, 6};
  static const std::vector<float> output = {0.5f, -0.25f};
  SafetensorsWriteOptions options;
  options.metadata = {{"heads", "3"}, {"causal", "true"}, {"temp", "0.125"},
                      {"kind", "full"}};
  EXPECT_TRUE(
      WriteSafetensors(
          path,
          {{"param.w", TensorView<const float>(weight.data(), Shape{2, 3})},
           {"output.y", TensorView<const float>(output.data(), Shape{2})}},
          options)
          .ok());
  return path;
}

TEST(FixtureTest, ReadsTensorsAndMetadata) {
  auto fixture = Fixture::Open(WriteFixture());
  ASSERT_TRUE(fixture.ok()) << fixture.status();
  EXPECT_TRUE(fixture->Has("output.y"));
  EXPECT_FALSE(fixture->Has("output.z"));
  EXPECT_EQ(fixture->MetaInt("heads"), 3);
  EXPECT_TRUE(fixture->MetaBool("causal"));
  EXPECT_DOUBLE_EQ(fixture->MetaDouble("temp"), 0.125);
  EXPECT_EQ(fixture->Meta("kind"), "full");
  EXPECT_EQ(fixture->NamesWithPrefix("param."),
            std::vector<std::string>{"param.w"});
  EXPECT_EQ(fixture->Float("param.w").view<float>().at(1, 2), 6.0f);
}

TEST(FixtureTest, ParityPassesWithinAndFailsBeyondTheTolerance) {
  const std::vector<float> expected = {10.0f, -2.0f, 0.0f};
  const std::vector<float> close = {10.0005f, -2.0f, 0.0009f};
  const std::vector<float> far = {10.0f, -2.0f, 0.02f};
  const TensorView<const float> e(expected.data(), Shape{3});
  ExpectParity(TensorView<const float>(close.data(), Shape{3}), e, 1e-4,
               "close");
  EXPECT_NEAR(RelativeError(TensorView<const float>(far.data(), Shape{3}), e),
              0.002, 1e-6);
  EXPECT_NONFATAL_FAILURE(
      ExpectParity(TensorView<const float>(far.data(), Shape{3}), e, 1e-3,
                   "far"),
      "far: relative error");
}

TEST(FixtureTest, LoadsPrefixedParamsThroughAMap) {
  auto fixture = Fixture::Open(WriteFixture());
  ASSERT_TRUE(fixture.ok());
  auto store = ParamStore::Create({{"layer.weight", Shape{2, 3}}});
  ASSERT_TRUE(store.ok());
  const StateDictMap map{"test", {{"w", "layer.weight"}}, {}};
  ASSERT_TRUE(LoadFixtureParams(*fixture, map, *store).ok());
  EXPECT_EQ(store->Value("layer.weight")->at(0, 1), 2.0f);
  const StateDictMap wrong{"test", {{"v", "layer.weight"}}, {}};
  EXPECT_FALSE(LoadFixtureParams(*fixture, wrong, *store).ok());
}

}  // namespace
}  // namespace ftx::parity
