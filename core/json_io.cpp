// core/json_io.cpp: a bounded SAX builder over nlohmann's parser, the files' layout for dump(), typed access.
#include "core/json_io.h"

#include <fmt/format.h>

#include <cctype>
#include <cmath>
#include <filesystem>
#include <iterator>
#include <set>
#include <vector>

#include "core/files.h"

namespace lg::json {

ParseError::ParseError(size_t byte, std::string reason)
    : Error(fmt::format("JSON parse error at byte {}: {}", byte, reason)),
      byte_(byte),
      reason_(std::move(reason)) {}

namespace {

// Hands the text to nlohmann's lexer one byte at a time and records how far it has read, so the
// problems found between tokens (a duplicate key, nesting too deep) can say where they are.
struct TrackedChar {
  using iterator_category = std::input_iterator_tag;
  using value_type = char;
  using difference_type = std::ptrdiff_t;
  using pointer = const char*;
  using reference = const char&;

  const char* at;
  const char** read_to;

  reference operator*() const { return *at; }
  TrackedChar& operator++() {
    *read_to = ++at;
    return *this;
  }
  bool operator==(const TrackedChar& other) const { return at == other.at; }
};

// nlohmann reads "01" as the number 0 followed by a stray 1; this finds that case to name it.
bool leading_zero_before(std::string_view text, size_t i) {
  if (i >= text.size() || !std::isdigit(static_cast<unsigned char>(text[i]))) return false;
  size_t start = i;
  while (start > 0 && std::isdigit(static_cast<unsigned char>(text[start - 1]))) --start;
  if (start == i || text[start] != '0') return false;
  if (start > 0 && text[start - 1] == '-') --start;
  // where a value starts, not digits inside a string, a fraction or an exponent
  return start == 0 || std::string_view("[,: \t\n\r").find(text[start - 1]) != std::string_view::npos;
}

// Builds the document from nlohmann's SAX events. Unlike nlohmann's own builder it refuses
// duplicate keys (which it would overwrite) and deep nesting, and appends each key in O(1):
// ordered_json's lookup of a new key is linear, quadratic over an untrusted header's keys.
class Builder : public nlohmann::json_sax<Json> {
 public:
  Builder(std::string_view text, const char* const& read_to) : text_(text), read_to_(read_to) {}
  Json take() { return std::move(root_); }

  bool null() override { return place(nullptr); }
  bool boolean(bool b) override { return place(b); }
  bool number_integer(number_integer_t x) override { return place(x); }
  bool number_unsigned(number_unsigned_t x) override { return place(x); }
  bool number_float(number_float_t x, const string_t& literal) override {
    // Past 64 bits nlohmann falls back to a double; sizes and offsets must stay exact.
    if (literal.find_first_of(".eE") == std::string::npos)
      fail(fmt::format("integer {} does not fit in 64 bits", literal));
    return place(x);
  }
  bool string(string_t& s) override { return place(std::move(s)); }
  bool binary(binary_t&) override { return false; }  // JSON text has no binary values

  bool start_object(std::size_t) override {
    open(Json::object());
    keys_.emplace_back();
    return true;
  }
  bool key(string_t& k) override {
    if (!keys_.back().insert(k).second) fail(fmt::format("duplicate key \"{}\"", k));
    // ordered_map is a vector of (key, value) pairs; the key is known to be new
    auto& object = open_.back()->get_ref<Json::object_t&>();
    slot_ = &object.emplace_back(std::move(k), nullptr).second;
    return true;
  }
  bool end_object() override {
    keys_.pop_back();
    return close();
  }
  bool start_array(std::size_t) override {
    open(Json::array());
    return true;
  }
  bool end_array() override { return close(); }

  bool parse_error(std::size_t position, const std::string&, const nlohmann::json::exception& e) override {
    size_t byte = position > 0 ? position - 1 : 0;  // the last byte read
    if (leading_zero_before(text_, byte)) throw ParseError(byte, "leading zero in a number");
    if (done_) throw ParseError(byte, "unexpected text after the top-level value");
    // "[json.exception.parse_error.101] parse error at line 1, column 9: syntax error ..."
    std::string_view reason = e.what();
    if (size_t end = reason.find("] "); end != std::string_view::npos) reason.remove_prefix(end + 2);
    if (size_t end = reason.find(": "); reason.starts_with("parse error") && end != std::string_view::npos)
      reason.remove_prefix(end + 2);
    constexpr size_t kMaxReason = 200;  // the token quoted in it may be a long string
    throw ParseError(byte, reason.size() > kMaxReason ? fmt::format("{}...", reason.substr(0, kMaxReason))
                                                      : std::string(reason));
  }

 private:
  [[noreturn]] void fail(std::string reason) const {
    size_t read = static_cast<size_t>(read_to_ - text_.data());
    throw ParseError(read > 0 ? read - 1 : 0, std::move(reason));
  }

  Json* put(Json v) {
    if (open_.empty()) {
      root_ = std::move(v);
      return &root_;
    }
    if (open_.back()->is_array()) {
      auto& array = open_.back()->get_ref<Json::array_t&>();
      array.push_back(std::move(v));
      return &array.back();
    }
    *slot_ = std::move(v);
    return slot_;
  }
  bool place(Json v) {
    put(std::move(v));
    done_ = open_.empty();
    return true;
  }
  void open(Json container) {
    if (open_.size() >= static_cast<size_t>(kMaxDepth))
      fail(fmt::format("nesting deeper than {} arrays and objects", kMaxDepth));
    open_.push_back(put(std::move(container)));  // stays valid: only the innermost container grows
  }
  bool close() {
    open_.pop_back();
    done_ = open_.empty();
    return true;
  }

  std::string_view text_;
  const char* const& read_to_;
  Json root_;
  std::vector<Json*> open_;                  // the containers being filled, outermost first
  std::vector<std::set<std::string>> keys_;  // the keys of each open object
  Json* slot_ = nullptr;                     // where the value after a key goes
  bool done_ = false;                        // the top-level value is complete
};

const char* described(const Json& v) {
  switch (v.type()) {
    case Json::value_t::null:
      return "null";
    case Json::value_t::boolean:
      return "a boolean";
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned:
    case Json::value_t::number_float:
      return "a number";
    case Json::value_t::string:
      return "a string";
    case Json::value_t::array:
      return "an array";
    case Json::value_t::object:
      return "an object";
    default:
      return "not JSON";
  }
}

Error type_error(std::string_view what, const char* expected, const Json& got) {
  return Error(fmt::format("{} must be {}, found {}", what, expected, described(got)));
}

void dump_to(std::string& out, const Json& v, int indent, int depth) {
  auto newline = [&](int d) {
    if (indent < 0) return;
    out += '\n';
    out.append(static_cast<size_t>(indent * d), ' ');
  };
  if (v.is_number_float()) {
    // fmt's shortest round-trip form ("1", "0.001", "1e-05"), as the files have always had;
    // JSON has no NaN or infinity, and null is what JavaScript's JSON.stringify writes for them.
    double x = v.get<double>();
    out += std::isfinite(x) ? fmt::format("{}", x) : "null";
  } else if (v.is_array()) {
    out += '[';
    bool first = true;
    for (const Json& item : v) {
      if (!first) out += ',';
      // arrays of scalars (vocabularies, shapes) stay on one line; objects get their own lines
      if (indent >= 0 && item.is_object())
        newline(depth + 1);
      else if (!first && indent >= 0)
        out += ' ';
      dump_to(out, item, indent, depth + 1);
      first = false;
    }
    out += ']';
  } else if (v.is_object()) {
    out += '{';
    bool first = true;
    for (const auto& [key, item] : v.items()) {
      if (!first) out += ',';
      newline(depth + 1);
      dump_to(out, Json(key), indent, depth + 1);
      out += indent < 0 ? ":" : ": ";
      dump_to(out, item, indent, depth + 1);
      first = false;
    }
    if (!first) newline(depth);
    out += '}';
  } else {
    // strings, integers, booleans, null; a string that is not UTF-8 gets U+FFFD, keeping the file JSON
    out += v.dump(-1, ' ', false, Json::error_handler_t::replace);
  }
}

}  // namespace

Json parse(std::string_view text) {
  const char* read_to = text.data();
  Builder builder(text, read_to);
  Json::sax_parse(TrackedChar{text.data(), &read_to}, TrackedChar{text.data() + text.size(), &read_to},
                  &builder);
  return builder.take();
}

Json read_file(const std::string& path, uint64_t max_bytes) {
  std::error_code error;
  uintmax_t size = std::filesystem::file_size(path, error);
  if (!error && size > max_bytes)
    throw Error(
        fmt::format("{} is {} bytes, more than the {} a JSON file may have here", path, size, max_bytes));
  return parse(files::read_file(path));  // a missing file is reported here
}

std::string dump(const Json& value, int indent) {
  std::string out;
  dump_to(out, value, indent, 0);
  return out;
}

const Json& at(const Json& object, const std::string& key) {
  if (!object.is_object()) throw type_error(fmt::format("the parent of '{}'", key), "an object", object);
  auto it = object.find(key);
  if (it == object.end()) throw Error(fmt::format("missing key '{}'", key));
  return *it;
}

double get_number(const Json& value, std::string_view what) {
  if (!value.is_number()) throw type_error(what, "a number", value);
  return value.get<double>();
}

int64_t get_int(const Json& value, std::string_view what) {
  if (value.is_number_unsigned()) {
    uint64_t x = value.get<uint64_t>();
    if (x > static_cast<uint64_t>(INT64_MAX))
      throw Error(fmt::format("{} {} does not fit in 64 bits", what, x));
    return static_cast<int64_t>(x);
  }
  if (value.is_number_integer()) return value.get<int64_t>();
  double x = get_number(value, what);  // "8.0" is 8, as long as doubles count exactly
  if (x != std::floor(x) || std::fabs(x) > 9007199254740992.0)
    throw Error(fmt::format("{} must be an integer, found {}", what, x));
  return static_cast<int64_t>(x);
}

uint64_t get_uint64(const Json& value, std::string_view what) {
  get_number(value, what);
  // Plain digits only: parse() keeps those exact; "8.0", "-2" and "1e3" are other spellings.
  if (value.is_number_float() ||
      (value.is_number_integer() && !value.is_number_unsigned() && value.get<int64_t>() < 0))
    throw Error(
        fmt::format("{} must be a non-negative integer, found {}", what, value.dump()));  // 8.0 as 8.0
  return value.get<uint64_t>();
}

const std::string& get_string(const Json& value, std::string_view what) {
  if (!value.is_string()) throw type_error(what, "a string", value);
  return value.get_ref<const std::string&>();
}

const Json::array_t& get_array(const Json& value, std::string_view what) {
  if (!value.is_array()) throw type_error(what, "an array", value);
  return value.get_ref<const Json::array_t&>();
}

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
