// Request bodies come from the network: any bytes sent to /v1/completions or /v1/chat/completions
// parse into a request that keeps the limits, or throw ApiError (a 400 naming the field). Nothing
// else may escape: not a JSON or template exception, not a crash, not a hang on deep nesting.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "serve/openai_api.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace {

// Byte-level BPE whose ids 0..255 are the bytes, a merge, and two special tokens.
const deepmoe::Tokenizer& tokenizer() {
  static const auto instance = [] {
    nlohmann::json vocab = nlohmann::json::object();
    for (int b = 0; b < 256; ++b) vocab[deepmoe::byte_level::char_for_byte(uint8_t(b))] = b;
    vocab["Ġh"] = 256;
    const nlohmann::json spec = {
        {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", {"Ġ h"}}}},
        {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
        {"decoder", {{"type", "ByteLevel"}}},
        {"added_tokens",
         {{{"id", 257}, {"content", "<s>"}, {"special", true}},
          {{"id", 258}, {"content", "</s>"}, {"special", true}}}}};
    const nlohmann::json config = {{"bos_token", "<s>"}, {"eos_token", "</s>"}};
    return deepmoe::Tokenizer::from_json(spec.dump(), config.dump(), "fuzz tokenizer");
  }();
  return *instance;
}

// A template in the shape of the real ones: role checks, a system prompt taken out, content
// split and trimmed, loop variables, raise_exception.
const deepmoe::ChatTemplate& chat_template() {
  static const deepmoe::ChatTemplate instance(R"({{ bos_token }}
{%- set ns = namespace(system='') -%}
{%- for message in messages -%}
  {%- if message['role'] == 'system' -%}{%- set ns.system = ns.system + message['content'] -%}{%- endif -%}
{%- endfor -%}
{{ ns.system }}
{%- for message in messages if message['role'] != 'system' -%}
  {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
    {{ raise_exception('roles must alternate user/assistant') }}
  {%- endif -%}
  {%- if message['role'] == 'user' -%}
    {{ '<|User|>' + message['content'] | trim }}
  {%- else -%}
    {{ '<|Assistant|>' + message['content'].split('</think>')[-1] + eos_token }}
  {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt %}{{ '<|Assistant|>' }}{% endif %})");
  return instance;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string body(reinterpret_cast<const char*>(data), size);
  deepmoe::ApiLimits limits;
  limits.model_id = "tiny";
  limits.context = 512;
  for (const bool chat : {false, true}) {
    try {
      const deepmoe::CompletionRequest r =
          deepmoe::parse_completion_request(body, chat, limits, tokenizer(), &chat_template());
      // What the engine relies on: a prompt of known ids that leaves room for max_tokens.
      if (r.prompts.empty() || int64_t(r.prompts.size()) > limits.max_prompts) std::abort();
      for (const auto& prompt : r.prompts) {
        if (prompt.empty() || int64_t(prompt.size()) >= limits.context) std::abort();
        for (const int32_t id : prompt)
          if (id < 0 || id >= tokenizer().id_limit()) std::abort();
        if (r.max_tokens < (r.echo ? 0 : 1) || r.max_tokens > limits.context - int64_t(prompt.size())) std::abort();
      }
      if (r.n < 1 || r.n > limits.max_n || r.top_logprobs < 0 || r.top_logprobs > limits.max_top_logprobs) std::abort();
    } catch (const deepmoe::ApiError&) {
    }
  }
  return 0;
}
