#ifndef TESSERA_COMM_HOST_NAME_H_
#define TESSERA_COMM_HOST_NAME_H_

#include <string>

namespace tessera::comm {

// Environment variable that overrides this process's host name for topology and messages.
// Tests simulate several nodes on one machine with it:
//   mpirun -np 2 env TESSERA_HOSTNAME=node-a prog : -np 2 env TESSERA_HOSTNAME=node-b prog
inline constexpr char kHostNameVariable[] = "TESSERA_HOSTNAME";

// TESSERA_HOSTNAME if set and non-empty, else gethostname().
std::string LocalHostName();

}  // namespace tessera::comm

#endif  // TESSERA_COMM_HOST_NAME_H_
