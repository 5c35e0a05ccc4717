// The run side's device interface: a backend owns the weights (uploaded once), the activation arena
// (planned at load for the largest step) and the paged KV cache memory, and runs the engine graph on
// one Batch. Block accounting (which blocks a sequence owns) is the runtime's KvBlockPool, not the
// backend's: the backend only reads the block tables it is given.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "backend/sample_row.h"
#include "common/error.h"
#include "graph/graph.h"

namespace kiln {

struct LoadedEngine;

// One forward step over tokens of many sequences (prefill chunks and decode tokens mixed).
// The vectors are reused between steps (clear() keeps capacity), so building a batch does not
// allocate in steady state.
struct Batch {
  std::vector<int32_t> tokens;        // [T] token ids
  std::vector<int32_t> positions;     // [T] position of each token in its sequence
  std::vector<int32_t> token_seq;     // [T] row of block_tables each token belongs to
  std::vector<int32_t> block_tables;  // [num_seqs, max_blocks_per_seq] KV block ids (-1 = unused)
  int32_t max_blocks_per_seq = 0;
  std::vector<int32_t> logit_rows;    // [R] indices into tokens whose logits the step returns

  void clear() {
    tokens.clear();
    positions.clear();
    token_seq.clear();
    block_tables.clear();
    logit_rows.clear();
  }
  int32_t num_tokens() const { return static_cast<int32_t>(tokens.size()); }
  int32_t num_seqs() const {
    return max_blocks_per_seq == 0 ? 0 : static_cast<int32_t>(block_tables.size()) / max_blocks_per_seq;
  }
};

struct BackendOptions {
  int num_threads = 0;           // CPU: 0 = hardware concurrency
  int64_t max_tokens_per_step = 0;  // 0: the backend's default (CPU 512; CUDA 2048, capped by the profile)
  int64_t max_logit_rows = 64;
  int64_t num_kv_blocks = 0;     // 0: enough for max_sequences sequences of max_seq_len (CUDA: capped
                                 //    by the device memory left after weights and activations)
  int64_t max_sequences = 0;     // 0: the engine profile's max batch
  int64_t kv_block_size = 16;
  bool cuda_graphs = true;       // CUDA: replay captured graphs for decode steps
};

// Time of one graph node in a profiled step.
struct NodeTiming {
  std::string name;  // graph node name, e.g. "layers.3.attn.qkv"
  std::string op;    // op name, e.g. "linear"
  double ms = 0;
};

struct KvGeometry {
  int64_t num_blocks;
  int64_t block_size;
};

// Calibration hook of the build side: sees the input of every Linear and SwiGluLinear node (for the
// latter, the SwiGLU product the matmul reads) as a step runs, on the calling thread.
class ActivationObserver {
 public:
  virtual ~ActivationObserver() = default;
  // x: [rows, width] f32, row stride width; valid only during the call.
  virtual void observe(size_t node, const float* x, int64_t rows, int64_t width) = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual KvGeometry kv_geometry() const = 0;
  virtual int64_t vocab_size() const = 0;
  virtual int64_t max_tokens_per_step() const = 0;
  virtual int64_t max_logit_rows() const = 0;
  // Runs one step. logits: [batch.logit_rows.size(), vocab_size()] f32, host memory.
  // Errors: bad token ids, positions beyond the KV capacity, too many tokens: one line each.
  virtual Status forward(const Batch& batch, float* logits) = 0;
  // Greedy decoding step: ids[r] = argmax of logit row r. Backends that can do it on the device
  // (CUDA) return only the ids; the default computes logits and takes the argmax on the host.
  virtual Status forward_argmax(const Batch& batch, int32_t* ids);
  // Sampling step: ids[r] = a token drawn from logit row r under rows[r] (RowSampling in
  // backend/sample_row.h: temperature -> top-k -> top-p -> min-p -> draw, whose exact semantics
  // sample_row() defines). rows.size() == batch.logit_rows.size(). Backends that can do it on the
  // device (CUDA) return only the ids; the default computes logits and calls sample_row per row.
  virtual Status forward_sample(const Batch& batch, std::span<const RowSampling> rows, int32_t* ids);
  // forward() with a timing per graph node (CPU: wall clock; CUDA: events, no graph replay). Slower
  // than forward(); for `kiln bench --verbose`.
  virtual Status forward_profiled(const Batch& batch, float* logits, std::vector<NodeTiming>& timings) = 0;
  // The memory-bandwidth bound bench reports decode against, measured once on first call, in bytes
  // per second. CUDA: a large device-to-device copy (bytes read + written); CPU: the read probe of
  // backend/cpu/bandwidth.h (the better of a streaming read and the GEMV kernel itself).
  virtual double copy_bandwidth_bytes_per_second() = 0;
  // How that bound was measured, for reports (after copy_bandwidth_bytes_per_second()).
  virtual std::string bandwidth_bound_name() const { return "device copy (read + write)"; }
  // Peak bytes the backend has held on its device (CUDA: device allocations; CPU: 0, see RSS).
  virtual int64_t peak_device_bytes() const = 0;
  // Kernels one decode step of `batch_size` sequences launches (CUDA: kernel nodes of its captured
  // graph; 0 when not known yet or not applicable).
  virtual int64_t kernels_per_decode_step(int64_t batch_size) const {
    (void)batch_size;
    return 0;
  }
  // Bytes of memory the backend holds: weights (mapped or uploaded), arena, KV cache.
  virtual int64_t weight_bytes() const = 0;
  virtual int64_t arena_bytes() const = 0;
  virtual int64_t kv_cache_bytes() const = 0;
  // Installs (or, with nullptr, removes) a calibration observer. The CPU backend supports it.
  virtual Status set_activation_observer(ActivationObserver* observer) {
    (void)observer;
    return make_error("the {} backend cannot observe activations (calibration runs on the cpu backend)", name());
  }
};

// What a backend accepts in one step; validate_batch checks a Batch against it (token ids, positions,
// sequence rows, every KV block a token attends to, logit rows) with one clear line per problem.
struct BatchLimits {
  int64_t max_tokens = 0;
  int64_t max_logit_rows = 0;
  int64_t max_seqs = 0;  // 0: no limit
  int64_t vocab_size = 0;
  int64_t max_seq_len = 0;
  int64_t num_kv_blocks = 0;
  int64_t block_size = 0;
};
Status validate_batch(const Batch& batch, const BatchLimits& limits);

// Host argmax of each row of logits [rows, vocab] (lowest id on ties).
void argmax_rows(const float* logits, int64_t rows, int64_t vocab, int32_t* ids);

// The CPU backend over an engine built for "cpu". The engine must outlive the backend (weights are
// read in place from its mapping).
Result<std::unique_ptr<Backend>> create_cpu_backend(const LoadedEngine& engine, const BackendOptions& options);

// The CUDA backend over an engine built for "cuda" (compiled in when KILN_WITH_CUDA is defined;
// otherwise returns an error saying this build has no CUDA backend). Weights are uploaded once.
Result<std::unique_ptr<Backend>> create_cuda_backend(const LoadedEngine& engine, const BackendOptions& options);
// "sm_90" for the current device, or an error when there is none.
Result<std::string> cuda_device_arch();
// Build-time kernel choice ("tactics", as TensorRT's builder): for every Linear shape of `graph` and
// each row count, times the GEMV kernel and cuBLASLt's top algorithms on random data on the present
// GPU and returns {"linear": [{m, n, k, kernel: "gemv"|"cublaslt", algo, gemv_ms, cublas_ms}]}.
Result<nlohmann::json> cuda_select_tactics(const Graph& graph, const std::vector<int64_t>& row_counts);

}  // namespace kiln
