// Lexer and recursive-descent parser for the Jinja subset of chat templates. Precedence follows
// Jinja: conditional < or < and < not < comparison (in, ==, ...) < ~ < + - < * / // % < ** <
// unary < postfix (attribute, subscript, call, | filter, is test).
#include <cctype>

#include "core/error.h"
#include "tokenizer/jinja/ast.h"

namespace deepmoe::jinja {
namespace {

// HF's settings (transformers and @huggingface/jinja): drop one trailing newline, lstrip_blocks
// (spaces and tabs before a block tag on its line), trim_blocks (the newline after a block tag),
// and the transformers-only {% generation %} markers.
bool is_blank(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

// Removes {% generation %} / {% endgeneration %} tags; a '-' on a side also drops the
// whitespace on that side.
std::string drop_generation_tags(const std::string& s) {
  std::string out;
  size_t i = 0;
  while (i < s.size()) {
    if (s.compare(i, 2, "{%") == 0) {
      size_t j = i + 2;
      const bool left = j < s.size() && s[j] == '-';
      if (left) ++j;
      while (j < s.size() && is_blank(s[j])) ++j;
      if (s.compare(j, 3, "end") == 0) j += 3;
      if (s.compare(j, 10, "generation") == 0) {
        j += 10;
        while (j < s.size() && is_blank(s[j])) ++j;
        const bool right = j < s.size() && s[j] == '-';
        if (right) ++j;
        if (s.compare(j, 2, "%}") == 0) {
          j += 2;
          if (left)
            while (!out.empty() && is_blank(out.back())) out.pop_back();
          if (right)
            while (j < s.size() && is_blank(s[j])) ++j;
          i = j;
          continue;
        }
      }
    }
    out += s[i++];
  }
  return out;
}

// HF's settings (transformers and @huggingface/jinja): drop one trailing newline, lstrip_blocks
// (spaces and tabs before a block or comment tag on its line), trim_blocks (the newline right
// after a block or comment tag), and the transformers-only {% generation %} markers.
std::string preprocess(std::string source) {
  if (!source.empty() && source.back() == '\n') source.pop_back();
  std::string stripped;
  for (size_t i = 0; i < source.size();) {
    if (i == 0 || source[i - 1] == '\n') {
      size_t j = i;
      while (j < source.size() && (source[j] == ' ' || source[j] == '\t')) ++j;
      if (j + 1 < source.size() && source[j] == '{' &&
          (source[j + 1] == '#' || source[j + 1] == '%' || source[j + 1] == '-')) {
        i = j;
      }
    }
    stripped += source[i++];
  }
  std::string trimmed;
  for (size_t i = 0; i < stripped.size(); ++i) {
    trimmed += stripped[i];
    if (stripped[i] == '}' && i > 0 && (stripped[i - 1] == '#' || stripped[i - 1] == '%' || stripped[i - 1] == '-') &&
        i + 1 < stripped.size() && stripped[i + 1] == '\n')
      ++i;
  }
  return drop_generation_tags(trimmed);
}

struct Token {
  enum class Kind { kText, kOpenOutput, kOpenStatement, kClose, kName, kString, kInt, kFloat, kOperator, kEnd };
  Kind kind;
  std::string text;
  int line;
};

class Lexer {
 public:
  explicit Lexer(const std::string& source) : src_(source) {}

  std::vector<Token> run() {
    while (pos_ < src_.size()) {
      const size_t open = find_open(pos_);
      std::string text = src_.substr(pos_, open - pos_);
      if (open < src_.size() && src_[open + 2] == '-') rtrim(text);
      if (trim_next_) ltrim(text);
      trim_next_ = false;
      if (!text.empty()) push(Token::Kind::kText, text);
      line_ += count_lines(pos_, open);
      pos_ = open;
      if (pos_ >= src_.size()) break;
      const char kind = src_[pos_ + 1];
      pos_ += 2;
      if (pos_ < src_.size() && (src_[pos_] == '-' || src_[pos_] == '+')) ++pos_;
      if (kind == '#') {
        const size_t close = src_.find("#}", pos_);
        if (close == std::string::npos) fail("chat template line {}: unterminated comment", line_);
        trim_next_ = close > pos_ && src_[close - 1] == '-';
        line_ += count_lines(pos_, close);
        pos_ = close + 2;
        continue;
      }
      push(kind == '{' ? Token::Kind::kOpenOutput : Token::Kind::kOpenStatement, "");
      lex_tag(kind == '{' ? '}' : '%');
    }
    push(Token::Kind::kEnd, "");
    return std::move(tokens_);
  }

 private:
  size_t find_open(size_t from) const {
    for (size_t i = from; i + 1 < src_.size(); ++i)
      if (src_[i] == '{' && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#')) return i;
    return src_.size();
  }
  int count_lines(size_t from, size_t to) const {
    int n = 0;
    for (size_t i = from; i < to && i < src_.size(); ++i) n += src_[i] == '\n';
    return n;
  }
  static void rtrim(std::string& s) {
    while (!s.empty() && is_blank(s.back())) s.pop_back();
  }
  static void ltrim(std::string& s) {
    size_t i = 0;
    while (i < s.size() && is_blank(s[i])) ++i;
    s.erase(0, i);
  }
  void push(Token::Kind kind, std::string text) { tokens_.push_back({kind, std::move(text), line_}); }

  // Tokens up to the closing "}}" or "%}" (with an optional '-' that trims the text after).
  void lex_tag(char closer) {
    while (true) {
      while (pos_ < src_.size() && is_blank(src_[pos_])) line_ += src_[pos_++] == '\n';
      if (pos_ >= src_.size()) fail("chat template line {}: unterminated tag", line_);
      const char c = src_[pos_];
      if ((c == '-' || c == '+') && pos_ + 2 < src_.size() + 0 && src_[pos_ + 1] == closer && src_[pos_ + 2] == '}') {
        trim_next_ = c == '-';
        pos_ += 3;
        push(Token::Kind::kClose, "");
        return;
      }
      if (c == closer && pos_ + 1 < src_.size() && src_[pos_ + 1] == '}') {
        pos_ += 2;
        push(Token::Kind::kClose, "");
        return;
      }
      if (c == '\'' || c == '"') {
        lex_string(c);
      } else if (std::isdigit(static_cast<unsigned char>(c))) {
        lex_number();
      } else if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        const size_t start = pos_;
        while (pos_ < src_.size() && (std::isalnum(static_cast<unsigned char>(src_[pos_])) || src_[pos_] == '_'))
          ++pos_;
        push(Token::Kind::kName, src_.substr(start, pos_ - start));
      } else {
        static const char* const kOperators[] = {"//", "**", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<",
                                                 ">",  "=",  "(",  ")",  "[",  "]",  "{", "}", ",", ".", ":", "|"};
        bool matched = false;
        for (const char* op : kOperators) {
          const size_t n = std::char_traits<char>::length(op);
          if (src_.compare(pos_, n, op) == 0) {
            push(Token::Kind::kOperator, op);
            pos_ += n;
            matched = true;
            break;
          }
        }
        if (!matched) fail("chat template line {}: unexpected character '{}'", line_, c);
      }
    }
  }

  void lex_string(char quote) {
    std::string value;
    ++pos_;
    while (pos_ < src_.size() && src_[pos_] != quote) {
      char c = src_[pos_++];
      if (c == '\\' && pos_ < src_.size()) {
        const char e = src_[pos_++];
        switch (e) {
          case 'n': c = '\n'; break;
          case 't': c = '\t'; break;
          case 'r': c = '\r'; break;
          case 'b': c = '\b'; break;
          case 'f': c = '\f'; break;
          case 'v': c = '\v'; break;
          case '\\':
          case '\'':
          case '"': c = e; break;
          default: value += '\\'; c = e;
        }
      }
      line_ += c == '\n';
      value += c;
    }
    if (pos_ >= src_.size()) fail("chat template line {}: unterminated string", line_);
    ++pos_;
    push(Token::Kind::kString, value);
  }

  void lex_number() {
    const size_t start = pos_;
    while (pos_ < src_.size() && std::isdigit(static_cast<unsigned char>(src_[pos_]))) ++pos_;
    bool is_float = false;
    if (pos_ + 1 < src_.size() && src_[pos_] == '.' && std::isdigit(static_cast<unsigned char>(src_[pos_ + 1]))) {
      is_float = true;
      ++pos_;
      while (pos_ < src_.size() && std::isdigit(static_cast<unsigned char>(src_[pos_]))) ++pos_;
    }
    push(is_float ? Token::Kind::kFloat : Token::Kind::kInt, src_.substr(start, pos_ - start));
  }

  const std::string& src_;
  size_t pos_ = 0;
  int line_ = 1;
  bool trim_next_ = false;
  std::vector<Token> tokens_;
};

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : tokens_(std::move(tokens)) {}

  Template run() {
    Template t;
    const std::string end = parse_body(t.body, {});
    if (!end.empty()) fail("chat template line {}: unexpected '{{% {} %}}'", peek().line, end);
    return t;
  }

 private:
  const Token& peek(size_t ahead = 0) const { return tokens_[std::min(pos_ + ahead, tokens_.size() - 1)]; }
  const Token& next() { return tokens_[std::min(pos_++, tokens_.size() - 1)]; }
  bool at(Token::Kind kind, const char* text = nullptr, size_t ahead = 0) const {
    const Token& t = peek(ahead);
    return t.kind == kind && (text == nullptr || t.text == text);
  }
  bool at_op(const char* op) const { return at(Token::Kind::kOperator, op); }
  bool at_name(const char* name) const { return at(Token::Kind::kName, name); }
  bool accept_op(const char* op) {
    if (!at_op(op)) return false;
    ++pos_;
    return true;
  }
  bool accept_name(const char* name) {
    if (!at_name(name)) return false;
    ++pos_;
    return true;
  }
  [[noreturn]] void error(const std::string& what) const { fail("chat template line {}: {}", peek().line, what); }
  void expect_op(const char* op) {
    if (!accept_op(op)) error(fmt::format("expected '{}'", op));
  }
  std::string expect_name() {
    if (!at(Token::Kind::kName)) error("expected a name");
    return next().text;
  }
  void expect_close() {
    if (!at(Token::Kind::kClose)) error("expected the end of the tag");
    ++pos_;
  }

  // Parses nodes until a statement whose keyword is in `ends` (returned, its tag left open
  // after the keyword) or the end of input (returns "").
  std::string parse_body(Body& body, const std::vector<std::string>& ends) {
    while (!at(Token::Kind::kEnd)) {
      const Token& t = next();
      if (t.kind == Token::Kind::kText) {
        auto node = make_node(Node::Kind::kText, t.line);
        node->text = t.text;
        body.push_back(std::move(node));
      } else if (t.kind == Token::Kind::kOpenOutput) {
        auto node = make_node(Node::Kind::kOutput, t.line);
        node->expr = parse_expression();
        expect_close();
        body.push_back(std::move(node));
      } else if (t.kind == Token::Kind::kOpenStatement) {
        const std::string keyword = at(Token::Kind::kName) ? peek().text : "";
        for (const auto& end : ends)
          if (keyword == end) {
            ++pos_;
            return keyword;
          }
        body.push_back(parse_statement());
      } else {
        error("unexpected token");
      }
    }
    return "";
  }

  std::unique_ptr<Node> parse_statement() {
    DepthGuard guard(*this);
    const int line = peek().line;
    const std::string keyword = expect_name();
    if (keyword == "if") return parse_if(line);
    if (keyword == "for") return parse_for(line);
    if (keyword == "set") return parse_set(line);
    if (keyword == "macro") return parse_macro(line);
    if (keyword == "break" || keyword == "continue") {
      expect_close();
      return make_node(keyword == "break" ? Node::Kind::kBreak : Node::Kind::kContinue, line);
    }
    fail("chat template line {}: unsupported statement '{{% {} %}}'", line, keyword);
  }

  std::unique_ptr<Node> parse_if(int line) {
    auto node = make_node(Node::Kind::kIf, line);
    ExprPtr condition = parse_expression();
    expect_close();
    while (true) {
      Body body;
      const std::string end = parse_body(body, {"elif", "else", "endif"});
      if (end.empty()) fail("chat template line {}: '{{% if %}}' without '{{% endif %}}'", line);
      node->branches.emplace_back(std::move(condition), std::move(body));
      if (end == "endif") break;
      if (end == "elif") {
        condition = parse_expression();
      } else {
        condition = nullptr;
      }
      expect_close();
      if (end == "else") {
        Body else_body;
        if (parse_body(else_body, {"endif"}).empty())
          fail("chat template line {}: '{{% else %}}' without '{{% endif %}}'", line);
        node->branches.emplace_back(nullptr, std::move(else_body));
        break;
      }
    }
    expect_close();
    return node;
  }

  std::unique_ptr<Node> parse_for(int line) {
    auto node = make_node(Node::Kind::kFor, line);
    do node->targets.push_back(expect_name());
    while (accept_op(","));
    if (!accept_name("in")) error("expected 'in'");
    node->expr = parse_conditional(false);
    if (accept_name("if")) node->filter = parse_or();
    expect_close();
    const std::string end = parse_body(node->body, {"else", "endfor"});
    if (end.empty()) fail("chat template line {}: '{{% for %}}' without '{{% endfor %}}'", line);
    if (end == "else") {
      expect_close();
      if (parse_body(node->else_body, {"endfor"}).empty()) fail("chat template line {}: for-else without endfor", line);
    }
    expect_close();
    return node;
  }

  std::unique_ptr<Node> parse_set(int line) {
    auto node = make_node(Node::Kind::kSet, line);
    node->text = expect_name();
    if (accept_op(".")) node->attribute = expect_name();
    if (at_op(",")) error("unsupported: tuple assignment in '{% set %}'");
    if (accept_op("=")) {
      node->expr = parse_expression();
      expect_close();
      return node;
    }
    expect_close();  // block form: {% set x %}...{% endset %}
    if (parse_body(node->body, {"endset"}).empty())
      fail("chat template line {}: '{{% set %}}' without '{{% endset %}}'", line);
    expect_close();
    return node;
  }

  std::unique_ptr<Node> parse_macro(int line) {
    auto node = make_node(Node::Kind::kMacro, line);
    node->text = expect_name();
    expect_op("(");
    while (!accept_op(")")) {
      node->targets.push_back(expect_name());
      node->defaults.push_back(accept_op("=") ? parse_expression() : nullptr);
      if (!at_op(")")) expect_op(",");
    }
    expect_close();
    if (parse_body(node->body, {"endmacro"}).empty()) fail("chat template line {}: macro without endmacro", line);
    expect_close();
    return node;
  }

  static std::unique_ptr<Node> make_node(Node::Kind kind, int line) {
    auto node = std::make_unique<Node>();
    node->kind = kind;
    node->line = line;
    return node;
  }

  ExprPtr make(Expr::Kind kind, std::string name, int line) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->name = std::move(name);
    e->line = line;
    return e;
  }
  ExprPtr binary(std::string op, ExprPtr left, ExprPtr right) {
    auto e = make(Expr::Kind::kBinary, std::move(op), left->line);
    e->args.push_back(std::move(left));
    e->args.push_back(std::move(right));
    return sealed(std::move(e));
  }
  // A node whose operands are all in place: its height is set and bounded (ast.h).
  ExprPtr sealed(ExprPtr e) {
    for (const auto& a : e->args)
      if (a) e->height = std::max(e->height, a->height + 1);
    for (const auto& [_, v] : e->kwargs) e->height = std::max(e->height, v->height + 1);
    if (e->height > kMaxExpressionHeight)
      fail("chat template line {}: an expression nested or chained deeper than {} levels", e->line,
           kMaxExpressionHeight);
    return e;
  }

  ExprPtr parse_expression() { return parse_conditional(true); }

  ExprPtr parse_conditional(bool allow) {
    DepthGuard guard(*this);  // "a if b else c if d else ..." recurses once per else
    ExprPtr value = parse_or();
    while (allow && at_name("if")) {
      ++pos_;
      auto e = make(Expr::Kind::kConditional, "", value->line);
      e->args.push_back(parse_or());
      e->args.push_back(std::move(value));
      e->args.push_back(accept_name("else") ? parse_conditional(true) : nullptr);
      value = sealed(std::move(e));
    }
    return value;
  }
  ExprPtr parse_or() {
    ExprPtr left = parse_and();
    while (accept_name("or")) left = binary("or", std::move(left), parse_and());
    return left;
  }
  ExprPtr parse_and() {
    ExprPtr left = parse_not();
    while (accept_name("and")) left = binary("and", std::move(left), parse_not());
    return left;
  }
  ExprPtr parse_not() {
    DepthGuard guard(*this);
    if (at_name("not")) {
      const int line = next().line;
      auto e = make(Expr::Kind::kUnary, "not", line);
      e->args.push_back(parse_not());
      return sealed(std::move(e));
    }
    return parse_compare();
  }
  ExprPtr parse_compare() {
    ExprPtr left = parse_concat();
    while (true) {
      if (at(Token::Kind::kOperator) && (peek().text == "==" || peek().text == "!=" || peek().text == "<" ||
                                         peek().text == ">" || peek().text == "<=" || peek().text == ">=")) {
        const std::string op = next().text;
        left = binary(op, std::move(left), parse_concat());
      } else if (accept_name("in")) {
        left = binary("in", std::move(left), parse_concat());
      } else if (at_name("not") && at(Token::Kind::kName, "in", 1)) {
        pos_ += 2;
        left = binary("not in", std::move(left), parse_concat());
      } else {
        return left;
      }
    }
  }
  ExprPtr parse_concat() {
    ExprPtr left = parse_additive();
    while (accept_op("~")) left = binary("~", std::move(left), parse_additive());
    return left;
  }
  ExprPtr parse_additive() {
    ExprPtr left = parse_multiplicative();
    while (at_op("+") || at_op("-")) {
      const std::string op = next().text;
      left = binary(op, std::move(left), parse_multiplicative());
    }
    return left;
  }
  ExprPtr parse_multiplicative() {
    ExprPtr left = parse_power();
    while (at_op("*") || at_op("/") || at_op("//") || at_op("%")) {
      const std::string op = next().text;
      left = binary(op, std::move(left), parse_power());
    }
    return left;
  }
  ExprPtr parse_power() {
    ExprPtr left = parse_unary();
    while (accept_op("**")) left = binary("**", std::move(left), parse_unary());
    return left;
  }
  ExprPtr parse_unary() {
    DepthGuard guard(*this);
    if (at_op("-") || at_op("+")) {
      const Token& t = next();
      auto e = make(Expr::Kind::kUnary, t.text, t.line);
      e->args.push_back(parse_unary());
      return sealed(std::move(e));
    }
    return parse_postfix(parse_primary());
  }

  void parse_call_arguments(Expr& call) {
    while (!accept_op(")")) {
      if (at(Token::Kind::kName) && at(Token::Kind::kOperator, "=", 1)) {
        std::string key = next().text;
        ++pos_;
        call.kwargs.emplace_back(std::move(key), parse_expression());
      } else {
        call.args.push_back(parse_expression());
      }
      if (!at_op(")")) expect_op(",");
    }
  }

  ExprPtr parse_postfix(ExprPtr value) {
    while (true) {
      const int line = peek().line;
      if (accept_op(".")) {
        auto e = make(Expr::Kind::kAttribute, expect_name(), line);
        e->args.push_back(std::move(value));
        value = sealed(std::move(e));
      } else if (accept_op("[")) {
        value = parse_subscript(std::move(value), line);
      } else if (accept_op("(")) {
        auto e = make(Expr::Kind::kCall, "", line);
        e->args.push_back(std::move(value));
        parse_call_arguments(*e);
        value = sealed(std::move(e));
      } else if (accept_op("|")) {
        auto e = make(Expr::Kind::kFilter, expect_name(), line);
        e->args.push_back(std::move(value));
        if (accept_op("(")) parse_call_arguments(*e);
        value = sealed(std::move(e));
      } else if (accept_name("is")) {
        const bool negated = accept_name("not");
        std::string test = at_name("none") ? next().text : expect_name();
        auto e = make(Expr::Kind::kTest, test, line);
        e->negated = negated;
        e->args.push_back(std::move(value));
        if (accept_op("(")) {
          parse_call_arguments(*e);
        } else if (at(Token::Kind::kString) || at(Token::Kind::kInt) || at(Token::Kind::kFloat) ||
                   (at(Token::Kind::kName) && !at_name("and") && !at_name("or") && !at_name("else") && !at_name("if") &&
                    !at_name("in") && !at_name("is") && !at_name("not"))) {
          e->args.push_back(parse_primary());  // "is divisibleby 3", "is equalto x"
        }
        value = sealed(std::move(e));
      } else {
        return value;
      }
    }
  }

  ExprPtr parse_subscript(ExprPtr value, int line) {
    ExprPtr parts[3];
    bool is_slice = false;
    for (int part = 0; part < 3; ++part) {
      if (!at_op(":") && !at_op("]")) parts[part] = parse_expression();
      if (part < 2 && accept_op(":")) {
        is_slice = true;
        continue;
      }
      break;
    }
    expect_op("]");
    auto e = make(is_slice ? Expr::Kind::kSlice : Expr::Kind::kSubscript, "", line);
    e->args.push_back(std::move(value));
    if (is_slice) {
      for (auto& p : parts) e->args.push_back(std::move(p));
    } else {
      if (!parts[0]) fail("chat template line {}: empty subscript", line);
      e->args.push_back(std::move(parts[0]));
    }
    return sealed(std::move(e));
  }

  ExprPtr parse_primary() {
    const Token& t = next();
    switch (t.kind) {
      case Token::Kind::kString: {
        auto e = make(Expr::Kind::kLiteral, t.text, t.line);
        e->literal = Expr::Literal::kString;
        // Adjacent string literals concatenate, as in Python.
        while (at(Token::Kind::kString)) e->name += next().text;
        return e;
      }
      case Token::Kind::kInt:
      case Token::Kind::kFloat: {
        auto e = make(Expr::Kind::kLiteral, t.text, t.line);
        e->literal = t.kind == Token::Kind::kInt ? Expr::Literal::kInt : Expr::Literal::kFloat;
        return e;
      }
      case Token::Kind::kName: {
        if (t.text == "true" || t.text == "True" || t.text == "false" || t.text == "False") {
          auto e = make(Expr::Kind::kLiteral, t.text == "true" || t.text == "True" ? "1" : "", t.line);
          e->literal = Expr::Literal::kBool;
          return e;
        }
        if (t.text == "none" || t.text == "None") {
          auto e = make(Expr::Kind::kLiteral, "", t.line);
          e->literal = Expr::Literal::kNone;
          return e;
        }
        return make(Expr::Kind::kName, t.text, t.line);
      }
      case Token::Kind::kOperator: {
        if (t.text == "(") {
          ExprPtr inner = parse_expression();
          if (at_op(",")) error("unsupported: tuples");
          expect_op(")");
          return inner;
        }
        if (t.text == "[") {
          auto e = make(Expr::Kind::kList, "", t.line);
          while (!accept_op("]")) {
            e->args.push_back(parse_expression());
            if (!at_op("]")) expect_op(",");
          }
          return sealed(std::move(e));
        }
        if (t.text == "{") {
          auto e = make(Expr::Kind::kDict, "", t.line);
          while (!accept_op("}")) {
            e->args.push_back(parse_expression());
            expect_op(":");
            e->args.push_back(parse_expression());
            if (!at_op("}")) expect_op(",");
          }
          return sealed(std::move(e));
        }
        break;
      }
      default: break;
    }
    fail("chat template line {}: unexpected '{}' in an expression", t.line, t.text.empty() ? "end of tag" : t.text);
  }

  // Nesting bound: templates are untrusted input and the parser recurses.
  struct DepthGuard {
    Parser& parser;
    explicit DepthGuard(Parser& p) : parser(p) {
      if (++parser.depth_ > kMaxDepth)
        fail("chat template line {}: nested deeper than {} levels", parser.peek().line, kMaxDepth);
    }
    ~DepthGuard() { --parser.depth_; }
  };
  static constexpr int kMaxDepth = 100;
  // Expression trees (ast.h): chains are loops in the parser, so the guard above does not see them.
  static constexpr int kMaxExpressionHeight = 256;

  std::vector<Token> tokens_;
  size_t pos_ = 0;
  int depth_ = 0;
};

}  // namespace

Template parse(const std::string& source) { return Parser(Lexer(preprocess(source)).run()).run(); }

}  // namespace deepmoe::jinja
