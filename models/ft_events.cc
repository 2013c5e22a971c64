#include "models/ft_events.h"

#include <algorithm>
#include <map>
#include <string>
#include <utility>

namespace ftx {

absl::string_view FtEventKindName(FtEventKind kind) {
  switch (kind) {
    case FtEventKind::kAttention:
      return "AttentionEvent";
    case FtEventKind::kQkv:
      return "QKVEvent";
    case FtEventKind::kIntermediateOutput:
      return "IntermediateOutput";
  }
  return "Event";
}

FtEventFilter::FtEventFilter(FtEventKind kind)
    : predicate_([kind](const FtEvent& event) { return event.kind == kind; }) {}

FtEventFilter operator&(FtEventFilter left, FtEventFilter right) {
  return FtEventFilter(
      [left = std::move(left), right = std::move(right)](const FtEvent& event) {
        return left(event) && right(event);
      });
}

FtEventFilter operator|(FtEventFilter left, FtEventFilter right) {
  return FtEventFilter(
      [left = std::move(left), right = std::move(right)](const FtEvent& event) {
        return left(event) || right(event);
      });
}

FtEventFilter operator~(FtEventFilter filter) {
  return FtEventFilter([filter = std::move(filter)](const FtEvent& event) {
    return !filter(event);
  });
}

FtEventFilter EventKindIs(FtEventKind kind) { return FtEventFilter(kind); }

FtEventFilter SourceNameContains(absl::string_view text) {
  return FtEventFilter([text = std::string(text)](const FtEvent& event) {
    return event.source.find(text) != absl::string_view::npos;
  });
}

FtEventFilter FromSource(absl::string_view name) {
  return FtEventFilter([name = std::string(name)](const FtEvent& event) {
    return event.source == name;
  });
}

FtEventDispatcher::ListenerId FtEventDispatcher::Listen(FtEventFilter filter,
                                                        Handler handler) {
  std::lock_guard<std::mutex> lock(mutex_);
  const ListenerId id = next_id_++;
  if (handler) {
    listeners_.push_back(std::make_shared<const Listener>(
        Listener{id, std::move(filter), std::move(handler)}));
  }
  return id;
}

bool FtEventDispatcher::Remove(ListenerId id) {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto found = std::find_if(
      listeners_.begin(), listeners_.end(),
      [id](const std::shared_ptr<const Listener>& l) { return l->id == id; });
  if (found == listeners_.end()) return false;
  listeners_.erase(found);
  return true;
}

void FtEventDispatcher::Clear() {
  std::lock_guard<std::mutex> lock(mutex_);
  listeners_.clear();
}

void FtEventDispatcher::Dispatch(const FtEvent& event) const {
  std::vector<std::shared_ptr<const Listener>> listeners;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (listeners_.empty()) return;
    listeners = listeners_;
  }
  for (const std::shared_ptr<const Listener>& listener : listeners) {
    if (listener->filter(event)) listener->handler(event);
  }
}

bool FtEventDispatcher::HasListeners() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return !listeners_.empty();
}

int64_t FtEventDispatcher::NumListeners() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return static_cast<int64_t>(listeners_.size());
}

std::shared_ptr<FtEventDispatcher> FtEventDispatcher::Get(
    absl::string_view key) {
  static std::mutex* const mutex = new std::mutex;
  static auto* const dispatchers =
      new std::map<std::string, std::shared_ptr<FtEventDispatcher>>;
  std::lock_guard<std::mutex> lock(*mutex);
  std::shared_ptr<FtEventDispatcher>& dispatcher =
      (*dispatchers)[std::string(key)];
  if (dispatcher == nullptr) dispatcher = std::make_shared<FtEventDispatcher>();
  return dispatcher;
}

}  // namespace ftx
