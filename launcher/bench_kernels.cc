// `tessera bench kernels`: the CPU Linear kernel on the projection shapes of the built-in
// default model and of the ~0.5B model, at decode (1 row), batched decode (32 rows) and
// prefill (512 rows), beside the fused multiply-add peak measured on this machine with
// the same vector width and thread count, and beside the memory read bandwidth measured
// here (launcher/read_bandwidth.h). Decode shapes read every weight once per call, so their
// figure is the weight bytes read per second; weights that fit in the last-level cache are
// read from it once warm, so only larger ones are held against memory bandwidth. Then
// QuantizedLinear in each format on the ~0.5B and an 8B model's shapes: decode held against the
// same bandwidth (the packed bytes: codes, scales, offsets), prefill against bf16's time.

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/linear.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/quantized_linear.h"
#include "launcher/bench.h"
#include "launcher/bench_limit.h"
#include "launcher/flags.h"
#include "launcher/fma_peak.h"
#include "launcher/process.h"
#include "launcher/read_bandwidth.h"
#include "runtime/core/status_macros.h"
#include "runtime/core/tensor.h"
#include "runtime/core/tensor_values.h"

namespace tessera::launcher {
namespace {

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

struct LinearShape {
  const char* model;
  const char* projection;
  int64_t n, k;
  DType weights;
};

// Full (TP 1) projection shapes: out features n, in features k.
constexpr LinearShape kShapes[] = {
    {"default", "q/o", 128, 128, DType::kF32},
    {"default", "gate/up", 352, 128, DType::kF32},
    {"default", "down", 128, 352, DType::kF32},
    {"llama-0.5b", "q/o", 896, 896, DType::kBF16},
    {"llama-0.5b", "gate/up", 4864, 896, DType::kBF16},
    {"llama-0.5b", "down", 896, 4864, DType::kBF16},
};
constexpr int64_t kRowCounts[] = {1, 32, 512};

// QuantizedLinear's shapes (TP 1): the ~0.5B model's that bench generate runs (hidden 1024,
// intermediate 4096) and an 8B Llama's, gate and up stacked as the model holds them.
constexpr LinearShape kQuantizedShapes[] = {
    {"llama-0.5b", "q/o", 1024, 1024, DType::kBF16},
    {"llama-0.5b", "gate+up", 8192, 1024, DType::kBF16},
    {"llama-0.5b", "down", 1024, 4096, DType::kBF16},
    {"llama-8b", "q/o", 4096, 4096, DType::kBF16},
    {"llama-8b", "gate+up", 28672, 4096, DType::kBF16},
    {"llama-8b", "down", 4096, 14336, DType::kBF16},
};
// The formats: weights, group (0: one a row) and activations.
struct QuantizedFormat {
  const char* name;
  kernels::WeightQuant quant;
  int64_t group;
  kernels::ActivationQuant activations;
};
constexpr QuantizedFormat kQuantizedFormats[] = {
    {"int8", kernels::WeightQuant::kInt8, 0, kernels::ActivationQuant::kF32},
    {"int8-a8", kernels::WeightQuant::kInt8, 0, kernels::ActivationQuant::kInt8},
    {"int4-f32", kernels::WeightQuant::kInt4, 32, kernels::ActivationQuant::kF32},
    {"int4-a8", kernels::WeightQuant::kInt4, 32, kernels::ActivationQuant::kInt8},
};
constexpr int64_t kQuantizedRowCounts[] = {1, 512};

// Median seconds per call over about `budget` seconds of calls after one warm-up call (the
// median, because a virtual machine's cores are now and then taken away for milliseconds).
absl::StatusOr<double> TimeCalls(const std::function<absl::Status()>& call, double budget) {
  TESSERA_RETURN_IF_ERROR(call());
  std::vector<double> calls;
  auto start = Clock::now();
  do {
    auto at = Clock::now();
    TESSERA_RETURN_IF_ERROR(call());
    calls.push_back(Since(at));
  } while (Since(start) < budget);
  std::nth_element(calls.begin(), calls.begin() + calls.size() / 2, calls.end());
  return calls[calls.size() / 2];
}

const char* PathName(kernels::CpuVector path) {
  switch (path) {
    case kernels::CpuVector::kAvx512:
      return "avx512";
    case kernels::CpuVector::kAvx2:
      return "avx2";
    case kernels::CpuVector::kPortable:
      return "portable";
  }
  return "?";
}

// QuantizedLinear on kQuantizedShapes in each format: decode (1 row) reads every byte of the
// codes, scales and offsets once a call, held against `read_bandwidth` (bytes/s); prefill
// (512 rows) against bf16 Linear's time on the same shape.
absl::Status BenchQuantizedKernels(double seconds_per_shape, double read_bandwidth) {
  std::printf(
      "\n# QuantizedLinear (kernels/cpu/quantized_linear.h): w GB/s = the packed weight's "
      "bytes (codes, scales, offsets) over the time; x bf16 = bf16 Linear's time over "
      "this one's, same shape and rows\n");
  std::printf("%-11s %-8s %6s %6s %6s %-9s %11s %10s %8s %8s\n", "model", "proj", "rows", "n", "k",
              "w", "us/call", "w GB/s", "of bw", "x bf16");
  for (const LinearShape& shape : kQuantizedShapes) {
    TESSERA_ASSIGN_OR_RETURN(Tensor rows_of_w,
                             RandomNormalTensor(shape.weights, {shape.n, shape.k}, 2));
    TESSERA_ASSIGN_OR_RETURN(Tensor packed, kernels::PackLinearWeight(rows_of_w));
    for (int64_t rows : kQuantizedRowCounts) {
      TESSERA_ASSIGN_OR_RETURN(Tensor x, RandomNormalTensor(DType::kF32, {rows, shape.k}, 1));
      TESSERA_ASSIGN_OR_RETURN(Tensor out, Tensor::Empty(DType::kF32, {rows, shape.n}));
      TESSERA_ASSIGN_OR_RETURN(
          const double bf16_seconds,
          TimeCalls([&] { return kernels::Linear(x, packed, Tensor(), out); }, seconds_per_shape));
      for (const QuantizedFormat& format : kQuantizedFormats) {
        TESSERA_ASSIGN_OR_RETURN(
            const kernels::QuantizedWeight quantized,
            kernels::QuantizeWeight(rows_of_w, format.quant,
                                    format.group == 0 ? shape.k : format.group));
        TESSERA_ASSIGN_OR_RETURN(const kernels::QuantizedWeight w,
                                 kernels::WithActivations(quantized, format.activations));
        TESSERA_ASSIGN_OR_RETURN(
            const double seconds,
            TimeCalls([&] { return kernels::QuantizedLinear(x, w, Tensor(), out); },
                      seconds_per_shape));
        const double bytes = static_cast<double>(w.nbytes()) / seconds;
        const HeldAgainstLimit of_bw = HoldAgainstLimit(
            bytes, read_bandwidth, FitsInLastLevelCaches(static_cast<double>(w.nbytes()), 1));
        std::printf("%-11s %-8s %6lld %6lld %6lld %-9s %11.2f %10.1f %8s %7.2fx\n", shape.model,
                    shape.projection, static_cast<long long>(rows), static_cast<long long>(shape.n),
                    static_cast<long long>(shape.k), format.name, seconds * 1e6, bytes / 1e9,
                    rows == 1 ? of_bw.cell.c_str() : "-", bf16_seconds / seconds);
        std::fflush(stdout);
      }
    }
  }
  return absl::OkStatus();
}

absl::Status BenchKernels(double seconds_per_shape) {
  const kernels::CpuVector path = kernels::CpuVectorPath();
  const int threads = kernels::CpuKernelThreads();
  const double peak = MeasureFmaPeak(threads, path);
  const ReadBandwidth read = MeasureProcessReadBandwidth(threads, path);
  const int64_t cache = LastLevelCacheBytes();
  std::printf("# tessera bench kernels: Linear (out = x . w^T), vector path %s, %d thread(s)\n",
              PathName(path), threads);
  std::printf("# limit: FMA peak measured here on the same path and threads: %.1f GFLOP/s\n",
              peak / 1e9);
  std::printf("# limit: memory read bandwidth %.2f GB/s, measured here: %s\n",
              read.bytes_per_second / 1e9, DescribeReadBandwidth(read).c_str());
  std::printf(
      "# of bw: w GB/s over it, for weights larger than the %lld MiB cache (\"cache\": "
      "smaller ones)\n",
      static_cast<long long>(cache >> 20));
  std::printf("%-11s %-8s %6s %6s %6s %5s %11s %9s %8s %10s %8s\n", "model", "proj", "rows", "n",
              "k", "w", "us/call", "GFLOP/s", "of peak", "w GB/s", "of bw");
  std::vector<std::string> errors;
  for (const LinearShape& shape : kShapes) {
    TESSERA_ASSIGN_OR_RETURN(Tensor rows_of_w,
                             RandomNormalTensor(shape.weights, {shape.n, shape.k}, 2));
    // Packed once, as a model's weights are at load.
    TESSERA_ASSIGN_OR_RETURN(Tensor w, kernels::PackLinearWeight(rows_of_w));
    for (int64_t rows : kRowCounts) {
      TESSERA_ASSIGN_OR_RETURN(Tensor x, RandomNormalTensor(DType::kF32, {rows, shape.k}, 1));
      TESSERA_ASSIGN_OR_RETURN(Tensor out, Tensor::Empty(DType::kF32, {rows, shape.n}));
      TESSERA_ASSIGN_OR_RETURN(
          double seconds,
          TimeCalls([&] { return kernels::Linear(x, w, Tensor(), out); }, seconds_per_shape));
      const double flops = 2.0 * rows * shape.n * shape.k / seconds;
      const double weight_bytes = static_cast<double>(w.nbytes()) / seconds;
      const std::string what = absl::StrFormat("%s %s at %lld rows", shape.model, shape.projection,
                                               static_cast<long long>(rows));
      const HeldAgainstLimit of_peak = HoldAgainstLimit(flops, peak);
      if (of_peak.error) {
        errors.push_back(
            LimitErrorNote(absl::StrCat(what, " computes"), flops, peak, 1e9, "GFLOP/s"));
      }
      // Weights that fit in the cache are read from there once warm.
      const HeldAgainstLimit of_bw =
          HoldAgainstLimit(weight_bytes, read.bytes_per_second,
                           FitsInLastLevelCaches(static_cast<double>(w.nbytes()), 1));
      if (of_bw.error) {
        errors.push_back(LimitErrorNote(absl::StrCat(what, " reads its weights at"), weight_bytes,
                                        read.bytes_per_second, 1e9, "GB/s"));
      }
      std::printf("%-11s %-8s %6lld %6lld %6lld %5s %11.2f %9.1f %8s %10.1f %8s\n", shape.model,
                  shape.projection, static_cast<long long>(rows), static_cast<long long>(shape.n),
                  static_cast<long long>(shape.k), shape.weights == DType::kF32 ? "f32" : "bf16",
                  seconds * 1e6, flops / 1e9, of_peak.cell.c_str(), weight_bytes / 1e9,
                  of_bw.cell.c_str());
      std::fflush(stdout);
    }
  }
  for (const std::string& error : errors) std::printf("%s", error.c_str());
  return BenchQuantizedKernels(seconds_per_shape, read.bytes_per_second);
}

}  // namespace

int RunBenchKernels(const std::vector<std::string>& args) {
  double seconds = 0.3;
  FlagSet flags("tessera bench kernels",
                "The CPU Linear kernel on the default and ~0.5B models' projection shapes at 1, "
                "32 and 512 rows, beside the FMA peak measured here; then QuantizedLinear on the "
                "~0.5B and 8B models' shapes in each format, decode beside the memory "
                "bandwidth and prefill beside bf16's.\nTESSERA_CPU_THREADS and "
                "TESSERA_CPU_VECTOR=avx2|portable choose the threads and vector path.");
  flags.Double("seconds", &seconds, "time spent on each shape");
  if (std::optional<int> done = ParseOrExit(flags, args)) return *done;
  if (!(seconds > 0)) {
    std::fprintf(stderr, "tessera bench kernels: --seconds: %g is not a positive number\n",
                 seconds);
    return kExitUsage;
  }
  return ReportExit(BenchKernels(seconds));
}

}  // namespace tessera::launcher
