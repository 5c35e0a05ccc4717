// The CUDA backend is a plugin (libkiln_cuda.so) loaded with dlopen on first use, as ggml loads its
// backends: a CPU-only run never maps the CUDA runtime or cuBLASLt (which would cost ~150 MiB of
// resident memory at start-up), and one kiln binary runs on machines with and without a GPU.
// The plugin exports one C symbol, kiln_cuda_plugin_api, returning this table; it is built from the
// same sources as the binary that loads it, and the ABI version guards against a stale plugin.
#pragma once

#include <memory>
#include <string>

#include <vector>

#include <nlohmann/json.hpp>

#include "backend/backend.h"
#include "graph/graph.h"

namespace kiln {

inline constexpr int kCudaPluginAbiVersion = 3;  // 3: Backend::forward_sample

struct CudaPluginApi {
  int abi_version;
  Result<std::unique_ptr<Backend>> (*create_backend)(const LoadedEngine& engine, const BackendOptions& options);
  Result<std::string> (*device_arch)();
  Result<nlohmann::json> (*select_tactics)(const Graph& graph, const std::vector<int64_t>& row_counts);
};

namespace cuda_plugin {
Result<std::unique_ptr<Backend>> create_backend(const LoadedEngine& engine, const BackendOptions& options);
Result<std::string> device_arch();
Result<nlohmann::json> select_tactics(const Graph& graph, const std::vector<int64_t>& row_counts);
}  // namespace cuda_plugin

}  // namespace kiln
