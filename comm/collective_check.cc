#include "comm/collective_check.h"

#include <cmath>

#include "runtime/core/tensor_values.h"

namespace tessera::comm {
namespace {

double Reduced(ReduceOp op, int size, int64_t index) {
  double unit = index % 3 + 1;
  switch (op) {
    case ReduceOp::kSum:
      return unit * size * (size + 1) / 2;
    case ReduceOp::kMax:
      return unit * size;
    case ReduceOp::kMin:
      return unit;
  }
  return 0;
}

// The value a tensor of `dtype` holds for an exact result: integers wrap to their width.
double Representable(DType dtype, double exact) {
  auto wrap = [exact](int bits) {
    int64_t modulus = int64_t{1} << bits;
    int64_t v = static_cast<int64_t>(exact) % modulus;
    if (v < 0) v += modulus;
    if (v >= modulus / 2) v -= modulus;
    return static_cast<double>(v);
  };
  switch (dtype) {
    case DType::kI8:
      return wrap(8);
    case DType::kI32:
      return wrap(32);
    default:
      return exact;
  }
}

bool Matches(DType dtype, double got, double exact, int size) {
  double expected = Representable(dtype, exact);
  // A float sum of n terms rounds up to n - 1 times.
  double tolerance = RoundingUnit(dtype) * std::abs(expected) * std::max(1, size - 1);
  return std::abs(got - expected) <= tolerance;
}

}  // namespace

double PatternValue(int rank, int64_t index) {
  return (rank + 1) * static_cast<double>(index % 3 + 1);
}

void FillPattern(CollectiveOp& op, int rank) {
  if (op.kind == CollectiveKind::kBroadcast && rank != op.root) {
    FillWith(op.input, [](int64_t) { return -1.0; });
  } else {
    FillWith(op.input, [rank](int64_t i) { return PatternValue(rank, i); });
  }
  if (op.kind == CollectiveKind::kAllGather || op.kind == CollectiveKind::kReduceScatter) {
    FillWith(op.output, [](int64_t) { return -1.0; });
  }
}

int64_t CountWrong(const CollectiveOp& op, int rank, int size) {
  int64_t wrong = 0;
  switch (op.kind) {
    case CollectiveKind::kAllReduce:
      for (int64_t i = 0; i < op.input.numel(); ++i) {
        wrong += !Matches(op.input.dtype(), ElementAsDouble(op.input, i),
                          Reduced(op.reduce_op, size, i), size);
      }
      break;
    case CollectiveKind::kBroadcast:
      for (int64_t i = 0; i < op.input.numel(); ++i) {
        wrong += !Matches(op.input.dtype(), ElementAsDouble(op.input, i), PatternValue(op.root, i),
                          size);
      }
      break;
    case CollectiveKind::kAllGather: {
      int64_t m = op.input.numel();
      for (int64_t j = 0; j < op.output.numel(); ++j) {
        wrong += !Matches(op.output.dtype(), ElementAsDouble(op.output, j),
                          PatternValue(static_cast<int>(j / m), j % m), size);
      }
      break;
    }
    case CollectiveKind::kReduceScatter: {
      int64_t m = op.output.numel();
      for (int64_t i = 0; i < m; ++i) {
        wrong += !Matches(op.output.dtype(), ElementAsDouble(op.output, i),
                          Reduced(op.reduce_op, size, rank * m + i), size);
      }
      break;
    }
    default:
      break;
  }
  return wrong;
}

}  // namespace tessera::comm
