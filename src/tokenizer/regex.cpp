#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer/regex.h"

#include <pcre2.h>

#include "core/error.h"
#include "tokenizer/utf8.h"

namespace deepmoe {
namespace {

// White_Space: the Z categories plus TAB..CR and NEL.
constexpr std::string_view kSpaceMembers = R"(\p{Z}\t-\r\x{85})";
constexpr std::string_view kWordMembers = R"(\p{L}\p{M}\p{Nd}\p{Pc})";
constexpr std::string_view kDigitMembers = R"(\p{Nd})";

}  // namespace

std::string rewrite_to_oniguruma_classes(const std::string& pattern) {
  std::string out;
  out.reserve(pattern.size() + 64);
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char e = pattern[i + 1];
      std::string_view members;
      if (e == 's' || e == 'S') members = kSpaceMembers;
      if (e == 'w' || e == 'W') members = kWordMembers;
      if (e == 'd' || e == 'D') members = kDigitMembers;
      if (members.empty()) {
        out += c;
        out += e;
      } else if (in_class) {
        if (e == 'S' || e == 'W' || e == 'D')
          fail("regex '{}': a negated class escape \\{} inside [...] is not supported", pattern, e);
        out += members;
      } else {
        out += (e == 'S' || e == 'W' || e == 'D') ? "[^" : "[";
        out += members;
        out += ']';
      }
      ++i;
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      // A ']' right after '[' or '[^' is a literal member, not the end of the class.
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out += pattern[++i];
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') out += pattern[++i];
      continue;
    }
    if (in_class && c == '[' && i + 1 < pattern.size() && pattern[i + 1] == ':') {
      const size_t close = pattern.find(":]", i + 2);
      if (close != std::string::npos) {
        out.append(pattern, i, close + 2 - i);
        i = close + 1;
        continue;
      }
    }
    if (in_class && c == ']') in_class = false;
    out += c;
  }
  return out;
}

struct Regex::Impl {
  pcre2_code* code = nullptr;
  bool jit = false;
  ~Impl() { pcre2_code_free(code); }
};

Regex::Regex(const std::string& pattern) : impl_(std::make_unique<Impl>()) {
  if (!utf8::is_valid(pattern)) fail("regex pattern is not valid UTF-8");
  compiled_pattern_ = rewrite_to_oniguruma_classes(pattern);
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  impl_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(compiled_pattern_.data()), compiled_pattern_.size(),
                              PCRE2_UTF | PCRE2_UCP, &error_code, &error_offset, nullptr);
  if (impl_->code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error_code, message, sizeof message);
    fail("regex '{}' does not compile: {} (at offset {})", pattern, reinterpret_cast<const char*>(message),
         error_offset);
  }
  impl_->jit = pcre2_jit_compile(impl_->code, PCRE2_JIT_COMPLETE) == 0;
}

Regex::~Regex() = default;
Regex::Regex(Regex&&) noexcept = default;
Regex& Regex::operator=(Regex&&) noexcept = default;

void Regex::find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>& matches) const {
  // One match block per thread, grown to the largest pattern seen: allocating per call would
  // cost more than the match itself on short pieces.
  struct MatchData {
    pcre2_match_data* data = pcre2_match_data_create(16, nullptr);
    ~MatchData() { pcre2_match_data_free(data); }
  };
  thread_local MatchData match_data;
  // Bounds for patterns from untrusted tokenizer.json files: a catastrophic pattern ends in an
  // error instead of a hang, and long inputs get a JIT stack larger than the 32 KiB default.
  struct Limits {
    pcre2_match_context* context = pcre2_match_context_create(nullptr);
    pcre2_jit_stack* stack = pcre2_jit_stack_create(32 * 1024, 4 * 1024 * 1024, nullptr);
    Limits() {
      pcre2_set_match_limit(context, 50'000'000);
      pcre2_jit_stack_assign(context, nullptr, stack);
    }
    ~Limits() {
      pcre2_jit_stack_free(stack);
      pcre2_match_context_free(context);
    }
  };
  thread_local Limits limits;
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t offset = 0;
  while (offset <= text.size()) {
    // The text was validated (or sanitized) once by the caller; PCRE2 need not check it again.
    const uint32_t options = PCRE2_NO_UTF_CHECK;
    const int rc =
        impl_->jit
            ? pcre2_jit_match(impl_->code, subject, text.size(), offset, options, match_data.data, limits.context)
            : pcre2_match(impl_->code, subject, text.size(), offset, options, match_data.data, limits.context);
    if (rc == PCRE2_ERROR_NOMATCH) return;
    if (rc < 0) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(rc, message, sizeof message);
      fail("regex '{}' failed while matching: {}", compiled_pattern_, reinterpret_cast<const char*>(message));
    }
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match_data.data);
    const size_t begin = ovector[0], end = ovector[1];
    matches.emplace_back(begin, end);
    if (end > begin) {
      offset = end;
    } else {
      if (end >= text.size()) return;
      size_t next = end;
      utf8::next(text, next);
      offset = next;
    }
  }
}

}  // namespace deepmoe
