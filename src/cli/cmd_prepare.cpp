// deepmoe prepare: text files -> uint32 token files for training (train and validation).
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "cli/common.h"
#include "core/error.h"
#include "io/mapped_file.h"
#include "tokenizer/tokenizer.h"

namespace deepmoe::cli {

namespace {

void write_tokens(const std::string& path, std::span<const uint32_t> tokens) {
  write_file_atomically(path, {reinterpret_cast<const uint8_t*>(tokens.data()), tokens.size() * sizeof(uint32_t)});
}

// F.u32 -> F.val.u32 (or F.val when the name has no .u32).
std::string validation_path(const std::string& out) {
  const std::string suffix = ".u32";
  if (out.size() > suffix.size() && out.compare(out.size() - suffix.size(), suffix.size(), suffix) == 0)
    return out.substr(0, out.size() - suffix.size()) + ".val.u32";
  return out + ".val";
}

}  // namespace

void add_prepare_command(CLI::App& app) {
  struct Options {
    std::string tokenizer, out;
    std::vector<std::string> files;
    double val_fraction = 0.01;
  };
  auto o = std::make_shared<Options>();
  auto* command = app.add_subcommand("prepare", "Tokenize text files into uint32 token files (train + validation)");
  command->add_option("files", o->files, "UTF-8 text files (each starts with BOS)")->required();
  command->add_option("--tokenizer", o->tokenizer, "tokenizer.json or a directory holding one")->required();
  command->add_option("--out", o->out, "training tokens; validation goes to OUT with .val.u32")->required();
  command->add_option("--val-fraction", o->val_fraction, "share of the tokens (taken from the end) for validation");
  command->callback([o] {
    if (!(o->val_fraction >= 0 && o->val_fraction < 1))
      fail("--val-fraction must be in [0, 1), found {}", o->val_fraction);
    const auto tokenizer = load_tokenizer(o->tokenizer);
    uintmax_t total_bytes = 0, done_bytes = 0;
    for (const auto& f : o->files) {
      if (!std::filesystem::is_regular_file(f)) fail("{}: no such file", f);
      total_bytes += std::filesystem::file_size(f);
    }
    const bool terminal = isatty(STDERR_FILENO) != 0;
    std::vector<uint32_t> tokens;
    // Chunks of about 1 MiB cut after a newline keep memory flat on large files; a chunk boundary
    // at a line end splits text where the pre-tokenizer would anyway.
    constexpr size_t kChunk = 1 << 20;
    for (const auto& f : o->files) {
      const MappedFile file(f);
      const std::string_view text(reinterpret_cast<const char*>(file.bytes().data()), file.bytes().size());
      if (tokenizer->bos_id()) tokens.push_back(uint32_t(*tokenizer->bos_id()));
      for (size_t begin = 0; begin < text.size();) {
        size_t end = std::min(text.size(), begin + kChunk);
        if (end < text.size()) {
          const size_t newline = text.rfind('\n', end);
          if (newline != std::string_view::npos && newline > begin) end = newline + 1;
        }
        for (const int32_t id : tokenizer->encode(text.substr(begin, end - begin))) tokens.push_back(uint32_t(id));
        done_bytes += end - begin;
        begin = end;
        if (terminal)
          fmt::print(stderr, "\r{:5.1f}%  {} tokens", 100.0 * double(done_bytes) / double(total_bytes), tokens.size());
      }
    }
    if (terminal) fmt::print(stderr, "\n");
    const size_t n_val = size_t(double(tokens.size()) * o->val_fraction);
    const std::span<const uint32_t> all(tokens);
    write_tokens(o->out, all.first(tokens.size() - n_val));
    if (n_val > 0) write_tokens(validation_path(o->out), all.last(n_val));
    fmt::print("{} tokens from {} bytes: {} train -> {}{}\n", tokens.size(), total_bytes, tokens.size() - n_val, o->out,
               n_val > 0 ? fmt::format(", {} validation -> {}", n_val, validation_path(o->out)) : "");
  });
}

}  // namespace deepmoe::cli
