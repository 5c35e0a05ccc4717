// StopStringFilter (shared by generate() and the server) against a direct reference: the final text
// is the text cut before the first stop string to complete, however the text arrives in pieces, and
// what is released while streaming is always a prefix of that final text.
#include <gtest/gtest.h>

#include <random>

#include "runtime/stop_strings.h"

namespace kiln {
namespace {

// The reference, byte by byte: the first byte at which some stop string ends; the text is cut
// before the longest stop string ending there.
std::string cut_reference(const std::string& text, const std::vector<std::string>& stops, bool& stopped) {
  for (size_t end = 1; end <= text.size(); ++end) {
    size_t cut = std::string::npos;
    for (const std::string& s : stops) {
      if (s.size() <= end && text.compare(end - s.size(), s.size(), s) == 0)
        cut = std::min(cut, end - s.size());
    }
    if (cut != std::string::npos) {
      stopped = true;
      return text.substr(0, cut);
    }
  }
  stopped = false;
  return text;
}

TEST(StopStrings, ExamplesAcrossPieces) {
  StopStringFilter f({"World", "ld!"});
  EXPECT_FALSE(f.append("Hello Wo"));
  EXPECT_EQ(f.releasable(), "Hello ") << "'Wo' could start 'World'";
  EXPECT_FALSE(f.append("r"));
  EXPECT_TRUE(f.append("ld!"));
  EXPECT_EQ(f.text(), "Hello ") << "'World' completes before 'ld!'";
  StopStringFilter g({"bcd", "abcde", "cd"});
  EXPECT_TRUE(g.append("xabcdef"));
  EXPECT_EQ(g.text(), "xa") << "'bcd' and 'cd' complete first, at the same byte: the longer one cuts";

  StopStringFilter none(std::vector<std::string>{});
  EXPECT_FALSE(none.append("abc"));
  EXPECT_EQ(none.releasable(), "abc");
  EXPECT_FALSE(none.has_stops());
}

TEST(StopStrings, RandomPiecesMatchTheReference) {
  std::mt19937 rng(3);
  const std::string alphabet = "ab c";
  for (int trial = 0; trial < 2000; ++trial) {
    std::string text;
    const int length = static_cast<int>(rng() % 40);
    for (int i = 0; i < length; ++i) text += alphabet[rng() % alphabet.size()];
    std::vector<std::string> stops;
    const int num_stops = 1 + static_cast<int>(rng() % 3);
    for (int s = 0; s < num_stops; ++s) {
      std::string stop;
      const int stop_length = 1 + static_cast<int>(rng() % 4);
      for (int i = 0; i < stop_length; ++i) stop += alphabet[rng() % alphabet.size()];
      stops.push_back(stop);
    }
    bool expected_stop = false;
    const std::string expected = cut_reference(text, stops, expected_stop);

    StopStringFilter filter(stops);
    bool stopped = false;
    for (size_t at = 0; at < text.size() && !stopped;) {
      const size_t piece = std::min<size_t>(text.size() - at, rng() % 5);
      stopped = filter.append(std::string_view(text).substr(at, piece));
      at += piece;
      if (!stopped) {
        const std::string_view released = filter.releasable();
        ASSERT_EQ(expected.compare(0, released.size(), released), 0)
            << "released '" << released << "' is not a prefix of '" << expected << "'";
      }
    }
    EXPECT_EQ(stopped, expected_stop) << text;
    EXPECT_EQ(filter.text(), expected) << text;
  }
}

}  // namespace
}  // namespace kiln
