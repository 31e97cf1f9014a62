#include "comm/host_name.h"

#include <unistd.h>

#include <cstdlib>

namespace tessera::comm {

std::string LocalHostName() {
  if (const char* name = std::getenv(kHostNameVariable); name != nullptr && *name != '\0') {
    return name;
  }
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0) return "unknown-host";
  return host;
}

}  // namespace tessera::comm
