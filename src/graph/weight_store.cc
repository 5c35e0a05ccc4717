#include "graph/weight_store.h"

#include <cstring>
#include <memory>

namespace kiln {

void WeightStore::put_owned(const std::string& name, DType dtype, std::vector<int64_t> shape,
                            std::vector<uint8_t> bytes) {
  auto owner = std::make_shared<std::vector<uint8_t>>(std::move(bytes));
  TensorView view;
  view.name = name;
  view.dtype = dtype;
  view.shape = std::move(shape);
  view.data = owner->data();
  view.nbytes = owner->size();
  view.owner = owner;
  tensors[name] = std::move(view);
}

std::vector<float> tensor_to_f32(const TensorView& t) {
  const size_t n = static_cast<size_t>(t.numel());
  std::vector<float> out(n);
  switch (t.dtype) {
    case DType::F32: std::memcpy(out.data(), t.data, n * 4); break;
    case DType::F64:
      for (size_t i = 0; i < n; ++i) {
        double d;
        std::memcpy(&d, t.data + 8 * i, 8);
        out[i] = static_cast<float>(d);
      }
      break;
    case DType::F16:
    case DType::BF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, t.data + 2 * i, 2);
        out[i] = t.dtype == DType::F16 ? f16_to_f32(h) : bf16_to_f32(h);
      }
      break;
    default: break;  // callers check is-float first
  }
  return out;
}

Result<TensorView> convert_tensor(const TensorView& t, DType dtype) {
  const bool float_source = t.dtype == DType::F32 || t.dtype == DType::F16 || t.dtype == DType::BF16 ||
                            t.dtype == DType::F64;
  if (!float_source) return make_error("tensor '{}': cannot convert {} to a float type", t.name, dtype_name(t.dtype));
  if (t.dtype == dtype) return t;
  const std::vector<float> values = tensor_to_f32(t);
  std::vector<uint8_t> bytes(values.size() * dtype_size(dtype));
  switch (dtype) {
    case DType::F32: std::memcpy(bytes.data(), values.data(), bytes.size()); break;
    case DType::F16:
    case DType::BF16:
      for (size_t i = 0; i < values.size(); ++i) {
        const uint16_t h = dtype == DType::F16 ? f32_to_f16(values[i]) : f32_to_bf16(values[i]);
        std::memcpy(bytes.data() + 2 * i, &h, 2);
      }
      break;
    default: return make_error("tensor '{}': unsupported target dtype {}", t.name, dtype_name(dtype));
  }
  WeightStore tmp;
  tmp.put_owned(t.name, dtype, t.shape, std::move(bytes));
  return tmp.tensors.begin()->second;
}

}  // namespace kiln
