// The memory-bandwidth bound that `kiln bench` reports decode against: how fast this machine's
// cores can read memory, measured two ways in the same process, the better one being the bound.
//   stream:  a plain read of a buffer far beyond the caches, each thread summing its contiguous
//            slice with the widest loads of the active instruction set and the software prefetch the
//            matmul kernels use (a "sum an array" loop: what the memory system delivers to a reader).
//   gemv:    cpu::matmul itself (M = 1, F32 weights, K = 4096) over the same bytes: what the fastest
//            kernel reads. Decode at >= 80% of max(stream, gemv) is the CPU backend's target.
#pragma once

#include <cstdint>

#include "backend/cpu/thread_pool.h"

namespace kiln::cpu {

struct BandwidthProbe {
  double stream_bytes_per_second = 0;  // best of `reps` passes
  double gemv_bytes_per_second = 0;
  double bound() const { return stream_bytes_per_second > gemv_bytes_per_second ? stream_bytes_per_second : gemv_bytes_per_second; }
};

// Allocates `bytes` (rounded down to whole 64 KiB) for the duration of the call; every thread of
// `pool` reads. Weights read per second, 1 GB = 1e9 bytes.
BandwidthProbe probe_read_bandwidth(ThreadPool& pool, int64_t bytes = int64_t{256} << 20, int reps = 4);

}  // namespace kiln::cpu
