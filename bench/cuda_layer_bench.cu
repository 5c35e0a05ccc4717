// Decode layer chain on the GPU: the per-layer kernel sequence of a Llama-2-7B decode step at M = 1,
// captured in one CUDA graph over `layers` layers with distinct weights, with and without
// programmatic dependent launch (backend/cuda/launch.cuh). This measures what the GEMV bench cannot:
// the gaps between back-to-back small and large kernels, and what each small kernel costs inside
// the chain (which isolated timings, e.g. ncu's, overstate: PDL overlaps them).
//
// Per layer (f16; 404 MB of weights):
//   add_rms_norm 4096 -> gemv qkv 12288x4096 -> [rope_kv_write | rope q, rope k, kv_cache_write]
//   -> gemv o 4096x4096 (on q's columns, standing in for attention's output) -> add_rms_norm
//   -> gemv gate_up 22016x4096 -> swiglu 11008 -> gemv down 4096x11008
// Modes without attention: "gemv only" (the 4 GEMVs, no small kernels: the floor the small kernels
// add to), "unfused" (10 launches a layer), "fused" (8 launches), "fused+swiglu" (7: the down GEMV
// applies SwiGLU to the gate_up output itself, gemv_swiglu).
// Modes with attention, as the executor's decode graph runs a layer (real paged attention at context
// kContext over a 16-block cache, one sequence, max_position 4096 as a captured graph passes):
//   "decode": add_rms_norm, gemv qkv, paged_attention_decode (RoPE + KV write + split-K + merge in
//   one kernel), gemv o on its output, add_rms_norm, gemv gate_up, swiglu, gemv down (7 launches);
//   "decode-attn", "decode-norms", "decode-swiglu": the same without that kernel (results are wrong;
//   the difference to "decode" is what the kernel costs inside the chain).
// Method: each mode's graph is replayed after a warm-up; median of 7 samples of 5 replays. Weights
// of 32 layers (12.9 GB) exceed L2 250 times, so every replay streams them from HBM. GB/s counts
// weight bytes only; the ceiling is a device-to-device cudaMemcpy of 1 GB in the same run.
// Correctness: the configurations without attention must reproduce the serialized unfused chain's
// final residual stream and KV caches after one replay from the same start, bit for bit ("same").
//
// usage: cuda_layer_bench [layers=32]     (prints a table and one JSON line)
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "backend/cuda/kernels.h"
#include "backend/cuda/launch.h"
#include "cuda_bench_util.cuh"

namespace {

using namespace kiln::bench;

constexpr int64_t D = 4096, F = 11008, H = 32, HD = 128, QKV = 3 * D;
constexpr int64_t kLayerWeights = QKV * D + D * D + 2 * F * D + D * F;  // elements
constexpr int64_t kBlocks = 16, kBlockSize = 16, kCacheElems = kBlocks * kBlockSize * H * HD, kMaxPos = 4096;
constexpr int32_t kContext = 192;  // decode modes: the token at position 191 attends to 192 positions
constexpr int64_t kTableWidth = kMaxPos / kBlockSize;

enum class Mode { kGemvOnly, kUnfused, kFused, kFusedSwiGlu, kDecode, kDecodeNoAttn, kDecodeNoNorms, kDecodeNoSwiGlu };
const char* mode_name(Mode m) {
  switch (m) {
    case Mode::kGemvOnly:
      return "gemv only";
    case Mode::kUnfused:
      return "unfused";
    case Mode::kFused:
      return "fused";
    case Mode::kFusedSwiGlu:
      return "fused+swiglu";
    case Mode::kDecode:
      return "decode";
    case Mode::kDecodeNoAttn:
      return "decode-attn";
    case Mode::kDecodeNoNorms:
      return "decode-norms";
    case Mode::kDecodeNoSwiGlu:
      return "decode-swiglu";
  }
  return "?";
}
int launches_per_layer(Mode m) {
  switch (m) {
    case Mode::kGemvOnly:
      return 4;
    case Mode::kUnfused:
      return 10;
    case Mode::kFused:
      return 8;
    case Mode::kDecodeNoAttn:
    case Mode::kDecodeNoSwiGlu:
      return 6;
    case Mode::kDecodeNoNorms:
      return 5;
    default:
      return 7;
  }
}
bool is_decode(Mode m) {
  return m == Mode::kDecode || m == Mode::kDecodeNoAttn || m == Mode::kDecodeNoNorms || m == Mode::kDecodeNoSwiGlu;
}

struct Buffers {
  __half *weights, *residual, *residual0, *normed, *qkv, *h, *gate_up, *act, *k_cache, *v_cache, *attn;
  float *norm_w, *cos, *sin;
  int32_t *position, *slot;
  // decode modes: one sequence (token_seq 0) at position kContext - 1, identity block table
  int32_t *decode_seq, *decode_position, *decode_slot, *table;
  void* workspace;
  size_t workspace_bytes;
};

// Layer l's weights (qkv, o, gate_up, down, laid end to end) and KV cache.
struct Layer {
  const __half *qkv, *o, *gate_up, *down;
  kiln::cuda::PagedKv kv;
};
Layer layer(const Buffers& b, int l) {
  const __half* qkv = b.weights + l * kLayerWeights;
  const __half* o = qkv + QKV * D;
  const __half* gate_up = o + D * D;
  return {qkv, o, gate_up, gate_up + 2 * F * D,
          {b.k_cache + l * kCacheElems, b.v_cache + l * kCacheElems, kBlocks, kBlockSize, H, HD}};
}

// One layer as the executor's decode graph runs it (see the modes at the top).
void enqueue_decode_layer(const Buffers& b, int l, Mode mode, cudaStream_t s) {
  using kiln::DType;
  using namespace kiln::cuda;
  const DType f16 = DType::F16;
  const auto [w_qkv, w_o, w_gate_up, w_down, kv] = layer(b, l);
  const bool norms = mode != Mode::kDecodeNoNorms;
  if (norms) check_ok(add_rms_norm(b.residual, b.h, b.norm_w, 1, D, 1e-5f, b.normed, f16, s));
  check_ok(gemv(b.normed, 1, D, w_qkv, QKV, nullptr, b.qkv, QKV, f16, f16, s));
  const __half* o_in = b.qkv;
  if (mode != Mode::kDecodeNoAttn) {
    const AttentionBatch batch{1, b.decode_seq, b.decode_position, b.table, kTableWidth, kMaxPos};
    const NewTokens fresh{b.qkv + D, QKV, b.qkv + 2 * D, QKV, b.decode_slot, b.cos, b.sin, false};
    check_ok(paged_attention_decode(b.qkv, QKV, batch, fresh, kv, H, 0.088388f, b.attn, b.workspace,
                                    b.workspace_bytes, f16, s));
    o_in = b.attn;
  }
  check_ok(gemv(o_in, 1, D, w_o, D, nullptr, b.h, D, f16, f16, s));
  if (norms) check_ok(add_rms_norm(b.residual, b.h, b.norm_w, 1, D, 1e-5f, b.normed, f16, s));
  check_ok(gemv(b.normed, 1, D, w_gate_up, 2 * F, nullptr, b.gate_up, 2 * F, f16, f16, s));
  if (mode != Mode::kDecodeNoSwiGlu) check_ok(swiglu(b.gate_up, 2 * F, b.gate_up + F, 2 * F, 1, F, b.act, f16, s));
  check_ok(gemv(mode != Mode::kDecodeNoSwiGlu ? b.act : b.gate_up, 1, F, w_down, D, nullptr, b.h, D, f16, f16, s));
}

void enqueue_chain(const Buffers& b, int layers, Mode mode, cudaStream_t s) {
  using kiln::DType;
  using namespace kiln::cuda;
  const DType f16 = DType::F16;
  CHECK_CUDA(cudaMemsetAsync(b.h, 0, D * 2, s));
  for (int l = 0; l < layers; ++l) {
    if (is_decode(mode)) {
      enqueue_decode_layer(b, l, mode, s);
      continue;
    }
    const auto [w_qkv, w_o, w_gate_up, w_down, kv] = layer(b, l);
    if (mode != Mode::kGemvOnly) check_ok(add_rms_norm(b.residual, b.h, b.norm_w, 1, D, 1e-5f, b.normed, f16, s));
    check_ok(gemv(b.normed, 1, D, w_qkv, QKV, nullptr, b.qkv, QKV, f16, f16, s));
    if (mode == Mode::kFused || mode == Mode::kFusedSwiGlu) {
      check_ok(rope_kv_write(b.qkv, QKV, H, b.qkv + D, QKV, b.qkv + 2 * D, QKV, 1, b.position, b.cos, b.sin, false,
                             b.slot, kv, f16, s));
    } else if (mode == Mode::kUnfused) {
      check_ok(rope(b.qkv, 1, QKV, 0, H, HD, b.position, b.cos, b.sin, false, f16, s));
      check_ok(rope(b.qkv, 1, QKV, D, H, HD, b.position, b.cos, b.sin, false, f16, s));
      check_ok(kv_cache_write(b.qkv + D, b.qkv + 2 * D, 1, QKV, b.slot, kv, f16, s));
    }
    check_ok(gemv(b.qkv, 1, D, w_o, D, nullptr, b.h, D, f16, f16, s));
    if (mode != Mode::kGemvOnly) check_ok(add_rms_norm(b.residual, b.h, b.norm_w, 1, D, 1e-5f, b.normed, f16, s));
    check_ok(gemv(b.normed, 1, D, w_gate_up, 2 * F, nullptr, b.gate_up, 2 * F, f16, f16, s));
    if (mode == Mode::kFusedSwiGlu) {
      check_ok(
          gemv_swiglu(b.gate_up, 2 * F, b.gate_up + F, 2 * F, 1, F, w_down, D, nullptr, b.h, D, f16, f16, s));
    } else {
      if (mode != Mode::kGemvOnly)
        check_ok(swiglu(b.gate_up, 2 * F, b.gate_up + F, 2 * F, 1, F, b.act, f16, s));
      check_ok(gemv(b.act, 1, F, w_down, D, nullptr, b.h, D, f16, f16, s));
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  const int layers = argc > 1 ? std::atoi(argv[1]) : 32;
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  const double copy_bw = copy_bandwidth();
  std::printf("device: %s, %d SMs; device-to-device copy %.0f GB/s; %d layers, %.2f GB of distinct weights\n",
              prop.name, prop.multiProcessorCount, copy_bw / 1e9, layers, layers * kLayerWeights * 2e-9);
  const bool pdl_supported = kiln::cuda::programmatic_launch_enabled();
  if (!pdl_supported) std::printf("note: programmatic dependent launch unavailable (or KILN_CUDA_PDL=0)\n");

  Buffers b{};
  CHECK_CUDA(cudaMalloc(&b.weights, layers * kLayerWeights * 2));
  fill_random_f16(b.weights, layers * kLayerWeights, 7, 0.03f);
  for (__half** p : {&b.residual, &b.residual0, &b.normed, &b.h}) CHECK_CUDA(cudaMalloc(p, D * 2));
  CHECK_CUDA(cudaMalloc(&b.qkv, QKV * 2));
  CHECK_CUDA(cudaMalloc(&b.gate_up, 2 * F * 2));
  CHECK_CUDA(cudaMalloc(&b.act, F * 2));
  CHECK_CUDA(cudaMalloc(&b.k_cache, layers * kCacheElems * 2));
  CHECK_CUDA(cudaMalloc(&b.v_cache, layers * kCacheElems * 2));
  CHECK_CUDA(cudaMalloc(&b.norm_w, D * 4));
  CHECK_CUDA(cudaMalloc(&b.cos, kMaxPos * HD / 2 * 4));
  CHECK_CUDA(cudaMalloc(&b.sin, kMaxPos * HD / 2 * 4));
  fill_random_f16(b.residual0, D, 11);
  fill_f32<<<64, 256>>>(b.norm_w, D, 1.0f);
  fill_f32<<<256, 256>>>(b.cos, kMaxPos * HD / 2, 0.6f);
  fill_f32<<<256, 256>>>(b.sin, kMaxPos * HD / 2, 0.8f);
  const int32_t position = 100, slot = 37;
  CHECK_CUDA(cudaMalloc(&b.position, 4));
  CHECK_CUDA(cudaMalloc(&b.slot, 4));
  CHECK_CUDA(cudaMemcpy(b.position, &position, 4, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(b.slot, &slot, 4, cudaMemcpyHostToDevice));
  // Decode modes: sequence 0 at position kContext - 1 over blocks 0..15 (identity table).
  CHECK_CUDA(cudaMalloc(&b.attn, D * 2));
  std::vector<int32_t> table(kTableWidth, 0);
  for (int64_t i = 0; i < kBlocks; ++i) table[i] = static_cast<int32_t>(i);
  const int32_t zero = 0, decode_position = kContext - 1, decode_slot = kContext - 1;
  for (int32_t** p : {&b.decode_seq, &b.decode_position, &b.decode_slot}) CHECK_CUDA(cudaMalloc(p, 4));
  CHECK_CUDA(cudaMalloc(&b.table, kTableWidth * 4));
  CHECK_CUDA(cudaMemcpy(b.decode_seq, &zero, 4, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(b.decode_position, &decode_position, 4, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(b.decode_slot, &decode_slot, 4, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(b.table, table.data(), kTableWidth * 4, cudaMemcpyHostToDevice));
  b.workspace_bytes = kiln::cuda::attention_workspace_bytes(1, H, HD, kMaxPos);
  CHECK_CUDA(cudaMalloc(&b.workspace, b.workspace_bytes));
  CHECK_CUDA(cudaMemset(b.workspace, 0, b.workspace_bytes));  // split-K arrival counters
  CHECK_CUDA(cudaDeviceSynchronize());

  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  const double weight_bytes = layers * kLayerWeights * 2.0;

  std::printf("\n%-14s %-4s %9s %9s %9s %7s %6s  %s\n", "mode", "PDL", "ms/chain", "us/layer", "GB/s",
              "%copy", "launch", "result vs serialized unfused");
  std::string json = "{\"bench\":\"cuda_layer_chain\",\"device\":\"" + std::string(prop.name) +
                     "\",\"layers\":" + std::to_string(layers) + ",\"copy_gbps\":" + std::to_string(copy_bw / 1e9) +
                     ",\"results\":[";
  std::vector<__half> reference;
  for (Mode mode : {Mode::kUnfused, Mode::kFused, Mode::kFusedSwiGlu, Mode::kGemvOnly, Mode::kDecode,
                    Mode::kDecodeNoAttn, Mode::kDecodeNoNorms, Mode::kDecodeNoSwiGlu}) {
    for (bool pdl : {false, true}) {
      if (pdl && !pdl_supported) continue;
      kiln::cuda::set_programmatic_launch(pdl);
      cudaGraph_t graph;
      cudaGraphExec_t exec;
      CHECK_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
      enqueue_chain(b, layers, mode, stream);
      CHECK_CUDA(cudaStreamEndCapture(stream, &graph));
      CHECK_CUDA(cudaGraphInstantiate(&exec, graph, 0));

      // One replay from a fixed start: the result every configuration must reproduce.
      CHECK_CUDA(cudaMemcpyAsync(b.residual, b.residual0, D * 2, cudaMemcpyDeviceToDevice, stream));
      CHECK_CUDA(cudaMemsetAsync(b.k_cache, 0, layers * kCacheElems * 2, stream));
      CHECK_CUDA(cudaMemsetAsync(b.v_cache, 0, layers * kCacheElems * 2, stream));
      CHECK_CUDA(cudaGraphLaunch(exec, stream));
      std::vector<__half> result(D + layers * kCacheElems);
      CHECK_CUDA(cudaMemcpyAsync(result.data(), b.residual, D * 2, cudaMemcpyDeviceToHost, stream));
      CHECK_CUDA(cudaMemcpyAsync(result.data() + D, b.k_cache, layers * kCacheElems * 2, cudaMemcpyDeviceToHost,
                                 stream));
      CHECK_CUDA(cudaStreamSynchronize(stream));
      const char* verdict = "(reference)";
      if (mode == Mode::kGemvOnly || is_decode(mode)) {
        verdict = "(different chain)";
      } else if (reference.empty()) {
        reference = result;
      } else {
        verdict = std::equal(reference.begin(), reference.end(), result.begin(), [](__half x, __half y) {
          return __half_as_ushort(x) == __half_as_ushort(y);
        }) ? "same" : "DIFFERENT";
      }

      for (int i = 0; i < 3; ++i) CHECK_CUDA(cudaGraphLaunch(exec, stream));
      std::vector<double> samples;
      for (int s = 0; s < 7; ++s) {
        CHECK_CUDA(cudaEventRecord(start, stream));
        for (int i = 0; i < 5; ++i) CHECK_CUDA(cudaGraphLaunch(exec, stream));
        CHECK_CUDA(cudaEventRecord(stop, stream));
        CHECK_CUDA(cudaEventSynchronize(stop));
        float ms;
        CHECK_CUDA(cudaEventElapsedTime(&ms, start, stop));
        samples.push_back(ms / 5);
      }
      const double ms = median(samples), gbps = weight_bytes / (ms * 1e-3) / 1e9;
      std::printf("%-14s %-4s %9.3f %9.2f %9.0f %6.1f%% %6d  %s\n", mode_name(mode), pdl ? "on" : "off", ms,
                  ms * 1e3 / layers, gbps, 100.0 * gbps * 1e9 / copy_bw, launches_per_layer(mode), verdict);
      json += std::string(json.back() == '[' ? "" : ",") + "{\"mode\":\"" + mode_name(mode) + "\",\"pdl\":" +
              (pdl ? "true" : "false") + ",\"ms\":" + std::to_string(ms) + ",\"gbps\":" + std::to_string(gbps) + "}";
      CHECK_CUDA(cudaGraphExecDestroy(exec));
      CHECK_CUDA(cudaGraphDestroy(graph));
    }
  }
  std::printf("(weights at the copy bandwidth would take %.3f ms per chain; the add_rms_norm of the chain starts "
              "the layer, so the residual update of the last layer is not included)\n",
              weight_bytes / copy_bw * 1e3);
  std::printf("%s]}\n", json.c_str());
  return 0;
}
