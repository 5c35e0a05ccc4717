// The decode fast path against its plain form: rope_kv_write against rope(q) + rope(k) +
// kv_cache_write, paged_attention_decode against rope_kv_write + paged_attention, and a chain of decode-layer kernels with programmatic dependent launch against the
// same chain fully serialized (eagerly and captured in a CUDA graph). Kernels are deterministic, so
// both comparisons are bit for bit; a kernel that consumed its input before griddepcontrol.wait, or
// wrote before it, would read a stale row and differ.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/kernels.h"
#include "backend/cuda/launch.h"
#include "cuda_test_util.h"

namespace kiln::cuda::testing {
namespace {

const DType kActs[] = {DType::F16, DType::BF16};

#define STATUS_OK(expr)                                      \
  do {                                                       \
    const Status status_ = (expr);                           \
    ASSERT_TRUE(status_.ok()) << status_.error().message;    \
  } while (0)

struct RopeTables {
  std::vector<float> cos, sin;
};
RopeTables rope_tables(int64_t max_position, int64_t head_dim) {
  const int64_t half = head_dim / 2;
  RopeTables t{std::vector<float>(max_position * half), std::vector<float>(max_position * half)};
  for (int64_t p = 0; p < max_position; ++p)
    for (int64_t j = 0; j < half; ++j) {
      const double angle = p * std::pow(10000.0, -2.0 * j / head_dim);
      t.cos[p * half + j] = static_cast<float>(std::cos(angle));
      t.sin[p * half + j] = static_cast<float>(std::sin(angle));
    }
  return t;
}

// Distance in units in the last place between two activations of the same sign (0 = identical bits).
int ulp_distance(uint16_t a, uint16_t b) {
  if (a == b) return 0;
  if ((a ^ b) & 0x8000) return 1 << 16;  // different signs: treat as far apart
  return std::abs(int(a) - int(b));
}

// ---------------------------------------------------------------- rope_kv_write

struct RopeKvCase {
  int64_t M, num_heads, num_kv_heads, head_dim;
  bool fused_row;  // q, k, v slices of one [M, (H + 2 KV) * head_dim + pad] row; else three buffers
};

// Both paths start from the same q/k/v bits and NaN-poisoned caches. The fused kernel does the same
// f32 operations per pair as rope.cu and copies the rounded k, so the expected difference is none;
// the bound is 1 ulp in case the compiler contracts a * c - b * s into an FMA differently in the two
// kernels (one rounding of the product), and the count of non-identical elements is reported.
void run_rope_kv_write(std::mt19937& rng, DType act, bool interleaved, const RopeKvCase& c) {
  SCOPED_TRACE(::testing::Message() << dtype_name(act) << " interleaved=" << interleaved << " M=" << c.M
                                    << " heads=" << c.num_heads << " kv_heads=" << c.num_kv_heads
                                    << " head_dim=" << c.head_dim << " fused_row=" << c.fused_row);
  const int64_t q_width = c.num_heads * c.head_dim, kv_width = c.num_kv_heads * c.head_dim;
  const int64_t ld_q = c.fused_row ? q_width + 2 * kv_width + 8 : q_width;
  const int64_t ld_kv = c.fused_row ? ld_q : kv_width;
  const int64_t max_position = 97, block_size = 4, num_blocks = (c.M + block_size - 1) / block_size + 2;
  const RopeTables t = rope_tables(max_position, c.head_dim);
  std::vector<int32_t> positions(c.M), slots(c.M);
  std::vector<int32_t> free_slots(num_blocks * block_size);
  for (size_t i = 0; i < free_slots.size(); ++i) free_slots[i] = int32_t(i);
  std::shuffle(free_slots.begin(), free_slots.end(), rng);
  for (int64_t m = 0; m < c.M; ++m) {
    positions[m] = std::uniform_int_distribution<int32_t>(0, max_position - 1)(rng);
    slots[m] = m % 5 == 3 ? -1 : free_slots[m];  // some padding tokens
  }
  // One buffer holds q, k, v (fused row) or three separate ones laid end to end.
  const int64_t q_elems = c.M * ld_q, kv_elems = c.M * ld_kv;
  const int64_t total = c.fused_row ? q_elems : q_elems + 2 * kv_elems;
  const HostAct x = random_act(rng, total, act, -3.0, 3.0);
  const int64_t k_offset = c.fused_row ? q_width : q_elems, v_offset = c.fused_row ? q_width + kv_width
                                                                                   : q_elems + kv_elems;
  DeviceBuffer dcos(t.cos), dsin(t.sin), dpos(positions), dslots(slots);
  const size_t cache_bytes = num_blocks * block_size * kv_width * 2;

  // Composition: rope(q), rope(k), kv_cache_write.
  DeviceBuffer ux(x.bits), uk_cache(cache_bytes), uv_cache(cache_bytes);
  auto* ubase = ux.get<uint16_t>();
  const PagedKv ukv{uk_cache.get(), uv_cache.get(), num_blocks, block_size, c.num_kv_heads, c.head_dim};
  STATUS_OK(rope(ubase, c.M, ld_q, 0, c.num_heads, c.head_dim, dpos.get<int32_t>(), dcos.get<float>(),
                 dsin.get<float>(), interleaved, act, nullptr));
  STATUS_OK(rope(ubase + k_offset, c.M, ld_kv, 0, c.num_kv_heads, c.head_dim, dpos.get<int32_t>(),
                 dcos.get<float>(), dsin.get<float>(), interleaved, act, nullptr));
  STATUS_OK(kv_cache_write(ubase + k_offset, ubase + v_offset, c.M, ld_kv, dslots.get<int32_t>(), ukv, act,
                           nullptr));

  // Fused.
  DeviceBuffer fx(x.bits), fk_cache(cache_bytes), fv_cache(cache_bytes);
  auto* fbase = fx.get<uint16_t>();
  const PagedKv fkv{fk_cache.get(), fv_cache.get(), num_blocks, block_size, c.num_kv_heads, c.head_dim};
  STATUS_OK(rope_kv_write(fbase, ld_q, c.num_heads, fbase + k_offset, ld_kv, fbase + v_offset, ld_kv, c.M,
                          dpos.get<int32_t>(), dcos.get<float>(), dsin.get<float>(), interleaved,
                          dslots.get<int32_t>(), fkv, act, nullptr));

  int64_t differing = 0, written_slots = 0;
  const auto compare = [&](const std::vector<uint16_t>& want, const std::vector<uint16_t>& got, const char* what) {
    ASSERT_EQ(want.size(), got.size());
    for (size_t i = 0; i < want.size(); ++i) {
      const int d = ulp_distance(want[i], got[i]);
      ASSERT_LE(d, 1) << what << "[" << i << "]: composition " << want[i] << ", fused " << got[i];
      differing += d != 0;
    }
  };
  compare(ux.download<uint16_t>(), fx.download<uint16_t>(), "q/k/v rows");
  const auto k_cache = fk_cache.download<uint16_t>();
  compare(uk_cache.download<uint16_t>(), k_cache, "k_cache");
  compare(uv_cache.download<uint16_t>(), fv_cache.download<uint16_t>(), "v_cache");
  // The composition is only a reference if it wrote something: every non-padding slot is filled.
  for (int64_t m = 0; m < c.M; ++m) {
    if (slots[m] < 0) continue;
    ++written_slots;
    for (int64_t i = 0; i < kv_width; ++i) ASSERT_NE(k_cache[slots[m] * kv_width + i], 0xFFFF) << "slot " << slots[m];
  }
  EXPECT_EQ(differing, 0) << "elements 1 ulp apart (allowed, reported)";
  ::testing::Test::RecordProperty("differing_" + std::to_string(c.M) + "_" + std::to_string(c.head_dim),
                                  std::to_string(differing));
  EXPECT_GT(written_slots, 0);  // token 0 is never padding
}

TEST(CudaRopeKvWrite, MatchesRopeRopeKvCacheWrite) {
  GPU_OR_SKIP();
  std::mt19937 rng(21);
  const RopeKvCase cases[] = {
      {1, 32, 32, 128, true},   // Llama-2-7B decode, fused QKV row
      {1, 32, 8, 128, true},    // GQA 4
      {7, 8, 2, 64, false},     // separate q/k/v buffers
      {13, 4, 1, 8, true},      // head_dim 8: one thread per head
      {33, 6, 3, 16, false},    // GQA 2, odd M
  };
  for (DType act : kActs)
    for (bool interleaved : {false, true})
      for (const RopeKvCase& c : cases) run_rope_kv_write(rng, act, interleaved, c);
}

TEST(CudaRopeKvWrite, RejectsBadArguments) {
  GPU_OR_SKIP();
  DeviceBuffer buf(1 << 16);
  auto* p = buf.get<uint16_t>();
  const int32_t* ids = buf.get<int32_t>();
  const float* table = buf.get<float>();
  const PagedKv kv{buf.get(), buf.get(), 4, 4, 2, 64};
  // k row narrower than its heads.
  const Status narrow = rope_kv_write(p, 256, 4, p, 64, p, 128, 1, ids, table, table, false, ids, kv, DType::F16, nullptr);
  ASSERT_FALSE(narrow.ok());
  EXPECT_NE(narrow.error().message.find("rope_kv_write [M=1 heads=4 kv_heads=2 head_dim=64"), std::string::npos)
      << narrow.error().message;
  // head_dim not a multiple of 8, misaligned q, f32 activations.
  const PagedKv odd{buf.get(), buf.get(), 4, 4, 2, 12};
  EXPECT_FALSE(rope_kv_write(p, 48, 4, p, 24, p, 24, 1, ids, table, table, false, ids, odd, DType::F16, nullptr).ok());
  EXPECT_FALSE(rope_kv_write(p + 1, 256, 4, p, 128, p, 128, 1, ids, table, table, false, ids, kv, DType::F16, nullptr).ok());
  EXPECT_FALSE(rope_kv_write(p, 256, 4, p, 128, p, 128, 1, ids, table, table, false, ids, kv, DType::F32, nullptr).ok());
}

// ---------------------------------------------------------------- paged_attention_decode

// A decode step of one token per sequence: paged_attention_decode (RoPE and the KV write inside the
// split-K kernel) against rope_kv_write + paged_attention (or kv_cache_write + paged_attention
// without RoPE) on the same bits. Both round the rotated q and k to the activation dtype once and
// accumulate in the same order at the same split count, so outputs and caches must be identical.
struct DecodeCase {
  int64_t heads, kv_heads, head_dim, block_size;
  std::vector<int32_t> positions;  // one token per sequence
  bool graph_bound;                // max_position = 4096 (as a captured decode graph passes), else tight
  bool no_workspace = false;       // one split: the whole context in one CTA (the own row in a later round)
};

void run_attention_decode(std::mt19937& rng, DType act, int rope_mode, const DecodeCase& c) {
  const bool rope_on = rope_mode != 0, interleaved = rope_mode == 2;
  const int64_t M = static_cast<int64_t>(c.positions.size()), D = c.head_dim;
  SCOPED_TRACE(::testing::Message() << dtype_name(act) << " rope=" << rope_mode << " heads=" << c.heads
                                    << " kv_heads=" << c.kv_heads << " head_dim=" << D << " M=" << M
                                    << " graph_bound=" << c.graph_bound);
  const int64_t q_width = c.heads * D, kv_width = c.kv_heads * D, ld = q_width + 2 * kv_width;  // fused qkv row
  int32_t max_pos = 0;
  for (int32_t p : c.positions) max_pos = std::max(max_pos, p);
  const int64_t max_position = c.graph_bound ? 4096 : max_pos + 1;
  const int64_t max_blocks = (max_position + c.block_size - 1) / c.block_size;  // table width
  const int64_t num_blocks = M * max_blocks + 3;
  // Shuffled blocks; token m = sequence m; token 1 (when there are 3+) is padding (slot -1).
  std::vector<int32_t> perm(num_blocks), tables(M * max_blocks, 0), seqs(M), slots(M);
  for (int64_t i = 0; i < num_blocks; ++i) perm[i] = int32_t(i);
  std::shuffle(perm.begin(), perm.end(), rng);
  for (int64_t m = 0; m < M; ++m) {
    seqs[m] = int32_t(m);
    for (int64_t b = 0; b < max_blocks; ++b) tables[m * max_blocks + b] = perm[m * max_blocks + b];
    const int32_t pos = c.positions[m];
    const bool padding = M >= 3 && m == 1;
    slots[m] = padding ? -1 : int32_t(tables[m * max_blocks + pos / c.block_size] * c.block_size + pos % c.block_size);
  }
  const int64_t cache_elems = num_blocks * c.block_size * kv_width;
  // Earlier positions hold random k/v; the new tokens' slots hold NaN (poison) until written.
  HostAct k_cache0 = random_act(rng, cache_elems, act, -1.0, 1.0), v_cache0 = random_act(rng, cache_elems, act, -1.0, 1.0);
  for (int64_t m = 0; m < M; ++m) {
    if (slots[m] < 0) continue;
    std::fill_n(k_cache0.bits.begin() + slots[m] * kv_width, kv_width, uint16_t{0xFFFF});
    std::fill_n(v_cache0.bits.begin() + slots[m] * kv_width, kv_width, uint16_t{0xFFFF});
  }
  const HostAct qkv = random_act(rng, M * ld, act, -2.0, 2.0);
  const RopeTables t = rope_tables(4096, D);
  DeviceBuffer dcos(t.cos), dsin(t.sin), dpos(c.positions), dseq(seqs), dtab(tables), dslots(slots);
  const AttentionBatch batch{M, dseq.get<int32_t>(), dpos.get<int32_t>(), dtab.get<int32_t>(), max_blocks, max_position};
  const size_t ws_bytes = c.no_workspace ? 0 : attention_workspace_bytes(M, c.heads, D, 4096);
  const float scale = 1.0f / std::sqrt(float(D));
  const float* cos = rope_on ? dcos.get<float>() : nullptr;
  const float* sin = rope_on ? dsin.get<float>() : nullptr;

  struct Run {
    std::unique_ptr<DeviceBuffer> x, k_cache, v_cache, out, ws;
  };
  const auto make_run = [&] {
    Run r{std::make_unique<DeviceBuffer>(qkv.bits), std::make_unique<DeviceBuffer>(k_cache0.bits),
          std::make_unique<DeviceBuffer>(v_cache0.bits), std::make_unique<DeviceBuffer>(size_t(M * q_width * 2)),
          std::make_unique<DeviceBuffer>(std::max<size_t>(ws_bytes, 16))};
    EXPECT_EQ(cudaMemset(r.ws->get(), 0, std::max<size_t>(ws_bytes, 16)), cudaSuccess);
    if (c.no_workspace) r.ws.reset();
    return r;
  };
  // Reference: the separate kernels.
  Run a = make_run();
  auto* ax = a.x->get<uint16_t>();
  const PagedKv akv{a.k_cache->get(), a.v_cache->get(), num_blocks, c.block_size, c.kv_heads, D};
  if (rope_on) {
    STATUS_OK(rope_kv_write(ax, ld, c.heads, ax + q_width, ld, ax + q_width + kv_width, ld, M, dpos.get<int32_t>(), cos,
                            sin, interleaved, dslots.get<int32_t>(), akv, act, nullptr));
  } else {
    STATUS_OK(kv_cache_write(ax + q_width, ax + q_width + kv_width, M, ld, dslots.get<int32_t>(), akv, act, nullptr));
  }
  STATUS_OK(paged_attention(ax, ld, batch, akv, c.heads, scale, a.out->get(), a.ws ? a.ws->get() : nullptr, ws_bytes,
                            act, nullptr));
  // Fused.
  Run b = make_run();
  auto* bx = b.x->get<uint16_t>();
  const PagedKv bkv{b.k_cache->get(), b.v_cache->get(), num_blocks, c.block_size, c.kv_heads, D};
  const NewTokens fresh{bx + q_width, ld, bx + q_width + kv_width, ld, dslots.get<int32_t>(), cos, sin, interleaved};
  STATUS_OK(paged_attention_decode(bx, ld, batch, fresh, bkv, c.heads, scale, b.out->get(),
                                   b.ws ? b.ws->get() : nullptr, ws_bytes, act, nullptr));

  const auto want_out = a.out->download<uint16_t>(), got_out = b.out->download<uint16_t>();
  int64_t compared = 0;
  for (int64_t m = 0; m < M; ++m) {
    if (slots[m] < 0) continue;  // padding: its row is dropped (the reference read the cache's row there)
    for (int64_t i = 0; i < q_width; ++i) {
      const uint16_t w = want_out[m * q_width + i], g = got_out[m * q_width + i];
      ASSERT_EQ(w, g) << "token " << m << " (position " << c.positions[m] << ") element " << i;
      ASSERT_NE(w, 0xFFFF) << "token " << m << ": output not written";
      ++compared;
    }
  }
  EXPECT_GT(compared, 0);
  ASSERT_TRUE(a.k_cache->download<uint16_t>() == b.k_cache->download<uint16_t>()) << "k caches differ";
  ASSERT_TRUE(a.v_cache->download<uint16_t>() == b.v_cache->download<uint16_t>()) << "v caches differ";
  // The fused kernel leaves q as it found it (not rotated in place).
  ASSERT_TRUE(b.x->download<uint16_t>() == qkv.bits) << "paged_attention_decode modified its q/k/v rows";
}

TEST(CudaAttentionDecode, FusedRopeKvWriteMatchesSeparateKernels) {
  GPU_OR_SKIP();
  std::mt19937 rng(33);
  const std::vector<DecodeCase> cases = {
      {32, 32, 128, 16, {200}, true},                     // Llama-2-7B batch 1 in a decode graph
      {32, 32, 128, 16, {0}, true},                       // the first position: the new row only
      {32, 8, 128, 16, {31, 32, 33, 1000, 4095}, true},   // GQA 4, chunk boundaries, the last position
      {8, 2, 64, 16, {5, 0, 63, 64, 257, 2047}, false},   // tight bound, a padding token
      {4, 4, 16, 32, {1, 2, 3, 100, 700}, true},          // head_dim 16 (HF partner in the next vector)
      {16, 1, 64, 16, {300, 301, 129}, false},            // GQA 16: two head tiles share the new row
      {32, 8, 128, 16, {300, 1000}, false, true},         // one split: the own row in a later 256-position round
  };
  for (DType act : kActs)
    for (int rope_mode : {1, 2, 0})
      for (const DecodeCase& c : cases) run_attention_decode(rng, act, rope_mode, c);
}

TEST(CudaAttentionDecode, RejectsBadArguments) {
  GPU_OR_SKIP();
  DeviceBuffer buf(1 << 16);
  auto* p = buf.get<uint16_t>();
  const int32_t* ids = buf.get<int32_t>();
  const float* table = buf.get<float>();
  const PagedKv kv{buf.get(), buf.get(), 4, 4, 2, 8};
  const AttentionBatch batch{1, ids, ids, ids, 1, 1};
  // head_dim 8 with RoPE: pairs would straddle 16-byte vectors.
  const NewTokens fresh{p, 64, p, 64, ids, table, table, false};
  const Status s = paged_attention_decode(p, 64, batch, fresh, kv, 4, 1.f, p, nullptr, 0, DType::F16, nullptr);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message.find("paged_attention_decode [M=1"), std::string::npos) << s.error().message;
  // Misaligned k, k stride narrower than its heads, no slots.
  EXPECT_FALSE(paged_attention_decode(p, 64, batch, NewTokens{p + 1, 64, p, 64, ids, nullptr, nullptr, false}, kv, 4,
                                      1.f, p, nullptr, 0, DType::F16, nullptr).ok());
  EXPECT_FALSE(paged_attention_decode(p, 64, batch, NewTokens{p, 8, p, 64, ids, nullptr, nullptr, false}, kv, 4, 1.f,
                                      p, nullptr, 0, DType::F16, nullptr).ok());
  EXPECT_FALSE(paged_attention_decode(p, 64, batch, NewTokens{p, 64, p, 64, nullptr, nullptr, nullptr, false}, kv, 4,
                                      1.f, p, nullptr, 0, DType::F16, nullptr).ok());
}

// ---------------------------------------------------------------- programmatic dependent launch

// A Llama-like decode layer chain at small sizes (D = 512, 8 heads of 64, F = 1408), several layers,
// M = 1 and 3. Every kernel consumes its predecessor's output, so an early read shows up as a
// different residual stream. With `attention`, the layer runs the executor's decode attention
// (paged_attention_decode: RoPE, the KV write, split-K over 2 chunks and the merge in one kernel, which
// reads metadata and old K/V before its PDL wait) and o_proj reads its output; without, rope_kv_write
// and o_proj on q's columns stand in for it.
struct Chain {
  static constexpr int64_t D = 512, H = 8, KV = 2, HD = 64, F = 1408, QKV = (H + 2 * KV) * HD, L = 6;
  static constexpr int64_t kMaxPosition = 64, kBlockSize = 4, kTableWidth = kMaxPosition / kBlockSize;
  static constexpr int64_t kBlocks = 48;  // per layer: sequence m owns blocks [16 m, 16 m + 16)
  static constexpr int64_t kCacheElems = kBlocks * kBlockSize * KV * HD;
  DType act;
  int64_t M;
  bool attention;
  std::unique_ptr<DeviceBuffer> residual, normed, qkv, h, gate_up, swiglu_out, norm_w, w, k_cache, v_cache;
  std::unique_ptr<DeviceBuffer> cos, sin, positions, slots, seqs, tables, attn_out, workspace;
  size_t workspace_bytes = 0;
  std::vector<uint16_t> residual0, k_cache0, v_cache0;

  Chain(std::mt19937& rng, DType act_, int64_t M_, bool attention_) : act(act_), M(M_), attention(attention_) {
    const int64_t per_layer = QKV * D + D * D + 2 * F * D + D * F;
    residual0 = random_act(rng, M * D, act, -1.0, 1.0).bits;
    residual = std::make_unique<DeviceBuffer>(residual0);
    normed = std::make_unique<DeviceBuffer>(M * D * 2);
    qkv = std::make_unique<DeviceBuffer>(M * QKV * 2);
    h = std::make_unique<DeviceBuffer>(M * D * 2);
    gate_up = std::make_unique<DeviceBuffer>(M * 2 * F * 2);
    swiglu_out = std::make_unique<DeviceBuffer>(M * F * 2);
    attn_out = std::make_unique<DeviceBuffer>(M * D * 2);
    norm_w = std::make_unique<DeviceBuffer>(random_f32(rng, D, 0.5f, 1.5f));
    w = std::make_unique<DeviceBuffer>(random_act(rng, L * per_layer, act, -0.06, 0.06).bits);
    // Earlier positions hold finite random k/v (attention reads them); without attention the caches
    // start poisoned and only the written slots matter.
    k_cache0 = attention ? random_act(rng, L * kCacheElems, act, -1.0, 1.0).bits
                         : std::vector<uint16_t>(L * kCacheElems, 0xFFFF);
    v_cache0 = attention ? random_act(rng, L * kCacheElems, act, -1.0, 1.0).bits
                         : std::vector<uint16_t>(L * kCacheElems, 0xFFFF);
    k_cache = std::make_unique<DeviceBuffer>(k_cache0);
    v_cache = std::make_unique<DeviceBuffer>(v_cache0);
    const RopeTables t = rope_tables(kMaxPosition, HD);
    cos = std::make_unique<DeviceBuffer>(t.cos);
    sin = std::make_unique<DeviceBuffer>(t.sin);
    // Token m: sequence m at position 40 + 7 m (2 chunks of 32: split-K with the merge), in its own blocks.
    std::vector<int32_t> pos(M), slot(M), seq(M), table(M * kTableWidth, 0);
    for (int64_t m = 0; m < M; ++m) {
      pos[m] = int32_t(40 + 7 * m);
      seq[m] = int32_t(m);
      for (int64_t b = 0; b < kTableWidth; ++b) table[m * kTableWidth + b] = int32_t(16 * m + b);
      slot[m] = table[m * kTableWidth + pos[m] / kBlockSize] * int32_t(kBlockSize) + pos[m] % int32_t(kBlockSize);
    }
    positions = std::make_unique<DeviceBuffer>(pos);
    slots = std::make_unique<DeviceBuffer>(slot);
    seqs = std::make_unique<DeviceBuffer>(seq);
    tables = std::make_unique<DeviceBuffer>(table);
    workspace_bytes = attention_workspace_bytes(M, H, HD, kMaxPosition);
    workspace = std::make_unique<DeviceBuffer>(std::max<size_t>(workspace_bytes, 16));
    EXPECT_EQ(cudaMemset(workspace->get(), 0, std::max<size_t>(workspace_bytes, 16)), cudaSuccess);  // counters
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    ::testing::Test::RecordProperty("chain_weights", std::to_string(L * per_layer));
  }

  // Enqueues L layers; h starts as zeros so the first add_rms_norm is a plain norm.
  Status enqueue(cudaStream_t stream) const {
    const int64_t per_layer = QKV * D + D * D + 2 * F * D + D * F;
    KILN_TRY(check(cudaMemsetAsync(h->get(), 0, M * D * 2, stream), "zero h"));
    auto* weights = w->get<uint16_t>();
    for (int64_t l = 0; l < L; ++l) {
      const uint16_t* w_qkv = weights + l * per_layer;
      const uint16_t* w_o = w_qkv + QKV * D;
      const uint16_t* w_gate_up = w_o + D * D;
      const uint16_t* w_down = w_gate_up + 2 * F * D;
      const PagedKv kv{k_cache->get<uint16_t>() + l * kCacheElems, v_cache->get<uint16_t>() + l * kCacheElems,
                       kBlocks, kBlockSize, KV, HD};
      auto* q = qkv->get<uint16_t>();
      KILN_TRY(add_rms_norm(residual->get(), h->get(), norm_w->get<float>(), M, D, 1e-5f, normed->get(), act, stream));
      KILN_TRY(gemv(normed->get(), M, D, w_qkv, QKV, nullptr, q, QKV, act, act, stream));
      if (attention) {
        const AttentionBatch batch{M, seqs->get<int32_t>(), positions->get<int32_t>(), tables->get<int32_t>(),
                                   kTableWidth, kMaxPosition};
        const NewTokens fresh{q + H * HD, QKV, q + (H + KV) * HD, QKV, slots->get<int32_t>(), cos->get<float>(),
                              sin->get<float>(), false};
        KILN_TRY(paged_attention_decode(q, QKV, batch, fresh, kv, H, 0.125f, attn_out->get(), workspace->get(),
                                        workspace_bytes, act, stream));
        KILN_TRY(gemv(attn_out->get(), M, D, w_o, D, nullptr, h->get(), D, act, act, stream));
      } else {
        KILN_TRY(rope_kv_write(q, QKV, H, q + H * HD, QKV, q + (H + KV) * HD, QKV, M, positions->get<int32_t>(),
                               cos->get<float>(), sin->get<float>(), false, slots->get<int32_t>(), kv, act, stream));
        // Stand-in for attention: o_proj reads q's columns through rows of stride QKV, one token at a time.
        for (int64_t m = 0; m < M; ++m)
          KILN_TRY(gemv(q + m * QKV, 1, D, w_o, D, nullptr, h->get<uint16_t>() + m * D, D, act, act, stream));
      }
      KILN_TRY(add_rms_norm(residual->get(), h->get(), norm_w->get<float>(), M, D, 1e-5f, normed->get(), act, stream));
      KILN_TRY(gemv(normed->get(), M, D, w_gate_up, 2 * F, nullptr, gate_up->get(), 2 * F, act, act, stream));
      auto* g = gate_up->get<uint16_t>();
      KILN_TRY(swiglu(g, 2 * F, g + F, 2 * F, M, F, swiglu_out->get(), act, stream));
      KILN_TRY(gemv(swiglu_out->get(), M, F, w_down, D, nullptr, h->get(), D, act, act, stream));
    }
    return add(residual->get(), h->get(), M, D, act, stream);
  }

  void reset() {
    residual->upload(residual0);
    k_cache->upload(k_cache0);
    v_cache->upload(v_cache0);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);  // the chain runs on a stream that does not wait for these
  }
  std::vector<uint16_t> result() const {
    std::vector<uint16_t> out = residual->download<uint16_t>();
    const auto k = k_cache->download<uint16_t>();
    const auto v = v_cache->download<uint16_t>();
    out.insert(out.end(), k.begin(), k.end());
    out.insert(out.end(), v.begin(), v.end());
    return out;
  }
};

// Runs the chain eagerly (repeat times) or as a graph (captured once, replayed repeat times).
std::vector<uint16_t> run_chain(Chain& chain, bool pdl, bool graph, int repeat) {
  set_programmatic_launch(pdl);
  cudaStream_t stream;
  EXPECT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  chain.reset();
  if (graph) {
    cudaGraph_t g;
    cudaGraphExec_t exec;
    EXPECT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
    const Status status = chain.enqueue(stream);
    EXPECT_EQ(cudaStreamEndCapture(stream, &g), cudaSuccess);
    EXPECT_TRUE(status.ok()) << status.error().message;
    EXPECT_EQ(cudaGraphInstantiate(&exec, g, 0), cudaSuccess);
    for (int i = 0; i < repeat; ++i) EXPECT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
    EXPECT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(g);
  } else {
    for (int i = 0; i < repeat; ++i) {
      const Status status = chain.enqueue(stream);
      EXPECT_TRUE(status.ok()) << status.error().message;
    }
    EXPECT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  }
  cudaStreamDestroy(stream);
  set_programmatic_launch(true);
  return chain.result();
}

TEST(CudaProgrammaticLaunch, DecodeChainMatchesSerializedLaunches) {
  GPU_OR_SKIP();
  int device = 0, major = 0;
  ASSERT_EQ(cudaGetDevice(&device), cudaSuccess);
  ASSERT_EQ(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), cudaSuccess);
  const char* env = std::getenv("KILN_CUDA_PDL");
  // On Hopper PDL must actually be on, or this test would compare the serialized chain with itself.
  if (major >= 9 && (env == nullptr || std::string(env) != "0")) {
    EXPECT_TRUE(programmatic_launch_enabled());
  }
  std::mt19937 rng(33);
  for (DType act : kActs) {
    for (int64_t M : {1, 3}) {
      for (bool attention : {false, true}) {
        SCOPED_TRACE(::testing::Message() << dtype_name(act) << " M=" << M << " attention=" << attention);
        Chain chain(rng, act, M, attention);
        const auto serial = run_chain(chain, false, false, 3);
        bool finite = false;
        for (int64_t i = 0; i < M * Chain::D; ++i) finite |= std::isfinite(from_act(serial[i], act)) && serial[i] != 0;
        ASSERT_TRUE(finite) << "the chain's residual is degenerate: the comparison would prove nothing";
        EXPECT_EQ(run_chain(chain, true, false, 3), serial) << "PDL, eager launches";
        EXPECT_EQ(run_chain(chain, true, true, 3), serial) << "PDL, CUDA graph";
        EXPECT_EQ(run_chain(chain, false, true, 3), serial) << "serialized, CUDA graph";
      }
    }
  }
}

}  // namespace
}  // namespace kiln::cuda::testing
