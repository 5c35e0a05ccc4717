// Accounting of the paged KV cache's fixed-size blocks (the memory itself belongs to the backend).
// Running out is a normal result, not an error: allocate() returns nullopt and the caller waits,
// preempts or reports (vLLM's BlockPool plays the same role).
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

namespace kiln {

class KvBlockPool {
 public:
  explicit KvBlockPool(int64_t num_blocks);

  std::optional<int32_t> allocate();
  void free(int32_t block);  // block must be allocated (asserted)
  int64_t num_free() const { return static_cast<int64_t>(free_.size()); }
  int64_t num_blocks() const { return num_blocks_; }

 private:
  int64_t num_blocks_;
  std::vector<int32_t> free_;       // stack: most recently freed first (warm in cache)
  std::vector<bool> allocated_;
};

}  // namespace kiln
