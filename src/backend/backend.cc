// The backend interface's shared parts (linked into the CUDA plugin too).
#include "backend/backend.h"

#include <algorithm>
#include <vector>

namespace kiln {

Status validate_batch(const Batch& batch, const BatchLimits& limits) {
  const int64_t T = batch.num_tokens();
  if (T <= 0) return make_error("forward: empty batch");
  if (T > limits.max_tokens) return make_error("forward: {} tokens in one step, the limit is {}", T, limits.max_tokens);
  if (batch.positions.size() != static_cast<size_t>(T) || batch.token_seq.size() != static_cast<size_t>(T)) {
    return make_error("forward: tokens, positions and token_seq differ in length");
  }
  if (static_cast<int64_t>(batch.logit_rows.size()) > limits.max_logit_rows) {
    return make_error("forward: {} logit rows requested, the limit is {}", batch.logit_rows.size(), limits.max_logit_rows);
  }
  const int32_t num_seqs = batch.num_seqs();
  if (limits.max_seqs > 0 && num_seqs > limits.max_seqs) {
    return make_error("forward: {} sequences, the engine's max batch is {}", num_seqs, limits.max_seqs);
  }
  if (batch.block_tables.size() != static_cast<size_t>(num_seqs) * static_cast<size_t>(batch.max_blocks_per_seq)) {
    return make_error("forward: block tables are not [sequences, max_blocks_per_seq]");
  }
  for (int64_t i = 0; i < T; ++i) {
    if (batch.tokens[i] < 0 || batch.tokens[i] >= limits.vocab_size) {
      return make_error("token id {} out of range: vocabulary has {} tokens", batch.tokens[i], limits.vocab_size);
    }
    if (batch.positions[i] < 0 || batch.positions[i] >= limits.max_seq_len) {
      return make_error("position {} beyond the engine's max sequence length {}", batch.positions[i], limits.max_seq_len);
    }
    if (batch.token_seq[i] < 0 || batch.token_seq[i] >= num_seqs) {
      return make_error("forward: token {} names sequence {}, batch has {}", i, batch.token_seq[i], num_seqs);
    }
    const int64_t block_index = batch.positions[i] / limits.block_size;
    if (block_index >= batch.max_blocks_per_seq) return make_error("forward: block table too short for position {}", batch.positions[i]);
    // Every block the token attends to must be valid.
    for (int64_t b = 0; b <= block_index; ++b) {
      const int32_t block = batch.block_tables[batch.token_seq[i] * batch.max_blocks_per_seq + b];
      if (block < 0 || block >= limits.num_kv_blocks) return make_error("forward: invalid KV block id {}", block);
    }
  }
  for (int32_t r : batch.logit_rows) {
    if (r < 0 || r >= T) return make_error("forward: logit row {} out of range", r);
  }
  return Status::Ok();
}

void argmax_rows(const float* logits, int64_t rows, int64_t vocab, int32_t* ids) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = logits + r * vocab;
    ids[r] = static_cast<int32_t>(std::max_element(row, row + vocab) - row);
  }
}

Status Backend::forward_argmax(const Batch& batch, int32_t* ids) {
  std::vector<float> logits(batch.logit_rows.size() * static_cast<size_t>(vocab_size()));
  KILN_TRY(forward(batch, logits.data()));
  argmax_rows(logits.data(), static_cast<int64_t>(batch.logit_rows.size()), vocab_size(), ids);
  return Status::Ok();
}

Status Backend::forward_sample(const Batch& batch, std::span<const RowSampling> rows, int32_t* ids) {
  if (rows.size() != batch.logit_rows.size()) {
    return make_error("forward_sample: {} sampling rows for {} logit rows", rows.size(),
                      batch.logit_rows.size());
  }
  const int64_t vocab = vocab_size();
  std::vector<float> logits(batch.logit_rows.size() * static_cast<size_t>(vocab));
  KILN_TRY(forward(batch, logits.data()));
  SampleScratch scratch;
  for (size_t r = 0; r < rows.size(); ++r) {
    ids[r] = sample_row(logits.data() + r * vocab, vocab, rows[r], scratch);
  }
  return Status::Ok();
}



}  // namespace kiln
