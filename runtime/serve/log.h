#ifndef TESSERA_RUNTIME_SERVE_LOG_H_
#define TESSERA_RUNTIME_SERVE_LOG_H_

// Structured logs of the serving processes: one JSON object per line on stderr, with the
// time, the component and the event's fields (request ids, groups, errors), so a log
// collector can index them.
//
//   {"ts":"2026-11-22T10:00:00.123Z","level":"info","component":"coordinator",
//    "event":"dispatch","request_id":"r-17","group":"g2"}

#include <string>
#include <utility>
#include <vector>

namespace tessera::serve {

using LogFields = std::vector<std::pair<std::string, std::string>>;

enum class LogLevel { kDebug, kInfo, kWarning, kError };

// Lines below this level are dropped. Starts at kInfo, or kDebug when the environment has
// TESSERA_LOG=debug.
void SetLogLevel(LogLevel level);
bool LogEnabled(LogLevel level);

void Log(LogLevel level, const std::string& component, const LogFields& fields);
inline void LogEvent(const std::string& component, const LogFields& fields) {
  Log(LogLevel::kInfo, component, fields);
}

}  // namespace tessera::serve

#endif  // TESSERA_RUNTIME_SERVE_LOG_H_
