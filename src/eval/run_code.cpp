#include "eval/run_code.h"

#include <algorithm>
#include <thread>

#include "core/error.h"
#include "eval/concurrently.h"

namespace deepmoe::eval {

TaskResult run_humaneval(Backend& backend, const std::vector<CodeTask>& tasks, const CodeOptions& options, TaskIo& io,
                         std::vector<Generation>& generations) {
  for (const int64_t k : options.k)
    if (k < 1 || k > options.samples) fail("pass@{}: k must be in [1, {}] (the samples per task)", k, options.samples);
  const int workers = options.workers > 0 ? options.workers : int(std::max(1u, std::thread::hardware_concurrency()));
  std::vector<std::pair<std::string, std::vector<double>>> scores;
  for (const int64_t k : options.k) scores.push_back({fmt::format("pass@{},create_test", k), {}});
  // A few tasks at a time: their completions generated together, then their programs run.
  const size_t slice = size_t(std::max<int64_t>(1, 64 / options.samples));
  for (size_t begin = 0; begin < tasks.size(); begin += slice) {
    const size_t end = std::min(tasks.size(), begin + slice);
    std::vector<GenerationRequest> requests;
    for (size_t t = begin; t < end; ++t)
      for (int64_t s = 0; s < options.samples; ++s) {
        GenerationRequest r;
        r.prompt = tasks[t].prompt;
        r.stop = humaneval_stop_sequences();
        r.max_tokens = options.max_gen_toks > 0 ? options.max_gen_toks : kHumanEvalMaxGenTokens;
        r.sampling = options.sampling;
        r.sampling.seed = options.sampling.seed + uint64_t(s);
        requests.push_back(std::move(r));
      }
    const std::vector<Generation> completions = backend.generate(requests);
    std::vector<std::string> programs;
    for (size_t j = 0; j < completions.size(); ++j)
      programs.push_back(humaneval_program(tasks[begin + j / size_t(options.samples)], completions[j].text));
    std::vector<SandboxResult> runs(programs.size());
    run_concurrently(programs.size(), workers, [&](size_t j) { runs[j] = run_python(programs[j], options.limits); });
    for (size_t t = begin; t < end; ++t) {
      int64_t passed = 0;
      for (int64_t s = 0; s < options.samples; ++s) {
        const size_t j = (t - begin) * size_t(options.samples) + size_t(s);
        passed += runs[j].passed() ? 1 : 0;
        if (io.log_sample)
          io.log_sample({{"task", "humaneval"},
                         {"doc_id", t},
                         {"task_id", tasks[t].task_id},
                         {"sample", s},
                         {"completion", completions[j].text},
                         {"outcome", outcome_name(runs[j].outcome)},
                         {"passed", runs[j].passed()},
                         {"seconds", runs[j].seconds},
                         {"output_tail", runs[j].passed() ? std::string() : runs[j].output_tail}});
        generations.push_back(completions[j]);
      }
      for (size_t m = 0; m < options.k.size(); ++m)
        scores[m].second.push_back(pass_at_k(options.samples, passed, options.k[m]));
    }
    if (io.progress) io.progress->advance(int64_t(completions.size()));
  }
  return {"humaneval", std::move(scores)};
}

}  // namespace deepmoe::eval
