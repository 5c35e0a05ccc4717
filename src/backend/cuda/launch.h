// Programmatic dependent launch (PDL) switch of the CUDA kernels in this folder (host side).
//
// On Hopper (compute capability >= 9.0) the GEMV, norm, elementwise, RoPE and KV-cache kernels are
// launched with cudaLaunchAttributeProgrammaticStreamSerialization: each may start while its
// predecessor in the stream drains, runs the part of its work that does not read the predecessor's
// output (a GEMV issues its first weight loads), then waits (griddepcontrol.wait) for the
// predecessor's completion before touching activations. See launch.cuh for the device side.
// Off on older devices, and when the environment sets KILN_CUDA_PDL=0.
#pragma once

namespace kiln::cuda {

// Whether the next launches ask for programmatic serialization: the device supports it (queried once,
// for the device current at the first call), KILN_CUDA_PDL is not "0", and no set_programmatic_launch(false).
bool programmatic_launch_enabled();
// Turns PDL off (or back on, where supported) for later launches; graphs captured before keep
// their edges. For benchmarks and A/B tests.
void set_programmatic_launch(bool enabled);

}  // namespace kiln::cuda
