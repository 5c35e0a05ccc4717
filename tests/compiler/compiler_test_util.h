// Shared by the build-side tests: load an engine for one sequence and read the logits of every position.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "runtime/model.h"

namespace kiln::testing {

// Loads `path` on the CPU for one sequence with room for 64 logit rows; fails the test on error.
inline std::unique_ptr<Model> load_for_logits(const std::string& path) {
  RuntimeOptions options;
  options.backend_options.num_threads = 2;
  options.backend_options.max_sequences = 1;
  options.backend_options.max_logit_rows = 64;
  auto model = Model::load(path, options);
  EXPECT_TRUE(model.ok()) << (model.ok() ? "" : model.error().message);
  return model.ok() ? std::move(*model) : nullptr;
}

// Logits of every position of `ids` (one sequence, one step): [ids.size(), vocab].
inline std::vector<float> all_logits(Model& model, const std::vector<int32_t>& ids) {
  Batch batch;
  const KvGeometry kv = model.backend().kv_geometry();
  batch.max_blocks_per_seq = static_cast<int32_t>((ids.size() + kv.block_size - 1) / kv.block_size);
  for (int32_t b = 0; b < batch.max_blocks_per_seq; ++b) batch.block_tables.push_back(b);
  for (size_t i = 0; i < ids.size(); ++i) {
    batch.tokens.push_back(ids[i]);
    batch.positions.push_back(static_cast<int32_t>(i));
    batch.token_seq.push_back(0);
    batch.logit_rows.push_back(static_cast<int32_t>(i));
  }
  std::vector<float> logits(ids.size() * model.backend().vocab_size());
  const Status s = model.backend().forward(batch, logits.data());
  EXPECT_TRUE(s.ok()) << (s.ok() ? "" : s.error().message);
  return logits;
}

}  // namespace kiln::testing
