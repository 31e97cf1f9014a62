#include "runtime/engine/request_stream.h"

namespace tessera::engine {

const char* FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kNone:
      return "none";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kEos:
      return "eos";
    case FinishReason::kCancelled:
      return "cancelled";
    case FinishReason::kError:
      return "error";
  }
  return "unknown";
}

bool RequestStream::Next(TokenEvent* event, absl::Duration timeout) {
  absl::MutexLock lock(&mutex_);
  if (final_read_) return false;
  auto has_events = [](std::deque<TokenEvent>* events) { return !events->empty(); };
  if (!mutex_.AwaitWithTimeout(absl::Condition(+has_events, &events_), timeout)) return false;
  *event = std::move(events_.front());
  events_.pop_front();
  if (event->final) final_read_ = true;
  return true;
}

bool RequestStream::finished() const {
  absl::MutexLock lock(&mutex_);
  return final_pushed_;
}

void RequestStream::Push(TokenEvent event) {
  absl::MutexLock lock(&mutex_);
  if (final_pushed_) return;
  final_pushed_ = event.final;
  events_.push_back(std::move(event));
}

}  // namespace tessera::engine
