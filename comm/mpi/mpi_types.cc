#include "comm/mpi/mpi_types.h"

#include "comm/mpi/mpi_check.h"
#include "kernels/cpu/elementwise_reduce.h"

namespace tessera::comm {
namespace {

MPI_Datatype bf16_type = MPI_DATATYPE_NULL;
MPI_Datatype f16_type = MPI_DATATYPE_NULL;
// Indexed by [half dtype: 0 bf16, 1 f16][ReduceOp].
MPI_Op half_ops[2][3] = {{MPI_OP_NULL, MPI_OP_NULL, MPI_OP_NULL},
                         {MPI_OP_NULL, MPI_OP_NULL, MPI_OP_NULL}};

// MPI user function: inout[i] = op(inout[i], in[i]).
template <DType kDType, ReduceOp kOp>
void HalfReduce(void* in, void* inout, int* length, MPI_Datatype* /*datatype*/) {
  // Cannot fail: the dtype is a 16-bit float and the reduction is known.
  (void)kernels::ReduceInto(inout, in, *length, kDType, ToReduction(kOp));
}

template <DType kDType>
absl::Status CreateOps(MPI_Op (&ops)[3]) {
  TESSERA_MPI_CHECK(MPI_Op_create(&HalfReduce<kDType, ReduceOp::kSum>, 1, &ops[0]));
  TESSERA_MPI_CHECK(MPI_Op_create(&HalfReduce<kDType, ReduceOp::kMax>, 1, &ops[1]));
  TESSERA_MPI_CHECK(MPI_Op_create(&HalfReduce<kDType, ReduceOp::kMin>, 1, &ops[2]));
  return absl::OkStatus();
}

}  // namespace

absl::Status CreateMpiTypes() {
  TESSERA_MPI_CHECK(MPI_Type_contiguous(2, MPI_BYTE, &bf16_type));
  TESSERA_MPI_CHECK(MPI_Type_commit(&bf16_type));
  TESSERA_MPI_CHECK(MPI_Type_contiguous(2, MPI_BYTE, &f16_type));
  TESSERA_MPI_CHECK(MPI_Type_commit(&f16_type));
  if (absl::Status s = CreateOps<DType::kBF16>(half_ops[0]); !s.ok()) return s;
  return CreateOps<DType::kF16>(half_ops[1]);
}

void FreeMpiTypes() {
  for (auto& row : half_ops) {
    for (MPI_Op& op : row) {
      if (op != MPI_OP_NULL) MPI_Op_free(&op);
    }
  }
  if (bf16_type != MPI_DATATYPE_NULL) MPI_Type_free(&bf16_type);
  if (f16_type != MPI_DATATYPE_NULL) MPI_Type_free(&f16_type);
}

MPI_Datatype MpiDatatypeOf(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return MPI_FLOAT;
    case DType::kBF16:
      return bf16_type;
    case DType::kF16:
      return f16_type;
    case DType::kI8:
      return MPI_INT8_T;
    case DType::kI32:
      return MPI_INT32_T;
    case DType::kI64:
      return MPI_INT64_T;
    case DType::kI4:
      break;
  }
  return MPI_DATATYPE_NULL;
}

MPI_Op MpiOpOf(ReduceOp op, DType dtype) {
  if (dtype == DType::kBF16) return half_ops[0][static_cast<int>(op)];
  if (dtype == DType::kF16) return half_ops[1][static_cast<int>(op)];
  switch (op) {
    case ReduceOp::kSum:
      return MPI_SUM;
    case ReduceOp::kMax:
      return MPI_MAX;
    case ReduceOp::kMin:
      return MPI_MIN;
  }
  return MPI_OP_NULL;
}

kernels::Reduction ToReduction(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return kernels::Reduction::kSum;
    case ReduceOp::kMax:
      return kernels::Reduction::kMax;
    case ReduceOp::kMin:
      return kernels::Reduction::kMin;
  }
  return kernels::Reduction::kSum;
}

}  // namespace tessera::comm
