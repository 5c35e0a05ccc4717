// libFuzzer target: any byte string given to the GGUF parser must come back as a valid GgufFile or
// an Error, never a crash, hang, sanitizer report or out-of-range view. On success every value the
// caller could read is read (so ASan sees any view outside the buffer) and the invariants checked;
// then the file goes through the model import (format/gguf_model.h: config, tensor mapping incl. the
// block and k-quant repacks, tokenizer rebuilt from the metadata), which must also end in a model or
// one error line.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>

#include "format/gguf.h"
#include "format/gguf_model.h"

namespace {

const uint8_t* g_begin = nullptr;
const uint8_t* g_end = nullptr;

void check_inside(const void* p, uint64_t n) {
  const auto* q = static_cast<const uint8_t*>(p);
  if (n == 0) return;
  if (q < g_begin || q > g_end || n > static_cast<uint64_t>(g_end - q)) std::abort();
}

// Touches every byte a view covers (a read outside the image is an ASan report) and returns a sum
// so the loads are not optimized away.
uint64_t touch(const void* p, uint64_t n) {
  check_inside(p, n);
  uint64_t sum = 0;
  for (uint64_t i = 0; i < n; ++i) sum += static_cast<const volatile uint8_t*>(p)[i];
  return sum;
}

uint64_t walk(const kiln::GgufValue& v, int depth) {
  using kiln::GgufValueType;
  if (depth > kiln::kGgufMaxArrayDepth) std::abort();
  if (v.type == GgufValueType::String) return touch(v.string.data(), v.string.size());
  if (v.type != GgufValueType::Array) return v.bits;
  uint64_t sum = 0;
  if (v.element_type == GgufValueType::String) {
    if (v.strings.size() != v.count) std::abort();
    for (const std::string_view s : v.strings) sum += touch(s.data(), s.size());
  } else if (v.element_type == GgufValueType::Array) {
    if (v.arrays.size() != v.count) std::abort();
    for (const kiln::GgufValue& a : v.arrays) sum += walk(a, depth + 1);
  } else {
    for (uint64_t i = 0; i < v.count; ++i) {
      if (v.element_type == GgufValueType::F32 || v.element_type == GgufValueType::F64) {
        sum += static_cast<uint64_t>(v.float_at(i) != 0);
      } else if (v.element_type != GgufValueType::Bool) {
        sum += static_cast<uint64_t>(v.integer_at(i).value_or(0));
      }
    }
  }
  return sum;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto file = kiln::MappedFile::from_memory(std::string(reinterpret_cast<const char*>(data), size), "fuzz");
  const auto result = kiln::parse_gguf(file);
  if (!result.ok()) {
    if (result.error().message.find('\n') != std::string::npos) std::abort();  // one line
    return 0;
  }
  g_begin = file->data();
  g_end = g_begin + file->size();
  const kiln::GgufFile& gguf = *result;
  if (gguf.version != 2 && gguf.version != 3) std::abort();
  if (gguf.alignment == 0 || (gguf.alignment & (gguf.alignment - 1)) != 0) std::abort();
  uint64_t sum = 0;
  for (const auto& [key, value] : gguf.metadata) {
    sum += touch(key.data(), key.size());
    sum += walk(value, 1);
    if (gguf.find(key) != &value) std::abort();  // keys are unique
  }
  for (const kiln::GgufTensor& t : gguf.tensors) {
    const kiln::GgmlTypeTraits* traits = kiln::ggml_type_traits(static_cast<uint32_t>(t.type));
    if (traits == nullptr || t.dims.empty() || t.dims.size() > 4) std::abort();
    if (t.dims[0] % traits->block_size != 0 || t.offset % gguf.alignment != 0) std::abort();
    if (t.numel() > 0 && t.nbytes != static_cast<uint64_t>(t.rows()) * t.row_bytes()) std::abort();
    if (t.numel() == 0 && t.nbytes != 0) std::abort();
    if (gguf.find_tensor(t.name) != &t) std::abort();
    sum += touch(t.name.data(), t.name.size());
    sum += touch(t.data, t.nbytes);
    const auto view = gguf.view(t);
    if (view.ok() && view->nbytes != static_cast<uint64_t>(view->numel()) * kiln::dtype_size(view->dtype)) {
      std::abort();
    }
  }
  // Typed getters on the keys a model builder reads must not crash whatever their type.
  for (const char* key : {"general.architecture", "general.alignment", "llama.block_count",
                          "tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"}) {
    (void)gguf.get_string(key);
    (void)gguf.get_u32(key);
    (void)gguf.get_i64(key);
    (void)gguf.get_f32(key);
    (void)gguf.get_f64(key);
    (void)gguf.get_bool(key);
    (void)gguf.get_string_array(key);
    (void)gguf.get_integer_array(key);
    (void)gguf.get_f32_array(key);
  }
  const auto model = kiln::import_gguf_model(std::make_shared<const kiln::GgufFile>(gguf));
  if (!model.ok() && model.error().message.find('\n') != std::string::npos) std::abort();  // one line
  const auto tokenizer = kiln::gguf_tokenizer(gguf);
  if (!tokenizer.ok() && tokenizer.error().message.find('\n') != std::string::npos) std::abort();
  static volatile uint64_t sink;
  sink = sum;
  return 0;
}
