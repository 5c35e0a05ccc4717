#include "runtime/block_manager.h"

#include <xxhash.h>

#include <algorithm>
#include <cassert>

namespace kiln {

namespace {
constexpr uint64_t kRootHash = 0x6b696c6e;  // parent hash of a sequence's first block ("kiln")
}

BlockManager::BlockManager(KvBlockPool& pool, int64_t block_size, bool prefix_caching)
    : pool_(pool), block_size_(block_size), prefix_caching_(prefix_caching), info_(pool.num_blocks()) {
  assert(block_size > 0);
}

BlockManager::~BlockManager() {
  while (!sequences_.empty()) free(sequences_.begin()->first);
  reset_prefix_cache();
}

uint64_t BlockManager::hash_block(uint64_t parent_hash, std::span<const int32_t> tokens) const {
  return XXH3_64bits_withSeed(tokens.data(), tokens.size_bytes(), parent_hash);
}

std::vector<int32_t> BlockManager::find_cached_prefix(std::span<const int32_t> tokens,
                                                      int64_t max_tokens) const {
  std::vector<int32_t> found;
  if (!prefix_caching_) return found;
  const int64_t full_blocks =
      std::min<int64_t>(static_cast<int64_t>(tokens.size()), max_tokens) / block_size_;
  uint64_t parent = kRootHash;
  for (int64_t b = 0; b < full_blocks; ++b) {
    const auto block_tokens = tokens.subspan(b * block_size_, block_size_);
    const uint64_t hash = hash_block(parent, block_tokens);
    const auto it = by_hash_.find(hash);
    if (it == by_hash_.end()) break;
    const BlockInfo& info = info_[it->second];
    if (info.parent_hash != parent ||
        !std::equal(block_tokens.begin(), block_tokens.end(), info.tokens.begin()))
      break;
    found.push_back(it->second);
    parent = hash;
  }
  return found;
}

int64_t BlockManager::evictable_among(std::span<const int32_t> blocks) const {
  int64_t n = 0;
  for (int32_t b : blocks) n += info_[b].evictable ? 1 : 0;
  return n;
}

std::span<const int32_t> BlockManager::blocks(int64_t seq) const {
  const auto it = sequences_.find(seq);
  if (it == sequences_.end()) return {};
  return it->second.blocks;
}

int64_t BlockManager::blocks_needed(int64_t seq, int64_t num_tokens,
                                    std::span<const int32_t> cached_prefix) const {
  const int64_t held = static_cast<int64_t>(blocks(seq).size()) + static_cast<int64_t>(cached_prefix.size());
  return std::max<int64_t>(0, blocks_for(num_tokens) - held);
}

int64_t BlockManager::max_tokens_reachable(int64_t seq, std::span<const int32_t> cached_prefix) const {
  // Taking an evictable cached block makes it unavailable to anyone else.
  const int64_t available = num_available_blocks() - evictable_among(cached_prefix);
  const int64_t held = static_cast<int64_t>(blocks(seq).size()) + static_cast<int64_t>(cached_prefix.size());
  return (held + available) * block_size_;
}

int32_t BlockManager::take_block() {
  if (const auto block = pool_.allocate()) {
    assert(info_[*block].ref_count == 0 && !info_[*block].hashed);
    info_[*block].ref_count = 1;
    return *block;
  }
  // Evict the least recently used cached block: it stays allocated in the pool, under a new owner.
  assert(!evictable_.empty());
  const int32_t block = evictable_.front();
  evictable_.pop_front();
  BlockInfo& info = info_[block];
  info.evictable = false;
  by_hash_.erase(info.hash);
  info.hashed = false;
  info.tokens.clear();
  info.ref_count = 1;
  ++stats_.evictions;
  return block;
}

bool BlockManager::allocate(int64_t seq, int64_t num_tokens, std::span<const int32_t> cached_prefix,
                            int64_t query_tokens) {
  assert(cached_prefix.empty() || blocks(seq).empty());
  const int64_t needed = blocks_needed(seq, num_tokens, cached_prefix);
  if (needed > num_available_blocks() - evictable_among(cached_prefix)) return false;
  SequenceBlocks& s = sequences_[seq];
  for (int32_t block : cached_prefix) {
    BlockInfo& info = info_[block];
    assert(info.hashed);
    if (info.evictable) {
      evictable_.erase(info.lru_position);
      info.evictable = false;
    }
    ++info.ref_count;
    s.blocks.push_back(block);
    s.hashes.push_back(info.hash);
  }
  if (query_tokens > 0) {
    stats_.query_tokens += query_tokens;
    stats_.hit_tokens += static_cast<int64_t>(cached_prefix.size()) * block_size_;
  }
  for (int64_t i = 0; i < needed; ++i) s.blocks.push_back(take_block());
  return true;
}

void BlockManager::cache_full_blocks(int64_t seq, std::span<const int32_t> tokens, int64_t num_computed) {
  if (!prefix_caching_) return;
  const auto it = sequences_.find(seq);
  if (it == sequences_.end()) return;
  SequenceBlocks& s = it->second;
  const int64_t full = std::min<int64_t>(num_computed / block_size_, static_cast<int64_t>(s.blocks.size()));
  for (int64_t b = static_cast<int64_t>(s.hashes.size()); b < full; ++b) {
    const uint64_t parent = b == 0 ? kRootHash : s.hashes[b - 1];
    const auto block_tokens = tokens.subspan(b * block_size_, block_size_);
    const uint64_t hash = hash_block(parent, block_tokens);
    s.hashes.push_back(hash);
    BlockInfo& info = info_[s.blocks[b]];
    if (info.hashed || by_hash_.count(hash)) continue;  // already cached (here or in a twin block)
    info.hashed = true;
    info.hash = hash;
    info.parent_hash = parent;
    info.tokens.assign(block_tokens.begin(), block_tokens.end());
    by_hash_.emplace(hash, s.blocks[b]);
  }
}

void BlockManager::release(int32_t block) {
  BlockInfo& info = info_[block];
  assert(info.ref_count > 0);
  if (--info.ref_count > 0) return;
  if (info.hashed) {
    info.lru_position = evictable_.insert(evictable_.end(), block);
    info.evictable = true;
  } else {
    pool_.free(block);
  }
}

void BlockManager::free(int64_t seq) {
  const auto it = sequences_.find(seq);
  if (it == sequences_.end()) return;
  const std::vector<int32_t>& blocks = it->second.blocks;
  for (auto b = blocks.rbegin(); b != blocks.rend(); ++b) release(*b);
  sequences_.erase(it);
}

void BlockManager::reset_prefix_cache() {
  for (int32_t block : evictable_) {
    BlockInfo& info = info_[block];
    by_hash_.erase(info.hash);
    info = BlockInfo{};
    pool_.free(block);
  }
  evictable_.clear();
}

}  // namespace kiln
