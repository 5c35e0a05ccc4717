// Sequences of different lengths run together in one batch give the same logits as each run alone
// (relative error under 1e-5 in fp32), with their KV blocks interleaved in the pool, for a prefill
// step and for a following mixed decode step.
#include <random>

#include "test_util.h"

namespace kiln {
namespace {

using testing::build_and_load;
using testing::shared_path;
using testing::TempDir;

struct Seq {
  std::vector<int32_t> tokens;  // prompt then one decode token
  std::vector<int32_t> blocks;
};

double max_rel_error(const float* a, const float* b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    den += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(num / den);
}

// Runs tokens [from, to) of each listed sequence in one step; returns logits of every token.
std::vector<float> step(Backend& backend, std::vector<Seq*> seqs, int32_t max_blocks, size_t from, size_t to_prompt_end,
                        bool decode) {
  Batch batch;
  batch.max_blocks_per_seq = max_blocks;
  for (size_t s = 0; s < seqs.size(); ++s) {
    std::vector<int32_t> table(max_blocks, -1);
    std::copy(seqs[s]->blocks.begin(), seqs[s]->blocks.end(), table.begin());
    batch.block_tables.insert(batch.block_tables.end(), table.begin(), table.end());
    const size_t begin = decode ? seqs[s]->tokens.size() - 1 : from;
    const size_t end = decode ? seqs[s]->tokens.size() : std::min(to_prompt_end, seqs[s]->tokens.size() - 1);
    for (size_t i = begin; i < end; ++i) {
      batch.logit_rows.push_back(batch.num_tokens());
      batch.tokens.push_back(seqs[s]->tokens[i]);
      batch.positions.push_back(static_cast<int32_t>(i));
      batch.token_seq.push_back(static_cast<int32_t>(s));
    }
  }
  std::vector<float> logits(batch.logit_rows.size() * backend.vocab_size());
  const Status status = backend.forward(batch, logits.data());
  EXPECT_TRUE(status.ok()) << (status.ok() ? "" : status.error().message);
  return logits;
}

void check_model(const std::string& model_path, int64_t vocab_limit) {
  TempDir dir;
  auto model = build_and_load(dir, model_path, "fp32", true, 256, 2, 256);
  ASSERT_TRUE(model);
  Backend& backend = model->backend();
  const int64_t vocab = backend.vocab_size();
  const int64_t block_size = backend.kv_geometry().block_size;
  const int32_t max_blocks = static_cast<int32_t>((model->info().max_seq_len + block_size - 1) / block_size);
  std::mt19937 rng(42);
  std::uniform_int_distribution<int32_t> token(3, static_cast<int32_t>(std::min(vocab, vocab_limit)) - 1);
  std::vector<Seq> seqs(3);
  const size_t lengths[] = {5, 37, 20};  // prompt lengths; +1 decode token each
  for (size_t s = 0; s < seqs.size(); ++s) {
    seqs[s].tokens.push_back(1);
    for (size_t i = 1; i <= lengths[s]; ++i) seqs[s].tokens.push_back(token(rng));
  }

  // Alone: each sequence with its own contiguous blocks.
  std::vector<std::vector<float>> alone_prefill, alone_decode;
  for (Seq& seq : seqs) {
    for (size_t b = 0; b * block_size < seq.tokens.size(); ++b) seq.blocks.push_back(*model->kv_pool().allocate());
    alone_prefill.push_back(step(backend, {&seq}, max_blocks, 0, seq.tokens.size(), false));
    alone_decode.push_back(step(backend, {&seq}, max_blocks, 0, 0, true));
    for (int32_t b : seq.blocks) model->kv_pool().free(b);
    seq.blocks.clear();
  }
  // Together: blocks handed out round-robin so every sequence's blocks are interleaved with the others'.
  bool more = true;
  for (size_t round = 0; more; ++round) {
    more = false;
    for (Seq& seq : seqs) {
      if (round * block_size < seq.tokens.size()) {
        seq.blocks.push_back(*model->kv_pool().allocate());
        more = true;
      }
    }
  }
  std::vector<Seq*> all{&seqs[0], &seqs[1], &seqs[2]};
  const std::vector<float> together = step(backend, all, max_blocks, 0, 1000, false);
  const std::vector<float> together_decode = step(backend, all, max_blocks, 0, 0, true);
  size_t row = 0;
  for (size_t s = 0; s < seqs.size(); ++s) {
    const size_t prompt = seqs[s].tokens.size() - 1;
    for (size_t i = 0; i < prompt; ++i, ++row) {
      EXPECT_LT(max_rel_error(together.data() + row * vocab, alone_prefill[s].data() + i * vocab, vocab), 1e-5)
          << model_path << " seq " << s << " token " << i;
    }
    EXPECT_LT(max_rel_error(together_decode.data() + s * vocab, alone_decode[s].data(), vocab), 1e-5)
        << model_path << " decode of seq " << s;
  }
  for (Seq& seq : seqs) {
    for (int32_t b : seq.blocks) model->kv_pool().free(b);
  }
  EXPECT_EQ(model->kv_pool().num_free(), model->kv_pool().num_blocks());
}

TEST(BatchEquivalence, Stories260K) { check_model(shared_path("models/stories260K/stories260K.bin"), 512); }
TEST(BatchEquivalence, TinyQwen2WithBiasAndGqa) { check_model(shared_path("fixtures/hf-tiny/tiny-qwen2"), 32000); }

}  // namespace
}  // namespace kiln
