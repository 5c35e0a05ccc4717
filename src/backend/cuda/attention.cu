// paged_attention: argument checks and the choice of split count; the kernels live in
// attention_decode.cu (split-K, any row) and attention_prefill.cu (tensor-core tiles of one sequence).
// Both are launched for every step; each CTA decides on the device whether its rows are its own
// (attention_common.cuh), so a step may mix prefill chunks and decode tokens in any order.
#include <algorithm>
#include <climits>
#include <string>

#include "backend/cuda/attention_common.cuh"

namespace kiln::cuda {
namespace {

constexpr int64_t kMaxPartialRows = 1024;  // (token, split) pairs the workspace holds per head

// Most splits a context of max_seq_len positions can use (chunks of >= kDecodeMinChunk positions).
int64_t max_splits(int64_t max_seq_len) {
  return std::clamp<int64_t>((max_seq_len + attention::kDecodeMinChunk - 1) / attention::kDecodeMinChunk, 1,
                             attention::kDecodeMaxSplits);
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

int multiprocessor_count() {
  int device = 0, count = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) != cudaSuccess)
    return 132;  // the error resurfaces at launch; any count is correct, only the split count depends on it
  return count;
}

}  // namespace

size_t attention_workspace_bytes(int64_t max_tokens, int64_t num_heads, int64_t head_dim,
                                 int64_t max_seq_len) {
  const int64_t splits = max_splits(max_seq_len);
  if (splits <= 1 || max_tokens <= 0) return 0;
  const int64_t rows = std::min(max_tokens * splits, kMaxPartialRows);
  return attention::kDecodeCounterBytes + static_cast<size_t>(rows * num_heads * (head_dim + 2)) * sizeof(float);
}

namespace {

// Both entry points; fresh: the decode step's own k/v (paged_attention_decode) or null.
Status run_attention(const void* q, int64_t q_ld, const AttentionBatch& batch, const NewTokens* fresh,
                     const PagedKv& kv, int64_t num_heads, float scale, void* out, void* workspace,
                     size_t workspace_bytes, DType act, cudaStream_t stream) {
  const int64_t M = batch.num_tokens, D = kv.head_dim;
  const std::string what = fmt::format(
      "{} [M={}, heads={}, kv_heads={}, head_dim={}, block_size={}, max_position={}, {}]",
      fresh ? "paged_attention_decode" : "paged_attention", M, num_heads, kv.num_kv_heads, D, kv.block_size,
      batch.max_position, dtype_name(act));
  if (act != DType::F16 && act != DType::BF16) return make_error("{}: act dtype must be F16 or BF16", what);
  if (D < 8 || D > attention::kMaxHeadDim || D % 8 != 0)
    return make_error("{}: head_dim must be a multiple of 8 in [8, {}]", what, attention::kMaxHeadDim);
  if (kv.num_kv_heads <= 0 || num_heads <= 0 || num_heads % kv.num_kv_heads != 0)
    return make_error("{}: num_heads must be a positive multiple of num_kv_heads", what);
  if (kv.block_size <= 0 || kv.num_blocks <= 0)
    return make_error("{}: empty cache (num_blocks={})", what, kv.num_blocks);
  if (M < 0 || M > INT_MAX || num_heads * D > INT_MAX) return make_error("{}: sizes out of range", what);
  if (q_ld < num_heads * D || q_ld % 8 != 0)
    return make_error("{}: q_ld={} must be >= {} and a multiple of 8", what, q_ld, num_heads * D);
  if (fresh) {
    const int64_t kv_width = kv.num_kv_heads * D;
    if (!fresh->k || !fresh->v || !fresh->slots || !aligned16(fresh->k) || !aligned16(fresh->v) ||
        fresh->k_ld < kv_width || fresh->v_ld < kv_width || fresh->k_ld % 8 != 0 || fresh->v_ld % 8 != 0)
      return make_error("{}: new k/v rows must be non-null, 16-byte aligned, with strides >= {} and multiples of 8",
                        what, kv_width);
    if (fresh->rope_cos && (!fresh->rope_sin || D % 16 != 0 || !aligned16(fresh->rope_cos) ||
                            !aligned16(fresh->rope_sin)))
      return make_error("{}: RoPE needs both 16-byte aligned tables and head_dim % 16 == 0", what);
  }
  if (M == 0) return Status::Ok();
  if (batch.max_position < 1 || batch.max_blocks_per_seq * kv.block_size < batch.max_position)
    return make_error("{}: max_position must be in [1, max_blocks_per_seq * block_size = {}]", what,
                      batch.max_blocks_per_seq * kv.block_size);
  if (!aligned16(q) || !aligned16(out) || !aligned16(kv.k_cache) || !aligned16(kv.v_cache) ||
      !batch.token_seq || !batch.positions || !batch.block_tables)
    return make_error("{}: q, out and the caches must be 16-byte aligned, batch arrays non-null", what);

  attention::Params p{};
  p.q = q;
  p.q_ld = q_ld;
  p.out = out;
  p.k_cache = kv.k_cache;
  p.v_cache = kv.v_cache;
  p.token_seq = batch.token_seq;
  p.positions = batch.positions;
  p.block_tables = batch.block_tables;
  p.max_blocks_per_seq = batch.max_blocks_per_seq;
  p.num_tokens = static_cast<int>(M);
  p.num_heads = static_cast<int>(num_heads);
  p.num_kv_heads = static_cast<int>(kv.num_kv_heads);
  p.head_dim = static_cast<int>(D);
  p.block_size = static_cast<int>(kv.block_size);
  p.scale_log2 = scale * attention::kLog2e;
  p.prefill_enabled =
      !fresh && attention::prefill_supports_head_dim(p.head_dim) && M >= attention::kPrefillMinRows;
  if (fresh) {
    p.new_k = fresh->k;
    p.new_k_ld = fresh->k_ld;
    p.new_v = fresh->v;
    p.new_v_ld = fresh->v_ld;
    p.slots = fresh->slots;
    p.num_slots = kv.num_blocks * kv.block_size;
    p.rope_cos = fresh->rope_cos;
    p.rope_sin = fresh->rope_sin;
    p.rope_interleaved = fresh->rope_interleaved;
  }

  // Split count: as many CTAs as the GPU holds at once (one wave: a second wave would add a whole
  // CTA's latency) when tokens are few (batch 1 at 4k context), bounded by what max_position can
  // use and by what the workspace holds. This is only the grid's split
  // dimension: each token's chunks follow from its real context on the device (decode_chunk), so a
  // captured graph that passes the engine's max sequence length stays fast at short real contexts.
  const int64_t group = num_heads / kv.num_kv_heads;
  const int64_t base_ctas = M * kv.num_kv_heads * ((group + 7) / 8);
  const int64_t resident = static_cast<int64_t>(attention::decode_ctas_per_sm(p, act)) * multiprocessor_count();
  const int64_t wanted = resident / base_ctas;
  // Split-K needs an arrival counter per (token, head tile) at the front of the workspace.
  const bool counters_fit = workspace && aligned16(workspace) &&
                            workspace_bytes > attention::kDecodeCounterBytes &&
                            base_ctas <= attention::kDecodeCounterSlots;
  const int64_t fits =
      counters_fit ? static_cast<int64_t>((workspace_bytes - attention::kDecodeCounterBytes) /
                                          ((D + 2) * sizeof(float))) / (M * num_heads)
                   : 0;
  const int64_t splits = std::max<int64_t>(1, std::min({wanted, max_splits(batch.max_position), fits}));

  if (p.prefill_enabled) {
    const cudaError_t err = attention::launch_prefill(p, act, stream);
    if (err != cudaSuccess) return check(err, (what + " (prefill tiles)").c_str());
  }
  const cudaError_t err =
      attention::launch_decode(p, act, static_cast<int>(splits), splits > 1 ? workspace : nullptr, stream);
  return check(err, (what + fmt::format(" (split-K, {} splits)", splits)).c_str());
}

}  // namespace

Status paged_attention(const void* q, int64_t q_ld, const AttentionBatch& batch, const PagedKv& kv,
                       int64_t num_heads, float scale, void* out, void* workspace, size_t workspace_bytes,
                       DType act, cudaStream_t stream) {
  return run_attention(q, q_ld, batch, nullptr, kv, num_heads, scale, out, workspace, workspace_bytes, act,
                       stream);
}

Status paged_attention_decode(const void* q, int64_t q_ld, const AttentionBatch& batch, const NewTokens& fresh,
                              const PagedKv& kv, int64_t num_heads, float scale, void* out, void* workspace,
                              size_t workspace_bytes, DType act, cudaStream_t stream) {
  return run_attention(q, q_ld, batch, &fresh, kv, num_heads, scale, out, workspace, workspace_bytes, act,
                       stream);
}

}  // namespace kiln::cuda
