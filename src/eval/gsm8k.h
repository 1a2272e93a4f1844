// GSM8K, generated and scored as lm-evaluation-harness's generate_until tasks gsm8k (v3.0,
// lm_eval/tasks/gsm8k/gsm8k.yaml) and gsm8k_cot (v3.0, gsm8k-cot.yaml) do it:
//
//   gsm8k:      "Question: {question}\nAnswer:", 5 shots; a shot's target is its whole answer (the
//               worked solution ending "#### N"); stops "Question:", "</s>", "<|im_end|>".
//   gsm8k-cot:  "Q: {question}\nA:", 8 shots; a target is answer.split('####')[-1].strip(); stops
//               "Q:", "</s>", "<|im_end|>".
//
// Both: shots joined as "{text} {target}\n\n" (target_delimiter " ", fewshot_delimiter "\n\n"),
// then the question's own text; greedy decoding, at most 256 new tokens (no max_gen_toks in either
// YAML: the model's default). lm-eval's HF model also stops at its EOS token's text.
//
// We ship no dataset text: the shots are the first K rows of a JSONL the user gives. lm-eval's
// gsm8k draws K random train rows; gsm8k_cot uses eight fixed exemplars (first_n) whose target is a
// chain of thought ending "The answer is N.". For gsm8k-cot give rows {question, answer} whose
// answer is such a chain of thought: with no "####" in it, the split above keeps it whole
// (stripped). A GSM8K train row ("... #### N") would become the bare target "N", as lm-eval makes it.
#pragma once
#include <string>
#include <string_view>
#include <vector>

namespace deepmoe::eval {

enum class Gsm8kVariant { Plain, Cot };  // lm-eval's gsm8k, gsm8k_cot

// "gsm8k" or "gsm8k-cot" (also lm-eval's "gsm8k_cot"); throws Error for anything else.
Gsm8kVariant parse_gsm8k_variant(const std::string& name);

struct Problem {
  std::string question, answer;
};

// One {"question": str, "answer": str} per line (other fields ignored, blank lines skipped).
// Throws Error naming the file and line for anything else, and for a file with no problem.
std::vector<Problem> load_gsm8k_jsonl(const std::string& path);

int gsm8k_default_fewshot(Gsm8kVariant variant);  // 5, 8
int gsm8k_max_gen_toks(Gsm8kVariant variant);     // 256
std::vector<std::string> gsm8k_stop_sequences(Gsm8kVariant variant);

// doc_to_target: the whole answer (gsm8k), or what follows its last "####", stripped (gsm8k-cot).
// It is a shot's target in the prompt and the reference exact_match compares against.
std::string gsm8k_target(Gsm8kVariant variant, const std::string& answer);

// The prompt: every shot given, then the problem's question (its answer unused).
std::string gsm8k_prompt(Gsm8kVariant variant, const std::vector<Problem>& fewshot, const Problem& p);

// lm-eval's regex filter's fallback, when the pattern finds nothing.
inline constexpr std::string_view kInvalidAnswer = "[invalid]";

// The "strict-match" filter: the first match's group of "#### (\-?[0-9\.\,]+)" (gsm8k) or
// "The answer is (\-?[0-9\.\,]+)." (gsm8k-cot; the final "." is any character but a newline).
std::string extract_strict(Gsm8kVariant variant, std::string_view text);
// The "flexible-extract" filter (both variants): the last match of
// "(-?[$0-9.,]{2,})|(-?[0-9]+)", as Python's findall finds matches left to right.
std::string extract_flexible(std::string_view text);

// lm-eval's exact_match as both YAMLs configure it: on both sides remove every match of ",", "\$",
// "(?s).*#### " and "\.$" (in that order, Python's `$`: the end or before a final newline), then
// lowercase (ASCII letters only; Python lowercases all of Unicode) and compare. The reference is
// gsm8k_target's; for gsm8k that is the whole answer, whose "...#### " the third pattern removes.
bool exact_match(std::string_view prediction, std::string_view reference);

}  // namespace deepmoe::eval
