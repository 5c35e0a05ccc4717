// libFuzzer target: any byte string given to the safetensors parser must come back as a valid
// SafetensorsFile or an Error, never a crash, hang, sanitizer report or out-of-range view.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "format/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto file = kiln::MappedFile::from_memory(std::string(reinterpret_cast<const char*>(data), size), "fuzz");
  const auto result = kiln::parse_safetensors(file);
  if (!result.ok()) return 0;
  // Invariants a caller relies on when it reads the views.
  const uint8_t* begin = file->data();
  const uint8_t* end = begin + file->size();
  for (const kiln::TensorView& view : result->tensors) {
    if (view.data < begin || view.data > end || view.nbytes > static_cast<uint64_t>(end - view.data)) std::abort();
    if (view.nbytes != static_cast<uint64_t>(view.numel()) * kiln::dtype_size(view.dtype)) std::abort();
  }
  return 0;
}
