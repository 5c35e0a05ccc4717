// Programmatic dependent launch (PDL), device side and the launch helper shared by the kernels of
// gemv.cu, norm.cu, elementwise.cu, rope.cu, kv_cache.cu, rope_kv_write.cu and attention_decode.cu.
//
// Source: CUDA Programming Guide, "Programmatic Dependent Launch and Synchronization"; PTX ISA,
// griddepcontrol. A kernel launched with programmatic stream serialization may begin once every CTA
// of its predecessor has executed griddepcontrol.launch_dependents (or exited). griddepcontrol.wait
// then blocks until the predecessor grid has COMPLETED and its memory is visible. Both instructions
// are no-ops in a kernel launched without the attribute, so the same kernels run either way.
//
// The contract every kernel here keeps, which makes any chain of them safe:
//   1. Before wait_for_producer(), read only data no kernel of the step writes (weights, tables),
//      and write nothing: the predecessor may still be reading or writing any activation buffer.
//   2. Every thread calls wait_for_producer() on every path before it exits. Then a kernel completes
//      only after its predecessor completed, so completion is transitive along the stream (a kernel
//      that waits on its predecessor also waits, through it, on everything earlier).
//   3. allow_dependents() may come anywhere (it makes no memory visible). Our kernels call it on
//      entry: a successor's CTAs are placed only once the last CTA of this grid is running, so they
//      fill SMs that this grid's tail leaves idle, and park at their own wait.
// The split-K decode attention kernels (attention_decode.cu) keep the contract too. Kernels launched
// without the attribute (prefill attention, cuBLAS) wait for full completion of their predecessor, as
// usual; a PDL kernel after them starts at their completion.
// Stream capture keeps programmatic edges, so CUDA graphs replay the overlap.
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "backend/cuda/launch.h"

namespace kiln::cuda::detail {

__device__ __forceinline__ void wait_for_producer() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void allow_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// kernel<<<grid, block, smem, stream>>>(args...), with programmatic stream serialization when
// programmatic_launch_enabled(). Returns the launch's error (also left in cudaGetLastError()).
template <class... Params, class... Args>
cudaError_t launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                          Args&&... args) {
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  config.attrs = &attribute;
  config.numAttrs = programmatic_launch_enabled() ? 1 : 0;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

}  // namespace kiln::cuda::detail
