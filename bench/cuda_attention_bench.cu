// Paged attention on the GPU at Llama-2-7B layer shapes (32 heads, head_dim 128, f16, block size 16),
// one layer per call:
//   decode: batch 1/8/64 at contexts 512/4096, one query per sequence; GB/s of K+V read
//           (2 · batch · context · kv_heads · 128 · 2 bytes) over the time of one call;
//   graph-mode decode: the executor captures decode steps into CUDA graphs and passes
//           max_position = the engine's max sequence length (4096) whatever the real context, so
//           these cases pass 4096 while the real contexts are 512/1024;
//   GQA: 32 query heads over 8 KV heads;
//   prefill: one prompt of 512/2048 tokens (causal): TFLOP/s of 4 · 32 · 128 · Σ(pos + 1) FLOPs.
// Two times per case: "launch" is the median of 20 event-timed single calls (includes launch latency,
// as an eager step sees it); "graph" is one CUDA graph of 100 calls replayed, divided by 100 (the
// kernels' own time plus the graph's inter-node gaps, as a captured decode step sees it). Calls rotate
// over enough copies of the cache ("layers", >= 160 MB in all) that K/V come from HBM, not from the
// 50 MB L2, as in a real step where the weights stream through L2 between two attention calls.
// The caches hold random values (never zeros) in shuffled blocks. Prints a table and one JSON line.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/kernels.h"
#include "cuda_bench_util.cuh"

namespace {

using namespace kiln::bench;

constexpr int kHeadDim = 128, kBlockSize = 16, kHeads = 32;
constexpr size_t kRotateBytes = size_t(160) << 20;  // K+V over all layer copies: > 3x the H100 L2
constexpr int kGraphCalls = 100;

struct Case {
  std::string name;
  int seqs;
  int context;          // real context of every sequence
  int max_position;     // what the caller passes (>= context)
  int queries_per_seq;  // 1: decode; = context: a whole prompt
  int kv_heads;
};

struct Result {
  std::string name;
  double launch_us, graph_us;
  double gbs;     // decode: K/V bytes read per second (graph time)
  double tflops;  // prefill (graph time)
};

// One step: `seqs` sequences of `context` positions; queries are the last `queries_per_seq`
// positions of each sequence.
Result run(const Case& c, cudaStream_t stream) {
  const int blocks_per_seq = (c.context + kBlockSize - 1) / kBlockSize;
  const int table_width = (c.max_position + kBlockSize - 1) / kBlockSize;  // the engine's table width
  const int64_t num_blocks = int64_t(c.seqs) * blocks_per_seq;
  const size_t layer_elems = size_t(num_blocks) * kBlockSize * c.kv_heads * kHeadDim;
  const int layers = int(std::clamp<size_t>(kRotateBytes / (layer_elems * 4) + 1, 1, 32));
  const int M = c.seqs * c.queries_per_seq;
  const int64_t q_ld = (kHeads + 2 * c.kv_heads) * kHeadDim;  // q inside a fused qkv row
  void *k_cache, *v_cache, *q, *out, *workspace;
  int32_t *token_seq, *positions, *tables;
  CHECK_CUDA(cudaMalloc(&k_cache, layer_elems * layers * 2));
  CHECK_CUDA(cudaMalloc(&v_cache, layer_elems * layers * 2));
  CHECK_CUDA(cudaMalloc(&q, size_t(M) * q_ld * 2));
  CHECK_CUDA(cudaMalloc(&out, size_t(M) * kHeads * kHeadDim * 2));
  const size_t ws_bytes = kiln::cuda::attention_workspace_bytes(M, kHeads, kHeadDim, c.max_position);
  CHECK_CUDA(cudaMalloc(&workspace, std::max<size_t>(ws_bytes, 16)));
  CHECK_CUDA(cudaMemset(workspace, 0, std::max<size_t>(ws_bytes, 16)));  // split-K arrival counters
  fill_random_f16(static_cast<__half*>(k_cache), layer_elems * layers, 1);
  fill_random_f16(static_cast<__half*>(v_cache), layer_elems * layers, 2);
  fill_random_f16(static_cast<__half*>(q), int64_t(M) * q_ld, 3);

  std::vector<int32_t> perm(num_blocks), table_h(size_t(c.seqs) * table_width, 0), seq_h, pos_h;
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), std::mt19937(5));
  for (int s = 0; s < c.seqs; ++s)
    for (int b = 0; b < blocks_per_seq; ++b) table_h[size_t(s) * table_width + b] = perm[s * blocks_per_seq + b];
  double flops = 0;
  for (int s = 0; s < c.seqs; ++s)
    for (int p = c.context - c.queries_per_seq; p < c.context; ++p) {
      seq_h.push_back(s);
      pos_h.push_back(p);
      flops += 4.0 * kHeads * kHeadDim * (p + 1);
    }
  CHECK_CUDA(cudaMalloc(&token_seq, M * 4));
  CHECK_CUDA(cudaMalloc(&positions, M * 4));
  CHECK_CUDA(cudaMalloc(&tables, table_h.size() * 4));
  CHECK_CUDA(cudaMemcpy(token_seq, seq_h.data(), M * 4, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(positions, pos_h.data(), M * 4, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(tables, table_h.data(), table_h.size() * 4, cudaMemcpyHostToDevice));

  const kiln::cuda::AttentionBatch batch{M, token_seq, positions, tables, table_width, c.max_position};
  int call = 0;
  auto step = [&] {
    const size_t offset = size_t(call++ % layers) * layer_elems * 2;
    const kiln::cuda::PagedKv kv{static_cast<char*>(k_cache) + offset, static_cast<char*>(v_cache) + offset,
                                 num_blocks, kBlockSize, c.kv_heads, kHeadDim};
    const kiln::Status s = kiln::cuda::paged_attention(q, q_ld, batch, kv, kHeads, 0.088388f, out, workspace,
                                                       ws_bytes, kiln::DType::F16, stream);
    if (!s.ok()) {
      std::fprintf(stderr, "%s: %s\n", c.name.c_str(), s.error().message.c_str());
      std::exit(1);
    }
  };
  for (int i = 0; i < 3; ++i) step();
  CHECK_CUDA(cudaStreamSynchronize(stream));
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  std::vector<float> times;
  for (int i = 0; i < 20; ++i) {
    CHECK_CUDA(cudaEventRecord(start, stream));
    step();
    CHECK_CUDA(cudaEventRecord(stop, stream));
    CHECK_CUDA(cudaEventSynchronize(stop));
    float ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&ms, start, stop));
    times.push_back(ms);
  }
  std::sort(times.begin(), times.end());
  const double launch_ms = times[times.size() / 2];

  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CHECK_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < kGraphCalls; ++i) step();
  CHECK_CUDA(cudaStreamEndCapture(stream, &graph));
  CHECK_CUDA(cudaGraphInstantiate(&exec, graph, 0));
  CHECK_CUDA(cudaGraphLaunch(exec, stream));  // warm-up
  times.clear();
  for (int i = 0; i < 5; ++i) {
    CHECK_CUDA(cudaEventRecord(start, stream));
    CHECK_CUDA(cudaGraphLaunch(exec, stream));
    CHECK_CUDA(cudaEventRecord(stop, stream));
    CHECK_CUDA(cudaEventSynchronize(stop));
    float ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&ms, start, stop));
    times.push_back(ms / kGraphCalls);
  }
  std::sort(times.begin(), times.end());
  const double graph_ms = times[times.size() / 2];
  CHECK_CUDA(cudaGraphExecDestroy(exec));
  CHECK_CUDA(cudaGraphDestroy(graph));

  const double kv_bytes = 2.0 * c.seqs * c.context * c.kv_heads * kHeadDim * 2;
  for (void* p : {k_cache, v_cache, q, out, workspace}) CHECK_CUDA(cudaFree(p));
  for (int32_t* p : {token_seq, positions, tables}) CHECK_CUDA(cudaFree(p));
  CHECK_CUDA(cudaEventDestroy(start));
  CHECK_CUDA(cudaEventDestroy(stop));
  return {c.name, launch_ms * 1e3, graph_ms * 1e3, kv_bytes / graph_ms / 1e6, flops / graph_ms / 1e9};
}

}  // namespace

int main() {
  cudaDeviceProp prop{};
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("paged_attention, Llama-2-7B layer (32 heads, head_dim 128, f16, block 16) on %s\n", prop.name);
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  std::vector<Case> cases;
  for (int batch : {1, 8, 64})
    for (int context : {512, 4096})
      cases.push_back({"decode b" + std::to_string(batch) + " ctx" + std::to_string(context), batch, context,
                       context, 1, 32});
  for (int batch : {1, 8})
    for (int context : {512, 1024})
      cases.push_back({"graph b" + std::to_string(batch) + " ctx" + std::to_string(context) + "/4096", batch,
                       context, 4096, 1, 32});
  cases.push_back({"gqa8 b1 ctx512/4096", 1, 512, 4096, 1, 8});
  cases.push_back({"gqa8 b1 ctx4096", 1, 4096, 4096, 1, 8});
  cases.push_back({"gqa8 b8 ctx512/4096", 8, 512, 4096, 1, 8});
  for (int tokens : {512, 2048}) cases.push_back({"prefill " + std::to_string(tokens), 1, tokens, tokens, tokens, 32});

  std::printf("%-22s %10s %10s %10s %10s\n", "case", "launch us", "graph us", "KV GB/s", "TFLOP/s");
  std::string json = "{\"bench\":\"cuda_attention\",\"gpu\":\"" + std::string(prop.name) + "\"";
  for (const Case& c : cases) {
    const Result r = run(c, stream);
    const bool prefill = c.queries_per_seq > 1;
    std::printf("%-22s %10.1f %10.1f %10s %10s\n", r.name.c_str(), r.launch_us, r.graph_us,
                prefill ? "" : std::to_string(int(r.gbs)).c_str(),
                prefill ? std::to_string(r.tflops).substr(0, 5).c_str() : "");
    json += ",\"" + r.name + "\":{\"launch_us\":" + std::to_string(r.launch_us) +
            ",\"graph_us\":" + std::to_string(r.graph_us) + ",\"gbs\":" + std::to_string(r.gbs) +
            ",\"tflops\":" + std::to_string(r.tflops) + "}";
  }
  std::printf("%s}\n", json.c_str());
  CHECK_CUDA(cudaStreamDestroy(stream));
  return 0;
}
