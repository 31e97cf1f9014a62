#ifndef TESSERA_COMM_AGREEMENT_H_
#define TESSERA_COMM_AGREEMENT_H_

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "comm/communicator.h"

namespace tessera::comm {

// Makes the ranks of `group` fail together where only some of them may fail (each reads its
// own file, or one rank writes for all), instead of leaving the others to wait out a later
// collective's deadline: returns this rank's own error, ABORTED "another rank of <group>
// failed <doing>" when only another rank failed, OK when none did. Collective over a host
// (CPU) communicator: one all-reduce of one integer.
absl::Status AgreeOnStatus(Communicator& group, const absl::Status& mine, absl::string_view doing);

}  // namespace tessera::comm

#endif  // TESSERA_COMM_AGREEMENT_H_
