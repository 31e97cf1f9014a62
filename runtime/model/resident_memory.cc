#include "runtime/model/resident_memory.h"

#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"

namespace tessera::model {

absl::StatusOr<ResidentMemory> ParseProcStatus(const std::string& text) {
  ResidentMemory memory;
  struct Field {
    absl::string_view key;
    uint64_t* value;
    bool found = false;
  } fields[] = {{"VmRSS", &memory.rss_bytes},
                {"RssAnon", &memory.rss_anon_bytes},
                {"RssFile", &memory.rss_file_bytes},
                {"RssShmem", &memory.rss_shmem_bytes},
                {"VmHWM", &memory.peak_rss_bytes}};
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    // "VmRSS:\t   12345 kB"
    std::pair<absl::string_view, absl::string_view> key_value = absl::StrSplit(line, ':');
    for (Field& field : fields) {
      if (key_value.first != field.key) continue;
      absl::string_view value = absl::StripAsciiWhitespace(key_value.second);
      uint64_t kib = 0;
      if (!absl::ConsumeSuffix(&value, " kB") ||
          !absl::SimpleAtoi(absl::StripAsciiWhitespace(value), &kib)) {
        return absl::UnavailableError(absl::StrCat("unreadable /proc status line: ", line));
      }
      *field.value = kib * 1024;
      field.found = true;
    }
  }
  for (const Field& field : fields) {
    if (!field.found) {
      return absl::UnavailableError(absl::StrCat("/proc status has no ", field.key, " line"));
    }
  }
  return memory;
}

absl::StatusOr<ResidentMemory> ReadResidentMemory() {
  std::ifstream in("/proc/self/status");
  if (!in) return absl::UnavailableError("cannot read /proc/self/status");
  std::ostringstream text;
  text << in.rdbuf();
  return ParseProcStatus(text.str());
}

absl::Status ResetPeakResidentMemory() {
  std::ofstream out("/proc/self/clear_refs");
  if (!out) return absl::UnavailableError("cannot open /proc/self/clear_refs");
  out << "5";
  out.close();
  if (!out) return absl::UnavailableError("the kernel refused to reset VmHWM");
  return absl::OkStatus();
}

std::string FormatBytes(uint64_t bytes) {
  if (bytes < 1024) return absl::StrCat(bytes, " B");
  if (bytes < (uint64_t{1} << 30)) {
    if (bytes < (uint64_t{1} << 20)) return absl::StrFormat("%.1f KiB", bytes / 1024.0);
    return absl::StrFormat("%.1f MiB", bytes / 1048576.0);
  }
  return absl::StrFormat("%.2f GiB", bytes / 1073741824.0);
}

}  // namespace tessera::model
