// fuse_swiglu_into_linear: the SwiGlu folds into its only reader (the MLP's down projection), not
// into a Linear that shares it with another reader, and the rewritten graph computes on the CPU what
// the graph before the pass computes.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "backend/backend.h"
#include "engine/engine_file.h"
#include "format/hf_config.h"
#include "format/safetensors.h"
#include "graph/graph.h"
#include "model/llama_builder.h"
#include "passes/passes.h"
#include "test_util.h"

namespace kiln {
namespace {

using testing::shared_path;

// tiny-qwen2 (2 layers) as the builder makes it, weights in F32.
struct TinyModel {
  WeightSet file;  // the mapping the builder's views point into
  BuiltModel built;
};
std::unique_ptr<TinyModel> tiny_qwen2() {
  const std::string dir = shared_path("fixtures/hf-tiny/tiny-qwen2");
  auto config = read_hf_config(dir);
  auto weights = open_safetensors_dir(dir);
  EXPECT_TRUE(config.ok() && weights.ok());
  if (!config.ok() || !weights.ok()) return nullptr;
  auto model = std::make_unique<TinyModel>();
  model->file = std::move(weights).value();
  auto built = build_llama_graph(*config, model->file.tensors);
  EXPECT_TRUE(built.ok()) << (built.ok() ? "" : built.error().message);
  if (!built.ok()) return nullptr;
  model->built = std::move(built).value();
  EXPECT_TRUE(convert_precision(model->built.graph, model->built.weights, DType::F32).ok());
  return model;
}

int count_ops(const Graph& g, OpKind op) {
  return static_cast<int>(
      std::count_if(g.nodes.begin(), g.nodes.end(), [&](const Node& n) { return n.op == op; }));
}
const Node* find_node(const Graph& g, const std::string& name) {
  for (const Node& n : g.nodes) {
    if (n.name == name) return &n;
  }
  return nullptr;
}
int32_t find_value(const Graph& g, const std::string& name) {
  for (size_t v = 0; v < g.values.size(); ++v) {
    if (g.values[v].name == name) return static_cast<int32_t>(v);
  }
  return -1;
}

TEST(FuseSwigluIntoLinear, FoldsEachSwigluIntoItsDownProjection) {
  auto model = tiny_qwen2();
  ASSERT_TRUE(model);
  Graph& g = model->built.graph;
  ASSERT_TRUE(fuse_gate_up(g, model->built.weights).ok());
  const int linears = count_ops(g, OpKind::Linear);
  const size_t values = g.values.size();
  auto fused = fuse_swiglu_into_linear(g);
  ASSERT_TRUE(fused.ok()) << fused.error().message;
  EXPECT_EQ(*fused, 2);  // one per layer
  EXPECT_EQ(count_ops(g, OpKind::SwiGlu), 0);
  EXPECT_EQ(count_ops(g, OpKind::SwiGluLinear), 2);
  EXPECT_EQ(count_ops(g, OpKind::Linear), linears - 2);
  EXPECT_EQ(g.values.size(), values - 2);  // the [rows, F] activations are gone
  for (int layer = 0; layer < 2; ++layer) {
    const std::string prefix = "layers." + std::to_string(layer) + ".mlp.";
    EXPECT_EQ(find_value(g, prefix + "act"), -1);
    const Node* down = find_node(g, prefix + "down");
    ASSERT_NE(down, nullptr);
    EXPECT_EQ(down->op, OpKind::SwiGluLinear);
    // Gate is the first half of the fused gate_up row, up the second (SwiGlu's in0 and in1).
    const int32_t gate_up = find_value(g, prefix + "gate_up");
    ASSERT_GE(gate_up, 0);
    const int64_t F = g.weights.at(down->weights[0]).shape[1];  // the intermediate size
    EXPECT_EQ(g.values[gate_up].width, 2 * F);
    ASSERT_EQ(down->inputs.size(), 2u);
    EXPECT_EQ(down->inputs[0].value, gate_up);
    EXPECT_EQ(down->inputs[0].col_offset, 0);
    EXPECT_EQ(down->inputs[0].width, F);
    EXPECT_EQ(down->inputs[1].value, gate_up);
    EXPECT_EQ(down->inputs[1].col_offset, F);
    EXPECT_EQ(down->inputs[1].width, F);
    EXPECT_EQ(down->weights,
              std::vector<std::string>{"model.layers." + std::to_string(layer) + ".mlp.down_proj.weight"});
  }
  // The engine stores the graph as JSON under the op's own name: a loader that does not know it
  // refuses the graph instead of reading it as a plain Linear.
  const nlohmann::json j = g.to_json();
  auto back = Graph::from_json(j);
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_EQ(back->to_json(), j);
  EXPECT_NE(j.dump().find("\"swiglu_linear\""), std::string::npos);
}

TEST(FuseSwigluIntoLinear, AlsoFoldsUnfusedGateAndUp) {
  auto model = tiny_qwen2();
  ASSERT_TRUE(model);
  Graph& g = model->built.graph;
  auto fused = fuse_swiglu_into_linear(g);
  ASSERT_TRUE(fused.ok()) << fused.error().message;
  EXPECT_EQ(*fused, 2);
  const Node* down = find_node(g, "layers.0.mlp.down");
  ASSERT_NE(down, nullptr);
  EXPECT_EQ(down->inputs[0].value, find_value(g, "layers.0.mlp.gate"));
  EXPECT_EQ(down->inputs[1].value, find_value(g, "layers.0.mlp.up"));
  // gate_up fusion still finds the pair behind the fused node.
  auto gate_up = fuse_gate_up(g, model->built.weights);
  ASSERT_TRUE(gate_up.ok()) << gate_up.error().message;
  EXPECT_EQ(*gate_up, 2);
  EXPECT_TRUE(g.validate().ok());
}

TEST(FuseSwigluIntoLinear, LeavesASwigluWithTwoReaders) {
  auto model = tiny_qwen2();
  ASSERT_TRUE(model);
  Graph& g = model->built.graph;
  ASSERT_TRUE(fuse_gate_up(g, model->built.weights).ok());
  // A second reader of layer 0's activation (a probe Linear right after the down projection).
  const int32_t act = find_value(g, "layers.0.mlp.act");
  ASSERT_GE(act, 0);
  const Node* down = find_node(g, "layers.0.mlp.down");
  ASSERT_NE(down, nullptr);
  const int32_t probe_out = g.add_value("probe", g.values[down->output].width);
  const Node probe{OpKind::Linear, "probe", {g.ref(act)}, probe_out, down->weights, {}};
  const auto at = std::find_if(g.nodes.begin(), g.nodes.end(),
                               [](const Node& n) { return n.name == "layers.0.mlp.down"; });
  g.nodes.insert(at + 1, probe);
  ASSERT_TRUE(g.validate().ok());

  auto fused = fuse_swiglu_into_linear(g);
  ASSERT_TRUE(fused.ok()) << fused.error().message;
  EXPECT_EQ(*fused, 1);  // layer 1 only
  EXPECT_EQ(find_node(g, "layers.0.mlp.swiglu")->op, OpKind::SwiGlu);
  EXPECT_EQ(find_node(g, "layers.0.mlp.down")->op, OpKind::Linear);
  EXPECT_EQ(find_node(g, "layers.1.mlp.down")->op, OpKind::SwiGluLinear);
  EXPECT_GE(find_value(g, "layers.0.mlp.act"), 0);
}

// Runs `graph` over `weights` on the CPU backend (an engine assembled in memory): a prefill of 8
// tokens (logits of every row), then two decode steps. Returns all logits in order.
std::vector<float> run_on_cpu(const Graph& graph, const WeightStore& weights) {
  LoadedEngine engine;
  engine.metadata = {{"graph", graph.to_json()}, {"profile", {{"max_seq_len", 64}, {"max_batch", 1}}}};
  for (const auto& [name, info] : graph.weights) engine.tensors[name] = *weights.find(name);
  BackendOptions options;
  options.num_threads = 2;
  options.max_tokens_per_step = 16;
  auto backend = create_cpu_backend(engine, options);
  EXPECT_TRUE(backend.ok()) << (backend.ok() ? "" : backend.error().message);
  if (!backend.ok()) return {};
  const int64_t vocab = (*backend)->vocab_size();
  std::vector<float> all;
  Batch batch;
  batch.max_blocks_per_seq = 4;
  batch.block_tables = {0, 1, 2, 3};
  const std::vector<int32_t> prompt = {1, 45, 300, 7, 99, 250, 3, 17};
  for (int32_t p = 0; p < static_cast<int32_t>(prompt.size()); ++p) {
    batch.tokens.push_back(prompt[p]);
    batch.positions.push_back(p);
    batch.token_seq.push_back(0);
    batch.logit_rows.push_back(p);
  }
  for (int step = 0; step < 3; ++step) {
    std::vector<float> logits(batch.logit_rows.size() * vocab);
    const Status status = (*backend)->forward(batch, logits.data());
    EXPECT_TRUE(status.ok()) << (status.ok() ? "" : status.error().message);
    all.insert(all.end(), logits.begin(), logits.end());
    const int32_t next = static_cast<int32_t>(batch.positions.back()) + 1;
    batch.tokens = {static_cast<int32_t>(11 + 13 * step)};
    batch.positions = {next};
    batch.token_seq = {0};
    batch.logit_rows = {0};
  }
  return all;
}

TEST(FuseSwigluIntoLinear, CpuOutputsEqualTheGraphBeforeThePass) {
  auto model = tiny_qwen2();
  ASSERT_TRUE(model);
  Graph& g = model->built.graph;
  WeightStore& w = model->built.weights;
  ASSERT_TRUE(fuse_qkv(g, w).ok());
  ASSERT_TRUE(fuse_gate_up(g, w).ok());
  ASSERT_TRUE(fuse_add_rms_norm(g).ok());
  ASSERT_TRUE(fuse_rope_into_attention(g).ok());
  // A bias on layer 0's down projection, so the fused node's bias path runs too.
  Node* down = nullptr;
  for (Node& n : g.nodes) {
    if (n.name == "layers.0.mlp.down") down = &n;
  }
  ASSERT_NE(down, nullptr);
  const int64_t D = g.values[down->output].width;
  std::vector<float> bias(D);
  for (int64_t i = 0; i < D; ++i) bias[i] = 0.01f * static_cast<float>(i % 7) - 0.03f;
  std::vector<uint8_t> bias_bytes(D * sizeof(float));
  std::memcpy(bias_bytes.data(), bias.data(), bias_bytes.size());
  w.put_owned("probe.down_bias", DType::F32, {D}, std::move(bias_bytes));
  g.weights["probe.down_bias"] = WeightInfo{DType::F32, {D}};
  down->weights.push_back("probe.down_bias");
  ASSERT_TRUE(g.validate().ok());

  const std::vector<float> before = run_on_cpu(g, w);
  Graph fused_graph = g;
  auto fused = fuse_swiglu_into_linear(fused_graph);
  ASSERT_TRUE(fused.ok()) << fused.error().message;
  ASSERT_EQ(*fused, 2);
  const std::vector<float> after = run_on_cpu(fused_graph, w);
  ASSERT_EQ(before.size(), after.size());
  ASSERT_FALSE(before.empty());
  // The same SwiGLU and matmul kernels on the same data, only the activation's buffer differs (arena
  // scratch instead of a graph value): equal up to float32 rounding (in fact bit for bit today).
  double max_abs = 0, max_diff = 0;
  for (size_t i = 0; i < before.size(); ++i) {
    ASSERT_TRUE(std::isfinite(after[i])) << i;
    max_abs = std::max(max_abs, static_cast<double>(std::abs(before[i])));
    max_diff = std::max(max_diff, static_cast<double>(std::abs(before[i] - after[i])));
  }
  EXPECT_GT(max_abs, 0.0);
  EXPECT_LE(max_diff, 1e-6 * max_abs);
}

}  // namespace
}  // namespace kiln
