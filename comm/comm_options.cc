#include "comm/comm_options.h"

#include <cmath>
#include <cstdlib>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace tessera::comm {

absl::StatusOr<absl::Duration> ParseTimeout(absl::string_view text) {
  absl::Duration duration;
  double seconds = 0;
  if (absl::SimpleAtod(text, &seconds)) {
    if (!std::isfinite(seconds)) {
      return absl::InvalidArgumentError(absl::StrCat("timeout '", text, "' must be finite"));
    }
    duration = absl::Seconds(seconds);
  } else if (!absl::ParseDuration(text, &duration)) {
    return absl::InvalidArgumentError(
        absl::StrCat("timeout '", text, "' is not a duration (examples: 30, 30s, 5m, 250ms)"));
  }
  if (duration == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError(absl::StrCat("timeout '", text, "' must be finite"));
  }
  if (duration <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat("timeout '", text, "' must be positive"));
  }
  return duration;
}

absl::StatusOr<CommOptions> CommOptions::FromEnvironment() {
  CommOptions options;
  if (const char* timeout = std::getenv("TESSERA_COMM_TIMEOUT"); timeout && *timeout) {
    absl::StatusOr<absl::Duration> parsed = ParseTimeout(timeout);
    if (!parsed.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("TESSERA_COMM_TIMEOUT: ", parsed.status().message()));
    }
    options.timeout = *parsed;
  }
  if (const char* validate = std::getenv("TESSERA_COMM_VALIDATE"); validate && *validate) {
    absl::string_view v = validate;
    if (v == "1" || v == "true" || v == "on") {
      options.validate = true;
    } else if (v == "0" || v == "false" || v == "off") {
      options.validate = false;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("TESSERA_COMM_VALIDATE: expected 1/0, true/false or on/off, not '", v, "'"));
    }
  }
  return options;
}

}  // namespace tessera::comm
