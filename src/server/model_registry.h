// The models a server serves, by name. Workers are shared_ptr so a request keeps its model alive
// while it runs, whatever happens to the registry meanwhile: loading and unloading models over the
// API (a model repository, DIR/<model>/<version>/model.kiln) only adds and removes entries here.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/error.h"
#include "server/engine_worker.h"

namespace kiln {

class ModelRegistry {
 public:
  struct Entry {
    std::shared_ptr<EngineWorker> worker;
    int64_t created = 0;  // Unix seconds it was loaded
  };

  // Errors: the name is taken.
  Status add(std::shared_ptr<EngineWorker> worker);
  // Serves `worker` under its name, in place of the worker serving it now, which is returned:
  // requests running on it finish, and it stops when the last one lets it go.
  std::shared_ptr<EngineWorker> put(std::shared_ptr<EngineWorker> worker);
  // Stops serving `name`; returns its worker (nullptr when none), which stops as put()'s does.
  std::shared_ptr<EngineWorker> remove(const std::string& name);
  // The model named `name`; an empty name means the only model when exactly one is served.
  std::shared_ptr<EngineWorker> find(const std::string& name) const;
  std::vector<Entry> entries() const;  // by name

  int64_t active_requests() const;  // over all models
  void abort_all(const std::string& reason);
  void stop_all();  // joins every worker

 private:
  mutable std::mutex mutex_;
  std::map<std::string, Entry> models_;
};

}  // namespace kiln
