#include "compiler/calibration_cache.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

namespace kiln {

namespace {

constexpr const char* kMagic = "# kiln calibration cache 1";
constexpr size_t kMaxValues = size_t{1} << 24;  // per vector: far above any model width

bool parse_double(const std::string& token, double& out) {
  if (token.empty()) return false;
  errno = 0;
  char* end = nullptr;
  out = std::strtod(token.c_str(), &end);
  return errno == 0 && end == token.c_str() + token.size() && std::isfinite(out);
}

bool parse_int(const std::string& token, int64_t& out) {
  double d;
  if (!parse_double(token, d) || d != std::floor(d) || std::fabs(d) > 1e15) return false;
  out = static_cast<int64_t>(d);
  return true;
}

}  // namespace

Status write_calibration_cache(const std::string& path, const CalibrationCache& cache) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) return make_error("--calib-cache {}: cannot write the file", path);
    const CalibrationKey& k = cache.key;
    out << kMagic << "\n"
        << "kiln_version " << k.kiln_version << "\nmodel_hash " << k.model_hash << "\nmode " << k.mode
        << "\ngroup_size " << k.group_size << "\ncalib_method " << k.calib_method << "\ncalib_source "
        << k.calib_source << "\ncalib_samples " << k.calib_samples << "\ncalib_seq_len " << k.calib_seq_len << "\n";
    for (const auto& [name, m] : cache.matrices) {
      out << fmt::format("matrix {} ratio {:.17g} error {:.17g} act_scale {:.9g} s {}", name, m.ratio, m.error,
                         m.act_scale, m.s.size());
      for (float v : m.s) out << fmt::format(" {:.9g}", v);
      out << " importance " << m.importance.size();
      for (double v : m.importance) out << fmt::format(" {:.17g}", v);
      out << "\n";
    }
    if (!out.good()) return make_error("--calib-cache {}: write failed", path);
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return make_error("--calib-cache {}: cannot rename {}: {}", path, tmp, ec.message());
  return Status::Ok();
}

Result<CalibrationCache> parse_calibration_cache(const std::string& text, const std::string& path) {
  CalibrationCache cache;
  std::istringstream in(text);
  std::string line;
  int64_t number = 0;
  auto bad = [&](const std::string& why) {
    return make_error("--calib-cache {}: line {}: {}", path, number, why);
  };
  if (!std::getline(in, line) || line != kMagic) {
    return make_error("--calib-cache {}: not a kiln calibration cache (the first line is not '{}')", path, kMagic);
  }
  number = 1;
  std::map<std::string, std::string> header;
  const char* fields[] = {"kiln_version", "model_hash", "mode", "group_size", "calib_method", "calib_source",
                          "calib_samples", "calib_seq_len"};
  while (std::getline(in, line)) {
    ++number;
    if (line.empty()) continue;
    std::istringstream ls(line);
    std::string key;
    ls >> key;
    if (key != "matrix") {
      std::string value;
      std::getline(ls, value);
      if (!value.empty() && value[0] == ' ') value.erase(0, 1);
      bool known = false;
      for (const char* f : fields) known |= key == f;
      if (!known) return bad(fmt::format("unknown field '{}'", key.substr(0, 64)));
      if (header.count(key)) return bad(fmt::format("'{}' given twice", key));
      if (value.empty()) return bad(fmt::format("'{}' has no value", key));
      header[key] = value;
      continue;
    }
    std::string name;
    ls >> name;
    if (name.empty()) return bad("a matrix line without a name");
    if (cache.matrices.count(name)) return bad(fmt::format("matrix '{}' given twice", name.substr(0, 128)));
    CachedMatrix m;
    std::string tok;
    const char* scalars[] = {"ratio", "error", "act_scale"};
    for (const char* expected : scalars) {
      std::string value;
      if (!(ls >> tok >> value) || tok != expected) return bad(fmt::format("expected '{}' and a number", expected));
      double d;
      if (!parse_double(value, d)) return bad(fmt::format("{} '{}' is not a finite number", expected, value.substr(0, 32)));
      if (tok == "ratio") m.ratio = d;
      if (tok == "error") m.error = d;
      if (tok == "act_scale") m.act_scale = static_cast<float>(d);
    }
    if (!(m.act_scale >= 0) || !std::isfinite(m.act_scale) || m.ratio < 0 || m.ratio > 1) {
      return bad("ratio outside [0, 1], or an activation scale that is negative or beyond float range");
    }
    for (const char* vec : {"s", "importance"}) {
      std::string count_text;
      int64_t count = 0;
      if (!(ls >> tok >> count_text) || tok != vec || !parse_int(count_text, count) || count < 0 ||
          static_cast<size_t>(count) > kMaxValues) {
        return bad(fmt::format("expected '{}' and a count", vec));
      }
      for (int64_t i = 0; i < count; ++i) {
        std::string value;
        double d;
        if (!(ls >> value) || !parse_double(value, d)) return bad(fmt::format("{}: value {} of {} missing or not finite", vec, i, count));
        if (std::string(vec) == "s") {
          const float f = static_cast<float>(d);
          if (!(f > 0) || !std::isfinite(f)) return bad("s: scales must be positive floats");
          m.s.push_back(f);
        } else {
          if (d < 0) return bad("importance: values must not be negative");
          m.importance.push_back(d);
        }
      }
    }
    if (ls >> tok) return bad(fmt::format("unexpected '{}' at the end", tok.substr(0, 32)));
    cache.matrices[name] = std::move(m);
  }
  for (const char* f : fields) {
    if (!header.count(f)) return make_error("--calib-cache {}: the header has no '{}'", path, f);
  }
  CalibrationKey& k = cache.key;
  k.kiln_version = header["kiln_version"];
  k.model_hash = header["model_hash"];
  k.mode = header["mode"];
  k.calib_method = header["calib_method"];
  k.calib_source = header["calib_source"];
  if (!parse_int(header["group_size"], k.group_size) || !parse_int(header["calib_samples"], k.calib_samples) ||
      !parse_int(header["calib_seq_len"], k.calib_seq_len)) {
    return make_error("--calib-cache {}: group_size, calib_samples and calib_seq_len must be integers", path);
  }
  return cache;
}

Result<CalibrationCache> read_calibration_cache(const std::string& path, const CalibrationKey& expected) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return make_error("--calib-cache {}: cannot read the file", path);
  std::stringstream ss;
  ss << in.rdbuf();
  KILN_ASSIGN(CalibrationCache cache, parse_calibration_cache(ss.str(), path));
  const CalibrationKey& k = cache.key;
  const std::pair<std::string, std::pair<std::string, std::string>> checks[] = {
      {"model_hash", {k.model_hash, expected.model_hash}},
      {"mode", {k.mode, expected.mode}},
      {"group_size", {std::to_string(k.group_size), std::to_string(expected.group_size)}},
      {"calib_method", {k.calib_method, expected.calib_method}},
      {"calib_source", {k.calib_source, expected.calib_source}},
      {"calib_samples", {std::to_string(k.calib_samples), std::to_string(expected.calib_samples)}},
      {"calib_seq_len", {std::to_string(k.calib_seq_len), std::to_string(expected.calib_seq_len)}},
      {"kiln_version", {k.kiln_version, expected.kiln_version}},
  };
  for (const auto& [field, values] : checks) {
    if (values.first != values.second) {
      return make_error("--calib-cache {}: made for {} {}, this build has {} {} (delete the file or give another one)",
                        path, field, values.first.substr(0, 80), field, values.second.substr(0, 80));
    }
  }
  return cache;
}

}  // namespace kiln
