#include "train/grpo_data.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <fstream>

#include "core/error.h"

namespace deepmoe::train {

GrpoData::GrpoData(std::vector<GrpoPrompt> prompts, RolloutSampler sampler, std::unique_ptr<Reward> reward,
                   TokenScorer reference, const GrpoOptions& options)
    : prompts_(std::move(prompts)),
      sampler_(std::move(sampler)),
      reward_(std::move(reward)),
      reference_(std::move(reference)),
      options_(options),
      order_(prompts_.size(), options.seed) {
  if (prompts_.empty()) fail("GRPO needs at least one prompt");
  if (options_.group < 2)
    fail("--group must be >= 2 (advantages compare completions of one prompt), found {}", options_.group);
}

MicroBatch GrpoData::train_batch(int64_t first, int64_t count, int64_t step_examples) {
  if (!policy_) fail("GRPO samples from the policy being trained: attach() it first");
  const int64_t group = options_.group, seq = options_.seq;
  std::vector<const GrpoPrompt*> batch;
  for (int64_t k = first; k < first + count; ++k) batch.push_back(&prompts_[order_(k)]);
  // Completion c of the run's stream draws with seed + c whichever rank or micro-batch samples it.
  const std::vector<SampledCompletion> completions =
      sampler_(*policy_, batch, group, options_.seed * 1000003 + uint64_t(first * group));
  if (int64_t(completions.size()) != count * group)
    fail("the sampler returned {} completions for {} prompts x {}", completions.size(), count, group);

  MicroBatch m;
  m.metrics = std::make_shared<std::map<std::string, double>>();
  const double n = double(step_examples * group);  // the step's completions
  std::vector<Completion> scored;
  for (size_t i = 0; i < completions.size(); ++i) {
    const GrpoPrompt& p = *batch[i / size_t(group)];
    scored.push_back({p.text, completions[i].text, p.answer});
  }
  std::vector<double> rewards;
  bool skipped = false;
  try {
    rewards = reward_->score(scored);
  } catch (const RewardFailed& e) {
    fmt::print(stderr, "deepmoe: warning: the step's update is skipped: {}\n", e.what());
    rewards.assign(completions.size(), 0.0);
    skipped = true;
  }
  const std::vector<double> advantages = group_advantages(rewards, group);
  if (!options_.rollout_log.empty()) {
    std::ofstream log(options_.rollout_log, std::ios::app);
    for (size_t i = 0; i < completions.size(); ++i) {
      const GrpoPrompt& p = *batch[i / size_t(group)];
      log << nlohmann::json{{"example", first + int64_t(i) / group},
                            {"prompt", p.text},
                            {"prompt_tokens", p.tokens},
                            {"completion", completions[i].text},
                            {"tokens", completions[i].tokens},
                            {"logprobs", completions[i].logprobs},
                            {"reward", rewards[i]},
                            {"advantage", advantages[i]},
                            {"skipped", skipped}}
                 .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)  // a cut UTF-8 character
          << "\n";
    }
    if (!log) fail("{}: cannot append the rollouts", options_.rollout_log);
  }

  // Rows: prompt then completion, the completion's targets trained, each with the sampler's log-prob.
  m.rows = int64_t(completions.size());
  m.inputs.resize(size_t(m.rows * seq));
  m.targets.resize(m.inputs.size());
  std::vector<GrpoRow> rows(completions.size());
  for (size_t i = 0; i < completions.size(); ++i) {
    const GrpoPrompt& p = *batch[i / size_t(group)];
    SftExample e;
    e.tokens = p.tokens;
    e.tokens.insert(e.tokens.end(), completions[i].tokens.begin(), completions[i].tokens.end());
    e.trained.assign(p.tokens.size(), 0);
    e.trained.resize(e.tokens.size(), skipped ? 0 : 1);
    GrpoRow& row = rows[i];
    row.weights.resize(size_t(seq));
    lay_out_row(e, seq, options_.pad, &m.inputs[i * size_t(seq)], &m.targets[i * size_t(seq)], row.weights.data());
    row.old_logprobs.assign(size_t(seq), 0.0);
    for (size_t j = 0; j < completions[i].tokens.size(); ++j) {
      const size_t position = p.tokens.size() + j - 1;  // the target position that predicts completion token j
      if (position < size_t(seq)) row.old_logprobs[position] = completions[i].logprobs[j];
    }
    row.advantage = advantages[i];
    (*m.metrics)["reward"] += rewards[i] / n;
    (*m.metrics)["completion_length"] += double(completions[i].tokens.size()) / n;
  }
  const std::vector<double> reference = reference_(m);
  for (size_t i = 0; i < rows.size(); ++i)
    rows[i].ref_logprobs.assign(reference.begin() + ptrdiff_t(i * size_t(seq)),
                                reference.begin() + ptrdiff_t((i + 1) * size_t(seq)));
  for (const GrpoRow& row : rows)
    for (const double w : row.weights) m.trained_tokens += int64_t(w);
  (*m.metrics)["skipped"] += skipped ? 1.0 : 0.0;
  GrpoSettings settings = options_.objective;
  settings.completions_in_step = n;
  m.objective = grpo_objective(std::move(rows), seq, settings, m.metrics);
  m.weight = 1.0;
  m.share = double(count) / double(step_examples);
  return m;
}

}  // namespace deepmoe::train
