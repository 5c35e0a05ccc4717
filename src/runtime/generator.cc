#include "runtime/generator.h"

#include <algorithm>
#include <chrono>
#include <optional>
#include <span>

#include "runtime/stop_strings.h"

namespace kiln {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Returns its blocks to the pool however generation ends.
class SequenceBlocks {
 public:
  SequenceBlocks(KvBlockPool& pool, int32_t max_blocks) : pool_(pool) { blocks_.reserve(max_blocks); }
  ~SequenceBlocks() {
    for (int32_t b : blocks_) pool_.free(b);
  }
  // Makes sure positions [0, length) have blocks.
  Status ensure(int64_t length, int64_t block_size) {
    while (static_cast<int64_t>(blocks_.size()) * block_size < length) {
      const auto block = pool_.allocate();
      if (!block) return make_error("out of KV cache blocks ({} in the pool)", pool_.num_blocks());
      blocks_.push_back(*block);
    }
    return Status::Ok();
  }
  const std::vector<int32_t>& blocks() const { return blocks_; }

 private:
  KvBlockPool& pool_;
  std::vector<int32_t> blocks_;
};

}  // namespace

Result<GenerationResult> generate(Model& model, const GenerationRequest& request, const TextCallback& on_text) {
  const auto start = Clock::now();
  const ModelInfo& info = model.info();
  Backend& backend = model.backend();
  const int64_t prompt_len = static_cast<int64_t>(request.prompt_ids.size());
  if (prompt_len == 0) return make_error("empty prompt: give at least one token");
  if (prompt_len >= info.max_seq_len) {
    return make_error("prompt of {} tokens does not fit the engine's max sequence length {} (rebuild with a larger --max-seq-len)",
                      prompt_len, info.max_seq_len);
  }
  for (int32_t id : request.prompt_ids) {
    if (id < 0 || id >= info.vocab_size) {
      return make_error("unknown token id {}: the vocabulary has {} tokens (0..{})", id, info.vocab_size, info.vocab_size - 1);
    }
  }
  if (request.max_new_tokens < 0) return make_error("max new tokens must be >= 0");

  const int64_t block_size = backend.kv_geometry().block_size;
  const int32_t max_blocks = static_cast<int32_t>((info.max_seq_len + block_size - 1) / block_size);
  SequenceBlocks blocks(model.kv_pool(), max_blocks);
  Batch batch;
  batch.max_blocks_per_seq = max_blocks;
  batch.tokens.reserve(backend.max_tokens_per_step());
  batch.positions.reserve(backend.max_tokens_per_step());
  batch.token_seq.reserve(backend.max_tokens_per_step());
  batch.block_tables.reserve(max_blocks);
  std::vector<float> logits(static_cast<size_t>(info.vocab_size));
  std::vector<int32_t> history(request.prompt_ids);
  history.reserve(prompt_len + request.max_new_tokens);
  Sampler sampler(info.vocab_size, request.sampling);
  // Without a repetition penalty (which needs the logits on the host) the backend draws the token:
  // on CUDA only its id crosses to the host. Both ways give the same id from the same logits and
  // seed (forward_sample and Sampler::sample share sample_row's semantics, one uniform per token).
  const bool backend_samples = request.sampling.repetition_penalty == 1.0f;
  std::optional<int32_t> drawn;  // the id the last step drew, when it sampled on the backend

  // One step; `sample`: the backend draws the next token into `drawn` instead of returning logits.
  auto run_step = [&](int64_t first_position, int64_t count, const int32_t* ids, bool sample) -> Status {
    KILN_TRY(blocks.ensure(first_position + count, block_size));
    batch.clear();
    for (int64_t i = 0; i < count; ++i) {
      batch.tokens.push_back(ids[i]);
      batch.positions.push_back(static_cast<int32_t>(first_position + i));
      batch.token_seq.push_back(0);
    }
    batch.block_tables.assign(max_blocks, -1);
    std::copy(blocks.blocks().begin(), blocks.blocks().end(), batch.block_tables.begin());
    batch.logit_rows.push_back(static_cast<int32_t>(count - 1));
    drawn.reset();
    if (!sample) return backend.forward(batch, logits.data());
    const RowSampling row = sampler.next_row();
    int32_t id = 0;
    KILN_TRY(backend.forward_sample(batch, std::span<const RowSampling>(&row, 1), &id));
    drawn = id;
    return Status::Ok();
  };

  GenerationResult result;
  result.stats.prompt_tokens = prompt_len;
  // Prefill in chunks of at most max_tokens_per_step.
  const int64_t chunk = backend.max_tokens_per_step();
  for (int64_t at = 0; at < prompt_len; at += chunk) {
    const int64_t count = std::min(chunk, prompt_len - at);
    const bool sample =
        at + count == prompt_len && backend_samples && !request.want_last_logits && request.max_new_tokens > 0;
    KILN_TRY(run_step(at, count, request.prompt_ids.data() + at, sample));
  }
  result.stats.prompt_seconds = seconds_since(start);
  if (request.want_last_logits) result.last_logits = logits;

  const Tokenizer* tokenizer = model.tokenizer();
  std::optional<StreamingDetokenizer> detok;
  if (tokenizer) detok.emplace(*tokenizer);
  StopStringFilter filter(request.stop_strings);
  size_t emitted = 0;
  auto emit_available = [&](std::string_view all) {
    if (on_text && all.size() > emitted) on_text(all.substr(emitted));
    emitted = std::max(emitted, all.size());
  };

  result.finish_reason = "length";
  Clock::time_point decode_start;
  int64_t position = prompt_len;
  for (int32_t step = 0; step < request.max_new_tokens; ++step) {
    if (step > 0) {
      if (position >= info.max_seq_len) {
        result.finish_reason = "context";
        break;
      }
      const int32_t last = result.ids.back();
      KILN_TRY(run_step(position - 1, 1, &last, backend_samples));
    }
    const int32_t next = drawn ? *drawn : sampler.sample(logits.data(), history);
    if (step == 0) {
      result.stats.ttft_seconds = seconds_since(start);
      decode_start = Clock::now();
    }
    const bool is_eos = std::find(info.eos_token_ids.begin(), info.eos_token_ids.end(), next) != info.eos_token_ids.end();
    if (is_eos && !request.ignore_eos) {
      result.finish_reason = "eos";
      break;
    }
    result.ids.push_back(next);
    history.push_back(next);
    ++position;
    if (detok) {
      const bool stopped = filter.append(detok->push(next));
      if (stopped) {
        result.finish_reason = "stop";
        break;
      }
      emit_available(filter.releasable());
    }
  }
  if (detok && result.finish_reason != "stop") {
    if (filter.append(detok->flush())) result.finish_reason = "stop";
  }
  result.text = filter.text();
  emit_available(result.text);
  result.stats.generated_tokens = static_cast<int64_t>(result.ids.size());
  if (!result.ids.empty()) result.stats.decode_seconds = std::chrono::duration<double>(Clock::now() - decode_start).count();
  return result;
}

}  // namespace kiln
