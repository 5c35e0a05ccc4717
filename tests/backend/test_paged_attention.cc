// kv_cache_write + paged_attention against dense causal attention in double: several sequences of
// different lengths, block tables shuffled across one shared pool, query tokens interleaved across
// sequences, GQA ratios 1, 2 and 4, several head sizes and block sizes, both code paths.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include <gtest/gtest.h>

#include "backend/cpu/kernels.h"
#include "kernel_test_util.h"

namespace kiln::cpu {
namespace {

using testing::kUnit;
using testing::PathTest;

struct Case {
  int64_t num_kv_heads, group, head_dim, block_size;
};

class PagedAttentionTest : public PathTest {};

TEST_P(PagedAttentionTest, MatchesDenseCausalAttention) {
  const std::vector<int64_t> seq_lens = {1, 17, 40, 5};
  const std::vector<Case> cases = {
      {2, 1, 8, 4}, {2, 2, 16, 1}, {1, 4, 64, 16}, {2, 4, 12, 3}, {3, 2, 64, 8}, {1, 1, 24, 5},
  };
  std::mt19937 rng(31);
  ThreadPool pool(3);
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message() << "kv_heads=" << c.num_kv_heads << " group=" << c.group
                                      << " head_dim=" << c.head_dim << " block_size=" << c.block_size);
    const int64_t num_heads = c.num_kv_heads * c.group, hd = c.head_dim;
    const int64_t num_seqs = static_cast<int64_t>(seq_lens.size());
    const int64_t max_len = *std::max_element(seq_lens.begin(), seq_lens.end());
    const int64_t max_blocks_per_seq = (max_len + c.block_size - 1) / c.block_size + 1;  // +1 unused

    // Shuffled physical blocks, 3 spare: sequences own interleaved, non-contiguous blocks.
    int64_t blocks_needed = 0;
    for (int64_t len : seq_lens) blocks_needed += (len + c.block_size - 1) / c.block_size;
    const int64_t num_blocks = blocks_needed + 3;
    std::vector<int32_t> physical(num_blocks);
    std::iota(physical.begin(), physical.end(), 0);
    std::shuffle(physical.begin(), physical.end(), rng);
    std::vector<int32_t> block_tables(num_seqs * max_blocks_per_seq, -1);  // -1: never read
    for (int64_t s = 0, next = 0; s < num_seqs; ++s)
      for (int64_t b = 0; b * c.block_size < seq_lens[s]; ++b) block_tables[s * max_blocks_per_seq + b] = physical[next++];

    // All tokens of all sequences, in shuffled order: QKV rows [T, (H + 2 KV) * hd] as the fused
    // QKV projection would produce them.
    struct Token {
      int32_t seq, pos;
    };
    std::vector<Token> tokens;
    for (int64_t s = 0; s < num_seqs; ++s)
      for (int64_t p = 0; p < seq_lens[s]; ++p) tokens.push_back({static_cast<int32_t>(s), static_cast<int32_t>(p)});
    std::shuffle(tokens.begin(), tokens.end(), rng);
    const int64_t T = static_cast<int64_t>(tokens.size());
    const int64_t qkv_stride = (num_heads + 2 * c.num_kv_heads) * hd;
    const std::vector<float> qkv = testing::random_floats(rng, T * qkv_stride);
    std::vector<int32_t> token_seq(T), positions(T), slots(T);
    for (int64_t t = 0; t < T; ++t) {
      token_seq[t] = tokens[t].seq;
      positions[t] = tokens[t].pos;
      slots[t] = block_tables[tokens[t].seq * max_blocks_per_seq + tokens[t].pos / c.block_size] * c.block_size +
                 tokens[t].pos % c.block_size;
    }

    const int64_t cache_floats = num_blocks * c.block_size * c.num_kv_heads * hd;
    std::vector<float> k_cache(cache_floats, NAN), v_cache(cache_floats, NAN);  // unwritten slots poison
    const PagedKv kv{k_cache.data(), v_cache.data(), num_blocks, c.block_size, c.num_kv_heads, hd};
    const float* q = qkv.data();
    const float* k = qkv.data() + num_heads * hd;
    const float* v = k + c.num_kv_heads * hd;
    kv_cache_write(k, v, T, qkv_stride, slots.data(), kv);

    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    std::vector<float> out(T * num_heads * hd);
    paged_attention(q, T, qkv_stride, token_seq.data(), positions.data(), block_tables.data(),
                    max_blocks_per_seq, kv, num_heads, scale, out.data(), pool);

    // Dense reference: row index of (seq, pos) in the token list.
    std::vector<int64_t> row_of(num_seqs * max_len, -1);
    for (int64_t t = 0; t < T; ++t) row_of[tokens[t].seq * max_len + tokens[t].pos] = t;
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t h = 0; h < num_heads; ++h) {
        const int64_t kvh = h / c.group;
        const float* qh = q + t * qkv_stride + h * hd;
        const int64_t n = tokens[t].pos + 1;
        std::vector<double> w(n);
        double max_score = -INFINITY, max_abs_qk = 0;
        for (int64_t p = 0; p < n; ++p) {
          const int64_t r = row_of[tokens[t].seq * max_len + p];
          double dot = 0, abs_dot = 0;
          for (int64_t d = 0; d < hd; ++d) {
            dot += static_cast<double>(qh[d]) * k[r * qkv_stride + kvh * hd + d];
            abs_dot += std::fabs(static_cast<double>(qh[d]) * k[r * qkv_stride + kvh * hd + d]);
          }
          w[p] = dot * scale;
          max_score = std::max(max_score, w[p]);
          max_abs_qk = std::max(max_abs_qk, abs_dot * scale);
        }
        double sum = 0;
        for (double& x : w) sum += (x = std::exp(x - max_score));
        // Error budget: each f32 score errs by <= delta = (hd + 2) u max|q||k| scale (dot product
        // bound), which perturbs each softmax weight by a relative ~2 delta; exp adds a few ulp and
        // the f32 sums over n positions add n u. The output is a convex combination of V rows
        // (|v| <= 1), so its absolute error is bounded by the weights' total relative error.
        const double delta = (hd + 2) * kUnit * max_abs_qk;
        const double tol = 2 * delta + (2 * n + 16) * kUnit;
        for (int64_t d = 0; d < hd; ++d) {
          double exact = 0;
          for (int64_t p = 0; p < n; ++p) {
            const int64_t r = row_of[tokens[t].seq * max_len + p];
            exact += w[p] / sum * v[r * qkv_stride + kvh * hd + d];
          }
          ASSERT_NEAR(out[(t * num_heads + h) * hd + d], exact, tol)
              << "token " << t << " (seq " << tokens[t].seq << ", pos " << tokens[t].pos << ") head " << h << " d " << d;
        }
      }
    }
  }
}

TEST(KvCacheWrite, StoresRowsAtSlotsAndSkipsPadding) {
  const int64_t kv_heads = 2, hd = 4, block_size = 2, num_blocks = 3;
  const int64_t row = kv_heads * hd, stride = row + 3;
  std::vector<float> k(3 * stride), v(3 * stride);
  for (size_t i = 0; i < k.size(); ++i) {
    k[i] = static_cast<float>(i);
    v[i] = -static_cast<float>(i);
  }
  std::vector<float> k_cache(num_blocks * block_size * row, 0.5f), v_cache(num_blocks * block_size * row, 0.5f);
  const PagedKv kv{k_cache.data(), v_cache.data(), num_blocks, block_size, kv_heads, hd};
  const std::vector<int32_t> slots = {5, -1, 2};  // token 1 is padding
  kv_cache_write(k.data(), v.data(), 3, stride, slots.data(), kv);
  for (int64_t slot = 0; slot < num_blocks * block_size; ++slot) {
    const int64_t token = slot == 5 ? 0 : slot == 2 ? 2 : -1;
    for (int64_t i = 0; i < row; ++i) {
      EXPECT_EQ(k_cache[slot * row + i], token < 0 ? 0.5f : k[token * stride + i]) << slot;
      EXPECT_EQ(v_cache[slot * row + i], token < 0 ? 0.5f : v[token * stride + i]) << slot;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Paths, PagedAttentionTest, ::testing::ValuesIn(testing::available_paths()),
                         testing::path_name);

}  // namespace
}  // namespace kiln::cpu
