// `kiln bench`: a synthetic serving workload on a loaded model. Each iteration prefills B random
// prompts of P tokens together (chunked by the backend's token budget, as a server packs a step),
// samples all B first tokens greedily (time to first token), then runs G-1 decode steps with all B
// sequences in one batch, timing every step. Prompts are random valid ids from a fixed seed, so two
// runs do the same work. The KV blocks come from the model's pool and go back after each iteration.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/error.h"
#include "runtime/model.h"

namespace kiln {

struct BenchOptions {
  int32_t batch = 1;        // B sequences per iteration
  int32_t prompt_len = 128; // P prompt tokens per sequence
  int32_t gen_len = 128;    // G generated tokens per sequence (the first from prefill, G-1 decode steps)
  int32_t iterations = 3;   // measured iterations
  int32_t warmup = 1;       // unmeasured iterations first
  bool verbose = false;     // also profile one prefill and one decode step per graph node
  uint64_t seed = 0x6b696c6e;
};

// Per-node times of one profiled step, summed per row (one row per layer "layers.<i>", and one per
// node outside the layers, e.g. "embed_tokens", "lm_head") and per op kind (column).
struct StepProfile {
  std::string phase;                   // "prefill" or "decode"
  int64_t num_tokens = 0;              // tokens in the profiled step
  std::vector<std::string> rows;       // layers in order, then the other nodes in graph order
  std::vector<std::string> ops;        // op kinds in order of first appearance
  std::vector<std::vector<double>> ms; // [rows][ops]
  double total_ms = 0;
};

struct BenchReport {
  BenchOptions options;
  std::string backend;
  std::string cpu_isa;           // cpu: the kernels' instruction-set level and the features detected (isa.h)
  int64_t prompt_tokens = 0;     // B * P * iterations (measured)
  int64_t generated_tokens = 0;  // B * G * iterations (measured)
  int64_t decode_steps = 0;      // (G - 1) * iterations (measured)
  double ttft_ms = 0;            // median over iterations: prefill start to all B first tokens
  double decode_p50_ms = 0, decode_p90_ms = 0, decode_p99_ms = 0;  // per decode step (B tokens)
  double decode_tokens_per_second = 0;  // B * (G - 1) per decode time
  double prompt_tokens_per_second = 0;  // B * P per time to first token
  int64_t weight_bytes = 0;
  int64_t kv_cache_bytes = 0;
  int64_t arena_bytes = 0;
  int64_t peak_device_bytes = 0;  // backend's own count (CPU: 0)
  int64_t kernels_per_decode_step = 0;  // CUDA: kernel nodes of the decode step's graph (CPU: 0)
  int64_t peak_rss_bytes = 0;     // whole process, after the timed iterations (before the bandwidth probe)
  // Decode reads every weight once per step, so weight_bytes / p50 step time is a lower bound on the
  // bandwidth it achieved; copy_bandwidth is the backend's measured bound (Backend::
  // copy_bandwidth_bytes_per_second: CUDA a device copy, CPU a read probe), named by bandwidth_bound.
  double weight_bandwidth_bytes_per_second = 0;
  double copy_bandwidth_bytes_per_second = 0;
  std::string bandwidth_bound;
  double weight_bandwidth_fraction = 0;
  std::vector<StepProfile> profiles;  // with verbose: prefill, then decode
};

// Errors (one line): bad options (batch/prompt/gen/iterations out of range), a workload that does not
// fit the engine (positions beyond max sequence length, more sequences than logit rows or KV blocks),
// and any backend error.
Result<BenchReport> run_benchmark(Model& model, const BenchOptions& options);

// Sums a profiled step's node timings into a StepProfile (exposed for tests).
StepProfile aggregate_profile(const std::string& phase, int64_t num_tokens, const std::vector<NodeTiming>& timings);

}  // namespace kiln
