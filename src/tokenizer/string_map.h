// A string -> id hash map that can be queried with a std::string_view (no temporary strings).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>

namespace kiln {

struct StringViewHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

using StringIdMap = std::unordered_map<std::string, int32_t, StringViewHash, std::equal_to<>>;

inline int32_t find_id(const StringIdMap& map, std::string_view key) {
  const auto it = map.find(key);
  return it == map.end() ? -1 : it->second;
}

}  // namespace kiln
