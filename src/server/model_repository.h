// A model repository (Triton's layout): DIR/<model>/<version>/model.kiln, versions are positive
// integers. At start every model's highest version is served under the model's name; over the API a
// model can be loaded (a given version, or its highest), reloaded, or unloaded. Loading builds a new
// EngineWorker and swaps it into the ModelRegistry; requests already running keep the old worker
// (shared_ptr) until they end, then it stops.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "common/error.h"
#include "runtime/model.h"
#include "server/engine_worker.h"
#include "server/model_registry.h"

namespace kiln {

class ModelRepository {
 public:
  ModelRepository(std::string root, ModelRegistry& registry, const RuntimeOptions& runtime,
                  const WorkerOptions& worker);

  struct ModelEntry {
    std::string name;
    std::vector<int64_t> versions;  // on disk, ascending
    std::optional<int64_t> loaded;  // the version served under the model's name, if any
    std::vector<int64_t> pinned;    // versions also served as "name@version", ascending
  };
  // What the directory holds now, and what is served. Errors: the directory cannot be read.
  Result<std::vector<ModelEntry>> index() const;

  // Loads every model's highest version (kiln serve --model-repo at start). Errors: an engine that
  // fails to load (the others stay loaded), or a repository without any model.
  Status load_all();
  // Serves `name` at `version` (its highest when none), replacing the version served. `name` may be
  // "model@version": that version is then served under that key beside the model's default one, so a
  // request selects it with "model": "model@version". Errors: no such model or version, a version
  // that disagrees with the key's, or the engine fails to load (the old version keeps serving).
  Status load(const std::string& name, std::optional<int64_t> version);
  // Splits "model@version" (a served key) into its model and version; "model" has no version.
  // Errors: a malformed version.
  static Result<std::pair<std::string, std::optional<int64_t>>> split_key(const std::string& key);
  // Stops serving `name` or "model@version" (requests already running finish). Errors: not loaded.
  Status unload(const std::string& name);

  const std::string& root() const { return root_; }

 private:
  Result<std::vector<int64_t>> versions_of(const std::string& name) const;

  std::string root_;
  ModelRegistry& registry_;
  RuntimeOptions runtime_;
  WorkerOptions worker_;
  mutable std::mutex mutex_;               // one load or unload at a time
  std::map<std::string, int64_t> loaded_;  // served key ("model" or "model@version") -> version
};

}  // namespace kiln
