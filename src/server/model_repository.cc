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

Result<std::pair<std::string, std::optional<int64_t>>> ModelRepository::split_key(const std::string& key) {
  const size_t at = key.rfind('@');
  if (at == std::string::npos) return std::make_pair(key, std::optional<int64_t>());
  const std::optional<int64_t> v = parse_version(key.substr(at + 1));
  if (!v) return make_error("'{}': the version after '@' must be a positive integer", key);
  return std::make_pair(key.substr(0, at), v);
}

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
    for (int64_t v : entry.versions) {
      if (loaded_.count(entry.name + "@" + std::to_string(v))) entry.pinned.push_back(v);
    }
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

Status ModelRepository::load(const std::string& key, std::optional<int64_t> version) {
  KILN_ASSIGN(auto split, split_key(key));
  const std::string& name = split.first;
  if (split.second) {
    if (version && *version != *split.second)
      return make_error("'{}' names version {}, the request version {}", key, *split.second, *version);
    version = split.second;
  }
  std::lock_guard<std::mutex> lock(mutex_);
  KILN_ASSIGN(std::vector<int64_t> versions, versions_of(name));
  if (versions.empty()) return make_error("model repository {}: model '{}' has no version", root_, name);
  const int64_t v = version.value_or(versions.back());
  if (std::find(versions.begin(), versions.end(), v) == versions.end())
    return make_error("model repository {}: model '{}' has no version {}", root_, name, v);
  const std::string path = (fs::path(root_) / name / std::to_string(v) / "model.kiln").string();
  KILN_ASSIGN(std::shared_ptr<EngineWorker> worker, EngineWorker::load(key, path, runtime_, worker_));
  registry_.put(std::move(worker));  // the previous version stops once its last request ends
  loaded_[key] = v;
  return Status::Ok();
}

Status ModelRepository::unload(const std::string& name) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!registry_.remove(name)) return make_error("model '{}' is not loaded", name);
  loaded_.erase(name);
  return Status::Ok();
}

}  // namespace kiln
