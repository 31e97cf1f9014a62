#include "runtime/core/check.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <mutex>

#include "absl/strings/str_cat.h"

namespace tessera {
namespace {

std::mutex identity_mutex;
ProcessIdentity& IdentityLocked() {
  static ProcessIdentity* identity = [] {
    auto* id = new ProcessIdentity;
    char host[256] = {};
    if (gethostname(host, sizeof(host) - 1) == 0) id->host = host;
    return id;
  }();
  return *identity;
}

// Source paths are reported from the project root ("comm/mpi/x.cc"), not as absolute paths.
absl::string_view RelativeSourcePath(absl::string_view file) {
  // The top-level folder nearest the file name wins, whatever the checkout's own path holds.
  size_t best = absl::string_view::npos;
  for (absl::string_view root :
       {"/runtime/", "/comm/", "/kernels/", "/launcher/", "/tests/", "/proto/"}) {
    size_t at = file.rfind(root);
    if (at != absl::string_view::npos && (best == absl::string_view::npos || at > best)) {
      best = at;
    }
  }
  return best == absl::string_view::npos ? file : file.substr(best + 1);
}

}  // namespace

void SetProcessIdentity(std::string host, int rank) {
  std::lock_guard<std::mutex> lock(identity_mutex);
  IdentityLocked() = ProcessIdentity{std::move(host), rank};
}

ProcessIdentity GetProcessIdentity() {
  std::lock_guard<std::mutex> lock(identity_mutex);
  return IdentityLocked();
}

std::string WithCallSite(absl::string_view message, const char* file, int line) {
  ProcessIdentity id = GetProcessIdentity();
  std::string rank = id.rank >= 0 ? absl::StrCat(id.rank) : "unknown";
  return absl::StrCat(message, " [", RelativeSourcePath(file), ":", line, ", host ", id.host,
                      ", rank ", rank, "]");
}

absl::Status LibraryCallError(absl::StatusCode code, absl::string_view call,
                              absl::string_view description, const char* file, int line) {
  return absl::Status(code, WithCallSite(absl::StrCat(call, " failed: ", description), file, line));
}

void FailInvariant(const char* condition, absl::string_view message, const char* file, int line) {
  std::string text =
      WithCallSite(absl::StrCat("check failed: ", condition, ": ", message), file, line);
  std::fprintf(stderr, "tessera: %s\n", text.c_str());
  std::fflush(stderr);
  std::abort();
}

}  // namespace tessera
