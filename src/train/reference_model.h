// A frozen model scored forward-only with the trainer's own graph: the reference of DPO and GRPO
// (log-probabilities of the rows' targets), loaded once and kept apart from the trained weights.
#pragma once
#include <string>
#include <vector>

#include "kernels/context.h"
#include "train/model_train.h"
#include "train/parameters.h"
#include "train/training_data.h"

namespace deepmoe::train {

class ReferenceModel {
 public:
  // GEMMs in `precision`, as training's, so that the reference equals the policy it started as.
  ReferenceModel(const std::string& model_dir, int threads, GemmPrecision precision);
  // log p(target) at every position of the rows ([rows * seq]).
  std::vector<double> token_logprobs(const MicroBatch& rows, int64_t seq);

 private:
  Parameters p_;
  TrainGraph graph_;
};

}  // namespace deepmoe::train
