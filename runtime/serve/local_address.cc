#include "runtime/serve/local_address.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace tessera::serve {

absl::StatusOr<std::string> LocalAddressToward(const std::string& host, int port) {
  const std::string bare(absl::StripSuffix(absl::StripPrefix(host, "["), "]"));
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* found = nullptr;
  const std::string service = absl::StrCat(port);
  if (int error = getaddrinfo(bare.c_str(), service.c_str(), &hints, &found); error != 0) {
    return absl::UnavailableError(absl::StrCat("cannot resolve ", host, ": ", gai_strerror(error)));
  }
  std::string why = "no address";
  for (addrinfo* candidate = found; candidate != nullptr; candidate = candidate->ai_next) {
    // Connecting a datagram socket only picks the route and the source address.
    int fd = socket(candidate->ai_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      why = std::strerror(errno);
      continue;
    }
    sockaddr_storage local{};
    socklen_t length = sizeof(local);
    if (connect(fd, candidate->ai_addr, candidate->ai_addrlen) != 0 ||
        getsockname(fd, reinterpret_cast<sockaddr*>(&local), &length) != 0) {
      why = std::strerror(errno);
      close(fd);
      continue;
    }
    close(fd);
    char text[INET6_ADDRSTRLEN] = {};
    const void* address =
        local.ss_family == AF_INET6
            ? static_cast<const void*>(&reinterpret_cast<const sockaddr_in6*>(&local)->sin6_addr)
            : &reinterpret_cast<const sockaddr_in*>(&local)->sin_addr;
    if (inet_ntop(local.ss_family, address, text, sizeof(text)) == nullptr) {
      why = std::strerror(errno);
      continue;
    }
    freeaddrinfo(found);
    return local.ss_family == AF_INET6 ? absl::StrCat("[", text, "]") : std::string(text);
  }
  freeaddrinfo(found);
  return absl::UnavailableError(absl::StrCat("no route to ", host, ": ", why));
}

}  // namespace tessera::serve
