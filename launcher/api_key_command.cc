#include "launcher/api_key_command.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "launcher/flags.h"
#include "launcher/process.h"
#include "runtime/serve/api_keys.h"

namespace tessera::launcher {
namespace {

struct ApiKeyConfig {
  std::string tenant;
  std::string file;
};

absl::Status AddKey(const ApiKeyConfig& config) {
  if (config.tenant.empty()) return absl::InvalidArgumentError("--tenant: required");
  if (config.file.empty()) return absl::InvalidArgumentError("--file: required (the key file)");
  absl::StatusOr<std::string> key = serve::NewApiKey();
  if (!key.ok()) return key.status();
  const std::string line = serve::ApiKeyLine(config.tenant, *key);
  // The file as it will be, checked before it is written: a bad tenant name changes nothing.
  std::string text;
  bool ends_mid_line = false;
  if (std::ifstream existing(config.file); existing) {
    std::stringstream read;
    read << existing.rdbuf();
    text = read.str();
    ends_mid_line = !text.empty() && text.back() != '\n';
    if (ends_mid_line) text += '\n';
  }
  absl::StatusOr<serve::ApiKeyTable> table = serve::ApiKeyTable::Parse(text + line, config.file);
  if (!table.ok()) return table.status();
  // Readable by its owner only: it names the tenants.
  const int fd = open(config.file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (fd < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--file: cannot open ", config.file, ": ", std::strerror(errno)));
  }
  const std::string appended = absl::StrCat(ends_mid_line ? "\n" : "", line);
  const ssize_t written = write(fd, appended.data(), appended.size());
  close(fd);
  if (written != static_cast<ssize_t>(appended.size())) {
    return absl::InternalError(absl::StrCat("--file: writing ", config.file, " failed"));
  }
  std::printf("%s\n", key->c_str());
  std::fprintf(stderr,
               "tessera api-key: a key for tenant %s, its hash added to %s (%zu keys). The key "
               "above is stored nowhere else; clients send it as \"authorization: Bearer KEY\" "
               "(tessera client --api-key-file, or TESSERA_API_KEY).\n",
               config.tenant.c_str(), config.file.c_str(), table->size());
  return absl::OkStatus();
}

}  // namespace

int RunApiKey(const std::vector<std::string>& args, int* /*argc*/, char*** /*argv*/) {
  ApiKeyConfig config;
  FlagSet flags("tessera api-key",
                "Makes an API key for a tenant: appends its SHA-256 to the key file that "
                "`tessera coordinator --api-keys` reads, and prints the key.");
  flags.String("tenant", &config.tenant, "the tenant the key's requests run as (required)");
  flags.String("file", &config.file, "the key file (created when missing) (required)");
  if (std::optional<int> done = ParseOrExit(flags, args)) return *done;
  if (absl::Status status = AddKey(config); !status.ok()) {
    std::fprintf(stderr, "tessera api-key: %s\n", std::string(status.message()).c_str());
    return status.code() == absl::StatusCode::kInvalidArgument ? kExitUsage : kExitFailure;
  }
  return kExitOk;
}

}  // namespace tessera::launcher
