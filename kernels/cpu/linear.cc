#include "kernels/cpu/linear.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>

#include "kernels/cpu/check_shapes.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/vector_loads.h"
#include "runtime/core/status_macros.h"

#if TESSERA_CPU_X86
#include <immintrin.h>
#endif

namespace tessera::kernels {
namespace {

constexpr int64_t kPanel = kLinearPanel;
// Rows of x in one tile: MR rows share every weight load.
constexpr int kTileRows = 6;
// Rows of x taken in one pass over a group of panels; for a large M the weights are read
// once a pass.
constexpr int64_t kRowsPerPass = 10 * kTileRows;
// Inputs taken at a time: a group's weights for them (4 panels x 256 inputs: 64 KiB in
// f32) stay in L2 while every row tile of the pass reads them, however large K is.
constexpr int64_t kInputsPerBlock = 256;

// Where a tile reads and writes: inputs [k_begin, k_begin + k_count) of x rows (row stride
// k) and of panels (panel stride k * 16); out (row stride n) from column `column`, of which
// n - column are valid (which may be more than the tile covers). With `resume`, each
// output's chain goes on from the value in out (the inputs before k_begin) instead of 0:
// splitting k this way keeps every chain's operations and order, so the bits.
template <typename W>
struct TileArgs {
  const float* x;
  const W* panels;
  float* out;
  int64_t k, n, column;
  int64_t k_begin, k_count;
  bool resume;
};

// The portable path (machines without AVX2 + FMA): the same chain per output as the
// vector paths, by std::fma.
template <int MR, int NP, typename W>
void TilePortable(const TileArgs<W>& a) {
  for (int r = 0; r < MR; ++r) {
    for (int p = 0; p < NP; ++p) {
      const W* panel = a.panels + p * a.k * kPanel;
      const int64_t first = a.column + p * kPanel;
      const int64_t lanes = std::min<int64_t>(kPanel, a.n - first);
      for (int64_t l = 0; l < lanes; ++l) {
        float sum = a.resume ? a.out[r * a.n + first + l] : 0.0f;
        for (int64_t c = a.k_begin; c < a.k_begin + a.k_count; ++c) {
          sum = std::fma(a.x[r * a.k + c], ToFloat(panel[c * kPanel + l]), sum);
        }
        a.out[r * a.n + first + l] = sum;
      }
    }
  }
}

#if TESSERA_CPU_X86
// out tile (MR, 16 NP) = x (MR, K) . panels, AVX2 + FMA: each panel is two eight-lane
// halves; one broadcast of x[r][c] feeds NP panels' fused multiply-adds.
template <int MR, int NP, typename W>
__attribute__((target("avx2,fma"))) void TileAvx2(const TileArgs<W>& a) {
  __m256 acc[MR][2 * NP];
  for (int r = 0; r < MR; ++r) {
    for (int v = 0; v < 2 * NP; ++v) {
      acc[r][v] = _mm256_setzero_ps();
      const int64_t lanes = a.n - (a.column + 8 * v);
      if (!a.resume || lanes <= 0) continue;
      const float* o = a.out + r * a.n + a.column + 8 * v;
      if (lanes >= 8) {
        acc[r][v] = _mm256_loadu_ps(o);
      } else {
        alignas(32) float lane_values[8] = {};
        std::memcpy(lane_values, o, lanes * sizeof(float));
        acc[r][v] = _mm256_load_ps(lane_values);
      }
    }
  }
  const W* w = a.panels + a.k_begin * kPanel;
  for (int64_t c = a.k_begin; c < a.k_begin + a.k_count; ++c, w += kPanel) {
    __m256 wv[2 * NP];
    for (int p = 0; p < NP; ++p) {
      wv[2 * p] = LoadEight(w + p * a.k * kPanel);
      wv[2 * p + 1] = LoadEight(w + p * a.k * kPanel + 8);
    }
    for (int r = 0; r < MR; ++r) {
      const __m256 xv = _mm256_broadcast_ss(a.x + r * a.k + c);
      for (int v = 0; v < 2 * NP; ++v) acc[r][v] = _mm256_fmadd_ps(xv, wv[v], acc[r][v]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int v = 0; v < 2 * NP; ++v) {
      float* o = a.out + r * a.n + a.column + 8 * v;
      const int64_t lanes = a.n - (a.column + 8 * v);
      if (lanes >= 8) {
        _mm256_storeu_ps(o, acc[r][v]);
      } else if (lanes > 0) {
        alignas(32) float lane_values[8];
        _mm256_store_ps(lane_values, acc[r][v]);
        std::memcpy(o, lane_values, lanes * sizeof(float));
      }
    }
  }
}

// GCC 12's AVX-512 intrinsics start from a deliberately undefined register, which its
// own uninitialized-variable warnings flag inside the headers.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// The same on sixteen lanes (AVX-512): a panel is one register; MR x NP accumulators, NP
// weight loads and MR broadcasts per input (6 x 4 fills 29 of the 32 registers).
template <int MR, int NP, typename W>
__attribute__((target("avx512f,avx2,fma"))) void TileAvx512(const TileArgs<W>& a) {
  __m512 acc[MR][NP];
  __mmask16 mask[NP];  // the panels' valid lanes
  for (int p = 0; p < NP; ++p) {
    const int64_t lanes = std::clamp<int64_t>(a.n - (a.column + p * kPanel), 0, kPanel);
    mask[p] = lanes == kPanel ? 0xFFFF : static_cast<__mmask16>((1u << lanes) - 1);
  }
  for (int r = 0; r < MR; ++r) {
    for (int p = 0; p < NP; ++p) {
      acc[r][p] = a.resume ? _mm512_maskz_loadu_ps(mask[p], a.out + r * a.n + a.column + p * kPanel)
                           : _mm512_setzero_ps();
    }
  }
  const W* w = a.panels + a.k_begin * kPanel;
  for (int64_t c = a.k_begin; c < a.k_begin + a.k_count; ++c, w += kPanel) {
    __m512 wv[NP];
    for (int p = 0; p < NP; ++p) wv[p] = LoadSixteen(w + p * a.k * kPanel);
    for (int r = 0; r < MR; ++r) {
      const __m512 xv = _mm512_set1_ps(a.x[r * a.k + c]);
      for (int p = 0; p < NP; ++p) acc[r][p] = _mm512_fmadd_ps(xv, wv[p], acc[r][p]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int p = 0; p < NP; ++p) {
      _mm512_mask_storeu_ps(a.out + r * a.n + a.column + p * kPanel, mask[p], acc[r][p]);
    }
  }
}
#pragma GCC diagnostic pop
#endif  // TESSERA_CPU_X86

template <typename W>
using TileFn = void (*)(const TileArgs<W>&);

// The tile kernel of `path` for MR rows (1..kTileRows) and NP panels (1, 2 or 4).
template <typename W, int MR>
TileFn<W> TileWithRows([[maybe_unused]] CpuVector path, [[maybe_unused]] int np) {
#if TESSERA_CPU_X86
  switch (path) {
    case CpuVector::kAvx512:
      return np == 4 ? TileAvx512<MR, 4, W> : np == 2 ? TileAvx512<MR, 2, W> : TileAvx512<MR, 1, W>;
    case CpuVector::kAvx2:  // sixteen registers: one panel (two of them) per row at most
      return TileAvx2<MR, 1, W>;
    case CpuVector::kPortable:
      break;
  }
#endif
  return TilePortable<MR, 1, W>;
}

template <typename W>
TileFn<W> TileFor(CpuVector path, int rows, int np) {
  switch (rows) {
    case 1:
      return TileWithRows<W, 1>(path, np);
    case 2:
      return TileWithRows<W, 2>(path, np);
    case 3:
      return TileWithRows<W, 3>(path, np);
    case 4:
      return TileWithRows<W, 4>(path, np);
    case 5:
      return TileWithRows<W, 5>(path, np);
    default:
      return TileWithRows<W, 6>(path, np);
  }
}

// How a product is cut into work items: passes of rows times groups of panels. Items are
// many enough to keep every kernel thread busy where the product allows, and an item is a
// whole number of tiles; how it is cut never changes an output's chain.
struct WorkSplit {
  int64_t rows_per_pass, passes;
  int64_t panels_per_group, groups;
};

WorkSplit SplitWork(int64_t m, int64_t panels, CpuVector path) {
  const int64_t wanted = 2 * CpuKernelThreads();  // items that keep the threads busy
  WorkSplit s;
  // AVX-512 tiles take up to four panels; the narrower paths one at a time.
  s.panels_per_group = path == CpuVector::kAvx512 ? 4 : 1;
  while (s.panels_per_group > 1 &&
         (panels + s.panels_per_group - 1) / s.panels_per_group < wanted) {
    s.panels_per_group /= 2;
  }
  s.groups = (panels + s.panels_per_group - 1) / s.panels_per_group;
  s.rows_per_pass = std::min(m, kRowsPerPass);
  if (s.groups < wanted && m > kTileRows) {
    // Too few panel groups (a narrow projection): cut the rows too, in whole tiles.
    const int64_t cuts = (wanted + s.groups - 1) / s.groups;
    const int64_t rows = (m + cuts - 1) / cuts;
    s.rows_per_pass = std::min(s.rows_per_pass, (rows + kTileRows - 1) / kTileRows * kTileRows);
  }
  s.passes = (m + s.rows_per_pass - 1) / s.rows_per_pass;
  return s;
}

// out (m, n) = x (m, k) . packed^T; with `accumulate`, every output's chain goes on from the
// value already in out instead of starting from 0 (out += x . w^T).
template <typename W>
void LinearPacked(const float* x, const W* packed, float* out, int64_t m, int64_t n, int64_t k,
                  bool accumulate = false, bool use_pool = true) {
  const int64_t panels = (n + kPanel - 1) / kPanel;
  const CpuVector path = CpuVectorPath();
  const WorkSplit split = SplitWork(m, panels, path);
  // Below about 64k multiply-adds, waking threads costs more than the product.
  const int64_t items = split.passes * split.groups;
  const int64_t min_items = !use_pool || m * n * k < 65536 ? items : 1;
  ParallelFor(
      items, min_items,
      [&](int64_t begin, int64_t end) {
        for (int64_t item = begin; item < end; ++item) {
          const int64_t group = item / split.passes, pass = item % split.passes;
          const int64_t row_end = std::min(m, (pass + 1) * split.rows_per_pass);
          const int64_t panel_begin = group * split.panels_per_group;
          const int np = static_cast<int>(std::min(split.panels_per_group, panels - panel_begin));
          // A group has 1, 2 or 4 panels, but the last may be short: its panels one by one.
          const int tile_np = np == split.panels_per_group ? np : 1;
          for (int64_t k_begin = 0; k_begin < k; k_begin += kInputsPerBlock) {
            const int64_t k_count = std::min(kInputsPerBlock, k - k_begin);
            for (int64_t row = pass * split.rows_per_pass; row < row_end; row += kTileRows) {
              const int rows = static_cast<int>(std::min<int64_t>(kTileRows, row_end - row));
              const TileFn<W> tile = TileFor<W>(path, rows, tile_np);
              for (int64_t p = panel_begin; p < panel_begin + np; p += tile_np) {
                tile({x + row * k, packed + p * k * kPanel, out + row * n, k, n, p * kPanel,
                      k_begin, k_count, accumulate || k_begin > 0});
              }
            }
          }
        }
      },
      /*grain=*/1);
}

template <typename W>
void Pack(const W* w, W* packed, int64_t n, int64_t k) {
  const int64_t panels = (n + kPanel - 1) / kPanel;
  for (int64_t p = 0; p < panels; ++p) {
    for (int64_t c = 0; c < k; ++c) {
      W* to = packed + (p * k + c) * kPanel;
      for (int64_t l = 0; l < kPanel; ++l) {
        const int64_t row = p * kPanel + l;
        to[l] = row < n ? w[row * k + c] : W{0};
      }
    }
  }
}

// Rows of a (rows, cols) matrix as the columns of a product's packed weight: packed
// (ceil(cols / 16), rows, 16), packed[p][r][l] = a[r][16 p + l], zero past column `cols`.
// The packed form of a^T (cols, rows), made without transposing: every panel row is a copy of
// sixteen consecutive elements of a row.
template <typename W>
void PackColumns(const W* a, W* packed, int64_t rows, int64_t cols) {
  const int64_t panels = (cols + kPanel - 1) / kPanel;
  ParallelFor(panels, rows * kPanel < 65536 ? panels : 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t lanes = std::min(kPanel, cols - p * kPanel);
      for (int64_t r = 0; r < rows; ++r) {
        W* to = packed + (p * rows + r) * kPanel;
        const W* from = a + r * cols + p * kPanel;
        if (lanes == kPanel) {
          for (int64_t l = 0; l < kPanel; ++l) to[l] = from[l];  // inlined, unlike copy_n
        } else {
          std::copy_n(from, lanes, to);
          std::fill(to + lanes, to + kPanel, W{0});
        }
      }
    }
  });
}

// PackColumns of w (rows, cols) from w's PackLinearWeight form, packed_w (ceil(rows / 16), cols,
// 16): the same values, moved a 16 x 16 block at a time (a block of 16 of w's rows and 16 of
// its columns is contiguous in both forms, transposed).
template <typename W>
void PackColumnsOfPacked(const W* packed_w, W* packed, int64_t rows, int64_t cols) {
  const int64_t panels = (cols + kPanel - 1) / kPanel;
  ParallelFor(panels, rows * kPanel < 65536 ? panels : 1, [&](int64_t begin, int64_t end) {
    for (int64_t q = begin; q < end; ++q) {
      const int64_t lanes = std::min(kPanel, cols - q * kPanel);
      for (int64_t r0 = 0; r0 < rows; r0 += kPanel) {
        const W* from = packed_w + ((r0 / kPanel) * cols + q * kPanel) * kPanel;
        const int64_t block_rows = std::min(kPanel, rows - r0);
        for (int64_t r = 0; r < block_rows; ++r) {
          W* to = packed + (q * rows + r0 + r) * kPanel;
          for (int64_t l = 0; l < lanes; ++l) to[l] = from[l * kPanel + r];
          for (int64_t l = lanes; l < kPanel; ++l) to[l] = W{0};
        }
      }
    }
  });
}

// n elements of scratch, slot kSlot of the calling thread's, not initialized. Kept between
// calls: training calls the same shapes layer after layer, and fresh pages cost more than the
// copies that fill them. A slot grows to the largest call's need; it is freed when the thread
// exits.
template <typename T, int kSlot>
T* ThreadScratch(int64_t n) {
  thread_local std::unique_ptr<T[]> data;
  thread_local int64_t size = 0;
  if (size < n) {
    data.reset();
    data = std::make_unique_for_overwrite<T[]>(static_cast<size_t>(n));
    size = n;
  }
  return data.get();
}

#if TESSERA_CPU_X86
// An 8 x 8 block of from (rows from_stride apart) transposed into to (rows to_stride apart),
// in registers: unpack pairs of rows, shuffle pairs of pairs, swap 128-bit halves.
__attribute__((target("avx2,fma"))) void TransposeEightAvx2(const float* from, int64_t from_stride,
                                                            float* to, int64_t to_stride) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(from + i * from_stride);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(to + i * to_stride, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    _mm256_storeu_ps(to + (i + 4) * to_stride, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
}
#endif  // TESSERA_CPU_X86

// to (cols, rows) = from (rows, cols)^T, in square tiles that stay in L1. With row_sums
// (cols), row_sums[c] += the sum of to's row c (from's column c), taken while the row is
// still in cache, in an order fixed by `rows`.
void Transpose(const float* from, float* to, int64_t rows, int64_t cols, float* row_sums) {
  constexpr int64_t kTile = 32;
  const int64_t tiles = (cols + kTile - 1) / kTile;
#if TESSERA_CPU_X86
  const bool avx2 = HasAvx2Fma();
#endif
  ParallelFor(tiles, rows * kTile < 65536 ? tiles : 1, [&](int64_t begin, int64_t end) {
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t c0 = tile * kTile, c1 = std::min(cols, c0 + kTile);
      for (int64_t r0 = 0; r0 < rows; r0 += kTile) {
        const int64_t r1 = std::min(rows, r0 + kTile);
        // Whole 8 x 8 blocks in registers, the edges element by element.
#if TESSERA_CPU_X86
        const int64_t c8 = avx2 ? c0 + (c1 - c0) / 8 * 8 : c0;
        const int64_t r8 = avx2 ? r0 + (r1 - r0) / 8 * 8 : r0;
        for (int64_t c = c0; c < c8; c += 8) {
          for (int64_t r = r0; r < r8; r += 8) {
            TransposeEightAvx2(from + r * cols + c, cols, to + c * rows + r, rows);
          }
        }
#else
        const int64_t c8 = c0, r8 = r0;
#endif
        for (int64_t c = c0; c < c1; ++c) {
          for (int64_t r = c < c8 ? r8 : r0; r < r1; ++r) to[c * rows + r] = from[r * cols + c];
        }
      }
      if (row_sums == nullptr) continue;
      for (int64_t c = c0; c < c1; ++c) {
        // Sixteen running sums (element r goes to sum r % 16), then those in a fixed order.
        constexpr int64_t kLanes = 16;
        const float* row = to + c * rows;
        float lanes[kLanes] = {};
        int64_t r = 0;
        for (; r + kLanes <= rows; r += kLanes) {
          for (int64_t l = 0; l < kLanes; ++l) lanes[l] += row[r + l];
        }
        for (; r < rows; ++r) lanes[r % kLanes] += row[r];
        float sum = 0.0f;
        for (int64_t l = 0; l < kLanes; ++l) sum += lanes[l];
        row_sums[c] += sum;
      }
    }
  });
}

}  // namespace

absl::StatusOr<Tensor> PackLinearWeight(const Tensor& w) {
  constexpr char kKernel[] = "PackLinearWeight";
  TESSERA_RETURN_IF_ERROR(internal::ExpectDType(kKernel, "w", w, {DType::kF32, DType::kBF16}));
  TESSERA_RETURN_IF_ERROR(internal::ExpectRank(kKernel, "w", w, 2));
  const int64_t n = w.dim(0), k = w.dim(1);
  TESSERA_ASSIGN_OR_RETURN(Tensor packed,
                           Tensor::Empty(w.dtype(), {(n + kPanel - 1) / kPanel, k, kPanel}));
  if (w.dtype() == DType::kF32) {
    Pack(w.data<float>(), packed.data<float>(), n, k);
  } else {
    Pack(reinterpret_cast<const uint16_t*>(w.data<BFloat16>()),
         reinterpret_cast<uint16_t*>(packed.data<BFloat16>()), n, k);
  }
  return packed;
}

absl::StatusOr<Tensor> UnpackLinearWeight(const Tensor& packed, int64_t rows) {
  constexpr char kKernel[] = "UnpackLinearWeight";
  TESSERA_RETURN_IF_ERROR(
      internal::ExpectDType(kKernel, "packed", packed, {DType::kF32, DType::kBF16}));
  TESSERA_RETURN_IF_ERROR(internal::ExpectRank(kKernel, "packed", packed, 3));
  const int64_t panels = packed.dim(0), k = packed.dim(1);
  if (packed.dim(2) != kPanel || rows < 0 || rows > panels * kPanel) {
    return absl::InvalidArgumentError(
        absl::StrCat(kKernel, ": ", rows, " rows from packed ", packed.DebugString()));
  }
  TESSERA_ASSIGN_OR_RETURN(Tensor w, Tensor::Empty(packed.dtype(), {rows, k}));
  const size_t element = packed.dtype() == DType::kF32 ? sizeof(float) : sizeof(uint16_t);
  const auto* from = static_cast<const uint8_t*>(packed.data());
  auto* to = static_cast<uint8_t*>(w.data());
  ParallelFor(rows, 64, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t p = row / kPanel, l = row % kPanel;
      for (int64_t c = 0; c < k; ++c) {
        std::memcpy(to + (row * k + c) * element, from + ((p * k + c) * kPanel + l) * element,
                    element);
      }
    }
  });
  return w;
}

absl::Status Linear(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& out) {
  constexpr char kKernel[] = "Linear";
  TESSERA_RETURN_IF_ERROR(internal::ExpectDType(kKernel, "x", x, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(internal::ExpectRank(kKernel, "x", x, 2));
  TESSERA_RETURN_IF_ERROR(internal::ExpectDType(kKernel, "w", w, {DType::kF32, DType::kBF16}));
  TESSERA_RETURN_IF_ERROR(internal::ExpectDType(kKernel, "out", out, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(internal::ExpectRank(kKernel, "out", out, 2));
  const int64_t m = x.dim(0), k = x.dim(1), n = out.dim(1);
  Tensor packed = w;
  if (w.rank() == 2) {
    if (w.dim(1) != k) {
      return absl::InvalidArgumentError(absl::StrCat(kKernel, ": x ", x.DebugString(), " and w ",
                                                     w.DebugString(),
                                                     " disagree on the inner dimension"));
    }
    TESSERA_RETURN_IF_ERROR(internal::ExpectShape(kKernel, "out", out, {m, w.dim(0)}));
    TESSERA_ASSIGN_OR_RETURN(packed, PackLinearWeight(w));
  } else if (w.rank() != 3 || w.dim(0) != (n + kPanel - 1) / kPanel || w.dim(1) != k ||
             w.dim(2) != kPanel) {
    return absl::InvalidArgumentError(
        absl::StrCat(kKernel, ": w is ", w.DebugString(), ", expected (", n, ", ", k,
                     ") or packed (", (n + kPanel - 1) / kPanel, ", ", k, ", ", kPanel, ") for x ",
                     x.DebugString(), " and out ", out.DebugString()));
  }
  TESSERA_RETURN_IF_ERROR(internal::ExpectShape(kKernel, "out", out, {m, n}));
  if (bias.defined()) {
    TESSERA_RETURN_IF_ERROR(
        internal::ExpectDType(kKernel, "bias", bias, {DType::kF32, DType::kBF16}));
    TESSERA_RETURN_IF_ERROR(internal::ExpectShape(kKernel, "bias", bias, {n}));
  }
  if (m == 0 || n == 0) return absl::OkStatus();
  if (k == 0) {
    std::fill(out.data<float>(), out.data<float>() + m * n, 0.0f);
  } else if (packed.dtype() == DType::kF32) {
    LinearPacked(x.data<float>(), packed.data<float>(), out.data<float>(), m, n, k);
  } else {
    LinearPacked(x.data<float>(), reinterpret_cast<const uint16_t*>(packed.data<BFloat16>()),
                 out.data<float>(), m, n, k);
  }
  if (bias.defined()) {
    float* o = out.data<float>();
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) o[i * n + j] += internal::LoadFloat(bias, j);
    }
  }
  return absl::OkStatus();
}

void LinearPackedOnThisThread(const float* x, const Tensor& packed, float* out, int64_t m,
                              int64_t n, int64_t k) {
  if (m == 0 || n == 0) return;
  if (packed.dtype() == DType::kF32) {
    LinearPacked(x, packed.data<float>(), out, m, n, k, /*accumulate=*/false, /*use_pool=*/false);
  } else {
    LinearPacked(x, reinterpret_cast<const uint16_t*>(packed.data<BFloat16>()), out, m, n, k,
                 /*accumulate=*/false, /*use_pool=*/false);
  }
}

absl::Status LinearBackwardInput(const Tensor& dy, const Tensor& w, Tensor& dx) {
  constexpr char kKernel[] = "LinearBackwardInput";
  TESSERA_RETURN_IF_ERROR(internal::ExpectDType(kKernel, "dy", dy, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(internal::ExpectRank(kKernel, "dy", dy, 2));
  const int64_t m = dy.dim(0), n = dy.dim(1);
  TESSERA_RETURN_IF_ERROR(internal::ExpectDType(kKernel, "w", w, {DType::kF32, DType::kBF16}));
  const int64_t panels_of_n = (n + kPanel - 1) / kPanel;
  const bool packed_w = w.rank() == 3;
  if (packed_w ? w.dim(0) != panels_of_n || w.dim(2) != kPanel : w.rank() != 2 || w.dim(0) != n) {
    return absl::InvalidArgumentError(
        absl::StrCat(kKernel, ": w is ", w.DebugString(), ", expected ", n, " rows, or packed (",
                     panels_of_n, ", K, ", kPanel, "), for dy ", dy.DebugString()));
  }
  const int64_t k = w.dim(1);
  TESSERA_RETURN_IF_ERROR(internal::ExpectDType(kKernel, "dx", dx, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(internal::ExpectShape(kKernel, "dx", dx, {m, k}));
  if (m == 0 || k == 0) return absl::OkStatus();
  if (n == 0) {
    std::fill(dx.data<float>(), dx.data<float>() + m * k, 0.0f);
    return absl::OkStatus();
  }
  // dx = dy . w = dy . (w^T)^T: Linear with w^T (K, N) as its weight, packed straight from w.
  const int64_t packed_size = (k + kPanel - 1) / kPanel * n * kPanel;
  if (w.dtype() == DType::kF32) {
    float* packed = ThreadScratch<float, 0>(packed_size);
    if (packed_w) {
      PackColumnsOfPacked(w.data<float>(), packed, n, k);
    } else {
      PackColumns(w.data<float>(), packed, n, k);
    }
    LinearPacked(dy.data<float>(), static_cast<const float*>(packed), dx.data<float>(), m, k, n);
  } else {
    uint16_t* packed = ThreadScratch<uint16_t, 0>(packed_size);
    const uint16_t* from = reinterpret_cast<const uint16_t*>(w.data<BFloat16>());
    if (packed_w) {
      PackColumnsOfPacked(from, packed, n, k);
    } else {
      PackColumns(from, packed, n, k);
    }
    LinearPacked(dy.data<float>(), static_cast<const uint16_t*>(packed), dx.data<float>(), m, k, n);
  }
  return absl::OkStatus();
}

absl::Status LinearBackwardWeight(const Tensor& dy, const Tensor& x, Tensor& dw, Tensor* dbias) {
  constexpr char kKernel[] = "LinearBackwardWeight";
  TESSERA_RETURN_IF_ERROR(internal::ExpectDType(kKernel, "dy", dy, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(internal::ExpectRank(kKernel, "dy", dy, 2));
  const int64_t m = dy.dim(0), n = dy.dim(1);
  TESSERA_RETURN_IF_ERROR(internal::ExpectDType(kKernel, "x", x, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(internal::ExpectRank(kKernel, "x", x, 2));
  if (x.dim(0) != m) {
    return absl::InvalidArgumentError(absl::StrCat(
        kKernel, ": x is ", x.DebugString(), ", expected ", m, " rows for dy ", dy.DebugString()));
  }
  const int64_t k = x.dim(1);
  TESSERA_RETURN_IF_ERROR(internal::ExpectDType(kKernel, "dw", dw, {DType::kF32}));
  TESSERA_RETURN_IF_ERROR(internal::ExpectShape(kKernel, "dw", dw, {n, k}));
  const bool with_bias = dbias != nullptr && dbias->defined();
  if (with_bias) {
    TESSERA_RETURN_IF_ERROR(internal::ExpectDType(kKernel, "dbias", *dbias, {DType::kF32}));
    TESSERA_RETURN_IF_ERROR(internal::ExpectShape(kKernel, "dbias", *dbias, {n}));
  }
  if (m == 0 || n == 0) return absl::OkStatus();
  // dw += dy^T (N, M) . x = dy^T . (x^T)^T: Linear over the rows of dy^T with x^T (K, M) as
  // its weight, packed straight from x, every chain going on from dw's value. dbias takes
  // the rows of dy^T as the transpose writes them.
  float* dy_t = ThreadScratch<float, 1>(n * m);
  Transpose(dy.data<float>(), dy_t, m, n, with_bias ? dbias->data<float>() : nullptr);
  if (k > 0) {
    float* packed = ThreadScratch<float, 0>((k + kPanel - 1) / kPanel * m * kPanel);
    PackColumns(x.data<float>(), packed, m, k);
    LinearPacked(static_cast<const float*>(dy_t), static_cast<const float*>(packed),
                 dw.data<float>(), n, k, m, /*accumulate=*/true);
  }
  return absl::OkStatus();
}

}  // namespace tessera::kernels
