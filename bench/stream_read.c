// Streaming read bandwidth: the ceiling for memory-bound decode, where every weight byte is read
// once per token. bench/cpu_e2e.py compiles this and runs it in the same session as the model runs.
//
//   cc -O2 -pthread bench/stream_read.c -o stream_read
//   ./stream_read MIB THREADS REPS STREAMS PREFETCH_BYTES [LOAD_BITS]   e.g. ./stream_read 1024 2 5 8 1024 512
//   prints one JSON line: {"mib", "threads", "streams", "prefetch_bytes", "load_bits", "gbps_best", "gbps_median", "gbps"}
// LOAD_BITS is 256 (AVX2 loads, the default) or 512 (AVX-512 loads; refused where the CPU has none).
//
// Each thread reads its contiguous 1/THREADS of the buffer as STREAMS equal sub-ranges walked in
// lockstep (a GEMV walks several weight rows at once the same way), optionally with a software
// prefetch PREFETCH_BYTES ahead, and adds every 32-byte vector into a per-stream accumulator (the
// adds never limit). Why several streams: on the KVM guest this was written on, one sequential
// stream per core reached ~7 GB/s while 8 interleaved streams reached ~12 GB/s: the hardware
// prefetchers track several streams, and one stream leaves memory-level parallelism unused. A
// single "sum an array" loop therefore understates the bandwidth a tuned kernel can get, and a
// ceiling must be the best over a few read patterns. GB/s is 1e9 bytes per second.
//
// The default 1 GiB buffer is larger than the reported last-level cache (lscpu says 480 MiB on the
// guest), so the figure is DRAM bandwidth.
#include <immintrin.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { kMaxThreads = 64, kMaxStreams = 16, kMaxReps = 100, kVector = 8 /* floats per __m256 */ };

typedef struct {
  const float* begin;   // [count] floats
  int64_t count;
  int streams;
  int64_t prefetch_floats;
  pthread_barrier_t* start;
  int load_bits;        // 256 or 512
  float sum;            // keeps the reads observable
  double t_begin, t_end;  // this thread's read, timed by itself
} Slice;

__attribute__((target("avx2"))) static float sum_streams(const float* p, int64_t n, int streams,
                                                           int64_t prefetch_floats) {
  __m256 acc[kMaxStreams];
  for (int s = 0; s < kMaxStreams; ++s) acc[s] = _mm256_setzero_ps();
  const int64_t per = n / streams / (2 * kVector) * (2 * kVector);  // floats per stream
  for (int64_t i = 0; i < per; i += 2 * kVector) {
    for (int s = 0; s < streams; ++s) {
      const float* q = p + s * per + i;
      if (prefetch_floats) _mm_prefetch((const char*)(q + prefetch_floats), _MM_HINT_T0);
      acc[s] = _mm256_add_ps(acc[s], _mm256_add_ps(_mm256_loadu_ps(q), _mm256_loadu_ps(q + kVector)));
    }
  }
  __m256 total = acc[0];
  for (int s = 1; s < kMaxStreams; ++s) total = _mm256_add_ps(total, acc[s]);
  float lanes[kVector];
  _mm256_storeu_ps(lanes, total);
  float sum = 0;
  for (int i = 0; i < kVector; ++i) sum += lanes[i];
  return sum;
}

// The same walk with 64-byte AVX-512 loads (two 32-byte vectors per step become one).
__attribute__((target("avx512f"))) static float sum_streams512(const float* p, int64_t n, int streams,
                                                               int64_t prefetch_floats) {
  __m512 acc[kMaxStreams];
  for (int s = 0; s < kMaxStreams; ++s) acc[s] = _mm512_setzero_ps();
  const int64_t per = n / streams / (2 * kVector) * (2 * kVector);
  for (int64_t i = 0; i < per; i += 2 * kVector) {
    for (int s = 0; s < streams; ++s) {
      const float* q = p + s * per + i;
      if (prefetch_floats) _mm_prefetch((const char*)(q + prefetch_floats), _MM_HINT_T0);
      acc[s] = _mm512_add_ps(acc[s], _mm512_loadu_ps(q));
    }
  }
  __m512 total = acc[0];
  for (int s = 1; s < kMaxStreams; ++s) total = _mm512_add_ps(total, acc[s]);
  return _mm512_reduce_add_ps(total);
}

static double now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// Each thread times itself: on a loaded machine the main thread can be descheduled right after the
// barrier, and a clock read there would miss the reads entirely.
static void* worker(void* arg) {
  Slice* s = (Slice*)arg;
  pthread_barrier_wait(s->start);
  s->t_begin = now_seconds();
  s->sum = s->load_bits == 512 ? sum_streams512(s->begin, s->count, s->streams, s->prefetch_floats)
                                : sum_streams(s->begin, s->count, s->streams, s->prefetch_floats);
  s->t_end = now_seconds();
  return NULL;
}

static int compare_double(const void* a, const void* b) {
  const double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

int main(int argc, char** argv) {
  const int64_t mib = argc > 1 ? atoll(argv[1]) : 1024;
  const int threads = argc > 2 ? atoi(argv[2]) : 1;
  const int reps = argc > 3 ? atoi(argv[3]) : 5;
  const int streams = argc > 4 ? atoi(argv[4]) : 8;
  const int64_t prefetch_bytes = argc > 5 ? atoll(argv[5]) : 1024;
  const int load_bits = argc > 6 ? atoi(argv[6]) : 256;
  if (mib <= 0 || threads < 1 || threads > kMaxThreads || reps < 1 || reps > kMaxReps || streams < 1 ||
      streams > kMaxStreams || prefetch_bytes < 0 || prefetch_bytes % 64 != 0 || (load_bits != 256 && load_bits != 512)) {
    fprintf(stderr, "stream_read: usage: stream_read MIB THREADS(1..%d) REPS(1..%d) STREAMS(1..%d) "
                    "PREFETCH_BYTES(multiple of 64) [LOAD_BITS(256|512)]\n", kMaxThreads, kMaxReps, kMaxStreams);
    return 2;
  }
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx2") || (load_bits == 512 && !__builtin_cpu_supports("avx512f"))) {
    fprintf(stderr, "stream_read: this CPU has no %s\n", load_bits == 512 ? "AVX-512F" : "AVX2");
    return 2;
  }
  const int64_t n = mib * (1 << 20) / (int64_t)sizeof(float);
  float* data = (float*)aligned_alloc(64, (size_t)n * sizeof(float));
  if (!data) {
    fprintf(stderr, "stream_read: cannot allocate %lld MiB\n", (long long)mib);
    return 1;
  }
  for (int64_t i = 0; i < n; ++i) data[i] = 1.0f;  // fault every page in before timing

  double gbps[kMaxReps];
  float checksum = 0;
  const int64_t per_thread = n / threads;
  for (int r = 0; r < reps; ++r) {
    pthread_t tid[kMaxThreads];
    Slice slice[kMaxThreads];
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, (unsigned)threads);
    for (int t = 0; t < threads; ++t) {
      slice[t] = (Slice){data + t * per_thread, per_thread, streams, prefetch_bytes / 4, &start, load_bits, 0, 0, 0};
      pthread_create(&tid[t], NULL, worker, &slice[t]);
    }
    for (int t = 0; t < threads; ++t) pthread_join(tid[t], NULL);
    pthread_barrier_destroy(&start);
    double first_begin = slice[0].t_begin, last_end = slice[0].t_end;
    int64_t bytes = 0;
    for (int t = 0; t < threads; ++t) {
      if (slice[t].t_begin < first_begin) first_begin = slice[t].t_begin;
      if (slice[t].t_end > last_end) last_end = slice[t].t_end;
      checksum += slice[t].sum;
      bytes += per_thread / streams / (2 * kVector) * (2 * kVector) * streams * (int64_t)sizeof(float);
    }
    gbps[r] = (double)bytes / (last_end - first_begin) / 1e9;
  }
  double sorted[kMaxReps];
  memcpy(sorted, gbps, (size_t)reps * sizeof(double));
  qsort(sorted, (size_t)reps, sizeof(double), compare_double);
  printf("{\"mib\": %lld, \"threads\": %d, \"streams\": %d, \"prefetch_bytes\": %lld, \"load_bits\": %d, "
         "\"gbps_best\": %.3f, \"gbps_median\": %.3f, \"gbps\": [", (long long)mib, threads, streams,
         (long long)prefetch_bytes, load_bits,
         sorted[reps - 1], sorted[reps / 2]);
  for (int r = 0; r < reps; ++r) printf("%s%.3f", r ? ", " : "", gbps[r]);
  printf("], \"sum\": %.1f}\n", (double)checksum);
  free(data);
  return 0;
}
