#include "cli/common.h"

#include <fmt/format.h>
#include <sched.h>
#include <sys/resource.h>

#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "core/error.h"
#include "io/gguf.h"
#include "io/mapped_file.h"
#include "kernels/matmul.h"
#include "kernels/matmul_small_batch_avx512.h"
#include "model/gguf_import.h"
#include "tokenizer/gguf_tokenizer.h"

namespace deepmoe::cli {

std::vector<int32_t> parse_token_list(const std::string& text, const char* flag) {
  std::vector<int32_t> tokens;
  size_t begin = 0;
  while (begin <= text.size()) {
    size_t end = text.find(',', begin);
    if (end == std::string::npos) end = text.size();
    const std::string item = text.substr(begin, end - begin);
    int32_t value = 0;
    const auto [ptr, error] = std::from_chars(item.data(), item.data() + item.size(), value);
    if (item.empty() || error != std::errc() || ptr != item.data() + item.size() || value < 0)
      fail("{}: '{}' is not a non-negative integer token id (expected e.g. 1,2,3)", flag, item);
    tokens.push_back(value);
    begin = end + 1;
  }
  return tokens;
}

void add_sampling_options(CLI::App* command, SamplingParams& sampling) {
  command->add_option("--temperature", sampling.temperature, "0: greedy and deterministic");
  command->add_option("--top-k", sampling.top_k, "keep the k most likely tokens (0: off)");
  command->add_option("--top-p", sampling.top_p, "nucleus sampling mass (1: off)");
  command->add_option("--min-p", sampling.min_p, "drop tokens below min-p times the best (0: off)");
  command->add_option("--repetition-penalty", sampling.repetition_penalty, "1: off");
  command->add_option("--seed", sampling.seed, "sampling seed");
}

SpeculativeFlag parse_speculative(const std::string& spec) {
  if (spec.empty() || spec == "off") return {};
  const auto count_of = [&](const std::string& text) -> int64_t {
    int64_t k = 0;
    const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), k);
    return error == std::errc() && end == text.data() + text.size() && k >= 1 && k <= 16 ? k : 0;
  };
  const size_t last = spec.rfind(':');
  if (spec.starts_with("mtp:") && last == 3) {
    if (const int64_t k = count_of(spec.substr(4))) return {k, ""};
  } else if (spec.starts_with("draft:") && last > 6) {
    if (const int64_t k = count_of(spec.substr(last + 1))) return {k, spec.substr(6, last - 6)};
  }
  fail("--speculative: expected mtp:K or draft:DIR:K with K in [1, 16] (or off), found '{}'", spec);
}

std::unique_ptr<Model> load_draft_model(const SpeculativeFlag& flag, const std::string& model_dir, int threads,
                                        std::unique_ptr<ModelWeights>& weights) {
  if (flag.draft_dir.empty()) return nullptr;
  const auto tokenizer_of = [](const std::string& dir) {
    const std::string path = (std::filesystem::path(dir) / "tokenizer.json").string();
    return std::filesystem::exists(path) ? read_file(path) : std::string();
  };
  const std::string ours = tokenizer_of(model_dir), theirs = tokenizer_of(flag.draft_dir);
  if (!ours.empty() && !theirs.empty() && ours != theirs)
    fail("--speculative draft:{}: its tokenizer.json differs from {}'s: a draft model must share the tokenizer",
         flag.draft_dir, model_dir);
  weights = load_model(flag.draft_dir, {});
  return std::make_unique<Model>(*weights, threads);
}

void add_speculative_options(CLI::App* command, SpeculativeOptions& options) {
  command->add_option("--speculative", options.spec,
                      "mtp:K (the model's multi-token-prediction module) or draft:DIR:K (a smaller model with the "
                      "same tokenizer) drafts K tokens a step, the model verifies them in one pass: the same output, "
                      "faster when drafts are accepted");
  command->add_option("--draft-vocab", options.draft_vocab,
                      "the MTP module drafts among the first N token ids only (its head is most of a draft step's "
                      "bytes; the output is unchanged); default: all");
}

void apply_draft_vocab(const SpeculativeOptions& options, Model& model) {
  if (options.draft_vocab != 0) model.set_draft_vocabulary(options.draft_vocab);
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open for reading", path);
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) fail("{}: read error", path);
  return std::move(text).str();
}

// OpenBLAS reads OPENBLAS_CORETYPE before main, so we cannot undo it; we can say what it costs.
void warn_if_gemm_is_held_back() {
  const char* forced = std::getenv("OPENBLAS_CORETYPE");
  if (forced == nullptr || *forced == '\0' || !cpu_has_avx512()) return;
  const std::string core = gemm_library_name();
  if (core.find("Haswell") == std::string::npos && core.find("Sandy") == std::string::npos) return;
  fmt::print(stderr,
             "deepmoe: warning: OPENBLAS_CORETYPE={} keeps OpenBLAS off this CPU's AVX-512 kernels; "
             "prefill runs about 1.8x slower (unset it or set SkylakeX)\n",
             forced);
}

void add_load_options(CLI::App* command, LoadOptions& load) {
  load.access = FileAccess::Auto;
  auto* map = command->add_flag_callback(
      "--mmap", [&load] { load.access = FileAccess::Map; },
      "map the model file instead of reading it (starts at once; speed then depends on how the file came into the "
      "page cache)");
  command
      ->add_flag_callback(
          "--no-mmap", [&load] { load.access = FileAccess::Read; },
          "read the model into memory even when it may not fit (default: when it fits)")
      ->excludes(map);
  command->add_flag("--mlock", load.lock, "lock the weights in memory (never paged out)");
}

std::unique_ptr<ModelWeights> load_model(const std::string& dir, LoadOptions load) {
  auto weights = ModelWeights::load(dir, load);
  if (load.lock && weights->file_residence().find("locked") == std::string::npos)
    fmt::print(stderr,
               "deepmoe: warning: --mlock could not lock the weights (raise 'ulimit -l'); continuing unlocked\n");
  const auto& ignored = weights->ignored_tensors;
  if (!ignored.empty()) {
    const size_t shown = std::min<size_t>(ignored.size(), 10);
    std::vector<std::string> names(ignored.begin(), ignored.begin() + long(shown));
    fmt::print(stderr, "deepmoe: warning: ignoring {} unknown tensor(s): {}{}\n", ignored.size(),
               fmt::join(names, ", "), ignored.size() > shown ? ", ..." : "");
  }
  return weights;
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path) {
  if (is_gguf_path(path)) {
    const MappedFile file(path);
    return tokenizer_from_gguf(parse_gguf(file.bytes(), path));
  }
  return Tokenizer::load(path);
}

std::unique_ptr<Tokenizer> load_model_tokenizer(const std::string& model_dir) {
  if (is_gguf_path(model_dir)) return load_tokenizer(model_dir);
  if (!std::filesystem::exists(std::filesystem::path(model_dir) / "tokenizer.json"))
    fail("{}: no tokenizer.json (give token ids with --tokens, or add one: deepmoe init --tokenizer DIR)", model_dir);
  return Tokenizer::load(model_dir);
}

void copy_tokenizer_files(const std::string& from, const std::string& to) {
  namespace fs = std::filesystem;
  const fs::path source = fs::is_directory(from) ? fs::path(from) : fs::path(from).parent_path();
  const fs::path json = fs::is_directory(from) ? source / "tokenizer.json" : fs::path(from);
  fs::copy_file(json, fs::path(to) / "tokenizer.json", fs::copy_options::overwrite_existing);
  if (fs::exists(source / "tokenizer_config.json"))
    fs::copy_file(source / "tokenizer_config.json", fs::path(to) / "tokenizer_config.json",
                  fs::copy_options::overwrite_existing);
}

void copy_tokenizer_files_if_present(const std::string& from, const std::string& to) {
  if (std::filesystem::exists(std::filesystem::path(from) / "tokenizer.json")) copy_tokenizer_files(from, to);
}

int resolve_threads(int requested) {
  if (requested < 0) fail("--threads must be >= 0, found {}", requested);
  if (requested > 0) return requested;
  // The CPUs this process may run on (taskset, cgroups' cpusets), not all the machine has.
  cpu_set_t allowed;
  if (sched_getaffinity(0, sizeof allowed, &allowed) == 0) return std::max(1, CPU_COUNT(&allowed));
  return std::max(1u, std::thread::hardware_concurrency());
}

double peak_rss_mb() {
  struct rusage usage {};
  getrusage(RUSAGE_SELF, &usage);
  return double(usage.ru_maxrss) / 1024.0;  // Linux reports KiB
}

double mapped_in_huge_pages_mb() {
  std::ifstream rollup("/proc/self/smaps_rollup");
  std::string key;
  double total_kib = 0;
  while (rollup >> key) {
    double kib = 0;
    if ((key == "AnonHugePages:" || key == "FilePmdMapped:") && rollup >> kib) total_kib += kib;
    rollup.ignore(256, '\n');
  }
  return total_kib / 1024.0;
}

std::unique_ptr<ChatTemplate> chat_template_of(const Tokenizer& tokenizer) {
  if (tokenizer.chat_template().empty()) return nullptr;
  return std::make_unique<ChatTemplate>(tokenizer.chat_template());
}

}  // namespace deepmoe::cli
