#include "format/json_util.h"

#include <set>
#include <vector>

namespace kiln {

using Json = nlohmann::ordered_json;

Result<Json> parse_json_strict(std::string_view text, std::string_view source) {
  // One key set per open object; the parser callback sees keys of the innermost object only.
  std::vector<std::set<std::string>> open_objects;
  std::string duplicate;
  auto on_event = [&](int /*depth*/, Json::parse_event_t event, Json& parsed) {
    switch (event) {
      case Json::parse_event_t::object_start:
        open_objects.emplace_back();
        break;
      case Json::parse_event_t::object_end:
        if (!open_objects.empty()) open_objects.pop_back();
        break;
      case Json::parse_event_t::key:
        if (!open_objects.empty() && !open_objects.back().insert(parsed.get<std::string>()).second &&
            duplicate.empty()) {
          duplicate = parsed.get<std::string>();
        }
        break;
      default:
        break;
    }
    return true;
  };
  Json value;
  try {
    value = Json::parse(text.begin(), text.end(), on_event);
  } catch (const Json::exception& e) {
    // e.what() is one line, e.g. "[json.exception.parse_error.101] parse error at line 1, column 9: ..."
    return make_error("{}: invalid JSON: {}", source, e.what());
  }
  if (!duplicate.empty()) return make_error("{}: duplicate key \"{}\"", source, duplicate);
  return value;
}

std::string json_describe(const Json& value) {
  constexpr size_t kMaxExcerpt = 60;
  std::string text = value.dump(-1, ' ', false, Json::error_handler_t::replace);
  if (text.size() > kMaxExcerpt) text = text.substr(0, kMaxExcerpt) + "...";
  return fmt::format("{} {}", value.type_name(), text);
}

}  // namespace kiln
