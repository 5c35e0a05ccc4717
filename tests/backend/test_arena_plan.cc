// plan_arena: values live at the same time never share bytes, and a node's scratch overlaps neither
// its inputs, its output, nor any other value live across the node.
#include <gtest/gtest.h>

#include <algorithm>

#include "backend/arena_plan.h"

namespace kiln {
namespace {

// An MLP block shaped like one Llama layer after fuse_swiglu_into_linear:
//   h = embedding; n = rms_norm(h); gu = linear(n) [2F]; d = swiglu_linear(gu[:F], gu[F:]) [D];
//   h += d; s = select_logit_rows(h); logits = linear(s)
Graph mlp_graph(int64_t D, int64_t F, int64_t V) {
  Graph g;
  const int32_t h = g.add_value("h", D), n = g.add_value("n", D), gu = g.add_value("gu", 2 * F);
  const int32_t d = g.add_value("d", D), s = g.add_value("s", D, RowSpace::LogitRows);
  g.logits_value = g.add_value("logits", V, RowSpace::LogitRows);
  g.nodes = {
      Node{OpKind::Embedding, "embed", {}, h, {}, {}},
      Node{OpKind::RmsNorm, "norm", {g.ref(h)}, n, {}, {}},
      Node{OpKind::Linear, "gate_up", {g.ref(n)}, gu, {}, {}},
      Node{OpKind::SwiGluLinear, "down", {ValueRef{gu, 0, F}, ValueRef{gu, F, F}}, d, {}, {}},
      Node{OpKind::Add, "residual", {g.ref(h), g.ref(d)}, h, {}, {}},
      Node{OpKind::SelectLogitRows, "select", {g.ref(h)}, s, {}, {}},
      Node{OpKind::Linear, "lm_head", {g.ref(s)}, g.logits_value, {}, {}},
  };
  return g;
}

bool overlap(int64_t a, int64_t a_bytes, int64_t b, int64_t b_bytes) {
  return a < b + b_bytes && b < a + a_bytes;
}

TEST(ArenaPlan, ScratchOverlapsNothingLiveAcrossItsNode) {
  const int64_t rows = 16, D = 64, F = 176, V = 100;
  const Graph g = mlp_graph(D, F, V);
  std::vector<int64_t> bytes;
  for (const Value& v : g.values) bytes.push_back(rows * v.width * 4);
  std::vector<int64_t> scratch(g.nodes.size(), 0);
  scratch[3] = rows * F * 4;  // the SwiGLU of "down" before its GEMM
  auto plan = plan_arena(g, bytes, 64, scratch);
  ASSERT_TRUE(plan.ok()) << plan.error().message;
  ASSERT_EQ(plan->node_scratch_offset.size(), g.nodes.size());
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    if (i != 3) EXPECT_EQ(plan->node_scratch_offset[i], -1) << g.nodes[i].name;
  }
  const int64_t at = plan->node_scratch_offset[3];
  ASSERT_GE(at, 0);
  EXPECT_LE(at + scratch[3], plan->total_bytes);
  // Live across node 3: written at or before it and read at or after it (h, gu, d).
  for (size_t v = 0; v < g.values.size(); ++v) {
    int first_write = -1, last_use = -1;
    for (size_t i = 0; i < g.nodes.size(); ++i) {
      if (g.nodes[i].output == static_cast<int32_t>(v) && first_write < 0) first_write = static_cast<int>(i);
      for (const ValueRef& r : g.nodes[i].inputs) {
        if (r.value == static_cast<int32_t>(v)) last_use = static_cast<int>(i);
      }
      if (g.nodes[i].output == static_cast<int32_t>(v)) last_use = std::max(last_use, static_cast<int>(i));
    }
    if (first_write <= 3 && last_use >= 3) {
      EXPECT_FALSE(overlap(at, scratch[3], plan->value_offset[v], bytes[v])) << g.values[v].name;
    }
  }
  // Without scratch sizes, no node has scratch.
  auto none = plan_arena(g, bytes, 64);
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(std::all_of(none->node_scratch_offset.begin(), none->node_scratch_offset.end(),
                          [](int64_t o) { return o == -1; }));
}

}  // namespace
}  // namespace kiln
