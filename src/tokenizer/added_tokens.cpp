#include "tokenizer/added_tokens.h"

#include <algorithm>
#include <map>

#include "tokenizer/unicode_classes.h"
#include "tokenizer/utf8.h"

namespace deepmoe {

AddedTokenMatcher::AddedTokenMatcher(std::vector<AddedToken> tokens) : tokens_(std::move(tokens)) {
  // Build a byte trie with std::map children, then flatten it into sorted edge arrays.
  struct BuildNode {
    std::map<unsigned char, int32_t> children;
    int32_t token = -1;
  };
  std::vector<BuildNode> build(1);
  for (size_t t = 0; t < tokens_.size(); ++t) {
    const std::string& content = tokens_[t].content;
    if (content.empty()) continue;
    int32_t node = 0;
    for (const char c : content) {
      const auto byte = static_cast<unsigned char>(c);
      auto it = build[size_t(node)].children.find(byte);
      if (it == build[size_t(node)].children.end()) {
        build.emplace_back();
        it = build[size_t(node)].children.emplace(byte, int32_t(build.size() - 1)).first;
      }
      node = it->second;
    }
    if (build[size_t(node)].token < 0) build[size_t(node)].token = int32_t(t);
    first_byte_[static_cast<unsigned char>(content[0])] = true;
  }
  nodes_.resize(build.size());
  for (size_t n = 0; n < build.size(); ++n) {
    nodes_[n].token = build[n].token;
    nodes_[n].child_begin = int32_t(edges_.size());
    nodes_[n].child_count = int32_t(build[n].children.size());
    for (const auto& [byte, child] : build[n].children) edges_.push_back({byte, child});
  }
}

int32_t AddedTokenMatcher::longest_at(std::string_view text, size_t pos, size_t& length) const {
  int32_t node = 0, best = -1;
  for (size_t i = pos; i < text.size(); ++i) {
    const Node& current = nodes_[size_t(node)];
    const auto byte = static_cast<unsigned char>(text[i]);
    const auto begin = edges_.begin() + current.child_begin, end = begin + current.child_count;
    const auto it = std::lower_bound(begin, end, byte, [](const Edge& e, unsigned char b) { return e.byte < b; });
    if (it == end || it->byte != byte) break;
    node = it->node;
    if (nodes_[size_t(node)].token >= 0) {
      best = nodes_[size_t(node)].token;
      length = i + 1 - pos;
    }
  }
  return best;
}

namespace {

// The code point just before byte offset `end` (text[..end] is valid UTF-8 and non-empty).
char32_t last_code_point(std::string_view text, size_t end) {
  size_t start = end - 1;
  while (start > 0 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
  return utf8::next(text, start);
}

}  // namespace

std::vector<TextSpan> AddedTokenMatcher::split(std::string_view text) const {
  std::vector<TextSpan> spans;
  size_t covered = 0;  // text before this offset is already in spans
  size_t pos = 0;
  while (pos < text.size()) {
    size_t length = 0;
    const int32_t t = first_byte_[static_cast<unsigned char>(text[pos])] ? longest_at(text, pos, length) : -1;
    if (t < 0) {
      ++pos;
      continue;
    }
    const AddedToken& token = tokens_[size_t(t)];
    size_t begin = pos, end = pos + length;
    if (token.single_word) {
      size_t after = end;
      const bool word_before = begin > 0 && unicode::is_word(last_code_point(text, begin));
      const bool word_after = end < text.size() && unicode::is_word(utf8::next(text, after));
      if (word_before || word_after) {
        pos += length;  // HF discards the match; its search resumes after it
        continue;
      }
    }
    if (token.lstrip) {
      while (begin > covered && unicode::is_white_space(last_code_point(text, begin))) {
        size_t start = begin - 1;
        while (start > 0 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
        begin = start;
      }
    }
    if (token.rstrip) {
      while (end < text.size()) {
        size_t after = end;
        if (!unicode::is_white_space(utf8::next(text, after))) break;
        end = after;
      }
    }
    if (covered < begin) spans.push_back({covered, begin, -1});
    spans.push_back({begin, end, token.id});
    covered = pos = end;
  }
  if (covered < text.size()) spans.push_back({covered, text.size(), -1});
  return spans;
}

}  // namespace deepmoe
