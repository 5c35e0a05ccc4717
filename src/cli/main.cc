#include <cstdio>

#include "backend/cpu/isa.h"

namespace kiln { int cli_main(int argc, char** argv); }

int main(int argc, char** argv) {
  // The CPU kernels read KILN_CPU_ISA themselves (and ignore a value they do not know); the CLI
  // refuses one up front so a typo does not silently run the default level.
  if (const auto bad = kiln::cpu::invalid_isa_env()) {
    std::fprintf(stderr, "kiln: error: KILN_CPU_ISA=%s is not one of scalar, avx2, avx512\n", bad->c_str());
    return 1;
  }
  return kiln::cli_main(argc, argv);
}
