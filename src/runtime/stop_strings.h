// Stop strings over streamed text, shared by generate() and the server: text is appended piece by
// piece; once a stop string appears the text is cut right before it (the first to complete wins), and until
// then the caller may release only the text that can no longer turn into a stop string (a tail that is a
// prefix of one is held back), so streamed text never shows part of a stop string.
#pragma once

#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

namespace kiln {

class StopStringFilter {
 public:
  StopStringFilter() = default;
  explicit StopStringFilter(std::vector<std::string> stops) : stops_(std::move(stops)) {
    for (const std::string& s : stops_) max_stop_len_ = std::max(max_stop_len_, s.size());
  }

  // Appends text; returns true when a stop string was found (the text is then cut before it).
  bool append(std::string_view piece) {
    // A stop string completed by this piece starts at most max_stop_len_ bytes before its start.
    const size_t search_from = text_.size() > max_stop_len_ ? text_.size() - max_stop_len_ : 0;
    text_ += piece;
    // The stop string that completes first wins (the longest among those completing at the same
    // byte), as if the text had arrived byte by byte: the result does not depend on the pieces.
    size_t cut = std::string::npos, end = std::string::npos;
    for (const std::string& stop : stops_) {
      if (stop.empty()) continue;
      const size_t at = text_.find(stop, search_from);
      if (at == std::string::npos) continue;
      if (at + stop.size() < end || (at + stop.size() == end && at < cut)) {
        cut = at;
        end = at + stop.size();
      }
    }
    if (cut == std::string::npos) return false;
    text_.resize(cut);
    return true;
  }

  // Text that can be shown now: all but a tail that is a proper prefix of some stop string.
  std::string_view releasable() const {
    size_t hold = 0;
    for (const std::string& stop : stops_) {
      for (size_t k = std::min(stop.size() - (stop.empty() ? 0 : 1), text_.size()); k > hold; --k) {
        if (text_.compare(text_.size() - k, k, stop, 0, k) == 0) {
          hold = k;
          break;
        }
      }
    }
    return std::string_view(text_).substr(0, text_.size() - hold);
  }

  const std::string& text() const { return text_; }
  bool has_stops() const { return !stops_.empty(); }

 private:
  std::vector<std::string> stops_;
  size_t max_stop_len_ = 1;
  std::string text_;
};

}  // namespace kiln
