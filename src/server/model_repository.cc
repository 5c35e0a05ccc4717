#include "server/model_repository.h"

#include <algorithm>
#include <filesystem>

namespace kiln {

namespace fs = std::filesystem;

namespace {

// "12" -> 12; anything else (leading zeros, signs, letters, 0) is not a version.
std::optional<int64_t> parse_version(const std::string& s) {
  if (s.empty() || s.size() > 18 || s[0] == '0') return std::nullopt;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
  }
  return std::stoll(s);
}

}  // namespace

ModelRepository::ModelRepository(std::string root, ModelRegistry& registry, const RuntimeOptions& runtime,
                                 const WorkerOptions& worker)
    : root_(std::move(root)), registry_(registry), runtime_(runtime), worker_(worker) {}

Result<std::vector<int64_t>> ModelRepository::versions_of(const std::string& name) const {
  std::error_code ec;
  std::vector<int64_t> versions;
  const fs::path dir = fs::path(root_) / name;
  if (name.empty() || name.find('/') != std::string::npos || name == "." || name == ".." ||
      !fs::is_directory(dir, ec)) {
    return make_error("model repository {}: no model '{}'", root_, name);
  }
  for (const fs::directory_entry& e : fs::directory_iterator(dir, ec)) {
    const std::optional<int64_t> v = parse_version(e.path().filename().string());
    if (v && fs::is_regular_file(e.path() / "model.kiln", ec)) versions.push_back(*v);
  }
  if (ec) return make_error("model repository {}: cannot read {}: {}", root_, dir.string(), ec.message());
  std::sort(versions.begin(), versions.end());
  return versions;
}

Result<std::vector<ModelRepository::ModelEntry>> ModelRepository::index() const {
  std::error_code ec;
  std::vector<ModelEntry> entries;
  for (const fs::directory_entry& e : fs::directory_iterator(root_, ec)) {
    if (!e.is_directory(ec)) continue;
    ModelEntry entry;
    entry.name = e.path().filename().string();
    KILN_ASSIGN(entry.versions, versions_of(entry.name));
    if (entry.versions.empty()) continue;
    entries.push_back(std::move(entry));
  }
  if (ec) return make_error("model repository {}: cannot read: {}", root_, ec.message());
  std::lock_guard<std::mutex> lock(mutex_);
  for (ModelEntry& entry : entries) {
    if (const auto it = loaded_.find(entry.name); it != loaded_.end()) entry.loaded = it->second;
  }
  std::sort(entries.begin(), entries.end(),
            [](const ModelEntry& a, const ModelEntry& b) { return a.name < b.name; });
  return entries;
}

Status ModelRepository::load_all() {
  KILN_ASSIGN(std::vector<ModelEntry> entries, index());
  if (entries.empty()) return make_error("model repository {}: no <model>/<version>/model.kiln found", root_);
  for (const ModelEntry& entry : entries) KILN_TRY(load(entry.name, std::nullopt));
  return Status::Ok();
}

Status ModelRepository::load(const std::string& name, std::optional<int64_t> version) {
  std::lock_guard<std::mutex> lock(mutex_);
  KILN_ASSIGN(std::vector<int64_t> versions, versions_of(name));
  if (versions.empty()) return make_error("model repository {}: model '{}' has no version", root_, name);
  const int64_t v = version.value_or(versions.back());
  if (std::find(versions.begin(), versions.end(), v) == versions.end())
    return make_error("model repository {}: model '{}' has no version {}", root_, name, v);
  const std::string path = (fs::path(root_) / name / std::to_string(v) / "model.kiln").string();
  KILN_ASSIGN(std::shared_ptr<EngineWorker> worker, EngineWorker::load(name, path, runtime_, worker_));
  registry_.put(std::move(worker));  // the previous version stops once its last request ends
  loaded_[name] = v;
  return Status::Ok();
}

Status ModelRepository::unload(const std::string& name) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!registry_.remove(name)) return make_error("model '{}' is not loaded", name);
  loaded_.erase(name);
  return Status::Ok();
}

}  // namespace kiln
