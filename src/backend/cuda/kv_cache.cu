// Paged KV cache write: token m's K and V rows go to slot slot_mapping[m] of every layer's cache
// (vLLM reshape_and_cache). One thread moves 16 bytes of K and 16 bytes of V; negative slots are
// padding tokens and are skipped. Bytes: 4 · M · num_kv_heads · head_dim · sizeof(act) (read + write).
#include "backend/cuda/kernels.h"
#include "backend/cuda/launch.cuh"

namespace kiln::cuda {
namespace {

// Grid-stride over M x vecs_per_row 16-byte vectors.
__global__ void kv_cache_write_kernel(const uint4* k, const uint4* v, int64_t M, int64_t ld_vecs,
                                      int64_t vecs_per_row, const int32_t* slot_mapping, int64_t num_slots,
                                      uint4* k_cache, uint4* v_cache) {
  detail::allow_dependents();
  detail::wait_for_producer();  // k, v and slots come from earlier kernels (launch.cuh)
  const int64_t total = M * vecs_per_row;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t m = i / vecs_per_row, c = i % vecs_per_row;
    const int64_t slot = slot_mapping[m];
    if (slot < 0 || slot >= num_slots)
      continue;  // padding (or an out-of-range slot: never write past the cache)
    k_cache[slot * vecs_per_row + c] = k[m * ld_vecs + c];
    v_cache[slot * vecs_per_row + c] = v[m * ld_vecs + c];
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

Status kv_cache_write(const void* k, const void* v, int64_t M, int64_t ld, const int32_t* slot_mapping,
                      const PagedKv& kv, DType act, cudaStream_t stream) {
  const int64_t row = kv.num_kv_heads * kv.head_dim;
  if (act != DType::F16 && act != DType::BF16)
    return make_error("kv_cache_write: act dtype must be F16 or BF16, found {}", dtype_name(act));
  if (kv.num_kv_heads <= 0 || kv.head_dim <= 0 || kv.head_dim % 8 != 0 || kv.num_blocks <= 0 ||
      kv.block_size <= 0)
    return make_error("kv_cache_write: bad cache shape [{}, {}, {}, {}] (head_dim must be a multiple of 8)",
                      kv.num_blocks, kv.block_size, kv.num_kv_heads, kv.head_dim);
  if (M < 0 || ld < row || ld % 8 != 0)
    return make_error("kv_cache_write: M={} ld={} (expected M >= 0, ld >= {} and a multiple of 8)", M, ld,
                      row);
  if (M == 0) return Status::Ok();
  if (!aligned16(k) || !aligned16(v) || !aligned16(kv.k_cache) || !aligned16(kv.v_cache) ||
      slot_mapping == nullptr)
    return make_error(
        "kv_cache_write: k, v and the caches must be 16-byte aligned and slot_mapping non-null");
  const int64_t vecs = row / 8;
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((M * vecs + threads - 1) / threads, 65536);
  detail::launch_kernel(kv_cache_write_kernel, static_cast<unsigned>(blocks), threads, 0, stream,
                        static_cast<const uint4*>(k), static_cast<const uint4*>(v), M, ld / 8, vecs, slot_mapping,
                        kv.num_blocks * kv.block_size, static_cast<uint4*>(kv.k_cache),
                        static_cast<uint4*>(kv.v_cache));
  const std::string what = fmt::format("kv_cache_write [M={}, kv_heads={}, head_dim={}, {}]", M,
                                       kv.num_kv_heads, kv.head_dim, dtype_name(act));
  return check(cudaGetLastError(), what.c_str());
}

}  // namespace kiln::cuda
