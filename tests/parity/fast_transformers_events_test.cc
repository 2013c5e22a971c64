// Parity of ftx's fast-transformers events (models/ft_events.h) with
// fast-transformers 0.4.0 (tools/fixtures/make_fast_transformers_events.py):
// a TransformerEncoderBuilder "full" model under a causal and a length mask
// dispatches the same QKVEvent and AttentionEvent tensors, in the same order
// and from the same sources; a RecurrentDecoderBuilder model with "full" self
// and cross attention dispatches the same AttentionEvent per step ([N, H, t]
// self, [N, S, H] cross). The layers' outputs are compared as HEAD's
// IntermediateOutput events (0.4.0 has none; the fixture captures them with
// forward hooks). Models are built from the fixture's builder dictionary,
// including its event_dispatcher key, so the shared dispatcher of that key
// receives the events. Every tensor matches to 1e-4 (relative to its scale).
#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "attention/builtin.h"
#include "gtest/gtest.h"
#include "kernels/base/tensor.h"
#include "models/ft_builders.h"
#include "models/ft_events.h"
#include "models/ft_state_dict.h"
#include "nlohmann/json.hpp"
#include "tests/parity/fixture.h"

namespace ftx::parity {
namespace {

constexpr char kDir[] = "tests/data/parity/fast_transformers/";

// An owned contiguous copy of a (possibly strided) event tensor.
Tensor CopyOf(TensorView<const float> view) {
  Tensor copy = Tensor::Create(DType::kF32, view.shape()).value();
  float* out = copy.data<float>();
  std::vector<int64_t> index(view.rank(), 0);
  for (int64_t i = 0; i < view.NumElements(); ++i) {
    int64_t offset = 0;
    for (int axis = 0; axis < view.rank(); ++axis) {
      offset += index[axis] * view.stride(axis);
    }
    out[i] = view.data()[offset];
    for (int axis = view.rank() - 1; axis >= 0; --axis) {
      if (++index[axis] < view.dim(axis)) break;
      index[axis] = 0;
    }
  }
  return copy;
}

struct Recorded {
  std::string kind, source;
  std::vector<std::pair<std::string, Tensor>> payload;
};

class FastTransformersEventsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ctx_ = Context::Create({.num_threads = 1}).value();
    ASSERT_TRUE(RegisterBuiltinAttentions(registry_).ok());
  }

  void TearDown() override {
    std::printf("worst relative error: events %.3g\n", worst_);
  }

  std::unique_ptr<ParamStore> LoadStore(const Fixture& fixture,
                                        const std::vector<ParamShape>& shapes) {
    auto store = ParamStore::Create(shapes);
    EXPECT_TRUE(store.ok()) << store.status();
    auto owned = std::make_unique<ParamStore>(std::move(store).value());
    const absl::Status status =
        LoadFixtureParams(fixture, FastTransformersMap(shapes), *owned);
    EXPECT_TRUE(status.ok()) << status;
    return owned;
  }

  // Starts recording every event of the dispatcher named by the fixture's
  // config.
  void Listen(const Fixture& fixture) {
    const nlohmann::json config = nlohmann::json::parse(fixture.Meta("config"));
    dispatcher_ = FtEventDispatcher::Get(
        config.at("event_dispatcher").get<std::string>());
    listener_ = dispatcher_->Listen({}, [this](const FtEvent& event) {
      Recorded record{std::string(FtEventKindName(event.kind)),
                      std::string(event.source),
                      {}};
      switch (event.kind) {
        case FtEventKind::kAttention:
          record.payload.emplace_back("attention_matrix",
                                      CopyOf(event.attention_matrix));
          break;
        case FtEventKind::kQkv:
          record.payload.emplace_back("queries", CopyOf(event.queries));
          record.payload.emplace_back("keys", CopyOf(event.keys));
          record.payload.emplace_back("values", CopyOf(event.values));
          break;
        case FtEventKind::kIntermediateOutput:
          record.payload.emplace_back("x", CopyOf(event.x));
          break;
      }
      recorded_.push_back(std::move(record));
    });
  }

  // The recorded events against the fixture's, in order.
  void ExpectEvents(const Fixture& fixture) {
    dispatcher_->Remove(listener_);
    const nlohmann::json expected =
        nlohmann::json::parse(fixture.Meta("events"));
    ASSERT_EQ(recorded_.size(), expected.size());
    for (size_t i = 0; i < recorded_.size(); ++i) {
      const std::string kind = expected[i][0].get<std::string>();
      const std::string source = expected[i][1].get<std::string>();
      EXPECT_EQ(recorded_[i].kind, kind) << "event " << i;
      EXPECT_EQ(recorded_[i].source, source) << "event " << i;
      for (const auto& [name, tensor] : recorded_[i].payload) {
        const std::string key = absl::StrCat("event.", i, ".", name);
        const Tensor want = fixture.Float(key);
        EXPECT_EQ(tensor.shape(), want.shape()) << key;
        ExpectParity(tensor.view<float>(), want.view<float>(),
                     kForwardTolerance, absl::StrCat(key, " (", source, ")"));
        worst_ = std::max(
            worst_, RelativeError(tensor.view<float>(), want.view<float>()));
      }
    }
  }

  std::unique_ptr<Context> ctx_;
  AttentionRegistry registry_;
  std::shared_ptr<FtEventDispatcher> dispatcher_;
  FtEventDispatcher::ListenerId listener_ = 0;
  std::vector<Recorded> recorded_;
  double worst_ = 0;
};

TEST_F(FastTransformersEventsTest, EncoderQkvAndAttentionEvents) {
  auto fixture =
      Fixture::Open(absl::StrCat(kDir, "events_encoder.safetensors"));
  ASSERT_TRUE(fixture.ok()) << fixture.status();
  TransformerEncoderBuilder builder(registry_);
  ASSERT_TRUE(builder.FromDictionary(fixture->Meta("config")).ok());
  auto encoder = builder.Get();
  ASSERT_TRUE(encoder.ok()) << encoder.status();
  std::unique_ptr<ParamStore> store =
      LoadStore(*fixture, (*encoder)->ParamShapes());
  const Tensor x = fixture->Float("input.x");
  FtEncoderInputs inputs;
  inputs.attn_mask = AttnMask::Causal();
  inputs.lengths.lengths = fixture->Int("input.lengths");
  std::vector<float> y(x.shape().NumElements());
  Listen(*fixture);
  const absl::Status status =
      (*encoder)->Forward(*ctx_, *store, x.view<float>(), inputs,
                          TensorView<float>(y.data(), x.shape()), false);
  ASSERT_TRUE(status.ok()) << status;
  ExpectEvents(*fixture);
  ExpectParity(TensorView<const float>(y.data(), x.shape()),
               fixture->Float("output.y").view<float>(), kForwardTolerance,
               "encoder output");
}

TEST_F(FastTransformersEventsTest, RecurrentDecoderStepAttentionEvents) {
  auto fixture =
      Fixture::Open(absl::StrCat(kDir, "events_recurrent_decoder.safetensors"));
  ASSERT_TRUE(fixture.ok()) << fixture.status();
  RecurrentDecoderBuilder builder(registry_);
  ASSERT_TRUE(builder.FromDictionary(fixture->Meta("config")).ok());
  auto decoder = builder.Get();
  ASSERT_TRUE(decoder.ok()) << decoder.status();
  std::unique_ptr<ParamStore> store =
      LoadStore(*fixture, (*decoder)->ParamShapes());
  const Tensor x = fixture->Float("input.x");  // [N, T, C]
  const Tensor memory = fixture->Float("input.memory");
  LengthMask memory_lengths;
  memory_lengths.lengths = fixture->Int("input.memory_lengths");
  const int64_t N = x.shape().dim(0), T = x.shape().dim(1),
                C = x.shape().dim(2);
  std::vector<float> y(N * T * C);
  FtRecurrentState state = (*decoder)->NewState();
  Listen(*fixture);
  for (int64_t t = 0; t < T; ++t) {
    std::vector<float> x_t(N * C), y_t(N * C);
    for (int64_t n = 0; n < N; ++n) {
      std::copy_n(x.data<float>() + (n * T + t) * C, C, x_t.data() + n * C);
    }
    const absl::Status status = (*decoder)->Step(
        *ctx_, *store, TensorView<const float>(x_t.data(), {N, C}),
        memory.view<float>(), memory_lengths, state,
        TensorView<float>(y_t.data(), {N, C}));
    ASSERT_TRUE(status.ok()) << status;
    for (int64_t n = 0; n < N; ++n) {
      std::copy_n(y_t.data() + n * C, C, y.data() + (n * T + t) * C);
    }
  }
  ExpectEvents(*fixture);
  ExpectParity(TensorView<const float>(y.data(), x.shape()),
               fixture->Float("output.y").view<float>(), kForwardTolerance,
               "decoder step outputs");
}

}  // namespace
}  // namespace ftx::parity
