// core/json.h: a small JSON value, a strict parser and a writer, for checkpoints, metrics and safetensors.
//
// Numbers are doubles (printed in the shortest form that reads back to the same double),
// so integers are exact up to 2^53; 64-bit words (RNG states) are stored as hex strings.
// Objects keep their keys in insertion order, so files read the way they were written.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/tensor.h"  // lg::Error

namespace lg::json {

class Parser;

class Value {
 public:
  enum class Type { Null, Bool, Number, String, Array, Object };

  Value() = default;  // null
  Value(bool b) : type_(Type::Bool), bool_(b) {}
  Value(double x) : type_(Type::Number), number_(x) {}
  Value(int x) : Value(static_cast<double>(x)) {}
  Value(int64_t x) : Value(static_cast<double>(x)) {}
  Value(const char* s) : type_(Type::String), string_(s) {}
  Value(std::string s) : type_(Type::String), string_(std::move(s)) {}
  static Value array() {
    Value v;
    v.type_ = Type::Array;
    return v;
  }
  static Value object() {
    Value v;
    v.type_ = Type::Object;
    return v;
  }

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::Null; }
  bool is_number() const { return type_ == Type::Number; }
  bool is_string() const { return type_ == Type::String; }
  bool is_array() const { return type_ == Type::Array; }
  bool is_object() const { return type_ == Type::Object; }

  // Typed access; each throws lg::Error naming `what` when the value has another type.
  bool as_bool(std::string_view what = "value") const;
  double as_number(std::string_view what = "value") const;
  int64_t as_int(std::string_view what = "value") const;  // must be integral
  // A size or byte offset from another program's file: must be written as plain digits (no sign,
  // fraction or exponent) and is exact up to 2^64 - 1. A number built in code is judged by how
  // dump() writes it.
  uint64_t as_uint64(std::string_view what = "value") const;
  const std::string& as_string(std::string_view what = "value") const;
  const std::vector<Value>& as_array(std::string_view what = "value") const;

  // Arrays.
  Value& push(Value v);
  size_t size() const;
  // Objects: set() replaces an existing key; at() throws naming a missing key; find() may return null.
  Value& set(const std::string& key, Value v);
  const Value& at(const std::string& key) const;
  const Value* find(const std::string& key) const;
  bool contains(const std::string& key) const { return find(key) != nullptr; }
  const std::vector<std::pair<std::string, Value>>& items() const { return object_; }

  // Compact (indent < 0, one line) or pretty-printed text.
  std::string dump(int indent = -1) const;

 private:
  friend class Parser;  // appends keys it has checked to be unique; keeps number literals
  void dump_to(std::string& out, int indent, int depth) const;
  Type type_ = Type::Null;
  bool bool_ = false;
  double number_ = 0.0;
  std::string string_;  // String: the text; Number from parse(): the literal as written
  std::vector<Value> array_;
  std::vector<std::pair<std::string, Value>> object_;
};

// What parse() throws. The message is "JSON parse error at byte N: reason"; a format that embeds
// JSON (the safetensors header) rewords it from byte() and reason().
class ParseError : public Error {
 public:
  ParseError(size_t byte, std::string reason);
  size_t byte() const { return byte_; }
  const std::string& reason() const { return reason_; }

 private:
  size_t byte_;
  std::string reason_;
};

// Parses one JSON document (RFC 8259; no comments, no trailing commas, no NaN, no leading zeros,
// no duplicate keys, no unpaired surrogates). Throws ParseError on any malformed or truncated input.
Value parse(std::string_view text);

// 64-bit words as 16-digit hex strings ("0x..."), exactly.
std::string hex_u64(uint64_t x);
uint64_t parse_hex_u64(const std::string& s, std::string_view what);

}  // namespace lg::json
