// The CPU backend: interprets the engine graph node by node with the kernels of backend/cpu.
//
// At load it (1) binds every graph weight to its tensor in the mapped engine (no copy), (2) builds
// RoPE cos/sin tables for the profile's max sequence length, (3) plans the activation arena from
// value lifetimes so values that are never live together share a buffer, and (4) allocates the
// paged KV cache in the element type the engine's build metadata names (backend/kv_cache_dtype.h: f32
// when absent, f16, or int8 codes + per-(token, head) scales). forward() then allocates nothing.
#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstring>
#include <map>
#include <optional>
#include <thread>

#include <sys/mman.h>
#include <unistd.h>

#include <fmt/format.h>

#include "backend/arena_plan.h"
#include "backend/backend.h"
#include "backend/cpu/bandwidth.h"
#include "backend/cpu/kernels.h"
#include "backend/cpu/thread_pool.h"
#include "backend/kv_cache_dtype.h"
#include "engine/engine_file.h"
#include "graph/graph.h"

namespace kiln {

namespace {

struct BoundWeight {
  const void* data = nullptr;
  DType dtype = DType::F32;
  std::optional<QuantMatrixView> quant;  // a quantized matrix (data = its codes)
  bool bf16_prefill = false;             // quant: prefill in BF16 arithmetic (a BF16 engine's matrices)
};

// y = x @ W^T (+ bias) for a plain or quantized weight.
void linear(const float* x, int64_t rows, int64_t K, const BoundWeight& w, int64_t N, const float* bias, float* y,
            cpu::ThreadPool& pool) {
  if (w.quant) {
    cpu::matmul_quant(x, rows, K, *w.quant, bias, y, N, pool, w.bf16_prefill);
  } else {
    cpu::matmul(x, rows, K, w.data, w.dtype, N, bias, y, N, pool);
  }
}

struct RopeTable {
  std::vector<float> cos;  // [max_positions, head_dim / 2]
  std::vector<float> sin;
};

// out[rows, F] = silu(gate) * up, gate and up column slices of (possibly one) wider value.
void swiglu_slices(const float* gate, int64_t gate_stride, const float* up, int64_t up_stride, int64_t rows,
                   int64_t F, float* out) {
  if (gate_stride == 2 * F && up_stride == 2 * F && up == gate + F) {
    cpu::swiglu(gate, rows, F, out);  // fused gate_up layout
    return;
  }
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t f = 0; f < F; ++f) {
      const float x = gate[r * gate_stride + f];
      out[r * F + f] = x / (1.0f + std::exp(-x)) * up[r * up_stride + f];
    }
  }
}

// Zero-filled memory that the OS commits page by page as it is first written (an anonymous private
// mapping): a KV cache sized for the model's whole context costs resident memory only for the
// positions actually stored, so a long default max_seq_len is cheap for short conversations.
class LazyZeroMemory {
 public:
  LazyZeroMemory() = default;
  LazyZeroMemory(const LazyZeroMemory&) = delete;
  LazyZeroMemory& operator=(const LazyZeroMemory&) = delete;
  ~LazyZeroMemory() {
    if (data_) munmap(data_, bytes_);
  }
  Status allocate(size_t bytes) {
    if (bytes == 0) return Status::Ok();
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return make_error("cpu backend: cannot reserve {:.2f} GiB for the KV cache", bytes / 1073741824.0);
    data_ = static_cast<uint8_t*>(p);
    bytes_ = bytes;
    return Status::Ok();
  }
  uint8_t* data() const { return data_; }

 private:
  uint8_t* data_ = nullptr;
  size_t bytes_ = 0;
};

class CpuBackend final : public Backend {
 public:
  static Result<std::unique_ptr<Backend>> create(const LoadedEngine& engine, const BackendOptions& options);

  std::string name() const override { return "cpu"; }
  KvGeometry kv_geometry() const override { return {num_kv_blocks_, block_size_}; }
  int64_t vocab_size() const override { return vocab_size_; }
  int64_t max_tokens_per_step() const override { return max_tokens_; }
  int64_t max_logit_rows() const override { return max_logit_rows_; }
  int64_t weight_bytes() const override { return weight_bytes_; }
  int64_t arena_bytes() const override { return static_cast<int64_t>(arena_.size() * sizeof(float)); }
  int64_t kv_cache_bytes() const override {
    return kv_bytes_;
  }
  Status forward(const Batch& batch, float* logits) override { return run(batch, logits, nullptr); }
  Status forward_argmax(const Batch& batch, int32_t* ids) override {
    KILN_TRY(run(batch, argmax_logits_.data(), nullptr));
    argmax_rows(argmax_logits_.data(), static_cast<int64_t>(batch.logit_rows.size()), vocab_size_, ids);
    return Status::Ok();
  }
  // As the default, without allocating: the logits go to the forward_argmax scratch.
  Status forward_sample(const Batch& batch, std::span<const RowSampling> rows, int32_t* ids) override {
    if (rows.size() != batch.logit_rows.size()) {
      return make_error("forward_sample: {} sampling rows for {} logit rows", rows.size(),
                        batch.logit_rows.size());
    }
    KILN_TRY(run(batch, argmax_logits_.data(), nullptr));
    for (size_t r = 0; r < rows.size(); ++r) {
      ids[r] = sample_row(argmax_logits_.data() + r * vocab_size_, vocab_size_, rows[r], sample_scratch_);
    }
    return Status::Ok();
  }
  Status forward_profiled(const Batch& batch, float* logits, std::vector<NodeTiming>& timings) override {
    return run(batch, logits, &timings);
  }
  double copy_bandwidth_bytes_per_second() override;
  std::string bandwidth_bound_name() const override { return bandwidth_name_; }
  int64_t peak_device_bytes() const override { return 0; }
  Status set_activation_observer(ActivationObserver* observer) override {
    observer_ = observer;
    return Status::Ok();
  }

 private:
  Status init(const LoadedEngine& engine, const BackendOptions& options);
  Status run(const Batch& batch, float* logits, std::vector<NodeTiming>* timings);
  Status plan_arena();
  Status check_batch(const Batch& batch) const;
  float* value_ptr(int32_t value) { return arena_.data() + value_offset_[value]; }
  int64_t rows_of(int32_t value, const Batch& batch) const {
    return graph_.values[value].rows == RowSpace::Tokens ? batch.num_tokens()
                                                          : static_cast<int64_t>(batch.logit_rows.size());
  }

  Graph graph_;
  std::vector<std::vector<BoundWeight>> node_weights_;  // [node][weight index]
  std::vector<const RopeTable*> node_rope_;              // [node] for Rope nodes
  std::map<std::string, RopeTable> rope_tables_;
  std::vector<int64_t> value_offset_;                   // [value] float offset into arena_
  std::vector<int64_t> node_scratch_offset_;            // [node] float offset of its scratch in arena_, -1: none
  std::vector<float> arena_;
  LazyZeroMemory kv_memory_;                            // every layer's KV arrays
  int64_t kv_bytes_ = 0;                                // what those arrays hold (the cache's budget)
  KvCacheDtype kv_dtype_ = KvCacheDtype::Fp32;
  std::vector<cpu::PagedKv> kv_layers_;                 // [layer]
  std::vector<int32_t> slot_mapping_;                   // [max_tokens] scratch
  std::vector<float> argmax_logits_;                    // [max_logit_rows, vocab] scratch of forward_argmax/_sample
  SampleScratch sample_scratch_;
  std::unique_ptr<cpu::ThreadPool> pool_;
  int64_t vocab_size_ = 0, max_tokens_ = 0, max_logit_rows_ = 0, max_seq_len_ = 0;
  int64_t num_kv_blocks_ = 0, block_size_ = 0, weight_bytes_ = 0;
  double copy_bandwidth_ = 0;
  std::string bandwidth_name_ = "read probe";
  ActivationObserver* observer_ = nullptr;
};

// The read probe (backend/cpu/bandwidth.h) on this backend's threads: decode reads every weight once,
// so what the cores can read, not a memcpy's read + write, bounds it.
double CpuBackend::copy_bandwidth_bytes_per_second() {
  if (copy_bandwidth_ > 0) return copy_bandwidth_;
  const cpu::BandwidthProbe probe = cpu::probe_read_bandwidth(*pool_);
  copy_bandwidth_ = probe.bound();
  bandwidth_name_ = fmt::format("read probe, {} threads: stream {:.2f} GB/s, gemv {:.2f} GB/s", pool_->num_threads(),
                                probe.stream_bytes_per_second / 1e9, probe.gemv_bytes_per_second / 1e9);
  return copy_bandwidth_;
}

// Half of the machine's physical memory: the most a KV cache sized from the profile alone may take.
int64_t kv_memory_cap_bytes() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? static_cast<int64_t>(pages) * page / 2 : INT64_MAX;
}

Status CpuBackend::init(const LoadedEngine& engine, const BackendOptions& options) {
  if (!engine.metadata.contains("graph")) return make_error("engine has no graph");
  KILN_ASSIGN(graph_, Graph::from_json(engine.metadata["graph"]));
  {
    KILN_ASSIGN(const std::optional<KvCacheDtype> kv_dtype, engine_kv_cache_dtype(engine.metadata));
    kv_dtype_ = kv_dtype.value_or(KvCacheDtype::Fp32);  // absent: f32, as every kiln before fp16 KV
  }
  try {
    max_seq_len_ = engine.metadata.at("profile").at("max_seq_len").get<int64_t>();
    const int64_t max_batch = engine.metadata.at("profile").at("max_batch").get<int64_t>();
    block_size_ = options.kv_block_size;
    const int64_t sequences = options.max_sequences > 0 ? std::min(options.max_sequences, max_batch) : max_batch;
    num_kv_blocks_ = options.num_kv_blocks > 0
                         ? options.num_kv_blocks
                         : sequences * ((max_seq_len_ + block_size_ - 1) / block_size_);
  } catch (const nlohmann::json::exception& e) {
    return make_error("engine metadata: malformed profile: {}", e.what());
  }
  if (max_seq_len_ <= 0 || block_size_ <= 0 || num_kv_blocks_ <= 0) {
    return make_error("engine profile: max_seq_len, block size and KV blocks must be positive");
  }
  max_tokens_ = options.max_tokens_per_step > 0 ? options.max_tokens_per_step : 512;
  max_logit_rows_ = options.max_logit_rows;
  vocab_size_ = graph_.values[graph_.logits_value].width;

  // (1) weights
  std::map<std::string, QuantMatrixView> quantized;
  for (const auto& [name, info] : graph_.weights) {
    if (info.quant) {  // codes, scales and mins, each with its storage dtype and shape
      std::vector<const TensorView*> parts;
      for (const StoredTensor& part : stored_tensors(name, info)) {
        const TensorView* t = engine.find(part.name);
        if (!t) return make_error("engine: quantized weight '{}' has no tensor '{}'", name, part.name);
        if (t->dtype != part.dtype || t->shape != part.shape) {
          return make_error("engine: tensor '{}' dtype/shape disagree with the graph's quantization", part.name);
        }
        weight_bytes_ += static_cast<int64_t>(t->nbytes);
        parts.push_back(t);
      }
      quantized[name] = QuantMatrixView{*info.quant, info.shape[0], info.shape[1], parts[0]->data, parts[1]->data,
                                        parts.size() > 2 ? parts[2]->data : nullptr};
      continue;
    }
    const TensorView* t = engine.find(name);
    if (!t) return make_error("engine: graph weight '{}' has no tensor", name);
    if (t->dtype != info.dtype || t->shape != info.shape) {
      return make_error("engine: tensor '{}' dtype/shape disagree with the graph", name);
    }
    const bool matrix = info.shape.size() == 2;
    const bool ok_dtype = matrix ? (info.dtype == DType::F32 || info.dtype == DType::F16 || info.dtype == DType::BF16)
                                 : info.dtype == DType::F32;
    if (!ok_dtype) {
      return make_error("engine: tensor '{}' has dtype {}, not supported by the cpu backend here", name,
                        dtype_name(info.dtype));
    }
    weight_bytes_ += static_cast<int64_t>(t->nbytes);
  }
  int64_t num_layers = 0;
  // A BF16 engine's quantized matrices prefill in BF16 arithmetic, as its BF16 matrices do (kernels.h).
  const bool bf16_engine = engine.metadata.contains("build") && engine.metadata["build"].is_object() &&
                           engine.metadata["build"].value("dtype", std::string()) == "BF16";
  for (const Node& n : graph_.nodes) {
    std::vector<BoundWeight> bound;
    for (size_t wi = 0; wi < n.weights.size(); ++wi) {
      const std::string& w = n.weights[wi];
      const auto q = quantized.find(w);
      if (q != quantized.end()) {
        if ((n.op != OpKind::Linear && n.op != OpKind::SwiGluLinear) || wi != 0) {
          return make_error("cpu backend: node '{}' ({}) cannot read quantized weight '{}'", n.name, op_name(n.op), w);
        }
        bound.push_back(BoundWeight{q->second.codes, graph_.weights.at(w).dtype, q->second, bf16_engine});
        continue;
      }
      const TensorView* t = engine.find(w);
      bound.push_back(BoundWeight{t->data, t->dtype, std::nullopt});
    }
    node_weights_.push_back(std::move(bound));
    node_rope_.push_back(nullptr);
    // Ops whose kernels need whole, contiguous rows.
    const bool whole_inputs = n.op == OpKind::Linear || n.op == OpKind::RmsNorm || n.op == OpKind::Add ||
                              n.op == OpKind::AddRmsNorm || n.op == OpKind::SelectLogitRows;
    for (const ValueRef& r : n.inputs) {
      if (whole_inputs && (r.col_offset != 0 || r.width != graph_.values[r.value].width)) {
        return make_error("cpu backend: node '{}' reads a column slice, which its kernel does not support", n.name);
      }
    }
    if (n.op == OpKind::Attention) {
      num_layers = std::max(num_layers, static_cast<int64_t>(n.attr("layer")) + 1);
      if (graph_.values[n.inputs[1].value].width != graph_.values[n.inputs[2].value].width) {
        return make_error("cpu backend: node '{}': k and v rows must have the same stride", n.name);
      }
    }
  }
  // (2) RoPE tables, shared between nodes with equal attributes (q and k of every layer).
  for (size_t i = 0; i < graph_.nodes.size(); ++i) {
    const std::optional<Node> rope = rope_of(graph_.nodes[i]);
    if (!rope) continue;
    const std::string key = rope_table_key(*rope);
    auto it = rope_tables_.find(key);
    if (it == rope_tables_.end()) {
      RopeTable table;
      rope_tables(*rope, max_seq_len_, table.cos, table.sin);
      it = rope_tables_.emplace(key, std::move(table)).first;
    }
    node_rope_[i] = &it->second;
  }
  // (4) KV cache: one [num_blocks, block_size, kv_heads, head_dim] pair per layer of f32 or f16; int8:
  // codes of that shape plus [num_blocks, block_size, kv_heads] f32 scales (layout: backend/cpu/README.md).
  kv_layers_.assign(num_layers, cpu::PagedKv{});
  std::vector<int64_t> layer_width(num_layers, 0);
  std::vector<int64_t> layer_kv_heads(num_layers, 0), layer_head_dim(num_layers, 0);
  for (const Node& n : graph_.nodes) {
    if (n.op != OpKind::Attention) continue;
    const int64_t l = static_cast<int64_t>(n.attr("layer"));
    layer_kv_heads[l] = static_cast<int64_t>(n.attr("num_kv_heads"));
    layer_head_dim[l] = static_cast<int64_t>(n.attr("head_dim"));
  }
  for (int64_t l = 0; l < num_layers; ++l) {
    if (layer_kv_heads[l] * layer_head_dim[l] == 0) return make_error("cpu backend: layer {} has no attention node", l);
  }
  // Without an explicit block count the profile sizes the cache (max batch sequences of max_seq_len),
  // capped at half the machine's memory but never below one max_seq_len sequence.
  int64_t bytes_per_block = 0;
  for (int64_t l = 0; l < num_layers; ++l) {
    bytes_per_block += kv_cache_bytes_per_token(kv_dtype_, 1, layer_kv_heads[l], layer_head_dim[l]) * block_size_;
  }
  if (options.num_kv_blocks <= 0 && bytes_per_block > 0) {
    const int64_t blocks_per_seq = (max_seq_len_ + block_size_ - 1) / block_size_;
    const int64_t fit = std::max(blocks_per_seq, kv_memory_cap_bytes() / bytes_per_block);
    num_kv_blocks_ = std::min(num_kv_blocks_, fit);
  }
  // Per layer: K and V arrays of [num_blocks, block_size, kv_heads, head_dim] elements (4, 2 or 1
  // bytes), int8 followed by K and V scales [num_blocks, block_size, kv_heads] f32; each array
  // 64-byte aligned in one mapping.
  const int64_t element_bytes = kv_dtype_ == KvCacheDtype::Fp32 ? 4 : kv_dtype_ == KvCacheDtype::Fp16 ? 2 : 1;
  std::vector<std::array<int64_t, 4>> offsets(num_layers, {-1, -1, -1, -1});  // K, V, K scales, V scales
  int64_t mapped = 0;
  const auto reserve = [&](int64_t bytes) {
    const int64_t at = mapped;
    mapped += (bytes + 63) / 64 * 64;
    kv_bytes_ += bytes;
    return at;
  };
  for (int64_t l = 0; l < num_layers; ++l) {
    const int64_t rows = num_kv_blocks_ * block_size_ * layer_kv_heads[l];
    offsets[l][0] = reserve(rows * layer_head_dim[l] * element_bytes);
    offsets[l][1] = reserve(rows * layer_head_dim[l] * element_bytes);
    if (kv_dtype_ == KvCacheDtype::Int8) {
      offsets[l][2] = reserve(rows * static_cast<int64_t>(sizeof(float)));
      offsets[l][3] = reserve(rows * static_cast<int64_t>(sizeof(float)));
    }
  }
  KILN_TRY(kv_memory_.allocate(static_cast<size_t>(mapped)));
  for (int64_t l = 0; l < num_layers; ++l) {
    uint8_t* base = kv_memory_.data();
    cpu::PagedKv& kv = kv_layers_[l];
    kv = cpu::PagedKv{nullptr, nullptr, num_kv_blocks_, block_size_, layer_kv_heads[l], layer_head_dim[l]};
    switch (kv_dtype_) {
      case KvCacheDtype::Fp32:
        kv.k_cache = reinterpret_cast<float*>(base + offsets[l][0]);
        kv.v_cache = reinterpret_cast<float*>(base + offsets[l][1]);
        break;
      case KvCacheDtype::Fp16:
        kv.k_f16 = reinterpret_cast<uint16_t*>(base + offsets[l][0]);
        kv.v_f16 = reinterpret_cast<uint16_t*>(base + offsets[l][1]);
        break;
      case KvCacheDtype::Int8:
        kv.k_codes = reinterpret_cast<int8_t*>(base + offsets[l][0]);
        kv.v_codes = reinterpret_cast<int8_t*>(base + offsets[l][1]);
        kv.k_scales = reinterpret_cast<float*>(base + offsets[l][2]);
        kv.v_scales = reinterpret_cast<float*>(base + offsets[l][3]);
        break;
    }
  }
  slot_mapping_.assign(static_cast<size_t>(max_tokens_), 0);
  argmax_logits_.assign(static_cast<size_t>(max_logit_rows_ * vocab_size_), 0.0f);
  KILN_TRY(plan_arena());
  const int threads = options.num_threads > 0 ? options.num_threads
                                              : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  pool_ = std::make_unique<cpu::ThreadPool>(threads);
  return Status::Ok();
}

Status CpuBackend::plan_arena() {
  std::vector<int64_t> bytes(graph_.values.size());
  for (size_t v = 0; v < bytes.size(); ++v) {
    const int64_t rows = graph_.values[v].rows == RowSpace::Tokens ? max_tokens_ : max_logit_rows_;
    bytes[v] = rows * graph_.values[v].width * static_cast<int64_t>(sizeof(float));
  }
  // A SwiGluLinear needs its SwiGLU [rows, K] in scratch for the matmul.
  std::vector<int64_t> scratch(graph_.nodes.size(), 0);
  for (size_t i = 0; i < graph_.nodes.size(); ++i) {
    const Node& n = graph_.nodes[i];
    if (n.op != OpKind::SwiGluLinear) continue;
    const int64_t rows = graph_.values[n.output].rows == RowSpace::Tokens ? max_tokens_ : max_logit_rows_;
    scratch[i] = rows * n.inputs[0].width * static_cast<int64_t>(sizeof(float));
  }
  KILN_ASSIGN(const ArenaPlan plan, kiln::plan_arena(graph_, bytes, 64, scratch));
  value_offset_.resize(plan.value_offset.size());
  for (size_t v = 0; v < value_offset_.size(); ++v) value_offset_[v] = plan.value_offset[v] / static_cast<int64_t>(sizeof(float));
  node_scratch_offset_.resize(plan.node_scratch_offset.size());
  for (size_t i = 0; i < node_scratch_offset_.size(); ++i) {
    node_scratch_offset_[i] = plan.node_scratch_offset[i] < 0
                                  ? -1
                                  : plan.node_scratch_offset[i] / static_cast<int64_t>(sizeof(float));
  }
  arena_.assign(static_cast<size_t>(plan.total_bytes / static_cast<int64_t>(sizeof(float))), 0.0f);
  return Status::Ok();
}

Status CpuBackend::check_batch(const Batch& batch) const {
  return validate_batch(batch, BatchLimits{max_tokens_, max_logit_rows_, 0, vocab_size_, max_seq_len_, num_kv_blocks_, block_size_});
}

Status CpuBackend::run(const Batch& batch, float* logits, std::vector<NodeTiming>* timings) {
  KILN_TRY(check_batch(batch));
  if (timings) timings->clear();
  const int64_t T = batch.num_tokens();
  for (int64_t i = 0; i < T; ++i) {
    const int32_t block = batch.block_tables[batch.token_seq[i] * batch.max_blocks_per_seq + batch.positions[i] / block_size_];
    slot_mapping_[i] = static_cast<int32_t>(block * block_size_ + batch.positions[i] % block_size_);
  }
  for (size_t i = 0; i < graph_.nodes.size(); ++i) {
    const auto node_start = std::chrono::steady_clock::now();
    const Node& n = graph_.nodes[i];
    const std::vector<BoundWeight>& w = node_weights_[i];
    float* out = value_ptr(n.output);
    const int64_t out_width = graph_.values[n.output].width;
    const int64_t rows = rows_of(n.output, batch);
    if (rows == 0) continue;  // a prefill chunk that asks for no logits skips the logit-row tail
    switch (n.op) {
      case OpKind::Embedding:
        cpu::embedding(batch.tokens.data(), T, w[0].data, w[0].dtype, out_width, out);
        break;
      case OpKind::RmsNorm:
        cpu::rms_norm(value_ptr(n.inputs[0].value), static_cast<const float*>(w[0].data), rows, out_width,
                      static_cast<float>(n.attr("eps")), out);
        break;
      case OpKind::Linear:
        if (observer_) observer_->observe(i, value_ptr(n.inputs[0].value), rows, n.inputs[0].width);
        linear(value_ptr(n.inputs[0].value), rows, n.inputs[0].width, w[0], out_width,
               w.size() > 1 ? static_cast<const float*>(w[1].data) : nullptr, out, *pool_);
        break;
      case OpKind::Rope: {
        const RopeTable& table = *node_rope_[i];
        cpu::rope(out, rows, out_width, n.inputs[0].col_offset, static_cast<int64_t>(n.attr("num_heads")),
                  static_cast<int64_t>(n.attr("head_dim")), batch.positions.data(), table.cos.data(),
                  table.sin.data(), n.attr("interleaved") != 0.0);
        break;
      }
      case OpKind::Attention: {
        const ValueRef &q = n.inputs[0], &k = n.inputs[1], &v = n.inputs[2];
        const cpu::PagedKv& kv = kv_layers_[static_cast<size_t>(n.attr("layer"))];
        if (node_rope_[i]) {  // fused RoPE: rotate q and k in place first
          const RopeTable& table = *node_rope_[i];
          const int64_t head_dim = static_cast<int64_t>(n.attr("head_dim"));
          const bool interleaved = n.attr("rope_interleaved") != 0.0;
          cpu::rope(value_ptr(q.value), T, graph_.values[q.value].width, q.col_offset, static_cast<int64_t>(n.attr("num_heads")),
                    head_dim, batch.positions.data(), table.cos.data(), table.sin.data(), interleaved);
          cpu::rope(value_ptr(k.value), T, graph_.values[k.value].width, k.col_offset, static_cast<int64_t>(n.attr("num_kv_heads")),
                    head_dim, batch.positions.data(), table.cos.data(), table.sin.data(), interleaved);
        }
        cpu::kv_cache_write(value_ptr(k.value) + k.col_offset, value_ptr(v.value) + v.col_offset, T,
                            graph_.values[k.value].width, slot_mapping_.data(), kv);
        cpu::paged_attention(value_ptr(q.value) + q.col_offset, T, graph_.values[q.value].width,
                             batch.token_seq.data(), batch.positions.data(), batch.block_tables.data(),
                             batch.max_blocks_per_seq, kv, static_cast<int64_t>(n.attr("num_heads")),
                             static_cast<float>(n.attr("scale")), out, *pool_);
        break;
      }
      case OpKind::SwiGlu:
      case OpKind::SwiGluLinear: {
        // SwiGluLinear: the SwiGLU goes to the node's arena scratch, then the Linear reads it.
        const ValueRef &gate = n.inputs[0], &up = n.inputs[1];
        const int64_t F = gate.width;
        float* act = n.op == OpKind::SwiGlu ? out : arena_.data() + node_scratch_offset_[i];
        swiglu_slices(value_ptr(gate.value) + gate.col_offset, graph_.values[gate.value].width,
                      value_ptr(up.value) + up.col_offset, graph_.values[up.value].width, rows, F, act);
        if (n.op == OpKind::SwiGluLinear) {
          if (observer_) observer_->observe(i, act, rows, F);
          linear(act, rows, F, w[0], out_width, w.size() > 1 ? static_cast<const float*>(w[1].data) : nullptr, out,
                 *pool_);
        }
        break;
      }
      case OpKind::Add:
        cpu::add(out, value_ptr(n.inputs[1].value), rows, out_width);
        break;
      case OpKind::AddRmsNorm: {
        float* residual = value_ptr(n.inputs[0].value);
        cpu::add(residual, value_ptr(n.inputs[1].value), rows, out_width);
        cpu::rms_norm(residual, static_cast<const float*>(w[0].data), rows, out_width,
                      static_cast<float>(n.attr("eps")), out);
        break;
      }
      case OpKind::SelectLogitRows: {
        const float* in = value_ptr(n.inputs[0].value);
        for (size_t r = 0; r < batch.logit_rows.size(); ++r) {
          std::memcpy(out + r * out_width, in + static_cast<int64_t>(batch.logit_rows[r]) * out_width,
                      out_width * sizeof(float));
        }
        break;
      }
    }
    if (timings) {
      timings->push_back(NodeTiming{n.name, std::string(op_name(n.op)),
                                    std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - node_start).count()});
    }
  }
  if (!batch.logit_rows.empty()) {
    std::memcpy(logits, value_ptr(graph_.logits_value), batch.logit_rows.size() * vocab_size_ * sizeof(float));
  }
  return Status::Ok();
}

Result<std::unique_ptr<Backend>> CpuBackend::create(const LoadedEngine& engine, const BackendOptions& options) {
  auto backend = std::unique_ptr<CpuBackend>(new CpuBackend());
  KILN_TRY(backend->init(engine, options));
  return std::unique_ptr<Backend>(std::move(backend));
}

}  // namespace

Result<std::unique_ptr<Backend>> create_cpu_backend(const LoadedEngine& engine, const BackendOptions& options) {
  return CpuBackend::create(engine, options);
}

}  // namespace kiln
