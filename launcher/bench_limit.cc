#include "launcher/bench_limit.h"

#include "absl/strings/str_format.h"

namespace tessera::launcher {

HeldAgainstLimit HoldAgainstLimit(double measured, double limit, bool in_cache) {
  if (in_cache) return {"cache", false};
  if (!(limit > 0)) return {"-", false};
  if (measured > limit) return {"error", true};
  return {absl::StrFormat("%.2f", measured / limit), false};
}

std::string LimitErrorNote(std::string_view what, double measured, double limit, double scale,
                           std::string_view unit) {
  return absl::StrFormat(
      "# measurement error: %s %.2f %s, faster than the %.2f %s limit: the limit or what was "
      "counted is wrong, so no ratio is given\n",
      what, measured / scale, unit, limit / scale, unit);
}

}  // namespace tessera::launcher
