#include "tokenizer/hf_pre_tokenizer.h"

#include "tokenizer/utf8.h"

namespace kiln {
namespace {

using nlohmann::json;

// openai/gpt-2 encoder.py; HF's ByteLevel pre-tokenizer applies it when use_regex is true.
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

std::string get_string(const json& config, const char* key, const std::string& fallback = "") {
  const auto it = config.find(key);
  return it != config.end() && it->is_string() ? it->get<std::string>() : fallback;
}
bool get_bool(const json& config, const char* key, bool fallback) {
  const auto it = config.find(key);
  return it != config.end() && it->is_boolean() ? it->get<bool>() : fallback;
}

Result<Pattern> parse_pattern(const json& config, const std::string& where) {
  const auto it = config.find("pattern");
  if (it != config.end() && it->is_object()) {
    if (it->contains("String") && (*it)["String"].is_string()) return Pattern::literal((*it)["String"]);
    if (it->contains("Regex") && (*it)["Regex"].is_string()) return Pattern::regex((*it)["Regex"]);
  }
  return make_error("{}: 'pattern' must be {{\"String\": ...}} or {{\"Regex\": ...}}", where);
}

Result<SplitBehavior> parse_behavior(const std::string& name) {
  if (name == "Removed") return SplitBehavior::kRemoved;
  if (name == "Isolated") return SplitBehavior::kIsolated;
  if (name == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (name == "Contiguous") return SplitBehavior::kContiguous;
  return make_error("pre_tokenizer Split: unknown behavior '{}'", name);
}

}  // namespace

void split_piece(const TextPiece& piece, const Pattern& pattern, SplitBehavior behavior, bool invert,
                 std::vector<TextPiece>& out) {
  // HF Pattern::find_matches: the text as consecutive (range, is_match) spans.
  struct Span {
    size_t begin, end;
    bool is_match;
  };
  std::vector<Span> spans;
  const std::string& text = piece.text;
  size_t previous = 0;
  for (const auto& [begin, end] : pattern.find_all(text)) {
    if (begin != previous) spans.push_back({previous, begin, invert});
    spans.push_back({begin, end, !invert});
    previous = end;
  }
  if (previous != text.size()) spans.push_back({previous, text.size(), invert});

  std::vector<Span> kept;  // HF NormalizedString::split, behaviour by behaviour
  bool previous_match = false;
  switch (behavior) {
    case SplitBehavior::kRemoved:
      for (const Span& s : spans) if (!s.is_match) kept.push_back(s);
      break;
    case SplitBehavior::kIsolated:
      kept = spans;
      break;
    case SplitBehavior::kMergedWithPrevious:
      for (const Span& s : spans) {
        if (s.is_match && !previous_match && !kept.empty()) kept.back().end = s.end;
        else kept.push_back(s);
        previous_match = s.is_match;
      }
      break;
    case SplitBehavior::kMergedWithNext:
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->is_match && !previous_match && !kept.empty()) kept.back().begin = it->begin;
        else kept.push_back(*it);
        previous_match = it->is_match;
      }
      std::reverse(kept.begin(), kept.end());
      break;
    case SplitBehavior::kContiguous:
      for (const Span& s : spans) {
        if (s.is_match == previous_match && !kept.empty()) kept.back().end = s.end;
        else kept.push_back(s);
        previous_match = s.is_match;
      }
      break;
  }
  for (const Span& s : kept) {
    if (s.end > s.begin) out.push_back({text.substr(s.begin, s.end - s.begin), piece.at_start && s.begin == 0});
  }
}

Result<HfNormalizer> HfNormalizer::from_json(const json& config) {
  HfNormalizer normalizer;
  if (!config.is_null()) KILN_TRY(normalizer.add(config));
  return normalizer;
}

Status HfNormalizer::add(const json& config) {
  const std::string type = config.is_object() ? get_string(config, "type") : "";
  if (type == "Sequence" && config.contains("normalizers") && config["normalizers"].is_array()) {
    for (const json& child : config["normalizers"]) KILN_TRY(add(child));
  } else if (type == "Prepend") {
    steps_.push_back({Step::kPrepend, get_string(config, "prepend"), {}});
  } else if (type == "Replace") {
    KILN_ASSIGN(Pattern pattern, parse_pattern(config, "normalizer Replace"));
    steps_.push_back({Step::kReplace, get_string(config, "content"), std::move(pattern)});
  } else if (type == "NFC") {
    // Applied as the identity: exact for NFC input (most text). Full NFC needs the Unicode
    // composition tables, not carried yet; see src/tokenizer/README.md.
  } else {
    return make_error("tokenizer.json: normalizer type '{}' is not supported (supported: Sequence, "
                      "Prepend, Replace, NFC)", type);
  }
  return {};
}

void HfNormalizer::apply(std::string& text) const {
  for (const Step& step : steps_) {
    if (step.kind == Step::kPrepend) {
      if (!text.empty()) text.insert(0, step.content);  // HF Prepend skips empty text
      continue;
    }
    std::string out;
    size_t previous = 0;
    for (const auto& [begin, end] : step.pattern.find_all(text)) {
      if (end == begin) continue;
      out.append(text, previous, begin - previous).append(step.content);
      previous = end;
    }
    out.append(text, previous, std::string::npos);
    text = std::move(out);
  }
}

Result<HfPreTokenizer> HfPreTokenizer::from_json(const json& config) {
  HfPreTokenizer pre_tokenizer;
  if (!config.is_null()) KILN_TRY(pre_tokenizer.add(config));
  return pre_tokenizer;
}

Status HfPreTokenizer::add(const json& config) {
  const std::string type = config.is_object() ? get_string(config, "type") : "";
  Step step{};
  if (type == "Sequence" && config.contains("pretokenizers") && config["pretokenizers"].is_array()) {
    for (const json& child : config["pretokenizers"]) KILN_TRY(add(child));
    return {};
  } else if (type == "Split") {
    step.kind = Step::kSplit;
    KILN_ASSIGN(step.pattern, parse_pattern(config, "pre_tokenizer Split"));
    KILN_ASSIGN(step.behavior, parse_behavior(get_string(config, "behavior", "Isolated")));
    step.invert = get_bool(config, "invert", false);
  } else if (type == "ByteLevel") {
    step.kind = Step::kByteLevel;
    step.add_prefix_space = get_bool(config, "add_prefix_space", true);
    step.use_regex = get_bool(config, "use_regex", true);
    if (step.use_regex) {
      KILN_ASSIGN(step.pattern, Pattern::regex(kGpt2Pattern));
    }
  } else if (type == "Metaspace") {
    step.kind = Step::kMetaspace;
    step.replacement = get_string(config, "replacement", "\xE2\x96\x81");
    if (step.replacement.empty() || utf8::char_length(step.replacement, 0) != step.replacement.size()) {
      return make_error("pre_tokenizer Metaspace: replacement '{}' must be one character", step.replacement);
    }
    const std::string scheme = get_string(config, "prepend_scheme",
                                          get_bool(config, "add_prefix_space", true) ? "always" : "never");
    if (scheme == "always") step.prepend = Step::kAlways;
    else if (scheme == "first") step.prepend = Step::kFirst;
    else if (scheme == "never") step.prepend = Step::kNever;
    else return make_error("pre_tokenizer Metaspace: unknown prepend_scheme '{}'", scheme);
    step.split = get_bool(config, "split", true);
    KILN_ASSIGN(step.pattern, Pattern::literal(step.replacement));
  } else if (type == "Digits") {
    step.kind = Step::kSplit;
    // HF Digits: each digit alone, or runs of digits (char::is_numeric ~ \p{N}).
    KILN_ASSIGN(step.pattern, Pattern::regex(get_bool(config, "individual_digits", false) ? "\\p{N}" : "\\p{N}+"));
  } else {
    return make_error("tokenizer.json: pre_tokenizer type '{}' is not supported (supported: Sequence, "
                      "Split, ByteLevel, Metaspace, Digits)", type);
  }
  steps_.push_back(std::move(step));
  return {};
}

bool HfPreTokenizer::is_byte_level() const {
  for (const Step& step : steps_) if (step.kind == Step::kByteLevel) return true;
  return false;
}

void HfPreTokenizer::apply(std::vector<TextPiece>& pieces) const {
  const auto& byte_map = utf8::byte_to_unicode();
  std::vector<TextPiece> next;
  for (const Step& step : steps_) {
    next.clear();
    for (TextPiece& piece : pieces) {
      switch (step.kind) {
        case Step::kSplit:
          split_piece(piece, step.pattern, step.behavior, step.invert, next);
          break;
        case Step::kByteLevel: {
          if (step.add_prefix_space && !piece.text.starts_with(' ')) piece.text.insert(0, " ");
          const size_t first = next.size();
          if (step.use_regex) split_piece(piece, step.pattern, SplitBehavior::kIsolated, false, next);
          else if (!piece.text.empty()) next.push_back(std::move(piece));
          for (size_t i = first; i < next.size(); ++i) {
            std::string mapped;
            mapped.reserve(next[i].text.size() * 2);
            for (char c : next[i].text) mapped += byte_map[static_cast<uint8_t>(c)];
            next[i].text = std::move(mapped);
          }
          break;
        }
        case Step::kMetaspace: {
          std::string text;
          text.reserve(piece.text.size() * 2);
          for (char c : piece.text) {
            if (c == ' ') text += step.replacement;
            else text.push_back(c);
          }
          const bool prepend = step.prepend == Step::kAlways || (step.prepend == Step::kFirst && piece.at_start);
          if (prepend && !text.starts_with(step.replacement)) text.insert(0, step.replacement);
          TextPiece replaced{std::move(text), piece.at_start};
          if (step.split) split_piece(replaced, step.pattern, SplitBehavior::kMergedWithNext, false, next);
          else if (!replaced.text.empty()) next.push_back(std::move(replaced));
          break;
        }
      }
    }
    pieces.swap(next);
  }
}

}  // namespace kiln
