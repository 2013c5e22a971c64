// fast-transformers' event system: dispatcher semantics (order, remove, clear,
// listeners changed inside a handler, shared dispatchers by key), filters and
// their combinators, and the events of builder-made stacks: a full-attention
// encoder's QKV / attention / intermediate-output events in order with their
// names, the attention matrices against softmax(Q K^T / sqrt(E) + masks)
// recomputed from the QKV events, no events and unchanged outputs without
// listeners, and a recurrent decoder's per-step attention events against the
// batch decoder's rows.
#include "models/ft_events.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "attention/builtin.h"
#include "gtest/gtest.h"
#include "models/ft_builders.h"
#include "models/ft_transformers.h"
#include "tests/util/random.h"
#include "tests/util/tolerance.h"

namespace ftx {
namespace {

using ::ftx::testing::AllNear;
using ::ftx::testing::RandomUniformVector;

// An owned, contiguous copy of a (possibly strided) view.
struct Copied {
  Shape shape;
  std::vector<float> data;
};

Copied CopyOf(TensorView<const float> view) {
  Copied copy{view.shape(), {}};
  std::vector<int64_t> index(view.rank(), 0);
  for (int64_t i = 0; i < view.NumElements(); ++i) {
    int64_t offset = 0;
    for (int axis = 0; axis < view.rank(); ++axis) {
      offset += index[axis] * view.stride(axis);
    }
    copy.data.push_back(view.data()[offset]);
    for (int axis = view.rank() - 1; axis >= 0; --axis) {
      if (++index[axis] < view.dim(axis)) break;
      index[axis] = 0;
    }
  }
  return copy;
}

struct Recorded {
  FtEventKind kind;
  std::string source;
  std::vector<Copied> tensors;  // matrix | q, k, v | x
};

// Listens to every event of `dispatcher` and keeps copies.
class Recorder {
 public:
  explicit Recorder(FtEventDispatcher& dispatcher, FtEventFilter filter = {})
      : dispatcher_(dispatcher) {
    id_ = dispatcher.Listen(std::move(filter), [this](const FtEvent& event) {
      Recorded record{event.kind, std::string(event.source), {}};
      switch (event.kind) {
        case FtEventKind::kAttention:
          record.tensors.push_back(CopyOf(event.attention_matrix));
          break;
        case FtEventKind::kQkv:
          record.tensors.push_back(CopyOf(event.queries));
          record.tensors.push_back(CopyOf(event.keys));
          record.tensors.push_back(CopyOf(event.values));
          break;
        case FtEventKind::kIntermediateOutput:
          record.tensors.push_back(CopyOf(event.x));
          break;
      }
      events.push_back(std::move(record));
    });
  }
  ~Recorder() { dispatcher_.Remove(id_); }

  std::vector<Recorded> events;

 private:
  FtEventDispatcher& dispatcher_;
  FtEventDispatcher::ListenerId id_;
};

FtEvent EventOf(FtEventKind kind, absl::string_view source) {
  FtEvent event;
  event.kind = kind;
  event.source = source;
  return event;
}

TEST(FtEventDispatcherTest, ListenRemoveClearInOrder) {
  FtEventDispatcher dispatcher;
  EXPECT_FALSE(dispatcher.HasListeners());
  std::vector<std::string> calls;
  const auto first =
      dispatcher.Listen({}, [&](const FtEvent&) { calls.push_back("first"); });
  const auto second = dispatcher.Listen(
      FtEventKind::kQkv, [&](const FtEvent&) { calls.push_back("second"); });
  dispatcher.Listen({}, [&](const FtEvent&) { calls.push_back("third"); });
  EXPECT_EQ(dispatcher.NumListeners(), 3);

  dispatcher.Dispatch(EventOf(FtEventKind::kQkv, "a"));
  EXPECT_EQ(calls, (std::vector<std::string>{"first", "second", "third"}));
  calls.clear();
  dispatcher.Dispatch(EventOf(FtEventKind::kAttention, "a"));
  EXPECT_EQ(calls, (std::vector<std::string>{"first", "third"}));

  EXPECT_TRUE(dispatcher.Remove(first));
  EXPECT_FALSE(dispatcher.Remove(first));
  calls.clear();
  dispatcher.Dispatch(EventOf(FtEventKind::kQkv, "a"));
  EXPECT_EQ(calls, (std::vector<std::string>{"second", "third"}));

  // A null handler registers nothing; its id is still fresh.
  const auto ignored = dispatcher.Listen({}, nullptr);
  EXPECT_NE(ignored, second);
  EXPECT_EQ(dispatcher.NumListeners(), 2);
  EXPECT_FALSE(dispatcher.Remove(ignored));

  dispatcher.Clear();
  EXPECT_FALSE(dispatcher.HasListeners());
  calls.clear();
  dispatcher.Dispatch(EventOf(FtEventKind::kQkv, "a"));
  EXPECT_TRUE(calls.empty());
}

TEST(FtEventDispatcherTest, ChangesInsideAHandlerApplyFromTheNextDispatch) {
  FtEventDispatcher dispatcher;
  int late_calls = 0, self_calls = 0;
  FtEventDispatcher::ListenerId self = 0;
  self = dispatcher.Listen({}, [&](const FtEvent&) {
    ++self_calls;
    dispatcher.Remove(self);
    dispatcher.Listen({}, [&](const FtEvent&) { ++late_calls; });
  });
  dispatcher.Dispatch(EventOf(FtEventKind::kQkv, ""));
  EXPECT_EQ(self_calls, 1);
  EXPECT_EQ(late_calls, 0);
  dispatcher.Dispatch(EventOf(FtEventKind::kQkv, ""));
  EXPECT_EQ(self_calls, 1);
  EXPECT_EQ(late_calls, 1);
}

TEST(FtEventDispatcherTest, GetSharesOneDispatcherPerKey) {
  EXPECT_EQ(FtEventDispatcher::Get(), FtEventDispatcher::Get(""));
  EXPECT_EQ(FtEventDispatcher::Get("a"), FtEventDispatcher::Get("a"));
  EXPECT_NE(FtEventDispatcher::Get("a"), FtEventDispatcher::Get("b"));
  EXPECT_NE(FtEventDispatcher::Get("a"), FtEventDispatcher::Get(""));
}

TEST(FtEventFilterTest, KindsNamesAndCombinators) {
  const FtEvent attention =
      EventOf(FtEventKind::kAttention, "layers.1.attention.inner_attention");
  const FtEvent qkv = EventOf(FtEventKind::kQkv, "layers.1.attention");
  const FtEvent output = EventOf(FtEventKind::kIntermediateOutput, "");

  EXPECT_TRUE(FtEventFilter()(attention));
  EXPECT_TRUE(FtEventFilter(FtEventFilter::Predicate())(qkv));
  EXPECT_TRUE(EventKindIs(FtEventKind::kAttention)(attention));
  EXPECT_FALSE(EventKindIs(FtEventKind::kAttention)(qkv));
  EXPECT_EQ(FtEventKindName(FtEventKind::kQkv), "QKVEvent");
  EXPECT_EQ(FtEventKindName(FtEventKind::kAttention), "AttentionEvent");
  EXPECT_EQ(FtEventKindName(FtEventKind::kIntermediateOutput),
            "IntermediateOutput");

  EXPECT_TRUE(SourceNameContains("layers.1")(qkv));
  EXPECT_FALSE(SourceNameContains("layers.0")(qkv));
  EXPECT_TRUE(SourceNameContains("")(output));
  EXPECT_TRUE(FromSource("layers.1.attention")(qkv));
  EXPECT_FALSE(FromSource("layers.1.attention")(attention));
  EXPECT_TRUE(FromSource("")(output));

  const FtEventFilter layer_one_attention =
      FtEventKind::kAttention & SourceNameContains("layers.1");
  EXPECT_TRUE(layer_one_attention(attention));
  EXPECT_FALSE(layer_one_attention(qkv));
  const FtEventFilter either =
      FtEventFilter(FtEventKind::kQkv) | FtEventKind::kAttention;
  EXPECT_TRUE(either(qkv));
  EXPECT_TRUE(either(attention));
  EXPECT_FALSE(either(output));
  EXPECT_TRUE((~either)(output));
  EXPECT_FALSE((~FtEventFilter())(output));

  // Short-circuiting: the right operand is not evaluated when the left decides.
  int evaluated = 0;
  const FtEventFilter counting([&](const FtEvent&) {
    ++evaluated;
    return true;
  });
  (FtEventFilter(FtEventKind::kQkv) & counting)(attention);
  (FtEventFilter(FtEventKind::kAttention) | counting)(attention);
  EXPECT_EQ(evaluated, 0);
  (FtEventFilter(FtEventKind::kAttention) & counting)(attention);
  EXPECT_EQ(evaluated, 1);
}

class FtModelEventsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ctx_ = Context::Create({.num_threads = 1}).value();
    ASSERT_TRUE(RegisterBuiltinAttentions(registry_).ok());
  }

  template <typename Model>
  std::unique_ptr<ParamStore> MakeStore(const Model& model) {
    auto store = ParamStore::Create(model.ParamShapes());
    EXPECT_TRUE(store.ok()) << store.status();
    auto owned = std::make_unique<ParamStore>(std::move(store).value());
    EXPECT_TRUE(model.InitParams(*ctx_, *owned).ok());
    return owned;
  }

  std::unique_ptr<Context> ctx_;
  AttentionRegistry registry_;
};

constexpr char kEncoderConfig[] = R"({"n_layers": 2, "n_heads": 3,
    "query_dimensions": 4, "value_dimensions": 5,
    "feed_forward_dimensions": 7, "dropout": 0.0, "attention_dropout": 0.0,
    "final_normalization": false, "seed": 3,
    "event_dispatcher": "ft_events_test_encoder"})";

TEST_F(FtModelEventsTest, EncoderDispatchesQkvAttentionAndOutputsInOrder) {
  TransformerEncoderBuilder builder(registry_);
  ASSERT_TRUE(builder.FromDictionary(kEncoderConfig).ok());
  auto encoder = builder.Get();
  ASSERT_TRUE(encoder.ok()) << encoder.status();
  std::unique_ptr<ParamStore> store = MakeStore(**encoder);
  const int64_t N = 2, L = 6, C = 15, H = 3, E = 4, D = 5;
  std::vector<float> x = RandomUniformVector<float>(N * L * C, 7);
  std::vector<float> y(x.size()), y_quiet(x.size());
  FtEncoderInputs inputs;
  inputs.attn_mask = AttnMask::Causal();
  inputs.lengths.lengths = {6, 4};
  const TensorView<const float> x_view(x.data(), {N, L, C});

  // Without listeners: no events, the reference output.
  ASSERT_TRUE((*encoder)
                  ->Forward(*ctx_, *store, x_view, inputs,
                            TensorView<float>(y_quiet.data(), {N, L, C}), false)
                  .ok());
  FtEventDispatcher& events = *FtEventDispatcher::Get("ft_events_test_encoder");
  std::vector<Recorded> recorded;
  {
    Recorder recorder(events);
    ASSERT_TRUE((*encoder)
                    ->Forward(*ctx_, *store, x_view, inputs,
                              TensorView<float>(y.data(), {N, L, C}), true)
                    .ok());
    recorded = recorder.events;
  }
  EXPECT_TRUE(AllNear(y, y_quiet, {.abs = 0, .rel = 0}));

  const std::vector<std::pair<FtEventKind, std::string>> expected = {
      {FtEventKind::kQkv, "layers.0.attention"},
      {FtEventKind::kAttention, "layers.0.attention.inner_attention"},
      {FtEventKind::kIntermediateOutput, ""},
      {FtEventKind::kQkv, "layers.1.attention"},
      {FtEventKind::kAttention, "layers.1.attention.inner_attention"},
      {FtEventKind::kIntermediateOutput, ""}};
  ASSERT_EQ(recorded.size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(recorded[i].kind, expected[i].first) << i;
    EXPECT_EQ(recorded[i].source, expected[i].second) << i;
  }
  for (int layer = 0; layer < 2; ++layer) {
    const Recorded& qkv = recorded[3 * layer];
    const Recorded& attention = recorded[3 * layer + 1];
    ASSERT_EQ(qkv.tensors[0].shape, (Shape{N, L, H, E}));
    ASSERT_EQ(qkv.tensors[1].shape, (Shape{N, L, H, E}));
    ASSERT_EQ(qkv.tensors[2].shape, (Shape{N, L, H, D}));
    ASSERT_EQ(attention.tensors[0].shape, (Shape{N, H, L, L}));
    // softmax(Q K^T / sqrt(E) + causal + key lengths) from the QKV event.
    const std::vector<float>& q = qkv.tensors[0].data;
    const std::vector<float>& k = qkv.tensors[1].data;
    std::vector<double> want(N * H * L * L, 0.0);
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t h = 0; h < H; ++h) {
        for (int64_t l = 0; l < L; ++l) {
          const int64_t visible =
              std::min<int64_t>(l + 1, inputs.lengths.lengths[n]);
          double* row = &want[((n * H + h) * L + l) * L];
          double total = 0;
          for (int64_t s = 0; s < visible; ++s) {
            double dot = 0;
            for (int64_t e = 0; e < E; ++e) {
              dot += static_cast<double>(q[((n * L + l) * H + h) * E + e]) *
                     k[((n * L + s) * H + h) * E + e];
            }
            row[s] = std::exp(dot / std::sqrt(static_cast<double>(E)));
            total += row[s];
          }
          for (int64_t s = 0; s < visible; ++s) row[s] /= total;
        }
      }
    }
    EXPECT_TRUE(
        AllNear(attention.tensors[0].data, want, {.abs = 1e-6, .rel = 1e-5}))
        << "layer " << layer;
  }
  // No final norm: the last intermediate output is the model output.
  EXPECT_TRUE(AllNear(recorded[5].tensors[0].data, y, {.abs = 0, .rel = 0}));
  EXPECT_EQ(recorded[5].tensors[0].shape, (Shape{N, L, C}));

  // A filtered listener sees only its events; a model without a dispatcher
  // dispatches nothing.
  {
    Recorder recorder(events,
                      FtEventKind::kAttention & SourceNameContains("layers.1"));
    ASSERT_TRUE((*encoder)
                    ->Forward(*ctx_, *store, x_view, inputs,
                              TensorView<float>(y.data(), {N, L, C}), false)
                    .ok());
    ASSERT_EQ(recorder.events.size(), 1u);
    EXPECT_EQ(recorder.events[0].source, "layers.1.attention.inner_attention");
    (*encoder)->SetEventDispatcher(nullptr);
    ASSERT_TRUE((*encoder)
                    ->Forward(*ctx_, *store, x_view, inputs,
                              TensorView<float>(y.data(), {N, L, C}), false)
                    .ok());
    EXPECT_EQ(recorder.events.size(), 1u);
  }
  EXPECT_TRUE(AllNear(y, y_quiet, {.abs = 0, .rel = 0}));
}

TEST_F(FtModelEventsTest, ConditionalFullDispatchesFromItsFullBranchOnly) {
  // fast-transformers' ConditionalFullAttention holds a FullAttention
  // submodule "full_attention": it dispatches when that branch runs (L, S <=
  // length_limit) and the other mechanism ("linear") dispatches nothing.
  TransformerEncoderBuilder builder(registry_);
  ASSERT_TRUE(builder
                  .FromDictionary(R"({"n_layers": 1, "n_heads": 2,
                      "query_dimensions": 3, "value_dimensions": 3,
                      "feed_forward_dimensions": 5, "dropout": 0.0,
                      "attention_dropout": 0.0, "seed": 4,
                      "attention_type": "conditional-full:linear",
                      "length_limit": 4,
                      "event_dispatcher": "ft_events_test_conditional"})")
                  .ok());
  auto encoder = builder.Get();
  ASSERT_TRUE(encoder.ok()) << encoder.status();
  std::unique_ptr<ParamStore> store = MakeStore(**encoder);
  FtEventDispatcher& events =
      *FtEventDispatcher::Get("ft_events_test_conditional");
  for (const int64_t L : {4, 5}) {
    std::vector<float> x = RandomUniformVector<float>(2 * L * 6, 8);
    std::vector<float> y(x.size());
    Recorder recorder(events, FtEventKind::kAttention);
    ASSERT_TRUE((*encoder)
                    ->Forward(*ctx_, *store,
                              TensorView<const float>(x.data(), {2, L, 6}), {},
                              TensorView<float>(y.data(), {2, L, 6}), false)
                    .ok());
    if (L == 4) {
      ASSERT_EQ(recorder.events.size(), 1u);
      EXPECT_EQ(recorder.events[0].source,
                "layers.0.attention.inner_attention.full_attention");
      EXPECT_EQ(recorder.events[0].tensors[0].shape, (Shape{2, 2, L, L}));
    } else {
      EXPECT_TRUE(recorder.events.empty());
    }
  }
}

TEST_F(FtModelEventsTest, ModelsUseTheDefaultDispatcherUnlessTold) {
  FtTransformerConfig config;
  config.n_layers = 1;
  config.n_heads = 1;
  config.d_model = 4;
  config.d_keys = 4;
  config.d_values = 4;
  config.d_ff = 4;
  auto encoder = FtTransformerEncoder::Create(config, registry_);
  ASSERT_TRUE(encoder.ok()) << encoder.status();
  EXPECT_EQ((*encoder)->event_dispatcher(), FtEventDispatcher::Get());
}

TEST_F(FtModelEventsTest, RecurrentDecoderStepsMatchBatchAttentionRows) {
  constexpr char kConfig[] = R"({"n_layers": 2, "n_heads": 2,
      "query_dimensions": 3, "value_dimensions": 4,
      "feed_forward_dimensions": 5, "dropout": 0.0, "attention_dropout": 0.0,
      "seed": 9})";
  auto dispatcher = std::make_shared<FtEventDispatcher>();
  TransformerDecoderBuilder batch_builder(registry_);
  ASSERT_TRUE(batch_builder.FromDictionary(kConfig).ok());
  batch_builder.SetEventDispatcher(dispatcher);
  RecurrentDecoderBuilder step_builder(registry_);
  ASSERT_TRUE(step_builder.FromDictionary(kConfig).ok());
  step_builder.SetEventDispatcher(dispatcher);
  auto batch = batch_builder.Get();
  auto stepper = step_builder.Get();
  ASSERT_TRUE(batch.ok()) << batch.status();
  ASSERT_TRUE(stepper.ok()) << stepper.status();
  std::unique_ptr<ParamStore> store = MakeStore(**batch);

  const int64_t N = 2, L = 4, S = 5, C = 8, H = 2;
  const std::vector<float> x = RandomUniformVector<float>(N * L * C, 21);
  const std::vector<float> memory = RandomUniformVector<float>(N * S * C, 22);
  FtDecoderInputs inputs;
  inputs.x_mask = AttnMask::Causal();
  inputs.memory_lengths.lengths = {5, 3};
  std::vector<float> y(x.size());
  Recorder recorder(*dispatcher, FtEventKind::kAttention);
  ASSERT_TRUE(
      (*batch)
          ->Forward(*ctx_, *store, TensorView<const float>(x.data(), {N, L, C}),
                    TensorView<const float>(memory.data(), {N, S, C}), inputs,
                    TensorView<float>(y.data(), {N, L, C}), false)
          .ok());
  // Per layer: self then cross.
  ASSERT_EQ(recorder.events.size(), 4u);
  const std::vector<Recorded> batch_events = recorder.events;
  EXPECT_EQ(batch_events[0].source, "layers.0.self_attention.inner_attention");
  EXPECT_EQ(batch_events[1].source, "layers.0.cross_attention.inner_attention");
  EXPECT_EQ(batch_events[3].source, "layers.1.cross_attention.inner_attention");
  recorder.events.clear();

  FtRecurrentState state = (*stepper)->NewState();
  for (int64_t t = 0; t < L; ++t) {
    std::vector<float> x_t(N * C), y_t(N * C);
    for (int64_t n = 0; n < N; ++n) {
      std::copy_n(x.data() + (n * L + t) * C, C, x_t.data() + n * C);
    }
    ASSERT_TRUE((*stepper)
                    ->Step(*ctx_, *store,
                           TensorView<const float>(x_t.data(), {N, C}),
                           TensorView<const float>(memory.data(), {N, S, C}),
                           inputs.memory_lengths, state,
                           TensorView<float>(y_t.data(), {N, C}))
                    .ok());
    ASSERT_EQ(recorder.events.size(), 4u) << "step " << t;
    for (int64_t i = 0; i < 4; ++i) {
      const Recorded& step = recorder.events[i];
      const Recorded& whole = batch_events[i];
      EXPECT_EQ(step.source, whole.source);
      const bool cross = i % 2 == 1;
      const int64_t keys = cross ? S : t + 1;
      ASSERT_EQ(step.tensors[0].shape,
                cross ? (Shape{N, S, H}) : (Shape{N, H, t + 1}));
      const int64_t batch_keys = cross ? S : L;
      std::vector<float> got, want;
      for (int64_t n = 0; n < N; ++n) {
        for (int64_t h = 0; h < H; ++h) {
          for (int64_t s = 0; s < keys; ++s) {
            got.push_back(cross ? step.tensors[0].data[(n * S + s) * H + h]
                                : step.tensors[0].data[(n * H + h) * keys + s]);
            want.push_back(
                whole.tensors[0].data[((n * H + h) * L + t) * batch_keys + s]);
          }
        }
      }
      EXPECT_TRUE(AllNear(got, want, {.abs = 1e-5, .rel = 1e-4}))
          << "step " << t << " event " << i;
    }
    recorder.events.clear();
  }
}

}  // namespace
}  // namespace ftx
