// fast-transformers' event system (fast_transformers/events/, release 0.4.0;
// IntermediateOutput from GitHub HEAD 2ad36b9): modules of a transformer make
// internal tensors available to listeners without changing their interfaces
// (an observer pattern).
//
//   event kinds (fast-transformers class)  payload
//   kAttention (AttentionEvent)            attention_matrix: "full" [N, H, L,
//   S]
//                                          after dropout; recurrent "full"
//                                          [N, H, steps]; recurrent cross
//                                          "full" [N, S, H]
//   kQkv (QKVEvent)                        queries [N, L, H, E], keys
//                                          [N, S, H, E], values [N, S, H, D],
//                                          after the AttentionLayer projections
//   kIntermediateOutput (IntermediateOutput, HEAD only)
//                                          x [N, L, C] (recurrent: [N, C]),
//                                          every layer's output before the
//                                          final norm
//
// An event names its source by the dotted module path of fast-transformers'
// root.named_modules() (the model is the root, ""): "layers.0.attention" (the
// attention layer, QKV events), "layers.0.attention.inner_attention" (the
// mechanism, attention events), "layers.1.self_attention.inner_attention",
// "layers.1.cross_attention.inner_attention" (decoders), "" (the stack,
// intermediate outputs). Tensors are views valid during the handler call only
// (copy what you keep); they may be strided, so read them with at().
//
// FtEventDispatcher mirrors EventDispatcher: Listen(filter, handler) (listen),
// Remove (remove; by the handle Listen returned, as C++ functions are not
// comparable), Clear (clear), Dispatch (dispatch; handlers run in the order
// they were added, for every event their filter accepts) and
// FtEventDispatcher::Get(key) (EventDispatcher.get: one shared dispatcher per
// key, "" the default every fast-transformers model uses). Listeners added or
// removed by a handler take effect from the next Dispatch.
//
// Filters (events/filters.py) compose with &, | and ~ as fast-transformers'
// EventFilter; an event kind converts to a filter as an event class does
// (C++ needs one operand to be a filter: FtEventFilter(kind) | other_kind):
//   EventKindIs(kind)          event_class(cls)
//   SourceNameContains(text)   layer_name_contains(root, text), with names
//                              relative to the model (the usual root)
//   FromSource(name)           from_layer(module)
//   FtEventFilter(predicate)   a callable
//
// Example:
//   std::shared_ptr<FtEventDispatcher> events = FtEventDispatcher::Get();
//   const FtEventDispatcher::ListenerId id = events->Listen(
//       FtEventKind::kAttention & SourceNameContains("layers.1"),
//       [](const FtEvent& event) { Inspect(event.attention_matrix); });
//   ... encoder->Forward(...) ...
//   events->Remove(id);
#ifndef FTX_MODELS_FT_EVENTS_H_
#define FTX_MODELS_FT_EVENTS_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"
#include "kernels/base/tensor_view.h"

namespace ftx {

enum class FtEventKind {
  kAttention,           // AttentionEvent
  kQkv,                 // QKVEvent
  kIntermediateOutput,  // IntermediateOutput
};

// fast-transformers' class name: "AttentionEvent", "QKVEvent",
// "IntermediateOutput".
absl::string_view FtEventKindName(FtEventKind kind);

// One event; only the payload of its kind is set.
struct FtEvent {
  FtEventKind kind = FtEventKind::kAttention;
  absl::string_view source;  // dotted module path, "" for the model itself
  TensorView<const float> attention_matrix;       // kAttention
  TensorView<const float> queries, keys, values;  // kQkv
  TensorView<const float> x;                      // kIntermediateOutput
};

// A predicate over events; the default filter accepts every event.
class FtEventFilter {
 public:
  using Predicate = std::function<bool(const FtEvent&)>;

  FtEventFilter() = default;
  // The events of one kind, as passing an Event class to listen().
  FtEventFilter(FtEventKind kind);  // NOLINT(google-explicit-constructor)
  // A callable; a null one accepts every event.
  explicit FtEventFilter(Predicate predicate)
      : predicate_(std::move(predicate)) {}

  bool operator()(const FtEvent& event) const {
    return !predicate_ || predicate_(event);
  }

 private:
  Predicate predicate_;
};

// Both / either / not (fast-transformers' &, |, ~); both operands are
// evaluated left to right with short-circuiting, as Python's and / or.
FtEventFilter operator&(FtEventFilter left, FtEventFilter right);
FtEventFilter operator|(FtEventFilter left, FtEventFilter right);
FtEventFilter operator~(FtEventFilter filter);

// event_class: events of `kind`.
FtEventFilter EventKindIs(FtEventKind kind);
// layer_name_contains: events whose source name contains `text`.
FtEventFilter SourceNameContains(absl::string_view text);
// from_layer: events whose source is exactly `name`.
FtEventFilter FromSource(absl::string_view name);

class FtEventDispatcher {
 public:
  using Handler = std::function<void(const FtEvent&)>;
  using ListenerId = uint64_t;

  FtEventDispatcher() = default;
  FtEventDispatcher(const FtEventDispatcher&) = delete;
  FtEventDispatcher& operator=(const FtEventDispatcher&) = delete;

  // Calls `handler` for every later event that `filter` accepts; the id
  // removes it again (ids are never reused). A null handler is ignored (its
  // id removes nothing).
  ListenerId Listen(FtEventFilter filter, Handler handler);
  // Whether a listener with this id was removed.
  bool Remove(ListenerId id);
  void Clear();
  // Runs the accepting handlers in the order they were added.
  void Dispatch(const FtEvent& event) const;

  // Whether any listener is registered: modules skip building events (and
  // materialising attention matrices) when none is.
  bool HasListeners() const;
  int64_t NumListeners() const;

  // The shared dispatcher named `key` (created on first use and kept for the
  // life of the program); "" is fast-transformers' default dispatcher.
  static std::shared_ptr<FtEventDispatcher> Get(absl::string_view key = "");

 private:
  struct Listener {
    ListenerId id;
    FtEventFilter filter;
    Handler handler;
  };

  mutable std::mutex mutex_;
  std::vector<std::shared_ptr<const Listener>> listeners_;
  ListenerId next_id_ = 1;
};

}  // namespace ftx

#endif  // FTX_MODELS_FT_EVENTS_H_
