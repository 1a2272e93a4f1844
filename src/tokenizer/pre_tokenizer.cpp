#include "tokenizer/pre_tokenizer.h"

#include <nlohmann/json.hpp>

#include <algorithm>

#include "core/error.h"

namespace deepmoe {

using nlohmann::json;

const char* const kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

namespace {

std::string type_of(const json& spec, const char* what) {
  if (!spec.is_object() || !spec.contains("type") || !spec["type"].is_string())
    fail("{}: expected an object with a string \"type\"", what);
  return spec["type"].get<std::string>();
}

// Escapes a literal so PCRE2 matches it verbatim.
std::string quote_literal(const std::string& literal) {
  std::string out;
  for (const char c : literal) {
    if (std::string_view("\\^$.|?*+()[]{}").find(c) != std::string_view::npos) out += '\\';
    out += c;
  }
  return out;
}

// An HF pattern: {"Regex": "..."} or {"String": "..."}.
std::shared_ptr<const Regex> compile_pattern(const json& pattern, const char* what) {
  if (pattern.is_object() && pattern.contains("Regex") && pattern["Regex"].is_string())
    return std::make_shared<Regex>(pattern["Regex"].get<std::string>());
  if (pattern.is_object() && pattern.contains("String") && pattern["String"].is_string())
    return std::make_shared<Regex>(quote_literal(pattern["String"].get<std::string>()));
  fail("{}: \"pattern\" must be {{\"Regex\": ...}} or {{\"String\": ...}}", what);
}

bool bool_field(const json& spec, const char* key, bool fallback) {
  if (!spec.contains(key) || spec[key].is_null()) return fallback;
  if (!spec[key].is_boolean()) fail("\"{}\" must be true or false", key);
  return spec[key].get<bool>();
}

SplitBehavior parse_behavior(const json& spec) {
  const std::string name = spec.value("behavior", std::string("Isolated"));
  if (name == "Removed") return SplitBehavior::kRemoved;
  if (name == "Isolated") return SplitBehavior::kIsolated;
  if (name == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (name == "Contiguous") return SplitBehavior::kContiguous;
  fail("pre_tokenizer Split: unknown behavior '{}'", name);
}

}  // namespace

Normalizer::Normalizer(const json& spec) {
  if (!spec.is_null()) add(spec);
}

void Normalizer::add(const json& spec) {
  const std::string type = type_of(spec, "normalizer");
  if (type == "Sequence") {
    if (!spec.contains("normalizers") || !spec["normalizers"].is_array())
      fail("normalizer Sequence: \"normalizers\" must be an array");
    for (const auto& child : spec["normalizers"]) add(child);
  } else if (type == "Replace") {
    if (!spec.contains("content") || !spec["content"].is_string())
      fail("normalizer Replace: \"content\" must be a string");
    steps_.push_back(Replace{compile_pattern(spec.value("pattern", json()), "normalizer Replace"),
                             spec["content"].get<std::string>()});
  } else if (type == "Prepend") {
    if (!spec.contains("prepend") || !spec["prepend"].is_string())
      fail("normalizer Prepend: \"prepend\" must be a string");
    steps_.push_back(Prepend{spec["prepend"].get<std::string>()});
  } else {
    fail("unsupported normalizer '{}' (supported: Sequence, Replace, Prepend)", type);
  }
}

std::string Normalizer::apply(std::string_view text) const {
  std::string current(text);
  std::vector<std::pair<size_t, size_t>> matches;
  for (const auto& step : steps_) {
    if (const auto* replace = std::get_if<Replace>(&step)) {
      matches.clear();
      replace->pattern->find_all(current, matches);
      std::string out;
      size_t last = 0;
      for (const auto& [b, e] : matches) {
        out.append(current, last, b - last);
        out += replace->content;
        last = e;
      }
      out.append(current, last);
      current = std::move(out);
    } else if (const auto* prepend = std::get_if<Prepend>(&step)) {
      if (!current.empty()) current = prepend->prefix + current;
    }
  }
  return current;
}

PreTokenizer::PreTokenizer(const json& spec) {
  if (!spec.is_null()) add(spec);
}

void PreTokenizer::add(const json& spec) {
  const std::string type = type_of(spec, "pre_tokenizer");
  if (type == "Sequence") {
    if (!spec.contains("pretokenizers") || !spec["pretokenizers"].is_array())
      fail("pre_tokenizer Sequence: \"pretokenizers\" must be an array");
    for (const auto& child : spec["pretokenizers"]) add(child);
  } else if (type == "Split") {
    steps_.push_back(Split{compile_pattern(spec.value("pattern", json()), "pre_tokenizer Split"), parse_behavior(spec),
                           bool_field(spec, "invert", false)});
  } else if (type == "ByteLevel") {
    has_byte_level_ = true;
    const bool use_regex = bool_field(spec, "use_regex", true);
    steps_.push_back(ByteLevel{bool_field(spec, "add_prefix_space", true),
                               use_regex ? std::make_shared<Regex>(kGpt2Pattern) : nullptr});
  } else if (type == "Digits") {
    // HF's Digits: numeric characters split from the rest, one by one or in runs.
    const bool individual = bool_field(spec, "individual_digits", false);
    steps_.push_back(
        Split{std::make_shared<Regex>(individual ? R"(\p{N})" : R"(\p{N}+)"), SplitBehavior::kIsolated, false});
  } else {
    fail("unsupported pre_tokenizer '{}' (supported: Sequence, Split, ByteLevel, Digits)", type);
  }
}

void PreTokenizer::apply(const Split& step, const std::string& buffer, const std::vector<Piece>& in,
                         std::vector<Piece>& out) {
  thread_local std::vector<std::pair<size_t, size_t>> matches;
  struct Part {
    size_t begin, end;
    bool is_match;
  };
  thread_local std::vector<Part> parts, merged;
  for (const Piece& piece : in) {
    const std::string_view text(buffer.data() + piece.begin, piece.end - piece.begin);
    matches.clear();
    step.pattern->find_all(text, matches);
    // The piece as alternating gaps and matches (HF's Pattern::find_matches), absolute offsets.
    parts.clear();
    size_t last = 0;
    for (const auto& [b, e] : matches) {
      if (last < b) parts.push_back({piece.begin + last, piece.begin + b, step.invert});
      parts.push_back({piece.begin + b, piece.begin + e, !step.invert});
      last = e;
    }
    if (last < text.size()) parts.push_back({piece.begin + last, piece.end, step.invert});

    merged.clear();
    switch (step.behavior) {
      case SplitBehavior::kIsolated: merged = parts; break;
      case SplitBehavior::kRemoved:
        for (const Part& p : parts)
          if (!p.is_match) merged.push_back(p);
        break;
      case SplitBehavior::kMergedWithPrevious: {
        bool previous_match = false;
        for (const Part& p : parts) {
          if (p.is_match && !previous_match && !merged.empty()) {
            merged.back().end = p.end;
          } else {
            merged.push_back(p);
          }
          previous_match = p.is_match;
        }
        break;
      }
      case SplitBehavior::kMergedWithNext: {
        bool previous_match = false;
        for (size_t i = parts.size(); i-- > 0;) {
          const Part& p = parts[i];
          if (p.is_match && !previous_match && !merged.empty()) {
            merged.back().begin = p.begin;
          } else {
            merged.push_back(p);
          }
          previous_match = p.is_match;
        }
        std::reverse(merged.begin(), merged.end());
        break;
      }
      case SplitBehavior::kContiguous: {
        for (size_t i = 0; i < parts.size(); ++i) {
          if (i > 0 && parts[i].is_match == parts[i - 1].is_match) {
            merged.back().end = parts[i].end;
          } else {
            merged.push_back(parts[i]);
          }
        }
        break;
      }
    }
    for (const Part& p : merged)
      if (p.end > p.begin) out.push_back({p.begin, p.end});
  }
}

void PreTokenizer::apply(const ByteLevel& step, std::string& buffer, const std::vector<Piece>& in,
                         std::vector<Piece>& out) {
  thread_local std::vector<std::pair<size_t, size_t>> matches;
  for (Piece piece : in) {
    if (step.add_prefix_space && buffer[piece.begin] != ' ') {
      // HF prepends a space to every piece that reaches this step without one.
      const size_t begin = buffer.size(), length = piece.end - piece.begin;
      buffer.reserve(begin + 1 + length);  // the copy below reads from the buffer itself
      buffer += ' ';
      buffer.append(buffer.data() + piece.begin, length);
      piece = {begin, buffer.size()};
    }
    if (!step.pattern) {
      out.push_back(piece);
      continue;
    }
    matches.clear();
    step.pattern->find_all(std::string_view(buffer.data() + piece.begin, piece.end - piece.begin), matches);
    size_t last = 0;
    for (const auto& [b, e] : matches) {
      if (last < b) out.push_back({piece.begin + last, piece.begin + b});
      if (e > b) out.push_back({piece.begin + b, piece.begin + e});
      last = e;
    }
    if (piece.begin + last < piece.end) out.push_back({piece.begin + last, piece.end});
  }
}

void PreTokenizer::split(std::string& buffer, std::vector<Piece>& pieces) const {
  pieces.clear();
  if (buffer.empty()) return;
  pieces.push_back({0, buffer.size()});
  thread_local std::vector<Piece> next;
  for (const Step& step : steps_) {
    next.clear();
    std::visit([&](const auto& s) { apply(s, buffer, pieces, next); }, step);
    pieces.swap(next);
  }
}

}  // namespace deepmoe
