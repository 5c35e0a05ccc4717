// The calibration cache of `kiln build --calib-cache FILE` (TensorRT's calibration cache, for kiln's
// searches): what calibration decided per matrix, so a rebuild skips the calibration forward passes and
// the AWQ / SmoothQuant searches and writes the same engine.
//
// A text file. A header of "key value" lines naming what the results depend on:
//   # kiln calibration cache 1
//   kiln_version 0.1.0
//   model_hash 9f3c...            XXH3-64 of the float weights calibration ran on (after fusion and --dtype)
//   mode int4 | group_size 128 | calib_method - | calib_source built-in | calib_samples 32 | calib_seq_len 256
// then one line per matrix:
//   matrix NAME ratio R error E act_scale A s N v1 ... vN importance M w1 ... wM
// (s: the input-channel scales folded in, N = 0 when none; importance: E[x^2] per channel for int4's
// range clipping, M = 0 when unused). A cache whose header differs from the build is refused naming the
// first field that differs; any malformed line is one error naming the file and line.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "common/error.h"

namespace kiln {

struct CalibrationKey {
  std::string kiln_version;
  std::string model_hash;
  std::string mode;
  int64_t group_size = 0;
  std::string calib_method;  // "-" when none
  std::string calib_source;
  int64_t calib_samples = 0;
  int64_t calib_seq_len = 0;
};

struct CachedMatrix {
  double ratio = 0;           // AWQ ratio / SmoothQuant alpha chosen (0: no scaling)
  double error = -1;          // relative output error measured at build (-1: not measured)
  float act_scale = 0;        // static activation scale (w8a8 with a calibration method), else 0
  std::vector<float> s;       // scales folded in (empty: none)
  std::vector<double> importance;  // E[x^2] per input channel (empty: unused)
};

struct CalibrationCache {
  CalibrationKey key;
  std::map<std::string, CachedMatrix> matrices;
};

Status write_calibration_cache(const std::string& path, const CalibrationCache& cache);
// Reads and validates the file; refuses one made for another key (naming the field and both values).
Result<CalibrationCache> read_calibration_cache(const std::string& path, const CalibrationKey& expected);
// Also the fuzzer's entry point: parses the text of a cache.
Result<CalibrationCache> parse_calibration_cache(const std::string& text, const std::string& path);

}  // namespace kiln
