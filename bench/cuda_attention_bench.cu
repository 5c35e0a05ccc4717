// Paged attention on the GPU at Llama-2-7B layer shapes (32 heads, 32 KV heads, head_dim 128,
// f16, block size 16), one layer:
//   decode: batch 1/8/64 at contexts 512/4096, one query per sequence: GB/s of K+V read
//           (2 · batch · context · 32 · 128 · 2 bytes) over the median time;
//   prefill: one prompt of 512/2048 tokens (causal): TFLOP/s of 4 · 32 · 128 · Σ(pos + 1) FLOPs.
// Times are medians of 20 event-timed launches after 3 warm-up launches. The cache holds random
// values (never zeros) in shuffled blocks. Prints a table and one JSON line.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/kernels.h"

namespace {

constexpr int kHeads = 32, kKvHeads = 32, kHeadDim = 128, kBlockSize = 16;

#define CHECK_CUDA(expr)                                                                         \
  do {                                                                                           \
    cudaError_t e_ = (expr);                                                                     \
    if (e_ != cudaSuccess) {                                                                     \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(e_)); \
      std::exit(1);                                                                              \
    }                                                                                            \
  } while (0)

__global__ void fill_random(__half* x, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    uint32_t h = uint32_t(i) * 2654435761u ^ seed;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    x[i] = __float2half((h & 0xffff) / 32768.f - 1.f + 1e-3f);
  }
}

struct Result {
  std::string name;
  double ms;
  double gbs;     // decode: K/V bytes read per second
  double tflops;  // prefill
};

// One step: `seqs` sequences of `context` positions; queries are the last `queries_per_seq`
// positions of each sequence.
Result run(const std::string& name, int seqs, int context, int queries_per_seq) {
  const int blocks_per_seq = (context + kBlockSize - 1) / kBlockSize;
  const int64_t num_blocks = int64_t(seqs) * blocks_per_seq;
  const size_t cache_elems = size_t(num_blocks) * kBlockSize * kKvHeads * kHeadDim;
  const int M = seqs * queries_per_seq;
  const int64_t q_ld = 3 * kHeads * kHeadDim;  // q inside a fused qkv row
  void *k_cache, *v_cache, *q, *out, *workspace;
  int32_t *token_seq, *positions, *tables;
  CHECK_CUDA(cudaMalloc(&k_cache, cache_elems * 2));
  CHECK_CUDA(cudaMalloc(&v_cache, cache_elems * 2));
  CHECK_CUDA(cudaMalloc(&q, size_t(M) * q_ld * 2));
  CHECK_CUDA(cudaMalloc(&out, size_t(M) * kHeads * kHeadDim * 2));
  const size_t ws_bytes = kiln::cuda::attention_workspace_bytes(M, kHeads, kHeadDim, context);
  CHECK_CUDA(cudaMalloc(&workspace, std::max<size_t>(ws_bytes, 16)));
  fill_random<<<1024, 256>>>(static_cast<__half*>(k_cache), cache_elems, 1);
  fill_random<<<1024, 256>>>(static_cast<__half*>(v_cache), cache_elems, 2);
  fill_random<<<1024, 256>>>(static_cast<__half*>(q), size_t(M) * q_ld, 3);

  std::vector<int32_t> perm(num_blocks), seq_h, pos_h;
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), std::mt19937(5));
  double flops = 0;
  for (int s = 0; s < seqs; ++s)
    for (int p = context - queries_per_seq; p < context; ++p) {
      seq_h.push_back(s);
      pos_h.push_back(p);
      flops += 4.0 * kHeads * kHeadDim * (p + 1);
    }
  CHECK_CUDA(cudaMalloc(&token_seq, M * 4));
  CHECK_CUDA(cudaMalloc(&positions, M * 4));
  CHECK_CUDA(cudaMalloc(&tables, num_blocks * 4));
  CHECK_CUDA(cudaMemcpy(token_seq, seq_h.data(), M * 4, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(positions, pos_h.data(), M * 4, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(tables, perm.data(), num_blocks * 4, cudaMemcpyHostToDevice));

  const kiln::cuda::PagedKv kv{k_cache, v_cache, num_blocks, kBlockSize, kKvHeads, kHeadDim};
  const kiln::cuda::AttentionBatch batch{M, token_seq, positions, tables, blocks_per_seq, context};
  auto step = [&] {
    const kiln::Status s = kiln::cuda::paged_attention(q, q_ld, batch, kv, kHeads, 0.088388f, out, workspace,
                                                       ws_bytes, kiln::DType::F16, nullptr);
    if (!s.ok()) {
      std::fprintf(stderr, "%s\n", s.error().message.c_str());
      std::exit(1);
    }
  };
  for (int i = 0; i < 3; ++i) step();
  CHECK_CUDA(cudaDeviceSynchronize());
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  std::vector<float> times;
  for (int i = 0; i < 20; ++i) {
    CHECK_CUDA(cudaEventRecord(start));
    step();
    CHECK_CUDA(cudaEventRecord(stop));
    CHECK_CUDA(cudaEventSynchronize(stop));
    float ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&ms, start, stop));
    times.push_back(ms);
  }
  std::sort(times.begin(), times.end());
  const double ms = times[times.size() / 2];
  const double kv_bytes = 2.0 * seqs * context * kKvHeads * kHeadDim * 2;
  for (void* p : {k_cache, v_cache, q, out, workspace}) CHECK_CUDA(cudaFree(p));
  for (int32_t* p : {token_seq, positions, tables}) CHECK_CUDA(cudaFree(p));
  CHECK_CUDA(cudaEventDestroy(start));
  CHECK_CUDA(cudaEventDestroy(stop));
  return {name, ms, kv_bytes / ms / 1e6, flops / ms / 1e9};
}

}  // namespace

int main() {
  cudaDeviceProp prop{};
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("paged_attention, Llama-2-7B layer (32 heads, head_dim 128, f16, block 16) on %s\n", prop.name);
  std::vector<Result> results;
  for (int batch : {1, 8, 64})
    for (int context : {512, 4096})
      results.push_back(
          run("decode b" + std::to_string(batch) + " ctx" + std::to_string(context), batch, context, 1));
  for (int tokens : {512, 2048})
    results.push_back(run("prefill " + std::to_string(tokens), 1, tokens, tokens));
  std::printf("%-22s %10s %10s %10s\n", "case", "ms", "KV GB/s", "TFLOP/s");
  std::string json = "{\"bench\":\"cuda_attention\"";
  for (const Result& r : results) {
    std::printf("%-22s %10.4f %10.1f %10.2f\n", r.name.c_str(), r.ms, r.gbs, r.tflops);
    json += ",\"" + r.name + "\":{\"ms\":" + std::to_string(r.ms) + ",\"gbs\":" + std::to_string(r.gbs) +
            ",\"tflops\":" + std::to_string(r.tflops) + "}";
  }
  std::printf("%s}\n", json.c_str());
  return 0;
}
