#include "train/reference_model.h"

namespace deepmoe::train {

ReferenceModel::ReferenceModel(const std::string& model_dir, int threads, GemmPrecision precision)
    : p_(Parameters::load(model_dir)), graph_(p_.config(), threads, precision) {}

std::vector<double> ReferenceModel::token_logprobs(const MicroBatch& rows, int64_t seq) {
  std::vector<double> logprobs;
  graph_.run(p_, rows.inputs, rows.targets, rows.rows, seq, 0.0, false, 1.0f, {}, {}, &logprobs);
  return logprobs;
}

}  // namespace deepmoe::train
