#ifndef TESSERA_LAUNCHER_BENCH_LIMIT_H_
#define TESSERA_LAUNCHER_BENCH_LIMIT_H_

// How every `tessera bench` table prints a measured rate beside the limit it is held
// against (the FMA peak, the memory read bandwidth of launcher/read_bandwidth.h): one
// definition, so that "error" and "cache" mean the same in every bench.

#include <string>
#include <string_view>

namespace tessera::launcher {

// A measured rate held against its limit.
struct HeldAgainstLimit {
  // The ratio column's cell: measured / limit to two decimals; "error" where the measurement
  // beats its limit; "cache" where the bytes fit in the last-level caches, so that no memory
  // limit holds them; "-" where there is no limit (0: none measured).
  std::string cell;
  // The measurement beat its limit (cell "error"): the limit, or what was counted, is wrong,
  // and a ratio above 1 would hide that; the bench says so under its table (LimitErrorNote).
  bool error = false;
};

// `measured` and `limit` in the same unit; `in_cache` for a memory limit whose bytes fit in
// the caches (FitsInLastLevelCaches, launcher/read_bandwidth.h).
HeldAgainstLimit HoldAgainstLimit(double measured, double limit, bool in_cache = false);

// The line a bench prints under its table for a cell that says "error", with its newline:
// "# measurement error: <what> <measured> <unit>, faster than the <limit> <unit> limit: the
// limit or what was counted is wrong, so no ratio is given". Figures divided by `scale`
// (1e9 for "GB/s") and printed with two decimals.
std::string LimitErrorNote(std::string_view what, double measured, double limit, double scale,
                           std::string_view unit);

}  // namespace tessera::launcher

#endif  // TESSERA_LAUNCHER_BENCH_LIMIT_H_
