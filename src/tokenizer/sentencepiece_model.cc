// sentencepiece's tokenizer.model: a serialized ModelProto (sentencepiece_model.proto), read with the
// hand-written wire reader in protobuf_wire.h. Encoding follows sentencepiece's BPE model
// (normalizer.cc Normalize, bpe_model.cc Model::Encode, sentencepiece_processor.cc byte fallback):
//   1. normalize: identity character map, optional dummy "▁" prefix, spaces -> "▁", optionally
//      collapsing whitespace runs;
//   2. split into characters (user-defined pieces are matched whole and never merged);
//   3. merge the adjacent pair whose concatenation is the highest-scoring piece, ties leftmost;
//   4. pieces not in the vocabulary become <0xXX> byte pieces (byte_fallback) or <unk>.
// The same model read as TokenizerSource::LlamaCppSpm (a GGUF file's "llama" vocabulary) encodes as
// llama.cpp's SPM tokenizer with parse_special (llama-vocab.cpp tokenizer_st_partition and
// llm_tokenizer_spm): CONTROL, USER_DEFINED and UNKNOWN pieces found in the text become their ids
// (longest piece first, each splitting every text fragment at all its occurrences), and each text
// fragment is encoded alone with all spaces escaped and no whitespace collapsing, a "▁" prefixed when
// the model adds a dummy prefix and the fragment opens the text or follows such a piece.
#include "tokenizer/bpe.h"
#include "tokenizer/protobuf_wire.h"
#include "tokenizer/string_map.h"
#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/utf8.h"

#include <unordered_map>

namespace kiln {
namespace {

// SentencePiece.Type in sentencepiece_model.proto.
enum PieceType : int32_t { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };
constexpr int32_t kModelTypeBpe = 2;  // TrainerSpec.ModelType
constexpr std::string_view kSpaceSymbol = "\xE2\x96\x81";  // U+2581 "▁"

struct Piece {
  std::string text;
  float score = 0.0f;
  int32_t type = kNormal;
};

class SentencePieceTokenizer final : public TokenizerImpl {
 public:
  std::vector<Piece> pieces;
  StringIdMap mergeable;  // NORMAL, USER_DEFINED and UNUSED pieces: sentencepiece's `pieces_`
  StringIdMap reserved;   // CONTROL, UNKNOWN and BYTE pieces: `reserved_id_map_`
  std::vector<int32_t> user_defined;  // ids, longest first
  bool llama_cpp = false;             // TokenizerSource::LlamaCppSpm (top of this file)
  std::vector<int32_t> special_text;  // llama_cpp: CONTROL, USER_DEFINED and UNKNOWN ids, longest first
  int32_t byte_ids[256];
  int32_t unk = 0, bos = 1, eos = 2;
  int32_t model_type = 1;
  bool byte_fallback = false;
  bool add_dummy_prefix = true, remove_extra_whitespaces = true, escape_whitespaces = true;
  bool whitespace_as_suffix = false;
  std::string charsmap_name;
  size_t charsmap_size = 0;

  int32_t piece_to_id(std::string_view text) const {
    if (int32_t id = find_id(reserved, text); id >= 0) return id;
    if (int32_t id = find_id(mergeable, text); id >= 0) return id;
    return unk;
  }

  std::string normalize(std::string_view text) const {
    const std::string_view space = escape_whitespaces ? kSpaceSymbol : std::string_view(" ");
    if (remove_extra_whitespaces) {
      while (!text.empty() && text.front() == ' ') text.remove_prefix(1);
    }
    std::string out;
    if (text.empty()) return out;
    out.reserve(text.size() + 8);
    if (add_dummy_prefix && !whitespace_as_suffix) out.append(space);
    bool previous_space = remove_extra_whitespaces;
    for (char c : text) {
      if (c == ' ') {
        if (previous_space && remove_extra_whitespaces) continue;
        out.append(space);
        previous_space = true;
      } else {
        out.push_back(c);
        previous_space = false;
      }
    }
    if (remove_extra_whitespaces && out.ends_with(space)) out.resize(out.size() - space.size());
    if (add_dummy_prefix && whitespace_as_suffix) out.append(space);
    return out;
  }

  void encode(std::string_view raw, std::vector<int32_t>& ids) const override {
    const std::string valid = utf8::sanitize(raw);
    if (!llama_cpp) {
      encode_normalized(normalize(valid), ids);
      return;
    }
    // Fragments: {begin, length, id}, id >= 0 for a matched piece.
    struct Fragment {
      size_t begin, length;
      int32_t id;
    };
    std::vector<Fragment> fragments{{0, valid.size(), -1}}, next;
    const std::string_view view = valid;
    for (int32_t id : special_text) {
      const std::string& needle = pieces[id].text;
      next.clear();
      for (const Fragment& f : fragments) {
        if (f.id >= 0) {
          next.push_back(f);
          continue;
        }
        const std::string_view text = view.substr(f.begin, f.length);
        size_t from = 0;
        for (size_t at; (at = text.find(needle, from)) != std::string_view::npos; from = at + needle.size()) {
          if (at > from) next.push_back({f.begin + from, at - from, -1});
          next.push_back({f.begin + at, needle.size(), id});
        }
        if (from < text.size()) next.push_back({f.begin + from, text.size() - from, -1});
      }
      fragments.swap(next);
    }
    bool after_special = true;
    std::string text;
    for (const Fragment& f : fragments) {
      if (f.id >= 0) {
        ids.push_back(f.id);
        after_special = true;
        continue;
      }
      text.clear();
      if (add_dummy_prefix && after_special) text.append(kSpaceSymbol);
      for (char c : view.substr(f.begin, f.length)) {
        if (c == ' ') text.append(kSpaceSymbol);
        else text.push_back(c);
      }
      encode_normalized(text, ids);
      after_special = false;
    }
  }

  // BPE over already normalized text (spaces escaped).
  void encode_normalized(const std::string& text, std::vector<int32_t>& ids) const {
    const std::string_view view = text;
    std::vector<BpeSymbol> symbols;
    std::vector<bool> frozen;
    for (size_t pos = 0; pos < text.size();) {
      size_t length = 0;
      for (int32_t id : user_defined) {
        if (view.substr(pos).starts_with(pieces[id].text)) {
          length = pieces[id].text.size();
          break;
        }
      }
      frozen.push_back(length > 0);
      if (length == 0) length = utf8::char_length(view, pos);
      symbols.push_back({piece_to_id(view.substr(pos, length)), static_cast<uint32_t>(pos),
                         static_cast<uint32_t>(length)});
      pos += length;
    }
    // For resegmenting UNUSED pieces back into the pair that formed them (bpe_model.cc rev_merge).
    std::unordered_map<std::string_view, std::pair<std::string_view, std::string_view>> reverse_merge;
    const BpeSymbol* base = symbols.data();
    bpe_merge(symbols, [&](const BpeSymbol& left, const BpeSymbol& right) -> std::optional<BpeMerge> {
      if (frozen[&left - base] || frozen[&right - base]) return std::nullopt;
      const std::string_view merged = view.substr(left.start, left.length + right.length);
      const int32_t id = find_id(mergeable, merged);
      if (id < 0) return std::nullopt;
      if (pieces[id].type == kUnused) {
        reverse_merge[merged] = {view.substr(left.start, left.length), view.substr(right.start, right.length)};
      }
      return BpeMerge{-static_cast<double>(pieces[id].score), id};
    });
    for (const BpeSymbol& s : symbols) emit(view.substr(s.start, s.length), reverse_merge, ids);
  }

  void emit(std::string_view w,
            const std::unordered_map<std::string_view, std::pair<std::string_view, std::string_view>>& reverse_merge,
            std::vector<int32_t>& ids) const {
    const int32_t id = piece_to_id(w);
    if (pieces[id].type == kUnused) {
      if (auto it = reverse_merge.find(w); it != reverse_merge.end()) {
        emit(it->second.first, reverse_merge, ids);
        emit(it->second.second, reverse_merge, ids);
        return;
      }
    }
    if (pieces[id].type == kUnknown && byte_fallback) {
      for (char c : w) ids.push_back(byte_ids[static_cast<uint8_t>(c)]);
      return;
    }
    ids.push_back(id);
  }

  int32_t vocab_size() const override { return static_cast<int32_t>(pieces.size()); }
  int32_t bos_id() const override { return bos; }
  int32_t eos_id() const override { return eos; }
  bool is_special(int32_t id) const override {
    return pieces[id].type == kControl || pieces[id].type == kUnknown;
  }
  std::string piece(int32_t id) const override { return pieces[id].text; }

  std::string token_bytes(int32_t id, int32_t previous) const override {
    const Piece& p = pieces[id];
    if (p.type == kByte) {
      for (int b = 0; b < 256; ++b) {
        if (byte_ids[b] == id) return std::string(1, static_cast<char>(b));
      }
    }
    std::string_view text = p.text;
    // The first piece loses its dummy-prefix space (sentencepiece_processor.cc DecodeSentencePiece).
    if (previous < 0 && add_dummy_prefix && !whitespace_as_suffix && text.starts_with(kSpaceSymbol)) {
      text.remove_prefix(kSpaceSymbol.size());
    }
    std::string out;
    for (size_t pos = 0; pos < text.size();) {
      if (text.substr(pos).starts_with(kSpaceSymbol)) {
        out.push_back(' ');
        pos += kSpaceSymbol.size();
      } else {
        out.push_back(text[pos++]);
      }
    }
    return out;
  }
};

Status parse_piece(std::string_view data, Piece& piece) {
  ProtoReader reader(data);
  uint32_t field;
  ProtoReader::WireType type;
  while (reader.next_field(field, type)) {
    if (field == 1 && type == ProtoReader::kLengthDelimited) piece.text = std::string(reader.bytes());
    else if (field == 2 && type == ProtoReader::kFixed32) piece.score = reader.fixed32_float();
    else if (field == 3 && type == ProtoReader::kVarint) piece.type = static_cast<int32_t>(reader.varint());
    else reader.skip(type);
  }
  if (reader.failed()) return make_error("malformed SentencePiece message at byte {}", reader.position());
  return {};
}

Status parse_trainer_spec(std::string_view data, SentencePieceTokenizer& t) {
  ProtoReader reader(data);
  uint32_t field;
  ProtoReader::WireType type;
  while (reader.next_field(field, type)) {
    if (type != ProtoReader::kVarint) {
      reader.skip(type);
      continue;
    }
    const auto value = static_cast<int32_t>(reader.varint());  // int32 fields: sign-extended varints
    switch (field) {
      case 3: t.model_type = value; break;
      case 24: t.whitespace_as_suffix = value != 0; break;
      case 35: t.byte_fallback = value != 0; break;
      case 40: t.unk = value; break;
      case 41: t.bos = value; break;
      case 42: t.eos = value; break;
      default: break;
    }
  }
  if (reader.failed()) return make_error("malformed trainer_spec at byte {}", reader.position());
  return {};
}

Status parse_normalizer_spec(std::string_view data, SentencePieceTokenizer& t) {
  ProtoReader reader(data);
  uint32_t field;
  ProtoReader::WireType type;
  while (reader.next_field(field, type)) {
    if (field == 1 && type == ProtoReader::kLengthDelimited) t.charsmap_name = std::string(reader.bytes());
    else if (field == 2 && type == ProtoReader::kLengthDelimited) t.charsmap_size = reader.bytes().size();
    else if (field == 3 && type == ProtoReader::kVarint) t.add_dummy_prefix = reader.varint() != 0;
    else if (field == 4 && type == ProtoReader::kVarint) t.remove_extra_whitespaces = reader.varint() != 0;
    else if (field == 5 && type == ProtoReader::kVarint) t.escape_whitespaces = reader.varint() != 0;
    else reader.skip(type);
  }
  if (reader.failed()) return make_error("malformed normalizer_spec at byte {}", reader.position());
  return {};
}

}  // namespace

Result<std::shared_ptr<TokenizerImpl>> load_sentencepiece_model(const std::string& bytes, bool llama_cpp) {
  auto t = std::make_shared<SentencePieceTokenizer>();
  t->llama_cpp = llama_cpp;
  const auto fail = [](const Error& e) { return e.with_context("tokenizer.model"); };
  ProtoReader reader(bytes);
  uint32_t field;
  ProtoReader::WireType type;
  while (reader.next_field(field, type)) {
    if (type != ProtoReader::kLengthDelimited || field < 1 || field > 3) {
      reader.skip(type);
      continue;
    }
    const std::string_view message = reader.bytes();
    if (reader.failed()) break;
    Status status;
    if (field == 1) status = parse_piece(message, t->pieces.emplace_back());
    if (field == 2) status = parse_trainer_spec(message, *t);
    if (field == 3) status = parse_normalizer_spec(message, *t);
    if (!status.ok()) return fail(status.error());
  }
  if (reader.failed()) return fail(make_error("malformed ModelProto at byte {}", reader.position()));
  if (t->pieces.empty()) return fail(make_error("no pieces (is this a sentencepiece ModelProto?)"));
  if (t->model_type != kModelTypeBpe) {
    return fail(make_error("trainer_spec.model_type is {} (expected 2 = BPE; 1 = UNIGRAM is not supported)",
                           t->model_type));
  }
  if (t->charsmap_size > 0) {
    return fail(make_error("normalizer_spec '{}' has a {}-byte precompiled_charsmap (only the identity "
                           "normalizer is supported)", t->charsmap_name, t->charsmap_size));
  }
  const int32_t n = static_cast<int32_t>(t->pieces.size());
  std::fill(std::begin(t->byte_ids), std::end(t->byte_ids), -1);
  for (int32_t id = 0; id < n; ++id) {
    const Piece& p = t->pieces[id];
    if (p.type < kNormal || p.type > kByte) {
      return fail(make_error("piece {} '{}' has type {} (expected 1..6)", id, p.text, p.type));
    }
    const bool mergeable = p.type == kNormal || p.type == kUserDefined || p.type == kUnused;
    if (!(mergeable ? t->mergeable : t->reserved).emplace(p.text, id).second) {
      return fail(make_error("piece {} '{}' is a duplicate", id, p.text));
    }
    if (p.type == kUserDefined) t->user_defined.push_back(id);
    if ((p.type == kControl || p.type == kUserDefined || p.type == kUnknown) && !p.text.empty()) {
      t->special_text.push_back(id);
    }
    unsigned int byte = 0;
    if (p.type == kByte && p.text.size() == 6 && std::sscanf(p.text.c_str(), "<0x%02X>", &byte) == 1) {
      t->byte_ids[byte] = id;
    }
  }
  const auto longest_first = [&](int32_t a, int32_t b) { return t->pieces[a].text.size() > t->pieces[b].text.size(); };
  std::stable_sort(t->user_defined.begin(), t->user_defined.end(), longest_first);
  std::stable_sort(t->special_text.begin(), t->special_text.end(), longest_first);
  if (t->unk < 0 || t->unk >= n || t->pieces[t->unk].type != kUnknown) {
    return fail(make_error("trainer_spec.unk_id {} is not an UNKNOWN piece of the {}", t->unk, n));
  }
  if (t->byte_fallback) {
    for (int b = 0; b < 256; ++b) {
      if (t->byte_ids[b] < 0) return fail(make_error("byte_fallback is on but piece <0x{:02X}> is missing", b));
    }
  }
  if (t->bos >= n) t->bos = -1;
  if (t->eos >= n) t->eos = -1;
  t->source = llama_cpp ? TokenizerSource::LlamaCppSpm : TokenizerSource::SentencePieceModel;
  t->source_bytes = bytes;
  return std::shared_ptr<TokenizerImpl>(std::move(t));
}

}  // namespace kiln
