#ifndef TESSERA_COMM_MPI_MPI_TYPES_H_
#define TESSERA_COMM_MPI_MPI_TYPES_H_

// Mapping from Tessera dtypes and reduce ops to MPI handles. MPI has no bf16 or f16, so
// those get a 2-byte datatype of their own and user-defined reduction operators that
// compute in f32 (kernels/cpu/elementwise_reduce.h).

#include <mpi.h>

#include "absl/status/status.h"
#include "comm/collective.h"
#include "kernels/cpu/elementwise_reduce.h"
#include "runtime/core/dtype.h"

namespace tessera::comm {

// Creates and frees the bf16/f16 datatypes and operators. Called by MpiRuntime right after
// MPI_Init and right before MPI_Finalize.
absl::Status CreateMpiTypes();
void FreeMpiTypes();

// The MPI datatype of one element (int4 has none; ValidateOp refuses it before this).
MPI_Datatype MpiDatatypeOf(DType dtype);
// The MPI reduction operator for `op` on elements of `dtype`.
MPI_Op MpiOpOf(ReduceOp op, DType dtype);

// The host kernel's name for a reduce op.
kernels::Reduction ToReduction(ReduceOp op);

}  // namespace tessera::comm

#endif  // TESSERA_COMM_MPI_MPI_TYPES_H_
