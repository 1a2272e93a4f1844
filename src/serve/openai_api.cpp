#include "serve/openai_api.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "tokenizer/chat_template.h"

namespace deepmoe {

using nlohmann::json;

json error_body(const std::string& message, const std::string& type, const std::string& param) {
  return {{"error",
           {{"message", message},
            {"type", type},
            {"param", param.empty() ? json(nullptr) : json(param)},
            {"code", nullptr}}}};
}

namespace {

// The deepest nesting of arrays and objects in `text`, counting brackets outside strings; stops
// counting past `limit`. Malformed text is the parser's business, not this scan's.
int json_nesting(const std::string& text, int limit) {
  int depth = 0, deepest = 0;
  bool in_string = false, escaped = false;
  for (const char c : text) {
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
      if (deepest > limit) return deepest;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return deepest;
}

}  // namespace

json parse_json_object(const std::string& body) {
  if (json_nesting(body, kMaxJsonNesting) > kMaxJsonNesting)
    throw ApiError(400, fmt::format("the request body nests arrays and objects more than {} deep", kMaxJsonNesting));
  json parsed = json::parse(body, nullptr, false);
  if (parsed.is_discarded()) throw ApiError(400, "the request body is not valid JSON");
  if (!parsed.is_object()) throw ApiError(400, "the request body must be a JSON object");
  return parsed;
}

namespace {

[[noreturn]] void bad_field(const std::string& param, const std::string& message) {
  throw ApiError(400, fmt::format("'{}': {}", param, message), param);
}

// The field, or nullptr when absent or null (OpenAI treats null as absent).
const json* field(const json& body, const char* name) {
  auto it = body.find(name);
  return it == body.end() || it->is_null() ? nullptr : &*it;
}

double number_field(const json& body, const char* name, double fallback, double low, double high) {
  const json* value = field(body, name);
  if (!value) return fallback;
  if (!value->is_number()) bad_field(name, "expected a number");
  const double x = value->get<double>();
  if (!(x >= low && x <= high)) bad_field(name, fmt::format("{} is outside [{}, {}]", x, low, high));
  return x;
}

std::optional<int64_t> integer_field(const json& body, const char* name, int64_t low, int64_t high) {
  const json* value = field(body, name);
  if (!value) return std::nullopt;
  if (!value->is_number_integer()) bad_field(name, "expected an integer");
  if (value->is_number_unsigned() && value->get<uint64_t>() > uint64_t(INT64_MAX)) bad_field(name, "too large");
  const int64_t x = value->get<int64_t>();
  if (x < low || x > high) bad_field(name, fmt::format("{} is outside [{}, {}]", x, low, high));
  return x;
}

bool bool_field(const json& body, const char* name, bool fallback) {
  const json* value = field(body, name);
  if (!value) return fallback;
  if (!value->is_boolean()) bad_field(name, "expected true or false");
  return value->get<bool>();
}

// A message's content: a string, or an array of {"type": "text", "text": ...} parts.
std::string message_content(const json& content, const std::string& param) {
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array()) bad_field(param, "expected a string or an array of text parts");
  std::string text;
  for (size_t i = 0; i < content.size(); ++i) {
    const json& part = content[i];
    const std::string part_param = fmt::format("{}[{}]", param, i);
    if (!part.is_object() || part.value("type", json()) != "text" || !part.contains("text") ||
        !part["text"].is_string())
      bad_field(part_param, "only {\"type\": \"text\", \"text\": ...} parts are supported");
    text += part["text"].get<std::string>();
  }
  return text;
}

// Refuses text that cannot fit the context whatever it tokenizes to, before tokenizing it.
void check_prompt_bytes(size_t bytes, const ApiLimits& limits, const char* param) {
  if (limits.max_prompt_bytes > 0 && int64_t(bytes) > limits.max_prompt_bytes)
    bad_field(param, fmt::format("{} bytes of prompt text cannot fit this model's context of {} tokens", bytes,
                                 limits.context));
}

std::vector<int32_t> chat_prompt(const json& body, const ApiLimits& limits, const Tokenizer& tokenizer,
                                 const ChatTemplate* chat_template) {
  const json* messages = field(body, "messages");
  if (!messages) bad_field("messages", "required");
  if (!messages->is_array()) bad_field("messages", "expected an array of messages");
  if (messages->empty()) bad_field("messages", "must hold at least one message");
  if (!chat_template) throw ApiError(400, "this model has no chat template; use /v1/completions", "messages");
  json rendered = json::array();
  for (size_t i = 0; i < messages->size(); ++i) {
    const json& message = (*messages)[i];
    const std::string param = fmt::format("messages[{}]", i);
    if (!message.is_object()) bad_field(param, "expected an object with role and content");
    const json* role = field(message, "role");
    if (!role || !role->is_string()) bad_field(param + ".role", "expected a string");
    std::string name = role->get<std::string>();
    if (name == "developer") name = "system";  // OpenAI's newer name for the system role
    if (name != "system" && name != "user" && name != "assistant")
      bad_field(param + ".role", fmt::format("'{}' is not one of system, developer, user, assistant", name));
    const json* content = field(message, "content");
    if (!content) bad_field(param + ".content", "required");
    rendered.push_back({{"role", name}, {"content", message_content(*content, param + ".content")}});
  }
  std::string prompt;
  try {
    prompt = chat_template->render(rendered, true, tokenizer.bos_token(), tokenizer.eos_token());
  } catch (const Error& e) {
    throw ApiError(400, fmt::format("the chat template failed on these messages: {}", e.what()), "messages");
  }
  check_prompt_bytes(prompt.size(), limits, "messages");
  return tokenizer.encode(prompt, false);
}

// /v1/completions' prompt: a string, an array of token ids, or a batch of either (OpenAI's
// forms; lm-evaluation-harness sends a batch of token-id arrays).
std::vector<std::vector<int32_t>> completion_prompts(const json& body, const ApiLimits& limits,
                                                     const Tokenizer& tokenizer) {
  const json* prompt = field(body, "prompt");
  if (!prompt) bad_field("prompt", "required");
  auto encode = [&](const json& text, const std::string& param) {
    check_prompt_bytes(text.get_ref<const std::string&>().size(), limits, param.c_str());
    return tokenizer.encode(text.get<std::string>(), true);
  };
  auto ids_of = [&](const json& array, const std::string& param) {
    std::vector<int32_t> ids;
    for (size_t i = 0; i < array.size(); ++i) {
      const json& id = array[i];
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= tokenizer.id_limit())
        bad_field(fmt::format("{}[{}]", param, i), fmt::format("expected a token id in [0, {})", tokenizer.id_limit()));
      ids.push_back(int32_t(id.get<int64_t>()));
    }
    return ids;
  };
  if (prompt->is_string()) return {encode(*prompt, "prompt")};
  if (!prompt->is_array() || prompt->empty())
    bad_field("prompt", "expected a string, an array of token ids, or an array of either");
  if ((*prompt)[0].is_number()) return {ids_of(*prompt, "prompt")};
  if (int64_t(prompt->size()) > limits.max_prompts)
    bad_field("prompt", fmt::format("at most {} prompts per request", limits.max_prompts));
  std::vector<std::vector<int32_t>> prompts;
  for (size_t p = 0; p < prompt->size(); ++p) {
    const json& one = (*prompt)[p];
    const std::string param = fmt::format("prompt[{}]", p);
    if (one.is_string()) prompts.push_back(encode(one, param));
    else if (one.is_array()) prompts.push_back(ids_of(one, param));
    else bad_field(param, "expected a string or an array of token ids");
  }
  return prompts;
}

}  // namespace

CompletionRequest parse_completion_request(const std::string& body_text, bool chat, const ApiLimits& limits,
                                           const Tokenizer& tokenizer, const ChatTemplate* chat_template) {
  const json body = parse_json_object(body_text);
  CompletionRequest r;
  r.chat = chat;
  if (const json* model = field(body, "model")) {
    if (!model->is_string()) bad_field("model", "expected a string");
    if (model->get<std::string>() != limits.model_id)
      throw ApiError(400,
                     fmt::format("the model '{}' does not exist; this server has '{}'", model->get<std::string>(),
                                 limits.model_id),
                     "model");
  }
  // Features that would change the answer: refused rather than ignored.
  for (const char* name : {"tools", "functions", "suffix"})
    if (field(body, name)) bad_field(name, "not supported by this server");
  r.echo = bool_field(body, "echo", false);
  if (r.echo && chat) bad_field("echo", "only /v1/completions echoes the prompt");
  if (const json* bias = field(body, "logit_bias"); bias && !(bias->is_object() && bias->empty()))
    bad_field("logit_bias", "not supported by this server");
  if (const json* format = field(body, "response_format");
      format && !(format->is_object() && format->value("type", json()) == "text"))
    bad_field("response_format", "only {\"type\": \"text\"} is supported");
  for (const char* name : {"presence_penalty", "frequency_penalty"})
    if (number_field(body, name, 0.0, -2.0, 2.0) != 0.0)
      bad_field(name, "only 0 is supported (see repetition_penalty)");

  r.stream = bool_field(body, "stream", false);
  if (r.echo && r.stream) bad_field("echo", "not supported with stream: true");
  r.ignore_eos = bool_field(body, "ignore_eos", false);
  if (const json* options = field(body, "stream_options")) {
    if (!r.stream) bad_field("stream_options", "only allowed with stream: true");
    if (!options->is_object()) bad_field("stream_options", "expected an object");
    r.include_usage = bool_field(*options, "include_usage", false);
  }
  r.n = integer_field(body, "n", 1, limits.max_n).value_or(1);
  if (auto best_of = integer_field(body, "best_of", 1, limits.max_n); best_of && *best_of != r.n)
    bad_field("best_of", "only best_of equal to n is supported");

  r.sampling.temperature = float(number_field(body, "temperature", 1.0, 0.0, 2.0));
  r.sampling.top_p = float(number_field(body, "top_p", 1.0, 0.0, 1.0));
  if (r.sampling.top_p <= 0.0f) bad_field("top_p", "must be > 0");
  const int64_t top_k = integer_field(body, "top_k", -1, INT32_MAX).value_or(0);
  r.sampling.top_k = top_k < 0 ? 0 : top_k;  // -1 and 0: off (vLLM's convention)
  r.sampling.min_p = float(number_field(body, "min_p", 0.0, 0.0, 1.0));
  r.sampling.repetition_penalty = float(number_field(body, "repetition_penalty", 1.0, 0.0, 10.0));
  if (r.sampling.repetition_penalty <= 0.0f) bad_field("repetition_penalty", "must be > 0");
  if (auto seed = integer_field(body, "seed", INT64_MIN, INT64_MAX)) {
    r.sampling.seed = uint64_t(*seed);
    r.seeded = true;
  }

  if (const json* stop = field(body, "stop")) {
    if (stop->is_string()) {
      r.stop.push_back(stop->get<std::string>());
    } else if (stop->is_array()) {
      if (int64_t(stop->size()) > limits.max_stop)
        bad_field("stop", fmt::format("at most {} strings", limits.max_stop));
      for (const json& s : *stop) {
        if (!s.is_string()) bad_field("stop", "expected a string or an array of strings");
        r.stop.push_back(s.get<std::string>());
      }
    } else {
      bad_field("stop", "expected a string or an array of strings");
    }
    for (const std::string& s : r.stop) {
      if (s.empty()) bad_field("stop", "stop strings must not be empty");
      if (int64_t(s.size()) > limits.max_stop_bytes)
        bad_field("stop", fmt::format("a stop string of {} bytes; at most {}", s.size(), limits.max_stop_bytes));
    }
  }

  if (chat) {
    r.logprobs = bool_field(body, "logprobs", false);
    if (auto top = integer_field(body, "top_logprobs", 0, limits.max_top_logprobs)) {
      if (!r.logprobs) bad_field("top_logprobs", "requires logprobs: true");
      r.top_logprobs = *top;
    }
  } else if (auto top = integer_field(body, "logprobs", 0, limits.max_top_logprobs)) {
    r.logprobs = true;
    r.top_logprobs = *top;
  }

  if (chat) r.prompts = {chat_prompt(body, limits, tokenizer, chat_template)};
  else r.prompts = completion_prompts(body, limits, tokenizer);
  const char* prompt_param = chat ? "messages" : "prompt";
  int64_t prompt_tokens = 0;  // the longest prompt's
  for (const auto& prompt : r.prompts) {
    if (prompt.empty()) bad_field(prompt_param, "the prompt is empty");
    if (int64_t(prompt.size()) >= limits.context)
      throw ApiError(400,
                     fmt::format("this model's context holds {} tokens; the prompt has {} (and needs room for 1 more)",
                                 limits.context, prompt.size()),
                     prompt_param);
    prompt_tokens = std::max(prompt_tokens, int64_t(prompt.size()));
  }
  const char* max_name = field(body, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  // max_tokens 0 with echo: the prompt's log-probabilities only.
  if (auto max_tokens = integer_field(body, max_name, r.echo ? 0 : 1, INT64_MAX)) {
    if (*max_tokens > limits.context - prompt_tokens)  // not prompt + max: that overflows near INT64_MAX
      bad_field(max_name, fmt::format("{} tokens do not fit: the prompt has {} and the context holds {}", *max_tokens,
                                      prompt_tokens, limits.context));
    r.max_tokens = *max_tokens;
  } else {
    r.max_tokens = limits.context - prompt_tokens;
  }
  return r;
}

int64_t prompt_byte_bound(const Tokenizer& tokenizer, int64_t context) {
  size_t longest = 1;
  for (int32_t id = 0; id < tokenizer.id_limit(); ++id)
    if (tokenizer.spells(id)) longest = std::max(longest, tokenizer.token_bytes(id).size());
  return context * int64_t(longest);
}

ChoiceText::ChoiceText(const Tokenizer& tokenizer, std::vector<std::string> stop)
    : decoder_(tokenizer, true), stop_(std::move(stop)) {
  for (const std::string& s : stop_) {
    std::vector<size_t> failure(s.size(), 0);  // longest proper prefix of s[0..i] that ends at i
    for (size_t i = 1, k = 0; i < s.size(); ++i) {
      while (k > 0 && s[i] != s[k]) k = failure[k - 1];
      if (s[i] == s[k]) ++k;
      failure[i] = k;
    }
    failure_.push_back(std::move(failure));
  }
}

std::string ChoiceText::release(size_t end) {
  if (end <= released_) return {};
  std::string out = decoded_.substr(released_, end - released_);
  released_ = end;
  return out;
}

std::string ChoiceText::push(int32_t token) {
  if (stopped_) return {};
  decoded_ += decoder_.push(token);
  return scan(false);
}

std::string ChoiceText::finish() {
  if (stopped_) return {};
  decoded_ += decoder_.finish();
  return scan(true);
}

std::string ChoiceText::scan(bool final) {
  // A match starts in text not yet released (any start of a stop string was held back), so each
  // stop string's automaton runs over the unreleased text only. Where it ends without a match,
  // its state is the longest tail that starts that stop string: that tail is held back.
  size_t match = std::string::npos, hold = 0;
  for (size_t s = 0; s < stop_.size(); ++s) {
    const std::string& stop = stop_[s];
    const std::vector<size_t>& failure = failure_[s];
    size_t matched = 0;
    for (size_t i = released_; i < decoded_.size(); ++i) {
      while (matched > 0 && decoded_[i] != stop[matched]) matched = failure[matched - 1];
      if (decoded_[i] == stop[matched]) ++matched;
      if (matched == stop.size()) {
        match = std::min(match, i + 1 - stop.size());
        break;
      }
    }
    if (matched < stop.size()) hold = std::max(hold, matched);
  }
  if (match != std::string::npos) {
    stopped_ = true;
    decoded_.resize(match);
    return release(match);
  }
  return release(final ? decoded_.size() : decoded_.size() - hold);
}

std::string finish_reason_name(FinishReason reason) {
  switch (reason) {
    case FinishReason::Length: return "length";
    case FinishReason::Cancelled: return "cancelled";  // only when the server drains
    case FinishReason::Error: return "error";
    default: return "stop";
  }
}

namespace {

// A token's text in logprobs: empty for an id the tokenizer cannot spell (never sampled, but it
// may be among a prompt token's most likely alternatives).
std::string token_text(const Tokenizer& tokenizer, int32_t id) {
  return tokenizer.spells(id) ? tokenizer.token_bytes(id) : std::string();
}

}  // namespace

nlohmann::json chat_logprob(const Tokenizer& tokenizer, const EngineToken& token) {
  auto entry = [&](int32_t id, float logprob) {
    const std::string bytes = token_text(tokenizer, id);
    return json{{"token", bytes},
                {"logprob", logprob},
                {"bytes", std::vector<int>(reinterpret_cast<const unsigned char*>(bytes.data()),
                                           reinterpret_cast<const unsigned char*>(bytes.data()) + bytes.size())}};
  };
  json out = entry(token.token, token.logprob);
  out["top_logprobs"] = json::array();
  for (const TokenLogprob& top : token.top) out["top_logprobs"].push_back(entry(top.token, top.logprob));
  return out;
}

json usage_json(const Usage& usage) {
  json out = {{"prompt_tokens", usage.prompt_tokens},
              {"completion_tokens", usage.completion_tokens},
              {"total_tokens", usage.prompt_tokens + usage.completion_tokens},
              {"prompt_tokens_details", {{"cached_tokens", usage.cached_tokens}}}};
  if (usage.drafted_tokens > 0)
    out["completion_tokens_details"] = {{"accepted_prediction_tokens", usage.accepted_tokens},
                                        {"rejected_prediction_tokens", usage.drafted_tokens - usage.accepted_tokens}};
  return out;
}

namespace {

// The completions format's logprobs of a run of tokens: parallel arrays, text_offset the byte
// where each token's text starts in the choice's text.
struct CompletionLogprobs {
  json tokens = json::array(), token_logprobs = json::array(), top_logprobs = json::array(),
       text_offset = json::array();
  void add(const Tokenizer& tokenizer, const EngineToken& token, int64_t offset) {
    tokens.push_back(token_text(tokenizer, token.token));
    token_logprobs.push_back(token.logprob);
    json top = json::object();
    for (const TokenLogprob& entry : token.top) top[token_text(tokenizer, entry.token)] = entry.logprob;
    top_logprobs.push_back(top);
    text_offset.push_back(offset);
  }
  // An echoed prompt's first token: nothing before it to score it by.
  void add_unscored(const Tokenizer& tokenizer, int32_t token, int64_t offset) {
    tokens.push_back(token_text(tokenizer, token));
    token_logprobs.push_back(nullptr);
    top_logprobs.push_back(nullptr);
    text_offset.push_back(offset);
  }
  json to_json() const {
    return {{"tokens", tokens},
            {"token_logprobs", token_logprobs},
            {"top_logprobs", top_logprobs},
            {"text_offset", text_offset}};
  }
};

json response_object(const ResponseIds& ids, const char* object, json choices) {
  return {{"id", ids.id},
          {"object", object},
          {"created", ids.created},
          {"model", ids.model},
          {"choices", std::move(choices)}};
}

const char* chunk_object(const ResponseIds& ids) { return ids.chat ? "chat.completion.chunk" : "text_completion"; }

}  // namespace

json completion_response(const ResponseIds& ids, size_t n_choices, const std::vector<ChoiceDelta>& deltas,
                         bool logprobs, const Usage& usage, const Tokenizer& tokenizer) {
  std::vector<std::string> texts(n_choices);
  std::vector<FinishReason> reasons(n_choices, FinishReason::Stop);
  std::vector<json> chat_logprobs(n_choices, json::array());
  std::vector<CompletionLogprobs> completion_logprobs(n_choices);
  for (const ChoiceDelta& delta : deltas) {
    for (size_t i = 0; i < delta.prompt.size(); ++i) {  // echo
      const int64_t offset = int64_t(texts[delta.index].size());
      if (logprobs && i > 0 && i <= delta.prompt_logprobs.size())
        completion_logprobs[delta.index].add(tokenizer, delta.prompt_logprobs[i - 1], offset);
      else if (logprobs)  // the first token, or a request that ended before its prompt was scored
        completion_logprobs[delta.index].add_unscored(tokenizer, delta.prompt[i], offset);
      texts[delta.index] += token_text(tokenizer, delta.prompt[i]);
    }
    if (delta.token && logprobs) {
      if (ids.chat) chat_logprobs[delta.index].push_back(chat_logprob(tokenizer, *delta.token));
      else completion_logprobs[delta.index].add(tokenizer, *delta.token, int64_t(texts[delta.index].size()));
    }
    texts[delta.index] += delta.text;
    if (delta.finished) reasons[delta.index] = *delta.finished;
  }
  json choices = json::array();
  for (size_t i = 0; i < n_choices; ++i) {
    json choice = {{"index", i}, {"finish_reason", finish_reason_name(reasons[i])}};
    if (ids.chat) {
      choice["message"] = {{"role", "assistant"}, {"content", texts[i]}};
      choice["logprobs"] = logprobs ? json{{"content", chat_logprobs[i]}} : json(nullptr);
    } else {
      choice["text"] = texts[i];
      choice["logprobs"] = logprobs ? completion_logprobs[i].to_json() : json(nullptr);
    }
    choices.push_back(choice);
  }
  json response = response_object(ids, ids.chat ? "chat.completion" : "text_completion", std::move(choices));
  response["usage"] = usage_json(usage);
  return response;
}

json chat_role_chunk(const ResponseIds& ids, size_t n_choices) {
  json choices = json::array();
  for (size_t i = 0; i < n_choices; ++i)
    choices.push_back({{"index", i},
                       {"delta", {{"role", "assistant"}, {"content", ""}}},
                       {"logprobs", nullptr},
                       {"finish_reason", nullptr}});
  return response_object(ids, chunk_object(ids), std::move(choices));
}

std::optional<json> stream_chunk(const ResponseIds& ids, const ChoiceDelta& delta, bool logprobs, int64_t text_offset,
                                 const Tokenizer& tokenizer) {
  if (delta.text.empty() && !delta.finished && !(logprobs && delta.token)) return std::nullopt;
  json choice = {{"index", delta.index},
                 {"finish_reason", delta.finished ? json(finish_reason_name(*delta.finished)) : json(nullptr)}};
  json token_logprobs = nullptr;
  if (logprobs && delta.token) {
    if (ids.chat) {
      token_logprobs = {{"content", json::array({chat_logprob(tokenizer, *delta.token)})}};
    } else {
      CompletionLogprobs one;
      one.add(tokenizer, *delta.token, text_offset);
      token_logprobs = one.to_json();
    }
  }
  choice["logprobs"] = token_logprobs;
  if (ids.chat) choice["delta"] = delta.text.empty() ? json::object() : json{{"content", delta.text}};
  else choice["text"] = delta.text;
  return response_object(ids, chunk_object(ids), json::array({choice}));
}

json usage_chunk(const ResponseIds& ids, const Usage& usage) {
  json chunk = response_object(ids, chunk_object(ids), json::array());
  chunk["usage"] = usage_json(usage);
  return chunk;
}

json model_object(const ApiLimits& limits, int64_t created) {
  return {{"id", limits.model_id},
          {"object", "model"},
          {"created", created},
          {"owned_by", "deepmoe"},
          {"max_model_len", limits.context}};
}

json model_list(const ApiLimits& limits, int64_t created) {
  return {{"object", "list"}, {"data", json::array({model_object(limits, created)})}};
}

}  // namespace deepmoe
