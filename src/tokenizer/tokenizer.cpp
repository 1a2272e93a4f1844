#include "tokenizer/tokenizer.h"

#include <simdjson.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/tokenizer_config.h"
#include "tokenizer/utf8.h"

namespace deepmoe {

using nlohmann::json;
namespace fs = std::filesystem;

namespace {

// Token ids are int32 everywhere, and one past the largest (the tokenizer's id limit) must be one too.
bool is_valid_id(int64_t id) { return id >= 0 && id < INT32_MAX; }
// A JSON id is read whole: get<int32_t>() would truncate 2^32 + 5 to 5.
bool is_valid_id(const json& id) {
  if (id.is_number_unsigned()) return id.get<uint64_t>() < uint64_t(INT32_MAX);
  return id.is_number_integer() && is_valid_id(id.get<int64_t>());
}

std::string read_text_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open", path.string());
  std::ostringstream text;
  text << in.rdbuf();
  return std::move(text).str();
}

// The large parts of tokenizer.json (vocabulary, merges) go through simdjson: nlohmann's DOM
// alone takes ~120 ms on DeepSeek's 7.8 MB file. The small parts are handed to nlohmann.
json small_part(simdjson::dom::element element) { return json::parse(simdjson::minify(element)); }

std::vector<std::pair<std::string_view, std::string_view>> parse_merges(simdjson::dom::array merges) {
  std::vector<std::pair<std::string_view, std::string_view>> out;
  out.reserve(merges.size());
  size_t i = 0;
  for (simdjson::dom::element m : merges) {
    std::string_view text;
    simdjson::dom::array pair;
    if (m.get(text) == simdjson::SUCCESS) {
      // The older form "left right": byte-level tokens never contain a space.
      const size_t space = text.find(' ');
      if (space == std::string_view::npos || text.find(' ', space + 1) != std::string_view::npos)
        fail("model.merges[{}] '{}' is not two tokens separated by one space", i, text);
      out.emplace_back(text.substr(0, space), text.substr(space + 1));
    } else if (m.get(pair) == simdjson::SUCCESS && pair.size() == 2 && pair.at(0).is_string() &&
               pair.at(1).is_string()) {
      out.emplace_back(std::string_view(pair.at(0)), std::string_view(pair.at(1)));
    } else {
      fail("model.merges[{}] must be \"a b\" or [\"a\", \"b\"]", i);
    }
    ++i;
  }
  return out;
}

std::unique_ptr<BpeModel> parse_model(simdjson::dom::element model_element) {
  if (!model_element.is_object()) fail("\"model\" must be an object");
  const simdjson::dom::object model = model_element;
  // Every option but the vocabulary and merges, read the easy way.
  json options = json::object();
  for (const auto field : model)
    if (field.key != "vocab" && field.key != "merges") options[std::string(field.key)] = small_part(field.value);
  const std::string type = options.value("type", std::string("BPE"));
  if (type != "BPE") fail("unsupported tokenizer model '{}' (only byte-level BPE is supported)", type);
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (options.contains(key) && !options[key].is_null() && options[key] != "")
      fail("unsupported BPE option \"{}\" (byte-level BPE does not use it)", key);
  if (options.contains("byte_fallback") && options["byte_fallback"] == true)
    fail("unsupported BPE option \"byte_fallback\" (a SentencePiece-style BPE, not byte-level)");
  if (options.contains("dropout") && options["dropout"].is_number() && options["dropout"].get<double>() > 0)
    fail("unsupported BPE option \"dropout\" > 0 (randomized encoding)");
  const bool ignore_merges = options.contains("ignore_merges") && options["ignore_merges"] == true;

  simdjson::dom::object vocab_object;
  if (model["vocab"].get(vocab_object) != simdjson::SUCCESS) fail("model.vocab must be an object");
  TokenIds vocab;
  vocab.reserve(vocab_object.size());
  for (const auto entry : vocab_object) {
    int64_t id = 0;
    if (entry.value.get(id) != simdjson::SUCCESS || !is_valid_id(id))
      fail("model.vocab['{}'] must be an integer id in [0, {})", entry.key, INT32_MAX);
    vocab.emplace(entry.key, int32_t(id));
  }
  simdjson::dom::array merges;
  const auto merges_field = model["merges"];
  if (merges_field.error() == simdjson::NO_SUCH_FIELD) {
    return std::make_unique<BpeModel>(std::move(vocab), std::vector<std::pair<std::string_view, std::string_view>>{},
                                      ignore_merges);
  }
  if (merges_field.get(merges) != simdjson::SUCCESS) fail("model.merges must be an array");
  return std::make_unique<BpeModel>(std::move(vocab), parse_merges(merges), ignore_merges);
}

AddedToken parse_added_token(const json& spec, size_t index) {
  if (!spec.is_object() || !spec.contains("id") || !spec["id"].is_number_integer() || !spec.contains("content") ||
      !spec["content"].is_string())
    fail("added_tokens[{}] must have an integer \"id\" and a string \"content\"", index);
  AddedToken token;
  token.content = spec["content"].get<std::string>();
  if (!is_valid_id(spec["id"]))
    fail("added_tokens[{}] ('{}') has id {}, outside [0, {})", index, token.content, spec["id"].dump(), INT32_MAX);
  token.id = spec["id"].get<int32_t>();
  token.special = spec.value("special", false);
  token.single_word = spec.value("single_word", false);
  token.lstrip = spec.value("lstrip", false);
  token.rstrip = spec.value("rstrip", false);
  token.normalized = spec.value("normalized", !token.special);
  if (token.content.empty()) fail("added_tokens[{}] has empty content", index);
  return token;
}

}  // namespace

std::unique_ptr<Tokenizer> Tokenizer::load(const std::string& path) {
  fs::path tokenizer_file = path, config_file;
  if (fs::is_directory(tokenizer_file)) tokenizer_file /= "tokenizer.json";
  if (!fs::exists(tokenizer_file))
    fail("{}: no such file (expected a tokenizer.json or a directory holding one)", tokenizer_file.string());
  config_file = tokenizer_file.parent_path() / "tokenizer_config.json";
  const std::string config_text = fs::exists(config_file) ? read_text_file(config_file) : "";
  return from_json(read_text_file(tokenizer_file), config_text, tokenizer_file.string());
}

std::unique_ptr<Tokenizer> Tokenizer::from_json(std::string_view tokenizer_json, std::string_view config_json,
                                                const std::string& source) {
  std::unique_ptr<Tokenizer> t(new Tokenizer());
  const TokenizerConfig config = TokenizerConfig::parse(config_json, source + " (tokenizer_config.json)");
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  const simdjson::padded_string padded(tokenizer_json);
  if (const auto error = parser.parse(padded).get(root); error != simdjson::SUCCESS)
    fail("{}: not valid JSON: {}", source, simdjson::error_message(error));
  try {
    if (!root.is_object()) fail("expected a JSON object");
    // The small top-level parts as nlohmann documents; "model" stays in simdjson.
    json spec = json::object();
    for (const auto field : simdjson::dom::object(root))
      if (field.key != "model") spec[std::string(field.key)] = small_part(field.value);
    if (root["model"].error() != simdjson::SUCCESS) fail("no \"model\"");
    t->model_ = parse_model(root["model"].value());
    t->normalizer_ = std::make_unique<Normalizer>(spec.value("normalizer", json()));
    t->pre_tokenizer_ = std::make_unique<PreTokenizer>(spec.value("pre_tokenizer", json()));
    if (!t->pre_tokenizer_->has_byte_level())
      fail("pre_tokenizer has no ByteLevel step (only byte-level BPE is supported)");
    const json decoder = spec.value("decoder", json());
    if (!decoder.is_null()) {
      const std::string type = decoder.value("type", std::string());
      const bool byte_level =
          type == "ByteLevel" ||
          (type == "Sequence" && decoder.contains("decoders") && decoder["decoders"].is_array() &&
           decoder["decoders"].size() == 1 && decoder["decoders"][0].value("type", std::string()) == "ByteLevel");
      if (!byte_level) fail("unsupported decoder '{}' (only ByteLevel)", type);
    }

    t->id_limit_ = t->model_->id_limit();
    std::vector<AddedToken> raw, normalized;
    const json added = spec.value("added_tokens", json::array());
    if (!added.is_array()) fail("\"added_tokens\" must be an array");
    for (size_t i = 0; i < added.size(); ++i) {
      AddedToken token = parse_added_token(added[i], i);
      t->id_limit_ = std::max(t->id_limit_, token.id + 1);
      t->added_by_content_[token.content] = token.id;
      (token.normalized && !t->normalizer_->is_identity() ? normalized : raw).push_back(token);
      if (token.normalized && !t->normalizer_->is_identity())
        normalized.back().content = t->normalizer_->apply(token.content);
      t->added_by_id_[token.id] = std::move(token);
    }
    t->raw_matcher_ = AddedTokenMatcher(std::move(raw));
    t->normalized_matcher_ = AddedTokenMatcher(std::move(normalized));

    t->bos_token_ = config.bos_token;
    t->eos_token_ = config.eos_token;
    if (!t->bos_token_.empty()) t->bos_id_ = t->token_to_id(t->bos_token_);
    if (!t->eos_token_.empty()) t->eos_id_ = t->token_to_id(t->eos_token_);
    t->chat_template_ = config.chat_template;

    // What encode(add_special_tokens) adds. transformers' Llama-style tokenizers rebuild the
    // post-processor from add_bos_token / add_eos_token; otherwise tokenizer.json's TemplateProcessing.
    if (config.add_bos_token || config.add_eos_token) {
      if (config.add_bos_token.value_or(false) && t->bos_id_) t->prefix_ids_.push_back(*t->bos_id_);
      if (config.add_eos_token.value_or(false) && t->eos_id_) t->suffix_ids_.push_back(*t->eos_id_);
    } else {
      json post = spec.value("post_processor", json());
      std::vector<json> processors;
      if (post.is_object() && post.value("type", std::string()) == "Sequence" && post.contains("processors"))
        for (const json& p : post["processors"]) processors.push_back(p);
      else if (!post.is_null()) processors.push_back(post);
      for (const json& p : processors) {
        const std::string type = p.value("type", std::string());
        if (type == "ByteLevel") continue;  // offsets only
        if (type != "TemplateProcessing") fail("unsupported post_processor '{}' (ByteLevel, TemplateProcessing)", type);
        bool seen_sequence = false;
        for (const json& item : p.value("single", json::array())) {
          if (item.contains("Sequence")) {
            seen_sequence = true;
          } else if (item.contains("SpecialToken")) {
            const std::string name = item["SpecialToken"].value("id", std::string());
            const json& entry = p.value("special_tokens", json::object()).value(name, json::object());
            for (const json& id : entry.value("ids", json::array())) {
              if (!is_valid_id(id))
                fail("post_processor: special token '{}' has id {}, not an integer in [0, {})", name, id.dump(),
                     INT32_MAX);
              (seen_sequence ? t->suffix_ids_ : t->prefix_ids_).push_back(id.get<int32_t>());
            }
          }
        }
      }
    }
  } catch (const json::exception& e) {
    fail("{}: {}", source, e.what());
  } catch (const simdjson::simdjson_error& e) {
    fail("{}: {}", source, e.what());
  } catch (const Error& e) {
    fail("{}: {}", source, e.what());
  }
  return t;
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  if (const auto it = added_by_content_.find(std::string(token)); it != added_by_content_.end()) return it->second;
  const int32_t id = model_->token_to_id(token);
  return id >= 0 ? std::optional<int32_t>(id) : std::nullopt;
}

bool Tokenizer::is_special(int32_t id) const {
  const auto it = added_by_id_.find(id);
  return it != added_by_id_.end() && it->second.special;
}

void Tokenizer::encode_pre_tokenized(std::string text, std::vector<int32_t>& out) const {
  thread_local std::vector<Piece> pieces;
  pre_tokenizer_->split(text, pieces);
  for (const Piece& piece : pieces)
    model_->encode_word(std::string_view(text.data() + piece.begin, piece.end - piece.begin), out);
}

void Tokenizer::encode_plain(std::string_view text, std::vector<int32_t>& out) const {
  if (normalizer_->is_identity()) {
    encode_pre_tokenized(std::string(text), out);
    return;
  }
  const std::string normalized = normalizer_->apply(text);
  for (const TextSpan& span : normalized_matcher_.split(normalized)) {
    if (span.token_id >= 0) {
      out.push_back(span.token_id);
    } else {
      encode_pre_tokenized(normalized.substr(span.begin, span.end - span.begin), out);
    }
  }
}

std::vector<int32_t> Tokenizer::encode(std::string_view input, bool add_special_tokens) const {
  std::string repaired;
  std::string_view text = input;
  if (!utf8::is_valid(input)) {
    repaired = utf8::sanitize(input);
    text = repaired;
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  if (add_special_tokens) ids.insert(ids.end(), prefix_ids_.begin(), prefix_ids_.end());
  for (const TextSpan& span : raw_matcher_.split(text)) {
    if (span.token_id >= 0) {
      ids.push_back(span.token_id);
    } else {
      encode_plain(text.substr(span.begin, span.end - span.begin), ids);
    }
  }
  if (add_special_tokens) ids.insert(ids.end(), suffix_ids_.begin(), suffix_ids_.end());
  return ids;
}

std::string Tokenizer::token_bytes(int32_t id) const {
  std::string out;
  if (const auto it = added_by_id_.find(id); it != added_by_id_.end()) {
    // HF's ByteLevel decoder maps an added token's characters back to bytes when they all are
    // byte-level symbols, and keeps its UTF-8 otherwise.
    if (!byte_level::decode(it->second.content, out)) out = it->second.content;
    return out;
  }
  const std::string& token = model_->id_to_token(id);
  if (token.empty()) fail("token id {} is not in the vocabulary (ids go up to {})", id, id_limit_ - 1);
  if (!byte_level::decode(token, out)) out = token;
  return out;
}

bool Tokenizer::spells(int32_t id) const {
  if (id < 0 || id >= id_limit_) return false;
  return added_by_id_.count(id) > 0 || !model_->id_to_token(id).empty();
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::string bytes;
  for (const int32_t id : ids) {
    if (skip_special_tokens && is_special(id)) continue;
    bytes += token_bytes(id);
  }
  return utf8::is_valid(bytes) ? bytes : utf8::sanitize(bytes);
}

std::string StreamingDecoder::push(int32_t id) {
  if (skip_special_ && tokenizer_.is_special(id)) return "";
  pending_ += tokenizer_.token_bytes(id);
  // Emit everything up to a trailing character that more bytes could still complete.
  size_t cut = pending_.size();
  for (size_t back = 1; back <= 3 && back <= pending_.size(); ++back) {
    if (utf8::is_incomplete_sequence(pending_, pending_.size() - back)) {
      cut = pending_.size() - back;
      break;
    }
  }
  std::string out = utf8::sanitize(std::string_view(pending_).substr(0, cut));
  pending_.erase(0, cut);
  return out;
}

std::string StreamingDecoder::finish() {
  std::string out = utf8::sanitize(pending_);
  pending_.clear();
  return out;
}

std::vector<int32_t> unspellable_ids(const Tokenizer& tokenizer, int64_t vocab_size) {
  std::vector<int32_t> ids;
  for (int64_t id = 0; id < vocab_size; ++id)
    if (!tokenizer.spells(int32_t(id))) ids.push_back(int32_t(id));
  return ids;
}

}  // namespace deepmoe
