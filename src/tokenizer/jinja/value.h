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

// What one render may spend. Templates come with downloaded models: a loop, a filter chain or a
// list that contains itself must end in an Error, not a hang, a stack overflow or exhausted
// memory. Costs are counted in bytes: a step (one statement, evaluation, loop iteration, or one
// element built, copied or visited) costs 16, and a byte of text built or compared costs 1 (text
// is copied a few times on its way, and 16 bytes take about as long as a step), so the budget
// bounds both the time and the memory a render can take: about a second and 160 MiB of text.
class Budget {
 public:
  static constexpr uint64_t kMaxSteps = 10'000'000;
  static constexpr size_t kMaxTextBytes = size_t(64) << 20;  // any one string, and the output
  static constexpr int kMaxValueDepth = 256;                 // lists and dicts inside each other

  void step(uint64_t n = 1) { spend(n * kStepCost); }
  void text(uint64_t bytes) { spend(bytes); }
  // Throws unless a string of `bytes` is allowed; `what` names it in the message ("join()").
  static void check_text_size(uint64_t bytes, const char* what);

 private:
  static constexpr uint64_t kStepCost = 16;
  void spend(uint64_t cost) {
    used_ += cost;
    if (used_ > kMaxSteps * kStepCost) exhausted();
  }
  [[noreturn]] static void exhausted();
  uint64_t used_ = 0;
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
  Value(List list) : data(make_list(std::move(list))) {}
  Value(Dict dict) : data(make_dict(std::move(dict))) {}
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

  // Shared lists and dicts whose destruction never recurses once per level: nesting has no
  // bound (a loop can wrap a list a million times), so the last owner queues the container
  // and one loop per thread deletes the queue.
  static std::shared_ptr<List> make_list(List list);
  static std::shared_ptr<Dict> make_dict(Dict dict);
};

// Dict lookup; nullptr when absent.
const Value* find(const Dict& dict, const std::string& key);
// Throws Error for JSON nested deeper than Budget::kMaxValueDepth.
Value from_json(const nlohmann::json& j, int depth = 0);
// The traversals below charge `budget` for every element visited and byte built or compared, and
// throw Error past Budget::kMaxValueDepth levels (a list that contains itself ends there).
// Python's str() of a value as Jinja prints it ({{ x }}): None -> "None", True -> "True",
// lists and dicts in repr form; undefined prints as "".
std::string to_output(const Value& v, Budget& budget);
// JSON as transformers' tojson writes it (json.dumps with ensure_ascii=False).
std::string to_json(const Value& v, int indent, Budget& budget);
bool equal(const Value& a, const Value& b, Budget& budget);

}  // namespace deepmoe::jinja
