// Registry and builder: names, option validation, defaults, decorator syntax
// errors.
#include "attention/builder.h"

#include "attention/builtin.h"
#include "attention/full.h"
#include "gtest/gtest.h"

namespace ftx {
namespace {

class BuilderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(RegisterBuiltinAttentions(registry_).ok());
  }
  AttentionRegistry registry_;
};

TEST_F(BuilderTest, BuildsRegisteredMechanismsWithOptions) {
  AttentionBuilder builder(registry_);
  ASSERT_TRUE(builder.Set("softmax_temp", 0.25).ok());
  ASSERT_TRUE(builder.SetFromString("attention_dropout=0.2").ok());
  auto full = builder.Build("full");
  ASSERT_TRUE(full.ok()) << full.status();
  EXPECT_STREQ((*full)->name(), "full");
  const auto& options = static_cast<FullAttention&>(**full).options();
  EXPECT_FLOAT_EQ(*options.softmax_temp, 0.25f);
  EXPECT_FLOAT_EQ(options.attention_dropout, 0.2f);
  auto linear = builder.Build("linear");
  ASSERT_TRUE(linear.ok()) << linear.status();
  EXPECT_STREQ((*linear)->name(), "linear");
}

TEST_F(BuilderTest, DefaultsFollowFastTransformersRegistry) {
  AttentionBuilder builder(registry_);
  auto full = builder.Build("full");
  ASSERT_TRUE(full.ok());
  const auto& options = static_cast<FullAttention&>(**full).options();
  EXPECT_FALSE(options.softmax_temp.has_value());
  EXPECT_FLOAT_EQ(options.attention_dropout, 0.1f);
}

TEST_F(BuilderTest, UnknownNamesListValidOnes) {
  AttentionBuilder builder(registry_);
  auto unknown = builder.Build("fulll");
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kInvalidArgument);
  for (const char* name : {"causal-linear", "full", "linear", "reformer"}) {
    EXPECT_NE(unknown.status().message().find(name), std::string::npos)
        << unknown.status();
  }
  absl::Status status = builder.Set("sofmax_temp", 1.0);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("softmax_temp"), std::string::npos) << status;
}

TEST_F(BuilderTest, TypeErrorsAndBadValues) {
  AttentionBuilder builder(registry_);
  EXPECT_EQ(builder.Set("softmax_temp", std::string("x")).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(builder.SetFromString("attention_dropout=abc").code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(builder.SetFromString("no_equals").code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(builder.Set("attention_dropout", 1.5).ok());
  EXPECT_NE(builder.Build("full").status().message().find("attention_dropout"),
            std::string::npos);
  ASSERT_TRUE(builder.Set("feature_map", std::string("nope")).ok());
  EXPECT_EQ(builder.Build("linear").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(BuilderTest, RecurrentFormsFollowFastTransformersRegistries) {
  AttentionBuilder builder(registry_);
  for (const char* name : {"full", "linear", "causal-linear"}) {
    auto recurrent = builder.BuildRecurrent(name);
    ASSERT_TRUE(recurrent.ok()) << name << ": " << recurrent.status();
  }
  EXPECT_STREQ(builder.BuildRecurrent("causal-linear").value()->name(),
               "linear");
  for (const char* name : {"full", "linear"}) {
    EXPECT_TRUE(builder.BuildRecurrentCross(name).ok()) << name;
  }
  const auto missing = builder.BuildRecurrentCross("causal-linear");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(missing.status().message().find("full, linear"), std::string::npos)
      << missing.status();
}

TEST_F(BuilderTest, PlainMechanismsRejectDecoration) {
  AttentionBuilder builder(registry_);
  auto decorated = builder.Build("full:linear");
  EXPECT_EQ(decorated.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(decorated.status().message().find("does not decorate"),
            std::string::npos);
}

TEST_F(BuilderTest, RegistryRejectsDuplicates) {
  AttentionSpec spec;
  spec.name = "full";
  spec.factory = [](const AttentionOptions&,
                    std::vector<std::unique_ptr<Attention>>)
      -> absl::StatusOr<std::unique_ptr<Attention>> { return nullptr; };
  EXPECT_EQ(registry_.Register(spec).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ftx
