#include "passes/passes.h"

namespace kiln {

Result<int> fuse_add_rms_norm(Graph& graph) {
  int fused = 0;
  for (size_t i = 0; i + 1 < graph.nodes.size(); ++i) {
    const Node& add = graph.nodes[i];
    const Node& norm = graph.nodes[i + 1];
    if (add.op != OpKind::Add || norm.op != OpKind::RmsNorm) continue;
    const ValueRef& residual = add.inputs[0];
    const ValueRef& normed = norm.inputs[0];
    const int64_t width = graph.values[residual.value].width;
    if (normed.value != residual.value || residual.col_offset != 0 || residual.width != width ||
        normed.col_offset != 0 || normed.width != width) {
      continue;
    }
    Node merged{OpKind::AddRmsNorm, norm.name, {add.inputs[0], add.inputs[1]}, norm.output, norm.weights, norm.attrs};
    graph.nodes[i] = std::move(merged);
    graph.nodes.erase(graph.nodes.begin() + static_cast<long>(i) + 1);
    ++fused;
  }
  KILN_TRY(graph.validate());
  return fused;
}

}  // namespace kiln
