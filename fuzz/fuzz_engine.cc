// libFuzzer target for the engine loader: parse_engine on arbitrary bytes must return a value or
// an error, never crash, hang, or read outside the image (ASan/UBSan are on in KILN_FUZZ builds).
//
// The checksum is not verified, or nearly every mutation would stop there; with it off the
// fuzzer reaches the header arithmetic, the metadata JSON and the tensor table. Seeds come from
// make_engine_seeds (see fuzz/README.md).
#include <cstddef>
#include <cstdint>
#include <string>

#include "engine/engine_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto file =
      kiln::MappedFile::from_memory(std::string(reinterpret_cast<const char*>(data), size), "fuzz.engine");
  kiln::LoadOptions options;
  options.verify_checksum = false;
  kiln::Result<kiln::LoadedEngine> engine = kiln::parse_engine(file, options);
  if (engine.ok()) {
    // Touch every byte of every view: a view outside the image is an ASan report here.
    uint8_t sink = 0;
    for (const auto& [name, view] : engine->tensors) {
      for (uint64_t i = 0; i < view.nbytes; ++i) sink ^= view.data[i];
    }
    volatile uint8_t keep = sink;
    (void)keep;
  }
  return 0;
}
