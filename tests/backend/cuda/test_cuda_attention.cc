// kv_cache_write and paged_attention (CUDA) against a dense causal attention in float64 on the CPU.
// Sequences of lengths 1..3000 live in shuffled cache blocks; steps mix decode tokens, whole prompts
// and prefill chunks that start mid-sequence, in orders that put tile boundaries inside sequences,
// so both the split-K and the tiled kernel run, alone and together. Unused cache slots and the
// output are filled with NaN first: a read of an unwritten slot or an unwritten output fails.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <thread>
#include <vector>

#include "backend/cuda/kernels.h"
#include "common/dtype.h"

namespace kiln::cuda {
namespace {

bool has_gpu() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

#define CUDA_OK(expr) ASSERT_EQ((expr), cudaSuccess) << #expr
#define STATUS_OK(expr)                         \
  do {                                          \
    const Status s_ = (expr);                   \
    ASSERT_TRUE(s_.ok()) << s_.error().message; \
  } while (0)

// Device buffer freed at scope exit.
struct DeviceBuffer {
  void* ptr = nullptr;
  explicit DeviceBuffer(size_t bytes) {
    EXPECT_EQ(cudaMalloc(&ptr, std::max<size_t>(bytes, 16)), cudaSuccess);
  }
  ~DeviceBuffer() { cudaFree(ptr); }
  template <class T>
  T* as() const {
    return static_cast<T*>(ptr);
  }
};

template <class T>
void upload(DeviceBuffer& dst, const std::vector<T>& src) {
  ASSERT_EQ(cudaMemcpy(dst.ptr, src.data(), src.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
}

uint16_t to_bits(float f, DType act) { return act == DType::F16 ? f32_to_f16(f) : f32_to_bf16(f); }
double from_bits(uint16_t b, DType act) { return act == DType::F16 ? f16_to_f32(b) : bf16_to_f32(b); }

struct Config {
  DType act;
  int head_dim;
  int group;  // query heads per kv head
  int block_size;
};

std::string config_name(const testing::TestParamInfo<Config>& info) {
  const Config& c = info.param;
  return fmt::format("{}_d{}_g{}_bs{}", dtype_name(c.act), c.head_dim, c.group, c.block_size);
}

// A paged cache holding `lengths` sequences, written through kv_cache_write, and its f64 mirror.
class PagedAttentionTest : public testing::TestWithParam<Config> {
 protected:
  static constexpr int kKvHeads = 2;
  static constexpr int kTablePositions = 8192;
  const std::vector<int> lengths_{1, 7, 100, 700, 3000, 100, 40};

  void build_cache(std::mt19937& rng) {
    const Config& c = GetParam();
    const int D = c.head_dim, bs = c.block_size;
    int blocks_needed = 0;
    max_blocks_ = 0;
    for (int L : lengths_) {
      blocks_needed += (L + bs - 1) / bs;
      max_blocks_ = std::max(max_blocks_, (L + bs - 1) / bs);
    }
    // Tables as wide as the engine's max sequence length (kTablePositions), most entries unused (-1):
    // a captured decode graph passes max_position = that length whatever the real contexts.
    max_blocks_ = std::max(max_blocks_, kTablePositions / bs);
    num_blocks_ = blocks_needed + 5;  // spare blocks stay NaN
    std::vector<int> perm(num_blocks_);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    tables_.assign(lengths_.size() * max_blocks_, -1);
    int next = 0;
    for (size_t s = 0; s < lengths_.size(); ++s)
      for (int b = 0; b < (lengths_[s] + bs - 1) / bs; ++b) tables_[s * max_blocks_ + b] = perm[next++];

    // Rows to write: every position of every sequence, plus padding rows (slot -1) full of NaN.
    const int row = kKvHeads * D;
    std::uniform_real_distribution<float> uni(-1.f, 1.f);
    std::vector<uint16_t> k_rows, v_rows;
    std::vector<int32_t> slots;
    k_ref_.assign(lengths_.size(), {});
    v_ref_.assign(lengths_.size(), {});
    for (size_t s = 0; s < lengths_.size(); ++s) {
      for (int pos = 0; pos < lengths_[s]; ++pos) {
        if (pos % 50 == 0) {  // a padding row now and then: must not land anywhere
          slots.push_back(-1);
          k_rows.insert(k_rows.end(), row, 0x7fff);
          v_rows.insert(v_rows.end(), row, 0x7fff);
        }
        slots.push_back(tables_[s * max_blocks_ + pos / bs] * bs + pos % bs);
        for (int i = 0; i < row; ++i) {
          k_rows.push_back(to_bits(uni(rng), c.act));
          v_rows.push_back(to_bits(uni(rng), c.act));
          k_ref_[s].push_back(from_bits(k_rows.back(), c.act));
          v_ref_[s].push_back(from_bits(v_rows.back(), c.act));
        }
      }
    }
    const size_t cache_bytes = size_t(num_blocks_) * bs * row * 2;
    k_cache_ = std::make_unique<DeviceBuffer>(cache_bytes);
    v_cache_ = std::make_unique<DeviceBuffer>(cache_bytes);
    ASSERT_EQ(cudaMemset(k_cache_->ptr, 0xff, cache_bytes), cudaSuccess);  // 0xffff: NaN in f16 and bf16
    ASSERT_EQ(cudaMemset(v_cache_->ptr, 0xff, cache_bytes), cudaSuccess);
    kv_ = PagedKv{k_cache_->ptr, v_cache_->ptr, num_blocks_, bs, kKvHeads, D};

    DeviceBuffer k_dev(k_rows.size() * 2), v_dev(v_rows.size() * 2), slot_dev(slots.size() * 4);
    upload(k_dev, k_rows);
    upload(v_dev, v_rows);
    upload(slot_dev, slots);
    STATUS_OK(kv_cache_write(k_dev.ptr, v_dev.ptr, int64_t(slots.size()), row, slot_dev.as<int32_t>(), kv_,
                             c.act, nullptr));
    CUDA_OK(cudaDeviceSynchronize());
  }

  // Runs one step (token i: sequence seqs[i] at position pos[i]) and checks every output element.
  // max_position: what the caller passes as the bound of the positions (0: the tight bound).
  void run_step(const std::vector<int32_t>& seqs, const std::vector<int32_t>& pos, std::mt19937& rng,
                bool with_workspace, int max_position = 0) {
    const Config& c = GetParam();
    const int D = c.head_dim, H = kKvHeads * c.group, M = int(seqs.size());
    const int q_ld = (H + 2 * kKvHeads) * D;  // q inside a fused qkv row, as the executor lays it out
    std::uniform_real_distribution<float> uni(-3.f, 3.f);  // scores with std ~1 after the 1/sqrt(D) scale
    std::vector<uint16_t> q(size_t(M) * q_ld, 0x7fff);     // k/v part of the row: NaN, must not be read
    for (int m = 0; m < M; ++m)
      for (int i = 0; i < H * D; ++i) q[size_t(m) * q_ld + i] = to_bits(uni(rng), c.act);
    const float scale = 1.f / std::sqrt(float(D));
    if (max_position == 0)
      for (int p : pos) max_position = std::max(max_position, p + 1);

    DeviceBuffer q_dev(q.size() * 2), out_dev(size_t(M) * H * D * 2), seq_dev(M * 4), pos_dev(M * 4),
        table_dev(tables_.size() * 4);
    const size_t ws_bytes = with_workspace ? attention_workspace_bytes(M, H, D, std::max(3000, max_position)) : 0;
    DeviceBuffer ws(ws_bytes);
    if (ws_bytes > 0) {
      CUDA_OK(cudaMemset(ws.ptr, 0, ws_bytes));  // the split-K arrival counters start at 0
    }
    upload(q_dev, q);
    upload(seq_dev, seqs);
    upload(pos_dev, pos);
    upload(table_dev, tables_);
    CUDA_OK(cudaMemset(out_dev.ptr, 0xff, size_t(M) * H * D * 2));  // NaN: every element must be written
    const AttentionBatch batch{
        M, seq_dev.as<int32_t>(), pos_dev.as<int32_t>(), table_dev.as<int32_t>(), max_blocks_, max_position};
    STATUS_OK(paged_attention(q_dev.ptr, q_ld, batch, kv_, H, scale, out_dev.ptr,
                              with_workspace ? ws.ptr : nullptr, ws_bytes, c.act, nullptr));
    CUDA_OK(cudaDeviceSynchronize());
    std::vector<uint16_t> out(size_t(M) * H * D);
    CUDA_OK(cudaMemcpy(out.data(), out_dev.ptr, out.size() * 2, cudaMemcpyDeviceToHost));
    // Calls on the same workspace (as the layers of a step and replayed graphs make them) give the
    // same bits: the arrival counters are back at zero after each call.
    for (int again = 0; again < 2; ++again) {
      CUDA_OK(cudaMemset(out_dev.ptr, 0xff, size_t(M) * H * D * 2));
      STATUS_OK(paged_attention(q_dev.ptr, q_ld, batch, kv_, H, scale, out_dev.ptr,
                                with_workspace ? ws.ptr : nullptr, ws_bytes, c.act, nullptr));
      std::vector<uint16_t> repeat(out.size());
      CUDA_OK(cudaMemcpy(repeat.data(), out_dev.ptr, repeat.size() * 2, cudaMemcpyDeviceToHost));
      ASSERT_TRUE(repeat == out) << "call " << again + 2 << " on the same workspace differs from the first";
    }

    // Dense reference in f64 on the same (rounded) inputs, tokens spread over the host's cores.
    std::vector<double> ref(out.size());
    auto reference = [&](int m_begin, int m_end) {
      std::vector<double> w;
      for (int m = m_begin; m < m_end; ++m) {
        const auto& K = k_ref_[seqs[m]];
        const auto& V = v_ref_[seqs[m]];
        for (int h = 0; h < H; ++h) {
          const int kvh = h / c.group;
          w.assign(pos[m] + 1, 0.0);
          double mx = -1e300;
          for (int p = 0; p <= pos[m]; ++p) {
            double s = 0;
            for (int d = 0; d < D; ++d)
              s +=
                  from_bits(q[size_t(m) * q_ld + h * D + d], c.act) * K[(size_t(p) * kKvHeads + kvh) * D + d];
            w[p] = s * double(scale);
            mx = std::max(mx, w[p]);
          }
          double sum = 0;
          for (double& x : w) sum += (x = std::exp(x - mx));
          for (int d = 0; d < D; ++d) {
            double acc = 0;
            for (int p = 0; p <= pos[m]; ++p) acc += w[p] * V[(size_t(p) * kKvHeads + kvh) * D + d];
            ref[(size_t(m) * H + h) * D + d] = acc / sum;
          }
        }
      }
    };
    const int threads = std::clamp<int>(std::thread::hardware_concurrency(), 1, 16);
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) pool.emplace_back(reference, M * t / threads, M * (t + 1) / threads);
    for (auto& t : pool) t.join();

    // Tolerance: inputs are rounded identically for the reference, so only the kernel's own rounding
    // remains: softmax weights rounded to the act dtype before P·V on tensor cores (2^-11 for f16,
    // 2^-8 for bf16, relative) and the final rounding of the output (same order). Outputs are convex
    // combinations of values in [-1, 1]: f16 2e-3, bf16 2e-2 absolute-plus-relative.
    const double tol = c.act == DType::F16 ? 2e-3 : 2e-2;
    int bad = 0;
    double err2 = 0, ref2 = 0;
    for (size_t i = 0; i < out.size(); ++i) {
      const double got = from_bits(out[i], c.act), want = ref[i];
      err2 += (got - want) * (got - want);
      ref2 += want * want;
      if (!(std::abs(got - want) <= tol * (1 + std::abs(want))) && ++bad <= 5) {
        const size_t m = i / (H * D);
        ADD_FAILURE() << "token " << m << " (seq " << seqs[m] << ", pos " << pos[m] << ") head "
                      << (i / D) % H << " dim " << i % D << ": got " << got << ", want " << want;
      }
    }
    EXPECT_EQ(bad, 0) << bad << " of " << out.size() << " elements off; relative L2 error "
                      << std::sqrt(err2 / ref2);
    EXPECT_LT(std::sqrt(err2 / ref2), tol / 2);
  }

  int num_blocks_ = 0, max_blocks_ = 0;
  std::vector<int32_t> tables_;
  std::vector<std::vector<double>> k_ref_, v_ref_;  // per sequence: [length, kv_heads, head_dim]
  std::unique_ptr<DeviceBuffer> k_cache_, v_cache_;
  PagedKv kv_{};
};

void append_range(std::vector<int32_t>& seqs, std::vector<int32_t>& pos, int seq, int first, int last) {
  for (int p = first; p <= last; ++p) {
    seqs.push_back(seq);
    pos.push_back(p);
  }
}

TEST_P(PagedAttentionTest, DecodeOneTokenPerSequence) {
  if (!has_gpu()) GTEST_SKIP() << "skipped: no GPU";
  std::mt19937 rng(1 + GetParam().head_dim * 31 + GetParam().group * 7 + GetParam().block_size);
  build_cache(rng);
  // One query at the end of each sequence, in shuffled order; with and without split-K.
  std::vector<int32_t> seqs{4, 0, 3, 1, 2, 6, 5}, pos;
  for (int s : seqs) pos.push_back(lengths_[s] - 1);
  run_step(seqs, pos, rng, /*with_workspace=*/true);
  run_step(seqs, pos, rng, /*with_workspace=*/false);
  // Batch of one at the longest context (the most splits).
  run_step({4}, {2999}, rng, true);
}

TEST_P(PagedAttentionTest, MixedPrefillAndDecode) {
  if (!has_gpu()) GTEST_SKIP() << "skipped: no GPU";
  std::mt19937 rng(2 + GetParam().head_dim * 31 + GetParam().group * 7 + GetParam().block_size);
  build_cache(rng);
  // Tiles of 64 rows: [2 decode + 62 of a chunk], [38 of the chunk + decode + 25 of a prompt],
  // [64 of the prompt], [11 of the prompt + decode + 40-token prompt + decode].
  std::vector<int32_t> seqs, pos;
  append_range(seqs, pos, 0, 0, 0);
  append_range(seqs, pos, 1, 6, 6);
  append_range(seqs, pos, 3, 600, 699);  // chunk of a 700-token prompt
  append_range(seqs, pos, 4, 2999, 2999);
  append_range(seqs, pos, 5, 0, 99);  // whole 100-token prompt
  append_range(seqs, pos, 2, 99, 99);
  append_range(seqs, pos, 6, 0, 39);  // whole 40-token prompt
  run_step(seqs, pos, rng, true);
}

TEST_P(PagedAttentionTest, GraphModeMaxPositionBeyondContexts) {
  if (!has_gpu()) GTEST_SKIP() << "skipped: no GPU";
  std::mt19937 rng(4 + GetParam().head_dim * 31 + GetParam().group * 7 + GetParam().block_size);
  build_cache(rng);
  // As a captured decode step: max_position is the table's whole width (8192) while the real
  // contexts are 1..3000, so most split-K CTAs find no positions and chunks follow the real lengths.
  std::vector<int32_t> seqs{4, 0, 3, 1, 2, 6, 5}, pos;
  for (int s : seqs) pos.push_back(lengths_[s] - 1);
  run_step(seqs, pos, rng, /*with_workspace=*/true, kTablePositions);
  run_step(seqs, pos, rng, /*with_workspace=*/false, kTablePositions);
  run_step({4}, {2999}, rng, true, kTablePositions);
  run_step({6}, {39}, rng, true, kTablePositions);  // two chunks, the second of 8 positions
  // Contexts on and around chunk boundaries (chunks are multiples of 32 positions).
  run_step({3, 3, 3, 3, 3, 3, 4, 0}, {30, 31, 32, 63, 64, 255, 2047, 0}, rng, true, kTablePositions);
  // A prefill chunk in the same step: the tiled kernel's rows are untouched by split-K and its merge.
  std::vector<int32_t> mixed_seqs, mixed_pos;
  append_range(mixed_seqs, mixed_pos, 1, 6, 6);
  append_range(mixed_seqs, mixed_pos, 3, 600, 699);
  append_range(mixed_seqs, mixed_pos, 4, 1000, 1000);
  run_step(mixed_seqs, mixed_pos, rng, true, kTablePositions);
}

// Long prompts cost the f64 reference seconds: fewer configurations.
class PagedAttentionLongTest : public PagedAttentionTest {};

TEST_P(PagedAttentionLongTest, LongPrefillChunks) {
  if (!has_gpu()) GTEST_SKIP() << "skipped: no GPU";
  const Config& c = GetParam();
  std::mt19937 rng(3 + c.head_dim);
  build_cache(rng);
  // A whole 700-token prompt (11 tiles, the last one of 60 rows) and the last 100 tokens of a
  // 3000-token context (a chunked prefill far from position 0).
  std::vector<int32_t> seqs, pos;
  append_range(seqs, pos, 3, 0, 699);
  append_range(seqs, pos, 4, 2900, 2999);
  run_step(seqs, pos, rng, true);
}

std::vector<Config> all_configs() {
  std::vector<Config> configs;
  for (DType act : {DType::F16, DType::BF16})
    for (int d : {8, 16, 64, 128})
      for (int g : {1, 4, 8})
        for (int bs : {16, 32}) configs.push_back({act, d, g, bs});
  return configs;
}

INSTANTIATE_TEST_SUITE_P(Cuda, PagedAttentionTest, testing::ValuesIn(all_configs()), config_name);
INSTANTIATE_TEST_SUITE_P(Cuda, PagedAttentionLongTest,
                         testing::Values(Config{DType::F16, 128, 4, 16}, Config{DType::BF16, 128, 8, 32},
                                         Config{DType::F16, 64, 1, 16}, Config{DType::BF16, 64, 4, 16},
                                         Config{DType::F16, 16, 4, 32}),
                         config_name);

TEST(CudaKvCacheWrite, WritesRowsAndSkipsPadding) {
  if (!has_gpu()) GTEST_SKIP() << "skipped: no GPU";
  const int M = 37, kv_heads = 3, D = 24, ld = 5 * 24, bs = 16, blocks = 4;
  std::mt19937 rng(7);
  std::vector<uint16_t> k(M * ld), v(M * ld);
  for (auto& x : k) x = uint16_t(rng());
  for (auto& x : v) x = uint16_t(rng());
  std::vector<int32_t> slots(M);
  std::vector<int32_t> perm(bs * blocks);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  for (int m = 0; m < M; ++m) slots[m] = m % 5 == 3 ? -1 : perm[m];
  const size_t cache_elems = size_t(blocks) * bs * kv_heads * D;
  DeviceBuffer kd(k.size() * 2), vd(v.size() * 2), sd(M * 4), kc(cache_elems * 2), vc(cache_elems * 2);
  upload(kd, k);
  upload(vd, v);
  upload(sd, slots);
  CUDA_OK(cudaMemset(kc.ptr, 0, cache_elems * 2));
  CUDA_OK(cudaMemset(vc.ptr, 0, cache_elems * 2));
  const PagedKv kv{kc.ptr, vc.ptr, blocks, bs, kv_heads, D};
  STATUS_OK(kv_cache_write(kd.ptr, vd.ptr, M, ld, sd.as<int32_t>(), kv, DType::BF16, nullptr));
  std::vector<uint16_t> kh(cache_elems), vh(cache_elems);
  CUDA_OK(cudaMemcpy(kh.data(), kc.ptr, cache_elems * 2, cudaMemcpyDeviceToHost));
  CUDA_OK(cudaMemcpy(vh.data(), vc.ptr, cache_elems * 2, cudaMemcpyDeviceToHost));
  std::vector<uint16_t> k_want(cache_elems, 0), v_want(cache_elems, 0);
  for (int m = 0; m < M; ++m) {
    if (slots[m] < 0) continue;
    std::memcpy(&k_want[size_t(slots[m]) * kv_heads * D], &k[size_t(m) * ld], kv_heads * D * 2);
    std::memcpy(&v_want[size_t(slots[m]) * kv_heads * D], &v[size_t(m) * ld], kv_heads * D * 2);
  }
  EXPECT_EQ(kh, k_want);
  EXPECT_EQ(vh, v_want);
}

// Argument checks happen before any CUDA call: no GPU needed.
TEST(CudaPagedAttention, RejectsBadArguments) {
  alignas(16) static char buf[256];
  const int32_t ids[1] = {0};
  const AttentionBatch batch{1, ids, ids, ids, 1, 1};
  const PagedKv good{buf, buf, 1, 16, 2, 64};
  auto message = [&](const PagedKv& kv, int64_t heads, int64_t q_ld, DType act) {
    const Status s = paged_attention(buf, q_ld, batch, kv, heads, 1.f, buf, nullptr, 0, act, nullptr);
    return s.ok() ? std::string("ok") : s.error().message;
  };
  EXPECT_NE(message(good, 4, 256, DType::F32).find("F16 or BF16"), std::string::npos);
  EXPECT_NE(message(PagedKv{buf, buf, 1, 16, 2, 12}, 4, 256, DType::F16).find("head_dim"), std::string::npos);
  EXPECT_NE(message(good, 3, 256, DType::F16).find("multiple of num_kv_heads"), std::string::npos);
  EXPECT_NE(message(good, 4, 200, DType::F16).find("q_ld=200"), std::string::npos);
  const AttentionBatch past_table{1, ids, ids, ids, 1, 100};  // max_position beyond 1 block of 16
  const Status s_table =
      paged_attention(buf, 256, past_table, good, 4, 1.f, buf, nullptr, 0, DType::F16, nullptr);
  ASSERT_FALSE(s_table.ok());
  EXPECT_NE(s_table.error().message.find("paged_attention [M=1, heads=4, kv_heads=2, head_dim=64"),
            std::string::npos)
      << "errors name the kernel and shapes: " << s_table.error().message;
  const PagedKv bad_kv{buf, buf, 1, 16, 2, 60};
  const Status s = kv_cache_write(buf, buf, 1, 120, ids, bad_kv, DType::F16, nullptr);
  EXPECT_FALSE(s.ok());
}

}  // namespace
}  // namespace kiln::cuda
