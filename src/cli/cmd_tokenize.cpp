#include <nlohmann/json.hpp>

#include <cstdio>
#include <fstream>

#include "cli/common.h"
#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace deepmoe::cli {

namespace {

void print_ids(const std::vector<int32_t>& ids, bool as_json) {
  if (as_json) {
    fmt::print("[{}]\n", fmt::join(ids, ","));
  } else {
    fmt::print("{}\n", fmt::join(ids, ","));
  }
}

// --jsonl: one JSON string per input line, one JSON array of ids per output line.
void tokenize_jsonl(const Tokenizer& tokenizer, const std::string& path, bool add_special) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open for reading", path);
  std::string line;
  for (int64_t number = 1; std::getline(in, line); ++number) {
    nlohmann::json value;
    try {
      value = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception&) {
      fail("{}:{}: not a JSON value", path, number);
    }
    if (!value.is_string()) fail("{}:{}: expected a JSON string", path, number);
    print_ids(tokenizer.encode(value.get_ref<const std::string&>(), add_special), true);
  }
}

}  // namespace

void add_tokenize_command(CLI::App& app) {
  struct Options {
    std::string tokenizer, text, file, jsonl;
    bool json = false, add_special = false;
  };
  auto options = std::make_shared<Options>();
  auto* command = app.add_subcommand("tokenize", "Print the token ids of a text (no BOS unless asked)");
  command->add_option("--tokenizer", options->tokenizer, "tokenizer.json or a directory holding one")->required();
  auto* text = command->add_option("--text", options->text, "the text");
  auto* file = command->add_option("--file", options->file, "a file read as raw UTF-8");
  auto* jsonl = command->add_option("--jsonl", options->jsonl, "a file of one JSON string per line");
  text->excludes(file, jsonl);
  file->excludes(jsonl);
  command->add_flag("--json", options->json, "print one JSON array of ids");
  command->add_flag("--add-special-tokens", options->add_special, "add BOS/EOS as the tokenizer's post-processor does");
  command->callback([options, text, file, jsonl] {
    if (!*text && !*file && !*jsonl) fail("tokenize needs one of --text, --file or --jsonl");
    const auto tokenizer = load_tokenizer(options->tokenizer);
    if (*jsonl) {
      tokenize_jsonl(*tokenizer, options->jsonl, options->add_special);
      return;
    }
    const std::string input = *text ? options->text : read_file(options->file);
    print_ids(tokenizer->encode(input, options->add_special), options->json);
  });
}

// --jsonl: one JSON array of ids per input line, one JSON string per output line.
void detokenize_jsonl(const Tokenizer& tokenizer, const std::string& path, bool skip_special) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open for reading", path);
  std::string line;
  for (int64_t number = 1; std::getline(in, line); ++number) {
    std::vector<int32_t> ids;
    try {
      ids = nlohmann::json::parse(line).get<std::vector<int32_t>>();
    } catch (const nlohmann::json::exception&) {
      fail("{}:{}: expected a JSON array of token ids", path, number);
    }
    fmt::print("{}\n", nlohmann::json(tokenizer.decode(ids, skip_special)).dump());
  }
}

void add_detokenize_command(CLI::App& app) {
  struct Options {
    std::string tokenizer, ids, jsonl;
    bool skip_special = false;
  };
  auto options = std::make_shared<Options>();
  auto* command = app.add_subcommand("detokenize", "Print the text of token ids (exactly, no newline added)");
  command->add_option("--tokenizer", options->tokenizer, "tokenizer.json or a directory holding one")->required();
  auto* ids = command->add_option("--ids", options->ids, "comma-separated token ids");
  auto* jsonl = command->add_option("--jsonl", options->jsonl, "a file of one JSON array of ids per line");
  ids->excludes(jsonl);
  command->add_flag("--skip-special-tokens", options->skip_special, "leave special tokens out");
  command->callback([options, ids, jsonl] {
    if (!*ids && !*jsonl) fail("detokenize needs --ids or --jsonl");
    if (*jsonl) {
      detokenize_jsonl(*load_tokenizer(options->tokenizer), options->jsonl, options->skip_special);
      return;
    }
    const auto id_list = parse_token_list(options->ids, "--ids");
    const auto tokenizer = load_tokenizer(options->tokenizer);
    const std::string text = tokenizer->decode(id_list, options->skip_special);
    std::fwrite(text.data(), 1, text.size(), stdout);
  });
}

}  // namespace deepmoe::cli
