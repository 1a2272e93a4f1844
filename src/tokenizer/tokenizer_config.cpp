#include "tokenizer/tokenizer_config.h"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"

namespace deepmoe {

using nlohmann::json;
namespace fs = std::filesystem;

namespace {

// A special token: a string or {"content": ...}.
std::string token_field(const json& config, const char* key) {
  if (!config.contains(key) || config[key].is_null()) return "";
  const json& v = config[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  fail("\"{}\" must be a string or an object with \"content\"", key);
}

// chat_template: a string, or a list of {name, template} of which "default" is the one to use.
std::string chat_template_field(const json& config) {
  if (!config.contains("chat_template") || config["chat_template"].is_null()) return "";
  const json& t = config["chat_template"];
  if (t.is_string()) return t.get<std::string>();
  if (t.is_array())
    for (const json& named : t)
      if (named.is_object() && named.value("name", std::string()) == "default" && named.contains("template") &&
          named["template"].is_string())
        return named["template"].get<std::string>();
  fail("\"chat_template\" must be a string or a list with a \"default\" entry");
}

std::optional<bool> bool_field(const json& config, const char* key) {
  if (!config.contains(key) || config[key].is_null()) return std::nullopt;
  if (!config[key].is_boolean()) fail("\"{}\" must be true or false", key);
  return config[key].get<bool>();
}

}  // namespace

TokenizerConfig TokenizerConfig::parse(std::string_view text, const std::string& source) {
  TokenizerConfig config;
  if (text.empty()) return config;
  try {
    const json j = json::parse(text);
    if (!j.is_object()) fail("expected a JSON object");
    config.bos_token = token_field(j, "bos_token");
    config.eos_token = token_field(j, "eos_token");
    config.chat_template = chat_template_field(j);
    config.add_bos_token = bool_field(j, "add_bos_token");
    config.add_eos_token = bool_field(j, "add_eos_token");
  } catch (const json::exception& e) {
    fail("{}: not valid JSON: {}", source, e.what());
  } catch (const Error& e) {
    fail("{}: {}", source, e.what());
  }
  return config;
}

TokenizerConfig TokenizerConfig::load(const std::string& path) {
  fs::path file = path;
  file = fs::is_directory(file) ? file / "tokenizer_config.json" : file.parent_path() / "tokenizer_config.json";
  if (!fs::exists(file)) return {};
  std::ifstream in(file, std::ios::binary);
  if (!in) fail("{}: cannot open", file.string());
  std::ostringstream text;
  text << in.rdbuf();
  return parse(text.str(), file.string());
}

}  // namespace deepmoe
