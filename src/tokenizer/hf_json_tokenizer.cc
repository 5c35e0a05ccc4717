// HF tokenizers' tokenizer.json with a BPE model (huggingface/tokenizers: tokenizer/mod.rs encode,
// tokenizer/added_vocabulary.rs, models/bpe/model.rs, decoders/). Encoding:
//   1. added tokens are found in the raw text first (leftmost-longest, honouring single_word, lstrip,
//      rstrip) and emitted as is;
//   2. every other segment goes through the normalizer and the pre-tokenizer (hf_pre_tokenizer.h);
//   3. each piece is split into characters (byte_fallback: unknown characters become <0xXX>) and
//      merged by merge rank (bpe.h).
// Decoding maps each token through the decoder chain on its own, so a streaming decoder can use it.
#include <algorithm>

#include <nlohmann/json.hpp>

#include "tokenizer/bpe.h"
#include "tokenizer/hf_pre_tokenizer.h"
#include "tokenizer/string_map.h"
#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/utf8.h"

namespace kiln {
namespace {

using nlohmann::json;

struct AddedToken {
  std::string content;
  int32_t id;
  bool special, single_word, lstrip, rstrip;
};

struct Decoder {
  std::vector<std::pair<std::string, std::string>> replacements;  // Replace: pattern -> content
  bool byte_fallback = false;     // "<0xXX>" -> that byte
  bool byte_level = false;        // GPT-2 byte map inverse
  std::string metaspace;          // Metaspace decoder: replacement -> ' '
  bool metaspace_strip_first = false;
  size_t strip_first = 0;         // Strip after Fuse: leading spaces removed from the text
  size_t strip_each = 0;          // Strip without Fuse: leading spaces removed from each token
  bool join_with_space = false;   // no decoder: HF joins tokens with ' '
};

// config[key], or null when absent (json::value() would copy, and the vocab is megabytes).
const json& member(const json& config, const char* key) {
  static const json null;
  const auto it = config.find(key);
  return it == config.end() ? null : *it;
}

int parse_byte_token(std::string_view token) {
  if (token.size() != 6 || !token.starts_with("<0x") || token[5] != '>') return -1;
  int value = 0;
  for (char c : token.substr(3, 2)) {
    value <<= 4;
    if (c >= '0' && c <= '9') value |= c - '0';
    else if (c >= 'A' && c <= 'F') value |= c - 'A' + 10;
    else if (c >= 'a' && c <= 'f') value |= c - 'a' + 10;
    else return -1;
  }
  return value;
}

std::string replace_all(std::string text, const std::string& from, const std::string& to) {
  if (from.empty()) return text;
  for (size_t pos = text.find(from); pos != std::string::npos; pos = text.find(from, pos + to.size())) {
    text.replace(pos, from.size(), to);
  }
  return text;
}

class HfJsonTokenizer final : public TokenizerImpl {
 public:
  StringIdMap vocab;
  std::vector<std::string> id_to_token;
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges;  // (left, right) -> (rank, id)
  std::vector<AddedToken> added;
  std::vector<std::vector<int32_t>> added_by_first_byte = std::vector<std::vector<int32_t>>(256);
  std::vector<bool> special;
  HfNormalizer normalizer;
  HfPreTokenizer pre_tokenizer;
  Decoder decoder;
  int32_t byte_ids[256];
  int32_t unk = -1;
  bool byte_fallback = false, fuse_unk = false, ignore_merges = false;
  int32_t bos = -1, eos = -1;

  static uint64_t pair_key(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
  }

  // HF BPE::tokenize_with_cache / merge_word for one pre-tokenized piece.
  void encode_piece(std::string_view word, std::vector<int32_t>& ids) const {
    if (ignore_merges) {
      if (int32_t id = find_id(vocab, word); id >= 0) return ids.push_back(id);
    }
    std::vector<BpeSymbol> symbols;
    symbols.reserve(word.size());
    for (size_t pos = 0; pos < word.size();) {
      const size_t length = utf8::char_length(word, pos);
      const auto start = static_cast<uint32_t>(pos);
      if (int32_t id = find_id(vocab, word.substr(pos, length)); id >= 0) {
        symbols.push_back({id, start, static_cast<uint32_t>(length)});
      } else if (byte_fallback && std::all_of(word.begin() + pos, word.begin() + pos + length,
                                                [&](char c) { return byte_ids[static_cast<uint8_t>(c)] >= 0; })) {
        for (size_t i = 0; i < length; ++i) {
          symbols.push_back({byte_ids[static_cast<uint8_t>(word[pos + i])], static_cast<uint32_t>(pos + i), 1});
        }
      } else if (unk >= 0) {
        if (fuse_unk && !symbols.empty() && symbols.back().id == unk) symbols.back().length += length;
        else symbols.push_back({unk, start, static_cast<uint32_t>(length)});
      }
      pos += length;
    }
    bpe_merge(symbols, [&](const BpeSymbol& left, const BpeSymbol& right) -> std::optional<BpeMerge> {
      const auto it = merges.find(pair_key(left.id, right.id));
      if (it == merges.end()) return std::nullopt;
      return BpeMerge{static_cast<double>(it->second.first), it->second.second};
    });
    for (const BpeSymbol& s : symbols) ids.push_back(s.id);
  }

  void encode_segment(std::string_view text, bool at_start, std::vector<int32_t>& ids) const {
    std::vector<TextPiece> pieces{{std::string(text), at_start}};
    normalizer.apply(pieces[0].text);
    if (pieces[0].text.empty()) return;
    pre_tokenizer.apply(pieces);
    for (const TextPiece& piece : pieces) encode_piece(piece.text, ids);
  }

  // The longest added token at text[pos] (single_word ones only between non-word characters).
  const AddedToken* match_added(std::string_view text, size_t pos) const {
    for (int32_t index : added_by_first_byte[static_cast<uint8_t>(text[pos])]) {
      const AddedToken& token = added[index];
      if (text.substr(pos).starts_with(token.content)) return &token;
    }
    return nullptr;
  }

  static bool is_word_byte(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || (c & 0x80); }

  void encode(std::string_view raw, std::vector<int32_t>& ids) const override {
    const std::string valid = utf8::sanitize(raw);
    const std::string_view text = valid;
    size_t segment_start = 0;  // text not yet emitted
    for (size_t pos = 0; pos < text.size();) {
      const AddedToken* token = added.empty() ? nullptr : match_added(text, pos);
      if (token == nullptr) {
        ++pos;
        continue;
      }
      size_t begin = pos, end = pos + token->content.size();
      if (token->single_word && ((begin > 0 && is_word_byte(text[begin - 1])) ||
                                 (end < text.size() && is_word_byte(text[end])))) {
        pos = end;  // HF discards the match and searches on after it
        continue;
      }
      // lstrip / rstrip: the token swallows the Unicode whitespace beside it.
      while (token->lstrip && begin > segment_start) {
        size_t prev = begin - 1;
        while (prev > segment_start && (static_cast<uint8_t>(text[prev]) & 0xC0) == 0x80) --prev;
        if (!utf8::is_whitespace(utf8::decode(text, prev))) break;
        begin = prev;
      }
      while (token->rstrip && end < text.size() && utf8::is_whitespace(utf8::decode(text, end))) {
        end += utf8::char_length(text, end);
      }
      if (begin > segment_start) encode_segment(text.substr(segment_start, begin - segment_start), segment_start == 0, ids);
      ids.push_back(token->id);
      segment_start = pos = end;
    }
    if (segment_start < text.size()) encode_segment(text.substr(segment_start), segment_start == 0, ids);
  }

  int32_t vocab_size() const override { return static_cast<int32_t>(id_to_token.size()); }
  int32_t bos_id() const override { return bos; }
  int32_t eos_id() const override { return eos; }
  bool is_special(int32_t id) const override { return special[id]; }
  std::string piece(int32_t id) const override { return id_to_token[id]; }

  std::string token_bytes(int32_t id, int32_t previous) const override {
    const bool first = previous < 0;
    std::string token = id_to_token[id];
    for (const auto& [from, to] : decoder.replacements) token = replace_all(std::move(token), from, to);
    if (!decoder.metaspace.empty()) {
      token = replace_all(std::move(token), decoder.metaspace, first && decoder.metaspace_strip_first ? "" : " ");
    }
    if (decoder.byte_fallback) {
      if (int byte = parse_byte_token(token); byte >= 0) token = std::string(1, static_cast<char>(byte));
    }
    if (decoder.byte_level) {
      std::string bytes;
      bool all_mapped = true;
      for (size_t pos = 0; pos < token.size() && all_mapped; pos += utf8::char_length(token, pos)) {
        const int byte = utf8::byte_from_unicode(utf8::decode(token, pos));
        all_mapped = byte >= 0;
        bytes.push_back(static_cast<char>(byte));
      }
      if (all_mapped) token = std::move(bytes);  // else HF keeps the token's own bytes
    }
    const size_t strip = decoder.strip_each + (first ? decoder.strip_first : 0);
    size_t cut = 0;
    while (cut < strip && cut < token.size() && token[cut] == ' ') ++cut;
    token.erase(0, cut);
    if (decoder.join_with_space && !first) token.insert(0, " ");
    return token;
  }
};

Status parse_decoder(const json& config, Decoder& decoder, bool& fused) {
  if (config.is_null()) {
    decoder.join_with_space = true;
    return {};
  }
  const std::string type = config.is_object() && config.contains("type") && config["type"].is_string()
                               ? config["type"].get<std::string>() : "";
  if (type == "Sequence" && config.contains("decoders") && config["decoders"].is_array()) {
    for (const json& child : config["decoders"]) KILN_TRY(parse_decoder(child, decoder, fused));
  } else if (type == "Replace") {
    const json& pattern = config.value("pattern", json());
    if (!pattern.is_object() || !pattern.contains("String") || !pattern["String"].is_string() ||
        !config.contains("content") || !config["content"].is_string()) {
      return make_error("tokenizer.json: decoder Replace needs a String pattern and a content string");
    }
    decoder.replacements.emplace_back(pattern["String"].get<std::string>(), config["content"].get<std::string>());
  } else if (type == "ByteFallback") {
    decoder.byte_fallback = true;
  } else if (type == "Fuse") {
    fused = true;
  } else if (type == "ByteLevel") {
    decoder.byte_level = true;
  } else if (type == "Metaspace") {
    decoder.metaspace = config.value("replacement", std::string("\xE2\x96\x81"));
    const std::string scheme = config.value("prepend_scheme", config.value("add_prefix_space", true) ? "always" : "never");
    decoder.metaspace_strip_first = scheme != "never";
  } else if (type == "Strip") {
    const std::string content = config.value("content", std::string(" "));
    const size_t start = config.value("start", size_t{0}), stop = config.value("stop", size_t{0});
    if (content != " " || stop != 0 || start > 16) {
      return make_error("tokenizer.json: decoder Strip(content '{}', start {}, stop {}) is not supported "
                        "(expected content ' ', stop 0)", content, start, stop);
    }
    (fused ? decoder.strip_first : decoder.strip_each) += start;
  } else {
    return make_error("tokenizer.json: decoder type '{}' is not supported (supported: Sequence, Replace, "
                      "ByteFallback, Fuse, Strip, ByteLevel, Metaspace)", type);
  }
  return {};
}

Status parse_model(const json& model, HfJsonTokenizer& t) {
  const std::string type = model.is_object() && model.contains("type") && model["type"].is_string()
                               ? model["type"].get<std::string>() : "BPE";
  if (type != "BPE") {
    return make_error("tokenizer.json: model type '{}' is not supported (only BPE)", type);
  }
  if (!model.is_object() || !model.contains("vocab") || !model["vocab"].is_object()) {
    return make_error("tokenizer.json: model.vocab must be an object of token -> id");
  }
  if (!model.value("continuing_subword_prefix", json()).is_null() &&
      !model["continuing_subword_prefix"].get<std::string>().empty()) {
    return make_error("tokenizer.json: BPE continuing_subword_prefix is not supported");
  }
  if (!model.value("end_of_word_suffix", json()).is_null() && !model["end_of_word_suffix"].get<std::string>().empty()) {
    return make_error("tokenizer.json: BPE end_of_word_suffix is not supported");
  }
  if (model.value("dropout", json()).is_number() && model["dropout"].get<double>() > 0.0) {
    return make_error("tokenizer.json: BPE dropout {} is not supported (encoding must be deterministic)",
                      model["dropout"].get<double>());
  }
  for (const auto& [token, id] : model["vocab"].items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= (1 << 24)) {
      return make_error("tokenizer.json: vocab entry '{}' has id {} (expected 0..16777215)", token, id.dump());
    }
    t.vocab[token] = id.get<int32_t>();
  }
  t.byte_fallback = model.value("byte_fallback", false);
  t.fuse_unk = model.value("fuse_unk", false);
  t.ignore_merges = model.value("ignore_merges", false);
  if (model.contains("unk_token") && model["unk_token"].is_string()) {
    t.unk = find_id(t.vocab, model["unk_token"].get<std::string>());
  }
  const json& merges = member(model, "merges");
  if (!merges.is_null() && !merges.is_array()) return make_error("tokenizer.json: model.merges must be an array");
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const json& merge = merges[rank];
    std::string left, right;
    if (merge.is_string()) {  // "a b"
      const std::string text = merge.get<std::string>();
      const size_t space = text.find(' ');
      if (space == std::string::npos || text.find(' ', space + 1) != std::string::npos) {
        return make_error("tokenizer.json: merge {} '{}' is not two tokens separated by one space", rank, text);
      }
      left = text.substr(0, space);
      right = text.substr(space + 1);
    } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() && merge[1].is_string()) {
      left = merge[0].get<std::string>();
      right = merge[1].get<std::string>();
    } else {
      return make_error("tokenizer.json: merge {} is {} (expected \"a b\" or [\"a\", \"b\"])", rank, merge.dump());
    }
    const int32_t left_id = find_id(t.vocab, left), right_id = find_id(t.vocab, right);
    const int32_t merged_id = find_id(t.vocab, left + right);
    if (left_id < 0 || right_id < 0 || merged_id < 0) {
      return make_error("tokenizer.json: merge {} ('{}', '{}') uses a token missing from the vocab", rank, left, right);
    }
    t.merges.emplace(HfJsonTokenizer::pair_key(left_id, right_id), std::pair{static_cast<int32_t>(rank), merged_id});
  }
  return {};
}

Status parse_tokenizer(const json& config, HfJsonTokenizer& t) {
  if (!config.is_object()) return make_error("tokenizer.json: top level must be an object");
  KILN_TRY(parse_model(member(config, "model"), t));
  KILN_ASSIGN(t.normalizer, HfNormalizer::from_json(member(config, "normalizer")));
  KILN_ASSIGN(t.pre_tokenizer, HfPreTokenizer::from_json(member(config, "pre_tokenizer")));
  bool fused = false;
  KILN_TRY(parse_decoder(member(config, "decoder"), t.decoder, fused));

  const json& added = member(config, "added_tokens");
  if (!added.is_null() && !added.is_array()) return make_error("tokenizer.json: added_tokens must be an array");
  for (const json& entry : added.is_array() ? added : json::array()) {
    if (!entry.is_object() || !entry.contains("id") || !entry["id"].is_number_integer() ||
        !entry.contains("content") || !entry["content"].is_string()) {
      return make_error("tokenizer.json: added token {} needs an integer id and a content string", entry.dump());
    }
    const int64_t id = entry["id"].get<int64_t>();
    if (id < 0 || id >= (1 << 24)) return make_error("tokenizer.json: added token id {} out of range", id);
    AddedToken token{entry["content"].get<std::string>(), static_cast<int32_t>(id), entry.value("special", false),
                     entry.value("single_word", false), entry.value("lstrip", false), entry.value("rstrip", false)};
    if (token.content.empty()) continue;
    t.added.push_back(std::move(token));
  }

  size_t size = 0;
  for (const auto& [token, id] : t.vocab) size = std::max(size, static_cast<size_t>(id) + 1);
  for (const AddedToken& token : t.added) size = std::max(size, static_cast<size_t>(token.id) + 1);
  t.id_to_token.assign(size, "");
  t.special.assign(size, false);
  for (const auto& [token, id] : t.vocab) t.id_to_token[id] = token;
  for (size_t i = 0; i < t.added.size(); ++i) {
    const AddedToken& token = t.added[i];
    t.id_to_token[token.id] = token.content;
    t.special[token.id] = token.special;
    t.added_by_first_byte[static_cast<uint8_t>(token.content[0])].push_back(static_cast<int32_t>(i));
  }
  for (auto& bucket : t.added_by_first_byte) {  // longest first: leftmost-longest matching
    std::stable_sort(bucket.begin(), bucket.end(), [&](int32_t a, int32_t b) {
      return t.added[a].content.size() > t.added[b].content.size();
    });
  }
  for (int b = 0; b < 256; ++b) t.byte_ids[b] = find_id(t.vocab, fmt::format("<0x{:02X}>", b));

  // BOS: the first special token of the single-sequence template, else a conventional name.
  const auto added_id = [&](const std::string& content) {
    for (const AddedToken& token : t.added) if (token.content == content) return token.id;
    return -1;
  };
  const json& single = config.value("post_processor", json()).is_object()
                           ? config["post_processor"].value("single", json::array()) : json::array();
  if (single.is_array() && !single.empty() && single[0].is_object() && single[0].contains("SpecialToken")) {
    t.bos = added_id(single[0]["SpecialToken"].value("id", std::string()));
  }
  for (const char* name : {"<s>", "<|begin_of_text|>", "<bos>"}) if (t.bos < 0) t.bos = added_id(name);
  for (const char* name : {"</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>"}) if (t.eos < 0) t.eos = added_id(name);
  return {};
}

}  // namespace

Result<std::shared_ptr<TokenizerImpl>> load_hf_json_tokenizer(const std::string& bytes) {
  auto tokenizer = std::make_shared<HfJsonTokenizer>();
  try {
    const json config = json::parse(bytes);
    KILN_TRY(parse_tokenizer(config, *tokenizer));
  } catch (const json::exception& e) {
    return make_error("tokenizer.json: {}", e.what());
  }
  tokenizer->source = TokenizerSource::HfJson;
  tokenizer->source_bytes = bytes;
  return std::shared_ptr<TokenizerImpl>(std::move(tokenizer));
}

}  // namespace kiln
