// ParamStore: layout, lookup, visitor order, gradient zeroing, errors.
#include "models/param_store.h"

#include "gtest/gtest.h"

namespace ftx {
namespace {

TEST(ParamStoreTest, LaysOutNamedViewsInOneArena) {
  auto store = ParamStore::Create(
      WithPrefix("layers.0.", {{"g", {3}}, {"proj.weight", {2, 3}}}));
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ(store->NumParams(), 9);
  EXPECT_EQ(store->NumTensors(), 2);
  auto weight = store->Value("layers.0.proj.weight");
  ASSERT_TRUE(weight.ok());
  EXPECT_EQ(weight->shape(), (Shape{2, 3}));
  EXPECT_EQ(weight->data(), store->values().data() + 3);
  weight->at(1, 2) = 7.0f;
  EXPECT_EQ(store->values().data()[8], 7.0f);

  std::vector<std::string> names;
  int64_t counted = 0;
  store->ForEachParam([&](const ParamSlot& slot) {
    names.push_back(slot.name);
    counted += slot.value.NumElements();
    slot.grad.data()[0] = 1.0f;
    EXPECT_EQ(slot.first_moment.shape(), slot.value.shape());
  });
  EXPECT_EQ(names, (std::vector<std::string>{"layers.0.g", "layers.0.proj.weight"}));
  EXPECT_EQ(counted, 9);
  EXPECT_EQ(store->grads().data()[3], 1.0f);
  store->ZeroGrads();
  EXPECT_EQ(store->grads().data()[3], 0.0f);
}

TEST(ParamStoreTest, ErrorsNameTheProblem) {
  auto duplicate = ParamStore::Create({{"a", {2}}, {"a", {3}}});
  EXPECT_EQ(duplicate.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(duplicate.status().message().find("a appears twice"), std::string::npos);
  EXPECT_FALSE(ParamStore::Create({{"", {2}}}).ok());
  EXPECT_FALSE(ParamStore::Create({{"b", {2, -1}}}).ok());
  auto store = ParamStore::Create({{"a", {2}}}).value();
  EXPECT_EQ(store.Value("missing").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace ftx
