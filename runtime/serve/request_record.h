#ifndef TESSERA_RUNTIME_SERVE_REQUEST_RECORD_H_
#define TESSERA_RUNTIME_SERVE_REQUEST_RECORD_H_

// What a service learned about one finished request, for metrics and logs.

#include <string>
#include <vector>

#include "absl/status/status.h"

namespace tessera::serve {

struct RequestRecord {
  std::string request_id;
  std::string tenant;
  std::string group;                       // where it ran; empty when it never ran
  absl::StatusCode code = absl::StatusCode::kOk;
  std::string finish_reason;               // "length", "stop", ... ("" when it failed early)
  int prompt_tokens = 0;
  int completion_tokens = 0;
  int cached_tokens = 0;
  double time_to_first_token_seconds = -1;  // < 0: no token came
  double total_seconds = 0;
  std::vector<double> inter_token_seconds;  // gaps between consecutive streamed messages
};

}  // namespace tessera::serve

#endif  // TESSERA_RUNTIME_SERVE_REQUEST_RECORD_H_
