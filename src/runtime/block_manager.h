// Per-sequence KV block tables over a KvBlockPool, with automatic prefix caching (vLLM v1's
// KVCacheManager + BlockPool, kv_cache_utils.hash_block_tokens).
//
// A block that is full of computed tokens gets a hash of (parent block's hash, its token ids), so
// a hash names a whole prefix. Blocks are reference-counted: sequences with the same prefix share
// its full blocks. When the last reference goes, a hashed block is not returned to the pool but kept
// in an LRU list of evictable blocks: a later request with the same prefix takes it back; it is
// evicted (its hash dropped) only when a block is needed and the pool has none free. Blocks without
// a hash (partial tail blocks) go straight back to the pool.
//
// Capacity: "available" blocks = free in the pool + evictable cached blocks. Every growing call
// checks availability first and changes nothing when it fails: running out is a normal result.
#pragma once

#include <cstdint>
#include <list>
#include <span>
#include <unordered_map>
#include <vector>

#include "runtime/kv_block_pool.h"

namespace kiln {

struct PrefixCacheStats {
  int64_t query_tokens = 0;  // prompt tokens of admitted sequences looked up in the cache
  int64_t hit_tokens = 0;    // of which found in cached blocks (not recomputed)
  int64_t evictions = 0;     // cached blocks whose hash was dropped to reuse the block
};

class BlockManager {
 public:
  // pool must outlive the manager; with prefix_caching false no block is ever hashed or shared.
  BlockManager(KvBlockPool& pool, int64_t block_size, bool prefix_caching = true);
  ~BlockManager();
  BlockManager(const BlockManager&) = delete;
  BlockManager& operator=(const BlockManager&) = delete;

  int64_t block_size() const { return block_size_; }
  int64_t num_blocks() const { return pool_.num_blocks(); }
  // Blocks a sequence could get now: free in the pool plus cached blocks nobody references.
  int64_t num_available_blocks() const { return pool_.num_free() + static_cast<int64_t>(evictable_.size()); }
  int64_t num_cached_blocks() const { return static_cast<int64_t>(by_hash_.size()); }

  // The longest run of cached full blocks that prefixes `tokens`, covering at most max_tokens
  // tokens (whole blocks only). No side effects: pass the result to allocate() to take them.
  std::vector<int32_t> find_cached_prefix(std::span<const int32_t> tokens, int64_t max_tokens) const;

  // Blocks `seq` would need from the available ones to hold positions [0, num_tokens), when it
  // holds no blocks yet and would take `cached_prefix` first (empty for a sequence that has blocks).
  int64_t blocks_needed(int64_t seq, int64_t num_tokens, std::span<const int32_t> cached_prefix = {}) const;
  // Most positions `seq` could hold after taking cached_prefix and every available block.
  int64_t max_tokens_reachable(int64_t seq, std::span<const int32_t> cached_prefix = {}) const;

  // Makes `seq` hold blocks for positions [0, num_tokens): a new sequence first takes cached_prefix
  // (from find_cached_prefix; query_tokens counts the lookup in the stats). Returns false and
  // changes nothing when the available blocks do not suffice.
  bool allocate(int64_t seq, int64_t num_tokens, std::span<const int32_t> cached_prefix = {},
                int64_t query_tokens = 0);

  // Hashes the blocks of `seq` that positions [0, num_computed) fill, given its tokens, so later
  // sequences can share them. A block whose content is already cached under another block stays
  // private (and is freed to the pool, not cached, when released).
  void cache_full_blocks(int64_t seq, std::span<const int32_t> tokens, int64_t num_computed);

  // Drops one reference to each block of `seq` (last block first, so a prefix's tail is evicted
  // before its head) and forgets the sequence.
  void free(int64_t seq);
  // Returns every evictable cached block to the pool (vLLM's reset_prefix_cache).
  void reset_prefix_cache();

  std::span<const int32_t> blocks(int64_t seq) const;  // [num_blocks of seq]
  int32_t ref_count(int32_t block) const { return info_[block].ref_count; }
  const PrefixCacheStats& stats() const { return stats_; }

 private:
  struct BlockInfo {
    int32_t ref_count = 0;
    bool hashed = false;
    uint64_t hash = 0;
    uint64_t parent_hash = 0;
    std::vector<int32_t> tokens;  // [block_size] content, compared on lookup so a hash collision cannot alias
    std::list<int32_t>::iterator lru_position;
    bool evictable = false;
  };
  struct SequenceBlocks {
    std::vector<int32_t> blocks;
    std::vector<uint64_t> hashes;  // [number of leading blocks that are full and hashed]
  };

  uint64_t hash_block(uint64_t parent_hash, std::span<const int32_t> tokens) const;
  int64_t blocks_for(int64_t num_tokens) const { return (num_tokens + block_size_ - 1) / block_size_; }
  int64_t evictable_among(std::span<const int32_t> blocks) const;
  int32_t take_block();  // caller checked availability
  void release(int32_t block);

  KvBlockPool& pool_;
  int64_t block_size_;
  bool prefix_caching_;
  std::vector<BlockInfo> info_;                    // [pool blocks]
  std::unordered_map<uint64_t, int32_t> by_hash_;  // hash of a full block -> the block holding it
  std::list<int32_t> evictable_;                   // cached, unreferenced; front = least recently used
  std::unordered_map<int64_t, SequenceBlocks> sequences_;
  PrefixCacheStats stats_;
};

}  // namespace kiln
