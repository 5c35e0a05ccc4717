// A named, typed, shaped view into bytes owned elsewhere (usually an mmapped file).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/dtype.h"

namespace kiln {

struct TensorView {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;       // row-major, PyTorch order: a linear weight is [out, in]
  const uint8_t* data = nullptr;    // nbytes bytes, not owned
  uint64_t nbytes = 0;
  std::shared_ptr<const void> owner;  // keeps the mapping alive while the view exists

  int64_t numel() const {
    for (int64_t d : shape) {
      if (d == 0) return 0;  // readers check that the product fits only when no dim is zero
    }
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

}  // namespace kiln
