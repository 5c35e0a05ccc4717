// Shared mechanics of the linear-fusion passes: sibling Linear nodes that read the same input become
// one Linear over the row-concatenation of their weights (and biases); consumers read column
// slices of the fused output. One GEMM instead of several: the input is read once and the kernel
// sees a wider N, which is what both the CPU and the CUDA GEMMs want.
#pragma once

#include <string>
#include <vector>

#include "common/error.h"
#include "graph/graph.h"
#include "graph/weight_store.h"

namespace kiln {

// Fuses the Linear nodes `node_indices` (same input slice, same weight dtype, all with or all
// without bias) into one node named `fused_name` with weight `fused_weight` (+ `fused_bias`).
// Returns false (and changes nothing) when the nodes don't qualify.
Result<bool> fuse_sibling_linears(Graph& graph, WeightStore& weights, const std::vector<int>& node_indices,
                                  const std::string& fused_name, const std::string& fused_weight,
                                  const std::string& fused_bias);

// Index of the node that writes value `value` as a Linear (not in place), or -1.
int find_linear_producer(const Graph& graph, int32_t value);

// Drops weights no node references (with every tensor that stores them) and values no node touches
// (renumbering refs).
void remove_unused(Graph& graph, WeightStore& weights);
// Drops values no node touches (renumbering refs); weights are left alone.
void remove_unused_values(Graph& graph);

}  // namespace kiln
