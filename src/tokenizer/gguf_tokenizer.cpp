#include "tokenizer/gguf_tokenizer.h"

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "tokenizer/bpe_trainer.h"

namespace deepmoe {

namespace {

constexpr int64_t kControl = 3, kUserDefined = 4;

// llama.cpp names pre-tokenizers; these are the HF pre_tokenizer documents behind the names.
nlohmann::json pre_tokenizer(const std::string& name, const std::string& file) {
  const nlohmann::json byte_level = {
      {"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}};
  if (name == "deepseek-v3") return nlohmann::json::parse(deepseek_v3_pre_tokenizer_json());
  if (name == "llama-bpe")
    return {
        {"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"},
           {"pattern",
            {{"Regex",
              "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
              "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}}},
           {"behavior", "Isolated"},
           {"invert", false}},
          byte_level}}};
  if (name == "gpt-2" || name == "default")
    return {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  fail("{}: tokenizer.ggml.pre \"{}\" is not one we can rebuild (deepseek-v3, llama-bpe, gpt-2)", file, name);
}

}  // namespace

GgufTokenizerFiles tokenizer_files_from_gguf(const GgufFile& f) {
  const GgufValue* tokens = f.find("tokenizer.ggml.tokens");
  const GgufValue* merges = f.find("tokenizer.ggml.merges");
  if (tokens == nullptr || tokens->element_type != GgufValueType::String)
    fail("{}: no tokenizer inside (tokenizer.ggml.tokens); give token ids with --tokens", f.file);
  if (f.get_string("tokenizer.ggml.model") != "gpt2")
    fail("{}: tokenizer.ggml.model \"{}\" is not byte-level BPE (gpt2)", f.file, f.get_string("tokenizer.ggml.model"));
  if (merges == nullptr || merges->element_type != GgufValueType::String)
    fail("{}: tokenizer.ggml.merges is missing", f.file);
  const GgufValue* types = f.find("tokenizer.ggml.token_type");
  nlohmann::json vocab = nlohmann::json::object(), added = nlohmann::json::array();
  for (size_t id = 0; id < tokens->strings.size(); ++id) {
    const std::string& text = tokens->strings[id];
    const int64_t type = types != nullptr && id < types->ints.size() ? types->ints[id] : 1;
    if (type == kControl || type == kUserDefined)
      added.push_back({{"id", id},
                       {"content", text},
                       {"single_word", false},
                       {"lstrip", false},
                       {"rstrip", false},
                       {"normalized", type != kControl},
                       {"special", type == kControl}});
    if (!vocab.contains(text)) vocab[text] = id;
  }
  const std::string pre = f.find("tokenizer.ggml.pre") ? f.get_string("tokenizer.ggml.pre") : "default";
  const nlohmann::json tokenizer = {
      {"version", "1.0"},
      {"added_tokens", added},
      {"normalizer", nullptr},
      {"pre_tokenizer", pre_tokenizer(pre, f.file)},
      {"post_processor", nullptr},
      {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr},
        {"fuse_unk", false},
        {"byte_fallback", false},
        {"ignore_merges", false},
        {"vocab", vocab},
        {"merges", merges->strings}}}};
  nlohmann::json config = nlohmann::json::object();
  const auto token_text = [&](const std::string& key) -> std::optional<std::string> {
    const GgufValue* v = f.find(key);
    if (v == nullptr || v->integer < 0 || size_t(v->integer) >= tokens->strings.size()) return std::nullopt;
    return tokens->strings[size_t(v->integer)];
  };
  if (const auto bos = token_text("tokenizer.ggml.bos_token_id")) config["bos_token"] = *bos;
  if (const auto eos = token_text("tokenizer.ggml.eos_token_id")) config["eos_token"] = *eos;
  if (const GgufValue* v = f.find("tokenizer.ggml.add_bos_token")) config["add_bos_token"] = v->bool_value;
  if (const GgufValue* v = f.find("tokenizer.ggml.add_eos_token")) config["add_eos_token"] = v->bool_value;
  if (f.find("tokenizer.chat_template")) config["chat_template"] = f.get_string("tokenizer.chat_template");
  try {
    return {tokenizer.dump(), config.dump()};
  } catch (const nlohmann::json::exception& e) {  // a token or template that is not UTF-8
    fail("{}: the tokenizer it carries is not valid UTF-8: {}", f.file, e.what());
  }
}

std::unique_ptr<Tokenizer> tokenizer_from_gguf(const GgufFile& f) {
  const GgufTokenizerFiles files = tokenizer_files_from_gguf(f);
  return Tokenizer::from_json(files.tokenizer_json, files.tokenizer_config_json, f.file);
}

}  // namespace deepmoe
