// The backend interface's shared parts (linked into the CUDA plugin too).
#include "backend/backend.h"

#include <algorithm>
#include <vector>

namespace kiln {

void argmax_rows(const float* logits, int64_t rows, int64_t vocab, int32_t* ids) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = logits + r * vocab;
    ids[r] = static_cast<int32_t>(std::max_element(row, row + vocab) - row);
  }
}

Status Backend::forward_argmax(const Batch& batch, int32_t* ids) {
  std::vector<float> logits(batch.logit_rows.size() * static_cast<size_t>(vocab_size()));
  KILN_TRY(forward(batch, logits.data()));
  argmax_rows(logits.data(), static_cast<int64_t>(batch.logit_rows.size()), vocab_size(), ids);
  return Status::Ok();
}



}  // namespace kiln
