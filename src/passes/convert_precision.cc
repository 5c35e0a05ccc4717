#include "passes/passes.h"

namespace kiln {

Status convert_precision(Graph& graph, WeightStore& weights, DType matrix_dtype) {
  if (matrix_dtype != DType::F32 && matrix_dtype != DType::F16 && matrix_dtype != DType::BF16) {
    return make_error("convert_precision: unsupported weight dtype {}", dtype_name(matrix_dtype));
  }
  for (auto& [name, info] : graph.weights) {
    if (info.quant) continue;  // quantized matrices (pre-quantized checkpoints) keep their layout
    const DType target = info.shape.size() == 2 ? matrix_dtype : DType::F32;
    TensorView* t = weights.tensors.count(name) ? &weights.tensors[name] : nullptr;
    if (!t) return make_error("convert_precision: weight '{}' not in the store", name);
    if (t->dtype == target) continue;
    KILN_ASSIGN(*t, convert_tensor(*t, target));
    info.dtype = target;
  }
  return graph.validate();
}

}  // namespace kiln
