// Passes: the fused graph computes what the unfused one does (fused ops tested against the unfused
// composition), fusion really changes the graph, and the IR rejects malformed graphs.
#include "format/hf_config.h"
#include "format/safetensors.h"
#include "graph/graph.h"
#include "model/llama_builder.h"
#include "passes/passes.h"
#include "runtime/generator.h"
#include "test_util.h"

namespace kiln {
namespace {

using testing::build_and_load;
using testing::shared_path;
using testing::TempDir;

BuiltModel tiny_qwen2() {
  const std::string dir = shared_path("fixtures/hf-tiny/tiny-qwen2");
  auto config = read_hf_config(dir);
  auto weights = open_safetensors_dir(dir);
  EXPECT_TRUE(config.ok() && weights.ok());
  auto built = build_llama_graph(*config, weights->tensors);
  EXPECT_TRUE(built.ok()) << (built.ok() ? "" : built.error().message);
  // Keep the mapping alive through the views' owners.
  return std::move(built).value();
}

int count_ops(const Graph& g, OpKind op) {
  return static_cast<int>(std::count_if(g.nodes.begin(), g.nodes.end(), [&](const Node& n) { return n.op == op; }));
}

TEST(Passes, FusionMergesProjectionsAndConcatenatesWeights) {
  BuiltModel m = tiny_qwen2();
  ASSERT_TRUE(convert_precision(m.graph, m.weights, DType::F32).ok());
  const int linears_before = count_ops(m.graph, OpKind::Linear);
  const std::vector<float> k_bias = tensor_to_f32(*m.weights.find("model.layers.1.self_attn.k_proj.bias"));
  const std::vector<float> up = tensor_to_f32(*m.weights.find("model.layers.0.mlp.up_proj.weight"));
  auto qkv = fuse_qkv(m.graph, m.weights);
  auto gate_up = fuse_gate_up(m.graph, m.weights);
  ASSERT_TRUE(qkv.ok() && gate_up.ok());
  EXPECT_EQ(*qkv, 2);
  EXPECT_EQ(*gate_up, 2);
  EXPECT_EQ(count_ops(m.graph, OpKind::Linear), linears_before - 2 * 2 - 2 * 1);
  EXPECT_TRUE(m.graph.validate().ok());
  // The fused tensors hold the originals in order: q rows, then k, then v (gate, then up).
  const TensorView* fused_bias = m.weights.find("model.layers.1.self_attn.qkv_proj.bias");
  ASSERT_NE(fused_bias, nullptr);
  const std::vector<float> fb = tensor_to_f32(*fused_bias);
  ASSERT_EQ(fb.size(), 64u + 2 * 32u);  // 4 heads * 16 + 2 * (2 kv heads * 16)
  EXPECT_TRUE(std::equal(k_bias.begin(), k_bias.end(), fb.begin() + 64));
  const std::vector<float> fused_up = tensor_to_f32(*m.weights.find("model.layers.0.mlp.gate_up_proj.weight"));
  EXPECT_TRUE(std::equal(up.begin(), up.end(), fused_up.begin() + static_cast<long>(up.size())));
  EXPECT_EQ(m.weights.find("model.layers.0.self_attn.q_proj.weight"), nullptr);  // originals dropped
  // Residual adds followed by a norm: after attention (2 layers) and after the MLP of layer 0 (the
  // last MLP residual feeds the logit-row selection, not a norm).
  const int norms_before = count_ops(m.graph, OpKind::RmsNorm);
  auto add_norm = fuse_add_rms_norm(m.graph);
  ASSERT_TRUE(add_norm.ok());
  EXPECT_EQ(*add_norm, 3);
  EXPECT_EQ(count_ops(m.graph, OpKind::RmsNorm), norms_before - 3);
  EXPECT_EQ(count_ops(m.graph, OpKind::AddRmsNorm), 3);
  // RoPE of q and k moves into each layer's attention.
  auto rope = fuse_rope_into_attention(m.graph);
  ASSERT_TRUE(rope.ok());
  EXPECT_EQ(*rope, 2);
  EXPECT_EQ(count_ops(m.graph, OpKind::Rope), 0);
  for (const Node& n : m.graph.nodes) {
    if (n.op == OpKind::Attention) {
      EXPECT_EQ(n.attr("rope"), 1.0);
      EXPECT_EQ(n.attr("rope_theta"), 1e6);  // tiny-qwen2's theta
      ASSERT_TRUE(rope_of(n).has_value());
      EXPECT_EQ(rope_of(n)->attr("head_dim"), 16);
    }
  }
  // Round trip through JSON (the engine stores the graph this way).
  auto back = Graph::from_json(m.graph.to_json());
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_EQ(back->to_json(), m.graph.to_json());
}

TEST(Passes, FusedAndUnfusedEnginesAgree) {
  for (const std::string model : {shared_path("fixtures/hf-tiny/tiny-qwen2"), shared_path("models/stories260K/stories260K.bin")}) {
    TempDir dir;
    auto fused = build_and_load(dir, model, "fp32", true);
    auto unfused = build_and_load(dir, model, "fp32", false);
    ASSERT_TRUE(fused && unfused);
    GenerationRequest request;
    request.prompt_ids = {1, 45, 300, 7, 99, 250, 3, 17};
    request.max_new_tokens = 16;
    request.sampling.temperature = 0.0f;
    request.ignore_eos = true;
    request.want_last_logits = true;
    auto a = generate(*fused, request);
    auto b = generate(*unfused, request);
    ASSERT_TRUE(a.ok() && b.ok());
    // Same arithmetic per output element (the fused GEMM computes each column as the unfused one
    // does); only the kernel's blocking may differ, hence a float32-rounding tolerance.
    double num = 0, den = 0;
    for (size_t i = 0; i < a->last_logits.size(); ++i) {
      num += std::pow(a->last_logits[i] - b->last_logits[i], 2);
      den += std::pow(b->last_logits[i], 2);
    }
    EXPECT_LT(std::sqrt(num / den), 1e-6) << model;
    EXPECT_EQ(a->ids, b->ids) << model;
  }
}

TEST(Graph, ValidateRejectsMalformedGraphs) {
  BuiltModel m = tiny_qwen2();
  ASSERT_TRUE(m.graph.validate().ok());
  {
    Graph g = m.graph;
    g.nodes[1].inputs[0].value = 9999;
    EXPECT_FALSE(g.validate().ok());
  }
  {
    Graph g = m.graph;
    for (Node& n : g.nodes) {
      if (n.op == OpKind::Linear) {
        n.inputs[0].width += 1;  // slice beyond the value
        break;
      }
    }
    EXPECT_FALSE(g.validate().ok());
  }
  {
    Graph g = m.graph;
    g.weights.erase("model.norm.weight");
    EXPECT_FALSE(g.validate().ok());
  }
  {
    Graph g = m.graph;
    for (Node& n : g.nodes) {
      if (n.op == OpKind::Attention) {
        n.attrs["num_kv_heads"] = 3;  // 4 heads not divisible by 3
        break;
      }
    }
    EXPECT_FALSE(g.validate().ok());
  }
  nlohmann::json j = m.graph.to_json();
  j["nodes"][0]["op"] = "conv2d";
  auto bad = Graph::from_json(j);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("conv2d"), std::string::npos);
}

TEST(Graph, Llama3RopeFrequenciesMatchTransformersFormula) {
  Node rope{OpKind::Rope, "rope", {}, 0, {}, {{"head_dim", 128}, {"theta", 500000.0}, {"scaling", 2}, {"factor", 8.0},
                                             {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0}, {"original_max_position", 8192}}};
  const std::vector<double> f = rope_inverse_frequencies(rope);
  ASSERT_EQ(f.size(), 64u);
  // High-frequency band is unchanged, low-frequency band divided by the factor.
  EXPECT_DOUBLE_EQ(f[0], 1.0);
  const double base63 = 1.0 / std::pow(500000.0, 126.0 / 128.0);
  EXPECT_NEAR(f[63], base63 / 8.0, 1e-15);
  // The medium band interpolates smoothly: strictly between base/factor and base.
  for (size_t i = 0; i < f.size(); ++i) {
    const double base = 1.0 / std::pow(500000.0, 2.0 * i / 128.0);
    EXPECT_LE(f[i], base * (1 + 1e-12));
    EXPECT_GE(f[i], base / 8.0 * (1 - 1e-12));
  }
}

}  // namespace
}  // namespace kiln
