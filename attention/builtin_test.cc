// Every registered mechanism builds from the registry with its documented
// options and runs forward and backward (finite values, right shapes) on a
// small batch; every recurrent form steps; the registry holds every mechanism
// the reference libraries define. The per-mechanism tests check the numbers;
// this checks the wiring.
#include "attention/builtin.h"

#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "attention/builder.h"
#include "gtest/gtest.h"
#include "tests/util/attention_data.h"

namespace ftx {
namespace {

using ::ftx::testing::AttentionCase;
using ::ftx::testing::AttentionData;

struct BuildCase {
  std::string type;
  std::map<std::string, OptionValue> options;
  bool causal = false;
};

const BuildCase kCases[] = {
    {"full", {}},
    {"linear", {}},
    {"linear", {{"feature_map", std::string("favor")}, {"n_dims", int64_t{8}}}},
    {"linear",
     {{"feature_map", std::string("random_fourier")}, {"n_dims", int64_t{8}}}},
    {"linear",
     {{"feature_map", std::string("smoothed_random_fourier")},
      {"n_dims", int64_t{9}}}},
    {"linear",
     {{"feature_map", std::string("generalized_random")},
      {"n_dims", int64_t{8}}}},
    {"linear", {{"feature_map", std::string("relu")}}},
    {"causal-linear", {}, true},
    {"favor", {{"nb_features", int64_t{16}}}},
    {"favor", {{"nb_features", int64_t{16}}, {"causal", true}}, true},
    {"favor", {{"generalized_attention", true}}},
    {"linformer", {{"seq_len", int64_t{8}}, {"k", int64_t{4}}}},
    {"local", {{"local_context", int64_t{3}}}},
    {"local", {{"local_context", int64_t{3}}}, true},
    {"local-windowed", {{"window_size", int64_t{4}}}},
    {"local-windowed", {{"window_size", int64_t{4}}, {"causal", true}}, true},
    {"mixed-local-linear",
     {{"n_local_attn_heads", int64_t{1}},
      {"local_attn_window_size", int64_t{4}}}},
    {"mixed-local-linear",
     {{"n_local_attn_heads", int64_t{1}},
      {"local_attn_window_size", int64_t{4}},
      {"causal", true}},
     true},
    {"clustered", {{"clusters", int64_t{2}}, {"bits", int64_t{8}}}},
    {"improved-clustered",
     {{"clusters", int64_t{2}}, {"bits", int64_t{8}}, {"topk", int64_t{4}}}},
    {"causal-improved-clustered",
     {{"clusters", int64_t{2}}, {"bits", int64_t{8}}, {"topk", int64_t{4}}},
     true},
    {"reformer",
     {{"chunk_size", int64_t{4}},
      {"bits", int64_t{2}},
      {"rounds", int64_t{2}}}},
    {"exact-topk", {{"topk", int64_t{3}}}},
    {"exact-topk", {{"topk", int64_t{3}}, {"use_entmax15", true}}},
    {"talking-heads", {{"n_heads", int64_t{2}}}},
    {"conditional-full:linear", {{"length_limit", int64_t{4}}}},
    {"conditional-full:local",
     {{"length_limit", int64_t{16}}, {"local_context", int64_t{3}}}},
    {"aft-full",
     {{"max_sequence_length", int64_t{8}},
      {"aft_parameterization", int64_t{4}}}},
    {"aft-simple", {}},
    {"aft-simple", {}, true},
};

bool AllFinite(const std::vector<float>& values) {
  for (float v : values) {
    if (!std::isfinite(v)) return false;
  }
  return true;
}

class BuiltinTest : public ::testing::TestWithParam<BuildCase> {
 protected:
  void SetUp() override {
    ASSERT_TRUE(RegisterBuiltinAttentions(registry_).ok());
    ctx_ = Context::Create({.num_threads = 2}).value();
  }
  AttentionRegistry registry_;
  std::unique_ptr<Context> ctx_;
};

TEST_P(BuiltinTest, BuildsAndRunsForwardAndBackward) {
  const BuildCase& build = GetParam();
  AttentionBuilder builder(registry_);
  for (const auto& [name, value] : build.options) {
    ASSERT_TRUE(builder.Set(name, value).ok()) << name;
  }
  auto attention = builder.Build(build.type);
  ASSERT_TRUE(attention.ok()) << build.type << ": " << attention.status();
  const AttentionCase c{2, 8, 8, 2, 4, 4};
  const AttentionData data(c, 7);
  AttentionInputs inputs = data.Inputs();
  if (build.causal) inputs.attn_mask = AttnMask::Causal();
  std::vector<float> out(data.OutSize(), NAN);
  AttentionCache cache;
  absl::Status status =
      (*attention)
          ->Forward(*ctx_, inputs,
                    TensorView<float>(out.data(), data.OutShape()), &cache);
  ASSERT_TRUE(status.ok()) << build.type << ": " << status;
  EXPECT_TRUE(AllFinite(out)) << build.type;
  std::vector<float> d_out(out.size(), 0.5f), d_q(c.n * c.l * c.h * c.e, NAN),
      d_k(c.n * c.s * c.h * c.e, NAN), d_v(c.n * c.s * c.h * c.d, NAN);
  status =
      (*attention)
          ->Backward(*ctx_, inputs, cache,
                     TensorView<const float>(d_out.data(), data.OutShape()),
                     {TensorView<float>(d_q.data(), {c.n, c.l, c.h, c.e}),
                      TensorView<float>(d_k.data(), {c.n, c.s, c.h, c.e}),
                      TensorView<float>(d_v.data(), {c.n, c.s, c.h, c.d})});
  ASSERT_TRUE(status.ok()) << build.type << ": " << status;
  EXPECT_TRUE(AllFinite(d_q) && AllFinite(d_k) && AllFinite(d_v)) << build.type;
}

INSTANTIATE_TEST_SUITE_P(Registry, BuiltinTest, ::testing::ValuesIn(kCases));

TEST(BuiltinRegistryTest, HasEveryReferenceMechanism) {
  AttentionRegistry registry;
  ASSERT_TRUE(RegisterBuiltinAttentions(registry).ok());
  for (const char* name :
       {"full", "linear", "causal-linear", "favor", "linformer", "local",
        "local-windowed", "mixed-local-linear", "clustered",
        "improved-clustered", "causal-improved-clustered", "reformer",
        "exact-topk", "talking-heads", "conditional-full", "aft-full",
        "aft-simple"}) {
    EXPECT_NE(registry.Find(name), nullptr) << name;
  }
}

TEST(BuiltinRegistryTest, EveryRecurrentFormSteps) {
  AttentionRegistry registry;
  ASSERT_TRUE(RegisterBuiltinAttentions(registry).ok());
  auto ctx = Context::Create({.num_threads = 1}).value();
  const std::map<std::string, std::map<std::string, OptionValue>> options = {
      {"local", {{"local_context", int64_t{3}}}},
      {"local-windowed", {{"window_size", int64_t{2}}, {"causal", true}}},
      {"favor", {{"causal", true}, {"nb_features", int64_t{8}}}}};
  int recurrent_forms = 0;
  for (const AttentionSpec* spec : registry.Specs()) {
    if (!spec->recurrent_factory) continue;
    ++recurrent_forms;
    AttentionBuilder builder(registry);
    auto it = options.find(spec->name);
    if (it != options.end()) {
      for (const auto& [name, value] : it->second)
        ASSERT_TRUE(builder.Set(name, value).ok());
    }
    auto recurrent = builder.BuildRecurrent(spec->name);
    ASSERT_TRUE(recurrent.ok()) << spec->name << ": " << recurrent.status();
    std::unique_ptr<RecurrentState> state = (*recurrent)->NewState();
    std::vector<float> q(2 * 2 * 4, 0.3f), k(2 * 2 * 4, -0.2f),
        v(2 * 2 * 4, 1.0f), out(2 * 2 * 4, NAN);
    for (int step = 0; step < 3; ++step) {
      const absl::Status status =
          (*recurrent)
              ->Step(*ctx, TensorView<const float>(q.data(), {2, 2, 4}),
                     TensorView<const float>(k.data(), {2, 2, 4}),
                     TensorView<const float>(v.data(), {2, 2, 4}),
                     TensorView<float>(out.data(), {2, 2, 4}), *state);
      ASSERT_TRUE(status.ok()) << spec->name << ": " << status;
      // Every value is 1, so any convex combination of them is 1.
      for (float o : out) EXPECT_NEAR(o, 1.0f, 1e-4) << spec->name;
    }
  }
  // full, linear, causal-linear, favor, local, local-windowed at least.
  EXPECT_GE(recurrent_forms, 6);
}

}  // namespace
}  // namespace ftx
