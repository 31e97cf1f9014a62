#ifndef TESSERA_COMM_COLLECTIVE_CHECK_H_
#define TESSERA_COMM_COLLECTIVE_CHECK_H_

// Closed-form checks of collectives: every rank fills its inputs with a known pattern, and
// the expected output of each collective follows from the rank count alone. Used by the
// benchmark's "#wrong" column and by the multi-rank tests.
//
// Rank r's element i is (r + 1) * (i mod 3 + 1). With n ranks and S = n(n+1)/2:
//   AllReduce sum -> S * (i mod 3 + 1); max -> n * (...); min -> 1 * (...)
//   AllGather     -> output[k*m + i] = (k + 1) * (i mod 3 + 1)
//   ReduceScatter -> rank r's output[i] = the AllReduce value at index r*m + i
//   Broadcast     -> the root's values everywhere
// Integer results wrap to the dtype's width, as the reductions themselves do.

#include <cstdint>

#include "comm/collective.h"

namespace tessera::comm {

// Rank `rank`'s value at index i of the pattern.
double PatternValue(int rank, int64_t index);

// Fills the inputs of `op` (host tensors) for `rank`; non-root Broadcast buffers and all
// outputs get -1 so that an untouched element is caught.
void FillPattern(CollectiveOp& op, int rank);

// Number of elements of op's result (the buffer for AllReduce/Broadcast, the output
// otherwise) that differ from the closed form by more than the dtype's rounding allows.
int64_t CountWrong(const CollectiveOp& op, int rank, int size);

}  // namespace tessera::comm

#endif  // TESSERA_COMM_COLLECTIVE_CHECK_H_
