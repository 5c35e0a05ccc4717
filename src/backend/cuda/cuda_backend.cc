// The CUDA backend: runs the engine graph on one GPU.
//
// At load: weights are uploaded once into one allocation; the activation arena is planned from value
// lifetimes for the largest step (max tokens per step, max logit rows); the paged KV cache, RoPE
// tables, batch-metadata buffers and cuBLASLt workspace are allocated. A step then allocates nothing:
// the host packs the batch metadata into one pinned buffer, one copy sends it, the nodes launch on
// one stream, and either the logits (forward) or only token ids come back: argmax (forward_argmax) or
// drawn under per-row RowSampling (forward_sample, which uploads the rows with the batch metadata).
//
// Decode steps (one token per sequence) replay a CUDA graph captured per batch-size bucket; the
// batch is padded to the bucket with tokens that write no KV (slot -1) and whose rows are dropped.
// Linear layers use the bandwidth-bound GEMV kernel up to kGemvMaxRows rows and cuBLASLt above.
// Quantized Linear / SwiGluLinear matrices (common/quant.h) stay quantized on the device: gemv_quant
// up to kGemvQuantMaxRows rows, else the matrix expanded into a scratch buffer (dequantize) + cuBLASLt.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <tuple>
#include <vector>

#include "backend/arena_plan.h"
#include "backend/backend.h"
#include "backend/cuda_plugin.h"
#include "backend/kernel_plan.h"
#include "backend/cuda/cublas_gemm.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/sampling.h"
#include "engine/engine_file.h"
#include "graph/graph.h"

namespace kiln {

using cuda::check;

namespace cuda_plugin {
Result<std::string> device_arch() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    cudaGetLastError();
    return make_error("no CUDA device is available");
  }
  int device = 0;
  cudaGetDevice(&device);
  cudaDeviceProp prop{};
  KILN_TRY(check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties"));
  return fmt::format("sm_{}{}", prop.major, prop.minor);
}
}  // namespace cuda_plugin

namespace {

// How a SwiGluLinear runs: the GEMV applying SwiGLU to its input, or the swiglu kernel into scratch
// followed by the GEMV or a cuBLASLt GEMM.
enum class SwiGluKernel : uint8_t { kFusedGemv, kSwiGluGemv, kSwiGluGemm };

struct NodeBinding {
  std::vector<const void*> weights;  // device pointers, in node.weights order
  std::optional<cuda::QuantWeightView> quant;  // weights[0] of a Linear / SwiGluLinear, when quantized
  const void* bias_act = nullptr;    // Linear bias in the activation dtype (cuBLASLt epilogue)
  const float* rope_cos = nullptr;
  const float* rope_sin = nullptr;
};

class CudaBackend final : public Backend {
 public:
  ~CudaBackend() override;
  Status init(const LoadedEngine& engine, const BackendOptions& options);

  std::string name() const override { return "cuda"; }
  KvGeometry kv_geometry() const override { return {num_kv_blocks_, block_size_}; }
  int64_t vocab_size() const override { return vocab_size_; }
  int64_t max_tokens_per_step() const override { return max_tokens_; }
  int64_t max_logit_rows() const override { return max_logit_rows_; }
  int64_t weight_bytes() const override { return weight_bytes_; }
  int64_t arena_bytes() const override { return arena_bytes_; }
  int64_t kv_cache_bytes() const override { return kv_bytes_; }
  int64_t peak_device_bytes() const override { return device_bytes_; }
  int64_t kernels_per_decode_step(int64_t batch_size) const override {
    int64_t bucket = 1;
    while (bucket < batch_size) bucket *= 2;
    auto it = decode_graphs_.find(bucket > max_seqs_ ? batch_size : bucket);
    return it == decode_graphs_.end() ? 0 : it->second.kernel_nodes;
  }
  double copy_bandwidth_bytes_per_second() override;

  Status forward(const Batch& batch, float* logits) override;
  Status forward_argmax(const Batch& batch, int32_t* ids) override;
  Status forward_sample(const Batch& batch, std::span<const RowSampling> rows, int32_t* ids) override;
  Status forward_profiled(const Batch& batch, float* logits, std::vector<NodeTiming>& timings) override;

 private:
  Result<void*> device_alloc(size_t bytes, const char* what);
  Status check_batch(const Batch& batch) const;
  // Packs the batch (padded to `rows` tokens when a graph bucket is used) and uploads it.
  Status upload_batch(const Batch& batch, int64_t padded_tokens);
  Status launch_nodes(int64_t T, int64_t R, int64_t max_position, std::vector<NodeTiming>* timings);
  Status launch_swiglu_linear(size_t node, int64_t rows, bool fuse_norms);
  // y = x @ W^T (+ bias) for a node whose matrix is quantized: gemv_quant, or dequantize + cuBLASLt.
  Status quant_matmul(const NodeBinding& b, const void* x, int64_t rows, int64_t K, int64_t N, void* y,
                      DType y_dtype, bool has_bias);
  // How SwiGluLinear node `node` runs at `rows` rows (tactics, layout and size limits).
  SwiGluKernel swiglu_kernel_for(size_t node, int64_t rows) const;
  // Replays the decode graph of `bucket` rows (captured on first use, after one eager run).
  Status run_decode_graph(int64_t bucket);
  // want_ids: ids come back instead of logits, drawn under sampling[R] when given, else the argmax.
  Status run(const Batch& batch, bool want_ids, float* logits, int32_t* ids, std::vector<NodeTiming>* timings,
             const RowSampling* sampling = nullptr);
  char* value_ptr(int32_t v) const { return static_cast<char*>(arena_) + value_offset_[v]; }
  size_t elem(int32_t v) const { return v == graph_.logits_value ? 4 : 2; }

  Graph graph_;
  DType act_ = DType::F16;
  std::vector<NodeBinding> bindings_;
  std::vector<void*> allocations_;
  void* arena_ = nullptr;
  std::vector<int64_t> value_offset_;
  std::vector<cuda::PagedKv> kv_layers_;
  std::unique_ptr<cuda::CublasGemm> gemm_;
  cudaStream_t stream_ = nullptr;
  void* attention_workspace_ = nullptr;
  size_t attention_workspace_bytes_ = 0;

  // Batch metadata: one int32 buffer on the device and its pinned host mirror, laid out as
  // tokens[max_tokens] positions[max_tokens] token_seq[max_tokens] slots[max_tokens]
  // logit_rows[max_logit_rows] block_tables[max_seqs * max_blocks_per_seq]
  // sampling[max_logit_rows] (RowSampling, 5 x 4 bytes) ids[max_logit_rows]; one copy sends all but ids.
  int32_t* meta_device_ = nullptr;
  int32_t* meta_host_ = nullptr;
  int64_t meta_ints_ = 0;
  int32_t *d_tokens_, *d_positions_, *d_token_seq_, *d_slots_, *d_logit_rows_, *d_block_tables_, *d_ids_;
  RowSampling* d_sampling_ = nullptr;
  RowSampling* h_sampling_ = nullptr;  // its place in meta_host_
  float* logits_host_ = nullptr;  // pinned [max_logit_rows, vocab]

  struct GraphEntry {
    cudaGraphExec_t exec = nullptr;
    int64_t kernel_nodes = 0;
  };
  std::map<int64_t, GraphEntry> decode_graphs_;  // by padded batch size
  bool use_graphs_ = true;
  // Set while a decode step's nodes launch (one token per sequence): attention then fuses RoPE and the
  // KV write (cuda_decode_fuses_rope_kv). KILN_CUDA_DECODE_ROPE_KV=0 keeps rope_kv_write separate.
  bool decode_step_ = false;
  bool fuse_decode_rope_kv_ = true;
  // [node] for a Linear whose output only feeds a SwiGluLinear as its gate / up halves: that node
  // (cuda_glu_consumer), else -1. In decode steps where that node would run swiglu as its own kernel,
  // the Linear runs gemv_glu (the product at the front of its own output) and `glu_done_` tells the
  // node to skip its swiglu and read that. KILN_CUDA_GLU=0 keeps the separate swiglu kernel.
  std::vector<int> glu_consumer_;
  std::vector<char> glu_done_;  // [node], set by its gate_up in this launch_nodes call
  // Norms folded into GEMVs (decode steps, KILN_CUDA_NORM_FUSION=1): `residual_target_[i]` is the
  // AddRmsNorm whose r is node i's output (its only reader): node i's GEMV adds its result into the
  // residual stream itself (GemvFusion::residual_out) and marks `residual_done_`; `norm_consumer_[j]`
  // is the one Linear reading norm j's output whole: when it runs a GEMV, the norm is skipped and the
  // GEMV normalizes the residual stream as its input (GemvFusion::norm_weight, `norm_pending_`). A norm
  // whose add was done but whose consumer cannot take it runs as rms_norm.
  std::vector<int> residual_target_, norm_consumer_, norm_pending_;
  std::vector<char> residual_done_;
  bool fuse_norms_ = false;
  int smem_optin_ = 0;  // the device's opt-in shared memory per block, bytes
  // Whether Linear node `node` runs on the GEMV at `rows` rows (tactics, size and layout limits).
  bool linear_uses_gemv(size_t node, int64_t rows) const;
  bool fuse_glu_ = true;
  // Linear layers with at most this many rows use the GEMV kernel, others cuBLASLt. Measured on an
  // H100 (Llama-2-7B fp16, docs/PERFORMANCE.md): at 8 rows cuBLASLt decodes 1314 tok/s vs 1044 with
  // the GEMV; at 4 rows they tie (674 vs 665).
  int64_t gemv_max_rows_ = kCudaGemvMaxRows;
  // Quantized matrices: gemv_quant up to this many rows (KILN_CUDA_QUANT_GEMV_MAX_ROWS, 0..32), else
  // dequantize into dequant_scratch_ ([N, K] act dtype, sized at load for the largest such matrix) and
  // cuBLASLt. The GEMV reads 4-8 bits per weight once; the GEMM path writes and reads 16 more.
  int64_t quant_gemv_max_rows_ = cuda::kGemvQuantMaxRows;
  void* dequant_scratch_ = nullptr;
  std::map<std::tuple<int64_t, int64_t, int64_t>, bool> linear_tactics_;  // (M, N, K) -> use GEMV
  std::map<std::tuple<int64_t, int64_t, int64_t>, SwiGluKernel> swiglu_tactics_;  // SwiGluLinear (M, N, K)
  std::vector<int64_t> node_scratch_offset_;  // [node] arena byte offset of its scratch (-1: none)

  int64_t vocab_size_ = 0, max_tokens_ = 0, max_logit_rows_ = 0, max_seq_len_ = 0, max_seqs_ = 0;
  int64_t max_blocks_per_seq_ = 0, num_kv_blocks_ = 0, block_size_ = 0;
  int64_t weight_bytes_ = 0, arena_bytes_ = 0, kv_bytes_ = 0, device_bytes_ = 0;
  double copy_bandwidth_ = 0;
};

CudaBackend::~CudaBackend() {
  for (auto& [size, entry] : decode_graphs_) cudaGraphExecDestroy(entry.exec);
  gemm_.reset();
  for (void* p : allocations_) cudaFree(p);
  if (meta_host_) cudaFreeHost(meta_host_);
  if (logits_host_) cudaFreeHost(logits_host_);
  if (stream_) cudaStreamDestroy(stream_);
}

Result<void*> CudaBackend::device_alloc(size_t bytes, const char* what) {
  void* p = nullptr;
  const cudaError_t err = cudaMalloc(&p, std::max<size_t>(bytes, 256));
  if (err != cudaSuccess) {
    cudaGetLastError();
    size_t free_bytes = 0, total = 0;
    cudaMemGetInfo(&free_bytes, &total);
    return make_error("cuda: cannot allocate {:.2f} GiB for {} ({:.2f} GiB free of {:.2f}): {}", bytes / 1073741824.0, what,
                      free_bytes / 1073741824.0, total / 1073741824.0, cudaGetErrorString(err));
  }
  allocations_.push_back(p);
  device_bytes_ += static_cast<int64_t>(bytes);
  return p;
}

Status CudaBackend::init(const LoadedEngine& engine, const BackendOptions& options) {
  KILN_ASSIGN(const std::string arch, cuda_plugin::device_arch());
  if (!engine.metadata.contains("graph")) return make_error("engine has no graph");
  KILN_ASSIGN(graph_, Graph::from_json(engine.metadata["graph"]));
  try {
    max_seq_len_ = engine.metadata.at("profile").at("max_seq_len").get<int64_t>();
    max_seqs_ = engine.metadata.at("profile").at("max_batch").get<int64_t>();
  } catch (const nlohmann::json::exception& e) {
    return make_error("engine metadata: malformed profile: {}", e.what());
  }
  block_size_ = options.kv_block_size;
  max_blocks_per_seq_ = (max_seq_len_ + block_size_ - 1) / block_size_;
  const int64_t sequences = options.max_sequences > 0 ? std::min(options.max_sequences, max_seqs_) : max_seqs_;
  num_kv_blocks_ = options.num_kv_blocks > 0 ? options.num_kv_blocks : sequences * max_blocks_per_seq_;
  const bool cap_kv_by_memory = options.num_kv_blocks <= 0;
  // Large prefill steps keep the tensor cores busy and let a 2048-token prompt run as one step.
  max_tokens_ = options.max_tokens_per_step > 0 ? options.max_tokens_per_step
                                                : std::min<int64_t>(2048, max_seqs_ * max_seq_len_);
  max_logit_rows_ = std::max<int64_t>(options.max_logit_rows, max_seqs_);
  vocab_size_ = graph_.values[graph_.logits_value].width;
  use_graphs_ = options.cuda_graphs;
  // KILN_CUDA_GEMV_MAX_ROWS (0..8) moves the GEMV / cuBLASLt crossover, for measurements.
  if (const char* env = std::getenv("KILN_CUDA_GEMV_MAX_ROWS"); env && *env) {
    gemv_max_rows_ = std::clamp<int64_t>(std::atoll(env), 0, cuda::kGemvMaxRows);  // NOLINT(cert-err34-c)
  }
  if (const char* env = std::getenv("KILN_CUDA_QUANT_GEMV_MAX_ROWS"); env && *env) {
    quant_gemv_max_rows_ = std::clamp<int64_t>(std::atoll(env), 0, cuda::kGemvQuantMaxRows);  // NOLINT(cert-err34-c)
  }
  if (const char* env = std::getenv("KILN_CUDA_DECODE_ROPE_KV"); env && *env) fuse_decode_rope_kv_ = std::string(env) != "0";
  if (const char* env = std::getenv("KILN_CUDA_GLU"); env && *env) fuse_glu_ = std::string(env) != "0";
  if (const char* env = std::getenv("KILN_CUDA_NORM_FUSION"); env && *env) fuse_norms_ = std::string(env) == "1";
  KILN_TRY(check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate"));

  // Activation dtype: the engine's matrix dtype (all unquantized matrices share it; the embedding
  // table is one).
  bool have_act = false;
  for (const auto& [name, info] : graph_.weights) {
    if (info.shape.size() != 2 || info.quant) continue;
    if (info.dtype != DType::F16 && info.dtype != DType::BF16) {
      return make_error("engine: tensor '{}' is {}: the cuda backend runs fp16 or bf16 engines (build with --dtype fp16|bf16)",
                        name, dtype_name(info.dtype));
    }
    if (have_act && info.dtype != act_) return make_error("engine: matrices mix dtypes ({} and {})", dtype_name(act_), dtype_name(info.dtype));
    act_ = info.dtype;
    have_act = true;
  }
  if (!have_act) return make_error("engine: no fp16 or bf16 matrix gives the activation dtype (is the embedding table quantized?)");

  // (1) weights: one allocation, each tensor 256-byte aligned; a quantized matrix as its stored
  // tensors (codes, scales, mins), so weight_bytes counts what is read.
  std::map<std::string, size_t> weight_offset;
  size_t total = 0;
  for (const auto& [name, info] : graph_.weights) {
    for (const StoredTensor& stored : stored_tensors(name, info)) {
      const TensorView* t = engine.find(stored.name);
      if (!t) return make_error("engine: graph weight '{}' has no tensor '{}'", name, stored.name);
      if (t->dtype != stored.dtype || t->shape != stored.shape) {
        return make_error("engine: tensor '{}' disagrees with the graph", stored.name);
      }
      if (!info.quant && info.shape.size() == 1 && info.dtype != DType::F32) return make_error("engine: vector '{}' must be F32", name);
      weight_offset[stored.name] = total;
      total += (t->nbytes + 255) / 256 * 256;
    }
  }
  KILN_ASSIGN(void* weights, device_alloc(total, "weights"));
  weight_bytes_ = static_cast<int64_t>(total);
  for (const auto& [name, offset] : weight_offset) {
    const TensorView* t = engine.find(name);
    KILN_TRY(check(cudaMemcpy(static_cast<char*>(weights) + offset, t->data, t->nbytes, cudaMemcpyHostToDevice),
                   ("upload " + name).c_str()));
  }
  auto weight_ptr = [&](const std::string& name) { return static_cast<const void*>(static_cast<char*>(weights) + weight_offset[name]); };

  // (2) per-node bindings: weights, biases in the activation dtype, RoPE tables.
  std::map<std::string, std::pair<const float*, const float*>> rope_tables;
  int64_t num_layers = 0;
  std::vector<int64_t> layer_kv_heads, layer_head_dim;
  for (const Node& n : graph_.nodes) {
    NodeBinding b;
    for (const std::string& w : n.weights) b.weights.push_back(weight_ptr(w));
    for (size_t w = 0; w < n.weights.size(); ++w) {
      const WeightInfo& info = graph_.weights.at(n.weights[w]);
      if (!info.quant) continue;
      if (w != 0 || (n.op != OpKind::Linear && n.op != OpKind::SwiGluLinear)) {
        return make_error("cuda backend: node '{}' ({}) reads quantized weight '{}': only the matrix of a Linear or SwiGluLinear may be quantized",
                          n.name, op_name(n.op), n.weights[w]);
      }
      const int64_t N = graph_.values[n.output].width, K = n.inputs[0].width;
      if (info.shape != std::vector<int64_t>{N, K}) {
        return make_error("cuda backend: node '{}': quantized weight '{}' is [{}, {}], the node needs [{}, {}]", n.name,
                          n.weights[w], info.shape[0], info.shape[1], N, K);
      }
      const QuantInfo& q = *info.quant;
      if (q.act_bits != 0) {
        return make_error("cuda backend: weight '{}' is W8A8 (int8 activations): the cuda backend runs weight-only "
                          "int8 / int4 (build with --quant int8 or int4)", n.weights[w]);
      }
      b.quant = cuda::QuantWeightView{q.bits, q.group_size, q.scale_dtype, N, K,
                                      static_cast<const uint8_t*>(weight_ptr(n.weights[w])),
                                      weight_ptr(quant_scales_name(n.weights[w])),
                                      q.has_min ? weight_ptr(quant_mins_name(n.weights[w])) : nullptr};
    }
    if ((n.op == OpKind::Linear || n.op == OpKind::SwiGluLinear) && n.weights.size() > 1 && n.output != graph_.logits_value) {
      const TensorView* bias = engine.find(n.weights[1]);
      std::vector<uint16_t> converted(static_cast<size_t>(bias->numel()));
      const float* src = reinterpret_cast<const float*>(bias->data);
      for (size_t i = 0; i < converted.size(); ++i) converted[i] = act_ == DType::F16 ? f32_to_f16(src[i]) : f32_to_bf16(src[i]);
      KILN_ASSIGN(void* d, device_alloc(converted.size() * 2, "bias"));
      KILN_TRY(check(cudaMemcpy(d, converted.data(), converted.size() * 2, cudaMemcpyHostToDevice), "upload bias"));
      b.bias_act = d;
    }
    if (const std::optional<Node> rope = rope_of(n)) {
      const std::string key = rope_table_key(*rope);
      auto it = rope_tables.find(key);
      if (it == rope_tables.end()) {
        std::vector<float> cos, sin;
        kiln::rope_tables(*rope, max_seq_len_, cos, sin);
        KILN_ASSIGN(void* d, device_alloc(2 * cos.size() * sizeof(float), "rope tables"));
        float* dc = static_cast<float*>(d);
        KILN_TRY(check(cudaMemcpy(dc, cos.data(), cos.size() * 4, cudaMemcpyHostToDevice), "upload rope"));
        KILN_TRY(check(cudaMemcpy(dc + cos.size(), sin.data(), sin.size() * 4, cudaMemcpyHostToDevice), "upload rope"));
        it = rope_tables.emplace(key, std::make_pair(dc, dc + cos.size())).first;
      }
      b.rope_cos = it->second.first;
      b.rope_sin = it->second.second;
    }
    if (n.op == OpKind::Attention) {
      const int64_t l = static_cast<int64_t>(n.attr("layer"));
      num_layers = std::max(num_layers, l + 1);
      layer_kv_heads.resize(num_layers, 0);
      layer_head_dim.resize(num_layers, 0);
      layer_kv_heads[l] = static_cast<int64_t>(n.attr("num_kv_heads"));
      layer_head_dim[l] = static_cast<int64_t>(n.attr("head_dim"));
      if (graph_.values[n.inputs[1].value].width != graph_.values[n.inputs[2].value].width) {
        return make_error("cuda backend: node '{}': k and v rows must have the same stride", n.name);
      }
    }
    const bool whole_inputs = n.op == OpKind::Linear || n.op == OpKind::RmsNorm || n.op == OpKind::Add ||
                              n.op == OpKind::AddRmsNorm || n.op == OpKind::SelectLogitRows;
    for (const ValueRef& r : n.inputs) {
      if (whole_inputs && (r.col_offset != 0 || r.width != graph_.values[r.value].width)) {
        return make_error("cuda backend: node '{}' reads a column slice, which its kernel does not support", n.name);
      }
    }
    bindings_.push_back(std::move(b));
  }

  glu_consumer_.assign(graph_.nodes.size(), -1);
  glu_done_.assign(graph_.nodes.size(), 0);
  residual_target_.assign(graph_.nodes.size(), -1);
  norm_consumer_.assign(graph_.nodes.size(), -1);
  norm_pending_.assign(graph_.nodes.size(), -1);
  residual_done_.assign(graph_.nodes.size(), 0);
  if (fuse_norms_) {
    // Where norms can fold into GEMVs. The analysis asks only what the fusions need, not a Llama
    // layout: (a) the producer of r is r's only writer and only reader besides the norm, its input
    // is not the residual stream x, and no node between it and the norm reads x (the GEMV updates x
    // early); (b) the consumer is the node right after the norm, reads the norm's output whole and
    // alone, and x is read again after it (so the arena keeps x's buffer, not given to the consumer's
    // output, while the consumer's GEMV reads x). The final norm, whose input dies at it, stays a kernel.
    const size_t num_nodes = graph_.nodes.size();
    std::vector<std::vector<int>> readers(graph_.values.size());
    std::vector<int> writers(graph_.values.size(), 0);
    for (size_t j = 0; j < num_nodes; ++j) {
      for (const ValueRef& r : graph_.nodes[j].inputs) {
        if (readers[r.value].empty() || readers[r.value].back() != static_cast<int>(j)) readers[r.value].push_back(static_cast<int>(j));
      }
      ++writers[graph_.nodes[j].output];
    }
    const auto reads = [&](size_t k, int32_t v) {
      for (const ValueRef& r : graph_.nodes[k].inputs) if (r.value == v) return true;
      return false;
    };
    for (size_t j = 0; j < num_nodes; ++j) {
      const Node& norm = graph_.nodes[j];
      if (norm.op != OpKind::AddRmsNorm && norm.op != OpKind::RmsNorm) continue;
      const int64_t D = graph_.values[norm.output].width;
      const int32_t x = norm.inputs[0].value;
      if (norm.inputs[0].col_offset != 0 || norm.inputs[0].width != D || graph_.values[x].width != D) continue;
      if (norm.op == OpKind::AddRmsNorm) {
        const int32_t r = norm.inputs[1].value;
        if (norm.inputs[1].col_offset != 0 || norm.inputs[1].width != D) continue;
        for (size_t i = 0; i < j; ++i) {
          const Node& p = graph_.nodes[i];
          if (p.output != r || (p.op != OpKind::Linear && p.op != OpKind::SwiGluLinear)) continue;
          bool ok = writers[r] == 1 && readers[r].size() == 1 && graph_.values[r].width == D && !reads(i, x);
          for (size_t k = i + 1; k < j && ok; ++k) ok = !reads(k, x) && graph_.nodes[k].output != x;
          if (ok) residual_target_[i] = static_cast<int>(j);
        }
      }
      const std::vector<int>& y_readers = readers[norm.output];
      const size_t c = j + 1;
      if (y_readers.size() != 1 || y_readers[0] != static_cast<int>(c) || D % 8 != 0 || norm.output == graph_.logits_value) continue;
      const Node& consumer = graph_.nodes[c];
      const bool whole = consumer.inputs.size() == 1 && consumer.inputs[0].col_offset == 0 && consumer.inputs[0].width == D;
      const bool x_lives = readers[x].back() > static_cast<int>(c) && x != graph_.logits_value;
      if (consumer.op == OpKind::Linear && whole && x_lives && consumer.output != x) norm_consumer_[j] = static_cast<int>(c);
    }
    int device = 0;
    KILN_TRY(check(cudaGetDevice(&device), "cudaGetDevice"));
    KILN_TRY(check(cudaDeviceGetAttribute(&smem_optin_, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
                   "shared-memory limit"));
  }
  for (size_t i = 0; i < graph_.nodes.size(); ++i) glu_consumer_[i] = cuda_glu_consumer(graph_, i);

  // (3) KV cache, one [num_blocks, block_size, kv_heads, head_dim] pair per layer. Without an explicit
  // block count, the cache takes at most 90% of what is free after the weights, less 1.5 GiB kept for
  // the activations, workspaces and the CUDA context (vLLM's gpu_memory_utilization, in spirit).
  int64_t bytes_per_block = 0;
  for (int64_t l = 0; l < num_layers; ++l) bytes_per_block += 2 * block_size_ * layer_kv_heads[l] * layer_head_dim[l] * 2;
  if (cap_kv_by_memory && bytes_per_block > 0) {
    size_t free_bytes = 0, total_bytes = 0;
    KILN_TRY(check(cudaMemGetInfo(&free_bytes, &total_bytes), "cudaMemGetInfo"));
    const double usable = std::max(0.0, 0.9 * static_cast<double>(free_bytes) - 1.5 * 1073741824.0);
    const int64_t fit = static_cast<int64_t>(usable / static_cast<double>(bytes_per_block));
    if (fit < max_blocks_per_seq_) {
      return make_error("cuda: not enough device memory for the KV cache of one {}-token sequence ({:.2f} GiB free)",
                        max_seq_len_, free_bytes / 1073741824.0);
    }
    num_kv_blocks_ = std::min(num_kv_blocks_, fit);
  }
  kv_layers_.resize(num_layers);
  int64_t max_heads = 1, max_head_dim = 1;
  for (const Node& n : graph_.nodes) {
    if (n.op == OpKind::Attention) {
      max_heads = std::max(max_heads, static_cast<int64_t>(n.attr("num_heads")));
      max_head_dim = std::max(max_head_dim, static_cast<int64_t>(n.attr("head_dim")));
    }
  }
  for (int64_t l = 0; l < num_layers; ++l) {
    const size_t bytes = static_cast<size_t>(num_kv_blocks_ * block_size_ * layer_kv_heads[l] * layer_head_dim[l] * 2);
    if (bytes == 0) return make_error("cuda backend: layer {} has no attention node", l);
    KILN_ASSIGN(void* k, device_alloc(bytes, "KV cache"));
    KILN_ASSIGN(void* v, device_alloc(bytes, "KV cache"));
    kv_layers_[l] = cuda::PagedKv{k, v, num_kv_blocks_, block_size_, layer_kv_heads[l], layer_head_dim[l]};
    kv_bytes_ += static_cast<int64_t>(2 * bytes);
  }
  attention_workspace_bytes_ = cuda::attention_workspace_bytes(std::max(max_tokens_, max_seqs_), max_heads, max_head_dim, max_seq_len_);
  KILN_ASSIGN(attention_workspace_, device_alloc(attention_workspace_bytes_, "attention workspace"));
  // Its split-K arrival counters start at 0. On stream_ and synchronized: stream_ does not wait for
  // the legacy default stream, so a plain cudaMemset would not be ordered before the first step.
  KILN_TRY(check(cudaMemsetAsync(attention_workspace_, 0, std::max<size_t>(attention_workspace_bytes_, 256), stream_),
                 "zeroing the attention workspace"));
  KILN_TRY(check(cudaStreamSynchronize(stream_), "zeroing the attention workspace"));

  // (4) activation arena
  std::vector<int64_t> bytes(graph_.values.size());
  for (size_t v = 0; v < bytes.size(); ++v) {
    const int64_t rows = graph_.values[v].rows == RowSpace::Tokens ? std::max(max_tokens_, max_seqs_) : max_logit_rows_;
    bytes[v] = rows * graph_.values[v].width * static_cast<int64_t>(elem(static_cast<int32_t>(v)));
  }
  // A SwiGluLinear that runs swiglu + GEMM (prefill, or when tactics chose it) needs [rows, K] scratch.
  std::vector<int64_t> scratch(graph_.nodes.size(), 0);
  for (size_t i = 0; i < graph_.nodes.size(); ++i) {
    if (graph_.nodes[i].op != OpKind::SwiGluLinear) continue;
    const bool token_rows = graph_.values[graph_.nodes[i].output].rows == RowSpace::Tokens;
    scratch[i] = (token_rows ? std::max(max_tokens_, max_seqs_) : max_logit_rows_) *
                 graph_.nodes[i].inputs[0].width * 2;
  }
  KILN_ASSIGN(const ArenaPlan plan, plan_arena(graph_, bytes, 256, scratch));
  value_offset_ = plan.value_offset;
  node_scratch_offset_ = plan.node_scratch_offset;
  arena_bytes_ = plan.total_bytes;
  KILN_ASSIGN(arena_, device_alloc(static_cast<size_t>(plan.total_bytes), "activations"));

  // (5) batch metadata and host staging
  const int64_t token_rows = std::max(max_tokens_, max_seqs_);
  static_assert(sizeof(RowSampling) % 4 == 0 && alignof(RowSampling) == 4, "RowSampling packs into int32s");
  constexpr int64_t kSamplingInts = sizeof(RowSampling) / 4;
  meta_ints_ = 4 * token_rows + (2 + kSamplingInts) * max_logit_rows_ + max_seqs_ * max_blocks_per_seq_;
  KILN_ASSIGN(void* meta, device_alloc(static_cast<size_t>(meta_ints_) * 4, "batch metadata"));
  meta_device_ = static_cast<int32_t*>(meta);
  KILN_TRY(check(cudaMallocHost(&meta_host_, static_cast<size_t>(meta_ints_) * 4), "cudaMallocHost(metadata)"));
  KILN_TRY(check(cudaMallocHost(&logits_host_, static_cast<size_t>(max_logit_rows_ * vocab_size_) * 4), "cudaMallocHost(logits)"));
  d_tokens_ = meta_device_;
  d_positions_ = d_tokens_ + token_rows;
  d_token_seq_ = d_positions_ + token_rows;
  d_slots_ = d_token_seq_ + token_rows;
  d_logit_rows_ = d_slots_ + token_rows;
  d_block_tables_ = d_logit_rows_ + max_logit_rows_;
  d_sampling_ = reinterpret_cast<RowSampling*>(d_block_tables_ + max_seqs_ * max_blocks_per_seq_);
  h_sampling_ = reinterpret_cast<RowSampling*>(meta_host_ + (d_block_tables_ - meta_device_) +
                                               max_seqs_ * max_blocks_per_seq_);
  d_ids_ = reinterpret_cast<int32_t*>(d_sampling_ + max_logit_rows_);

  // (5b) the prefill path of quantized matrices: one scratch matrix for the largest that can see more
  // rows than the GEMV takes (nodes run one after another on one stream, so one buffer serves all).
  int64_t dequant_bytes = 0;
  for (size_t i = 0; i < graph_.nodes.size(); ++i) {
    if (!bindings_[i].quant) continue;
    const bool token_rows = graph_.values[graph_.nodes[i].output].rows == RowSpace::Tokens;
    const int64_t most_rows = token_rows ? std::max(max_tokens_, max_seqs_) : max_logit_rows_;
    if (most_rows > quant_gemv_max_rows_) dequant_bytes = std::max(dequant_bytes, bindings_[i].quant->rows * bindings_[i].quant->cols * 2);
  }
  if (dequant_bytes > 0) {
    KILN_ASSIGN(dequant_scratch_, device_alloc(static_cast<size_t>(dequant_bytes), "dequantized weights (prefill)"));
  }

  KILN_ASSIGN(gemm_, cuda::CublasGemm::create(size_t{32} << 20));
  device_bytes_ += 32 << 20;

  // (6) tactics chosen at build time on this GPU kind: GEMV or cuBLASLt (and its algorithm) per
  // Linear shape and row count; shapes without one fall back to the measured crossover.
  if (engine.metadata.contains("tactics") && engine.metadata["tactics"].is_object()) {
    try {
      const nlohmann::json& tactics = engine.metadata["tactics"];
      // An algorithm index names an entry of cuBLASLt's heuristic list: meaningful only under the
      // cuBLASLt release that timed it (engines without the field predate it and are pinned as before).
      const bool pin_algos = !tactics.contains("cublaslt_version") ||
                             tactics.at("cublaslt_version").get<uint64_t>() == static_cast<uint64_t>(cublasLtGetVersion());
      for (const auto& t : tactics.at("linear")) {
        const int64_t M = t.at("m").get<int64_t>(), N = t.at("n").get<int64_t>(), K = t.at("k").get<int64_t>();
        const std::string kernel = t.at("kernel").get<std::string>();
        const bool use_gemv = kernel == "gemv" || kernel == "gemv_swiglu";
        if (t.value("op", std::string("linear")) == "swiglu_linear") {
          swiglu_tactics_[{M, N, K}] = kernel == "gemv_swiglu" ? SwiGluKernel::kFusedGemv
                                       : kernel == "gemv"      ? SwiGluKernel::kSwiGluGemv
                                                               : SwiGluKernel::kSwiGluGemm;
        } else {
          linear_tactics_[{M, N, K}] = use_gemv;
        }
        if (!use_gemv && pin_algos && t.contains("algo")) {
          const auto y_dtype = dtype_from_name(t.at("y_dtype").get<std::string>());
          if (!y_dtype) return make_error("engine tactics: bad y_dtype");
          const int algo = t.at("algo").get<int>();
          if (algo < 0 || algo >= cuda::CublasGemm::kMaxCandidates) {
            return make_error("engine tactics: cuBLASLt algorithm index {} for [M={}, N={}, K={}] is outside 0..{}",
                              algo, M, N, K, cuda::CublasGemm::kMaxCandidates - 1);
          }
          // A candidate the heuristic no longer offers here (another GPU of the same architecture,
          // say) leaves the shape on the heuristic's top choice: slower perhaps, never wrong.
          for (const bool bias : {false, true}) (void)gemm_->pin(M, K, N, N, act_, *y_dtype, bias, algo);
        }
      }
    } catch (const nlohmann::json::exception& e) {
      return make_error("engine metadata: malformed tactics: {}", e.what());
    }
  }
  (void)arch;
  return Status::Ok();
}

Status CudaBackend::check_batch(const Batch& batch) const {
  return validate_batch(batch, BatchLimits{max_tokens_, max_logit_rows_, max_seqs_, vocab_size_, max_seq_len_, num_kv_blocks_, block_size_});
}

Status CudaBackend::upload_batch(const Batch& batch, int64_t padded) {
  const int64_t T = batch.num_tokens();
  const int64_t token_rows = std::max(max_tokens_, max_seqs_);
  int32_t* tokens = meta_host_;
  int32_t* positions = tokens + token_rows;
  int32_t* token_seq = positions + token_rows;
  int32_t* slots = token_seq + token_rows;
  int32_t* logit_rows = slots + token_rows;
  int32_t* tables = logit_rows + max_logit_rows_;
  for (int64_t i = 0; i < padded; ++i) {
    if (i < T) {
      tokens[i] = batch.tokens[i];
      positions[i] = batch.positions[i];
      token_seq[i] = batch.token_seq[i];
      const int32_t block = batch.block_tables[batch.token_seq[i] * batch.max_blocks_per_seq + batch.positions[i] / block_size_];
      slots[i] = static_cast<int32_t>(block * block_size_ + batch.positions[i] % block_size_);
    } else {  // padding: reads block 0 at position 0 of a spare table row, writes nothing
      tokens[i] = 0;
      positions[i] = 0;
      token_seq[i] = static_cast<int32_t>(std::min<int64_t>(i, max_seqs_ - 1));
      slots[i] = -1;
    }
  }
  const int64_t R = padded > T ? padded : static_cast<int64_t>(batch.logit_rows.size());
  for (int64_t r = 0; r < R; ++r) logit_rows[r] = r < static_cast<int64_t>(batch.logit_rows.size()) ? batch.logit_rows[r] : static_cast<int32_t>(r);
  const int64_t seqs = padded > T ? std::max<int64_t>(batch.num_seqs(), std::min(padded, max_seqs_)) : batch.num_seqs();
  const int64_t copy_blocks = std::min<int64_t>(batch.max_blocks_per_seq, max_blocks_per_seq_);
  for (int64_t s = 0; s < seqs; ++s) {
    int32_t* row = tables + s * max_blocks_per_seq_;
    std::fill(row, row + max_blocks_per_seq_, 0);
    if (s < batch.num_seqs()) std::copy_n(batch.block_tables.begin() + s * batch.max_blocks_per_seq, copy_blocks, row);
  }
  // One copy of the whole metadata region (small: a few KB).
  return check(cudaMemcpyAsync(meta_device_, meta_host_, static_cast<size_t>(meta_ints_ - max_logit_rows_) * 4,
                               cudaMemcpyHostToDevice, stream_),
               "upload batch metadata");
}

Status CudaBackend::launch_nodes(int64_t T, int64_t R, int64_t max_position, std::vector<NodeTiming>* timings) {
  std::fill(glu_done_.begin(), glu_done_.end(), 0);
  std::fill(residual_done_.begin(), residual_done_.end(), 0);
  std::fill(norm_pending_.begin(), norm_pending_.end(), -1);
  const bool fuse_norms = decode_step_ && fuse_norms_;
  cudaEvent_t start = nullptr, stop = nullptr;
  if (timings) {
    cudaEventCreate(&start);
    cudaEventCreate(&stop);
  }
  for (size_t i = 0; i < graph_.nodes.size(); ++i) {
    const Node& n = graph_.nodes[i];
    const NodeBinding& b = bindings_[i];
    if (timings) cudaEventRecord(start, stream_);
    void* out = value_ptr(n.output);
    const int64_t width = graph_.values[n.output].width;
    const int64_t rows = graph_.values[n.output].rows == RowSpace::Tokens ? T : R;
    if (rows == 0) continue;  // a prefill chunk that asks for no logits skips the logit-row tail
    const float eps = static_cast<float>(n.attr("eps"));
    switch (n.op) {
      case OpKind::Embedding:
        KILN_TRY(cuda::embedding(d_tokens_, T, b.weights[0], graph_.weights.at(n.weights[0]).shape[0], width, out, act_, stream_));
        break;
      case OpKind::RmsNorm:
      case OpKind::AddRmsNorm: {
        const bool add = n.op == OpKind::AddRmsNorm && !residual_done_[i];
        const int c = norm_consumer_[i];
        // The consumer normalizes its staged input: [rows, width] must fit shared memory (gemv.cu).
        if (fuse_norms && !add && c >= 0 && linear_uses_gemv(static_cast<size_t>(c), rows) &&
            rows * width * 2 + 4096 <= smem_optin_) {
          norm_pending_[static_cast<size_t>(c)] = static_cast<int>(i);  // the consumer's GEMV normalizes
          break;
        }
        if (add) {
          KILN_TRY(cuda::add_rms_norm(value_ptr(n.inputs[0].value), value_ptr(n.inputs[1].value),
                                      static_cast<const float*>(b.weights[0]), rows, width, eps, out, act_, stream_));
        } else {  // plain, or its add done by the GEMV that produced r
          KILN_TRY(cuda::rms_norm(value_ptr(n.inputs[0].value), static_cast<const float*>(b.weights[0]), rows, width,
                                  eps, out, act_, stream_));
        }
        break;
      }
      case OpKind::Linear: {
        const int64_t K = n.inputs[0].width;
        const DType y_dtype = n.output == graph_.logits_value ? DType::F32 : act_;
        const bool has_bias = n.weights.size() > 1;
        if (b.quant) {  // no fusions (gemv_glu, norms) on quantized matrices
          KILN_TRY(quant_matmul(b, value_ptr(n.inputs[0].value), rows, K, width, out, y_dtype, has_bias));
          break;
        }
        const bool use_gemv = linear_uses_gemv(i, rows);
        const int glu = glu_consumer_[i];
        // The GEMV's fusions: the norm before it (its input is then the residual stream), the
        // residual add after it (its output is then the residual stream).
        cuda::GemvFusion fusion;
        const void* x = value_ptr(n.inputs[0].value);
        void* y = out;
        if (const int norm = norm_pending_[i]; norm >= 0) {
          if (!use_gemv) return make_error("cuda backend: node '{}': its norm was left to a GEMV it does not run", n.name);
          const Node& nn = graph_.nodes[static_cast<size_t>(norm)];
          x = value_ptr(nn.inputs[0].value);
          fusion.norm_weight = static_cast<const float*>(bindings_[static_cast<size_t>(norm)].weights[0]);
          fusion.norm_eps = static_cast<float>(nn.attr("eps"));
        }
        const int residual = fuse_norms && use_gemv && norm_pending_[i] < 0 ? residual_target_[i] : -1;
        if (residual >= 0) {
          y = value_ptr(graph_.nodes[static_cast<size_t>(residual)].inputs[0].value);
          fusion.residual_out = true;
        }
        if (use_gemv && decode_step_ && fuse_glu_ && glu >= 0 &&
            swiglu_kernel_for(static_cast<size_t>(glu), rows) != SwiGluKernel::kFusedGemv) {
          // SwiGLU in this GEMV's epilogue: the product [rows, width / 2] goes to the front of this
          // node's own output (live until the consumer, its only reader, which multiplies it next).
          KILN_TRY(cuda::gemv_glu(x, rows, K, b.weights[0], width / 2,
                                  has_bias ? static_cast<const float*>(b.weights[1]) : nullptr, out, width / 2,
                                  act_, stream_, fusion));
          glu_done_[static_cast<size_t>(glu)] = 1;
        } else if (use_gemv) {
          KILN_TRY(cuda::gemv(x, rows, K, b.weights[0], width, has_bias ? static_cast<const float*>(b.weights[1]) : nullptr,
                              y, width, act_, y_dtype, stream_, fusion));
          if (residual >= 0) residual_done_[static_cast<size_t>(residual)] = 1;
        } else {
          const void* bias = has_bias ? (y_dtype == DType::F32 ? b.weights[1] : b.bias_act) : nullptr;
          KILN_TRY(gemm_->run(value_ptr(n.inputs[0].value), rows, K, b.weights[0], width, bias, out, width, act_, y_dtype, stream_));
        }
        break;
      }
      case OpKind::Rope:
        KILN_TRY(cuda::rope(out, rows, width, n.inputs[0].col_offset, static_cast<int64_t>(n.attr("num_heads")),
                            static_cast<int64_t>(n.attr("head_dim")), d_positions_, b.rope_cos, b.rope_sin,
                            n.attr("interleaved") != 0.0, act_, stream_));
        break;
      case OpKind::Attention: {
        const ValueRef &q = n.inputs[0], &k = n.inputs[1], &v = n.inputs[2];
        const cuda::PagedKv& kv = kv_layers_[static_cast<size_t>(n.attr("layer"))];
        const int64_t head_dim = static_cast<int64_t>(n.attr("head_dim"));
        const int64_t q_ld = graph_.values[q.value].width, k_ld = graph_.values[k.value].width;
        const int64_t v_ld = graph_.values[v.value].width;
        char* q_ptr = value_ptr(q.value) + q.col_offset * 2;
        char* k_ptr = value_ptr(k.value) + k.col_offset * 2;
        const char* v_ptr = value_ptr(v.value) + v.col_offset * 2;
        const cuda::AttentionBatch ab{T, d_token_seq_, d_positions_, d_block_tables_, max_blocks_per_seq_, max_position};
        const int64_t num_heads = static_cast<int64_t>(n.attr("num_heads"));
        const float scale = static_cast<float>(n.attr("scale"));
        if (decode_step_ && fuse_decode_rope_kv_ && cuda_decode_fuses_rope_kv(graph_, n)) {
          // One token per sequence: the split-K kernel rotates q and k and writes the cache itself.
          const cuda::NewTokens fresh{k_ptr, k_ld, v_ptr, v_ld, d_slots_, b.rope_cos, b.rope_sin,
                                      n.attr("rope_interleaved") != 0.0};
          KILN_TRY(cuda::paged_attention_decode(q_ptr, q_ld, ab, fresh, kv, num_heads, scale, out, attention_workspace_,
                                                attention_workspace_bytes_, act_, stream_));
          break;
        }
        // One kernel rotates q and k and writes the cache where its 16-byte layout holds.
        if (b.rope_cos && cuda_attention_vector_layout(graph_, n)) {
          KILN_TRY(cuda::rope_kv_write(q_ptr, q_ld, num_heads, k_ptr, k_ld, v_ptr, v_ld, T,
                                       d_positions_, b.rope_cos, b.rope_sin, n.attr("rope_interleaved") != 0.0, d_slots_,
                                       kv, act_, stream_));
        } else {
          if (b.rope_cos) {
            const bool interleaved = n.attr("rope_interleaved") != 0.0;
            KILN_TRY(cuda::rope(value_ptr(q.value), T, q_ld, q.col_offset, num_heads, head_dim,
                                d_positions_, b.rope_cos, b.rope_sin, interleaved, act_, stream_));
            KILN_TRY(cuda::rope(value_ptr(k.value), T, k_ld, k.col_offset, static_cast<int64_t>(n.attr("num_kv_heads")),
                                head_dim, d_positions_, b.rope_cos, b.rope_sin, interleaved, act_, stream_));
          }
          KILN_TRY(cuda::kv_cache_write(k_ptr, v_ptr, T, k_ld, d_slots_, kv, act_, stream_));
        }
        KILN_TRY(cuda::paged_attention(q_ptr, q_ld, ab, kv, num_heads, scale, out, attention_workspace_,
                                       attention_workspace_bytes_, act_, stream_));
        break;
      }
      case OpKind::SwiGluLinear:
        KILN_TRY(launch_swiglu_linear(i, rows, fuse_norms));
        break;
      case OpKind::SwiGlu: {
        const ValueRef &gate = n.inputs[0], &up = n.inputs[1];
        KILN_TRY(cuda::swiglu(value_ptr(gate.value) + gate.col_offset * 2, graph_.values[gate.value].width,
                              value_ptr(up.value) + up.col_offset * 2, graph_.values[up.value].width, rows, width, out, act_, stream_));
        break;
      }
      case OpKind::Add:
        KILN_TRY(cuda::add(out, value_ptr(n.inputs[1].value), rows, width, act_, stream_));
        break;
      case OpKind::SelectLogitRows:
        KILN_TRY(cuda::gather_rows(value_ptr(n.inputs[0].value), d_logit_rows_, R, width, out, act_, stream_));
        break;
    }
    if (timings) {
      cudaEventRecord(stop, stream_);
      cudaEventSynchronize(stop);
      float ms = 0;
      cudaEventElapsedTime(&ms, start, stop);
      timings->push_back(NodeTiming{n.name, std::string(op_name(n.op)), ms});
    }
  }
  if (timings) {
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
  }
  return Status::Ok();
}

Status CudaBackend::launch_swiglu_linear(size_t i, int64_t rows, bool fuse_norms) {
  const Node& n = graph_.nodes[i];
  const NodeBinding& b = bindings_[i];
  const ValueRef &gate = n.inputs[0], &up = n.inputs[1];
  const int64_t K = gate.width, N = graph_.values[n.output].width;
  const int64_t gate_ld = graph_.values[gate.value].width, up_ld = graph_.values[up.value].width;
  const char* gate_ptr = value_ptr(gate.value) + gate.col_offset * 2;
  const char* up_ptr = value_ptr(up.value) + up.col_offset * 2;
  const DType y_dtype = n.output == graph_.logits_value ? DType::F32 : act_;
  const bool has_bias = n.weights.size() > 1;
  const float* bias_f32 = has_bias ? static_cast<const float*>(b.weights[1]) : nullptr;
  void* out = value_ptr(n.output);
  if (b.quant) {  // swiglu into the node's scratch, then the quantized matrix
    void* act = static_cast<char*>(arena_) + node_scratch_offset_[i];
    KILN_TRY(cuda::swiglu(gate_ptr, gate_ld, up_ptr, up_ld, rows, K, act, act_, stream_));
    return quant_matmul(b, act, rows, K, N, out, y_dtype, has_bias);
  }
  const SwiGluKernel kernel = swiglu_kernel_for(i, rows);
  const bool glu_done = glu_done_[i] != 0;  // gate_up's gemv_glu wrote the product
  glu_done_[i] = 0;
  if (glu_done && kernel == SwiGluKernel::kFusedGemv) {
    return make_error("cuda backend: node '{}': gate_up applied SwiGLU but the node reads gate and up", n.name);
  }
  // The residual add folded into the GEMV (its output is then the residual stream; not with cuBLASLt).
  cuda::GemvFusion fusion;
  void* y = out;
  const int residual = fuse_norms && kernel != SwiGluKernel::kSwiGluGemm ? residual_target_[i] : -1;
  if (residual >= 0) {
    y = value_ptr(graph_.nodes[static_cast<size_t>(residual)].inputs[0].value);
    fusion.residual_out = true;
    residual_done_[static_cast<size_t>(residual)] = 1;
  }
  if (kernel == SwiGluKernel::kFusedGemv) {
    return cuda::gemv_swiglu(gate_ptr, gate_ld, up_ptr, up_ld, rows, K, b.weights[0], N, bias_f32, y, N,
                             act_, y_dtype, stream_, fusion);
  }
  // SwiGLU into the node's scratch, then the plain GEMV or cuBLASLt on it; or the product gemv_glu
  // left at the front of the gate_up output ([rows, K] contiguous: gate starts at column 0).
  void* act = glu_done ? static_cast<void*>(value_ptr(gate.value)) : static_cast<char*>(arena_) + node_scratch_offset_[i];
  if (!glu_done) KILN_TRY(cuda::swiglu(gate_ptr, gate_ld, up_ptr, up_ld, rows, K, act, act_, stream_));
  if (kernel == SwiGluKernel::kSwiGluGemv) {
    return cuda::gemv(act, rows, K, b.weights[0], N, bias_f32, y, N, act_, y_dtype, stream_, fusion);
  }
  const void* bias = has_bias ? (y_dtype == DType::F32 ? b.weights[1] : b.bias_act) : nullptr;
  return gemm_->run(act, rows, K, b.weights[0], N, bias, out, N, act_, y_dtype, stream_);
}

Status CudaBackend::quant_matmul(const NodeBinding& b, const void* x, int64_t rows, int64_t K, int64_t N, void* y,
                                 DType y_dtype, bool has_bias) {
  if (rows <= quant_gemv_max_rows_) {
    return cuda::gemv_quant(x, rows, *b.quant, has_bias ? static_cast<const float*>(b.weights[1]) : nullptr, y, N,
                            act_, y_dtype, stream_);
  }
  KILN_TRY(cuda::dequantize(*b.quant, dequant_scratch_, act_, stream_));
  const void* bias = has_bias ? (y_dtype == DType::F32 ? b.weights[1] : b.bias_act) : nullptr;
  return gemm_->run(x, rows, K, dequant_scratch_, N, bias, y, N, act_, y_dtype, stream_);
}

// The plain GEMV (fp16/bf16 weights); false for a quantized matrix, which runs quant_matmul and takes
// none of the GEMV's fusions.
bool CudaBackend::linear_uses_gemv(size_t i, int64_t rows) const {
  if (bindings_[i].quant) return false;
  const Node& n = graph_.nodes[i];
  const int64_t K = n.inputs[0].width, width = graph_.values[n.output].width;
  const auto tactic = linear_tactics_.find({rows, width, K});
  return K % 8 == 0 && rows <= cuda::kGemvMaxRows &&
         (tactic != linear_tactics_.end() ? tactic->second : rows <= gemv_max_rows_);
}

SwiGluKernel CudaBackend::swiglu_kernel_for(size_t i, int64_t rows) const {
  const Node& n = graph_.nodes[i];
  const int64_t K = n.inputs[0].width, N = graph_.values[n.output].width;
  const bool gemv_ok = rows <= cuda::kGemvMaxRows && K % 8 == 0;
  SwiGluKernel kernel =
      gemv_ok && rows <= gemv_max_rows_ ? SwiGluKernel::kFusedGemv : SwiGluKernel::kSwiGluGemm;
  if (const auto tactic = swiglu_tactics_.find({rows, N, K}); tactic != swiglu_tactics_.end())
    kernel = tactic->second;
  if (kernel != SwiGluKernel::kSwiGluGemm && !gemv_ok) kernel = SwiGluKernel::kSwiGluGemm;
  if (kernel == SwiGluKernel::kFusedGemv && !cuda_gemv_swiglu_layout(graph_, n)) kernel = SwiGluKernel::kSwiGluGemv;
  return kernel;
}

Status CudaBackend::run_decode_graph(int64_t bucket) {
  auto it = decode_graphs_.find(bucket);
  if (it == decode_graphs_.end()) {
    // First use of this bucket: run eagerly (creates the GEMM plans), then capture for next time.
    KILN_TRY(launch_nodes(bucket, bucket, max_seq_len_, nullptr));
    cudaGraph_t graph;
    KILN_TRY(check(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture"));
    const Status launched = launch_nodes(bucket, bucket, max_seq_len_, nullptr);
    const cudaError_t ended = cudaStreamEndCapture(stream_, &graph);
    KILN_TRY(launched);
    KILN_TRY(check(ended, "cudaStreamEndCapture"));
    GraphEntry entry;
    size_t num_nodes = 0;
    KILN_TRY(check(cudaGraphGetNodes(graph, nullptr, &num_nodes), "cudaGraphGetNodes"));
    std::vector<cudaGraphNode_t> nodes(num_nodes);
    KILN_TRY(check(cudaGraphGetNodes(graph, nodes.data(), &num_nodes), "cudaGraphGetNodes"));
    for (cudaGraphNode_t node : nodes) {
      cudaGraphNodeType type;
      if (cudaGraphNodeGetType(node, &type) == cudaSuccess && type == cudaGraphNodeTypeKernel) ++entry.kernel_nodes;
    }
    KILN_TRY(check(cudaGraphInstantiate(&entry.exec, graph, 0), "cudaGraphInstantiate"));
    cudaGraphDestroy(graph);
    decode_graphs_[bucket] = entry;
  } else {
    KILN_TRY(check(cudaGraphLaunch(it->second.exec, stream_), "cudaGraphLaunch (decode step)"));
  }
  return Status::Ok();
}

Status CudaBackend::run(const Batch& batch, bool want_ids, float* logits, int32_t* ids,
                        std::vector<NodeTiming>* timings, const RowSampling* sampling) {
  KILN_TRY(check_batch(batch));
  const int64_t T = batch.num_tokens();
  const int64_t R_real = static_cast<int64_t>(batch.logit_rows.size());
  // The rows travel in the metadata copy (the previous step synchronized: the pinned mirror is free).
  if (sampling && R_real > 0) {
    std::memcpy(h_sampling_, sampling, static_cast<size_t>(R_real) * sizeof(RowSampling));
  }
  // A pure decode step: one token per sequence, logits for every token.
  bool decode = !timings && use_graphs_ && T == batch.num_seqs() && R_real == T;
  for (int64_t i = 0; decode && i < T; ++i) decode = batch.token_seq[i] == i && batch.logit_rows[i] == i;
  int64_t bucket = 1;
  while (bucket < T) bucket *= 2;
  if (bucket > max_seqs_) bucket = T;  // beyond the largest bucket: exact size
  if (decode) {
    KILN_TRY(upload_batch(batch, bucket));
    decode_step_ = true;  // reset below, on every path out of this block
    const Status status = run_decode_graph(bucket);
    decode_step_ = false;
    KILN_TRY(status);
  } else {
    KILN_TRY(upload_batch(batch, T));
    int32_t max_position = 0;
    for (int32_t p : batch.positions) max_position = std::max(max_position, p);
    KILN_TRY(launch_nodes(T, R_real, max_position + 1, timings));
  }
  const float* d_logits = reinterpret_cast<const float*>(value_ptr(graph_.logits_value));
  if (R_real == 0) return check(cudaStreamSynchronize(stream_), "forward");
  if (want_ids) {
    if (sampling) {
      KILN_TRY(cuda::sample(d_logits, R_real, vocab_size_, d_sampling_, d_ids_, stream_));
    } else {
      KILN_TRY(cuda::argmax(d_logits, R_real, vocab_size_, d_ids_, stream_));
    }
    KILN_TRY(check(cudaMemcpyAsync(ids, d_ids_, static_cast<size_t>(R_real) * 4, cudaMemcpyDeviceToHost, stream_), "copy ids"));
    KILN_TRY(check(cudaStreamSynchronize(stream_), "forward (argmax)"));
    // argmax leaves INT_MAX where no logit compares greater than -FLT_MAX: a row of NaN (or -inf).
    for (int64_t r = 0; r < R_real; ++r) {
      if (ids[r] < 0 || ids[r] >= vocab_size_) {
        return make_error("forward: logit row {} has no finite value (NaN or -inf everywhere): the activations "
                          "overflowed {} (or the weights hold NaN)", r, dtype_name(act_));
      }
    }
    return Status::Ok();
  }
  const size_t bytes = static_cast<size_t>(R_real * vocab_size_) * 4;
  KILN_TRY(check(cudaMemcpyAsync(logits_host_, d_logits, bytes, cudaMemcpyDeviceToHost, stream_), "copy logits"));
  KILN_TRY(check(cudaStreamSynchronize(stream_), "forward"));
  std::memcpy(logits, logits_host_, bytes);
  return Status::Ok();
}

Status CudaBackend::forward(const Batch& batch, float* logits) { return run(batch, false, logits, nullptr, nullptr); }
Status CudaBackend::forward_argmax(const Batch& batch, int32_t* ids) { return run(batch, true, nullptr, ids, nullptr); }
Status CudaBackend::forward_sample(const Batch& batch, std::span<const RowSampling> rows, int32_t* ids) {
  if (rows.size() != batch.logit_rows.size()) {
    return make_error("forward_sample: {} sampling rows for {} logit rows", rows.size(),
                      batch.logit_rows.size());
  }
  return run(batch, true, nullptr, ids, nullptr, rows.data());
}
Status CudaBackend::forward_profiled(const Batch& batch, float* logits, std::vector<NodeTiming>& timings) {
  timings.clear();
  return run(batch, false, logits, nullptr, &timings);
}

double CudaBackend::copy_bandwidth_bytes_per_second() {
  if (copy_bandwidth_ > 0) return copy_bandwidth_;
  const size_t bytes = size_t{1} << 30;
  void *a = nullptr, *b = nullptr;
  if (cudaMalloc(&a, bytes) != cudaSuccess || cudaMalloc(&b, bytes) != cudaSuccess) {
    cudaGetLastError();
    if (a) cudaFree(a);
    return 0;
  }
  cudaMemset(a, 1, bytes);
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  float best_ms = 1e30f;
  for (int rep = 0; rep < 6; ++rep) {
    cudaEventRecord(start, stream_);
    cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, stream_);
    cudaEventRecord(stop, stream_);
    cudaEventSynchronize(stop);
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    if (rep > 0) best_ms = std::min(best_ms, ms);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cudaFree(a);
  cudaFree(b);
  copy_bandwidth_ = 2.0 * static_cast<double>(bytes) / (best_ms * 1e-3);
  return copy_bandwidth_;
}

}  // namespace

Result<std::unique_ptr<Backend>> cuda_plugin::create_backend(const LoadedEngine& engine, const BackendOptions& options) {
  auto backend = std::make_unique<CudaBackend>();
  KILN_TRY(backend->init(engine, options));
  return std::unique_ptr<Backend>(std::move(backend));
}

}  // namespace kiln

// The plugin's one exported symbol (see backend/cuda_plugin.h).
extern "C" __attribute__((visibility("default"))) const kiln::CudaPluginApi* kiln_cuda_plugin_api() {
  static const kiln::CudaPluginApi api{kiln::kCudaPluginAbiVersion, &kiln::cuda_plugin::create_backend,
                                       &kiln::cuda_plugin::device_arch, &kiln::cuda_plugin::select_tactics};
  return &api;
}
