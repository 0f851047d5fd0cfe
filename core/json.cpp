// core/json.cpp: the JSON parser (recursive descent over a string_view) and writer.
#include "core/json.h"

#include <fmt/format.h>

#include <charconv>
#include <cmath>
#include <cstdlib>
#include <set>

namespace lg::json {

static const char* type_name(Value::Type t) {
  switch (t) {
    case Value::Type::Null:
      return "null";
    case Value::Type::Bool:
      return "a boolean";
    case Value::Type::Number:
      return "a number";
    case Value::Type::String:
      return "a string";
    case Value::Type::Array:
      return "an array";
    case Value::Type::Object:
      return "an object";
  }
  return "?";
}

static Error type_error(std::string_view what, const char* expected, Value::Type got) {
  return Error(fmt::format("{} must be {}, found {}", what, expected, type_name(got)));
}

bool Value::as_bool(std::string_view what) const {
  if (type_ != Type::Bool) throw type_error(what, "a boolean", type_);
  return bool_;
}

double Value::as_number(std::string_view what) const {
  if (type_ != Type::Number) throw type_error(what, "a number", type_);
  return number_;
}

int64_t Value::as_int(std::string_view what) const {
  double x = as_number(what);
  if (x != std::floor(x) || std::fabs(x) > 9007199254740992.0)
    throw Error(fmt::format("{} must be an integer, found {}", what, x));
  return static_cast<int64_t>(x);
}

uint64_t Value::as_uint64(std::string_view what) const {
  double x = as_number(what);
  std::string literal = string_.empty() ? fmt::format("{}", x) : string_;
  uint64_t v = 0;
  const char* end = literal.data() + literal.size();
  auto [stop, error] = std::from_chars(literal.data(), end, v);  // digits only: no sign, '.' or 'e'
  if (error == std::errc::result_out_of_range)
    throw Error(fmt::format("{} {} does not fit in 64 bits", what, literal));
  if (error != std::errc() || stop != end)
    throw Error(fmt::format("{} must be a non-negative integer, found {}", what, literal));
  return v;
}

const std::string& Value::as_string(std::string_view what) const {
  if (type_ != Type::String) throw type_error(what, "a string", type_);
  return string_;
}

const std::vector<Value>& Value::as_array(std::string_view what) const {
  if (type_ != Type::Array) throw type_error(what, "an array", type_);
  return array_;
}

Value& Value::push(Value v) {
  if (type_ != Type::Array) throw type_error("push target", "an array", type_);
  array_.push_back(std::move(v));
  return array_.back();
}

size_t Value::size() const {
  if (type_ == Type::Array) return array_.size();
  if (type_ == Type::Object) return object_.size();
  return 0;
}

Value& Value::set(const std::string& key, Value v) {
  if (type_ != Type::Object) throw type_error("set target", "an object", type_);
  for (auto& [k, old] : object_)
    if (k == key) return old = std::move(v);
  object_.emplace_back(key, std::move(v));
  return object_.back().second;
}

const Value* Value::find(const std::string& key) const {
  if (type_ != Type::Object) return nullptr;
  for (auto& [k, v] : object_)
    if (k == key) return &v;
  return nullptr;
}

const Value& Value::at(const std::string& key) const {
  if (type_ != Type::Object) throw type_error(fmt::format("the parent of '{}'", key), "an object", type_);
  const Value* v = find(key);
  if (!v) throw Error(fmt::format("missing key '{}'", key));
  return *v;
}

// ---- writer ---------------------------------------------------------------------------

static void dump_string(std::string& out, const std::string& s) {
  out += '"';
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (c < 0x20)
          out += fmt::format("\\u{:04x}", c);
        else
          out += static_cast<char>(c);  // UTF-8 passes through
    }
  }
  out += '"';
}

void Value::dump_to(std::string& out, int indent, int depth) const {
  auto newline = [&](int d) {
    if (indent < 0) return;
    out += '\n';
    out.append(static_cast<size_t>(indent * d), ' ');
  };
  switch (type_) {
    case Type::Null:
      out += "null";
      break;
    case Type::Bool:
      out += bool_ ? "true" : "false";
      break;
    case Type::Number:
      // JSON has no NaN or infinity; null is what JavaScript's JSON.stringify writes for them.
      if (!std::isfinite(number_))
        out += "null";
      else
        out += fmt::format("{}", number_);  // shortest round-trip form
      break;
    case Type::String:
      dump_string(out, string_);
      break;
    case Type::Array:
      out += '[';
      for (size_t i = 0; i < array_.size(); ++i) {
        if (i) out += ',';
        // arrays of scalars (vocabularies, shapes) stay on one line; objects get their own lines
        if (indent >= 0 && array_[i].type_ == Type::Object)
          newline(depth + 1);
        else if (i && indent >= 0)
          out += ' ';
        array_[i].dump_to(out, indent, depth + 1);
      }
      out += ']';
      break;
    case Type::Object:
      out += '{';
      for (size_t i = 0; i < object_.size(); ++i) {
        if (i) out += ',';
        newline(depth + 1);
        dump_string(out, object_[i].first);
        out += indent < 0 ? ":" : ": ";
        object_[i].second.dump_to(out, indent, depth + 1);
      }
      if (!object_.empty()) newline(depth);
      out += '}';
      break;
  }
}

std::string Value::dump(int indent) const {
  std::string out;
  dump_to(out, indent, 0);
  return out;
}

// ---- parser ---------------------------------------------------------------------------

ParseError::ParseError(size_t byte, std::string reason)
    : Error(fmt::format("JSON parse error at byte {}: {}", byte, reason)),
      byte_(byte),
      reason_(std::move(reason)) {}

// A friend of Value, so not in an anonymous namespace.
class Parser {
 public:
  explicit Parser(std::string_view text) : s_(text) {}

  Value document() {
    Value v = value(0);
    skip_space();
    if (i_ != s_.size()) fail("unexpected text after the top-level value");
    return v;
  }

 private:
  [[noreturn]] void fail(std::string why) const { throw ParseError(i_, std::move(why)); }
  void skip_space() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\n' || s_[i_] == '\r' || s_[i_] == '\t')) ++i_;
  }
  char peek() {
    skip_space();
    if (i_ >= s_.size()) fail("unexpected end of input");
    return s_[i_];
  }
  void expect(char c) {
    if (peek() != c) fail(fmt::format("expected '{}'", c));
    ++i_;
  }
  void literal(std::string_view word) {
    if (s_.substr(i_, word.size()) != word) fail("invalid literal");
    i_ += word.size();
  }

  Value value(int depth) {
    if (depth > 200) fail("nesting too deep");
    char c = peek();
    if (c == '{') return object(depth);
    if (c == '[') return array(depth);
    if (c == '"') return Value(string());
    if (c == 't') {
      literal("true");
      return Value(true);
    }
    if (c == 'f') {
      literal("false");
      return Value(false);
    }
    if (c == 'n') {
      literal("null");
      return Value();
    }
    if (c == '-' || (c >= '0' && c <= '9')) return number();
    fail(fmt::format("unexpected character '{}'", c));
  }

  Value object(int depth) {
    Value obj = Value::object();
    std::set<std::string> keys;  // Value::set() would search linearly, and replace a duplicate silently
    expect('{');
    if (peek() == '}') {
      ++i_;
      return obj;
    }
    for (;;) {
      if (peek() != '"') fail("expected a string key");
      size_t key_start = i_;
      std::string key = string();
      if (!keys.insert(key).second) {
        i_ = key_start;
        fail(fmt::format("duplicate key \"{}\"", key));
      }
      expect(':');
      obj.object_.emplace_back(std::move(key), value(depth + 1));
      char c = peek();
      ++i_;
      if (c == '}') return obj;
      if (c != ',') {
        --i_;
        fail("expected ',' or '}'");
      }
    }
  }

  Value array(int depth) {
    Value arr = Value::array();
    expect('[');
    if (peek() == ']') {
      ++i_;
      return arr;
    }
    for (;;) {
      arr.push(value(depth + 1));
      char c = peek();
      ++i_;
      if (c == ']') return arr;
      if (c != ',') {
        --i_;
        fail("expected ',' or ']'");
      }
    }
  }

  Value number() {
    size_t start = i_;
    auto is_digit = [&] { return i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9'; };
    auto digits = [&] {
      size_t d0 = i_;
      while (is_digit()) ++i_;
      if (i_ == d0) fail("expected a digit");
    };
    if (s_[i_] == '-') ++i_;
    if (i_ < s_.size() && s_[i_] == '0') {
      ++i_;
      if (is_digit()) fail("leading zero in a number");
    } else {
      digits();
    }
    if (i_ < s_.size() && s_[i_] == '.') {
      ++i_;
      digits();
    }
    if (i_ < s_.size() && (s_[i_] == 'e' || s_[i_] == 'E')) {
      ++i_;
      if (i_ < s_.size() && (s_[i_] == '+' || s_[i_] == '-')) ++i_;
      digits();
    }
    std::string literal(s_.substr(start, i_ - start));
    Value v(std::strtod(literal.c_str(), nullptr));
    v.string_ = std::move(literal);  // for as_uint64(): "8" and "8.0" are the same double
    return v;
  }

  unsigned hex4() {
    if (i_ + 4 > s_.size()) fail("truncated \\u escape");
    unsigned v = 0;
    for (int k = 0; k < 4; ++k) {
      char c = s_[i_++];
      v <<= 4;
      if (c >= '0' && c <= '9')
        v |= c - '0';
      else if (c >= 'a' && c <= 'f')
        v |= c - 'a' + 10;
      else if (c >= 'A' && c <= 'F')
        v |= c - 'A' + 10;
      else
        fail("bad hex digit in \\u escape");
    }
    return v;
  }

  static void append_utf8(std::string& out, unsigned cp) {
    if (cp < 0x80)
      out += static_cast<char>(cp);
    else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  std::string string() {
    expect('"');
    std::string out;
    for (;;) {
      if (i_ >= s_.size()) fail("unterminated string");
      char c = s_[i_++];
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) fail("control character in string");
      if (c != '\\') {
        out += c;
        continue;
      }
      if (i_ >= s_.size()) fail("unterminated escape");
      char e = s_[i_++];
      switch (e) {
        case '"':
          out += '"';
          break;
        case '\\':
          out += '\\';
          break;
        case '/':
          out += '/';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'u': {
          unsigned cp = hex4();
          if (cp >= 0xD800 && cp < 0xDC00) {  // surrogate pair
            if (s_.substr(i_, 2) != "\\u") fail("lone surrogate in \\u escape");
            i_ += 2;
            unsigned lo = hex4();
            if (lo < 0xDC00 || lo >= 0xE000) fail("bad low surrogate in \\u escape");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp < 0xE000) {
            fail("lone surrogate in \\u escape");
          }
          append_utf8(out, cp);
          break;
        }
        default:
          fail("unknown escape");
      }
    }
  }

  std::string_view s_;
  size_t i_ = 0;
};

Value parse(std::string_view text) { return Parser(text).document(); }

std::string hex_u64(uint64_t x) { return fmt::format("0x{:016x}", x); }

uint64_t parse_hex_u64(const std::string& s, std::string_view what) {
  if (s.size() != 18 || s[0] != '0' || s[1] != 'x')
    throw Error(fmt::format("{} must be a 64-bit hex string like 0x0123456789abcdef, found '{}'", what, s));
  uint64_t v = 0;
  for (size_t k = 2; k < s.size(); ++k) {
    char c = s[k];
    v <<= 4;
    if (c >= '0' && c <= '9')
      v |= static_cast<uint64_t>(c - '0');
    else if (c >= 'a' && c <= 'f')
      v |= static_cast<uint64_t>(c - 'a' + 10);
    else
      throw Error(fmt::format("{}: bad hex digit in '{}'", what, s));
  }
  return v;
}

}  // namespace lg::json
