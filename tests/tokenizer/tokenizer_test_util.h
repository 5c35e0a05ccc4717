// Shared helpers for the tokenizer tests: paths and file reading.
#pragma once

#include <fstream>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

namespace kiln::testing {

inline std::string shared_path(const std::string& relative) { return std::string(KILN_SHARED_DIR) + "/" + relative; }
inline std::string data_path(const std::string& name) {
  return std::string(KILN_SOURCE_DIR) + "/tests/tokenizer/data/" + name;
}
inline std::string read_file(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  std::ostringstream contents;
  contents << file.rdbuf();
  return std::move(contents).str();
}
inline nlohmann::json read_json(const std::string& path) { return nlohmann::json::parse(read_file(path)); }

// The tiny-llama tokenizer.json rewritten to the legacy Llama layout (normalizer Prepend("▁") +
// Replace(" ", "▁"), no pre-tokenizer), as tools/make_tokenizer_goldens.py legacy_llama_json does.
inline std::string legacy_llama_json() {
  nlohmann::json config = read_json(shared_path("fixtures/hf-tiny/tiny-llama/tokenizer.json"));
  config["normalizer"] = {{"type", "Sequence"},
                          {"normalizers",
                           {{{"type", "Prepend"}, {"prepend", "\xE2\x96\x81"}},
                            {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\xE2\x96\x81"}}}}};
  config["pre_tokenizer"] = nullptr;
  return config.dump();
}

// Printable form of a string for failure messages.
inline std::string escaped(const std::string& text) { return nlohmann::json(text).dump(); }

}  // namespace kiln::testing
