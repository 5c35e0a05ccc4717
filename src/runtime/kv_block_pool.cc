#include "runtime/kv_block_pool.h"

#include <cassert>

namespace kiln {

KvBlockPool::KvBlockPool(int64_t num_blocks) : num_blocks_(num_blocks), allocated_(num_blocks, false) {
  free_.reserve(num_blocks);
  for (int64_t b = num_blocks - 1; b >= 0; --b) free_.push_back(static_cast<int32_t>(b));
}

std::optional<int32_t> KvBlockPool::allocate() {
  if (free_.empty()) return std::nullopt;
  const int32_t block = free_.back();
  free_.pop_back();
  allocated_[block] = true;
  return block;
}

void KvBlockPool::free(int32_t block) {
  assert(block >= 0 && block < num_blocks_ && allocated_[block]);
  allocated_[block] = false;
  free_.push_back(block);
}

}  // namespace kiln
