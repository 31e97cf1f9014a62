#include "runtime/serve/api_keys.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "runtime/serve/secrets.h"

namespace tessera::serve {
namespace {

constexpr absl::string_view kHashPrefix = "sha256:";
constexpr size_t kMaxTenantLength = 64;

bool IsTenantName(absl::string_view name) {
  if (name.empty() || name.size() > kMaxTenantLength) return false;
  for (char c : name) {
    if (!absl::ascii_isalnum(c) && c != '.' && c != '_' && c != '-') return false;
  }
  return true;
}

bool IsSha256Hex(absl::string_view hex) {
  if (hex.size() != 64) return false;
  for (char c : hex) {
    if (!absl::ascii_isxdigit(c)) return false;
  }
  return true;
}

}  // namespace

absl::StatusOr<ApiKeyTable> ApiKeyTable::Parse(absl::string_view text,
                                               absl::string_view file_name) {
  ApiKeyTable table;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    if (const size_t hash = line.find('#'); hash != absl::string_view::npos) {
      line = line.substr(0, hash);
    }
    std::vector<absl::string_view> words =
        absl::StrSplit(line, absl::ByAnyChar(" \t\r"), absl::SkipEmpty());
    if (words.empty()) continue;
    auto bad = [&](absl::string_view what) {
      return absl::InvalidArgumentError(absl::StrCat(file_name, ":", line_number, ": ", what));
    };
    if (words.size() != 2 || !absl::StartsWith(words[1], kHashPrefix)) {
      return bad(
          "expected \"TENANT sha256:HEX\" (the key's SHA-256; `tessera api-key` makes "
          "the line)");
    }
    if (!IsTenantName(words[0])) {
      return bad(absl::StrCat("tenant \"", absl::CEscape(words[0].substr(0, kMaxTenantLength)),
                              "\": expected 1 to ", kMaxTenantLength,
                              " letters, digits, '.', '_' or '-'"));
    }
    const absl::string_view hex = words[1].substr(kHashPrefix.size());
    if (!IsSha256Hex(hex)) return bad("the key's hash: expected 64 hex digits after sha256:");
    if (!table.tenant_by_hash_.emplace(absl::AsciiStrToLower(hex), words[0]).second) {
      return bad("this key's hash is given twice");
    }
  }
  return table;
}

std::optional<std::string> ApiKeyTable::TenantOf(absl::string_view key) const {
  auto found = tenant_by_hash_.find(Sha256Hex(key));
  if (found == tenant_by_hash_.end()) return std::nullopt;
  return found->second;
}

std::string ApiKeyLine(absl::string_view tenant, absl::string_view key) {
  return absl::StrCat(tenant, " ", kHashPrefix, Sha256Hex(key), "\n");
}

absl::StatusOr<std::string> NewApiKey() {
  absl::StatusOr<std::string> random = RandomHex(32);
  if (!random.ok()) return random.status();
  return absl::StrCat("tsk-", *random);
}

absl::StatusOr<std::unique_ptr<ApiKeyStore>> ApiKeyStore::Open(const std::string& path,
                                                               absl::Duration poll) {
  std::unique_ptr<ApiKeyStore> store(new ApiKeyStore(path));
  if (absl::Status read = store->Refresh(); !read.ok()) return read;
  store->watcher_ = std::thread([raw = store.get(), poll] { raw->WatchLoop(poll); });
  return store;
}

ApiKeyStore::~ApiKeyStore() {
  stop_.Notify();
  if (watcher_.joinable()) watcher_.join();
}

std::optional<std::string> ApiKeyStore::TenantOf(absl::string_view key) const {
  std::shared_ptr<const ApiKeyTable> table;
  {
    absl::MutexLock lock(&mutex_);
    table = table_;
  }
  return table == nullptr ? std::nullopt : table->TenantOf(key);
}

absl::StatusOr<ApiKeyStore::FileVersion> ApiKeyStore::Stat() const {
  struct stat info {};
  if (stat(path_.c_str(), &info) != 0) {
    return absl::NotFoundError(absl::StrCat(path_, ": ", std::strerror(errno)));
  }
  return FileVersion{.modified_ns = static_cast<int64_t>(info.st_mtim.tv_sec) * 1'000'000'000 +
                                    info.st_mtim.tv_nsec,
                     .size = static_cast<int64_t>(info.st_size),
                     .inode = static_cast<uint64_t>(info.st_ino)};
}

absl::Status ApiKeyStore::Refresh() {
  absl::StatusOr<FileVersion> version = Stat();
  if (!version.ok()) return version.status();
  {
    absl::MutexLock lock(&mutex_);
    if (table_ != nullptr && *version == version_) return absl::OkStatus();
  }
  std::ifstream file(path_);
  if (!file) return absl::NotFoundError(absl::StrCat(path_, ": cannot be read"));
  std::stringstream text;
  text << file.rdbuf();
  absl::StatusOr<ApiKeyTable> table = ApiKeyTable::Parse(text.str(), path_);
  absl::MutexLock lock(&mutex_);
  version_ = *version;  // a bad file is reported once, not at every poll
  if (!table.ok()) return table.status();
  table_ = std::make_shared<const ApiKeyTable>(*std::move(table));
  return absl::OkStatus();
}

void ApiKeyStore::WatchLoop(absl::Duration poll) {
  while (!stop_.WaitForNotificationWithTimeout(poll)) {
    if (absl::Status status = Refresh(); !status.ok()) {
      std::fprintf(stderr, "tessera: API keys: %s (the keys read before stay in use)\n",
                   std::string(status.message()).c_str());
    }
  }
}

}  // namespace tessera::serve
