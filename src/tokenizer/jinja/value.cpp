#include "tokenizer/jinja/value.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cmath>

namespace deepmoe::jinja {

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
  static const char* const kNames[] = {"undefined", "none",      "boolean",   "integer",  "float",
                                       "string",    "list",      "dict",      "namespace", "callable"};
  return kNames[data.index()];
}

const Value* find(const Dict& dict, const std::string& key) {
  for (const auto& [k, v] : dict)
    if (k == key) return &v;
  return nullptr;
}

Value from_json(const nlohmann::json& j) {
  switch (j.type()) {
    case nlohmann::json::value_t::null: return Value(None{});
    case nlohmann::json::value_t::boolean: return Value(j.get<bool>());
    case nlohmann::json::value_t::number_integer:
    case nlohmann::json::value_t::number_unsigned: return Value(j.get<int64_t>());
    case nlohmann::json::value_t::number_float: return Value(j.get<double>());
    case nlohmann::json::value_t::string: return Value(j.get<std::string>());
    case nlohmann::json::value_t::array: {
      List list;
      for (const auto& item : j) list.push_back(from_json(item));
      return Value(std::move(list));
    }
    case nlohmann::json::value_t::object: {
      Dict dict;
      for (const auto& [k, v] : j.items()) dict.emplace_back(k, from_json(v));
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

std::string repr(const Value& v) { return v.is_string() ? string_repr(v.str()) : to_output(v); }

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

}  // namespace

std::string to_output(const Value& v) {
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
      out += repr(v.list()[i]);
    }
    return out + "]";
  }
  if (v.is_dict()) {
    std::string out = "{";
    for (size_t i = 0; i < v.dict().size(); ++i) {
      if (i) out += ", ";
      out += string_repr(v.dict()[i].first);
      out += ": ";
      out += repr(v.dict()[i].second);
    }
    return out + "}";
  }
  if (v.is_namespace()) return "<Namespace>";
  return "<function>";
}

std::string to_json(const Value& v, int indent, int depth) {
  std::string newline, close;
  if (indent > 0) {
    newline.assign(1, '\n').append(size_t(indent * (depth + 1)), ' ');
    close.assign(1, '\n').append(size_t(indent * depth), ' ');
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
      out += newline;
      out += to_json(v.list()[i], indent, depth + 1);
    }
    return out + close + "]";
  }
  if (v.is_dict() || v.is_namespace()) {
    const Dict& d = v.is_dict() ? v.dict() : *std::get<Namespace>(v.data).fields;
    if (d.empty()) return "{}";
    std::string out = "{";
    for (size_t i = 0; i < d.size(); ++i) {
      if (i) out += separator;
      out += newline;
      out += json_string(d[i].first);
      out += ": ";
      out += to_json(d[i].second, indent, depth + 1);
    }
    return out + close + "}";
  }
  return "null";
}

bool equal(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) return a.number() == b.number();
  if (a.is_bool() && b.is_bool()) return std::get<bool>(a.data) == std::get<bool>(b.data);
  if (a.is_string() && b.is_string()) return a.str() == b.str();
  if (a.is_none() && b.is_none()) return true;
  if (a.is_undefined() && b.is_undefined()) return true;
  if (a.is_list() && b.is_list()) {
    if (a.list().size() != b.list().size()) return false;
    for (size_t i = 0; i < a.list().size(); ++i)
      if (!equal(a.list()[i], b.list()[i])) return false;
    return true;
  }
  if (a.is_dict() && b.is_dict()) {
    if (a.dict().size() != b.dict().size()) return false;
    for (const auto& [k, v] : a.dict()) {
      const Value* other = find(b.dict(), k);
      if (other == nullptr || !equal(v, *other)) return false;
    }
    return true;
  }
  return false;
}

}  // namespace deepmoe::jinja
