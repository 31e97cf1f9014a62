#include "launcher/comm_bench.h"

#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "comm/collective_check.h"
#include "comm/mpi/mpi_communicator.h"
#include "comm/mpi/mpi_runtime.h"
#include "comm/mpi/mpi_types.h"
#include "launcher/flags.h"
#include "launcher/process.h"
#include "runtime/core/status_macros.h"
#if TESSERA_HAVE_CUDA
#include "comm/nccl/nccl_communicator.h"
#endif

namespace tessera::launcher {
namespace {

using comm::CollectiveKind;
using comm::CollectiveOp;
using comm::Communicator;

struct BenchConfig {
  std::string backend = "mpi";
  std::string op = "allreduce";
  std::string dtype = "f32";
  std::string reduce = "sum";
  int64_t min_bytes = 8;
  int64_t max_bytes = int64_t{64} << 20;
  int factor = 2;
  int iters = 0;  // 0: chosen per size
  int warmup = 5;
  int rounds = 3;
  int root = 0;
  bool check = true;
  absl::Duration timeout = absl::Minutes(5);
  bool validate = false;
  // Also time raw MPI (backend mpi only). Raw MPI has no deadline: a lost peer hangs it.
  bool raw_mpi = true;
};

absl::StatusOr<CollectiveKind> ParseOp(absl::string_view name) {
  if (name == "allreduce") return CollectiveKind::kAllReduce;
  if (name == "allgather") return CollectiveKind::kAllGather;
  if (name == "reducescatter") return CollectiveKind::kReduceScatter;
  if (name == "broadcast") return CollectiveKind::kBroadcast;
  return absl::InvalidArgumentError(
      absl::StrCat("--op: unknown collective '", name,
                   "' (expected allreduce, allgather, reducescatter or broadcast)"));
}

// Bus-bandwidth factor (nccl-tests): how much of the data each rank must move per byte of
// the collective's size.
double BusFactor(CollectiveKind kind, int n) {
  switch (kind) {
    case CollectiveKind::kAllReduce:
      return 2.0 * (n - 1) / n;
    case CollectiveKind::kAllGather:
    case CollectiveKind::kReduceScatter:
      return static_cast<double>(n - 1) / n;
    default:
      return 1.0;
  }
}

// Enough iterations that small sizes are timed over a few milliseconds; identical on every
// rank since it depends on the size alone.
int IterationsFor(int64_t bytes, int requested) {
  if (requested > 0) return requested;
  return static_cast<int>(
      std::clamp<int64_t>((int64_t{64} << 20) / std::max<int64_t>(bytes, 1), 5, 1000));
}

// Seconds for `iters` calls of `body`, the slowest rank's.
absl::StatusOr<double> TimeOnAllRanks(int iters, const std::function<absl::Status()>& body,
                                      const std::function<absl::Status()>& finish) {
  MPI_Barrier(MPI_COMM_WORLD);
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i) TESSERA_RETURN_IF_ERROR(body());
  TESSERA_RETURN_IF_ERROR(finish());
  double mine = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  double slowest = 0;
  MPI_Allreduce(&mine, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return slowest / iters;
}

// The same collective straight through MPI's blocking API on the same communicator.
int RawMpi(const CollectiveOp& op, MPI_Comm comm) {
  MPI_Datatype type = comm::MpiDatatypeOf(op.input.dtype());
  MPI_Op reduce = comm::MpiOpOf(op.reduce_op, op.input.dtype());
  void* in = const_cast<void*>(op.input.data());
  void* out = const_cast<void*>(op.output.data());
  int count = static_cast<int>(op.input.numel());
  switch (op.kind) {
    case CollectiveKind::kAllReduce:
      return MPI_Allreduce(MPI_IN_PLACE, in, count, type, reduce, comm);
    case CollectiveKind::kAllGather:
      return MPI_Allgather(in, count, type, out, count, type, comm);
    case CollectiveKind::kReduceScatter:
      return MPI_Reduce_scatter_block(in, out, static_cast<int>(op.output.numel()), type, reduce,
                                      comm);
    default:
      return MPI_Bcast(in, count, type, op.root, comm);
  }
}

class Bench {
 public:
  Bench(BenchConfig config, Communicator& comm, comm::MpiCommunicator& world)
      : config_(std::move(config)), comm_(comm), world_(world) {}

  absl::Status Run() {
    TESSERA_ASSIGN_OR_RETURN(kind_, ParseOp(config_.op));
    TESSERA_ASSIGN_OR_RETURN(dtype_, ParseDType(config_.dtype));
    TESSERA_ASSIGN_OR_RETURN(reduce_, comm::ParseReduceOp(config_.reduce));
    raw_ = config_.backend == "mpi" && config_.raw_mpi;
    TESSERA_ASSIGN_OR_RETURN(stream_, Stream::Create(comm_.device()));
    PrintHeader();
    for (int64_t bytes = config_.min_bytes; bytes <= config_.max_bytes; bytes *= config_.factor) {
      TESSERA_RETURN_IF_ERROR(RunSize(bytes));
    }
    if (raw_) PrintMemoryLimit();
    if (comm_.rank() == 0) {
      std::printf("# out of bounds values: %lld %s\n", static_cast<long long>(total_wrong_),
                  total_wrong_ == 0 ? "OK" : "FAILED");
      std::fflush(stdout);
    }
    if (total_wrong_ != 0) {
      return absl::DataLossError(absl::StrCat(total_wrong_, " elements had wrong values"));
    }
    return absl::OkStatus();
  }

 private:
  void PrintHeader() {
    if (comm_.rank() != 0) return;
    std::printf("# tessera comm-bench: %s, backend %s, %d ranks, %s%s, timeout %s%s\n",
                config_.op.c_str(), config_.backend.c_str(), comm_.size(), config_.dtype.c_str(),
                (kind_ == CollectiveKind::kAllReduce || kind_ == CollectiveKind::kReduceScatter)
                    ? absl::StrCat(", ", config_.reduce).c_str()
                    : "",
                absl::FormatDuration(config_.timeout).c_str(),
                config_.validate ? ", validation on" : "");
    std::printf(
        "# time: best of %d rounds, the slowest rank's average per call; "
        "busbw = algbw x %s\n",
        config_.rounds,
        kind_ == CollectiveKind::kAllReduce   ? "2(n-1)/n"
        : kind_ == CollectiveKind::kBroadcast ? "1"
                                              : "(n-1)/n");
    std::printf("%12s %12s %6s %6s %11s %11s %11s %8s", "size(B)", "count", "type", "redop",
                "time(us)", "algbw(GB/s)", "busbw(GB/s)", "#wrong");
    if (raw_) std::printf(" %11s %9s %10s", "raw-mpi(us)", "ours/raw", "ours-raw");
    std::printf("\n");
    std::fflush(stdout);
  }

  // On one host the MPI backend moves data through shared memory, so the limit it works
  // against is how fast a core copies memory. Rank 0 measures it while the others wait.
  void PrintMemoryLimit() {
    MPI_Barrier(MPI_COMM_WORLD);
    if (comm_.rank() == 0) {
      constexpr size_t kBytes = size_t{64} << 20;
      std::vector<char> from(kBytes, 1), to(kBytes, 0);
      double best = 1e30;
      for (int i = 0; i < 5; ++i) {
        auto start = std::chrono::steady_clock::now();
        std::memcpy(to.data(), from.data(), kBytes);
        best = std::min(
            best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
      }
      double copy = kBytes / best / 1e9;
      std::printf(
          "# limit: one core copies host memory at %.2f GB/s (memcpy of 64 MB); busbw at the "
          "largest size, %.2f GB/s, is %.2f of it\n",
          copy, last_busbw_, last_busbw_ / copy);
    }
    MPI_Barrier(MPI_COMM_WORLD);
  }

  absl::Status RunSize(int64_t bytes) {
    int n = comm_.size();
    int64_t element = static_cast<int64_t>(StorageBytes(dtype_, 1));
    bool scattered = kind_ == CollectiveKind::kAllGather || kind_ == CollectiveKind::kReduceScatter;
    // As nccl-tests: the size is the whole buffer (all ranks' parts for gather/scatter).
    int64_t per_rank = scattered ? bytes / element / n : bytes / element;
    if (per_rank == 0) return absl::OkStatus();
    int64_t big = per_rank * n;

    Device host = Device::Cpu();
    CollectiveOp host_op{kind_, reduce_, Tensor(), Tensor(), config_.root};
    Shape in_shape{kind_ == CollectiveKind::kReduceScatter ? big : per_rank};
    TESSERA_ASSIGN_OR_RETURN(host_op.input, Tensor::Empty(dtype_, in_shape, host));
    if (scattered) {
      TESSERA_ASSIGN_OR_RETURN(
          host_op.output,
          Tensor::Empty(dtype_, {kind_ == CollectiveKind::kAllGather ? big : per_rank}, host));
    }
    CollectiveOp op = host_op;
    if (!comm_.device().is_cpu()) {
      TESSERA_ASSIGN_OR_RETURN(op.input, host_op.input.To(comm_.device(), *stream_));
      if (scattered) {
        TESSERA_ASSIGN_OR_RETURN(op.output, host_op.output.To(comm_.device(), *stream_));
      }
    }

    // Check first, on fresh pattern data.
    int64_t wrong = 0;
    if (config_.check) {
      comm::FillPattern(host_op, comm_.rank());
      TESSERA_RETURN_IF_ERROR(CopyIfDevice(op.input, host_op.input));
      TESSERA_RETURN_IF_ERROR(CopyIfDevice(op.output, host_op.output));
      TESSERA_RETURN_IF_ERROR(Issue(op));
      TESSERA_RETURN_IF_ERROR(stream_->Synchronize());
      TESSERA_RETURN_IF_ERROR(CopyIfDevice(host_op.input, op.input));
      TESSERA_RETURN_IF_ERROR(CopyIfDevice(host_op.output, op.output));
      int64_t mine = comm::CountWrong(host_op, comm_.rank(), n);
      MPI_Allreduce(&mine, &wrong, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
      total_wrong_ += wrong;
    }

    int iters = IterationsFor(bytes, config_.iters);
    auto ours = [&] { return Issue(op); };
    auto sync = [&] { return stream_->Synchronize(); };
    auto raw = [&] {
      int rc = RawMpi(op, world_.native_handle());
      return rc == MPI_SUCCESS ? absl::OkStatus() : absl::InternalError("raw MPI call failed");
    };
    auto nothing = [] { return absl::OkStatus(); };
    for (int i = 0; i < config_.warmup; ++i) {
      TESSERA_RETURN_IF_ERROR(ours());
      if (raw_) TESSERA_RETURN_IF_ERROR(raw());
    }
    TESSERA_RETURN_IF_ERROR(sync());
    double best = 1e30, best_raw = 1e30;
    for (int round = 0; round < config_.rounds; ++round) {
      TESSERA_ASSIGN_OR_RETURN(double t, TimeOnAllRanks(iters, ours, sync));
      best = std::min(best, t);
      if (raw_) {
        TESSERA_ASSIGN_OR_RETURN(double r, TimeOnAllRanks(iters, raw, nothing));
        best_raw = std::min(best_raw, r);
      }
    }
    if (comm_.rank() == 0) {
      double algbw = static_cast<double>(per_rank * element * (scattered ? n : 1)) / best / 1e9;
      last_busbw_ = algbw * BusFactor(kind_, n);
      std::printf("%12lld %12lld %6s %6s %11.2f %11.3f %11.3f %8lld",
                  static_cast<long long>(per_rank * element * (scattered ? n : 1)),
                  static_cast<long long>(scattered ? big : per_rank), config_.dtype.c_str(),
                  (kind_ == CollectiveKind::kAllReduce || kind_ == CollectiveKind::kReduceScatter)
                      ? config_.reduce.c_str()
                      : "-",
                  best * 1e6, algbw, algbw * BusFactor(kind_, n), static_cast<long long>(wrong));
      if (raw_) {
        std::printf(" %11.2f %9.3f %8.2fus", best_raw * 1e6, best / best_raw,
                    (best - best_raw) * 1e6);
      }
      std::printf("\n");
      std::fflush(stdout);
    }
    return absl::OkStatus();
  }

  absl::Status Issue(const CollectiveOp& op) {
    comm::CollectiveBatch batch;
    batch.mutable_ops().push_back(op);
    return comm_.Run(std::move(batch), *stream_);
  }

  absl::Status CopyIfDevice(Tensor& dst, const Tensor& src) {
    if (dst.data() == src.data()) return absl::OkStatus();
    return dst.CopyFrom(src, *stream_);
  }

  BenchConfig config_;
  Communicator& comm_;
  comm::MpiCommunicator& world_;
  CollectiveKind kind_ = CollectiveKind::kAllReduce;
  DType dtype_ = DType::kF32;
  comm::ReduceOp reduce_ = comm::ReduceOp::kSum;
  bool raw_ = false;
  std::unique_ptr<Stream> stream_;
  int64_t total_wrong_ = 0;
  double last_busbw_ = 0;  // of the largest size so far; rank 0 only
};

// Flag values that need no MPI to check, checked before MPI starts.
absl::Status CheckConfig(const BenchConfig& config) {
  if (config.backend != "mpi" && config.backend != "nccl") {
    return absl::InvalidArgumentError(
        absl::StrCat("--backend: unknown backend '", config.backend, "' (expected mpi or nccl)"));
  }
  TESSERA_RETURN_IF_ERROR(ParseOp(config.op).status());
  absl::StatusOr<DType> dtype = ParseDType(config.dtype);
  if (!dtype.ok())
    return absl::InvalidArgumentError(absl::StrCat("--dtype: ", dtype.status().message()));
  if (*dtype == DType::kI4) {
    return absl::InvalidArgumentError("--dtype: collectives do not support packed int4");
  }
  absl::StatusOr<comm::ReduceOp> reduce = comm::ParseReduceOp(config.reduce);
  if (!reduce.ok())
    return absl::InvalidArgumentError(absl::StrCat("--reduce: ", reduce.status().message()));
  if (config.min_bytes < 1 || config.max_bytes < config.min_bytes || config.factor < 2) {
    return absl::InvalidArgumentError(
        "need 1 <= -b <= -e and -f >= 2 (sizes go -b, -b*f, ... up to -e)");
  }
  if (config.iters < 0 || config.warmup < 0 || config.rounds < 1) {
    return absl::InvalidArgumentError("--iters and --warmup must be >= 0, --rounds >= 1");
  }
  return absl::OkStatus();
}

absl::Status RunBench(const BenchConfig& config, int* argc, char*** argv) {
  TESSERA_ASSIGN_OR_RETURN(
      MpiJob job,
      StartMpiJob(argc, argv, config.timeout, config.validate,
                  config.backend == "nccl" ? HostPlacement::kNearGpu : HostPlacement::kCpuMask));
  std::unique_ptr<comm::MpiCommunicator>& world = job.world;
  std::unique_ptr<Communicator> device_comm;
  if (config.backend == "nccl") {
#if TESSERA_HAVE_CUDA
    TESSERA_ASSIGN_OR_RETURN(device_comm, comm::NcclCommunicator::CreateForLocalGpu(*world));
#else
    return absl::FailedPreconditionError(
        "--backend nccl: this build of Tessera has no CUDA support (TESSERA_CUDA=OFF or the "
        "toolkit was not found)");
#endif
  }
  Communicator& comm = device_comm ? *device_comm : *world;
  return Bench(config, comm, *world).Run();
}

}  // namespace

int RunCommBench(const std::vector<std::string>& args, int* argc, char*** argv) {
  BenchConfig config;
  FlagSet flags("tessera comm-bench",
                "Measures a collective over a sweep of sizes, as nccl-tests does: time, algbw, "
                "busbw and a check of every result.\nOn the MPI backend it also times the same "
                "collective through raw MPI and prints our time over raw.\n"
                "Run under mpirun, e.g. mpirun -np 2 tessera comm-bench -b 8 -e 256M -f 2");
  flags.String("backend", &config.backend, "mpi (host memory) or nccl (GPU memory)");
  flags.String("op", &config.op, "allreduce, allgather, reducescatter or broadcast");
  flags.String("dtype", &config.dtype, "f32, bf16, f16, i8, i32 or i64");
  flags.String("reduce", &config.reduce, "sum, max or min (allreduce, reducescatter)");
  flags.Bytes("minbytes", &config.min_bytes, "smallest size", 'b');
  flags.Bytes("maxbytes", &config.max_bytes, "largest size", 'e');
  flags.Int("stepfactor", &config.factor, "size multiplier between rows", 'f');
  flags.Int("iters", &config.iters, "timed calls per round (0: by size, 5 to 1000)", 'n');
  flags.Int("warmup", &config.warmup, "untimed calls per size", 'w');
  flags.Int("rounds", &config.rounds, "timed rounds per size; the best is reported");
  flags.Int("root", &config.root, "broadcast root");
  flags.Bool("check", &config.check, "check every size against the closed-form result");
  flags.Duration("timeout", &config.timeout,
                 "deadline of each collective (also TESSERA_COMM_TIMEOUT)");
  flags.Bool("validate", &config.validate,
             "ranks cross-check every collective (also TESSERA_COMM_VALIDATE=1)");
  flags.Bool("raw-mpi", &config.raw_mpi,
             "with --backend mpi, also time raw MPI (which has no deadline: turn it off when "
             "peers may be lost)");
  if (std::optional<int> done = ParseOrExit(flags, args)) return *done;
  if (absl::Status invalid = CheckConfig(config); !invalid.ok()) {
    std::fprintf(stderr, "tessera comm-bench: %s\n", std::string(invalid.message()).c_str());
    return kExitUsage;
  }
  return ReportExit(RunBench(config, argc, argv));
}

}  // namespace tessera::launcher
