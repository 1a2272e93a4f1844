// The speed figures every results file carries beside the scores: a latency probe (one request
// alone: prompt ms/token, time to first token, decode ms/token) and, for generation tasks, the
// same figures over the task's own requests as they ran batched.
#pragma once
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "eval/backend.h"

namespace deepmoe::eval {

// Runs `prompt` alone, greedy, `tokens` tokens whatever the model says.
nlohmann::json latency_probe(Backend& backend, const std::string& prompt, int64_t tokens = 32);

// Means and medians over a task's generations (decode ms/token over those of two or more tokens).
nlohmann::json generation_speed(const std::vector<Generation>& generations);

}  // namespace deepmoe::eval
