// Training checkpoints that survive anything: OUT/checkpoints/step-N holds the weights
// (model.safetensors, HF names, F32, loadable by every command), the optimizer moments
// (optimizer.safetensors), config.json and state.json (step, optimizer steps, the run's
// settings). Each is written into step-N.partial, flushed, and renamed into place, so a kill
// or a full disk mid-save leaves the previous checkpoint as it was.
#pragma once
#include <nlohmann/json.hpp>

#include <optional>
#include <string>

#include "train/optimizer.h"
#include "train/parameters.h"

namespace deepmoe::train {

// Saves step `step` (the number of optimizer steps done) and then deletes all but the newest
// `keep_last` checkpoints. Throws Error (the previous checkpoints untouched) when it cannot.
void save_checkpoint(const std::string& out_dir, int64_t step, const Parameters& p, const Optimizer& optimizer,
                     const nlohmann::json& state, int64_t keep_last);

// The newest complete checkpoint directory under out_dir/checkpoints, if any.
std::optional<std::string> newest_checkpoint(const std::string& out_dir);

// Restores weights and optimizer moments; returns state.json. Throws Error naming what is wrong.
nlohmann::json load_checkpoint(const std::string& dir, Parameters& p, Optimizer& optimizer);

}  // namespace deepmoe::train
