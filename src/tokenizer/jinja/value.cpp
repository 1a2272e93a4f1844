#include "tokenizer/jinja/value.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cmath>

#include "core/error.h"

namespace deepmoe::jinja {

void Budget::check_text_size(uint64_t bytes, const char* what) {
  if (bytes > kMaxTextBytes) fail("chat template: {} would exceed {} MiB", what, kMaxTextBytes >> 20);
}

void Budget::exhausted() {
  fail(
      "chat template: more than {} steps (a step: one statement, evaluation, loop iteration, element, or {} bytes "
      "of text)",
      kMaxSteps, kStepCost);
}

namespace {

// The containers whose last owner let go while another was being deleted on this thread.
struct Graveyard {
  std::vector<std::variant<List*, Dict*>> queue;
  bool draining = false;
};
thread_local Graveyard graveyard;

template <typename T>
void bury(T* container) {
  graveyard.queue.emplace_back(container);
  if (graveyard.draining) return;  // the loop below, further up this thread's stack, deletes it
  graveyard.draining = true;
  while (!graveyard.queue.empty()) {
    const auto next = graveyard.queue.back();
    graveyard.queue.pop_back();
    std::visit([](auto* c) { delete c; }, next);
  }
  graveyard.draining = false;
}

[[noreturn]] void too_deep() {
  fail("chat template: a value nested deeper than {} levels (a list that contains itself?)", Budget::kMaxValueDepth);
}

}  // namespace

std::shared_ptr<List> Value::make_list(List list) { return {new List(std::move(list)), bury<List>}; }
std::shared_ptr<Dict> Value::make_dict(Dict dict) { return {new Dict(std::move(dict)), bury<Dict>}; }

bool Value::truthy() const {
  return std::visit(
      [](const auto& v) -> bool {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, Undefined> || std::is_same_v<T, None>) return false;
        else if constexpr (std::is_same_v<T, bool>) return v;
        else if constexpr (std::is_same_v<T, int64_t> || std::is_same_v<T, double>) return v != 0;
        else if constexpr (std::is_same_v<T, std::string>) return !v.empty();
        else if constexpr (std::is_same_v<T, std::shared_ptr<List>> || std::is_same_v<T, std::shared_ptr<Dict>>)
          return !v->empty();
        else return true;
      },
      data);
}

const char* Value::type_name() const {
  static const char* const kNames[] = {"undefined", "none", "boolean", "integer",   "float",
                                       "string",    "list", "dict",    "namespace", "callable"};
  return kNames[data.index()];
}

const Value* find(const Dict& dict, const std::string& key) {
  for (const auto& [k, v] : dict)
    if (k == key) return &v;
  return nullptr;
}

Value from_json(const nlohmann::json& j, int depth) {
  if (depth > Budget::kMaxValueDepth)
    fail("chat template: the variables nest deeper than {} levels", Budget::kMaxValueDepth);
  switch (j.type()) {
    case nlohmann::json::value_t::null: return Value(None{});
    case nlohmann::json::value_t::boolean: return Value(j.get<bool>());
    case nlohmann::json::value_t::number_integer:
    case nlohmann::json::value_t::number_unsigned: return Value(j.get<int64_t>());
    case nlohmann::json::value_t::number_float: return Value(j.get<double>());
    case nlohmann::json::value_t::string: return Value(j.get<std::string>());
    case nlohmann::json::value_t::array: {
      List list;
      for (const auto& item : j) list.push_back(from_json(item, depth + 1));
      return Value(std::move(list));
    }
    case nlohmann::json::value_t::object: {
      Dict dict;
      for (const auto& [k, v] : j.items()) dict.emplace_back(k, from_json(v, depth + 1));
      return Value(std::move(dict));
    }
    default: return Value();
  }
}

namespace {

// Python's repr of a float: shortest round trip, always with a '.' or an exponent.
std::string float_repr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  std::string s = fmt::format("{}", d);
  if (s.find_first_of(".e") == std::string::npos) s += ".0";
  return s;
}

// Python's repr of a string: single quotes unless it holds one and no double quote.
std::string string_repr(const std::string& s) {
  const char quote = s.find('\'') != std::string::npos && s.find('"') == std::string::npos ? '"' : '\'';
  std::string out(1, quote);
  for (const char c : s) {
    if (c == quote || c == '\\') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else {
      out += c;
    }
  }
  return out + quote;
}

std::string json_string(const std::string& s) {
  // ensure_ascii=False: only quotes, backslashes and control characters are escaped.
  std::string out = "\"";
  for (const char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += fmt::format("\\u{:04x}", static_cast<unsigned char>(c));
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

std::string output(const Value& v, Budget& budget, int depth);

std::string repr(const Value& v, Budget& budget, int depth) {
  return v.is_string() ? string_repr(v.str()) : output(v, budget, depth);
}

// Appends a piece of a list's or dict's text, charged and bounded as it grows.
void append(std::string& out, const std::string& piece, Budget& budget) {
  Budget::check_text_size(uint64_t(out.size()) + piece.size(), "a value's text");
  budget.text(piece.size());
  out += piece;
}

std::string output(const Value& v, Budget& budget, int depth) {
  if (depth > Budget::kMaxValueDepth) too_deep();
  budget.step();
  if (v.is_undefined()) return "";
  if (v.is_none()) return "None";
  if (v.is_bool()) return std::get<bool>(v.data) ? "True" : "False";
  if (v.is_int()) return std::to_string(std::get<int64_t>(v.data));
  if (v.is_float()) return float_repr(std::get<double>(v.data));
  if (v.is_string()) return v.str();
  if (v.is_list()) {
    std::string out = "[";
    for (size_t i = 0; i < v.list().size(); ++i) {
      if (i) out += ", ";
      append(out, repr(v.list()[i], budget, depth + 1), budget);
    }
    return out + "]";
  }
  if (v.is_dict()) {
    std::string out = "{";
    for (size_t i = 0; i < v.dict().size(); ++i) {
      if (i) out += ", ";
      append(out, string_repr(v.dict()[i].first), budget);
      out += ": ";
      append(out, repr(v.dict()[i].second, budget, depth + 1), budget);
    }
    return out + "}";
  }
  if (v.is_namespace()) return "<Namespace>";
  return "<function>";
}

std::string json(const Value& v, int indent, Budget& budget, int depth) {
  if (depth > Budget::kMaxValueDepth) too_deep();
  budget.step();
  std::string newline, close;
  if (indent > 0) {
    // The indentation alone can be what grows: charge and bound it before building it.
    const uint64_t width = uint64_t(indent) * uint64_t(depth + 1);
    Budget::check_text_size(width, "tojson's indentation");
    budget.text(width);
    newline.assign(1, '\n').append(size_t(width), ' ');
    close.assign(1, '\n').append(size_t(indent) * size_t(depth), ' ');
  }
  const std::string separator = indent > 0 ? "," : ", ";
  if (v.is_undefined() || v.is_none()) return "null";
  if (v.is_bool()) return std::get<bool>(v.data) ? "true" : "false";
  if (v.is_int()) return std::to_string(std::get<int64_t>(v.data));
  if (v.is_float()) return float_repr(std::get<double>(v.data));
  if (v.is_string()) return json_string(v.str());
  if (v.is_list()) {
    if (v.list().empty()) return "[]";
    std::string out = "[";
    for (size_t i = 0; i < v.list().size(); ++i) {
      if (i) out += separator;
      append(out, newline, budget);
      append(out, json(v.list()[i], indent, budget, depth + 1), budget);
    }
    return out + close + "]";
  }
  if (v.is_dict() || v.is_namespace()) {
    const Dict& d = v.is_dict() ? v.dict() : *std::get<Namespace>(v.data).fields;
    if (d.empty()) return "{}";
    std::string out = "{";
    for (size_t i = 0; i < d.size(); ++i) {
      if (i) out += separator;
      append(out, newline, budget);
      append(out, json_string(d[i].first), budget);
      out += ": ";
      append(out, json(d[i].second, indent, budget, depth + 1), budget);
    }
    return out + close + "}";
  }
  return "null";
}

bool equal_at(const Value& a, const Value& b, Budget& budget, int depth) {
  if (depth > Budget::kMaxValueDepth) too_deep();
  budget.step();
  if (a.is_number() && b.is_number()) return a.number() == b.number();
  if (a.is_bool() && b.is_bool()) return std::get<bool>(a.data) == std::get<bool>(b.data);
  if (a.is_string() && b.is_string()) {
    budget.text(std::min(a.str().size(), b.str().size()));
    return a.str() == b.str();
  }
  if (a.is_none() && b.is_none()) return true;
  if (a.is_undefined() && b.is_undefined()) return true;
  if (a.is_list() && b.is_list()) {
    if (a.list().size() != b.list().size()) return false;
    for (size_t i = 0; i < a.list().size(); ++i)
      if (!equal_at(a.list()[i], b.list()[i], budget, depth + 1)) return false;
    return true;
  }
  if (a.is_dict() && b.is_dict()) {
    if (a.dict().size() != b.dict().size()) return false;
    for (const auto& [k, v] : a.dict()) {
      budget.step(b.dict().size());  // find() is a linear search
      const Value* other = find(b.dict(), k);
      if (other == nullptr || !equal_at(v, *other, budget, depth + 1)) return false;
    }
    return true;
  }
  return false;
}

}  // namespace

std::string to_output(const Value& v, Budget& budget) { return output(v, budget, 0); }
std::string to_json(const Value& v, int indent, Budget& budget) { return json(v, indent, budget, 0); }
bool equal(const Value& a, const Value& b, Budget& budget) { return equal_at(a, b, budget, 0); }

}  // namespace deepmoe::jinja
