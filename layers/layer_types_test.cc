// BuildLayerPlan against the layer_types of x-transformers 0.26.6, obtained by
// constructing Encoder(dim=8, heads=1, **options) in the pinned venv and
// printing ''.join(layer_types). No gradients: the plan has no parameters.
#include "layers/layer_types.h"

#include <string>

#include "gtest/gtest.h"

namespace ftx {
namespace {

std::string Plan(const LayerTypesConfig& config) {
  auto plan = BuildLayerPlan(config);
  EXPECT_TRUE(plan.ok()) << plan.status();
  return plan.ok() ? LayerTypesToString(plan->types) : "";
}

TEST(LayerTypesTest, MatchesXTransformers0266) {
  EXPECT_EQ(Plan({.depth = 3}), "afafaf");
  EXPECT_EQ(Plan({.depth = 2, .cross_attend = true}), "acfacf");
  EXPECT_EQ(Plan({.depth = 2, .cross_attend = true, .only_cross = true}),
            "cfcf");
  EXPECT_EQ(Plan({.depth = 2, .macaron = true}), "faffaf");
  EXPECT_EQ(Plan({.depth = 2, .cross_attend = true, .macaron = true}),
            "facffacf");
  EXPECT_EQ(Plan({.depth = 4, .sandwich_coef = 2}), "aaafafff");
  EXPECT_EQ(Plan({.depth = 3, .sandwich_coef = 3}), "aaafff");
  EXPECT_EQ(Plan({.depth = 3, .macaron = true, .sandwich_coef = 1}),
            "afaffaff");
  EXPECT_EQ(Plan({.depth = 6, .par_ratio = 2}), "aaaaaaffffff");
  EXPECT_EQ(Plan({.depth = 6, .par_ratio = 4}), "affaffafffff");
  EXPECT_EQ(Plan({.depth = 4, .cross_attend = true, .par_ratio = 3}),
            "acacacacffff");
  EXPECT_EQ(Plan({.depth = 5, .macaron = true, .par_ratio = 5}),
            "afffafffaffffff");
  EXPECT_EQ(Plan({.depth = 12, .par_ratio = 6}), "affffaffffaffffaffffffff");
  auto custom = ParseLayerTypes("faacf");
  ASSERT_TRUE(custom.ok());
  EXPECT_EQ(Plan({.depth = 2, .custom_layers = *custom}), "faacf");
}

TEST(LayerTypesTest, MacaronHalvesFeedForward) {
  EXPECT_EQ(BuildLayerPlan({.depth = 1, .macaron = true})->feed_forward_scale,
            0.5f);
  EXPECT_EQ(BuildLayerPlan({.depth = 1})->feed_forward_scale, 1.0f);
}

TEST(LayerTypesTest, CountsAndRoundTrip) {
  auto types = ParseLayerTypes("afcaf");
  ASSERT_TRUE(types.ok());
  EXPECT_EQ(CountLayers(*types, LayerType::kAttention), 2);
  EXPECT_EQ(CountLayers(*types, LayerType::kCrossAttention), 1);
  EXPECT_EQ(LayerTypesToString(*types), "afcaf");
}

TEST(LayerTypesTest, BadOptionsAreInvalidArgument) {
  // Each rejected by an assert in x-transformers 0.26.6 as well.
  const LayerTypesConfig bad[] = {
      {.depth = 2, .sandwich_coef = 3},
      {.depth = 2, .sandwich_coef = 0},
      {.depth = 2, .par_ratio = 1},
      {.depth = 2, .par_ratio = 5},
      {.depth = 2, .cross_attend = true, .par_ratio = 2},
      {.depth = 0},
      {.depth = 2, .only_cross = true},
      {.depth = 2, .custom_layers = std::vector<LayerType>{}},
  };
  for (const LayerTypesConfig& config : bad) {
    EXPECT_EQ(BuildLayerPlan(config).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
  const auto status = ParseLayerTypes("afx").status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("'x'"), std::string::npos);
  EXPECT_EQ(ParseLayerTypes("").status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ftx
