// core/json_io.h: nlohmann::json with the limits and the layout this project's files rely on.
//
// Json keeps object keys in insertion order, so files read the way they were written. parse()
// is strict and bounded for files from elsewhere: RFC 8259 only, no duplicate keys, nesting at
// most kMaxDepth, integers that fit in 64 bits. dump() writes numbers in their shortest
// round-trip form ("1", not "1.0"), and pretty output keeps arrays of scalars on one line.
// Typed access throws lg::Error naming the key, never a nlohmann exception.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "core/tensor.h"  // lg::Error

namespace lg::json {

using Json = nlohmann::ordered_json;

inline constexpr int kMaxDepth = 200;

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

// Parses one JSON document; throws ParseError on malformed, truncated, too deep or ambiguous input.
Json parse(std::string_view text);

// Reads and parses a file, refusing one over `max_bytes` before reading it. Throws lg::Error.
Json read_file(const std::string& path, uint64_t max_bytes);

// Compact (indent < 0, one line) or pretty-printed text; NaN and infinity are written as null.
std::string dump(const Json& value, int indent = -1);

// Typed access; each throws lg::Error naming `what` when the value has another type.
const Json& at(const Json& object, const std::string& key);  // "missing key 'KEY'"
double get_number(const Json& value, std::string_view what);
int64_t get_int(const Json& value, std::string_view what);  // integral, |x| <= 2^53 when written 8.0
// A size or byte offset from another program's file: written as plain digits, exact up to 2^64 - 1.
uint64_t get_uint64(const Json& value, std::string_view what);
const std::string& get_string(const Json& value, std::string_view what);
const Json::array_t& get_array(const Json& value, std::string_view what);

// 64-bit words as 16-digit hex strings ("0x..."), exactly.
std::string hex_u64(uint64_t x);
uint64_t parse_hex_u64(const std::string& s, std::string_view what);

}  // namespace lg::json
