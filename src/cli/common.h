// Helpers shared by the subcommands: each subcommand is one file with an add_*_command().
#pragma once
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <CLI/CLI.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "infer/sampler.h"
#include "model/model.h"
#include "model/weights.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace deepmoe::cli {

void add_info_command(CLI::App& app);
void add_init_command(CLI::App& app);
void add_logits_command(CLI::App& app);
void add_generate_command(CLI::App& app);
void add_bench_command(CLI::App& app);
void add_tokenize_command(CLI::App& app);
void add_detokenize_command(CLI::App& app);
void add_chat_template_command(CLI::App& app);
void add_tokenizer_train_command(CLI::App& app);
void add_chat_command(CLI::App& app);
void add_train_command(CLI::App& app);
void add_prepare_command(CLI::App& app);
void add_convert_command(CLI::App& app);
void add_ppl_command(CLI::App& app);
void add_quantize_command(CLI::App& app);
void add_serve_command(CLI::App& app);
void add_eval_command(CLI::App& app);
void add_sft_command(CLI::App& app);
void add_dpo_command(CLI::App& app);
void add_fisher_command(CLI::App& app);
void add_grpo_command(CLI::App& app);

// --temperature, --top-k, --top-p, --min-p, --repetition-penalty and --seed, for every command
// that samples.
void add_sampling_options(CLI::App* command, SamplingParams& sampling);

// --speculative: "mtp:K" (the model's multi-token-prediction module drafts K tokens a step),
// "draft:DIR:K" (the model in DIR drafts), or "off"; 1 <= K <= 16. Throws Error naming the flag.
struct SpeculativeFlag {
  int64_t tokens = 0;     // K; 0: off
  std::string draft_dir;  // empty: the MTP module
};
SpeculativeFlag parse_speculative(const std::string& spec);
// --speculative, and --draft-vocab (Model::set_draft_vocabulary; 0: the whole vocabulary).
struct SpeculativeOptions {
  std::string spec;
  int64_t draft_vocab = 0;
};
void add_speculative_options(CLI::App* command, SpeculativeOptions& options);
// The --draft-vocab the options ask for, applied to `model` (a model with an MTP module).
void apply_draft_vocab(const SpeculativeOptions& options, Model& model);
// The draft model SpeculativeFlag names, loaded and checked against the model's tokenizer (the
// same tokenizer.json when both have one); null for MTP or off. `weights` receives its weights.
std::unique_ptr<Model> load_draft_model(const SpeculativeFlag& flag, const std::string& model_dir, int threads,
                                        std::unique_ptr<ModelWeights>& weights);

// Parses "1,2,3" into token ids; throws Error naming the bad element.
std::vector<int32_t> parse_token_list(const std::string& text, const char* flag = "--tokens");

// Reads a whole file as bytes; throws Error naming it when it cannot be read.
std::string read_file(const std::string& path);

// Loads a model directory and prints one warning line for tensors it does not use.
// One stderr line when OPENBLAS_CORETYPE holds OpenBLAS to pre-AVX-512 kernels on an AVX-512 CPU.
void warn_if_gemm_is_held_back();

// --mmap / --no-mmap / --mlock, with llama.cpp's meanings, for the commands that run a model.
// With neither of the first two the weights are read into memory when they fit (FileAccess::Auto):
// a mapped file's speed depends on how it came into the page cache (io/mapped_file.h).
void add_load_options(CLI::App* command, LoadOptions& load);

// `load` as given; one warning line when --mlock could not lock the weights.
std::unique_ptr<ModelWeights> load_model(const std::string& dir, LoadOptions load = {});

// A tokenizer.json, a directory holding one, or a .gguf carrying one.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path);
// The tokenizer of a model directory; the error says how to add one when it is missing.
std::unique_ptr<Tokenizer> load_model_tokenizer(const std::string& model_dir);

// The model's chat template when its tokenizer_config.json has one (null otherwise).
std::unique_ptr<ChatTemplate> chat_template_of(const Tokenizer& tokenizer);

// Copies tokenizer.json and (if present) tokenizer_config.json from `from` (a directory or a
// tokenizer.json) into the directory `to`.
void copy_tokenizer_files(const std::string& from, const std::string& to);

// copy_tokenizer_files when `from` holds a tokenizer.json; nothing otherwise.
void copy_tokenizer_files_if_present(const std::string& from, const std::string& to);

// Threads to use when --threads is 0: the machine's hardware threads.
int resolve_threads(int requested);

// Peak resident set size of this process so far, in MiB.
double peak_rss_mb();
// MiB of this process's memory mapped with 2 MiB pages now (anonymous and file-backed): how
// much of the weights the TLB sees as large pages, which decode speed depends on.
double mapped_in_huge_pages_mb();

}  // namespace deepmoe::cli
