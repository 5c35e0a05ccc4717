// Paged KV cache write and causal attention over it (vLLM PagedAttention, Kwon et al. 2023, on the
// CPU). One work item is one (query token, query head): three passes over that sequence's
// positions 0..pos, gathered block by block through its block table:
//   1. scores s_p = scale · q·k_p and their max       (AVX2 dot products of length head_dim)
//   2. w_p = exp(s_p - max), sum                      (vector exp over the score row)
//   3. out = Σ w_p v_p / sum                          (AVX2 axpy into the output row)
// Work per item: 4·(pos+1)·head_dim FLOPs over 2·(pos+1)·head_dim·4 bytes of K and V (f32 cache),
// 2·(pos+1)·head_dim·2 bytes (f16 cache) or 2·(pos+1)·(head_dim + 4) bytes (int8 cache: codes + one
// f32 scale per row, 3.8x fewer at head_dim 64). Neither the f16 nor the int8 cache is widened into
// memory: halves are converted in registers (AVX2: 8 halves -> vcvtph2ps, exact, then the same FMAs in
// the same order as the f32 path, so an f16 cache gives the f32 path's result on the rounded values,
// bit for bit when head_dim is a multiple of 8: the scalar tails may be contracted differently),
// int8 codes likewise (8 bytes -> vpmovsxbd -> vcvtdq2ps) with the row scale folded into the score (k)
// or the softmax weight (v), one multiply per row.
// Scores live in a thread_local buffer that only grows, so steady state allocates nothing.
#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "backend/cpu/kernels.h"
#include "backend/cpu/simd.h"

namespace kiln::cpu {
namespace {

struct AttentionArgs {
  const float* q;
  int64_t q_stride;
  const int32_t* token_seq;
  const int32_t* positions;
  const int32_t* block_tables;
  int64_t max_blocks_per_seq;
  const PagedKv* kv;
  int64_t num_heads;
  float scale;
  float* out;
};

// Calls visit(p, slot_row_index) for positions 0..last of a sequence, where the cache row of
// position p for kv head h is (slot * num_kv_heads + h).
template <class Visit>
inline void for_each_position(const int32_t* table, int64_t block_size, int64_t last, Visit&& visit) {
  for (int64_t start = 0, b = 0; start <= last; start += block_size, ++b) {
    const int64_t block = table[b];
    const int64_t count = std::min(block_size, last + 1 - start);
    for (int64_t o = 0; o < count; ++o) visit(start + o, block * block_size + o);
  }
}

KILN_AVX2 float dot_avx2(const float* a, const float* b, int64_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
  }
  for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
  float sum = simd::hsum(_mm256_add_ps(acc0, acc1));
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

// y += alpha · x
KILN_AVX2 void axpy_avx2(float alpha, const float* x, float* y, int64_t n) {
  const __m256 a = _mm256_set1_ps(alpha);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(a, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += alpha * x[i];
}

// s[i] = exp(s[i] - max); returns the sum.
KILN_AVX2 float exp_shift_sum_avx2(float* s, int64_t n, float max) {
  const __m256 m = _mm256_set1_ps(max);
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 e = simd::exp8(_mm256_sub_ps(_mm256_loadu_ps(s + i), m));
    _mm256_storeu_ps(s + i, e);
    acc = _mm256_add_ps(acc, e);
  }
  float sum = simd::hsum(acc);
  for (; i < n; ++i) {
    s[i] = std::exp(s[i] - max);
    sum += s[i];
  }
  return sum;
}

float dot_scalar(const float* a, const float* b, int64_t n) {
  float sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

void axpy_scalar(float alpha, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

float exp_shift_sum_scalar(float* s, int64_t n, float max) {
  float sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    s[i] = std::exp(s[i] - max);
    sum += s[i];
  }
  return sum;
}

// 8 int8 codes widened to 8 f32 lanes.
KILN_AVX2 inline __m256 widen8_i8(__m128i bytes) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes)); }

// Σ a[i] · codes[i]: the q·k dot over an int8 key row (its scale is applied by the caller).
KILN_AVX2 float dot_i8_avx2(const float* a, const int8_t* codes, int64_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + i));
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), widen8_i8(bytes), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), widen8_i8(_mm_unpackhi_epi64(bytes, bytes)), acc1);
  }
  for (; i + 8 <= n; i += 8) {
    const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes + i));
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), widen8_i8(bytes), acc0);
  }
  float sum = simd::hsum(_mm256_add_ps(acc0, acc1));
  for (; i < n; ++i) sum += a[i] * static_cast<float>(codes[i]);
  return sum;
}

// y += alpha · codes: the p·v accumulation over an int8 value row (alpha carries its scale).
KILN_AVX2 void axpy_i8_avx2(float alpha, const int8_t* codes, float* y, int64_t n) {
  const __m256 a = _mm256_set1_ps(alpha);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + i));
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(a, widen8_i8(bytes), _mm256_loadu_ps(y + i)));
    _mm256_storeu_ps(y + i + 8,
                     _mm256_fmadd_ps(a, widen8_i8(_mm_unpackhi_epi64(bytes, bytes)), _mm256_loadu_ps(y + i + 8)));
  }
  for (; i + 8 <= n; i += 8) {
    const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes + i));
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(a, widen8_i8(bytes), _mm256_loadu_ps(y + i)));
  }
  for (; i < n; ++i) y[i] += alpha * static_cast<float>(codes[i]);
}

// Σ a[i] · half[i]: the q·k dot over an f16 key row; the f32 dot's loop structure, so the sum is the
// one dot_avx2 forms over the widened row.
KILN_AVX2 float dot_f16_avx2(const float* a, const uint16_t* h, int64_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), simd::load8_f16(h + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), simd::load8_f16(h + i + 8), acc1);
  }
  for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), simd::load8_f16(h + i), acc0);
  float sum = simd::hsum(_mm256_add_ps(acc0, acc1));
  for (; i < n; ++i) sum += a[i] * _cvtsh_ss(h[i]);
  return sum;
}

// y += alpha · half: the p·v accumulation over an f16 value row.
KILN_AVX2 void axpy_f16_avx2(float alpha, const uint16_t* h, float* y, int64_t n) {
  const __m256 a = _mm256_set1_ps(alpha);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(a, simd::load8_f16(h + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += alpha * _cvtsh_ss(h[i]);
}

// out[i] = x[i] as a half, round to nearest even (vcvtps2ph; the tail through f32_to_f16, same bits).
KILN_AVX2 void store_f16_avx2(const float* x, uint16_t* out, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  for (; i < n; ++i) out[i] = f32_to_f16(x[i]);
}

float dot_f16_scalar(const float* a, const uint16_t* h, int64_t n) {
  float sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += a[i] * f16_to_f32(h[i]);
  return sum;
}

void axpy_f16_scalar(float alpha, const uint16_t* h, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * f16_to_f32(h[i]);
}

void store_f16_scalar(const float* x, uint16_t* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = f32_to_f16(x[i]);
}

float dot_i8_scalar(const float* a, const int8_t* codes, int64_t n) {
  float sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += a[i] * static_cast<float>(codes[i]);
  return sum;
}

void axpy_i8_scalar(float alpha, const int8_t* codes, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * static_cast<float>(codes[i]);
}

struct AvxOps {
  KILN_AVX2 static float dot(const float* a, const float* b, int64_t n) { return dot_avx2(a, b, n); }
  KILN_AVX2 static void axpy(float alpha, const float* x, float* y, int64_t n) { axpy_avx2(alpha, x, y, n); }
  KILN_AVX2 static float exp_shift_sum(float* s, int64_t n, float max) { return exp_shift_sum_avx2(s, n, max); }
  KILN_AVX2 static float dot_i8(const float* a, const int8_t* c, int64_t n) { return dot_i8_avx2(a, c, n); }
  KILN_AVX2 static void axpy_i8(float alpha, const int8_t* c, float* y, int64_t n) { axpy_i8_avx2(alpha, c, y, n); }
  KILN_AVX2 static float dot_f16(const float* a, const uint16_t* h, int64_t n) { return dot_f16_avx2(a, h, n); }
  KILN_AVX2 static void axpy_f16(float alpha, const uint16_t* h, float* y, int64_t n) { axpy_f16_avx2(alpha, h, y, n); }
};
struct ScalarOps {
  static float dot(const float* a, const float* b, int64_t n) { return dot_scalar(a, b, n); }
  static void axpy(float alpha, const float* x, float* y, int64_t n) { axpy_scalar(alpha, x, y, n); }
  static float exp_shift_sum(float* s, int64_t n, float max) { return exp_shift_sum_scalar(s, n, max); }
  static float dot_i8(const float* a, const int8_t* c, int64_t n) { return dot_i8_scalar(a, c, n); }
  static void axpy_i8(float alpha, const int8_t* c, float* y, int64_t n) { axpy_i8_scalar(alpha, c, y, n); }
  static float dot_f16(const float* a, const uint16_t* h, int64_t n) { return dot_f16_scalar(a, h, n); }
  static void axpy_f16(float alpha, const uint16_t* h, float* y, int64_t n) { axpy_f16_scalar(alpha, h, y, n); }
};

// How attention reads one cache row (slot, kv head): its score against q and its weighted sum into out.
// F32: the row itself. F16: the row's halves, widened in registers. Int8: scale[row] * codes[row, :],
// so score = (scale · k_scale) · Σ q·code and out += (w · v_scale) · code.
template <class Ops>
struct F32Rows {
  static float score(const PagedKv& kv, float scale, const float* q, int64_t row) {
    return scale * Ops::dot(q, kv.k_cache + row * kv.head_dim, kv.head_dim);
  }
  static void accumulate(const PagedKv& kv, float w, int64_t row, float* out) {
    Ops::axpy(w, kv.v_cache + row * kv.head_dim, out, kv.head_dim);
  }
};
template <class Ops>
struct F16Rows {
  static float score(const PagedKv& kv, float scale, const float* q, int64_t row) {
    return scale * Ops::dot_f16(q, kv.k_f16 + row * kv.head_dim, kv.head_dim);
  }
  static void accumulate(const PagedKv& kv, float w, int64_t row, float* out) {
    Ops::axpy_f16(w, kv.v_f16 + row * kv.head_dim, out, kv.head_dim);
  }
};
template <class Ops>
struct Int8Rows {
  static float score(const PagedKv& kv, float scale, const float* q, int64_t row) {
    return (scale * kv.k_scales[row]) * Ops::dot_i8(q, kv.k_codes + row * kv.head_dim, kv.head_dim);
  }
  static void accumulate(const PagedKv& kv, float w, int64_t row, float* out) {
    Ops::axpy_i8(w * kv.v_scales[row], kv.v_codes + row * kv.head_dim, out, kv.head_dim);
  }
};

// Items [begin, end) of the flattened (token, head) grid: scores, softmax, weighted sum of values.
template <class Ops, template <class> class Rows>
void attend_items(const AttentionArgs& a, int64_t begin, int64_t end) {
  const PagedKv& kv = *a.kv;
  const int64_t hd = kv.head_dim;
  const int64_t group = a.num_heads / kv.num_kv_heads;
  thread_local std::vector<float> scores;  // [pos + 1], grows only
  for (int64_t item = begin; item < end; ++item) {
    const int64_t m = item / a.num_heads;
    const int64_t h = item % a.num_heads;
    const int64_t kv_head = h / group;
    const int64_t last = a.positions[m];
    const int32_t* table = a.block_tables + a.token_seq[m] * a.max_blocks_per_seq;
    const float* q = a.q + m * a.q_stride + h * hd;
    float* out = a.out + (m * a.num_heads + h) * hd;
    if (static_cast<int64_t>(scores.size()) < last + 1) scores.resize(last + 1);
    float* s = scores.data();

    float max = -std::numeric_limits<float>::infinity();
    for_each_position(table, kv.block_size, last, [&](int64_t p, int64_t slot) {
      s[p] = Rows<Ops>::score(kv, a.scale, q, slot * kv.num_kv_heads + kv_head);
      max = std::max(max, s[p]);
    });
    const float inv_sum = 1.0f / Ops::exp_shift_sum(s, last + 1, max);

    std::memset(out, 0, hd * sizeof(float));
    for_each_position(table, kv.block_size, last, [&](int64_t p, int64_t slot) {
      Rows<Ops>::accumulate(kv, s[p] * inv_sum, slot * kv.num_kv_heads + kv_head, out);
    });
  }
}

// All items on the pool, on the active path.
template <template <class> class Rows>
void attend_all(const AttentionArgs& args, int64_t items, int64_t min_chunk, ThreadPool& pool) {
  if (using_avx2()) {
    pool.parallel_for(items, min_chunk, [&](int64_t b, int64_t e) { attend_items<AvxOps, Rows>(args, b, e); });
  } else {
    pool.parallel_for(items, min_chunk, [&](int64_t b, int64_t e) { attend_items<ScalarOps, Rows>(args, b, e); });
  }
}

}  // namespace

float quantize_kv_row(const float* x, int64_t n, int8_t* codes) {
  float amax = 0;
  for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float scale = amax / 127.0f;
  // A zero row, or one so small that 1 / scale would overflow, stores zeros (error <= 127·FLT_MIN).
  if (!(scale >= std::numeric_limits<float>::min())) {
    std::memset(codes, 0, static_cast<size_t>(n));
    return 0.0f;
  }
  const float inv = 127.0f / amax;
  for (int64_t i = 0; i < n; ++i) {
    const float c = std::nearbyint(x[i] * inv);  // round half to even; |c| <= 127 up to one rounding of inv
    codes[i] = static_cast<int8_t>(std::min(127.0f, std::max(-127.0f, c)));
  }
  return scale;
}

void kv_cache_write(const float* k, const float* v, int64_t M, int64_t row_stride,
                    const int32_t* slot_mapping, const PagedKv& kv) {
  const int64_t row = kv.num_kv_heads * kv.head_dim;
  assert(row_stride >= row);
  void (*const store_f16)(const float*, uint16_t*, int64_t) = using_avx2() ? store_f16_avx2 : store_f16_scalar;
  for (int64_t m = 0; m < M; ++m) {
    const int64_t slot = slot_mapping[m];
    if (slot < 0) continue;  // padding token (vLLM's convention): nothing to store
    assert(slot < kv.num_blocks * kv.block_size);
    if (kv.dtype() == KvDtype::F16) {  // a slot's heads are one contiguous row of halves
      store_f16(k + m * row_stride, kv.k_f16 + slot * row, row);
      store_f16(v + m * row_stride, kv.v_f16 + slot * row, row);
      continue;
    }
    if (kv.is_int8()) {
      for (int64_t h = 0; h < kv.num_kv_heads; ++h) {
        const int64_t r = slot * kv.num_kv_heads + h;  // cache row of (slot, head)
        kv.k_scales[r] = quantize_kv_row(k + m * row_stride + h * kv.head_dim, kv.head_dim, kv.k_codes + r * kv.head_dim);
        kv.v_scales[r] = quantize_kv_row(v + m * row_stride + h * kv.head_dim, kv.head_dim, kv.v_codes + r * kv.head_dim);
      }
      continue;
    }
    std::memcpy(kv.k_cache + slot * row, k + m * row_stride, row * sizeof(float));
    std::memcpy(kv.v_cache + slot * row, v + m * row_stride, row * sizeof(float));
  }
}

void paged_attention(const float* q, int64_t M, int64_t q_stride, const int32_t* token_seq,
                     const int32_t* positions, const int32_t* block_tables,
                     int64_t max_blocks_per_seq, const PagedKv& kv, int64_t num_heads, float scale,
                     float* out, ThreadPool& pool) {
  assert(kv.num_kv_heads > 0 && num_heads % kv.num_kv_heads == 0);
  assert(q_stride >= num_heads * kv.head_dim);
  if (M <= 0) return;
  const AttentionArgs args{q,  q_stride,  token_seq, positions, block_tables, max_blocks_per_seq,
                           &kv, num_heads, scale,     out};
  // Chunk so that each carries ~16K multiply-adds: short contexts (the first decode steps) run on
  // fewer threads instead of paying dispatch for microseconds of work.
  int64_t total_positions = 0;
  for (int64_t m = 0; m < M; ++m) {
    assert(positions[m] >= 0 && positions[m] / kv.block_size < max_blocks_per_seq);
    total_positions += positions[m] + 1;
  }
  const int64_t items = M * num_heads;
  const int64_t macs_per_item = std::max<int64_t>(1, 2 * total_positions * kv.head_dim / M);
  const int64_t min_chunk = std::max<int64_t>(1, 16384 / macs_per_item);
  switch (kv.dtype()) {
    case KvDtype::F32: attend_all<F32Rows>(args, items, min_chunk, pool); break;
    case KvDtype::F16: attend_all<F16Rows>(args, items, min_chunk, pool); break;
    case KvDtype::Int8: attend_all<Int8Rows>(args, items, min_chunk, pool); break;
  }
}

}  // namespace kiln::cpu
