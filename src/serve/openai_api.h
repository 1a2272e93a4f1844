// The OpenAI wire format: request bodies of /v1/completions and /v1/chat/completions checked
// field by field into a CompletionRequest (every problem an ApiError naming the field, as
// OpenAI's own 400s do), and the response objects and stream chunks built from results.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "infer/sampler.h"
#include "serve/request_stream.h"
#include "tokenizer/tokenizer.h"

namespace deepmoe {

class ChatTemplate;

// An error the client caused or must hear about: an HTTP status and OpenAI's error object.
class ApiError : public std::runtime_error {
 public:
  ApiError(int status, std::string message, std::string param = {}, std::string type = "invalid_request_error")
      : std::runtime_error(std::move(message)), status_(status), param_(std::move(param)), type_(std::move(type)) {}
  int status() const { return status_; }
  const std::string& param() const { return param_; }
  const std::string& type() const { return type_; }

 private:
  int status_;
  std::string param_, type_;
};

// {"error": {"message", "type", "param", "code"}}
nlohmann::json error_body(const std::string& message, const std::string& type, const std::string& param);

struct ApiLimits {
  std::string model_id;           // the one model served
  int64_t context = 0;            // prompt + output tokens
  int64_t max_n = 8;              // choices per prompt
  int64_t max_prompts = 32;       // prompts per /v1/completions request (a batch)
  int64_t max_stop = 4;           // stop strings per request
  int64_t max_stop_bytes = 1024;  // bytes per stop string
  int64_t max_top_logprobs = 20;
  // Prompt text longer than this cannot fit the context (0: no bound); refused before it is
  // tokenized. See prompt_byte_bound.
  int64_t max_prompt_bytes = 0;
};

// Nesting deeper than this ([ and { inside each other) is refused before anything walks the body:
// nlohmann parses iteratively but copies, compares and dumps recursively. OpenAI's requests nest 5 deep.
inline constexpr int kMaxJsonNesting = 64;

// The longest text that can still be `context` tokens: each token spells at most the longest
// token's bytes. Counts only ids the tokenizer spells.
int64_t prompt_byte_bound(const Tokenizer& tokenizer, int64_t context);

struct CompletionRequest {
  bool chat = false;
  // One prompt, or (/v1/completions) a batch: n choices each, prompt p's choice i at index p * n + i.
  std::vector<std::vector<int32_t>> prompts;
  int64_t max_tokens = 0;
  SamplingParams sampling;
  bool seeded = false;
  std::vector<std::string> stop;
  bool logprobs = false;
  int64_t top_logprobs = 0;
  int64_t n = 1;
  bool stream = false;
  bool include_usage = false;
  bool ignore_eos = false;  // vLLM's extension: generate max_tokens whatever the model says (benchmarks)
  // /v1/completions: the prompt's tokens lead the text (and, with logprobs, their log-probabilities,
  // the first one null), as vLLM answers lm-evaluation-harness's log-likelihood requests.
  bool echo = false;
};

// Parses and checks a request body; `chat` selects /v1/chat/completions. Throws ApiError.
CompletionRequest parse_completion_request(const std::string& body, bool chat, const ApiLimits& limits,
                                           const Tokenizer& tokenizer, const ChatTemplate* chat_template);

// Parses a JSON object body or throws ApiError 400.
nlohmann::json parse_json_object(const std::string& body);

// One choice's text as tokens arrive: whole characters only, and text that could still become
// one of the stop strings held back until it cannot. A matched stop string ends the choice;
// neither it nor anything after it is returned.
class ChoiceText {
 public:
  ChoiceText(const Tokenizer& tokenizer, std::vector<std::string> stop);
  // The text that can be released after this token (possibly empty).
  std::string push(int32_t token);
  // The rest, once no more tokens will come.
  std::string finish();
  bool stopped() const { return stopped_; }

 private:
  std::string release(size_t end);
  // Ends the choice at a stop string in the decoded text, else releases what cannot start one
  // (everything when `final`).
  std::string scan(bool final);

  StreamingDecoder decoder_;
  std::vector<std::string> stop_;
  // Knuth-Morris-Pratt failure function of each stop string: the scan is linear in the text
  // it looks at, however long and repetitive the stop strings are.
  std::vector<std::vector<size_t>> failure_;
  std::string decoded_;  // everything decoded (up to a matched stop)
  size_t released_ = 0;
  bool stopped_ = false;
};

// "stop" (an end-of-sequence token or a stop string), "length", or "cancelled" / "error".
std::string finish_reason_name(FinishReason reason);

// Logprobs of one token in the chat format ({token, logprob, bytes, top_logprobs}).
nlohmann::json chat_logprob(const Tokenizer& tokenizer, const EngineToken& token);

// What one token (or the end) did to one choice: what a running request yields, and what the
// response builders below take.
struct ChoiceDelta {
  size_t index = 0;
  std::string text;                      // released by this token (may be empty: held back)
  std::optional<EngineToken> token;      // with logprobs when asked for
  std::optional<FinishReason> finished;  // the choice ended here
  // echo: the prompt's tokens, and (with logprobs) prompt_logprobs[i] scoring prompt[i + 1].
  std::vector<int32_t> prompt;
  std::vector<EngineToken> prompt_logprobs;
};

// The fields every object and stream chunk of one response shares.
struct ResponseIds {
  std::string id;       // "cmpl-..." or "chatcmpl-..."
  int64_t created = 0;  // Unix seconds
  std::string model;
  bool chat = false;  // /v1/chat/completions (messages and deltas) rather than /v1/completions (text)
};

struct Usage {
  int64_t prompt_tokens = 0, completion_tokens = 0;
  int64_t cached_tokens = 0;  // prompt tokens served from the prefix cache
  // Speculative decoding: drafts verified, drafts accepted (over the request's choices).
  int64_t drafted_tokens = 0, accepted_tokens = 0;
};

// {prompt_tokens, completion_tokens, total_tokens, prompt_tokens_details: {cached_tokens}}, and
// with speculation completion_tokens_details: {accepted_prediction_tokens,
// rejected_prediction_tokens} (OpenAI's fields for predicted tokens kept and thrown away).
nlohmann::json usage_json(const Usage& usage);

// A whole response, "text_completion" or "chat.completion", with n_choices choices made of all
// the deltas of a finished request in order; each choice's logprobs (when `logprobs`) in its
// endpoint's format, else null.
nlohmann::json completion_response(const ResponseIds& ids, size_t n_choices, const std::vector<ChoiceDelta>& deltas,
                                   bool logprobs, const Usage& usage, const Tokenizer& tokenizer);

// A chat stream's first chunk: each choice's role, with empty content.
nlohmann::json chat_role_chunk(const ResponseIds& ids, size_t n_choices);

// The stream chunk ("text_completion" or "chat.completion.chunk") of one delta, or nothing when
// the delta has nothing to tell (its text held back, no finish, no logprobs asked for).
// text_offset: the bytes of the choice's text streamed before this delta (the completions
// format's logprobs.text_offset).
std::optional<nlohmann::json> stream_chunk(const ResponseIds& ids, const ChoiceDelta& delta, bool logprobs,
                                           int64_t text_offset, const Tokenizer& tokenizer);

// A stream's last chunk when stream_options.include_usage asked for it: no choices, the usage.
nlohmann::json usage_chunk(const ResponseIds& ids, const Usage& usage);

// /v1/models/{id}: the one model served. `created`: when the server started (Unix seconds).
nlohmann::json model_object(const ApiLimits& limits, int64_t created);
// /v1/models: the list of that one.
nlohmann::json model_list(const ApiLimits& limits, int64_t created);

}  // namespace deepmoe
