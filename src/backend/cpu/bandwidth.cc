// probe_read_bandwidth (bandwidth.h): a streaming-read loop and a GEMV over one buffer.
#include "backend/cpu/bandwidth.h"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <vector>

#include "backend/cpu/isa.h"
#include "backend/cpu/kernels.h"
#include "backend/cpu/simd.h"

namespace kiln::cpu {
namespace {

constexpr int64_t kPrefetchBytes = 2048;  // as the matmul kernels (matmul_avx512.cc)

KILN_AVX512 float sum_avx512(const float* p, int64_t n) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    _mm_prefetch(reinterpret_cast<const char*>(p + i) + kPrefetchBytes, _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(p + i) + kPrefetchBytes + 64, _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(p + i) + kPrefetchBytes + 128, _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(p + i) + kPrefetchBytes + 192, _MM_HINT_T0);
    a0 = _mm512_add_ps(a0, _mm512_loadu_ps(p + i));
    a1 = _mm512_add_ps(a1, _mm512_loadu_ps(p + i + 16));
    a2 = _mm512_add_ps(a2, _mm512_loadu_ps(p + i + 32));
    a3 = _mm512_add_ps(a3, _mm512_loadu_ps(p + i + 48));
  }
  float s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
  for (; i < n; ++i) s += p[i];
  return s;
}

KILN_AVX2 float sum_avx2(const float* p, int64_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    _mm_prefetch(reinterpret_cast<const char*>(p + i) + kPrefetchBytes, _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(p + i) + kPrefetchBytes + 64, _MM_HINT_T0);
    a0 = _mm256_add_ps(a0, _mm256_loadu_ps(p + i));
    a1 = _mm256_add_ps(a1, _mm256_loadu_ps(p + i + 8));
    a2 = _mm256_add_ps(a2, _mm256_loadu_ps(p + i + 16));
    a3 = _mm256_add_ps(a3, _mm256_loadu_ps(p + i + 24));
  }
  float s = simd::hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  for (; i < n; ++i) s += p[i];
  return s;
}

float sum_scalar(const float* p, int64_t n) {
  float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += p[i];
    s1 += p[i + 1];
    s2 += p[i + 2];
    s3 += p[i + 3];
  }
  for (; i < n; ++i) s0 += p[i];
  return (s0 + s1) + (s2 + s3);
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

BandwidthProbe probe_read_bandwidth(ThreadPool& pool, int64_t bytes, int reps) {
  constexpr int64_t kK = 4096;  // GEMV row length (f32): 16 KiB rows
  const int64_t rows = std::max<int64_t>(1, bytes / (kK * 4) / 16 * 16);
  const int64_t n = rows * kK;
  std::vector<float> data(n, 1.0f);  // touched here, so no page faults inside the timed passes
  const Isa isa = active_isa();
  BandwidthProbe probe;
  std::atomic<float> sink{0};
  const int64_t threads = pool.num_threads();
  const int64_t slice = (n / threads + 4095) / 4096 * 4096;
  for (int rep = 0; rep < reps; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    pool.parallel_for(threads, 1, [&](int64_t t0_, int64_t t1_) {
      for (int64_t t = t0_; t < t1_; ++t) {
        const int64_t begin = std::min(n, t * slice), count = std::min(n, begin + slice) - begin;
        const float s = isa == Isa::kAvx512 ? sum_avx512(data.data() + begin, count)
                        : isa == Isa::kAvx2 ? sum_avx2(data.data() + begin, count)
                                            : sum_scalar(data.data() + begin, count);
        sink.store(s, std::memory_order_relaxed);
      }
    });
    probe.stream_bytes_per_second = std::max(probe.stream_bytes_per_second, 4.0 * static_cast<double>(n) / seconds_since(t0));
  }
  std::vector<float> x(kK, 1.0f), y(rows);
  for (int rep = 0; rep < reps; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    matmul(x.data(), 1, kK, data.data(), DType::F32, rows, nullptr, y.data(), rows, pool);
    probe.gemv_bytes_per_second = std::max(probe.gemv_bytes_per_second, 4.0 * static_cast<double>(n) / seconds_since(t0));
  }
  return probe;
}

}  // namespace kiln::cpu
