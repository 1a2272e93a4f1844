// MMLU in its original CSV layout ({subject}_dev.csv, {subject}_test.csv, ...: no header, one
// `question,A,B,C,D,answer` row per question, anywhere under a directory), posed as
// lm-evaluation-harness's default mmlu task poses it: the subject line "The following are multiple
// choice questions (with answers) about {subject, underscores as spaces}.\n\n", the first K dev
// questions as worked examples, each "{question}\nA. ..\nB. ..\nC. ..\nD. ..\nAnswer: {letter}\n\n",
// then the question without its letter; the choices are " A" .. " D".
#pragma once
#include <string>
#include <vector>

#include "eval/multiple_choice.h"

namespace deepmoe::eval {

struct Subject {
  std::string name;  // abstract_algebra
  std::vector<Question> questions;
};

// Every subject with a {subject}_{split}.csv under `dir` (sorted by name), its questions with
// num_fewshot examples from {subject}_dev.csv. Throws Error naming the file and row for a row
// that is not six fields with an answer of A-D, when fewer dev questions than num_fewshot exist,
// or when no subject is found.
std::vector<Subject> load_mmlu(const std::string& dir, const std::string& split, int num_fewshot);

}  // namespace deepmoe::eval
