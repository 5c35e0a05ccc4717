// The op IR shared by the build side (model builders, passes) and the run side (backends).
//
// A Graph is a straight-line program over activation values. Every value is a row-major f32 matrix
// [rows, width] where rows is either the step's token count T ("token rows") or the number of rows
// whose logits were asked for R ("logit rows"). Batch metadata (token ids, positions, sequence of
// each token, block tables) is not a value: ops that need it (embedding, rope, attention,
// select_logit_rows) read it from the step's batch.
//
// An input is a ValueRef: a column slice [col_offset, col_offset + width) of a value, so fused
// producers (one QKV linear) feed unfused consumers (rope on q and k, attention) without copies.
// Ops marked in-place below write their result into inputs[0]'s value (output == inputs[0].value).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/dtype.h"
#include "common/error.h"
#include "common/quant.h"

namespace kiln {

enum class OpKind : uint8_t {
  Embedding,        // out[T, D] = weights[0][tokens]                       weights: {table [V, D]}
  RmsNorm,          // out = rms_norm(in0) * weights[0]                     attrs: eps
  Linear,           // out[., N] = in0[., K] @ W[N, K]^T (+ bias[N])        weights: {W} or {W, bias}
  Rope,             // in place on in0's heads                              attrs: see rope_attrs below
  Attention,        // out[T, H*hd] = causal paged attention(q=in0, k=in1, v=in2)  attrs: layer, num_heads,
                    //   num_kv_heads, head_dim, scale. Writes k/v of the step into the layer's cache first.
                    //   With attr rope = 1 (pass fuse_rope_into_attention) it first applies the rotary
                    //   embedding described by its rope_* attrs to q and k in place.
  SwiGlu,           // out[., F] = silu(in0) * in1
  Add,              // in place: in0 += in1
  SelectLogitRows,  // out[R, D] = in0[logit_rows]
  AddRmsNorm,       // fused residual: in0 += in1 (in place), out = rms_norm(in0) * weights[0]   attrs: eps
  SwiGluLinear,     // out[., N] = (silu(in0) * in1)[., K] @ W[N, K]^T (+ bias[N])   weights as Linear; in0
                    // (gate),
                    //   in1 (up) K wide (pass fuse_swiglu_into_linear: the SwiGlu folded into its Linear
                    //   consumer)
};

std::string_view op_name(OpKind op);
std::optional<OpKind> op_from_name(std::string_view name);

enum class RowSpace : uint8_t { Tokens, LogitRows };

struct Value {
  std::string name;
  int64_t width = 0;
  RowSpace rows = RowSpace::Tokens;
};

struct ValueRef {
  int32_t value = -1;
  int64_t col_offset = 0;
  int64_t width = 0;  // columns used
};

struct Node {
  OpKind op;
  std::string name;                      // e.g. "layers.3.attn.qkv"
  std::vector<ValueRef> inputs;
  int32_t output = -1;                   // value written (== inputs[0].value for in-place ops)
  std::vector<std::string> weights;      // weight tensor names, op-specific order
  std::map<std::string, double> attrs;   // numeric attributes
  double attr(const std::string& key, double fallback = 0.0) const;
};

struct WeightInfo {
  DType dtype;
  std::vector<int64_t> shape;  // logical shape; a quantized [N, K] matrix keeps [N, K]
  // Set for a quantized matrix (common/quant.h): dtype is then its code dtype (I8 or U8) and the
  // engine holds NAME (codes), NAME.scales and NAME.mins with their own storage shapes.
  std::optional<QuantInfo> quant;
};

// The tensors that store weight `name`: {name} or, quantized, {name, name.scales[, name.mins]},
// with the dtype and storage shape of each.
struct StoredTensor {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
};
std::vector<StoredTensor> stored_tensors(const std::string& name, const WeightInfo& info);

struct Graph {
  std::vector<Value> values;
  std::vector<Node> nodes;
  std::map<std::string, WeightInfo> weights;  // every tensor nodes reference
  int32_t logits_value = -1;                  // [R, vocab] result of the step

  int32_t add_value(std::string name, int64_t width, RowSpace rows = RowSpace::Tokens);
  ValueRef ref(int32_t value) const { return ValueRef{value, 0, values.at(value).width}; }

  // Structural checks: refs in range, slices inside their value, weights declared, shapes of
  // weights consistent with op widths, in-place outputs, logits value set. Used after every pass
  // and when an engine is loaded.
  Status validate() const;

  nlohmann::json to_json() const;
  static Result<Graph> from_json(const nlohmann::json& j);
};

// Rotary-embedding attributes, as stored on Rope nodes.
//   num_heads, head_dim, theta, interleaved (0/1), scaling (0 none, 1 linear, 2 llama3), factor,
//   low_freq_factor, high_freq_factor, original_max_position.
// Inverse frequencies for head_dim/2 rotation pairs, with HF's linear / llama3 scaling applied
// (transformers modeling_rope_utils: _compute_linear_scaling_rope_parameters, _compute_llama3_parameters).
std::vector<double> rope_inverse_frequencies(const Node& rope_node);

// The rotary embedding a node applies, as a Rope node (head_dim, theta, ... attrs): the node itself
// for Rope, one rebuilt from the rope_* attrs for an Attention with rope = 1, else nullopt.
std::optional<Node> rope_of(const Node& node);
// cos/sin tables [max_positions, head_dim / 2] (f32, angles computed in f64) for a Rope node.
void rope_tables(const Node& rope_node, int64_t max_positions, std::vector<float>& cos, std::vector<float>& sin);
// A key equal for nodes whose RoPE tables are equal (every attribute but num_heads).
std::string rope_table_key(const Node& rope_node);

}  // namespace kiln
