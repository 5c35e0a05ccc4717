#include "runtime/benchmark.h"

#include <sys/resource.h>

#include <algorithm>
#include <cassert>
#include <chrono>
#include <cmath>
#include <map>
#include <random>

#include "backend/cpu/isa.h"

namespace kiln {

namespace {

using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

int64_t peak_rss_bytes() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<int64_t>(usage.ru_maxrss) * 1024;  // ru_maxrss is KiB on Linux
}

// Nearest-rank percentile of sorted values (q in (0, 1]).
double percentile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return 0;
  const size_t rank = static_cast<size_t>(std::ceil(q * static_cast<double>(sorted.size())));
  return sorted[std::clamp<size_t>(rank, 1, sorted.size()) - 1];
}

int32_t argmax(const float* row, int64_t n) {
  return static_cast<int32_t>(std::max_element(row, row + n) - row);
}

// One iteration's state. Everything is sized in the constructor, so prefill() and decode_step()
// allocate nothing: the timed loop measures the backend, not the allocator.
class Workload {
 public:
  Workload(Model& model, const BenchOptions& o, const std::vector<int32_t>& prompts)
      : model_(model), backend_(model.backend()), o_(o), prompts_(prompts) {
    const int64_t block_size = backend_.kv_geometry().block_size;
    const int64_t last_position = o.prompt_len + o.gen_len - 2;  // the last token fed to the model
    blocks_per_seq_ = static_cast<int32_t>(last_position / block_size + 1);
    const size_t step_tokens = static_cast<size_t>(std::max<int64_t>(backend_.max_tokens_per_step(), o.batch));
    batch_.tokens.reserve(step_tokens);
    batch_.positions.reserve(step_tokens);
    batch_.token_seq.reserve(step_tokens);
    batch_.logit_rows.reserve(o.batch);
    batch_.max_blocks_per_seq = blocks_per_seq_;
    batch_.block_tables.assign(static_cast<size_t>(o.batch) * blocks_per_seq_, -1);
    logit_seq_.reserve(o.batch);
    logits_.resize(static_cast<size_t>(o.batch) * backend_.vocab_size());
    ids_.resize(static_cast<size_t>(o.batch));
    next_.assign(o.batch, 0);
  }
  ~Workload() { release(); }

  int64_t blocks_needed() const { return static_cast<int64_t>(o_.batch) * blocks_per_seq_; }

  Status acquire() {
    KvBlockPool& pool = model_.kv_pool();
    if (pool.num_free() < blocks_needed()) {
      return make_error("bench: {} sequences of {} positions need {} KV blocks, the pool has {} free", o_.batch,
                        o_.prompt_len + o_.gen_len - 1, blocks_needed(), pool.num_free());
    }
    for (int32_t& block : batch_.block_tables) block = *pool.allocate();
    held_ = true;
    return Status::Ok();
  }
  void release() {
    if (!held_) return;
    for (int32_t block : batch_.block_tables) model_.kv_pool().free(block);
    std::fill(batch_.block_tables.begin(), batch_.block_tables.end(), -1);
    held_ = false;
  }

  // Packs all B prompts into steps of at most max_tokens_per_step tokens (sequence after sequence,
  // a prompt split across steps where it does not fit) and samples each sequence's first token from
  // the step holding its last prompt token. `profiled`: the first step goes through forward_profiled.
  Status prefill(std::vector<NodeTiming>* profiled, int64_t* profiled_tokens) {
    const int64_t budget = backend_.max_tokens_per_step();
    int32_t seq = 0, offset = 0;
    bool first_step = true;
    while (seq < o_.batch) {
      begin_step();
      while (seq < o_.batch && batch_.num_tokens() < budget) {
        const int32_t take = static_cast<int32_t>(std::min<int64_t>(budget - batch_.num_tokens(), o_.prompt_len - offset));
        const int32_t* ids = prompts_.data() + static_cast<size_t>(seq) * o_.prompt_len;
        for (int32_t i = offset; i < offset + take; ++i) add_token(ids[i], i, seq);
        offset += take;
        if (offset == o_.prompt_len) {
          batch_.logit_rows.push_back(batch_.num_tokens() - 1);
          logit_seq_.push_back(seq);
          ++seq;
          offset = 0;
        }
      }
      if (profiled && first_step) {
        *profiled_tokens = batch_.num_tokens();
        KILN_TRY(backend_.forward_profiled(batch_, logits_.data(), *profiled));
        sample();
      } else {
        KILN_TRY(backend_.forward_argmax(batch_, ids_.data()));
        take_ids();
      }
      first_step = false;
    }
    return Status::Ok();
  }

  // Decode step `step` (1..G-1): every sequence feeds its last token at position P + step - 1.
  Status decode_step(int32_t step, std::vector<NodeTiming>* profiled) {
    begin_step();
    for (int32_t s = 0; s < o_.batch; ++s) {
      add_token(next_[s], o_.prompt_len + step - 1, s);
      batch_.logit_rows.push_back(s);
      logit_seq_.push_back(s);
    }
    if (profiled) {
      KILN_TRY(backend_.forward_profiled(batch_, logits_.data(), *profiled));
      sample();
    } else {
      KILN_TRY(backend_.forward_argmax(batch_, ids_.data()));
      take_ids();
    }
    return Status::Ok();
  }

 private:
  void begin_step() {
    batch_.tokens.clear();
    batch_.positions.clear();
    batch_.token_seq.clear();
    batch_.logit_rows.clear();
    logit_seq_.clear();
  }
  void add_token(int32_t id, int32_t position, int32_t seq) {
    batch_.tokens.push_back(id);
    batch_.positions.push_back(position);
    batch_.token_seq.push_back(seq);
  }
  // Greedy on the device where the backend can (only ids cross to the host).
  void take_ids() {
    for (size_t r = 0; r < logit_seq_.size(); ++r) next_[logit_seq_[r]] = ids_[r];
  }
  // Greedy on the host from full logits (profiled steps).
  void sample() {
    const int64_t vocab = backend_.vocab_size();
    for (size_t r = 0; r < logit_seq_.size(); ++r) next_[logit_seq_[r]] = argmax(logits_.data() + r * vocab, vocab);
  }

  Model& model_;
  Backend& backend_;
  const BenchOptions& o_;
  const std::vector<int32_t>& prompts_;  // [B, P]
  int32_t blocks_per_seq_ = 0;
  Batch batch_;                          // block_tables: [B, blocks_per_seq_], fixed per iteration
  std::vector<int32_t> logit_seq_;       // [R] sequence of each logit row
  std::vector<float> logits_;            // [B, vocab]
  std::vector<int32_t> ids_;             // [B] greedy ids of a step
  std::vector<int32_t> next_;            // [B] last sampled token per sequence
  bool held_ = false;
};

Status check_options(const Model& model, const BenchOptions& o) {
  const ModelInfo& info = model.info();
  if (o.batch < 1) return make_error("bench: batch must be >= 1, got {}", o.batch);
  if (o.prompt_len < 1) return make_error("bench: prompt length must be >= 1, got {}", o.prompt_len);
  if (o.gen_len < 1) return make_error("bench: generation length must be >= 1, got {}", o.gen_len);
  if (o.iterations < 1) return make_error("bench: iterations must be >= 1, got {}", o.iterations);
  if (o.warmup < 0) return make_error("bench: warmup must be >= 0, got {}", o.warmup);
  // The last token fed to the model sits at position P + G - 2.
  if (static_cast<int64_t>(o.prompt_len) + o.gen_len - 1 > info.max_seq_len) {
    return make_error("bench: prompt length {} + generation length {} exceeds the engine's max sequence length {} "
                      "(rebuild with a larger --max-seq-len)", o.prompt_len, o.gen_len, info.max_seq_len);
  }
  if (o.batch > info.max_batch) {
    return make_error("bench: batch {} exceeds the engine's max batch {} (rebuild with --max-batch {})", o.batch,
                      info.max_batch, o.batch);
  }
  return Status::Ok();
}

}  // namespace

StepProfile aggregate_profile(const std::string& phase, int64_t num_tokens, const std::vector<NodeTiming>& timings) {
  StepProfile p;
  p.phase = phase;
  p.num_tokens = num_tokens;
  std::map<int64_t, std::vector<double>> layers;   // layer index -> [ops]
  std::vector<std::pair<std::string, std::vector<double>>> others;
  auto op_index = [&](const std::string& op) {
    const auto it = std::find(p.ops.begin(), p.ops.end(), op);
    if (it != p.ops.end()) return static_cast<size_t>(it - p.ops.begin());
    p.ops.push_back(op);
    return p.ops.size() - 1;
  };
  auto add = [](std::vector<double>& row, size_t col, double ms) {
    if (row.size() <= col) row.resize(col + 1, 0.0);
    row[col] += ms;
  };
  for (const NodeTiming& t : timings) {
    const size_t col = op_index(t.op);
    p.total_ms += t.ms;
    // "layers.<i>.<rest>" -> layer i.
    if (t.name.rfind("layers.", 0) == 0) {
      const size_t dot = t.name.find('.', 7);
      const std::string index = t.name.substr(7, dot == std::string::npos ? std::string::npos : dot - 7);
      if (!index.empty() && std::all_of(index.begin(), index.end(), ::isdigit)) {
        add(layers[std::stoll(index)], col, t.ms);
        continue;
      }
    }
    auto it = std::find_if(others.begin(), others.end(), [&](const auto& o) { return o.first == t.name; });
    if (it == others.end()) it = others.emplace(others.end(), t.name, std::vector<double>{});
    add(it->second, col, t.ms);
  }
  for (auto& [index, row] : layers) {
    p.rows.push_back("layers." + std::to_string(index));
    row.resize(p.ops.size(), 0.0);
    p.ms.push_back(std::move(row));
  }
  for (auto& [name, row] : others) {
    p.rows.push_back(name);
    row.resize(p.ops.size(), 0.0);
    p.ms.push_back(std::move(row));
  }
  return p;
}

Result<BenchReport> run_benchmark(Model& model, const BenchOptions& o) {
  KILN_TRY(check_options(model, o));
  Backend& backend = model.backend();
  if (o.batch > backend.max_logit_rows()) {
    return make_error("bench: batch {} needs {} logit rows per step, the backend was loaded with {}", o.batch, o.batch,
                      backend.max_logit_rows());
  }
  const int64_t pool_blocks = model.kv_pool().num_blocks();
  if (model.kv_pool().num_free() != pool_blocks) return make_error("bench: the model's KV pool is in use");

  std::mt19937_64 rng(o.seed);
  std::uniform_int_distribution<int32_t> any_id(0, static_cast<int32_t>(model.info().vocab_size - 1));
  std::vector<int32_t> prompts(static_cast<size_t>(o.batch) * o.prompt_len);
  for (int32_t& id : prompts) id = any_id(rng);

  Workload work(model, o, prompts);
  std::vector<double> ttft_ms, step_ms;
  ttft_ms.reserve(o.iterations);
  step_ms.reserve(static_cast<size_t>(o.iterations) * (o.gen_len - 1));
  double decode_ms_total = 0;

  for (int32_t it = 0; it < o.warmup + o.iterations; ++it) {
    const bool measured = it >= o.warmup;
    KILN_TRY(work.acquire());
    const auto start = Clock::now();
    KILN_TRY(work.prefill(nullptr, nullptr));
    if (measured) ttft_ms.push_back(ms_since(start));
    for (int32_t step = 1; step < o.gen_len; ++step) {
      const auto step_start = Clock::now();
      KILN_TRY(work.decode_step(step, nullptr));
      if (measured) {
        const double ms = ms_since(step_start);
        step_ms.push_back(ms);
        decode_ms_total += ms;
      }
    }
    work.release();
    assert(model.kv_pool().num_free() == pool_blocks && "bench: KV blocks leaked");
  }

  BenchReport r;
  r.options = o;
  r.backend = backend.name();
  if (r.backend == "cpu") r.cpu_isa = cpu::isa_description();
  r.prompt_tokens = static_cast<int64_t>(o.batch) * o.prompt_len * o.iterations;
  r.generated_tokens = static_cast<int64_t>(o.batch) * o.gen_len * o.iterations;
  r.decode_steps = static_cast<int64_t>(step_ms.size());
  std::vector<double> sorted_ttft = ttft_ms;
  std::sort(sorted_ttft.begin(), sorted_ttft.end());
  r.ttft_ms = sorted_ttft.size() % 2 == 1 ? sorted_ttft[sorted_ttft.size() / 2]
                                          : 0.5 * (sorted_ttft[sorted_ttft.size() / 2 - 1] + sorted_ttft[sorted_ttft.size() / 2]);
  double ttft_total = 0;
  for (double t : ttft_ms) ttft_total += t;
  r.prompt_tokens_per_second = ttft_total > 0 ? static_cast<double>(r.prompt_tokens) / (ttft_total / 1e3) : 0;
  std::sort(step_ms.begin(), step_ms.end());
  r.decode_p50_ms = percentile(step_ms, 0.50);
  r.decode_p90_ms = percentile(step_ms, 0.90);
  r.decode_p99_ms = percentile(step_ms, 0.99);
  r.decode_tokens_per_second = decode_ms_total > 0 ? static_cast<double>(o.batch) * r.decode_steps / (decode_ms_total / 1e3) : 0;
  r.weight_bytes = backend.weight_bytes();
  r.kv_cache_bytes = backend.kv_cache_bytes();
  r.arena_bytes = backend.arena_bytes();
  // Before the bandwidth probe, whose buffers (CPU: 256 MiB) would otherwise count as the workload's.
  r.peak_rss_bytes = peak_rss_bytes();
  r.copy_bandwidth_bytes_per_second = backend.copy_bandwidth_bytes_per_second();
  r.bandwidth_bound = backend.bandwidth_bound_name();
  if (r.decode_p50_ms > 0) {
    r.weight_bandwidth_bytes_per_second = static_cast<double>(r.weight_bytes) / (r.decode_p50_ms / 1e3);
    r.weight_bandwidth_fraction = r.weight_bandwidth_bytes_per_second / r.copy_bandwidth_bytes_per_second;
  }

  if (o.verbose) {
    std::vector<NodeTiming> timings;
    int64_t prefill_tokens = 0;
    KILN_TRY(work.acquire());
    KILN_TRY(work.prefill(&timings, &prefill_tokens));
    r.profiles.push_back(aggregate_profile("prefill", prefill_tokens, timings));
    if (o.gen_len > 1) {
      KILN_TRY(work.decode_step(1, &timings));
      r.profiles.push_back(aggregate_profile("decode", o.batch, timings));
    }
    work.release();
  }
  r.peak_device_bytes = backend.peak_device_bytes();
  r.kernels_per_decode_step = backend.kernels_per_decode_step(o.batch);
  return r;
}

}  // namespace kiln
