// Loads the CUDA backend plugin (see backend/cuda_plugin.h) on first use.
#include <dlfcn.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda_plugin.h"

namespace kiln {

#ifdef KILN_WITH_CUDA
namespace {

// Finds and loads libkiln_cuda.so once: $KILN_CUDA_PLUGIN, beside the executable, then where this
// build put it.
Result<const CudaPluginApi*> load_cuda_plugin() {
  static Result<const CudaPluginApi*> loaded = []() -> Result<const CudaPluginApi*> {
    std::vector<std::string> candidates;
    if (const char* env = std::getenv("KILN_CUDA_PLUGIN"); env && *env) candidates.emplace_back(env);
    std::error_code ec;
    const auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
    if (!ec) candidates.push_back((exe.parent_path() / "libkiln_cuda.so").string());
    candidates.emplace_back(KILN_CUDA_PLUGIN_PATH);
    std::string errors;
    for (size_t i = 0; i < candidates.size(); ++i) {
      const std::string& path = candidates[i];
      if (std::find(candidates.begin(), candidates.begin() + static_cast<long>(i), path) != candidates.begin() + static_cast<long>(i)) continue;
      if (!std::filesystem::exists(path, ec)) continue;
      void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (!handle) {
        errors += fmt::format(" {}: {};", path, dlerror());
        continue;
      }
      using Entry = const CudaPluginApi* (*)();
      auto entry = reinterpret_cast<Entry>(dlsym(handle, "kiln_cuda_plugin_api"));
      if (!entry) return make_error("{}: not a kiln CUDA plugin (no kiln_cuda_plugin_api)", path);
      const CudaPluginApi* api = entry();
      if (api->abi_version != kCudaPluginAbiVersion) {
        return make_error("{}: CUDA plugin ABI {} but this kiln needs {}: rebuild", path, api->abi_version, kCudaPluginAbiVersion);
      }
      return api;
    }
    return make_error("cannot load the CUDA backend plugin libkiln_cuda.so (searched $KILN_CUDA_PLUGIN, beside the kiln "
                      "binary, {}){}",
                      KILN_CUDA_PLUGIN_PATH, errors);
  }();
  return loaded;
}

}  // namespace

Result<std::unique_ptr<Backend>> create_cuda_backend(const LoadedEngine& engine, const BackendOptions& options) {
  KILN_ASSIGN(const CudaPluginApi* api, load_cuda_plugin());
  return api->create_backend(engine, options);
}

Result<std::string> cuda_device_arch() {
  KILN_ASSIGN(const CudaPluginApi* api, load_cuda_plugin());
  return api->device_arch();
}

Result<nlohmann::json> cuda_select_tactics(const Graph& graph, const std::vector<int64_t>& row_counts) {
  KILN_ASSIGN(const CudaPluginApi* api, load_cuda_plugin());
  return api->select_tactics(graph, row_counts);
}
#else
Result<nlohmann::json> cuda_select_tactics(const Graph&, const std::vector<int64_t>&) {
  return make_error("this kiln was built without the CUDA backend");
}
Result<std::unique_ptr<Backend>> create_cuda_backend(const LoadedEngine&, const BackendOptions&) {
  return make_error("this kiln was built without the CUDA backend (configure with nvcc available, KILN_CUDA=ON)");
}
Result<std::string> cuda_device_arch() { return make_error("this kiln was built without the CUDA backend"); }
#endif

}  // namespace kiln
