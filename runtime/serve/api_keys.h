#ifndef TESSERA_RUNTIME_SERVE_API_KEYS_H_
#define TESSERA_RUNTIME_SERVE_API_KEYS_H_

// API keys of the client API. A key file holds one key per line, stored hashed:
//
//   # tenant   key (SHA-256 of the key the client sends)
//   acme       sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
//
// ('#' starts a comment; blank lines are skipped; a tenant may have several keys.) A client
// sends its key as gRPC metadata "authorization: Bearer KEY" (HTTP: the Authorization
// header); the key names the tenant the request runs as. `tessera api-key` makes a key and
// appends its line. ApiKeyStore re-reads its file when the file changes, so keys are added and
// revoked without a restart.

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

namespace tessera::serve {

// Key hashes -> tenants, from the text of a key file.
class ApiKeyTable {
 public:
  // INVALID_ARGUMENT naming `file_name` and the line: a line that is not "TENANT sha256:HEX"
  // (64 hex digits), a tenant name that is too long or has characters other than letters,
  // digits and "._-", or one hash given twice.
  static absl::StatusOr<ApiKeyTable> Parse(absl::string_view text, absl::string_view file_name);

  // The tenant of `key` (as the client sent it); nullopt when it is not in the table.
  std::optional<std::string> TenantOf(absl::string_view key) const;
  size_t size() const { return tenant_by_hash_.size(); }

 private:
  absl::flat_hash_map<std::string, std::string> tenant_by_hash_;  // hex SHA-256 -> tenant
};

// A line for a key file: "TENANT sha256:HEX\n".
std::string ApiKeyLine(absl::string_view tenant, absl::string_view key);

// A new random key, "tsk-" and 64 hex digits (256 bits).
absl::StatusOr<std::string> NewApiKey();

// A key file, kept current: re-read when its modification time, size or inode changes (checked
// every `poll`). A file that stops parsing keeps the last good table (and says so on stderr).
class ApiKeyStore {
 public:
  // Reads `path` now: its errors are returned. Then watches it on a thread of its own.
  static absl::StatusOr<std::unique_ptr<ApiKeyStore>> Open(const std::string& path,
                                                           absl::Duration poll = absl::Seconds(1));
  ~ApiKeyStore();

  std::optional<std::string> TenantOf(absl::string_view key) const;
  // Reads the file again if it changed; the error of a file that no longer parses.
  absl::Status Refresh();
  const std::string& path() const { return path_; }

 private:
  struct FileVersion {
    int64_t modified_ns = -1;
    int64_t size = -1;
    uint64_t inode = 0;
    bool operator==(const FileVersion&) const = default;
  };
  explicit ApiKeyStore(std::string path) : path_(std::move(path)) {}
  absl::StatusOr<FileVersion> Stat() const;
  void WatchLoop(absl::Duration poll);

  const std::string path_;
  mutable absl::Mutex mutex_;
  std::shared_ptr<const ApiKeyTable> table_ ABSL_GUARDED_BY(mutex_);
  FileVersion version_ ABSL_GUARDED_BY(mutex_);
  absl::Notification stop_;
  std::thread watcher_;
};

}  // namespace tessera::serve

#endif  // TESSERA_RUNTIME_SERVE_API_KEYS_H_
