#include "server/model_registry.h"

#include <chrono>

namespace kiln {

Status ModelRegistry::add(std::shared_ptr<EngineWorker> worker) {
  std::lock_guard<std::mutex> lock(mutex_);
  const std::string name = worker->name();
  if (models_.count(name)) return make_error("a model named '{}' is already served", name);
  const int64_t now =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
          .count();
  models_.emplace(name, Entry{std::move(worker), now});
  return Status::Ok();
}

std::shared_ptr<EngineWorker> ModelRegistry::put(std::shared_ptr<EngineWorker> worker) {
  const int64_t now =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
          .count();
  std::lock_guard<std::mutex> lock(mutex_);
  Entry& entry = models_[worker->name()];
  std::shared_ptr<EngineWorker> previous = std::move(entry.worker);
  entry = Entry{std::move(worker), now};
  return previous;
}

std::shared_ptr<EngineWorker> ModelRegistry::remove(const std::string& name) {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto it = models_.find(name);
  if (it == models_.end()) return nullptr;
  std::shared_ptr<EngineWorker> worker = std::move(it->second.worker);
  models_.erase(it);
  return worker;
}

std::shared_ptr<EngineWorker> ModelRegistry::find(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (name.empty()) return models_.size() == 1 ? models_.begin()->second.worker : nullptr;
  const auto it = models_.find(name);
  return it == models_.end() ? nullptr : it->second.worker;
}

std::vector<ModelRegistry::Entry> ModelRegistry::entries() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<Entry> out;
  for (const auto& [name, entry] : models_) out.push_back(entry);
  return out;
}

int64_t ModelRegistry::active_requests() const {
  int64_t total = 0;
  for (const Entry& e : entries()) total += e.worker->active_requests();
  return total;
}

void ModelRegistry::abort_all(const std::string& reason) {
  for (const Entry& e : entries()) e.worker->abort_all(reason);
}

void ModelRegistry::stop_all() {
  for (const Entry& e : entries()) e.worker->stop();
}

}  // namespace kiln
