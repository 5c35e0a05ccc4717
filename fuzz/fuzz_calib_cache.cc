// libFuzzer target: any text given to the calibration cache parser (kiln build --calib-cache) must come
// back as a cache or one Error line, never a crash, hang or sanitizer report; a parsed cache holds only
// finite numbers, positive scales and ratios in [0, 1].
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "compiler/calibration_cache.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  const auto result = kiln::parse_calibration_cache(text, "fuzz.calib");
  if (!result.ok()) {
    if (result.error().message.find('\n') != std::string::npos) std::abort();
    return 0;
  }
  for (const auto& [name, m] : result->matrices) {
    if (!std::isfinite(m.ratio) || m.ratio < 0 || m.ratio > 1 || !(m.act_scale >= 0) || !std::isfinite(m.act_scale)) std::abort();
    for (float s : m.s) {
      if (!(s > 0) || !std::isfinite(s)) std::abort();
    }
    for (double v : m.importance) {
      if (!(v >= 0) || !std::isfinite(v)) std::abort();
    }
  }
  return 0;
}
