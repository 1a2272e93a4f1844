#include "train/ewc.h"

#include <filesystem>

#include "core/error.h"
#include "io/token_windows.h"
#include "train/model_train.h"

namespace deepmoe::train {

namespace fs = std::filesystem;

void compute_fisher(const FisherOptions& o) {
  if (o.samples < 1 || o.seq < 1) fail("--samples and --seq must be >= 1");
  Parameters p = Parameters::load(o.model_dir);
  TrainGraph graph(p.config(), o.threads);
  const TokenWindows windows(o.data_path, o.seq, WindowOrder::Sequential, 0);
  std::vector<double> fisher(p.grads().size(), 0.0);
  std::vector<int32_t> inputs, targets;
  for (int64_t s = 0; s < o.samples; ++s) {
    // One sequence at a time: the Fisher is the mean of squared per-sequence gradients, not the
    // square of a batch's mean.
    windows.windows(s, 1, 1, inputs, targets);
    p.zero_grads(graph.context().pool());
    graph.run(p, inputs, targets, 1, o.seq, 0.0, true);
    const std::vector<float>& g = p.grads();
    for (size_t i = 0; i < g.size(); ++i) fisher[i] += double(g[i]) * double(g[i]) / double(o.samples);
  }
  fs::create_directories(o.out_dir);
  p.save((fs::path(o.out_dir) / "anchor").string());
  for (size_t i = 0; i < fisher.size(); ++i) p.grads()[i] = float(fisher[i]);
  p.save((fs::path(o.out_dir) / "fisher").string(), Parameters::Which::Grads);
}

ElasticPenalty::ElasticPenalty(const std::string& dir, const Parameters& like, double lambda)
    : anchor_(Parameters::load((fs::path(dir) / "anchor").string(), like.expert_share())),
      fisher_(Parameters::load((fs::path(dir) / "fisher").string(), like.expert_share())),
      lambda_(lambda) {
  if (!(lambda_ >= 0) || !std::isfinite(lambda_)) fail("--ewc-lambda must be >= 0, found {}", lambda_);
  for (const Parameters* q : {&anchor_, &fisher_})
    if (q->values().size() != like.values().size())
      fail("--ewc {}: made for a model of {} parameters, not this one's {}", dir, q->values().size(),
           like.values().size());
}

double ElasticPenalty::add_to(const Parameters& p, dist::Shard shard, std::span<float> grads) const {
  if (grads.size() != shard.size()) fail("ewc: {} gradients for a shard of {}", grads.size(), shard.size());
  const std::vector<float>&theta = p.values(), &anchor = anchor_.values(), &fisher = fisher_.values();
  double penalty = 0;
  for (size_t i = 0; i < grads.size(); ++i) {
    const size_t at = shard.begin + i;
    const double d = double(theta[at]) - double(anchor[at]);
    grads[i] += float(lambda_ * double(fisher[at]) * d);
    penalty += 0.5 * lambda_ * double(fisher[at]) * d * d;
  }
  return penalty;
}

}  // namespace deepmoe::train
