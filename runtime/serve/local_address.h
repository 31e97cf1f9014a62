#ifndef TESSERA_RUNTIME_SERVE_LOCAL_ADDRESS_H_
#define TESSERA_RUNTIME_SERVE_LOCAL_ADDRESS_H_

// The address of this machine that faces another one: what a worker binds and advertises by
// default, so that it listens on the one interface its coordinator reaches it through
// (loopback when the coordinator is on this machine) instead of on every interface.

#include <string>

#include "absl/status/statusor.h"

namespace tessera::serve {

// The local IP address that packets to `host`:`port` leave from, as the routing table picks
// it (no packet is sent): "127.0.0.1" toward this machine, "10.0.0.5" toward a peer on that
// network; IPv6 addresses in brackets ("[::1]"), ready for "HOST:PORT". UNAVAILABLE naming
// the host when it does not resolve or no route leads there.
absl::StatusOr<std::string> LocalAddressToward(const std::string& host, int port);

}  // namespace tessera::serve

#endif  // TESSERA_RUNTIME_SERVE_LOCAL_ADDRESS_H_
