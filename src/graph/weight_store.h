// Build-side weights of a graph: name -> tensor, either a view into a mapped model file or a buffer
// a pass produced (converted precision, fused concatenation). The graph's WeightInfo and these
// tensors are kept in agreement by the passes.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/tensor_view.h"

namespace kiln {

struct WeightStore {
  std::map<std::string, TensorView> tensors;

  const TensorView* find(const std::string& name) const {
    auto it = tensors.find(name);
    return it == tensors.end() ? nullptr : &it->second;
  }
  // Adds a tensor that owns `bytes`.
  void put_owned(const std::string& name, DType dtype, std::vector<int64_t> shape, std::vector<uint8_t> bytes);
};

// The tensor's elements as float (any float dtype), for passes and tests.
std::vector<float> tensor_to_f32(const TensorView& t);
// Converts to `dtype` (F32/F16/BF16), owning the result; name and shape kept.
Result<TensorView> convert_tensor(const TensorView& t, DType dtype);

}  // namespace kiln
