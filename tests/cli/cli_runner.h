// Runs the kiln binary of this build as a user would, for the CLI contract tests.
#pragma once

#include <sys/wait.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "test_util.h"

namespace kiln::testing {

struct Outcome {
  int exit_code = -1;  // -1: killed by a signal or timed out
  std::string out;
  std::string err;
};

// `kiln ARGS` under `timeout 120`, stdin closed, stdout and stderr captured in `dir`.
inline Outcome kiln(const TempDir& dir, const std::string& args) {
  const std::string out = dir.file("stdout.txt"), err = dir.file("stderr.txt");
  const std::string cmd = "timeout 120 " + std::string(KILN_BINARY_DIR) + "/kiln " + args + " >" + out + " 2>" + err + " </dev/null";
  const int status = std::system(cmd.c_str());
  Outcome o;
  if (WIFEXITED(status) && WEXITSTATUS(status) != 124 && WEXITSTATUS(status) < 128) o.exit_code = WEXITSTATUS(status);
  o.out = slurp(out);
  o.err = slurp(err);
  return o;
}

}  // namespace kiln::testing
