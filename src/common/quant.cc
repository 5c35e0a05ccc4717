#include "common/quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include <fmt/format.h>

namespace kiln {

namespace {

float load_scalar(const void* base, DType dtype, int64_t index) {
  if (dtype == DType::F32) {
    float v;
    std::memcpy(&v, static_cast<const uint8_t*>(base) + 4 * index, 4);
    return v;
  }
  uint16_t h;
  std::memcpy(&h, static_cast<const uint8_t*>(base) + 2 * index, 2);
  return f16_to_f32(h);
}

// Stores v in dtype and returns the value actually stored.
float store_scalar(std::vector<uint8_t>& bytes, DType dtype, int64_t index, float v) {
  if (dtype == DType::F32) {
    std::memcpy(bytes.data() + 4 * index, &v, 4);
    return v;
  }
  const uint16_t h = f32_to_f16(v);
  std::memcpy(bytes.data() + 2 * index, &h, 2);
  return f16_to_f32(h);
}

void set_code(QuantizedMatrix& m, int64_t n, int64_t k, int q) {
  uint8_t* row = m.codes.data() + n * quant_row_bytes(m.info, m.cols);
  if (m.info.bits == 8) {
    row[k] = static_cast<uint8_t>(static_cast<int8_t>(q));
    return;
  }
  const int64_t block = k / kQuantBlock, i = k % kQuantBlock;
  uint8_t& byte = row[block * 16 + (i & 15)];
  byte = i < 16 ? static_cast<uint8_t>((byte & 0xf0) | q) : static_cast<uint8_t>((byte & 0x0f) | (q << 4));
}

}  // namespace

double quant_bits_per_weight(const QuantInfo& q, int64_t K) {
  const double groups = static_cast<double>(quant_groups(q, K));
  const double meta_bits = groups * (q.has_min ? 2 : 1) * 8.0 * static_cast<double>(dtype_size(q.scale_dtype));
  return (8.0 * static_cast<double>(quant_row_bytes(q, K)) + meta_bits) / static_cast<double>(K);
}

std::string quant_describe(const QuantInfo& q, int64_t K) {
  const std::string group = q.group_size >= K ? "per-channel" : fmt::format("g{}", q.group_size);
  const std::string act = q.act_bits == 0 ? "" : q.act_scale > 0 ? " a8 static" : " a8 per-token";
  return fmt::format("int{} {} {}{}{}", q.bits, group, q.scale_dtype == DType::F16 ? "f16" : "f32",
                     q.has_min ? " +min" : "", act);
}

Status validate_quant(const QuantInfo& q, int64_t N, int64_t K, const std::string& what) {
  if (q.bits != 4 && q.bits != 8) return make_error("{}: quantized with {} bits (kiln runs 4 and 8)", what, q.bits);
  const int64_t multiple = q.bits == 4 ? 32 : 16;
  if (q.group_size <= 0 || (q.group_size % multiple != 0 && q.group_size < K)) {
    return make_error("{}: group size {} is not a positive multiple of {} (nor one group of all {} columns)", what,
                      q.group_size, multiple, K);
  }
  if (q.scale_dtype != DType::F16 && q.scale_dtype != DType::F32) {
    return make_error("{}: scales of dtype {} (expected F16 or F32)", what, dtype_name(q.scale_dtype));
  }
  if (q.bits == 4 && !q.has_min) return make_error("{}: int4 weights need mins", what);
  if (N <= 0 || K <= 0) return make_error("{}: quantized matrix of shape [{}, {}]", what, N, K);
  if (q.act_bits != 0) {
    if (q.act_bits != 8) return make_error("{}: activations quantized to {} bits (kiln runs 8)", what, q.act_bits);
    if (q.bits != 8 || q.has_min || q.group_size < K) {
      return make_error("{}: int8 activations need int8 weights with one scale per row and no min", what);
    }
    if (!(q.act_scale >= 0.0f) || !std::isfinite(q.act_scale)) {
      return make_error("{}: activation scale {} is not a finite non-negative number", what, q.act_scale);
    }
  }
  return Status::Ok();
}

int quant_code(const QuantMatrixView& w, int64_t n, int64_t k) {
  const uint8_t* row = w.codes + n * quant_row_bytes(w.info, w.cols);
  if (w.info.bits == 8) return static_cast<int8_t>(row[k]);
  const int64_t block = k / kQuantBlock, i = k % kQuantBlock;
  const uint8_t byte = row[block * 16 + (i & 15)];
  return i < 16 ? (byte & 0x0f) : (byte >> 4);
}

float quant_scale(const QuantMatrixView& w, int64_t n, int64_t g) {
  return load_scalar(w.scales, w.info.scale_dtype, n * quant_groups(w.info, w.cols) + g);
}

float quant_min(const QuantMatrixView& w, int64_t n, int64_t g) {
  if (!w.mins) return 0.0f;
  return load_scalar(w.mins, w.info.scale_dtype, n * quant_groups(w.info, w.cols) + g);
}

void dequantize_row(const QuantMatrixView& w, int64_t n, float* out) {
  for (int64_t k = 0; k < w.cols; ++k) {
    const int64_t g = k / w.info.group_size;
    out[k] = quant_scale(w, n, g) * static_cast<float>(quant_code(w, n, k)) + quant_min(w, n, g);
  }
}

float quantize_activation_row(const float* x, int64_t K, float act_scale, int8_t* q) {
  float scale = act_scale;
  if (scale <= 0.0f) {
    float amax = 0.0f;
    for (int64_t k = 0; k < K; ++k) amax = std::max(amax, std::fabs(x[k]));
    scale = amax / 127.0f;
  }
  const float inv = scale > 0.0f ? 1.0f / scale : 0.0f;
  for (int64_t k = 0; k < K; ++k) {
    q[k] = static_cast<int8_t>(std::clamp(std::nearbyint(x[k] * inv), -127.0f, 127.0f));
  }
  return scale;
}

void value_range(const float* row, int64_t k0, int64_t k1, float& lo, float& hi) {
  lo = row[k0], hi = row[k0];
  for (int64_t k = k0; k < k1; ++k) lo = std::min(lo, row[k]), hi = std::max(hi, row[k]);
}

QuantizedMatrix make_quantized_matrix(int64_t N, int64_t K, const QuantInfo& info) {
  QuantizedMatrix m;
  m.info = info;
  m.rows = N;
  m.cols = K;
  m.codes.assign(static_cast<size_t>(N * quant_row_bytes(info, K)), 0);
  const size_t meta = static_cast<size_t>(N * quant_groups(info, K)) * dtype_size(info.scale_dtype);
  m.scales.assign(meta, 0);
  if (info.has_min) m.mins.assign(meta, 0);
  return m;
}

void quantize_group(QuantizedMatrix& m, int64_t n, int64_t g, const float* row, float lo, float hi) {
  const QuantInfo& q = m.info;
  const int64_t index = n * quant_groups(q, m.cols) + g;
  const int64_t k0 = g * q.group_size, k1 = std::min(m.cols, k0 + q.group_size);
  if (!q.has_min) {  // symmetric int8
    const float amax = std::max(std::fabs(lo), std::fabs(hi));
    const float scale = store_scalar(m.scales, q.scale_dtype, index, amax / 127.0f);
    const float inv = scale > 0 ? 1.0f / scale : 0.0f;
    for (int64_t k = k0; k < k1; ++k) {
      set_code(m, n, k, static_cast<int>(std::clamp(std::nearbyint(row[k] * inv), -127.0f, 127.0f)));
    }
    return;
  }
  const int levels = (1 << q.bits) - 1;
  const float min = store_scalar(m.mins, q.scale_dtype, index, lo);
  const float scale = store_scalar(m.scales, q.scale_dtype, index, std::max(hi - min, 0.0f) / static_cast<float>(levels));
  // int8 codes are signed, q = u - 128, so the stored min is min + 128 * scale (w = scale * q + that);
  // codes are rounded against the value actually stored, as for int4.
  const bool signed_codes = q.bits == 8;
  const float base = signed_codes ? store_scalar(m.mins, q.scale_dtype, index, min + 128.0f * scale) : min;
  const float first = signed_codes ? -128.0f : 0.0f;
  const float inv = scale > 0 ? 1.0f / scale : 0.0f;
  for (int64_t k = k0; k < k1; ++k) {
    set_code(m, n, k, static_cast<int>(std::clamp(std::nearbyint((row[k] - base) * inv), first,
                                                  first + static_cast<float>(levels))));
  }
}

float quantize_element(QuantizedMatrix& m, int64_t n, int64_t k, float w) {
  const QuantMatrixView view = m.view();
  const int64_t g = k / m.info.group_size;
  const float scale = quant_scale(view, n, g), base = quant_min(view, n, g);
  const float inv = scale > 0 ? 1.0f / scale : 0.0f;
  int q;
  if (!m.info.has_min) {
    q = static_cast<int>(std::clamp(std::nearbyint(w * inv), -127.0f, 127.0f));
  } else {
    const float first = m.info.bits == 8 ? -128.0f : 0.0f;
    const float last = first + static_cast<float>((1 << m.info.bits) - 1);
    q = static_cast<int>(std::clamp(std::nearbyint((w - base) * inv), first, last));
  }
  set_code(m, n, k, q);
  return scale * static_cast<float>(q) + base;
}

QuantizedMatrix quantize_rtn(const float* w, int64_t N, int64_t K, const QuantInfo& info) {
  QuantizedMatrix m = make_quantized_matrix(N, K, info);
  const int64_t groups = quant_groups(info, K);
  for (int64_t n = 0; n < N; ++n) {
    const float* row = w + n * K;
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t k0 = g * info.group_size, k1 = std::min(K, k0 + info.group_size);
      float lo, hi;
      value_range(row, k0, k1, lo, hi);
      quantize_group(m, n, g, row, lo, hi);
    }
  }
  return m;
}

}  // namespace kiln
