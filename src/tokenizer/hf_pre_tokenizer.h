// The text stages of an HF tokenizer.json before the model: `normalizer` and `pre_tokenizer`
// (huggingface/tokenizers src/normalizers, src/pre_tokenizers). Both are flattened into a list of
// steps; unknown types are an error naming the type.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "tokenizer/regex_pattern.h"

namespace kiln {

// A piece of text on its way to the model. `at_start`: it begins at offset 0 of the input text
// (Metaspace's prepend_scheme "first" prepends "▁" only there).
struct TextPiece {
  std::string text;
  bool at_start = false;
};

// HF SplitDelimiterBehavior.
enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// Splits `piece` at the matches of `pattern` (or, with `invert`, at what lies between them), as HF's
// NormalizedString::split does; empty pieces are dropped.
void split_piece(const TextPiece& piece, const Pattern& pattern, SplitBehavior behavior, bool invert,
                 std::vector<TextPiece>& out);

class HfNormalizer {
 public:
  static Result<HfNormalizer> from_json(const nlohmann::json& config);  // null: no normalizer
  void apply(std::string& text) const;

 private:
  struct Step {
    enum Kind { kPrepend, kReplace } kind;
    std::string content;
    Pattern pattern;
  };
  Status add(const nlohmann::json& config);
  std::vector<Step> steps_;
};

class HfPreTokenizer {
 public:
  static Result<HfPreTokenizer> from_json(const nlohmann::json& config);  // null: the whole text
  void apply(std::vector<TextPiece>& pieces) const;
  bool is_byte_level() const;

 private:
  struct Step {
    enum Kind { kSplit, kByteLevel, kMetaspace } kind;
    Pattern pattern;
    SplitBehavior behavior = SplitBehavior::kIsolated;
    bool invert = false;
    bool add_prefix_space = false;  // ByteLevel
    bool use_regex = false;         // ByteLevel: split with the GPT-2 pattern first
    std::string replacement;        // Metaspace
    enum Prepend { kAlways, kFirst, kNever } prepend = kAlways;
    bool split = false;             // Metaspace: split before each replacement character
  };
  Status add(const nlohmann::json& config);
  std::vector<Step> steps_;
};

}  // namespace kiln
