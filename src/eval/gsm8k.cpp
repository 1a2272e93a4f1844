#define PCRE2_CODE_UNIT_WIDTH 8
#include "eval/gsm8k.h"

#include <pcre2.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <memory>

#include "core/error.h"
#include "io/jsonl.h"

namespace deepmoe::eval {

namespace {

// A pattern of lm-eval's with Python re's meaning. The patterns are ASCII and their `.` lies
// outside every captured group, so matching bytes (no UTF mode) finds what Python finds in the
// decoded text, and text that is not valid UTF-8 cannot make the match fail. Newlines are LF
// alone, as in Python: `.` stops only at "\n", `$` matches at the end and before a final "\n".
class Pattern {
 public:
  explicit Pattern(const char* pattern) {
    pcre2_compile_context* context = pcre2_compile_context_create(nullptr);
    pcre2_set_newline(context, PCRE2_NEWLINE_LF);
    int error = 0;
    PCRE2_SIZE offset = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern), PCRE2_ZERO_TERMINATED, 0, &error, &offset, context);
    pcre2_compile_context_free(context);
    if (code_ == nullptr) fail("regex '{}' does not compile (PCRE2 error {} at {})", pattern, error, offset);
  }
  ~Pattern() { pcre2_code_free(code_); }
  Pattern(const Pattern&) = delete;
  Pattern& operator=(const Pattern&) = delete;

  // Python's finditer: the matches left to right, each search from the end of the last (one past
  // an empty match). on_match(groups, begin, end) gets groups[0] the whole match and groups[i] the
  // i-th group (empty when unset); it returns false to stop.
  template <typename OnMatch>
  void for_each_match(std::string_view text, OnMatch&& on_match) const {
    const std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> data(
        pcre2_match_data_create_from_pattern(code_, nullptr), &pcre2_match_data_free);
    const auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    std::vector<std::string_view> groups;
    for (size_t start = 0; start <= text.size();) {
      const int rc = pcre2_match(code_, subject, text.size(), start, 0, data.get(), nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) return;
      if (rc < 0) fail("regex match failed (PCRE2 error {})", rc);
      const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(data.get());
      groups.assign(pcre2_get_ovector_count(data.get()), std::string_view());
      for (size_t g = 0; g < groups.size() && g < size_t(rc); ++g)
        if (ovector[2 * g] != PCRE2_UNSET) groups[g] = text.substr(ovector[2 * g], ovector[2 * g + 1] - ovector[2 * g]);
      if (!on_match(groups, size_t(ovector[0]), size_t(ovector[1]))) return;
      start = ovector[1] > ovector[0] ? ovector[1] : ovector[1] + 1;
    }
  }

  // re.sub(pattern, "", text).
  std::string remove_all(std::string_view text) const {
    std::string out;
    size_t copied = 0;
    for_each_match(text, [&](const std::vector<std::string_view>&, size_t begin, size_t end) {
      out.append(text.substr(copied, begin - copied));
      copied = end;
      return true;
    });
    return out.append(text.substr(copied));
  }

 private:
  pcre2_code* code_ = nullptr;
};

// Python's str.isspace set, as the UTF-8 of each character: what str.strip() removes.
constexpr std::string_view kPythonSpaces[] = {
    "\t",     "\n",     "\v",     "\f",     "\r",     "\x1c",   "\x1d",   "\x1e",   "\x1f",   " ",
    "\u0085", "\u00a0", "\u1680", "\u2000", "\u2001", "\u2002", "\u2003", "\u2004", "\u2005", "\u2006",
    "\u2007", "\u2008", "\u2009", "\u200a", "\u2028", "\u2029", "\u202f", "\u205f", "\u3000"};

std::string python_strip(std::string_view s) {
  const auto strip_one = [&s] {
    for (const std::string_view space : kPythonSpaces) {
      if (s.starts_with(space)) {
        s.remove_prefix(space.size());
        return true;
      }
      if (s.ends_with(space)) {
        s.remove_suffix(space.size());
        return true;
      }
    }
    return false;
  };
  while (strip_one()) {
  }
  return std::string(s);
}

// The regex filter: match number `pick` of findall (0 the first, -1 the last). findall gives a
// pattern's one group as it is, and of several the first non-empty (none: the fallback). Stripped;
// the fallback when nothing matches.
std::string regex_filter(const Pattern& pattern, std::string_view text, int pick) {
  std::string found(kInvalidAnswer);
  bool any = false;
  pattern.for_each_match(text, [&](const std::vector<std::string_view>& groups, size_t, size_t) {
    any = true;
    found = groups.size() <= 2 ? groups.back() : kInvalidAnswer;
    for (size_t g = 1; groups.size() > 2 && g < groups.size(); ++g)
      if (!groups[g].empty()) {
        found = groups[g];
        break;
      }
    return pick != 0;  // the first match: done; the last: go on
  });
  return any ? python_strip(found) : std::string(kInvalidAnswer);
}

}  // namespace

Gsm8kVariant parse_gsm8k_variant(const std::string& name) {
  if (name == "gsm8k") return Gsm8kVariant::Plain;
  if (name == "gsm8k-cot" || name == "gsm8k_cot") return Gsm8kVariant::Cot;
  fail("unknown GSM8K task '{}': expected gsm8k or gsm8k-cot", name);
}

std::vector<Problem> load_gsm8k_jsonl(const std::string& path) {
  std::vector<Problem> problems;
  for_each_jsonl_object(path, [&](const nlohmann::json& j, const std::string& where) {
    problems.push_back({string_field(j, "question", where, true), string_field(j, "answer", where, true)});
  });
  if (problems.empty()) fail("{}: no problems (one {{\"question\": ..., \"answer\": ...}} per line)", path);
  return problems;
}

int gsm8k_default_fewshot(Gsm8kVariant variant) { return variant == Gsm8kVariant::Plain ? 5 : 8; }

int gsm8k_max_gen_toks(Gsm8kVariant) { return 256; }

std::vector<std::string> gsm8k_stop_sequences(Gsm8kVariant variant) {
  return {variant == Gsm8kVariant::Plain ? "Question:" : "Q:", "</s>", "<|im_end|>"};
}

std::string gsm8k_target(Gsm8kVariant variant, const std::string& answer) {
  if (variant == Gsm8kVariant::Plain) return answer;
  // Python's split('####')[-1]: separators found left to right, so "#####5" leaves "#5".
  size_t after = 0;
  for (size_t at = answer.find("####"); at != std::string::npos; at = answer.find("####", after)) after = at + 4;
  return python_strip(std::string_view(answer).substr(after));
}

std::string gsm8k_prompt(Gsm8kVariant variant, const std::vector<Problem>& fewshot, const Problem& p) {
  const auto text = [&](const Problem& q) {
    return variant == Gsm8kVariant::Plain ? "Question: " + q.question + "\nAnswer:" : "Q: " + q.question + "\nA:";
  };
  std::string prompt;
  for (const Problem& shot : fewshot) {
    const std::string target = gsm8k_target(variant, shot.answer);
    // lm-eval's build_qa_turn: an empty target adds neither delimiter.
    prompt += target.empty() ? text(shot) : text(shot) + " " + target + "\n\n";
  }
  return prompt + text(p);
}

std::string extract_strict(Gsm8kVariant variant, std::string_view text) {
  static const Pattern plain(R"(#### (\-?[0-9\.\,]+))");
  static const Pattern cot(R"(The answer is (\-?[0-9\.\,]+).)");
  return regex_filter(variant == Gsm8kVariant::Plain ? plain : cot, text, 0);
}

std::string extract_flexible(std::string_view text) {
  static const Pattern flexible(R"((-?[$0-9.,]{2,})|(-?[0-9]+))");
  return regex_filter(flexible, text, -1);
}

bool exact_match(std::string_view prediction, std::string_view reference) {
  static const Pattern ignored[] = {Pattern(","), Pattern(R"(\$)"), Pattern("(?s).*#### "), Pattern(R"(\.$)")};
  std::string sides[2] = {std::string(prediction), std::string(reference)};
  for (std::string& side : sides) {
    for (const Pattern& pattern : ignored) side = pattern.remove_all(side);
    for (char& c : side)
      if (c >= 'A' && c <= 'Z') c = char(c - 'A' + 'a');
  }
  return sides[0] == sides[1];
}

}  // namespace deepmoe::eval
