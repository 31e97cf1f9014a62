#ifndef TESSERA_RUNTIME_MODEL_RESIDENT_MEMORY_H_
#define TESSERA_RUNTIME_MODEL_RESIDENT_MEMORY_H_

// This process's resident memory, from /proc/self/status (Linux), to report and test what
// loading a rank's weights costs.

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace tessera::model {

struct ResidentMemory {
  uint64_t rss_bytes = 0;        // VmRSS: all resident pages
  uint64_t rss_anon_bytes = 0;   // RssAnon: heap, stacks, anonymous mappings
  uint64_t rss_file_bytes = 0;   // RssFile: mapped pages of files on disk
  uint64_t rss_shmem_bytes = 0;  // RssShmem: mapped pages of shared memory and tmpfs files
  uint64_t peak_rss_bytes = 0;   // VmHWM: the most VmRSS has been since start or the last reset

  // Mapped file pages wherever the file lives (a checkpoint on tmpfs counts as shmem).
  uint64_t mapped_file_bytes() const { return rss_file_bytes + rss_shmem_bytes; }
};

// UNAVAILABLE where /proc/self/status is missing or lacks these fields.
absl::StatusOr<ResidentMemory> ReadResidentMemory();

// Parses the text of a /proc/<pid>/status file (values in kB). Exposed for tests.
absl::StatusOr<ResidentMemory> ParseProcStatus(const std::string& text);

// Resets VmHWM to the current VmRSS (writes "5" to /proc/self/clear_refs), so that a later
// peak_rss_bytes measures one phase. UNAVAILABLE where the kernel does not allow it.
absl::Status ResetPeakResidentMemory();

std::string FormatBytes(uint64_t bytes);  // "512 B", "3.5 MiB", "1.20 GiB"

}  // namespace tessera::model

#endif  // TESSERA_RUNTIME_MODEL_RESIDENT_MEMORY_H_
