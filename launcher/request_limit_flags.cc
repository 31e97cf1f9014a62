#include "launcher/request_limit_flags.h"

#include "absl/strings/str_cat.h"

namespace tessera::launcher {

void AddRequestLimitFlags(FlagSet& flags, serve::RequestLimits* limits) {
  flags.Int("max-stop-strings", &limits->max_stop_strings,
            "stop strings one request may give (each is matched at every token)");
  flags.Int("max-stop-string-bytes", &limits->max_stop_string_bytes,
            "length of one stop string, bytes");
  flags.Int("max-stop-token-ids", &limits->max_stop_token_ids,
            "stop token ids one request may give");
  flags.Int("max-name-bytes", &limits->max_name_bytes,
            "length of a request's model, version, request_id, tenant and session_id");
}

absl::Status CheckRequestLimits(const serve::RequestLimits& limits) {
  const std::pair<int, const char*> values[] = {
      {limits.max_stop_strings, "--max-stop-strings"},
      {limits.max_stop_string_bytes, "--max-stop-string-bytes"},
      {limits.max_stop_token_ids, "--max-stop-token-ids"},
      {limits.max_name_bytes, "--max-name-bytes"}};
  for (const auto& [value, flag] : values) {
    if (value < 1) return absl::InvalidArgumentError(absl::StrCat(flag, ": must be >= 1"));
  }
  return absl::OkStatus();
}

std::vector<std::string> RequestLimitArguments(const serve::RequestLimits& limits) {
  return {"--max-stop-strings",      absl::StrCat(limits.max_stop_strings),
          "--max-stop-string-bytes", absl::StrCat(limits.max_stop_string_bytes),
          "--max-stop-token-ids",    absl::StrCat(limits.max_stop_token_ids),
          "--max-name-bytes",        absl::StrCat(limits.max_name_bytes)};
}

}  // namespace tessera::launcher
