// Decode GEMV bandwidth on quantized weights: kiln::cuda::gemv_quant (int8 per output channel with
// f32 scales, as `kiln build --quant int8` writes; int4 groups of 128 with f16 scales and mins, as
// `--quant int4` writes) against the fp16 GEMV (kiln::cuda::gemv) on Llama-2-7B's weight shapes, and
// the device's own copy bandwidth.
//
// Method (as cuda_gemv_bench): weights rotate among enough copies (> 256 MB together) that L2 cannot
// serve them; median of 9 batches of 20 event-timed launches after a warm-up; launches are back to
// back on one stream with programmatic dependent launch, as in a decode step. Bytes are what the
// kernel must move: codes + scales + mins (or the fp16 matrix) + x + y. Codes are random bytes (every
// nibble value), scales and mins random: the kernel's work does not depend on the values.
// Then: both M <= 8 kernels (register ring, cp.async pipeline with x through L1 or staged) at every
// k_split, M = 1 and 4; a Llama-2-7B decode step's GEMVs (32 x
// qkv, o, gate_up, down + lm_head) summed, as tokens per second if nothing else ran; and dequantize
// (the prefill path's expansion to fp16) in GB/s of codes read + fp16 written.
//
// usage: cuda_gemv_quant_bench      (prints tables and one JSON line)
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "backend/cuda/kernels.h"
#include "cuda_bench_util.cuh"

namespace {

using namespace kiln::bench;
using kiln::DType;

struct Shape {
  const char* name;
  int64_t N, K;
  int per_step;  // times a 7B decode step runs it
};
const Shape kShapes[] = {{"qkv", 12288, 4096, 32},
                         {"o_proj", 4096, 4096, 32},
                         {"gate_up", 2 * 11008, 4096, 32},
                         {"down", 4096, 11008, 32},
                         {"lm_head", 32000, 4096, 1}};

__global__ void fill_f32_random(float* p, int64_t n, uint32_t seed, float scale) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ seed;
    h ^= h >> 15, h *= 2246822519u, h ^= h >> 13;
    p[i] = ((h & 0xffffff) / 16777216.0f) * scale;
  }
}

enum class Format { kF16, kInt8, kInt4 };
const char* format_name(Format f) { return f == Format::kF16 ? "fp16" : f == Format::kInt8 ? "int8" : "int4"; }

// One format's copies of one shape, rotated per call.
struct Weights {
  Format format;
  int64_t N, K;
  std::vector<void*> buffers;
  std::vector<kiln::cuda::QuantWeightView> views;
  size_t bytes = 0;  // per copy (codes + scales + mins, or the fp16 matrix)

  Weights(Format f, const Shape& s) : format(f), N(s.N), K(s.K) {
    const int64_t padded = (K + 31) / 32 * 32;
    const int bits = f == Format::kInt4 ? 4 : 8;
    const int64_t group = f == Format::kInt4 ? 128 : padded;
    const int64_t groups = (K + group - 1) / group;
    const size_t code_bytes = f == Format::kF16 ? N * K * 2 : N * (bits == 4 ? padded / 2 : padded);
    const size_t meta_bytes = f == Format::kInt4 ? N * groups * 2 : f == Format::kInt8 ? N * groups * 4 : 0;
    const size_t min_bytes = f == Format::kInt4 ? meta_bytes : 0;
    const size_t code_alloc = (code_bytes + 255) / 256 * 256, meta_alloc = (meta_bytes + 255) / 256 * 256;
    bytes = code_bytes + meta_bytes + min_bytes;
    const int copies = static_cast<int>(std::max<size_t>(2, (size_t{256} << 20) / bytes + 1));
    for (int c = 0; c < copies; ++c) {
      char* p;
      CHECK_CUDA(cudaMalloc(&p, code_alloc + 2 * meta_alloc));
      buffers.push_back(p);
      fill_random<<<1024, 256>>>(reinterpret_cast<uint16_t*>(p), static_cast<int64_t>(code_bytes / 2), 17 + c);
      if (f == Format::kInt8) {
        fill_f32_random<<<256, 256>>>(reinterpret_cast<float*>(p + code_alloc), N * groups, 5 + c, 1e-3f);
      } else if (f == Format::kInt4) {
        fill_random<<<256, 256>>>(reinterpret_cast<uint16_t*>(p + code_alloc), N * groups, 5 + c, false, 1e-2f);
        fill_random<<<256, 256>>>(reinterpret_cast<uint16_t*>(p + code_alloc + meta_alloc), N * groups, 9 + c, false, 0.1f);
      }
      kiln::cuda::QuantWeightView v;
      v.bits = bits;
      v.group_size = group;
      v.scale_dtype = f == Format::kInt4 ? DType::F16 : DType::F32;
      v.rows = N;
      v.cols = K;
      v.codes = reinterpret_cast<const uint8_t*>(p);
      v.scales = p + code_alloc;
      v.mins = f == Format::kInt4 ? p + code_alloc + meta_alloc : nullptr;
      views.push_back(v);
    }
    CHECK_CUDA(cudaDeviceSynchronize());
  }
  ~Weights() {
    for (void* p : buffers) cudaFree(p);
  }
  Weights(const Weights&) = delete;
  Weights& operator=(const Weights&) = delete;

  // Seconds per call at M rows (y in f16) with the given tuning (default: what the engine runs).
  double time(const uint16_t* x, int M, float* y, kiln::cuda::GemvQuantTuning tuning = {}) const {
    return time_per_call([&](int call) {
      const size_t c = call % buffers.size();
      if (format == Format::kF16) {
        check_ok(kiln::cuda::gemv(x, M, K, buffers[c], N, nullptr, y, N, DType::F16, DType::F16, nullptr));
      } else {
        check_ok(kiln::cuda::gemv_quant(x, M, views[c], nullptr, y, N, DType::F16, DType::F16, nullptr,
                                        tuning));
      }
    });
  }
  double moved(int M) const { return static_cast<double>(bytes) + M * K * 2.0 + M * N * 2.0; }
};

}  // namespace

int main() {
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  const double copy_bw = copy_bandwidth();
  std::printf("device: %s, %d SMs, L2 %d MB; device-to-device copy %.0f GB/s (read + write)\n", prop.name,
              prop.multiProcessorCount, prop.l2CacheSize >> 20, copy_bw / 1e9);
  std::printf("int8: per output channel, f32 scales, no min (1 byte + 4 / K per weight); int4: groups of 128,\n"
              "f16 scales and mins (4.25 bits per weight); fp16: the plain GEMV. act f16, y f16.\n\n");

  uint16_t* x;
  float* y;
  CHECK_CUDA(cudaMalloc(&x, 32 * 11008 * 2));
  CHECK_CUDA(cudaMalloc(&y, 32 * 32000 * 4));
  fill_random<<<64, 256>>>(x, 32 * 11008, 3);

  std::string json = "{\"bench\":\"cuda_gemv_quant\",\"device\":\"" + std::string(prop.name) +
                     "\",\"copy_gbps\":" + std::to_string(copy_bw / 1e9) + ",\"results\":[";
  std::printf("%-8s %-6s %2s | %9s %9s %8s %6s\n", "shape", "format", "M", "MB", "us", "GB/s", "%copy");
  double step_us[3] = {0, 0, 0};  // per format, M = 1
  for (const Shape& shape : kShapes) {
    for (Format f : {Format::kF16, Format::kInt8, Format::kInt4}) {
      Weights w(f, shape);
      const std::vector<int> rows = f == Format::kF16 ? std::vector<int>{1, 4} : std::vector<int>{1, 2, 4, 8, 16, 32};
      for (int M : rows) {
        const double t = w.time(x, M, y);
        const double gbps = w.moved(M) / t / 1e9;
        std::printf("%-8s %-6s %2d | %9.2f %9.2f %8.0f %5.1f%%\n", shape.name, format_name(f), M, w.bytes / 1e6,
                    t * 1e6, gbps, 100.0 * gbps * 1e9 / copy_bw);
        if (M == 1) step_us[static_cast<int>(f)] += shape.per_step * t * 1e6;
        json += (json.back() == '[' ? "" : ",");
        json += "{\"shape\":\"" + std::string(shape.name) + "\",\"format\":\"" + format_name(f) +
                "\",\"M\":" + std::to_string(M) + ",\"us\":" + std::to_string(t * 1e6) +
                ",\"gbps\":" + std::to_string(gbps) + ",\"pct_copy\":" + std::to_string(100.0 * gbps * 1e9 / copy_bw) + "}";
      }
    }
  }

  // The two M <= 8 kernels: the register ring (pipeline 0) and the pipelined one (codes through a
  // cp.async ring in shared memory), x staged in shared memory or read through L1, every k_split.
  std::printf("\nkernels and k_split at M = 1 and 4 (GB/s; auto = the k_split the engine picks):\n"
              "%-8s %-6s %-10s %2s | %7s %7s %7s %7s %7s\n", "shape", "format", "kernel", "M", "auto", "k1", "k2", "k4", "k8");
  json += "],\"k_split\":[";
  double best_step_us[3] = {0, 0, 0};  // per format, M = 1: the best kernel and k_split per shape
  double ring_step_us[3] = {0, 0, 0};  // per format, M = 1: the register ring at its auto k_split
  for (const Shape& shape : kShapes) {
    for (Format f : {Format::kInt8, Format::kInt4}) {
      Weights w(f, shape);
      for (int M : {1, 4}) {
        double best = 1e30;
        for (int kernel = 0; kernel < 3; ++kernel) {
          const char* kname = kernel == 0 ? "ring" : kernel == 1 ? "pipe-L1" : "pipe-smem";
          std::printf("%-8s %-6s %-10s %2d |", shape.name, format_name(f), kname, M);
          std::string entry = "{\"shape\":\"" + std::string(shape.name) + "\",\"format\":\"" + format_name(f) +
                              "\",\"kernel\":\"" + kname + "\",\"M\":" + std::to_string(M);
          for (int k : {0, 1, 2, 4, 8}) {
            kiln::cuda::GemvQuantTuning tuning{k, true, kernel == 0 ? 0 : 1, kernel == 0 ? -1 : kernel - 1};
            const double t = w.time(x, M, y, tuning);
            const double gbps = w.moved(M) / t / 1e9;
            if (M == 1) best = std::min(best, t);
            if (M == 1 && kernel == 0 && k == 0) ring_step_us[static_cast<int>(f)] += shape.per_step * t * 1e6;
            std::printf(" %7.0f", gbps);
            entry += ",\"k" + std::to_string(k) + "\":" + std::to_string(gbps);
          }
          std::printf("\n");
          json += (json.back() == '[' ? "" : ",") + entry + "}";
        }
        if (M == 1) best_step_us[static_cast<int>(f)] += shape.per_step * best * 1e6;
      }
    }
  }

  // The two int8 / int4 paths on the same weights: scale and min applied to each chunk's mma sums
  // (the default for these layouts) or to every weight before the mma (what other layouts run).
  std::printf("\nfactored (scale per chunk) vs per-weight dequantization (GB/s):\n%-8s %-6s | %9s %9s %9s %9s\n",
              "shape", "format", "M1 fact", "M1 per-w", "M8 fact", "M8 per-w");
  json += "],\"factored\":[";
  double per_weight_step_us[3] = {0, 0, 0};
  for (const Shape& shape : kShapes) {
    for (Format f : {Format::kInt8, Format::kInt4}) {
      Weights w(f, shape);
      double g[4];
      for (int i = 0; i < 4; ++i) {
        const int M = i < 2 ? 1 : 8;
        const double t = w.time(x, M, y, kiln::cuda::GemvQuantTuning{0, i % 2 == 0});
        if (i == 1) per_weight_step_us[static_cast<int>(f)] += shape.per_step * t * 1e6;
        g[i] = w.moved(M) / t / 1e9;
      }
      std::printf("%-8s %-6s | %9.0f %9.0f %9.0f %9.0f\n", shape.name, format_name(f), g[0], g[1], g[2], g[3]);
      json += std::string(json.back() == '[' ? "" : ",") + "{\"shape\":\"" + shape.name + "\",\"format\":\"" +
              format_name(f) + "\",\"m1_factored\":" + std::to_string(g[0]) + ",\"m1_per_weight\":" +
              std::to_string(g[1]) + ",\"m8_factored\":" + std::to_string(g[2]) + ",\"m8_per_weight\":" +
              std::to_string(g[3]) + "}";
    }
  }

  std::printf("\nLlama-2-7B decode step, GEMVs only at M = 1 (32 layers x qkv, o, gate_up, down + lm_head):\n");
  json += "],\"step\":{";
  for (Format f : {Format::kF16, Format::kInt8, Format::kInt4}) {
    const double us = step_us[static_cast<int>(f)];
    std::printf("  %-5s %8.1f us  -> %6.1f tok/s if nothing else ran\n", format_name(f), us, 1e6 / us);
    json += std::string(f == Format::kF16 ? "" : ",") + "\"" + format_name(f) + "_us\":" + std::to_string(us);
  }
  for (Format f : {Format::kInt8, Format::kInt4}) {
    const double us = per_weight_step_us[static_cast<int>(f)];
    std::printf("  %-5s %8.1f us  -> %6.1f tok/s (per-weight path)\n", format_name(f), us, 1e6 / us);
    json += std::string(",\"") + format_name(f) + "_per_weight_us\":" + std::to_string(us);
  }
  for (Format f : {Format::kInt8, Format::kInt4}) {
    const double us = ring_step_us[static_cast<int>(f)], best = best_step_us[static_cast<int>(f)];
    std::printf("  %-5s %8.1f us  -> %6.1f tok/s (register-ring kernel)\n", format_name(f), us, 1e6 / us);
    std::printf("  %-5s %8.1f us  -> %6.1f tok/s (best kernel and k_split per shape)\n", format_name(f), best, 1e6 / best);
    json += std::string(",\"") + format_name(f) + "_ring_us\":" + std::to_string(us) + ",\"" + format_name(f) +
            "_best_us\":" + std::to_string(best);
  }

  std::printf("\ndequantize (prefill: W to fp16 before cuBLASLt), GB/s of codes + scales read and fp16 written:\n");
  json += "},\"dequantize\":[";
  void* out;
  CHECK_CUDA(cudaMalloc(&out, 32000 * 4096 * 2));
  for (const Shape& shape : kShapes) {
    for (Format f : {Format::kInt8, Format::kInt4}) {
      Weights w(f, shape);
      const double t = time_per_call([&](int call) {
        check_ok(kiln::cuda::dequantize(w.views[call % w.views.size()], out, DType::F16, nullptr));
      });
      const double gbps = (w.bytes + shape.N * shape.K * 2.0) / t / 1e9;
      std::printf("  %-8s %-5s %9.2f us %8.0f GB/s %5.1f%%\n", shape.name, format_name(f), t * 1e6, gbps,
                  100.0 * gbps * 1e9 / copy_bw);
      json += std::string(json.back() == '[' ? "" : ",") + "{\"shape\":\"" + shape.name + "\",\"format\":\"" +
              format_name(f) + "\",\"us\":" + std::to_string(t * 1e6) + ",\"gbps\":" + std::to_string(gbps) + "}";
    }
  }
  std::printf("%s]}\n", json.c_str());
  CHECK_CUDA(cudaFree(out));
  CHECK_CUDA(cudaFree(x));
  CHECK_CUDA(cudaFree(y));
  return 0;
}
