// The BPE merge loop shared by every tokenizer source: repeatedly merge the adjacent pair with the
// best priority (ties: leftmost), as HF tokenizers `Word::merge_all`, sentencepiece
// `bpe_model.cc Model::Encode` and llama2.c `encode` all do. A min-heap of candidate pairs keeps it
// O(n log n) in the word length; stale heap entries are skipped when popped (HF's check: the pair
// now at that position must still produce the same id).
#pragma once

#include <cstdint>
#include <optional>
#include <queue>
#include <vector>

namespace kiln {

struct BpeSymbol {
  int32_t id;      // token id (-1: not in the vocabulary)
  uint32_t start;  // byte offset of the symbol in the word
  uint32_t length;  // bytes; 0 once merged into its left neighbour
  int32_t prev = -1;
  int32_t next = -1;
};

struct BpeMerge {
  double priority;  // lower merges first: HF merge rank, or -score for sentencepiece / llama2.c
  int32_t new_id;
};

// Merges `symbols` in place and drops the merged-away ones. `lookup(left, right)` returns the merge
// of two adjacent symbols, or nullopt when they do not merge.
template <class Lookup>
void bpe_merge(std::vector<BpeSymbol>& symbols, Lookup&& lookup) {
  struct Candidate {
    double priority;
    int32_t position;
    int32_t new_id;
    bool operator>(const Candidate& other) const {
      return priority != other.priority ? priority > other.priority : position > other.position;
    }
  };
  const int32_t n = static_cast<int32_t>(symbols.size());
  if (n < 2) return;
  for (int32_t i = 0; i < n; ++i) {
    symbols[i].prev = i - 1;
    symbols[i].next = i + 1 < n ? i + 1 : -1;
  }
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
  const auto push = [&](int32_t left) {
    if (left < 0 || symbols[left].next < 0) return;
    if (std::optional<BpeMerge> m = lookup(symbols[left], symbols[symbols[left].next])) {
      queue.push({m->priority, left, m->new_id});
    }
  };
  for (int32_t i = 0; i + 1 < n; ++i) push(i);

  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    BpeSymbol& left = symbols[top.position];
    if (left.length == 0 || left.next < 0) continue;
    BpeSymbol& right = symbols[left.next];
    const std::optional<BpeMerge> current = lookup(left, right);
    if (!current || current->new_id != top.new_id) continue;  // stale entry

    left.id = top.new_id;
    left.length += right.length;
    right.length = 0;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.position;
    push(left.prev);
    push(top.position);
  }
  std::erase_if(symbols, [](const BpeSymbol& s) { return s.length == 0; });
}

}  // namespace kiln
