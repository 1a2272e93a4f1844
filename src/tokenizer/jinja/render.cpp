#include "tokenizer/jinja/render.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstring>
#include <ctime>
#include <unordered_map>

#include "core/error.h"
#include "tokenizer/jinja/value.h"
#include "tokenizer/utf8.h"

namespace deepmoe::jinja {
namespace {

// Templates come with downloaded models: bound what one can make us do. Besides these, every
// render has a Budget (value.h) of steps and text, and the parser bounds the syntax's nesting.
constexpr size_t kMaxRange = 1'000'000;
constexpr size_t kMaxOutputBytes = Budget::kMaxTextBytes;
constexpr int kMaxCallDepth = 128;
// Statements and expressions being rendered inside each other at once (macros calling macros
// multiply the parser's bounds): the interpreter recurses, and a thread's stack is finite.
constexpr int kMaxRenderDepth = 512;

using Args = std::vector<Value>;
using Kwargs = std::vector<std::pair<std::string, Value>>;

// Code points of a UTF-8 string, for Python's character-based indexing and slicing (one step each).
std::vector<std::string> characters(const std::string& s, Budget& budget) {
  std::vector<std::string> out;
  for (size_t pos = 0; pos < s.size();) {
    const size_t start = pos;
    const size_t n = utf8::valid_sequence_length(s, pos);
    pos += std::max<size_t>(n, 1);
    budget.step();
    out.push_back(s.substr(start, pos - start));
  }
  return out;
}

// How many code points characters() would return, without building them.
int64_t character_count(std::string_view s) {
  int64_t count = 0;
  for (size_t pos = 0; pos < s.size(); ++count) pos += std::max<size_t>(utf8::valid_sequence_length(s, pos), 1);
  return count;
}

bool is_py_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

// The first `needle` in `text` at or after `from`, in time linear in the lengths. std::string::find
// tries the needle at every position where its first byte occurs (and std::boyer_moore_searcher
// prepares a long needle in quadratic time): a long needle that almost matches everywhere
// ('a' * 100000 ~ 'b' in 'a' * 10000000) would take the product of the lengths. glibc's memmem
// switches to the Two-Way algorithm for such needles.
size_t find_text(std::string_view text, std::string_view needle, size_t from = 0) {
  if (from > text.size()) return std::string::npos;
  const void* hit = memmem(text.data() + from, text.size() - from, needle.data(), needle.size());
  return hit == nullptr ? std::string::npos : size_t(static_cast<const char*>(hit) - text.data());
}

std::string strip(const std::string& s, bool left, bool right, const Value& chars) {
  bool strip_set[256] = {};  // a table: chars may be as long as s
  if (chars.is_string())
    for (const char c : chars.str()) strip_set[static_cast<unsigned char>(c)] = true;
  const auto drop = [&](char c) {
    return chars.is_string() ? strip_set[static_cast<unsigned char>(c)] : is_py_space(c);
  };
  size_t b = 0, e = s.size();
  if (left)
    while (b < e && drop(s[b])) ++b;
  if (right)
    while (e > b && drop(s[e - 1])) --e;
  return s.substr(b, e - b);
}

std::string ascii_case(std::string s, bool upper) {
  for (char& c : s)
    c = char(upper ? std::toupper(static_cast<unsigned char>(c)) : std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string title_case(const std::string& s) {
  std::string out = s;
  bool start = true;
  for (char& c : out) {
    const auto u = static_cast<unsigned char>(c);
    if (std::isalpha(u)) {
      c = char(start ? std::toupper(u) : std::tolower(u));
      start = false;
    } else {
      start = true;
    }
  }
  return out;
}

std::string replace_all(const std::string& s, const std::string& from, const std::string& to, int64_t count,
                        Budget& budget) {
  if (from.empty()) return s;
  // A short pattern replaced by a long text multiplies the size: count the hits, and check and
  // charge the result, before building it.
  int64_t hits = 0;
  for (size_t pos = find_text(s, from); pos != std::string::npos && (count < 0 || hits < count);
       pos = find_text(s, from, pos + from.size()))
    ++hits;
  Budget::check_text_size(s.size() - uint64_t(hits) * from.size() + uint64_t(hits) * to.size(), "replace()");
  budget.text(s.size() + uint64_t(hits) * to.size());
  std::string out;
  size_t pos = 0;
  for (int64_t n = 0; n < hits; ++n) {
    const size_t hit = find_text(s, from, pos);
    out.append(s, pos, hit - pos);
    out += to;
    pos = hit + from.size();
  }
  return out + s.substr(pos);
}

List split(const std::string& s, const Value& separator, int64_t max_split, Budget& budget) {
  budget.text(s.size());
  List out;
  if (!separator.is_string() || separator.str().empty()) {  // Python's split(): runs of whitespace
    size_t i = 0;
    int64_t splits = 0;
    while (true) {
      while (i < s.size() && is_py_space(s[i])) ++i;
      if (i >= s.size()) break;
      if (max_split >= 0 && splits == max_split) {
        out.emplace_back(strip(s.substr(i), false, true, Value()));
        break;
      }
      size_t j = i;
      while (j < s.size() && !is_py_space(s[j])) ++j;
      budget.step();
      out.emplace_back(s.substr(i, j - i));
      ++splits;
      i = j;
    }
    return out;
  }
  const std::string& sep = separator.str();
  size_t pos = 0;
  for (int64_t n = 0; max_split < 0 || n < max_split; ++n) {
    const size_t hit = find_text(s, sep, pos);
    if (hit == std::string::npos) break;
    budget.step();
    out.emplace_back(s.substr(pos, hit - pos));
    pos = hit + sep.size();
  }
  out.emplace_back(s.substr(pos));
  return out;
}

int compare(const Value& a, const Value& b, int line) {
  if (a.is_number() && b.is_number()) return a.number() < b.number() ? -1 : a.number() > b.number() ? 1 : 0;
  if ((a.is_bool() || a.is_number()) && (b.is_bool() || b.is_number())) {
    const double x = a.is_bool() ? double(std::get<bool>(a.data)) : a.number();
    const double y = b.is_bool() ? double(std::get<bool>(b.data)) : b.number();
    return x < y ? -1 : x > y ? 1 : 0;
  }
  if (a.is_string() && b.is_string()) return a.str().compare(b.str()) < 0 ? -1 : a.str() == b.str() ? 0 : 1;
  fail("chat template line {}: cannot compare {} with {}", line, a.type_name(), b.type_name());
}

const Value* kwarg(const Kwargs& kwargs, const char* name) {
  for (const auto& [k, v] : kwargs)
    if (k == name) return &v;
  return nullptr;
}

// Positional argument i, or keyword `name`, or the fallback.
Value argument(const Args& args, const Kwargs& kwargs, size_t i, const char* name, Value fallback = Value()) {
  if (i < args.size()) return args[i];
  if (const Value* v = kwarg(kwargs, name)) return *v;
  return fallback;
}

int64_t to_int(const Value& v) {
  if (v.is_int()) return std::get<int64_t>(v.data);
  if (v.is_float()) {  // clamped: casting a float beyond int64 (or NaN) is undefined in C++
    const double d = std::get<double>(v.data);
    if (std::isnan(d)) return 0;
    return d >= 9.2e18 ? INT64_MAX : d <= -9.2e18 ? INT64_MIN : int64_t(d);
  }
  if (v.is_bool()) return std::get<bool>(v.data);
  if (v.is_string()) {
    try {
      return std::stoll(v.str());
    } catch (...) {
      return 0;
    }
  }
  return 0;
}

// Python's index normalization: negative counts from the end.
bool normalize_index(int64_t& i, int64_t size) {
  if (i < 0) i += size;
  return i >= 0 && i < size;
}

class Interpreter {
 public:
  explicit Interpreter(const nlohmann::json& context) {
    scopes_.emplace_back();
    auto& globals = scopes_.back();
    for (const auto& [k, v] : context.items()) globals[k] = from_json(v);
    define("raise_exception", [this](Args& args, Kwargs&) -> Value {
      fail("chat template raised an exception: {}", args.empty() ? std::string() : to_output(args[0], budget_));
    });
    define("namespace", [this](Args&, Kwargs& kwargs) -> Value {
      auto fields = Value::make_dict({});
      for (auto& [k, v] : kwargs) fields->emplace_back(k, v);
      namespaces_.push_back(fields);
      return Value(Namespace{fields});
    });
    define("range", [this](Args& args, Kwargs&) -> Value {
      int64_t start = 0, stop = 0, step = 1;
      if (args.size() == 1) stop = to_int(args[0]);
      if (args.size() >= 2) start = to_int(args[0]), stop = to_int(args[1]);
      if (args.size() >= 3) step = to_int(args[2]);
      if (step == 0) fail("range() step must not be zero");
      // The length first (in unsigned arithmetic: stop - start may not fit int64), so that the
      // list is checked and charged before it is built, in one allocation.
      const uint64_t distance = step > 0 ? (stop > start ? uint64_t(stop) - uint64_t(start) : 0)
                                         : (start > stop ? uint64_t(start) - uint64_t(stop) : 0);
      const uint64_t stride = step > 0 ? uint64_t(step) : 0 - uint64_t(step);
      const uint64_t length = distance / stride + (distance % stride != 0);
      if (length > kMaxRange) fail("range() longer than {} items", kMaxRange);
      budget_.step(length);
      List out;
      out.reserve(size_t(length));
      for (uint64_t k = 0; k < length; ++k) out.emplace_back(int64_t(uint64_t(start) + k * uint64_t(step)));
      return Value(std::move(out));
    });
    define("strftime_now", [this](Args& args, Kwargs&) -> Value {
      const std::time_t now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
      std::tm local{};
      localtime_r(&now, &local);
      char buffer[256];
      const std::string format = args.empty() ? "%Y-%m-%d" : to_output(args[0], budget_);
      return Value(std::string(buffer, std::strftime(buffer, sizeof buffer, format.c_str(), &local)));
    });
  }

  std::string run(const Template& t) {
    std::string out;
    render(t.body, out);
    return out;
  }

  ~Interpreter() {
    for (auto& weak : namespaces_)
      if (auto fields = weak.lock()) fields->clear();
    for (auto& weak : appended_)
      if (auto list = weak.lock()) list->clear();
  }
  Interpreter(const Interpreter&) = delete;
  Interpreter& operator=(const Interpreter&) = delete;

 private:
  enum class Flow { kNormal, kBreak, kContinue };

  // One level of rendering or evaluation: the interpreter recurses once per level.
  class Nested {
   public:
    Nested(Interpreter& in, int line) : in_(in) {
      if (++in_.depth_ > kMaxRenderDepth)
        fail("chat template line {}: statements, expressions and macro calls nested deeper than {} levels", line,
             kMaxRenderDepth);
    }
    ~Nested() { --in_.depth_; }
    Nested(const Nested&) = delete;
    Nested& operator=(const Nested&) = delete;

   private:
    Interpreter& in_;
  };

  // Appends a piece of the string join() builds, charged and bounded as it grows.
  void join_piece(std::string& out, const std::string& piece) {
    Budget::check_text_size(uint64_t(out.size()) + piece.size(), "join()");
    budget_.text(piece.size());
    out += piece;
  }

  // Appends to the output (or a block set's or macro's text), charged and bounded as it grows.
  void emit(std::string& out, const std::string& text, int line) {
    if (out.size() + text.size() > kMaxOutputBytes)
      fail("chat template line {}: the output exceeds {} MiB", line, kMaxOutputBytes >> 20);
    budget_.text(text.size());
    out += text;
  }

  void define(const std::string& name, std::function<Value(Args&, Kwargs&)> f) {
    scopes_.front()[name] = Value(std::make_shared<Callable>(Callable{name, std::move(f)}));
  }

  Value lookup(const std::string& name) const {
    for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it)
      if (const auto found = it->find(name); found != it->end()) return found->second;
    return Value();
  }

  Flow render(const Body& body, std::string& out) {
    for (const auto& node : body) {
      const Flow flow = render(*node, out);
      if (flow != Flow::kNormal) return flow;
    }
    return Flow::kNormal;
  }

  Flow render(const Node& node, std::string& out) {
    const Nested nested(*this, node.line);
    budget_.step();
    switch (node.kind) {
      case Node::Kind::kText: emit(out, node.text, node.line); return Flow::kNormal;
      case Node::Kind::kOutput: emit(out, to_output(eval(*node.expr), budget_), node.line); return Flow::kNormal;
      case Node::Kind::kIf:
        for (const auto& [condition, body] : node.branches)
          if (!condition || eval(*condition).truthy()) return render(body, out);
        return Flow::kNormal;
      case Node::Kind::kFor: return render_for(node, out);
      case Node::Kind::kSet: {
        Value value;
        if (node.expr) {
          value = eval(*node.expr);
        } else {
          std::string captured;
          render(node.body, captured);
          value = Value(std::move(captured));
        }
        if (node.attribute.empty()) {
          scopes_.back()[node.text] = std::move(value);
        } else {
          const Value target = lookup(node.text);
          if (!target.is_namespace())
            fail("chat template line {}: cannot set '{}.{}': '{}' is a {}, not a namespace", node.line, node.text,
                 node.attribute, node.text, target.type_name());
          Dict& fields = *std::get<Namespace>(target.data).fields;
          budget_.step(fields.size());
          auto it =
              std::find_if(fields.begin(), fields.end(), [&](const auto& f) { return f.first == node.attribute; });
          if (it == fields.end()) {
            fields.emplace_back(node.attribute, std::move(value));
          } else {
            it->second = std::move(value);
          }
        }
        return Flow::kNormal;
      }
      case Node::Kind::kMacro: define_macro(node); return Flow::kNormal;
      case Node::Kind::kBreak: return Flow::kBreak;
      case Node::Kind::kContinue: return Flow::kContinue;
    }
    return Flow::kNormal;
  }

  void define_macro(const Node& node) {
    const Node* macro = &node;
    scopes_.back()[node.text] = Value(
        std::make_shared<Callable>(Callable{node.text, [this, macro](Args& args, Kwargs& kwargs) -> Value {
                                              std::unordered_map<std::string, Value> frame;
                                              for (size_t i = 0; i < macro->targets.size(); ++i) {
                                                Value v = argument(args, kwargs, i, macro->targets[i].c_str());
                                                if (v.is_undefined() && macro->defaults[i])
                                                  v = eval(*macro->defaults[i]);
                                                frame[macro->targets[i]] = v;
                                              }
                                              if (++call_depth_ > kMaxCallDepth)
                                                fail("chat template: macro calls nested deeper than {}", kMaxCallDepth);
                                              scopes_.push_back(std::move(frame));
                                              std::string out;
                                              render(macro->body, out);
                                              scopes_.pop_back();
                                              --call_depth_;
                                              return Value(std::move(out));
                                            }}));
  }

  // A copy of the items a for loop or a filter walks over (one step each).
  List iterable(const Value& v, int line) {
    if (v.is_list()) {
      budget_.step(v.list().size());
      return v.list();
    }
    if (v.is_dict()) {
      budget_.step(v.dict().size());
      List keys;
      for (const auto& [k, _] : v.dict()) keys.emplace_back(k);
      return keys;
    }
    if (v.is_string()) {
      List chars;
      for (auto& c : characters(v.str(), budget_)) chars.emplace_back(std::move(c));
      return chars;
    }
    if (v.is_undefined() || v.is_none()) return {};
    fail("chat template line {}: cannot iterate over a {}", line, v.type_name());
  }

  Flow render_for(const Node& node, std::string& out) {
    const Value iterated = eval(*node.expr);
    // A list is walked where it is, not copied. The body may append to it (lists only grow):
    // items are looked up by index each time, and those appended are not visited.
    List copied;
    const List* items = &copied;
    if (iterated.is_list()) {
      items = &iterated.list();
    } else {
      copied = iterable(iterated, node.line);
    }
    if (node.filter) {
      List kept;
      const size_t unfiltered = items->size();
      for (size_t i = 0; i < unfiltered; ++i) {
        budget_.step();
        scopes_.emplace_back();
        bind_targets(node, (*items)[i]);
        if (eval(*node.filter).truthy()) kept.push_back((*items)[i]);
        scopes_.pop_back();
      }
      copied = std::move(kept);
      items = &copied;
    }
    if (items->empty()) return render(node.else_body, out);
    const int64_t n = int64_t(items->size());
    for (int64_t i = 0; i < n; ++i) {
      // The iteration and the 9 values of `loop` it builds (an empty body still costs).
      budget_.step(10);
      scopes_.emplace_back();
      bind_targets(node, (*items)[size_t(i)]);
      Dict loop = {{"index", Value(i + 1)},
                   {"index0", Value(i)},
                   {"revindex", Value(n - i)},
                   {"revindex0", Value(n - i - 1)},
                   {"first", Value(i == 0)},
                   {"last", Value(i == n - 1)},
                   {"length", Value(n)},
                   {"previtem", i > 0 ? (*items)[size_t(i - 1)] : Value()},
                   {"nextitem", i + 1 < n ? (*items)[size_t(i + 1)] : Value()}};
      scopes_.back()["loop"] = Value(std::move(loop));
      const Flow flow = render(node.body, out);
      scopes_.pop_back();
      if (flow == Flow::kBreak) break;
    }
    return Flow::kNormal;
  }

  void bind_targets(const Node& node, const Value& item) {
    if (node.targets.size() == 1) {
      scopes_.back()[node.targets[0]] = item;
      return;
    }
    if (!item.is_list() || item.list().size() != node.targets.size())
      fail("chat template line {}: cannot unpack {} into {} loop variables", node.line, item.type_name(),
           node.targets.size());
    for (size_t i = 0; i < node.targets.size(); ++i) scopes_.back()[node.targets[i]] = item.list()[i];
  }

  // Every value an expression produces passes here: strings are copied by value, so their bytes
  // are charged and bounded where they are made.
  Value eval(const Expr& e) {
    const Nested nested(*this, e.line);
    budget_.step();
    Value v = evaluate(e);
    if (v.is_string()) {
      if (v.str().size() > Budget::kMaxTextBytes)
        fail("chat template line {}: a string longer than {} MiB", e.line, Budget::kMaxTextBytes >> 20);
      budget_.text(v.str().size());
    }
    return v;
  }

  Value evaluate(const Expr& e) {
    switch (e.kind) {
      case Expr::Kind::kLiteral:
        switch (e.literal) {
          case Expr::Literal::kNone: return Value(None{});
          case Expr::Literal::kBool: return Value(!e.name.empty());
          case Expr::Literal::kInt: {
            int64_t v = 0;
            const auto [end, error] = std::from_chars(e.name.data(), e.name.data() + e.name.size(), v);
            if (error != std::errc() || end != e.name.data() + e.name.size())
              return Value(std::strtod(e.name.c_str(), nullptr));  // beyond int64: a float, not a crash
            return Value(v);
          }
          case Expr::Literal::kFloat: return Value(std::strtod(e.name.c_str(), nullptr));
          case Expr::Literal::kString: return Value(e.name);
        }
        return Value();
      case Expr::Kind::kName: return lookup(e.name);
      case Expr::Kind::kList: {
        List list;
        for (const auto& a : e.args) list.push_back(eval(*a));
        return Value(std::move(list));
      }
      case Expr::Kind::kDict: {
        Dict dict;
        for (size_t i = 0; i + 1 < e.args.size(); i += 2) {
          const Value key = eval(*e.args[i]);
          if (!key.is_string()) fail("chat template line {}: dict keys must be strings", e.line);
          dict.emplace_back(key.str(), eval(*e.args[i + 1]));
        }
        return Value(std::move(dict));
      }
      case Expr::Kind::kAttribute: return attribute(eval(*e.args[0]), e.name, e.line);
      case Expr::Kind::kSubscript: return subscript(eval(*e.args[0]), eval(*e.args[1]), e.line);
      case Expr::Kind::kSlice: return slice(e);
      case Expr::Kind::kCall: return call(e);
      case Expr::Kind::kFilter: return filter(e);
      case Expr::Kind::kTest: return Value(test(e) != e.negated);
      case Expr::Kind::kUnary: {
        const Value v = eval(*e.args[0]);
        if (e.name == "not") return Value(!v.truthy());
        if (!v.is_number()) fail("chat template line {}: unary '{}' on a {}", e.line, e.name, v.type_name());
        if (e.name == "+") return v;
        if (v.is_int() && std::get<int64_t>(v.data) != INT64_MIN) return Value(-std::get<int64_t>(v.data));
        return Value(-v.number());
      }
      case Expr::Kind::kBinary: return binary(e);
      case Expr::Kind::kConditional:
        if (eval(*e.args[0]).truthy()) return eval(*e.args[1]);
        return e.args[2] ? eval(*e.args[2]) : Value();
    }
    return Value();
  }

  Value attribute(const Value& object, const std::string& name, int line) {
    if (object.is_dict()) {
      budget_.step(object.dict().size());  // dicts are searched linearly
      if (const Value* v = find(object.dict(), name)) return *v;
    } else if (object.is_namespace()) {
      budget_.step(std::get<Namespace>(object.data).fields->size());
      if (const Value* v = find(*std::get<Namespace>(object.data).fields, name)) return *v;
      return Value();
    }
    // Methods of strings, lists and dicts come back as bound callables; any other name of a
    // dict is a missing key (undefined), as in Jinja.
    static const char* const kStringMethods[] = {"strip",   "lstrip",     "rstrip",     "upper",    "lower",
                                                 "title",   "capitalize", "startswith", "endswith", "split",
                                                 "replace", "find",       "count",      "join"};
    static const char* const kDictMethods[] = {"items", "keys", "values", "get"};
    static const char* const kListMethods[] = {"append", "index"};
    const auto known = [&](const auto& names) {
      return std::find(std::begin(names), std::end(names), name) != std::end(names);
    };
    if ((object.is_string() && known(kStringMethods)) || (object.is_dict() && known(kDictMethods)) ||
        (object.is_list() && known(kListMethods))) {
      Value self = object;
      const std::string method = name;
      return Value(std::make_shared<Callable>(Callable{name, [this, self, method, line](Args& args, Kwargs& kwargs) {
                                                         return call_method(self, method, args, kwargs, line);
                                                       }}));
    }
    return Value();
  }

  Value subscript(const Value& object, const Value& key, int line) {
    if (object.is_dict()) {
      if (!key.is_string()) return Value();
      budget_.step(object.dict().size());
      const Value* v = find(object.dict(), key.str());
      return v ? *v : Value();
    }
    if (object.is_namespace() && key.is_string()) return attribute(object, key.str(), line);
    if (object.is_list() && (key.is_int() || key.is_bool())) {
      int64_t i = to_int(key);
      return normalize_index(i, int64_t(object.list().size())) ? object.list()[size_t(i)] : Value();
    }
    if (object.is_string() && key.is_int()) {
      const auto chars = characters(object.str(), budget_);
      int64_t i = to_int(key);
      return normalize_index(i, int64_t(chars.size())) ? Value(chars[size_t(i)]) : Value();
    }
    if (object.is_undefined() || object.is_none()) return Value();
    fail("chat template line {}: cannot index a {} with a {}", line, object.type_name(), key.type_name());
  }

  Value slice(const Expr& e) {
    const Value object = eval(*e.args[0]);
    const auto part = [&](size_t i) -> std::optional<int64_t> {
      if (!e.args[i]) return std::nullopt;
      const Value v = eval(*e.args[i]);
      if (v.is_none()) return std::nullopt;
      return to_int(v);
    };
    const std::optional<int64_t> start = part(1), stop = part(2), step_opt = part(3);
    const int64_t step = step_opt.value_or(1);
    if (step == 0) fail("chat template line {}: slice step cannot be zero", e.line);
    List items;
    std::vector<std::string> chars;
    if (object.is_list()) {
      budget_.step(object.list().size());
      items = object.list();
    } else if (object.is_string()) {
      chars = characters(object.str(), budget_);
      for (auto& c : chars) items.emplace_back(c);
    } else {
      fail("chat template line {}: cannot slice a {}", e.line, object.type_name());
    }
    const int64_t n = int64_t(items.size());
    // Python's slice.indices().
    const auto clamp = [&](std::optional<int64_t> v, int64_t fallback, bool is_start) {
      if (!v) return fallback;
      int64_t x = *v;
      if (x < 0) x += n;
      if (step > 0) return std::clamp<int64_t>(x, 0, n);
      (void)is_start;
      return std::clamp<int64_t>(x, -1, n - 1);
    };
    const int64_t b = clamp(start, step > 0 ? 0 : n - 1, true), end = clamp(stop, step > 0 ? n : -1, false);
    List out;
    for (int64_t i = b; step > 0 ? i < end : i > end;) {
      out.push_back(items[size_t(i)]);
      if (__builtin_add_overflow(i, step, &i)) break;
    }
    if (object.is_string()) {
      std::string s;
      for (const auto& v : out) s += v.str();
      return Value(std::move(s));
    }
    return Value(std::move(out));
  }

  void evaluate_arguments(const Expr& e, size_t first, Args& args, Kwargs& kwargs) {
    for (size_t i = first; i < e.args.size(); ++i) args.push_back(eval(*e.args[i]));
    for (const auto& [k, v] : e.kwargs) kwargs.emplace_back(k, eval(*v));
  }

  Value call(const Expr& e) {
    const Value callee = eval(*e.args[0]);
    Args args;
    Kwargs kwargs;
    evaluate_arguments(e, 1, args, kwargs);
    if (!callee.is_callable() && e.args[0]->kind == Expr::Kind::kAttribute) {
      const Value object = eval(*e.args[0]->args[0]);
      if (object.is_string() || object.is_list() || object.is_dict())
        fail("chat template line {}: unsupported method '{}' of a {}", e.line, e.args[0]->name, object.type_name());
    }
    if (!callee.is_callable()) {
      const std::string what = e.args[0]->kind == Expr::Kind::kName || e.args[0]->kind == Expr::Kind::kAttribute
                                   ? "'" + e.args[0]->name + "'"
                                   : "this value";
      fail("chat template line {}: {} is not a function (unsupported or undefined)", e.line, what);
    }
    auto& c = *std::get<std::shared_ptr<Callable>>(callee.data);
    return c.call(args, kwargs);
  }

  Value call_method(const Value& self, const std::string& method, Args& args, Kwargs& kwargs, int line) {
    if (self.is_string()) {
      const std::string& s = self.str();
      if (method == "strip") return Value(strip(s, true, true, argument(args, kwargs, 0, "chars")));
      if (method == "lstrip") return Value(strip(s, true, false, argument(args, kwargs, 0, "chars")));
      if (method == "rstrip") return Value(strip(s, false, true, argument(args, kwargs, 0, "chars")));
      if (method == "upper") return Value(ascii_case(s, true));
      if (method == "lower") return Value(ascii_case(s, false));
      if (method == "title") return Value(title_case(s));
      if (method == "capitalize")
        return Value(s.empty() ? s : ascii_case(s.substr(0, 1), true) + ascii_case(s.substr(1), false));
      if (method == "startswith" || method == "endswith") {
        const Value prefix = argument(args, kwargs, 0, "prefix");
        const auto check = [&](const std::string& p) {
          return method == "startswith" ? s.compare(0, p.size(), p) == 0
                                        : s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0;
        };
        if (prefix.is_string()) return Value(check(prefix.str()));
        if (prefix.is_list()) {
          budget_.step(prefix.list().size());
          for (const auto& p : prefix.list())
            if (p.is_string() && check(p.str())) return Value(true);
          return Value(false);
        }
      }
      if (method == "split")
        return Value(split(s, argument(args, kwargs, 0, "sep"),
                           to_int(argument(args, kwargs, 1, "maxsplit", Value(-1))), budget_));
      if (method == "replace") {
        const Value from = argument(args, kwargs, 0, "old"), to = argument(args, kwargs, 1, "new");
        if (from.is_string() && to.is_string())
          return Value(
              replace_all(s, from.str(), to.str(), to_int(argument(args, kwargs, 2, "count", Value(-1))), budget_));
      }
      if (method == "find") {
        const Value sub = argument(args, kwargs, 0, "sub");
        if (sub.is_string()) {
          const size_t hit = find_text(s, sub.str());
          return Value(hit == std::string::npos ? int64_t(-1) : character_count(std::string_view(s).substr(0, hit)));
        }
      }
      if (method == "count") {
        const Value sub = argument(args, kwargs, 0, "sub");
        if (sub.is_string() && !sub.str().empty()) {
          int64_t n = 0;
          for (size_t pos = find_text(s, sub.str()); pos != std::string::npos;
               pos = find_text(s, sub.str(), pos + sub.str().size()))
            ++n;
          return Value(n);
        }
      }
      if (method == "join") {
        std::string out;
        const List items = iterable(argument(args, kwargs, 0, "iterable"), line);
        for (size_t i = 0; i < items.size(); ++i) {
          if (i) join_piece(out, s);
          join_piece(out, to_output(items[i], budget_));
        }
        return Value(std::move(out));
      }
    } else if (self.is_dict()) {
      if (method == "items") {
        budget_.step(self.dict().size());
        List out;
        for (const auto& [k, v] : self.dict()) out.emplace_back(List{Value(k), v});
        return Value(std::move(out));
      }
      if (method == "keys" || method == "values") {
        budget_.step(self.dict().size());
        List out;
        for (const auto& [k, v] : self.dict()) out.push_back(method == "keys" ? Value(k) : v);
        return Value(std::move(out));
      }
      if (method == "get") {
        const Value key = argument(args, kwargs, 0, "key");
        budget_.step(self.dict().size());
        if (key.is_string())
          if (const Value* v = find(self.dict(), key.str())) return *v;
        return argument(args, kwargs, 1, "default", Value(None{}));
      }
    } else if (self.is_list()) {
      if (method == "append" && args.size() == 1) {
        // A list can now hold itself (l.append(l)), a cycle of shared pointers that the
        // destructor breaks; appended strings and numbers cannot close one.
        const auto& list = std::get<std::shared_ptr<List>>(self.data);
        if (!args[0].is_string() && !args[0].is_number() && !args[0].is_bool() && !args[0].is_none() &&
            (appended_.empty() || appended_.back().lock() != list))  // once for a loop of appends
          appended_.push_back(list);
        self.list().push_back(args[0]);
        return Value(None{});
      }
      if (method == "index" && args.size() == 1) {
        for (size_t i = 0; i < self.list().size(); ++i)
          if (equal(self.list()[i], args[0], budget_)) return Value(int64_t(i));
        fail("chat template line {}: list.index(): value not in list", line);
      }
    }
    fail("chat template line {}: unsupported method '{}' of a {}", line, method, self.type_name());
  }

  Value binary(const Expr& e) {
    const std::string& op = e.name;
    if (op == "and") {
      const Value left = eval(*e.args[0]);
      return left.truthy() ? eval(*e.args[1]) : left;
    }
    if (op == "or") {
      const Value left = eval(*e.args[0]);
      return left.truthy() ? left : eval(*e.args[1]);
    }
    const Value a = eval(*e.args[0]), b = eval(*e.args[1]);
    if (op == "==") return Value(equal(a, b, budget_));
    if (op == "!=") return Value(!equal(a, b, budget_));
    if (op == "<") return Value(compare(a, b, e.line) < 0);
    if (op == ">") return Value(compare(a, b, e.line) > 0);
    if (op == "<=") return Value(compare(a, b, e.line) <= 0);
    if (op == ">=") return Value(compare(a, b, e.line) >= 0);
    if (op == "in" || op == "not in") return Value(contains(b, a, e.line) == (op == "in"));
    if (op == "~") {
      std::string out = to_output(a, budget_);
      if (b.is_string()) {
        out += b.str();  // not copied first
      } else {
        out += to_output(b, budget_);
      }
      return Value(std::move(out));
    }
    if (op == "+") {
      if (a.is_string() && b.is_string()) return Value(a.str() + b.str());
      if (a.is_list() && b.is_list()) {
        budget_.step(a.list().size() + b.list().size());
        List out = a.list();
        out.insert(out.end(), b.list().begin(), b.list().end());
        return Value(std::move(out));
      }
    }
    if (op == "*" && a.is_string() && b.is_int()) {
      const int64_t times = std::get<int64_t>(b.data);
      if (a.str().empty() || times <= 0) return Value("");  // '' * 10**18 is '' at once, not after 10**18 steps
      if (double(a.str().size()) * double(times) > double(kMaxOutputBytes))
        fail("chat template line {}: string repetition exceeds {} MiB", e.line, kMaxOutputBytes >> 20);
      std::string out;
      out.reserve(a.str().size() * size_t(times));
      for (int64_t i = 0; i < times; ++i) out += a.str();
      return Value(std::move(out));
    }
    if ((a.is_number() || a.is_bool()) && (b.is_number() || b.is_bool())) {
      const bool ints = !a.is_float() && !b.is_float();
      const int64_t x = ints ? to_int(a) : 0, y = ints ? to_int(b) : 0;
      const double fx = a.is_bool() ? double(to_int(a)) : a.number(), fy = b.is_bool() ? double(to_int(b)) : b.number();
      // Python's ints do not overflow; ours turn into floats where int64 would.
      int64_t exact = 0;
      if (op == "+") return ints && !__builtin_add_overflow(x, y, &exact) ? Value(exact) : Value(fx + fy);
      if (op == "-") return ints && !__builtin_sub_overflow(x, y, &exact) ? Value(exact) : Value(fx - fy);
      if (op == "*") return ints && !__builtin_mul_overflow(x, y, &exact) ? Value(exact) : Value(fx * fy);
      if (op == "/") {
        if (fy == 0) fail("chat template line {}: division by zero", e.line);
        return Value(fx / fy);
      }
      if (op == "//" || op == "%") {
        if (fy == 0) fail("chat template line {}: division by zero", e.line);
        if (ints && !(x == INT64_MIN && y == -1)) {
          int64_t q = x / y, r = x % y;
          if (r != 0 && ((r < 0) != (y < 0))) --q, r += y;  // Python floors
          return op == "//" ? Value(q) : Value(r);
        }
        const double q = std::floor(fx / fy);
        return op == "//" ? Value(q) : Value(fx - q * fy);
      }
      if (op == "**") {
        const double power = std::pow(fx, fy);
        if (ints && y >= 0 && std::fabs(power) < 9.0e18) return Value(int64_t(std::llround(power)));
        return Value(power);
      }
    }
    fail("chat template line {}: unsupported operands for '{}': {} and {}", e.line, op, a.type_name(), b.type_name());
  }

  bool contains(const Value& container, const Value& item, int line) {
    if (container.is_string()) {
      if (!item.is_string()) fail("chat template line {}: 'in <string>' needs a string on the left", line);
      return find_text(container.str(), item.str()) != std::string::npos;
    }
    if (container.is_list()) {
      for (const auto& v : container.list())
        if (equal(v, item, budget_)) return true;
      return false;
    }
    if (container.is_dict()) {
      budget_.step(container.dict().size());
      return item.is_string() && find(container.dict(), item.str()) != nullptr;
    }
    if (container.is_undefined() || container.is_none()) return false;
    fail("chat template line {}: 'in' on a {}", line, container.type_name());
  }

  bool test(const Expr& e) {
    const Value v = eval(*e.args[0]);
    Args args;
    Kwargs kwargs;
    evaluate_arguments(e, 1, args, kwargs);
    return apply_test(e.name, v, args, e.line);
  }

  bool apply_test(const std::string& name, const Value& v, const Args& args, int line) {
    if (name == "defined") return !v.is_undefined();
    if (name == "undefined") return v.is_undefined();
    if (name == "none") return v.is_none();
    if (name == "string") return v.is_string();
    if (name == "number") return v.is_number();
    if (name == "integer") return v.is_int();
    if (name == "float") return v.is_float();
    if (name == "boolean") return v.is_bool();
    if (name == "true") return v.is_bool() && std::get<bool>(v.data);
    if (name == "false") return v.is_bool() && !std::get<bool>(v.data);
    if (name == "mapping") return v.is_dict();
    if (name == "sequence") return v.is_list() || v.is_string();
    if (name == "iterable") return v.is_list() || v.is_string() || v.is_dict();
    if (name == "callable") return v.is_callable();
    if (name == "odd" || name == "even") return v.is_int() && (std::get<int64_t>(v.data) % 2 != 0) == (name == "odd");
    if (name == "divisibleby" && args.size() == 1) return to_int(args[0]) != 0 && to_int(v) % to_int(args[0]) == 0;
    if ((name == "equalto" || name == "eq" || name == "sameas") && args.size() == 1) return equal(v, args[0], budget_);
    if (name == "ne" && args.size() == 1) return !equal(v, args[0], budget_);
    if (name == "in" && args.size() == 1) return contains(args[0], v, line);
    if (name == "lower" || name == "upper") {
      if (!v.is_string()) return false;
      budget_.text(v.str().size());  // select("lower") runs this on every item
      return ascii_case(v.str(), name == "upper") == v.str();
    }
    fail("chat template line {}: unsupported test '{}'", line, name);
  }

  // selectattr / rejectattr / select / reject share the "attribute, test, argument" form.
  List select(const Value& input, const Args& args, bool by_attribute, bool keep, int line) {
    List out;
    for (const auto& item : iterable(input, line)) {
      size_t next = 0;
      Value subject = item;
      if (by_attribute) {
        if (args.empty() || !args[0].is_string())
          fail("chat template line {}: selectattr needs an attribute name", line);
        subject = attribute(item, args[0].str(), line);
        next = 1;
      }
      bool result;
      if (next < args.size()) {
        if (!args[next].is_string()) fail("chat template line {}: the test name must be a string", line);
        const Args rest(args.begin() + long(next) + 1, args.end());
        result = apply_test(args[next].str(), subject, rest, line);
      } else {
        result = subject.truthy();
      }
      if (result == keep) out.push_back(item);
    }
    return out;
  }

  Value filter(const Expr& e) {
    const Value v = eval(*e.args[0]);
    Args args;
    Kwargs kwargs;
    evaluate_arguments(e, 1, args, kwargs);
    const std::string& name = e.name;
    if (name == "trim")
      return Value(v.is_string() ? strip(v.str(), true, true, argument(args, kwargs, 0, "chars"))
                                 : to_output(v, budget_));
    if (name == "upper") return Value(ascii_case(to_output(v, budget_), true));
    if (name == "lower") return Value(ascii_case(to_output(v, budget_), false));
    if (name == "title") return Value(title_case(to_output(v, budget_)));
    if (name == "capitalize") {
      const std::string s = to_output(v, budget_);
      return Value(s.empty() ? s : ascii_case(s.substr(0, 1), true) + ascii_case(s.substr(1), false));
    }
    if (name == "length" || name == "count") {
      if (v.is_string()) return Value(character_count(v.str()));
      if (v.is_list()) return Value(int64_t(v.list().size()));
      if (v.is_dict()) return Value(int64_t(v.dict().size()));
      if (v.is_undefined()) return Value(int64_t(0));
      fail("chat template line {}: length of a {}", e.line, v.type_name());
    }
    if (name == "first" || name == "last") {
      if (v.is_list()) {  // without copying the list
        if (v.list().empty()) return Value();
        return name == "first" ? v.list().front() : v.list().back();
      }
      const List items = iterable(v, e.line);
      if (items.empty()) return Value();
      return name == "first" ? items.front() : items.back();
    }
    if (name == "join") {
      const Value sep = argument(args, kwargs, 0, "d", Value(""));
      const Value attr = argument(args, kwargs, 1, "attribute");
      std::string out;
      const List items = iterable(v, e.line);
      const std::string separator = to_output(sep, budget_);
      for (size_t i = 0; i < items.size(); ++i) {
        if (i) join_piece(out, separator);
        join_piece(out, to_output(attr.is_string() ? attribute(items[i], attr.str(), e.line) : items[i], budget_));
      }
      return Value(std::move(out));
    }
    if (name == "default" || name == "d") {
      const bool boolean = argument(args, kwargs, 1, "boolean", Value(false)).truthy();
      if (v.is_undefined() || (boolean && !v.truthy())) return argument(args, kwargs, 0, "default_value", Value(""));
      return v;
    }
    if (name == "string") return Value(to_output(v, budget_));
    if (name == "int") return Value(to_int(v));
    if (name == "float")
      return Value(v.is_number() ? v.number() : v.is_string() ? std::strtod(v.str().c_str(), nullptr) : 0.0);
    if (name == "abs" && v.is_number())
      return v.is_int() ? Value(int64_t(std::llabs(std::get<int64_t>(v.data)))) : Value(std::fabs(v.number()));
    if (name == "tojson") {
      const int64_t indent = to_int(argument(args, kwargs, 0, "indent", Value(0)));
      Budget::check_text_size(uint64_t(std::max<int64_t>(indent, 0)), "tojson's indentation");
      return Value(to_json(v, int(indent), budget_));
    }
    if (name == "replace" && v.is_string()) {
      const Value from = argument(args, kwargs, 0, "old"), to = argument(args, kwargs, 1, "new");
      if (from.is_string() && to.is_string())
        return Value(
            replace_all(v.str(), from.str(), to.str(), to_int(argument(args, kwargs, 2, "count", Value(-1))), budget_));
    }
    if (name == "list") return Value(iterable(v, e.line));
    if (name == "items" && v.is_dict()) {
      budget_.step(v.dict().size());
      List out;
      for (const auto& [k, item] : v.dict()) out.emplace_back(List{Value(k), item});
      return Value(std::move(out));
    }
    if (name == "reverse") {
      if (v.is_string()) {
        auto chars = characters(v.str(), budget_);
        std::reverse(chars.begin(), chars.end());
        std::string out;
        for (auto& c : chars) out += c;
        return Value(std::move(out));
      }
      List items = iterable(v, e.line);
      std::reverse(items.begin(), items.end());
      return Value(std::move(items));
    }
    if (name == "selectattr" || name == "rejectattr") return Value(select(v, args, true, name == "selectattr", e.line));
    if (name == "select" || name == "reject") return Value(select(v, args, false, name == "select", e.line));
    if (name == "map") {
      List out;
      const Value attr = kwarg(kwargs, "attribute") ? *kwarg(kwargs, "attribute") : Value();
      for (const auto& item : iterable(v, e.line)) {
        if (attr.is_string()) {
          Value got = attribute(item, attr.str(), e.line);
          if (got.is_undefined() && kwarg(kwargs, "default")) got = *kwarg(kwargs, "default");
          out.push_back(got);
        } else if (!args.empty() && args[0].is_string()) {
          Expr call;
          call.kind = Expr::Kind::kFilter;
          call.name = args[0].str();
          call.line = e.line;
          out.push_back(apply_simple_filter(args[0].str(), item, e.line));
        } else {
          fail("chat template line {}: map needs attribute= or a filter name", e.line);
        }
      }
      return Value(std::move(out));
    }
    if (name == "unique") {
      List out;
      for (const auto& item : iterable(v, e.line))
        if (std::none_of(out.begin(), out.end(), [&](const Value& o) { return equal(o, item, budget_); }))
          out.push_back(item);
      return Value(std::move(out));
    }
    if (name == "safe" || name == "e" || name == "escape") {
      if (name == "safe") return v;
    }
    if (name == "indent" && v.is_string()) {
      const int64_t width = to_int(argument(args, kwargs, 0, "width", Value(4)));
      const bool first = argument(args, kwargs, 1, "first", Value(false)).truthy();
      // Every line grows by the width: check and charge the result before building it.
      const uint64_t pad_width = uint64_t(std::max<int64_t>(width, 0));
      const uint64_t pads = uint64_t(std::count(v.str().begin(), v.str().end(), '\n')) + (first ? 1 : 0);
      Budget::check_text_size(pad_width, "indent()");
      Budget::check_text_size(v.str().size() + pads * pad_width, "indent()");
      budget_.text(v.str().size() + pads * pad_width);
      const std::string pad(size_t(pad_width), ' ');
      std::string out = first ? pad : "";
      for (const char c : v.str()) {
        out += c;
        if (c == '\n') out += pad;
      }
      return Value(std::move(out));
    }
    fail("chat template line {}: unsupported filter '{}'", e.line, name);
  }

  // Filters applied by name from map(): the one-argument ones.
  Value apply_simple_filter(const std::string& name, const Value& v, int line) {
    // Their results are not charged by eval(): the text is charged here.
    const auto charged = [&](std::string text) {
      budget_.text(text.size());
      return Value(std::move(text));
    };
    if (name == "string") return charged(to_output(v, budget_));
    if (name == "trim") return charged(strip(to_output(v, budget_), true, true, Value()));
    if (name == "lower") return charged(ascii_case(to_output(v, budget_), false));
    if (name == "upper") return charged(ascii_case(to_output(v, budget_), true));
    if (name == "int") return Value(to_int(v));
    if (name == "tojson") return charged(to_json(v, 0, budget_));
    fail("chat template line {}: unsupported filter '{}' in map()", line, name);
  }

  std::vector<std::unordered_map<std::string, Value>> scopes_;
  // Every namespace() made, to empty at the end: `{% set ns.x = ns %}` makes a namespace hold
  // itself, a cycle of shared pointers that would otherwise never be freed (found by fuzzing).
  std::vector<std::weak_ptr<Dict>> namespaces_;
  // Lists something was appended to that could close a cycle, emptied at the end as namespaces are.
  std::vector<std::weak_ptr<List>> appended_;
  int call_depth_ = 0;
  int depth_ = 0;  // Nested levels now
  Budget budget_;
};

}  // namespace

std::string render(const Template& tmpl, const nlohmann::json& context) {
  Interpreter interpreter(context);
  return interpreter.run(tmpl);
}

}  // namespace deepmoe::jinja
