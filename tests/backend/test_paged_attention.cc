// kv_cache_write + paged_attention against dense causal attention in double: several sequences of
// different lengths, block tables shuffled across one shared pool, query tokens interleaved across
// sequences, GQA ratios 1 to 4, head sizes 1 to 128 (16-lane vectors with masked tails), block sizes
// 1 to 16, every instruction-set path (scalar, AVX2, AVX-512) and every cache dtype; long contexts
// read by decode tokens (positions split across threads and merged), decode batches, chunked prefill
// and whole prompts on 1 to 3 threads.
// The int8 cache is checked twice: the quantizer against its rounding bound, and attention against
// the float64 reference over the DEQUANTIZED cache (read back from the codes and scales), so the
// kernel's own error is held to the f32 bound; all-zero rows and outliers included. The f16 cache
// likewise: every stored half is f32_to_f16 of its input bit for bit (ties, overflow, subnormals), and
// attention matches the float64 reference over the rounded values and equals, bit for bit, the f32
// cache's attention over those same values.
#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>
#include <string>
#include <utility>
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

// Several sequences' tokens in shuffled order over shuffled physical blocks: QKV rows
// [T, (H + 2 KV) * hd] as the fused QKV projection would produce them.
struct Problem {
  struct Token {
    int32_t seq, pos;
  };
  int64_t num_heads = 0, num_seqs = 0, max_len = 0, max_blocks_per_seq = 0, num_blocks = 0, qkv_stride = 0, T = 0;
  std::vector<int32_t> block_tables;  // [num_seqs, max_blocks_per_seq], -1: never read
  std::vector<Token> tokens;          // [T]
  std::vector<float> qkv;             // [T, qkv_stride]
  std::vector<int32_t> token_seq, positions, slots;
  std::vector<int64_t> row_of;        // [num_seqs * max_len] token index of (seq, pos)
};

Problem make_problem(const Case& c, const std::vector<int64_t>& seq_lens, std::mt19937& rng) {
  Problem pr;
  pr.num_heads = c.num_kv_heads * c.group;
  pr.num_seqs = static_cast<int64_t>(seq_lens.size());
  pr.max_len = *std::max_element(seq_lens.begin(), seq_lens.end());
  pr.max_blocks_per_seq = (pr.max_len + c.block_size - 1) / c.block_size + 1;  // +1 unused
  // Shuffled physical blocks, 3 spare: sequences own interleaved, non-contiguous blocks.
  int64_t blocks_needed = 0;
  for (int64_t len : seq_lens) blocks_needed += (len + c.block_size - 1) / c.block_size;
  pr.num_blocks = blocks_needed + 3;
  std::vector<int32_t> physical(pr.num_blocks);
  std::iota(physical.begin(), physical.end(), 0);
  std::shuffle(physical.begin(), physical.end(), rng);
  pr.block_tables.assign(pr.num_seqs * pr.max_blocks_per_seq, -1);
  for (int64_t s = 0, next = 0; s < pr.num_seqs; ++s)
    for (int64_t b = 0; b * c.block_size < seq_lens[s]; ++b) pr.block_tables[s * pr.max_blocks_per_seq + b] = physical[next++];
  for (int64_t s = 0; s < pr.num_seqs; ++s)
    for (int64_t p = 0; p < seq_lens[s]; ++p) pr.tokens.push_back({static_cast<int32_t>(s), static_cast<int32_t>(p)});
  std::shuffle(pr.tokens.begin(), pr.tokens.end(), rng);
  pr.T = static_cast<int64_t>(pr.tokens.size());
  pr.qkv_stride = (pr.num_heads + 2 * c.num_kv_heads) * c.head_dim;
  pr.qkv = testing::random_floats(rng, pr.T * pr.qkv_stride);
  pr.token_seq.resize(pr.T);
  pr.positions.resize(pr.T);
  pr.slots.resize(pr.T);
  pr.row_of.assign(pr.num_seqs * pr.max_len, -1);
  for (int64_t t = 0; t < pr.T; ++t) {
    const Problem::Token tok = pr.tokens[t];
    pr.token_seq[t] = tok.seq;
    pr.positions[t] = tok.pos;
    pr.slots[t] = pr.block_tables[tok.seq * pr.max_blocks_per_seq + tok.pos / c.block_size] * c.block_size +
                  tok.pos % c.block_size;
    pr.row_of[tok.seq * pr.max_len + tok.pos] = t;
  }
  return pr;
}

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
    const Problem pr = make_problem(c, seq_lens, rng);
    const int64_t num_heads = pr.num_heads, hd = c.head_dim, num_blocks = pr.num_blocks, T = pr.T;
    const int64_t max_len = pr.max_len, max_blocks_per_seq = pr.max_blocks_per_seq, qkv_stride = pr.qkv_stride;
    const auto& tokens = pr.tokens;
    const auto& row_of = pr.row_of;

    const int64_t cache_floats = num_blocks * c.block_size * c.num_kv_heads * hd;
    std::vector<float> k_cache(cache_floats, NAN), v_cache(cache_floats, NAN);  // unwritten slots poison
    const PagedKv kv{k_cache.data(), v_cache.data(), num_blocks, c.block_size, c.num_kv_heads, hd};
    const float* q = pr.qkv.data();
    const float* k = pr.qkv.data() + num_heads * hd;
    const float* v = k + c.num_kv_heads * hd;
    kv_cache_write(k, v, T, qkv_stride, pr.slots.data(), kv);

    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    std::vector<float> out(T * num_heads * hd);
    paged_attention(q, T, qkv_stride, pr.token_seq.data(), pr.positions.data(), pr.block_tables.data(),
                    max_blocks_per_seq, kv, num_heads, scale, out.data(), pool);

    // Dense reference over the rows of the token list.
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

// int8 cache: one layer's four arrays, PagedKv over them.
struct Int8Cache {
  std::vector<int8_t> k_codes, v_codes;  // [num_blocks, block_size, kv_heads, head_dim]
  std::vector<float> k_scales, v_scales;  // [num_blocks, block_size, kv_heads]
  PagedKv kv{};

  Int8Cache(int64_t num_blocks, int64_t block_size, int64_t kv_heads, int64_t hd, int8_t code_fill, float scale_fill)
      : k_codes(num_blocks * block_size * kv_heads * hd, code_fill),
        v_codes(k_codes.size(), code_fill),
        k_scales(num_blocks * block_size * kv_heads, scale_fill),
        v_scales(k_scales.size(), scale_fill) {
    kv = PagedKv{nullptr, nullptr, num_blocks, block_size, kv_heads, hd};
    kv.k_codes = k_codes.data();
    kv.v_codes = v_codes.data();
    kv.k_scales = k_scales.data();
    kv.v_scales = v_scales.data();
  }
  // The value the kernel must see at (slot, head, d), in double: code * scale exactly.
  double k_at(int64_t slot, int64_t h, int64_t d) const { return at(k_codes, k_scales, slot, h, d); }
  double v_at(int64_t slot, int64_t h, int64_t d) const { return at(v_codes, v_scales, slot, h, d); }

 private:
  double at(const std::vector<int8_t>& codes, const std::vector<float>& scales, int64_t slot, int64_t h, int64_t d) const {
    const int64_t row = slot * kv.num_kv_heads + h;
    return static_cast<double>(codes[row * kv.head_dim + d]) * scales[row];
  }
};

// Checks that row x[n] was stored as codes * scale within the quantizer's bound: scale = max|x| / 127,
// |code| <= 127 with 127 reached, and |x - code * scale| <= scale / 2 plus a few roundings of
// x * (127 / max) (3 u relative, i.e. < 4e-5 scale at |x| <= 127 scale). Zero rows store zeros.
void expect_quantized_row(const float* x, int64_t n, const int8_t* codes, float scale, const std::string& what) {
  double amax = 0;
  for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(static_cast<double>(x[i])));
  if (amax == 0) {
    EXPECT_EQ(scale, 0.0f) << what;
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(codes[i], 0) << what << " d " << i;
    return;
  }
  EXPECT_NEAR(scale, amax / 127, amax / 127 * 2 * kUnit) << what;
  int max_code = 0;
  for (int64_t i = 0; i < n; ++i) {
    max_code = std::max(max_code, std::abs(static_cast<int>(codes[i])));
    ASSERT_LE(std::fabs(x[i] - static_cast<double>(codes[i]) * scale), scale * (0.5 + 4e-5)) << what << " d " << i;
  }
  EXPECT_EQ(max_code, 127) << what;
}

TEST_P(PagedAttentionTest, Int8CacheMatchesFloat64OverDequantizedCache) {
  const std::vector<int64_t> seq_lens = {1, 17, 40, 5, 33};
  // Odd head dims exercise the 16-wide loop, the 8-wide loop and the scalar tail in every mix.
  const std::vector<Case> cases = {
      {2, 1, 8, 4}, {2, 2, 7, 1}, {1, 4, 64, 16}, {2, 4, 13, 3}, {3, 2, 69, 8}, {1, 1, 24, 5}, {2, 3, 33, 16}, {1, 2, 1, 2},
  };
  std::mt19937 rng(77);
  ThreadPool pool(3);
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message() << "kv_heads=" << c.num_kv_heads << " group=" << c.group
                                      << " head_dim=" << c.head_dim << " block_size=" << c.block_size);
    Problem pr = make_problem(c, seq_lens, rng);
    const int64_t H = pr.num_heads, KVH = c.num_kv_heads, hd = c.head_dim, T = pr.T, stride = pr.qkv_stride;
    float* q = pr.qkv.data();
    float* k = q + H * hd;
    float* v = k + KVH * hd;
    // Make the data look like real keys and values: a large-magnitude key channel shared by all tokens
    // (K caches have them), occasional single outliers, and all-zero rows (one head, or the whole token).
    std::uniform_int_distribution<int64_t> any_d(0, hd - 1);
    const int64_t hot_channel = any_d(rng);
    for (int64_t t = 0; t < T; ++t) {
      float* kt = k + t * stride;
      float* vt = v + t * stride;
      for (int64_t h = 0; h < KVH; ++h) kt[h * hd + hot_channel] *= 8.0f;
      if (t % 7 == 3) kt[(t % KVH) * hd + any_d(rng)] = (t % 2 ? 40.0f : -40.0f);
      if (t % 5 == 1) vt[((t + 1) % KVH) * hd + any_d(rng)] = (t % 2 ? -25.0f : 25.0f);
      if (t % 11 == 4) std::fill(kt, kt + hd, 0.0f);                       // key row of head 0 zero
      if (t % 13 == 6) std::fill(vt + (KVH - 1) * hd, vt + KVH * hd, 0.0f);  // value row of the last head zero
      if (t % 17 == 8) {                                                   // the whole token zero
        std::fill(kt, kt + KVH * hd, 0.0f);
        std::fill(vt, vt + KVH * hd, 0.0f);
      }
    }

    // Unwritten slots hold codes that would poison the output (scale NaN), as stale blocks would.
    Int8Cache cache(pr.num_blocks, c.block_size, KVH, hd, 99, NAN);
    kv_cache_write(k, v, T, stride, pr.slots.data(), cache.kv);
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t h = 0; h < KVH; ++h) {
        const int64_t row = pr.slots[t] * KVH + h;
        const std::string what = "token " + std::to_string(t) + " head " + std::to_string(h);
        expect_quantized_row(k + t * stride + h * hd, hd, cache.k_codes.data() + row * hd, cache.k_scales[row], "k " + what);
        expect_quantized_row(v + t * stride + h * hd, hd, cache.v_codes.data() + row * hd, cache.v_scales[row], "v " + what);
      }
    }

    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    std::vector<float> out(T * H * hd);
    paged_attention(q, T, stride, pr.token_seq.data(), pr.positions.data(), pr.block_tables.data(),
                    pr.max_blocks_per_seq, cache.kv, H, scale, out.data(), pool);

    for (int64_t t = 0; t < T; ++t) {
      for (int64_t h = 0; h < H; ++h) {
        const int64_t kvh = h / c.group;
        const float* qh = q + t * stride + h * hd;
        const int64_t n = pr.tokens[t].pos + 1;
        std::vector<int64_t> slot(n);
        for (int64_t p = 0; p < n; ++p) slot[p] = pr.slots[pr.row_of[pr.tokens[t].seq * pr.max_len + p]];
        std::vector<double> w(n);
        double max_score = -INFINITY, max_abs_qk = 0, max_abs_v = 0;
        for (int64_t p = 0; p < n; ++p) {
          double dot = 0, abs_dot = 0;
          for (int64_t d = 0; d < hd; ++d) {
            dot += static_cast<double>(qh[d]) * cache.k_at(slot[p], kvh, d);
            abs_dot += std::fabs(static_cast<double>(qh[d]) * cache.k_at(slot[p], kvh, d));
            max_abs_v = std::max(max_abs_v, std::fabs(cache.v_at(slot[p], kvh, d)));
          }
          w[p] = dot * scale;
          max_score = std::max(max_score, w[p]);
          max_abs_qk = std::max(max_abs_qk, abs_dot * scale);
        }
        double sum = 0;
        for (double& x : w) sum += (x = std::exp(x - max_score));
        // The f32 cache's error budget (MatchesDenseCausalAttention) over the dequantized values: the
        // integer codes are exact in f32 and the row scale adds two roundings to each score and each
        // weight, covered by the +2 / +16 terms; the values here reach max_abs_v, not 1.
        const double delta = (hd + 2) * kUnit * max_abs_qk;
        const double tol = (2 * delta + (2 * n + 16) * kUnit) * std::max(1.0, max_abs_v);
        for (int64_t d = 0; d < hd; ++d) {
          double exact = 0;
          for (int64_t p = 0; p < n; ++p) exact += w[p] / sum * cache.v_at(slot[p], kvh, d);
          ASSERT_NEAR(out[(t * H + h) * hd + d], exact, tol)
              << "token " << t << " (seq " << pr.tokens[t].seq << ", pos " << pr.tokens[t].pos << ") head " << h << " d " << d;
        }
      }
    }
  }
}

TEST(KvCacheWriteInt8, QuantizesEachTokenAndHeadAndSkipsPadding) {
  const int64_t kv_heads = 2, hd = 5, block_size = 2, num_blocks = 3;
  const int64_t row = kv_heads * hd, stride = row + 3;
  std::vector<float> k(3 * stride), v(3 * stride);
  for (size_t i = 0; i < k.size(); ++i) {
    k[i] = static_cast<float>(i % 9) - 4.5f;
    v[i] = 0.01f * static_cast<float>(i) - 0.2f;
  }
  std::fill(k.begin() + 2 * stride, k.begin() + 2 * stride + hd, 0.0f);  // token 2, head 0: zero key row
  k[hd + 1] = 1000.0f;                                                  // token 0, head 1: one outlier
  Int8Cache cache(num_blocks, block_size, kv_heads, hd, 7, 0.5f);
  const std::vector<int32_t> slots = {5, -1, 2};  // token 1 is padding
  kv_cache_write(k.data(), v.data(), 3, stride, slots.data(), cache.kv);
  for (int64_t slot = 0; slot < num_blocks * block_size; ++slot) {
    const int64_t token = slot == 5 ? 0 : slot == 2 ? 2 : -1;
    for (int64_t h = 0; h < kv_heads; ++h) {
      const int64_t r = slot * kv_heads + h;
      const std::string what = "slot " + std::to_string(slot) + " head " + std::to_string(h);
      if (token < 0) {  // untouched
        EXPECT_EQ(cache.k_scales[r], 0.5f) << what;
        EXPECT_EQ(cache.v_scales[r], 0.5f) << what;
        for (int64_t d = 0; d < hd; ++d) EXPECT_EQ(cache.k_codes[r * hd + d], 7) << what;
        continue;
      }
      expect_quantized_row(k.data() + token * stride + h * hd, hd, cache.k_codes.data() + r * hd, cache.k_scales[r], "k " + what);
      expect_quantized_row(v.data() + token * stride + h * hd, hd, cache.v_codes.data() + r * hd, cache.v_scales[r], "v " + what);
    }
  }
  EXPECT_EQ(cache.k_scales[2 * kv_heads], 0.0f);  // the zero row
  // Round half to even on exact ties: 0.5 and 1.5 of a step become 0 and 2.
  const float tie_row[4] = {127.0f, 0.5f, 1.5f, -2.5f};
  int8_t codes[4];
  EXPECT_EQ(quantize_kv_row(tie_row, 4, codes), 1.0f);
  EXPECT_EQ(codes[0], 127);
  EXPECT_EQ(codes[1], 0);
  EXPECT_EQ(codes[2], 2);
  EXPECT_EQ(codes[3], -2);
}

// f16 cache: one layer's two arrays of half bits, PagedKv over them.
struct F16Cache {
  std::vector<uint16_t> k, v;  // [num_blocks, block_size, kv_heads, head_dim]
  PagedKv kv{};

  F16Cache(int64_t num_blocks, int64_t block_size, int64_t kv_heads, int64_t hd, uint16_t fill)
      : k(num_blocks * block_size * kv_heads * hd, fill), v(k.size(), fill) {
    kv = PagedKv{nullptr, nullptr, num_blocks, block_size, kv_heads, hd};
    kv.k_f16 = k.data();
    kv.v_f16 = v.data();
  }
  double k_at(int64_t slot, int64_t h, int64_t d) const { return f16_to_f32(k[(slot * kv.num_kv_heads + h) * kv.head_dim + d]); }
  double v_at(int64_t slot, int64_t h, int64_t d) const { return f16_to_f32(v[(slot * kv.num_kv_heads + h) * kv.head_dim + d]); }
};

constexpr uint16_t kHalfNan = 0x7e00;

bool half_is_nan(uint16_t h) { return (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0; }

TEST_P(PagedAttentionTest, F16CacheMatchesFloat64OverRoundedCache) {
  const std::vector<int64_t> seq_lens = {1, 17, 40, 5, 33};
  // Odd head dims exercise the 16-wide loop, the 8-wide loop and the scalar tail in every mix.
  const std::vector<Case> cases = {
      {2, 1, 8, 4}, {2, 2, 7, 1}, {1, 4, 64, 16}, {2, 4, 13, 3}, {3, 2, 69, 8}, {1, 1, 24, 5}, {2, 3, 33, 16}, {1, 2, 1, 2},
  };
  std::mt19937 rng(91);
  ThreadPool pool(3);
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message() << "kv_heads=" << c.num_kv_heads << " group=" << c.group
                                      << " head_dim=" << c.head_dim << " block_size=" << c.block_size);
    Problem pr = make_problem(c, seq_lens, rng);
    const int64_t H = pr.num_heads, KVH = c.num_kv_heads, hd = c.head_dim, T = pr.T, stride = pr.qkv_stride;
    float* q = pr.qkv.data();
    float* k = q + H * hd;
    float* v = k + KVH * hd;
    // Real keys have a few large channels; small values land in f16's subnormal range.
    std::uniform_int_distribution<int64_t> any_d(0, hd - 1);
    const int64_t hot_channel = any_d(rng);
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t h = 0; h < KVH; ++h) k[t * stride + h * hd + hot_channel] *= 24.0f;
      if (t % 7 == 3) v[t * stride + any_d(rng)] = (t % 2 ? 300.0f : -300.0f);
      if (t % 5 == 1) k[t * stride + any_d(rng)] *= 1e-5f;
    }

    // Unwritten slots hold NaN halves, which would poison the output if read.
    F16Cache cache(pr.num_blocks, c.block_size, KVH, hd, kHalfNan);
    kv_cache_write(k, v, T, stride, pr.slots.data(), cache.kv);
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t i = 0; i < KVH * hd; ++i) {
        const int64_t at = pr.slots[t] * KVH * hd + i;
        ASSERT_EQ(cache.k[at], f32_to_f16(k[t * stride + i])) << "token " << t << " k element " << i;
        ASSERT_EQ(cache.v[at], f32_to_f16(v[t * stride + i])) << "token " << t << " v element " << i;
      }
    }

    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    std::vector<float> out(T * H * hd);
    paged_attention(q, T, stride, pr.token_seq.data(), pr.positions.data(), pr.block_tables.data(),
                    pr.max_blocks_per_seq, cache.kv, H, scale, out.data(), pool);

    // The same attention over an f32 cache holding the rounded values: the f16 path widens each tile's
    // halves exactly into the same f32 staging rows the f32 path copies its rows into, and from there
    // the arithmetic is one code, so the results are identical, bit for bit, at every head_dim.
    std::vector<float> k32(cache.k.size()), v32(cache.v.size());
    for (size_t i = 0; i < k32.size(); ++i) {
      k32[i] = f16_to_f32(cache.k[i]);
      v32[i] = f16_to_f32(cache.v[i]);
    }
    const PagedKv kv32{k32.data(), v32.data(), pr.num_blocks, c.block_size, KVH, hd};
    std::vector<float> out32(T * H * hd);
    paged_attention(q, T, stride, pr.token_seq.data(), pr.positions.data(), pr.block_tables.data(),
                    pr.max_blocks_per_seq, kv32, H, scale, out32.data(), pool);
    for (size_t i = 0; i < out.size(); ++i) ASSERT_EQ(out[i], out32[i]) << "output element " << i;

    for (int64_t t = 0; t < T; ++t) {
      for (int64_t h = 0; h < H; ++h) {
        const int64_t kvh = h / c.group;
        const float* qh = q + t * stride + h * hd;
        const int64_t n = pr.tokens[t].pos + 1;
        std::vector<int64_t> slot(n);
        for (int64_t p = 0; p < n; ++p) slot[p] = pr.slots[pr.row_of[pr.tokens[t].seq * pr.max_len + p]];
        std::vector<double> w(n);
        double max_score = -INFINITY, max_abs_qk = 0, max_abs_v = 0;
        for (int64_t p = 0; p < n; ++p) {
          double dot = 0, abs_dot = 0;
          for (int64_t d = 0; d < hd; ++d) {
            dot += static_cast<double>(qh[d]) * cache.k_at(slot[p], kvh, d);
            abs_dot += std::fabs(static_cast<double>(qh[d]) * cache.k_at(slot[p], kvh, d));
            max_abs_v = std::max(max_abs_v, std::fabs(cache.v_at(slot[p], kvh, d)));
          }
          w[p] = dot * scale;
          max_score = std::max(max_score, w[p]);
          max_abs_qk = std::max(max_abs_qk, abs_dot * scale);
        }
        double sum = 0;
        for (double& x : w) sum += (x = std::exp(x - max_score));
        // The f32 cache's error budget (MatchesDenseCausalAttention) over the rounded values, which are
        // exact in f32; the values here reach max_abs_v, not 1.
        const double delta = (hd + 2) * kUnit * max_abs_qk;
        const double tol = (2 * delta + (2 * n + 16) * kUnit) * std::max(1.0, max_abs_v);
        for (int64_t d = 0; d < hd; ++d) {
          double exact = 0;
          for (int64_t p = 0; p < n; ++p) exact += w[p] / sum * cache.v_at(slot[p], kvh, d);
          ASSERT_NEAR(out[(t * H + h) * hd + d], exact, tol)
              << "token " << t << " (seq " << pr.tokens[t].seq << ", pos " << pr.tokens[t].pos << ") head " << h << " d " << d;
        }
      }
    }
  }
}

// kv_cache_write into an f16 cache: round to nearest even on both paths, the same bits as
// f32_to_f16 (ties, the largest half, overflow to inf, subnormals, signed zero, inf, NaN), rows of
// 3 heads x 5 = 15 elements so the specials fall in the 8-wide loop and in the tail; padding skipped.
TEST_P(PagedAttentionTest, F16WriteRoundsToNearestEvenAndSkipsPadding) {
  const int64_t kv_heads = 3, hd = 5, block_size = 2, num_blocks = 3;
  const int64_t row = kv_heads * hd, stride = row + 2;
  const float tie_down = 1.0f + 0x1p-11f;        // halfway between 1 and 1 + 2^-10: to even, 1
  const float tie_up = 1.0f + 3 * 0x1p-11f;      // halfway between 1 + 2^-10 and 1 + 2^-9: to even, 1 + 2^-9
  const float specials[] = {tie_down, tie_up, 65504.0f, 65519.0f, 65520.0f, -70000.0f, 0x1p-24f, 0x1p-25f,
                            3 * 0x1p-25f, -0.0f, INFINITY, -INFINITY, NAN, 1e-10f, 0.1f};
  // Known halves for the cases above (NaN aside), independent of f32_to_f16.
  const uint16_t expected[] = {0x3c00, 0x3c02, 0x7bff, 0x7bff, 0x7c00, 0xfc00, 0x0001, 0x0000,
                               0x0002, 0x8000, 0x7c00, 0xfc00, kHalfNan, 0x0000, 0x2e66};
  static_assert(sizeof(specials) / sizeof(float) == 15);
  std::mt19937 rng(5);
  std::vector<float> k = testing::random_floats(rng, 3 * stride, -3.0f, 3.0f);
  std::vector<float> v = testing::random_floats(rng, 3 * stride, -3.0f, 3.0f);
  for (int64_t i = 0; i < row; ++i) {
    k[i] = specials[i];                 // token 0: specials in order
    v[2 * stride + i] = specials[row - 1 - i];  // token 2: reversed, so both loops see each
  }
  F16Cache cache(num_blocks, block_size, kv_heads, hd, 0x1234);
  const std::vector<int32_t> slots = {5, -1, 2};  // token 1 is padding
  kv_cache_write(k.data(), v.data(), 3, stride, slots.data(), cache.kv);
  for (int64_t slot = 0; slot < num_blocks * block_size; ++slot) {
    const int64_t token = slot == 5 ? 0 : slot == 2 ? 2 : -1;
    for (int64_t i = 0; i < row; ++i) {
      const uint16_t got_k = cache.k[slot * row + i], got_v = cache.v[slot * row + i];
      if (token < 0) {
        EXPECT_EQ(got_k, 0x1234) << "slot " << slot;
        EXPECT_EQ(got_v, 0x1234) << "slot " << slot;
        continue;
      }
      const float xk = k[token * stride + i], xv = v[token * stride + i];
      if (std::isnan(xk)) EXPECT_TRUE(half_is_nan(got_k)) << "slot " << slot << " k " << i;
      else EXPECT_EQ(got_k, f32_to_f16(xk)) << "slot " << slot << " k " << i << " x " << xk;
      if (std::isnan(xv)) EXPECT_TRUE(half_is_nan(got_v)) << "slot " << slot << " v " << i;
      else EXPECT_EQ(got_v, f32_to_f16(xv)) << "slot " << slot << " v " << i << " x " << xv;
    }
  }
  for (int64_t i = 0; i < row; ++i) {
    if (std::isnan(specials[i])) continue;
    EXPECT_EQ(cache.k[5 * row + i], expected[i]) << "special " << i << " " << specials[i];
    EXPECT_EQ(cache.v[2 * row + row - 1 - i], expected[i]) << "special " << i << " " << specials[i];
  }
  // Round trip: every finite half written as f32 comes back unchanged.
  std::vector<float> all(65536);
  std::vector<int32_t> slot_of(1);
  F16Cache one(1, 1, 1, 65536, 0);
  int64_t finite = 0;
  for (uint32_t h = 0; h < 65536; ++h) all[h] = f16_to_f32(static_cast<uint16_t>(h));
  slot_of[0] = 0;
  kv_cache_write(all.data(), all.data(), 1, 65536, slot_of.data(), one.kv);
  for (uint32_t h = 0; h < 65536; ++h) {
    if (half_is_nan(static_cast<uint16_t>(h))) continue;
    ++finite;
    ASSERT_EQ(one.k[h], h) << "half " << h;
    ASSERT_EQ(one.v[h], h) << "half " << h;
  }
  EXPECT_EQ(finite, 65536 - 2 * 1023);
}

// A cache of any of the three element types over one layer, unwritten slots poisoned (NaN keys and
// values, or NaN scales), and the value the kernel must see at (slot, head, d) in double.
struct AnyCache {
  KvDtype dtype;
  std::vector<float> k32, v32;
  std::unique_ptr<F16Cache> f16;
  std::unique_ptr<Int8Cache> int8;
  PagedKv kv{};

  AnyCache(KvDtype d, int64_t num_blocks, int64_t block_size, int64_t kv_heads, int64_t hd) : dtype(d) {
    if (d == KvDtype::F32) {
      k32.assign(num_blocks * block_size * kv_heads * hd, NAN);
      v32.assign(k32.size(), NAN);
      kv = PagedKv{k32.data(), v32.data(), num_blocks, block_size, kv_heads, hd};
    } else if (d == KvDtype::F16) {
      f16 = std::make_unique<F16Cache>(num_blocks, block_size, kv_heads, hd, kHalfNan);
      kv = f16->kv;
    } else {
      int8 = std::make_unique<Int8Cache>(num_blocks, block_size, kv_heads, hd, 99, NAN);
      kv = int8->kv;
    }
  }
  double k_at(int64_t slot, int64_t h, int64_t d) const {
    if (f16) return f16->k_at(slot, h, d);
    if (int8) return int8->k_at(slot, h, d);
    return k32[(slot * kv.num_kv_heads + h) * kv.head_dim + d];
  }
  double v_at(int64_t slot, int64_t h, int64_t d) const {
    if (f16) return f16->v_at(slot, h, d);
    if (int8) return int8->v_at(slot, h, d);
    return v32[(slot * kv.num_kv_heads + h) * kv.head_dim + d];
  }
};

const char* dtype_name(KvDtype d) { return d == KvDtype::F32 ? "f32" : d == KvDtype::F16 ? "f16" : "int8"; }

// paged_attention of the tokens `queries` (indices into pr.tokens, any order, any subset: the cache
// holds every token of pr) checked against causal attention in double over the values the cache holds.
// Error budget, per output element, with u = 2^-24, n = positions seen, hd = head_dim:
//   score: an f32 dot of hd terms (one FMA chain) times the scale (int8: times the key's row scale):
//          |error| <= delta = (hd + 2) u Σ|q k| scale, which changes each softmax weight by a relative
//          <= 2 delta (numerator and normalizer);
//   softmax: max subtraction, exp (~2 ulp), the per-tile rescale exp(m_old - m_new) (applied to the
//          output and the running sum alike, so its own error cancels but for one rounding each per
//          tile), the running sums and the weighted sum of values over n keys: <= (2n + 16) u relative;
//   split positions (flash-decoding) merge: exp(m_s - m) weights on output and sum alike, a few more
//          roundings, inside the 16.
// The output is a convex combination of values, so the bound scales with max |v| (>= 1).
void expect_attention_matches_reference(const Problem& pr, const Case& c, const AnyCache& cache,
                                        const std::vector<int64_t>& queries, ThreadPool& pool,
                                        const std::string& what) {
  const int64_t H = pr.num_heads, hd = c.head_dim, Q = static_cast<int64_t>(queries.size());
  std::vector<float> q(Q * H * hd);
  std::vector<int32_t> seq(Q), pos(Q);
  for (int64_t i = 0; i < Q; ++i) {
    const int64_t t = queries[i];
    std::copy_n(pr.qkv.data() + t * pr.qkv_stride, H * hd, q.data() + i * H * hd);
    seq[i] = pr.tokens[t].seq;
    pos[i] = pr.tokens[t].pos;
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  std::vector<float> out(Q * H * hd, NAN);
  paged_attention(q.data(), Q, H * hd, seq.data(), pos.data(), pr.block_tables.data(), pr.max_blocks_per_seq,
                  cache.kv, H, scale, out.data(), pool);
  for (int64_t i = 0; i < Q; ++i) {
    const int64_t n = pos[i] + 1;
    std::vector<int64_t> slot(n);
    for (int64_t p = 0; p < n; ++p) slot[p] = pr.slots[pr.row_of[seq[i] * pr.max_len + p]];
    for (int64_t h = 0; h < H; ++h) {
      const int64_t kvh = h / c.group;
      const float* qh = q.data() + i * H * hd + h * hd;
      std::vector<double> w(n);
      double max_score = -INFINITY, max_abs_qk = 0, max_abs_v = 0;
      for (int64_t p = 0; p < n; ++p) {
        double dot = 0, abs_dot = 0;
        for (int64_t d = 0; d < hd; ++d) {
          const double k = cache.k_at(slot[p], kvh, d);
          dot += qh[d] * k;
          abs_dot += std::fabs(qh[d] * k);
          max_abs_v = std::max(max_abs_v, std::fabs(cache.v_at(slot[p], kvh, d)));
        }
        w[p] = dot * scale;
        max_score = std::max(max_score, w[p]);
        max_abs_qk = std::max(max_abs_qk, abs_dot * scale);
      }
      double sum = 0;
      for (double& x : w) sum += (x = std::exp(x - max_score));
      const double delta = (hd + 2) * kUnit * max_abs_qk;
      const double tol = (2 * delta + (2 * n + 16) * kUnit) * std::max(1.0, max_abs_v);
      for (int64_t d = 0; d < hd; ++d) {
        double exact = 0;
        for (int64_t p = 0; p < n; ++p) exact += w[p] / sum * cache.v_at(slot[p], kvh, d);
        ASSERT_NEAR(out[(i * H + h) * hd + d], exact, tol)
            << what << ": query " << i << " (seq " << seq[i] << ", pos " << pos[i] << ") head " << h << " d "
            << d;
      }
    }
  }
}

// Every cache dtype, GQA ratios 1, 3 and 4, head dims 8, 17 (a 16-lane vector plus a 1-element tail),
// 64 and 128, block sizes 16, 5 and 3 (positions split across blocks mid-tile): the whole batch of
// several sequences' tokens, shuffled, is one prefill call, so query blocks are ragged (a sequence's
// tokens do not fill whole blocks) and sequences of 1 to 40 tokens sit side by side.
TEST_P(PagedAttentionTest, EveryGqaRatioHeadDimAndDtype) {
  const std::vector<int64_t> seq_lens = {1, 17, 40, 5, 33};
  std::mt19937 rng(2024);
  ThreadPool pool(3);
  const int64_t block_sizes[] = {16, 5, 3};
  int64_t which = 0;
  for (int64_t group : {1, 3, 4}) {
    for (int64_t hd : {8, 17, 64, 128}) {
      const Case c{group == 4 ? 1 : group == 3 ? 3 : 2, group, hd, block_sizes[which++ % 3]};
      for (KvDtype dtype : {KvDtype::F32, KvDtype::F16, KvDtype::Int8}) {
        const std::string what = std::string(dtype_name(dtype)) +
                                 " kv_heads=" + std::to_string(c.num_kv_heads) +
                                 " group=" + std::to_string(group) + " head_dim=" + std::to_string(hd) +
                                 " block_size=" + std::to_string(c.block_size);
        SCOPED_TRACE(what);
        const Problem pr = make_problem(c, seq_lens, rng);
        AnyCache cache(dtype, pr.num_blocks, c.block_size, c.num_kv_heads, hd);
        const float* k = pr.qkv.data() + pr.num_heads * hd;
        kv_cache_write(k, k + c.num_kv_heads * hd, pr.T, pr.qkv_stride, pr.slots.data(), cache.kv);
        std::vector<int64_t> all(pr.T);
        std::iota(all.begin(), all.end(), 0);
        expect_attention_matches_reference(pr, c, cache, all, pool, what);
        if (HasFatalFailure()) return;
      }
    }
  }
}

// Long contexts (up to 1,000 positions over 63-250 blocks) read by the batches a server runs after the
// cache holds them: one decode token (on 2 or 3 threads its positions are split across threads and
// the partial softmax states merged), a decode batch of three sequences, a chunk of 21 prefill tokens
// with another sequence's decode token, and a whole 37-token prompt; on 1, 2 and 3 threads.
TEST_P(PagedAttentionTest, DecodeAndChunkedPrefillOverLongContexts) {
  const std::vector<int64_t> seq_lens = {1000, 300, 37};
  const std::vector<Case> cases = {{3, 3, 64, 16}, {1, 4, 17, 7}, {2, 1, 128, 4}};
  std::mt19937 rng(4096);
  for (const Case& c : cases) {
    const Problem pr = make_problem(c, seq_lens, rng);
    auto token = [&](int32_t seq, int32_t pos) { return pr.row_of[seq * pr.max_len + pos]; };
    std::vector<std::pair<std::string, std::vector<int64_t>>> batches = {
        {"decode", {token(0, 999)}},
        {"decode batch", {token(1, 299), token(0, 999), token(2, 36)}},
        {"chunk + decode", {}},
        {"prompt", {}},
    };
    for (int32_t p = 279; p < 300; ++p) batches[2].second.push_back(token(1, p));
    batches[2].second.push_back(token(0, 999));
    for (int32_t p = 0; p < 37; ++p) batches[3].second.push_back(token(2, p));
    for (KvDtype dtype : {KvDtype::F32, KvDtype::F16, KvDtype::Int8}) {
      AnyCache cache(dtype, pr.num_blocks, c.block_size, c.num_kv_heads, c.head_dim);
      const float* k = pr.qkv.data() + pr.num_heads * c.head_dim;
      kv_cache_write(k, k + c.num_kv_heads * c.head_dim, pr.T, pr.qkv_stride, pr.slots.data(), cache.kv);
      for (int threads : {1, 2, 3}) {
        ThreadPool pool(threads);
        for (const auto& [name, queries] : batches) {
          const std::string what =
              name + " " + dtype_name(dtype) + " threads=" + std::to_string(threads) +
              " kv_heads=" + std::to_string(c.num_kv_heads) + " group=" + std::to_string(c.group) +
              " head_dim=" + std::to_string(c.head_dim) + " block_size=" + std::to_string(c.block_size);
          SCOPED_TRACE(what);
          expect_attention_matches_reference(pr, c, cache, queries, pool, what);
          if (HasFatalFailure()) return;
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Paths, PagedAttentionTest, ::testing::ValuesIn(testing::available_paths()),
                         testing::path_name);

}  // namespace
}  // namespace kiln::cpu
