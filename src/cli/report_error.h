// How every kiln command reports a failure: one line "kiln: error: ..." on stderr, exit status 1.
#pragma once

#include <cstdio>

#include <fmt/format.h>

#include "common/error.h"

namespace kiln {

inline int fail(const Error& error) {
  std::fflush(stdout);  // whatever was streamed comes first
  fmt::print(stderr, "kiln: error: {}\n", error.message);
  return 1;
}

}  // namespace kiln
