// deepmoe grpo: group relative policy optimization (train/grpo_data.h) of a model directory on
// prompts, its rollouts sampled by the serving engine from the very weights being trained
// (serve/policy_sampler.h), scored by a built-in reward or an external program, against the
// frozen starting model as the KL reference; every other flag, the checkpoints and the run are train's.
#include <fstream>
#include <memory>

#include "cli/common.h"
#include "cli/training_run.h"
#include "core/error.h"
#include "io/jsonl.h"
#include "kernels/gemm_bf16.h"
#include "serve/policy_sampler.h"
#include "train/grpo_data.h"
#include "train/reference_model.h"

namespace deepmoe::cli {

namespace {

struct GrpoFlags {
  std::string prompts, reward = "exact", reward_cmd, reference, log_rollouts;
  int64_t group = 8, max_tokens = 128;
  double temperature = 1.0, top_p = 1.0, epsilon = 0.2, beta = 0.04, reward_timeout = 60;
};

std::vector<train::GrpoPrompt> load_prompts(const std::string& path, const Tokenizer& tokenizer,
                                            const ChatTemplate* chat_template) {
  std::vector<train::GrpoPrompt> prompts;
  for_each_jsonl_object(path, [&](const nlohmann::json& j, const std::string& where) {
    train::GrpoPrompt p;
    const char* key = j.contains("messages") ? "messages" : "prompt";
    if (!j.contains(key)) fail("{}: needs 'prompt' (text or messages) or 'messages'", where);
    if (j[key].is_string()) {
      p.text = j[key].get<std::string>();
      p.tokens = tokenizer.encode(p.text, true);
    } else if (j[key].is_array()) {
      if (!chat_template) fail("{}: messages need the model's chat template (tokenizer_config.json has none)", where);
      p.text = chat_template->render(j[key], true, tokenizer.bos_token(), tokenizer.eos_token());
      p.tokens = tokenizer.encode(p.text);
    } else {
      fail("{}: '{}' must be text or a list of messages", where, key);
    }
    if (j.contains("answer")) p.answer = j["answer"].is_string() ? j["answer"].get<std::string>() : j["answer"].dump();
    if (p.tokens.empty()) fail("{}: the prompt is empty", where);
    prompts.push_back(std::move(p));
  });
  if (prompts.empty()) fail("{}: no prompts", path);
  return prompts;
}

std::unique_ptr<train::TrainingData> grpo_data(const GrpoFlags& flags, const train::TrainerOptions& o) {
  const LaunchedRank launched = launched_rank();
  if (o.precision == GemmPrecision::BF16 && launched.size > 1)
    fail("grpo with --precision bf16 runs on one process for now (the sampler reads the whole f32 weights)");
  // Shared with the sampler, which outlives this call.
  std::shared_ptr<const Tokenizer> tokenizer = load_model_tokenizer(o.init_dir);
  const std::unique_ptr<ChatTemplate> chat_template = chat_template_of(*tokenizer);
  std::vector<train::GrpoPrompt> prompts = load_prompts(flags.prompts, *tokenizer, chat_template.get());
  size_t longest = 0;
  for (const auto& p : prompts) longest = std::max(longest, p.tokens.size());
  if (int64_t(longest) + flags.max_tokens > o.seq + 1)
    fail("--seq {} cannot hold the longest prompt ({} tokens) and --max-tokens {}: raise --seq to {}", o.seq, longest,
         flags.max_tokens, int64_t(longest) + flags.max_tokens - 1);
  PolicySamplerOptions sampler;
  sampler.threads = o.threads;
  sampler.max_tokens = flags.max_tokens;
  sampler.sampling.temperature = float(flags.temperature);
  sampler.sampling.top_p = float(flags.top_p);
  const GemmPrecision precision =
      o.precision == GemmPrecision::BF16 && cpu_has_bf16_gemm() ? GemmPrecision::BF16 : GemmPrecision::F32;
  auto reference =
      std::make_shared<train::ReferenceModel>(reference_model_dir(flags.reference, o.init_dir), o.threads, precision);
  const int64_t seq = o.seq;
  train::GrpoOptions options;
  options.group = flags.group;
  options.seq = o.seq;
  options.objective.epsilon = flags.epsilon;
  options.objective.beta = flags.beta;
  options.seed = o.seed;
  options.pad = tokenizer->eos_id().value_or(0);
  if (!flags.log_rollouts.empty()) {
    // One file per rank: each samples its own prompts.
    options.rollout_log = flags.log_rollouts;
    if (launched.size > 1) options.rollout_log += fmt::format(".rank{}", launched.rank);
    if (!std::ofstream(options.rollout_log, std::ios::app))
      fail("--log-rollouts {}: cannot open it for appending", options.rollout_log);
  }
  auto reward = flags.reward_cmd.empty() ? train::builtin_reward(flags.reward)
                                         : train::external_reward(flags.reward_cmd, flags.reward_timeout);
  if (is_first_rank())
    fmt::print("grpo: {} prompts, {} completions each, at most {} tokens, temperature {}\n", prompts.size(),
               flags.group, flags.max_tokens, flags.temperature);
  return std::make_unique<train::GrpoData>(
      std::move(prompts), policy_sampler(tokenizer, sampler), std::move(reward),
      [reference, seq](const train::MicroBatch& rows) { return reference->token_logprobs(rows, seq); }, options);
}

}  // namespace

void add_grpo_command(CLI::App& app) {
  auto flags = std::make_shared<TrainFlags>();
  auto grpo = std::make_shared<GrpoFlags>();
  auto* command = app.add_subcommand(
      "grpo", "Group relative policy optimization: completions sampled from the model being trained, rewarded");
  command->add_option("--init", flags->trainer.init_dir, "the model directory to train (with its tokenizer)")
      ->required();
  command->add_option("--prompts", grpo->prompts, "JSONL: {\"prompt\": text or [messages], \"answer\": ...} per line")
      ->required();
  command->add_option("--reward", grpo->reward,
                      "exact (the final answer), format (<think>…</think> then an answer), "
                      "or regex:PATTERN (default exact)");
  command->add_option("--reward-cmd", grpo->reward_cmd,
                      "an external reward: JSON lines {prompt, completion, answer} in, one number per line out");
  command->add_option("--reward-timeout", grpo->reward_timeout, "seconds --reward-cmd may take per step (default 60)");
  command->add_option("--group", grpo->group, "completions per prompt (default 8)")->check(CLI::Range(2, 1024));
  command->add_option("--max-tokens", grpo->max_tokens, "tokens per completion (default 128)")
      ->check(CLI::PositiveNumber);
  command->add_option("--temperature", grpo->temperature, "sampling temperature (default 1)")
      ->check(CLI::Range(0.0, 2.0));
  command->add_option("--top-p", grpo->top_p, "nucleus sampling (default 1: off)")->check(CLI::Range(0.0, 1.0));
  command->add_option("--epsilon", grpo->epsilon, "the ratio's clip, 1 ± ε (default 0.2)");
  command->add_option("--beta", grpo->beta, "the KL penalty's weight (default 0.04)");
  command->add_option("--reference", grpo->reference, "the frozen model of the KL penalty (default: --init)");
  command->add_option("--log-rollouts", grpo->log_rollouts,
                      "append every completion here as a JSON line (tokens, text, the sampler's "
                      "log-probabilities, reward, advantage)");
  add_common_training_flags(command, *flags);
  command->callback(
      [flags, grpo] { run_training(*flags, [grpo](const train::TrainerOptions& o) { return grpo_data(*grpo, o); }); });
}

}  // namespace deepmoe::cli
