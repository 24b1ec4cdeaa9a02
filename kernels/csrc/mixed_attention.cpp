// Fused mixed attention on the CPU: tiled online softmax (flash-attention style), float32, pybind11 binding.
//
// Semantics (the rule of unipose_sdk/models/attention_mask.py): query i of row b, at cache slot
// p = i + query_offset[b], attends key j iff j >= key_start[b] and (j <= p, or both p and j lie in
// [block_start[b], block_end[b])). A query with no allowed key yields zeros.
//
// Layout: q [B, Hq, Tq, D], k and v [B, Hkv, Tk, D], out [B, Hq, Tq, D], all C-contiguous float32; the four
// bounds are int32 [B]. Query head h reads key/value head h / (Hq / Hkv) (grouped-query attention, no copy).
//
// Work split: one work item = (row, query head, tile of BM queries); OpenMP hands items out dynamically, the
// tiles with the most keys (the last query tiles) first. Per item the key range is cut to what some query in the
// tile may see, so fully masked key tiles are never touched (for a causal prefill that is half the matrix).
// Key tiles that every query of the item may fully see skip the mask arithmetic.
//
// Portability: a wheel must run on any x86-64 CPU, so the file is compiled for the baseline ISA and the hot
// function is compiled three more times with GCC target attributes (AVX2+FMA, AVX-512); the best one the running
// CPU supports is picked once at run time (__builtin_cpu_supports). No -march=native anywhere.
// The inner loops are written so GCC vectorises them without -ffast-math: the exponential is a polynomial on
// plain float/int arithmetic (no libm call), reductions use `omp simd reduction`.

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

namespace {

constexpr int kBlockM = 32;  // queries per work item
constexpr int kBlockN = 64;  // keys per tile: a tile of K^T (D x 64 floats) stays in L1
constexpr int kMaxHeadDim = 256;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr float kLog2e = 1.4426950408889634f;

#if defined(__GNUC__)
#define UNIPOSE_INLINE inline __attribute__((always_inline))
#else
#define UNIPOSE_INLINE inline
#endif

struct Problem {
  const float* q;
  const float* k;
  const float* v;
  float* out;
  const int32_t* block_start;
  const int32_t* block_end;
  const int32_t* key_start;
  const int32_t* query_offset;
  int64_t batch, heads_q, heads_kv, num_queries, num_keys, head_dim;
  float scale;
  // Keys transposed once per call, tile by tile: [B, Hkv, key_tiles, D, kBlockN], zero past num_keys, so the
  // score micro-kernel reads contiguous rows of kBlockN keys (and no query tile transposes keys again).
  const float* k_tiles;
  int64_t key_tiles;
};

// Per-thread scratch, allocated once per call and per thread.
struct Workspace {
  float* q_tile;   // [BM][D], pre-multiplied by scale * log2(e) so the softmax runs in base 2
  float* scores;   // [BM][BN]
  float* acc;      // [BM][D], unnormalised output
  float row_max[kBlockM];
  float row_sum[kBlockM];
  int64_t row_limit[kBlockM];  // query i sees keys [key_start, row_limit[i])
  void* memory;

  explicit Workspace(int64_t head_dim) {
    const size_t floats = static_cast<size_t>(kBlockM * head_dim * 2 + kBlockM * kBlockN);
    const size_t bytes = ((floats * sizeof(float) + 63) / 64) * 64;
    memory = std::aligned_alloc(64, bytes);
    if (memory == nullptr) throw std::bad_alloc();
    q_tile = static_cast<float*>(memory);
    acc = q_tile + kBlockM * head_dim;
    scores = acc + kBlockM * head_dim;
  }
  ~Workspace() { std::free(memory); }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
};

// GCC vector types, one per instruction set: the micro-kernels below are templates over the vector type V, so
// each target clone gets register blocks of its native width (SSE 4, AVX2 8, AVX-512 16 floats).
typedef float vec4 __attribute__((vector_size(16)));
typedef float vec8 __attribute__((vector_size(32)));
typedef float vec16 __attribute__((vector_size(64)));
typedef int32_t ivec4 __attribute__((vector_size(16)));
typedef int32_t ivec8 __attribute__((vector_size(32)));
typedef int32_t ivec16 __attribute__((vector_size(64)));
template <typename V> struct IntVector;
template <> struct IntVector<vec4> { using type = ivec4; };
template <> struct IntVector<vec8> { using type = ivec8; };
template <> struct IntVector<vec16> { using type = ivec16; };

template <typename V>
UNIPOSE_INLINE V load(const float* ptr) {
  V x;
  std::memcpy(&x, ptr, sizeof(V));  // an unaligned vector load
  return x;
}

template <typename V>
UNIPOSE_INLINE void store(float* ptr, V x) {
  std::memcpy(ptr, &x, sizeof(V));
}

template <typename V>
UNIPOSE_INLINE V broadcast(float x) {
  return V{} + x;
}

template <typename V>
UNIPOSE_INLINE float horizontal_max(V x) {
  float m = x[0];
  for (int i = 1; i < int(sizeof(V) / sizeof(float)); ++i) m = std::max(m, x[i]);
  return m;
}

template <typename V>
UNIPOSE_INLINE float horizontal_sum(V x) {
  float t = 0.0f;
  for (int i = 0; i < int(sizeof(V) / sizeof(float)); ++i) t += x[i];
  return t;
}

// 2^x lane by lane for x <= 0 (scores minus the running maximum): relative error ~2e-7, exactly 0 below -126
// and for -inf. Round-to-nearest by adding and subtracting 1.5 * 2^23 (no rounding instruction needed, so the
// same code serves SSE2); 2^f on [-0.5, 0.5] by a degree-5 polynomial (least-squares fit of the relative error
// on Chebyshev nodes, constant term pinned to 1); 2^n by adding n to the exponent bits.
template <typename V>
UNIPOSE_INLINE V exp2_nonpositive(V x) {
  using I = typename IntVector<V>::type;
  const V low = broadcast<V>(-126.0f);
  const V magic = broadcast<V>(12582912.0f);
  const V clamped = x < low ? low : x;  // also maps -inf to a finite value
  const V shifted = clamped + magic;
  const V n = shifted - magic;
  const I n_int = ((I)shifted) - ((I)magic);
  const V f = clamped - n;  // in [-0.5, 0.5]
  V poly = broadcast<V>(1.3218672481617576e-03f);
  poly = poly * f + 9.67169793839892e-03f;
  poly = poly * f + 5.5508929524512245e-02f;
  poly = poly * f + 2.4022238002741111e-01f;
  poly = poly * f + 6.931468559416913e-01f;
  poly = poly * f + 1.0f;  // constant term pinned to 1 so that 2^0 is exact
  const I bits = ((I)poly) + n_int * (1 << 23);  // times 2^n via the exponent field
  const V result = (V)bits;
  return x < low ? V{} : result;
}

// Register block: kRows<V> query rows x 2 vectors of accumulators: 8 of the 16 registers of SSE / AVX2, 16 of
// the 32 of AVX-512; enough independent FMA chains to hide the FMA latency, with room left for the operands.
template <typename V>
constexpr int kRows = sizeof(V) == 64 ? 8 : 4;
static_assert(kBlockM % 8 == 0, "a query tile must be a whole number of row blocks");

// scores[r][c] = sum_d q_tile[r][d] * k_tile[d][c] for all kBlockN columns of rows [0, rows_padded).
template <typename V>
UNIPOSE_INLINE void scores_block(const float* q_tile, const float* k_tile, float* scores, int64_t D,
                                 int64_t rows_padded) {
  constexpr int W = sizeof(V) / sizeof(float);
  for (int64_t r0 = 0; r0 < rows_padded; r0 += kRows<V>) {
    for (int c0 = 0; c0 < kBlockN; c0 += 2 * W) {
      V acc[kRows<V>][2] = {};
      for (int64_t d = 0; d < D; ++d) {
        const V k0 = load<V>(k_tile + d * kBlockN + c0);
        const V k1 = load<V>(k_tile + d * kBlockN + c0 + W);
#pragma GCC unroll 8
        for (int r = 0; r < kRows<V>; ++r) {
          const float qv = q_tile[(r0 + r) * D + d];
          acc[r][0] += k0 * qv;
          acc[r][1] += k1 * qv;
        }
      }
#pragma GCC unroll 8
      for (int r = 0; r < kRows<V>; ++r) {
        store<V>(scores + (r0 + r) * kBlockN + c0, acc[r][0]);
        store<V>(scores + (r0 + r) * kBlockN + c0 + W, acc[r][1]);
      }
    }
  }
}

// acc[r][d] += sum_c probs[r][c] * v[c][d] for c < cols, rows [0, rows_padded); needs D % (2W) == 0.
template <typename V>
UNIPOSE_INLINE void values_block(const float* probs, const float* v, float* acc, int64_t D, int64_t rows_padded,
                                 int64_t cols) {
  constexpr int W = sizeof(V) / sizeof(float);
  for (int64_t r0 = 0; r0 < rows_padded; r0 += kRows<V>) {
    for (int64_t d0 = 0; d0 < D; d0 += 2 * W) {
      V sum[kRows<V>][2];
#pragma GCC unroll 8
      for (int r = 0; r < kRows<V>; ++r) {
        sum[r][0] = load<V>(acc + (r0 + r) * D + d0);
        sum[r][1] = load<V>(acc + (r0 + r) * D + d0 + W);
      }
      for (int64_t c = 0; c < cols; ++c) {
        const V v0 = load<V>(v + c * D + d0);
        const V v1 = load<V>(v + c * D + d0 + W);
#pragma GCC unroll 8
        for (int r = 0; r < kRows<V>; ++r) {
          const float pr = probs[(r0 + r) * kBlockN + c];
          sum[r][0] += v0 * pr;
          sum[r][1] += v1 * pr;
        }
      }
#pragma GCC unroll 8
      for (int r = 0; r < kRows<V>; ++r) {
        store<V>(acc + (r0 + r) * D + d0, sum[r][0]);
        store<V>(acc + (r0 + r) * D + d0 + W, sum[r][1]);
      }
    }
  }
}

// One work item: rows [m0, m0 + rows) of query head h of batch row b. HEAD_DIM is 64 / 128 (compile-time, so
// the loops over it unroll) or 0 (any head dimension, read at run time). V is the target's vector type.
template <int HEAD_DIM, typename V>
UNIPOSE_INLINE void attend_tile(const Problem& p, Workspace& ws, int64_t b, int64_t h, int64_t m0) {
  constexpr int W = sizeof(V) / sizeof(float);
  static_assert(kBlockN % (2 * W) == 0, "a key tile must be a whole number of register blocks");
  const int64_t D = HEAD_DIM > 0 ? HEAD_DIM : p.head_dim;
  const int64_t rows = std::min<int64_t>(kBlockM, p.num_queries - m0);
  const int64_t rows_padded = (rows + kRows<V> - 1) / kRows<V> * kRows<V>;  // micro-kernels take whole row blocks
  const int64_t h_kv = h / (p.heads_q / p.heads_kv);
  const float* q = p.q + ((b * p.heads_q + h) * p.num_queries + m0) * D;
  const float* k_tiles = p.k_tiles + (b * p.heads_kv + h_kv) * p.key_tiles * D * kBlockN;
  const float* v = p.v + (b * p.heads_kv + h_kv) * p.num_keys * D;
  float* out = p.out + ((b * p.heads_q + h) * p.num_queries + m0) * D;

  const int64_t offset = p.query_offset[b];
  const int64_t block_start = p.block_start[b];
  const int64_t block_end = p.block_end[b];
  const int64_t key_start = std::max<int64_t>(0, p.key_start[b]);
  const bool has_block = block_start < block_end;
  // Query slot pos sees exactly the keys [key_start, limit(pos)): within the block, the whole block and
  // everything before it; elsewhere everything up to itself.
  auto limit = [&](int64_t pos) {
    const bool in_block = has_block && pos >= block_start && pos < block_end;
    return std::min(p.num_keys, in_block ? std::max(pos + 1, block_end) : pos + 1);
  };
  // limit() is not monotonic across the block's end, so take the extremes over the tile's rows.
  int64_t key_hi = 0;                  // keys from here on are masked for every query of the tile
  int64_t full_hi = p.num_keys;        // keys in [key_start, full_hi) are allowed for every query
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t lim = limit(m0 + i + offset);
    ws.row_limit[i] = lim;
    key_hi = std::max(key_hi, lim);
    full_hi = std::min(full_hi, lim);
  }

  const float q_scale = p.scale * kLog2e;  // softmax in base 2: exp(x) = 2^(x log2 e)
  for (int64_t i = 0; i < rows_padded; ++i) {
    const float row_scale = i < rows ? q_scale : 0.0f;  // padding rows: zero queries, results discarded
    const float* src = i < rows ? q + i * D : q;
    for (int64_t d = 0; d < D; ++d) ws.q_tile[i * D + d] = src[d] * row_scale;
    for (int64_t d = 0; d < D; ++d) ws.acc[i * D + d] = 0.0f;
    ws.row_max[i] = kNegInf;
    ws.row_sum[i] = 0.0f;
  }

  // Key tiles are aligned to kBlockN (the layout of the pre-transposed keys); the first one may start before
  // key_start and is then masked.
  for (int64_t j0 = key_start / kBlockN * kBlockN; j0 < key_hi; j0 += kBlockN) {
    const int64_t cols = std::min<int64_t>(kBlockN, key_hi - j0);
    const bool full_tile = j0 >= key_start && j0 + kBlockN <= full_hi;
    scores_block<V>(ws.q_tile, k_tiles + (j0 / kBlockN) * D * kBlockN, ws.scores, D, rows_padded);

    for (int64_t i = 0; i < rows_padded; ++i) {
      float* s = ws.scores + i * kBlockN;
      if (i >= rows) {  // padding row: contribute nothing
        for (int c = 0; c < kBlockN; c += W) store<V>(s + c, V{});
        continue;
      }
      if (!full_tile) {  // allowed columns are one interval: [key_start, row_limit) shifted to the tile
        const float lo = static_cast<float>(key_start - j0);
        const float hi = static_cast<float>(ws.row_limit[i] - j0);
        V column;
        for (int lane = 0; lane < W; ++lane) column[lane] = static_cast<float>(lane);
        for (int c = 0; c < kBlockN; c += W) {
          const V sc = load<V>(s + c);
          const auto inside = (column >= broadcast<V>(lo)) & (column < broadcast<V>(hi));
          store<V>(s + c, inside ? sc : broadcast<V>(kNegInf));
          column += broadcast<V>(static_cast<float>(W));
        }
      }
      // Online softmax: rescale what was accumulated so far to the new running maximum.
      V max_vec = load<V>(s);
      for (int c = W; c < kBlockN; c += W) {
        const V sc = load<V>(s + c);
        max_vec = sc > max_vec ? sc : max_vec;
      }
      const float new_max = std::max(ws.row_max[i], horizontal_max(max_vec));
      if (new_max == kNegInf) {  // nothing allowed for this query yet
        for (int c = 0; c < kBlockN; c += W) store<V>(s + c, V{});
        continue;
      }
      const float correction = exp2_nonpositive(broadcast<V>(ws.row_max[i] - new_max))[0];
      V sum_vec{};
      for (int c = 0; c < kBlockN; c += W) {
        const V e = exp2_nonpositive(load<V>(s + c) - new_max);
        store<V>(s + c, e);
        sum_vec += e;
      }
      ws.row_max[i] = new_max;
      ws.row_sum[i] = ws.row_sum[i] * correction + horizontal_sum(sum_vec);
      if (correction != 1.0f) {
        float* acc = ws.acc + i * D;
        for (int64_t d = 0; d < D; ++d) acc[d] *= correction;
      }
    }

    if (D % (2 * W) == 0) {
      values_block<V>(ws.scores, v + j0 * D, ws.acc, D, rows_padded, cols);
    } else {
      for (int64_t i = 0; i < rows; ++i) {
        float* acc = ws.acc + i * D;
        for (int64_t c = 0; c < cols; ++c) {
          const float pc = ws.scores[i * kBlockN + c];
          const float* vc = v + (j0 + c) * D;
          for (int64_t d = 0; d < D; ++d) acc[d] += pc * vc[d];
        }
      }
    }
  }

  for (int64_t i = 0; i < rows; ++i) {
    const float inv = ws.row_sum[i] > 0.0f ? 1.0f / ws.row_sum[i] : 0.0f;  // no allowed key -> 0
    const float* acc = ws.acc + i * D;
    for (int64_t d = 0; d < D; ++d) out[i * D + d] = acc[d] * inv;
  }
}

template <typename V>
UNIPOSE_INLINE void attend_tile_any_dim(const Problem& p, Workspace& ws, int64_t b, int64_t h, int64_t m0) {
  if (p.head_dim == 64) {
    attend_tile<64, V>(p, ws, b, h, m0);
  } else if (p.head_dim == 128) {
    attend_tile<128, V>(p, ws, b, h, m0);
  } else {
    attend_tile<0, V>(p, ws, b, h, m0);
  }
}

using TileFn = void (*)(const Problem&, Workspace&, int64_t, int64_t, int64_t);

// The same code compiled per instruction set; the always_inline body above is re-vectorised for each target.
void tile_baseline(const Problem& p, Workspace& ws, int64_t b, int64_t h, int64_t m0) {
  attend_tile_any_dim<vec4>(p, ws, b, h, m0);
}

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define UNIPOSE_HAVE_X86_CLONES 1
__attribute__((target("avx2,fma"))) void tile_avx2(const Problem& p, Workspace& ws, int64_t b, int64_t h,
                                                   int64_t m0) {
  attend_tile_any_dim<vec8>(p, ws, b, h, m0);
}

__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,prefer-vector-width=512"))) void tile_avx512(
    const Problem& p, Workspace& ws, int64_t b, int64_t h, int64_t m0) {
  attend_tile_any_dim<vec16>(p, ws, b, h, m0);
}
#endif

bool isa_supported(const std::string& isa) {
  if (isa == "baseline") return true;
#ifdef UNIPOSE_HAVE_X86_CLONES
  __builtin_cpu_init();
  if (isa == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (isa == "avx512") {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
  }
#endif
  return false;
}

std::vector<std::string> supported_isas() {
  std::vector<std::string> names;
  for (const char* isa : {"avx512", "avx2", "baseline"}) {
    if (isa_supported(isa)) names.emplace_back(isa);
  }
  return names;
}

TileFn select_tile_fn(const std::string& isa) {
  const std::string chosen = isa == "auto" ? supported_isas().front() : isa;
  if (!isa_supported(chosen)) {
    throw std::invalid_argument("received isa='" + isa + "'; expected 'auto' or one this CPU supports (" +
                                [] {
                                  std::string s;
                                  for (const auto& n : supported_isas()) s += (s.empty() ? "" : ", ") + n;
                                  return s;
                                }() +
                                "). Pass isa='auto'.");
  }
#ifdef UNIPOSE_HAVE_X86_CLONES
  if (chosen == "avx512") return tile_avx512;
  if (chosen == "avx2") return tile_avx2;
#endif
  return tile_baseline;
}

py::buffer_info float_tensor(const py::buffer& buffer, const char* name, bool writable) {
  py::buffer_info info = buffer.request(writable);
  if (info.format != py::format_descriptor<float>::format() || info.ndim != 4) {
    throw std::invalid_argument(std::string("received ") + name + " with format '" + info.format + "' and " +
                                std::to_string(info.ndim) +
                                " dimensions; expected a 4-D float32 array. Pass tensor.float().numpy().");
  }
  py::ssize_t expected_stride = sizeof(float);
  for (int axis = 3; axis >= 0; --axis) {
    if (info.shape[axis] > 1 && info.strides[axis] != expected_stride) {
      throw std::invalid_argument(std::string("received a non-contiguous ") + name +
                                  "; expected a C-contiguous array. Call .contiguous() first.");
    }
    expected_stride *= info.shape[axis];
  }
  return info;
}

const int32_t* int_bounds(const py::buffer& buffer, const char* name, py::ssize_t batch) {
  py::buffer_info info = buffer.request();
  if (info.format != py::format_descriptor<int32_t>::format() || info.ndim != 1 || info.shape[0] != batch ||
      (batch > 1 && info.strides[0] != sizeof(int32_t))) {
    throw std::invalid_argument(std::string("received ") + name + " with format '" + info.format +
                                "'; expected a contiguous int32 array of shape (" + std::to_string(batch) +
                                ",). Pass tensor.to(torch.int32).contiguous().numpy().");
  }
  return static_cast<const int32_t*>(info.ptr);
}

void forward(const py::buffer& q, const py::buffer& k, const py::buffer& v, const py::buffer& block_start,
             const py::buffer& block_end, const py::buffer& key_start, const py::buffer& query_offset,
             const py::buffer& out, float scale, int num_threads, const std::string& isa) {
  const py::buffer_info qi = float_tensor(q, "q", false);
  const py::buffer_info ki = float_tensor(k, "k", false);
  const py::buffer_info vi = float_tensor(v, "v", false);
  const py::buffer_info oi = float_tensor(out, "out", true);
  const auto& qs = qi.shape;
  const auto& ks = ki.shape;
  if (ki.shape != vi.shape || oi.shape != qs || ks[0] != qs[0] || ks[3] != qs[3] || ks[1] == 0 ||
      qs[1] % ks[1] != 0) {
    throw std::invalid_argument(
        "received q [" + std::to_string(qs[0]) + "," + std::to_string(qs[1]) + "," + std::to_string(qs[2]) + "," +
        std::to_string(qs[3]) + "], k [" + std::to_string(ks[0]) + "," + std::to_string(ks[1]) + "," +
        std::to_string(ks[2]) + "," + std::to_string(ks[3]) +
        "]; expected k, v [B, Hkv, Tk, D] with Hq a multiple of Hkv and out shaped like q. Check the head split.");
  }
  if (qs[3] > kMaxHeadDim || qs[3] < 1) {
    throw std::invalid_argument("received head dimension " + std::to_string(qs[3]) + "; expected 1.." +
                                std::to_string(kMaxHeadDim) + ". Use the torch reference for larger heads.");
  }
  Problem p{static_cast<const float*>(qi.ptr), static_cast<const float*>(ki.ptr),
            static_cast<const float*>(vi.ptr), static_cast<float*>(oi.ptr),
            int_bounds(block_start, "block_start", qs[0]), int_bounds(block_end, "block_end", qs[0]),
            int_bounds(key_start, "key_start", qs[0]), int_bounds(query_offset, "query_offset", qs[0]),
            qs[0], qs[1], ks[1], qs[2], ks[2], qs[3], scale, nullptr, (ks[2] + kBlockN - 1) / kBlockN};
  const TileFn tile_fn = select_tile_fn(isa);

  const int64_t m_tiles = (p.num_queries + kBlockM - 1) / kBlockM;
  const int64_t items = p.batch * p.heads_q * m_tiles;
  if (items == 0) return;
  py::gil_scoped_release no_gil;  // pure C++ from here on: other Python threads may run
#ifdef _OPENMP
  const int threads = num_threads > 0 ? num_threads : omp_get_max_threads();
#else
  const int threads = 1;
#endif
  // Scratch allocated here, not inside the parallel region: an exception must not escape an OpenMP region.
  std::vector<std::unique_ptr<Workspace>> workspaces;
  for (int t = 0; t < threads; ++t) workspaces.emplace_back(new Workspace(p.head_dim));
  const int64_t D = p.head_dim;
  const int64_t transposed_tiles = p.batch * p.heads_kv * p.key_tiles;
  std::vector<float> k_tiles(static_cast<size_t>(transposed_tiles * D * kBlockN));
  p.k_tiles = k_tiles.data();
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static)
#endif
  for (int64_t t = 0; t < transposed_tiles; ++t) {
    const int64_t bh_kv = t / p.key_tiles;
    const int64_t j0 = (t % p.key_tiles) * kBlockN;
    const int64_t cols = std::min<int64_t>(kBlockN, p.num_keys - j0);
    const float* src = p.k + (bh_kv * p.num_keys + j0) * D;
    float* dst = k_tiles.data() + t * D * kBlockN;
    for (int64_t c = 0; c < cols; ++c) {
      for (int64_t d = 0; d < D; ++d) dst[d * kBlockN + c] = src[c * D + d];
    }
    for (int64_t d = 0; d < D; ++d) {
      for (int64_t c = cols; c < kBlockN; ++c) dst[d * kBlockN + c] = 0.0f;
    }
  }

  const int64_t bh_count = p.batch * p.heads_q;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
#endif
  for (int64_t item = 0; item < items; ++item) {
#ifdef _OPENMP
    Workspace& ws = *workspaces[omp_get_thread_num()];
#else
    Workspace& ws = *workspaces[0];
#endif
    // Last query tiles first: they see the most keys, so the tail of the schedule is made of short items.
    const int64_t m_tile = m_tiles - 1 - item / bh_count;
    const int64_t bh = item % bh_count;
    tile_fn(p, ws, bh / p.heads_q, bh % p.heads_q, m_tile * kBlockM);
  }
}

}  // namespace

PYBIND11_MODULE(_mixed_attention_cpu, m) {
  m.doc() = "Fused mixed attention on the CPU (float32, tiled online softmax, OpenMP); see mixed_attention.cpp.";
  m.def("forward", &forward, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("block_start"),
        py::arg("block_end"), py::arg("key_start"), py::arg("query_offset"), py::arg("out"), py::arg("scale"),
        py::arg("num_threads") = 0, py::arg("isa") = "auto",
        "Write attention of q over k, v under the mixed mask into out (all C-contiguous; float32 tensors, int32 "
        "bounds). num_threads 0 = OpenMP default; isa 'auto' or one of supported_isas().");
  m.def("supported_isas", &supported_isas, "Instruction sets this CPU runs, best first.");
  m.def("openmp", [] {
#ifdef _OPENMP
    return true;
#else
    return false;
#endif
  }, "Whether the extension was compiled with OpenMP.");
  m.attr("BLOCK_M") = kBlockM;
  m.attr("BLOCK_N") = kBlockN;
}
