// CPU kernel benchmarks: matmul GEMV (decode, M=1) at the 110M-model shapes and one prefill case,
// against the machine's streaming read bandwidth (the ceiling a memory-bound GEMV can reach).
//   ./cpu_kernels_bench --benchmark_counters_tabular=true
// bytes_per_second for matmul counts weight bytes only (N·K·sizeof(w)): that is what GEMV streams.
#include <cstdint>
#include <random>
#include <vector>

#include <immintrin.h>

#include <benchmark/benchmark.h>

#include "backend/cpu/kernels.h"
#include "backend/cpu/thread_pool.h"

namespace kiln::cpu {
namespace {

std::vector<uint8_t> random_weights(int64_t count, DType dtype) {
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<uint8_t> bytes(count * dtype_size(dtype));
  for (int64_t i = 0; i < count; ++i) {
    const float v = dist(rng);
    if (dtype == DType::F32) {
      reinterpret_cast<float*>(bytes.data())[i] = v;
    } else {
      reinterpret_cast<uint16_t*>(bytes.data())[i] = dtype == DType::F16 ? f32_to_f16(v) : f32_to_bf16(v);
    }
  }
  return bytes;
}

// Args: M, K, N, dtype, threads.
void BM_Matmul(benchmark::State& state) {
  const int64_t M = state.range(0), K = state.range(1), N = state.range(2);
  const auto dtype = static_cast<DType>(state.range(3));
  ThreadPool pool(static_cast<int>(state.range(4)));
  // Several copies of the weights, cycled, so that a small matrix (768x768 F16 = 1.2 MB) is not
  // served from the 480 MB L3 this machine reports: ~256 MB of weights in rotation.
  const int64_t weight_bytes = N * K * static_cast<int64_t>(dtype_size(dtype));
  const int64_t copies = std::max<int64_t>(1, (256 << 20) / weight_bytes);
  std::vector<std::vector<uint8_t>> weights;
  weights.push_back(random_weights(N * K, dtype));
  for (int64_t i = 1; i < copies; ++i) weights.push_back(weights[0]);
  std::vector<float> x(M * K, 0.5f), y(M * N);
  int64_t next = 0;
  for (auto _ : state) {
    matmul(x.data(), M, K, weights[next].data(), dtype, N, nullptr, y.data(), N, pool);
    benchmark::DoNotOptimize(y.data());
    next = (next + 1) % copies;
  }
  state.SetBytesProcessed(state.iterations() * weight_bytes);
  state.counters["GFLOPS"] = benchmark::Counter(2.0 * M * N * K * state.iterations(),
                                                benchmark::Counter::kIsRate, benchmark::Counter::kIs1000);
  state.SetLabel(std::string(dtype_name(dtype)) + (using_avx2() ? " avx2" : " scalar"));
}

void GemvArgs(benchmark::internal::Benchmark* b) {
  // 110M model (stories110M / llama2.c): dim 768, hidden 2048. Shapes: wo / q,k,v (768x768),
  // fused qkv (2304x768), fused gate+up (4096x768), down (768x2048).
  const std::vector<std::pair<int64_t, int64_t>> kn = {{768, 768}, {768, 2304}, {768, 4096}, {2048, 768}};
  for (int64_t dtype : {0, 1, 2}) {
    for (auto [K, N] : kn) {
      for (int64_t threads : {1, 2}) b->Args({1, K, N, dtype, threads});
    }
  }
}
BENCHMARK(BM_Matmul)->Apply(GemvArgs)->ArgNames({"M", "K", "N", "dtype", "threads"})->UseRealTime();
// Prefill: 64 tokens through the fused gate+up projection.
BENCHMARK(BM_Matmul)
    ->Args({64, 768, 4096, 0, 2})
    ->Args({64, 768, 4096, 1, 1})
    ->Args({64, 768, 4096, 1, 2})
    ->ArgNames({"M", "K", "N", "dtype", "threads"})
    ->UseRealTime();

// The ceiling: sum of a 256 MB f32 array (streaming reads, AVX2, 4 accumulators so the adds never
// limit), split over 1 or 2 threads.
__attribute__((target("avx2"))) float sum_avx2(const float* p, int64_t n) {
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  for (int64_t i = 0; i + 32 <= n; i += 32)
    for (int u = 0; u < 4; ++u) acc[u] = _mm256_add_ps(acc[u], _mm256_loadu_ps(p + i + 8 * u));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
  float total = 0;
  for (float v : lanes) total += v;
  return total;
}

void BM_StreamingReadBandwidth(benchmark::State& state) {
  const int64_t n = (256 << 20) / sizeof(float);
  std::vector<float> data(n, 1.0f);
  ThreadPool pool(static_cast<int>(state.range(0)));
  std::vector<double> partial(64, 0.0);  // one slot per 1M-float chunk: chunks are 1M-aligned
  for (auto _ : state) {
    pool.parallel_for(n, 1 << 20, [&](int64_t begin, int64_t end) {
      partial[(begin >> 20) % 64] += sum_avx2(data.data() + begin, end - begin);
    });
    benchmark::DoNotOptimize(partial.data());
  }
  state.SetBytesProcessed(state.iterations() * n * static_cast<int64_t>(sizeof(float)));
}
BENCHMARK(BM_StreamingReadBandwidth)->Arg(1)->Arg(2)->ArgNames({"threads"})->UseRealTime();

}  // namespace
}  // namespace kiln::cpu

BENCHMARK_MAIN();
