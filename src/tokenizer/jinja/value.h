// Values of the Jinja subset: Python's semantics for the types chat templates touch (truthiness,
// str(), comparisons), with lists and dicts shared by reference as in Python.
#pragma once
#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace deepmoe::jinja {

struct Value;
using List = std::vector<Value>;
// Insertion-ordered, as Python dicts (tojson and items() keep the order of the input).
using Dict = std::vector<std::pair<std::string, Value>>;
struct Undefined {};
struct None {};
struct Namespace {
  std::shared_ptr<Dict> fields;
};
struct Callable {
  std::string name;
  std::function<Value(std::vector<Value>&, std::vector<std::pair<std::string, Value>>&)> call;
};

struct Value {
  std::variant<Undefined, None, bool, int64_t, double, std::string, std::shared_ptr<List>, std::shared_ptr<Dict>,
               Namespace, std::shared_ptr<Callable>>
      data;

  Value() = default;
  Value(None) : data(None{}) {}
  Value(bool b) : data(b) {}
  Value(int64_t i) : data(i) {}
  Value(int i) : data(int64_t(i)) {}
  Value(double d) : data(d) {}
  Value(std::string s) : data(std::move(s)) {}
  Value(const char* s) : data(std::string(s)) {}
  Value(List list) : data(std::make_shared<List>(std::move(list))) {}
  Value(Dict dict) : data(std::make_shared<Dict>(std::move(dict))) {}
  Value(Namespace ns) : data(std::move(ns)) {}
  Value(std::shared_ptr<Callable> c) : data(std::move(c)) {}

  bool is_undefined() const { return std::holds_alternative<Undefined>(data); }
  bool is_none() const { return std::holds_alternative<None>(data); }
  bool is_bool() const { return std::holds_alternative<bool>(data); }
  bool is_int() const { return std::holds_alternative<int64_t>(data); }
  bool is_float() const { return std::holds_alternative<double>(data); }
  bool is_number() const { return is_int() || is_float(); }
  bool is_string() const { return std::holds_alternative<std::string>(data); }
  bool is_list() const { return std::holds_alternative<std::shared_ptr<List>>(data); }
  bool is_dict() const { return std::holds_alternative<std::shared_ptr<Dict>>(data); }
  bool is_namespace() const { return std::holds_alternative<Namespace>(data); }
  bool is_callable() const { return std::holds_alternative<std::shared_ptr<Callable>>(data); }

  const std::string& str() const { return std::get<std::string>(data); }
  List& list() const { return *std::get<std::shared_ptr<List>>(data); }
  Dict& dict() const { return *std::get<std::shared_ptr<Dict>>(data); }
  double number() const { return is_int() ? double(std::get<int64_t>(data)) : std::get<double>(data); }

  // Python's bool(): empty strings, lists and dicts, zero, None and undefined are false.
  bool truthy() const;
  // The name of the type, for error messages ("string", "list", ...).
  const char* type_name() const;
};

// Dict lookup; nullptr when absent.
const Value* find(const Dict& dict, const std::string& key);
Value from_json(const nlohmann::json& j);
// Python's str() of a value as Jinja prints it ({{ x }}): None -> "None", True -> "True",
// lists and dicts in repr form; undefined prints as "".
std::string to_output(const Value& v);
// JSON as transformers' tojson writes it (json.dumps with ensure_ascii=False).
std::string to_json(const Value& v, int indent, int depth = 0);
bool equal(const Value& a, const Value& b);

}  // namespace deepmoe::jinja
