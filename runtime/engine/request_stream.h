#ifndef TESSERA_RUNTIME_ENGINE_REQUEST_STREAM_H_
#define TESSERA_RUNTIME_ENGINE_REQUEST_STREAM_H_

// The events of one request, from the engine's step loop to whoever reads them.
// Thread-safe: the engine pushes from its loop while any thread reads.

#include <cstdint>
#include <deque>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "runtime/engine/request.h"

namespace tessera::engine {

class RequestStream {
 public:
  RequestStream(uint64_t id, std::string name) : id_(id), name_(std::move(name)) {}

  uint64_t id() const { return id_; }
  const std::string& name() const { return name_; }

  // The next event, waiting up to `timeout` for one. False on timeout. After the final event
  // has been read every call returns false at once.
  bool Next(TokenEvent* event, absl::Duration timeout = absl::InfiniteDuration());

  // True once the final event has been pushed (it may not have been read yet).
  bool finished() const;

  // Engine side.
  void Push(TokenEvent event);

 private:
  const uint64_t id_;
  const std::string name_;
  mutable absl::Mutex mutex_;
  std::deque<TokenEvent> events_ ABSL_GUARDED_BY(mutex_);
  bool final_pushed_ ABSL_GUARDED_BY(mutex_) = false;
  bool final_read_ ABSL_GUARDED_BY(mutex_) = false;
};

}  // namespace tessera::engine

#endif  // TESSERA_RUNTIME_ENGINE_REQUEST_STREAM_H_
