// HellaSwag in the text layout llama.cpp's llama-perplexity reads (--hellaswag -f FILE): six lines
// per task, the context ("{activity_label}: {ctx}"), the gold ending's index (0-3), then the four
// endings. The file holds text already preprocessed as lm-evaluation-harness's hellaswag task
// preprocesses it (brackets removed, " [title]" as ". ", ctx_b capitalized); llama.cpp reads the
// lines as they are, and so do we.
//
// Both score each ending as context + " " + ending: llama.cpp tokenizes that string whole, lm-eval
// poses the context with the continuation " " + ending (its target_delimiter). So each choice here
// is the ending with the delimiter " ", and the context is the line unchanged. The scores differ in their
// normalization: llama.cpp's (it calls it acc_norm) is the mean log-probability per token after the four sequences'
// common prefix; lm-eval's acc_norm divides by the ending's length in characters.
#pragma once
#include <string>
#include <vector>

#include "eval/multiple_choice.h"

namespace deepmoe::eval {

// The tasks in file order (llama.cpp draws them at random; we take them all). CRLF line ends and
// blank lines after the last task are accepted. Throws Error naming the file and line for a gold
// line other than 0, 1, 2 or 3, for a file that ends mid-task, and for a file with no task.
std::vector<Question> load_hellaswag(const std::string& path);

}  // namespace deepmoe::eval
