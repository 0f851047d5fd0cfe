// nn/safetensors.cpp: the safetensors writer, a strict reader, and the small JSON parser its header needs.
#include "nn/safetensors.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <string_view>
#include <tuple>

namespace lg::nn {

// Tensor data is copied to and from the file byte for byte.
static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian");

// The reference implementation refuses headers above 100 MB; a larger length is corruption.
static constexpr uint64_t kMaxHeaderBytes = 100'000'000;

// ============================================================================
// JSON: just enough for the header (objects, arrays, strings, numbers, literals)
// ============================================================================

namespace {

struct Json {
  enum class Kind { Null, Bool, Number, String, Array, Object };
  Kind kind = Kind::Null;
  std::string text;                                   // String: decoded; Number: the literal as written
  std::vector<Json> items;                            // Array
  std::vector<std::pair<std::string, Json>> members;  // Object, in file order, keys unique
};

// Recursive descent over RFC 8259; every error names the byte offset within the header.
class JsonParser {
 public:
  JsonParser(std::string_view text, const std::string& context) : s_(text), context_(context) {}

  Json document() {
    Json v = value(0);
    skip_space();
    if (pos_ != s_.size()) fail("unexpected text after the top-level value");
    return v;
  }

 private:
  static constexpr int kMaxDepth = 64;  // the header needs 3; deeper nesting is corruption, not data

  [[noreturn]] void fail(const std::string& what) const {
    throw Error(fmt::format("{}: malformed JSON header at byte {}: {}", context_, pos_, what));
  }
  void skip_space() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r'))
      ++pos_;
  }
  char peek() {
    if (pos_ >= s_.size()) fail("unexpected end of header");
    return s_[pos_];
  }
  void expect(char c) {
    if (peek() != c) fail(fmt::format("expected '{}'", c));
    ++pos_;
  }

  Json value(int depth) {
    if (depth > kMaxDepth) fail("nesting too deep");
    skip_space();
    char c = peek();
    if (c == '{') return object(depth);
    if (c == '[') return array(depth);
    Json v;
    if (c == '"') {
      v.kind = Json::Kind::String;
      v.text = string();
    } else if (c == '-' || (c >= '0' && c <= '9')) {
      v.kind = Json::Kind::Number;
      v.text = number();
    } else if (literal("true") || literal("false")) {
      v.kind = Json::Kind::Bool;
    } else if (literal("null")) {
      v.kind = Json::Kind::Null;
    } else {
      fail(fmt::format("unexpected character '{}'", c));
    }
    return v;
  }

  bool literal(std::string_view word) {
    if (s_.substr(pos_, word.size()) != word) return false;
    pos_ += word.size();
    return true;
  }

  Json object(int depth) {
    Json v;
    v.kind = Json::Kind::Object;
    std::set<std::string> keys;
    expect('{');
    skip_space();
    if (peek() == '}') {
      ++pos_;
      return v;
    }
    while (true) {
      skip_space();
      if (peek() != '"') fail("expected a string key");
      std::string key = string();
      if (!keys.insert(key).second) fail(fmt::format("duplicate key \"{}\"", key));
      skip_space();
      expect(':');
      v.members.emplace_back(std::move(key), value(depth + 1));
      skip_space();
      if (peek() == '}') {
        ++pos_;
        return v;
      }
      expect(',');
    }
  }

  Json array(int depth) {
    Json v;
    v.kind = Json::Kind::Array;
    expect('[');
    skip_space();
    if (peek() == ']') {
      ++pos_;
      return v;
    }
    while (true) {
      v.items.push_back(value(depth + 1));
      skip_space();
      if (peek() == ']') {
        ++pos_;
        return v;
      }
      expect(',');
    }
  }

  std::string number() {
    size_t start = pos_;
    auto digits = [&] {
      size_t from = pos_;
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
      if (pos_ == from) fail("expected a digit");
    };
    if (s_[pos_] == '-') ++pos_;
    if (pos_ < s_.size() && s_[pos_] == '0')
      ++pos_;  // no leading zeros
    else
      digits();
    if (pos_ < s_.size() && s_[pos_] == '.') {
      ++pos_;
      digits();
    }
    if (pos_ < s_.size() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
      ++pos_;
      if (pos_ < s_.size() && (s_[pos_] == '+' || s_[pos_] == '-')) ++pos_;
      digits();
    }
    return std::string(s_.substr(start, pos_ - start));
  }

  uint32_t hex4() {
    if (pos_ + 4 > s_.size()) fail("truncated \\u escape");
    uint32_t code = 0;
    for (int i = 0; i < 4; ++i) {
      char c = s_[pos_++];
      code <<= 4;
      if (c >= '0' && c <= '9')
        code |= static_cast<uint32_t>(c - '0');
      else if (c >= 'a' && c <= 'f')
        code |= static_cast<uint32_t>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F')
        code |= static_cast<uint32_t>(c - 'A' + 10);
      else
        fail("bad hex digit in \\u escape");
    }
    return code;
  }

  static void append_utf8(std::string& out, uint32_t code) {
    if (code < 0x80) {
      out += static_cast<char>(code);
    } else if (code < 0x800) {
      out += static_cast<char>(0xC0 | (code >> 6));
      out += static_cast<char>(0x80 | (code & 0x3F));
    } else if (code < 0x10000) {
      out += static_cast<char>(0xE0 | (code >> 12));
      out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (code & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (code >> 18));
      out += static_cast<char>(0x80 | ((code >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (code & 0x3F));
    }
  }

  std::string string() {
    expect('"');
    std::string out;
    while (true) {
      char c = peek();
      ++pos_;
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) fail("control character inside a string");
      if (c != '\\') {
        out += c;
        continue;
      }
      char e = peek();
      ++pos_;
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
          uint32_t code = hex4();
          if (code >= 0xD800 && code < 0xDC00) {  // a UTF-16 surrogate pair spells one code point
            if (!literal("\\u")) fail("unpaired surrogate in \\u escape");
            uint32_t low = hex4();
            if (low < 0xDC00 || low >= 0xE000) fail("unpaired surrogate in \\u escape");
            code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
          } else if (code >= 0xDC00 && code < 0xE000) {
            fail("unpaired surrogate in \\u escape");
          }
          append_utf8(out, code);
          break;
        }
        default:
          fail(fmt::format("bad escape '\\{}'", e));
      }
    }
  }

  std::string_view s_;
  const std::string& context_;
  size_t pos_ = 0;
};

void append_json_string(std::string& out, const std::string& s) {
  out += '"';
  for (char c : s) {
    if (c == '"')
      out += "\\\"";
    else if (c == '\\')
      out += "\\\\";
    else if (static_cast<unsigned char>(c) < 0x20)
      out += fmt::format("\\u{:04x}", static_cast<int>(c));
    else
      out += c;
  }
  out += '"';
}

}  // namespace

// ============================================================================
// Writing
// ============================================================================

// POSIX calls, so the bytes can be fsynced before the rename makes them visible.
static void write_file_atomically(const std::string& path, const std::string& bytes) {
  std::string tmp = path + ".tmp";
  auto fail = [&](const char* what) {
    int err = errno;
    std::remove(tmp.c_str());
    return Error(fmt::format("write_safetensors {}: {} failed: {}", path, what, std::strerror(err)));
  };
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0)
    throw Error(fmt::format("write_safetensors {}: cannot create {}: {}", path, tmp, std::strerror(errno)));
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      Error e = fail("write");
      ::close(fd);
      throw e;
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) {
    Error e = fail("fsync");
    ::close(fd);
    throw e;
  }
  if (::close(fd) != 0) throw fail("close");
  if (std::rename(tmp.c_str(), path.c_str()) != 0) throw fail("rename");
  // The rename itself lives in the directory; sync it too so it survives a power cut.
  std::filesystem::path dir = std::filesystem::path(path).parent_path();
  int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::set<std::string> names;
  for (const auto& [name, t] : tensors) {
    if (name.empty() || name == "__metadata__")
      throw Error(fmt::format("write_safetensors {}: invalid tensor name '{}'", path, name));
    if (!names.insert(name).second)
      throw Error(fmt::format("write_safetensors {}: tensor name '{}' appears twice", path, name));
    if (!t.defined()) throw Error(fmt::format("write_safetensors {}: tensor '{}' is undefined", path, name));
  }

  std::string header = "{";
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [key, value] : metadata) {
      if (!first) header += ',';
      first = false;
      append_json_string(header, key);
      header += ':';
      append_json_string(header, value);
    }
    header += "}";
    if (!tensors.empty()) header += ',';
  }
  uint64_t offset = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& [name, t] = tensors[i];
    uint64_t bytes = static_cast<uint64_t>(t.numel()) * sizeof(float);
    if (i > 0) header += ',';
    append_json_string(header, name);
    header += ":{\"dtype\":\"F32\",\"shape\":[";
    for (int64_t d = 0; d < t.dim(); ++d) header += fmt::format("{}{}", d ? "," : "", t.size(d));
    header += fmt::format("],\"data_offsets\":[{},{}]}}", offset, offset + bytes);
    offset += bytes;
  }
  header += '}';
  header.append((8 - header.size() % 8) % 8, ' ');  // data section starts 8-byte aligned

  std::string file;
  file.reserve(8 + header.size() + offset);
  uint64_t header_length = header.size();
  file.append(reinterpret_cast<const char*>(&header_length), 8);
  file += header;
  for (const auto& [name, t] : tensors) {
    std::vector<float> values = t.to_vector();  // logical order, whatever the view's strides
    file.append(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
  }
  write_file_atomically(path, file);
}

// ============================================================================
// Reading
// ============================================================================

namespace {

struct Entry {
  std::string name;
  Shape shape;
  uint64_t begin = 0, end = 0;
};

// Validates one tensor's header entry; `context` is "read_safetensors PATH".
Entry parse_entry(const std::string& context, const std::string& name, const Json& info) {
  auto fail = [&](const std::string& what) {
    return Error(fmt::format("{}: tensor '{}': {}", context, name, what));
  };
  auto to_u64 = [&](const Json& v, const char* field) {
    bool digits_only = v.kind == Json::Kind::Number && !v.text.empty() &&
                       std::all_of(v.text.begin(), v.text.end(), [](char c) { return c >= '0' && c <= '9'; });
    if (!digits_only) throw fail(fmt::format("{} must hold non-negative integers", field));
    if (v.text.size() > 19) throw fail(fmt::format("{} value {} is too large", field, v.text));
    return std::stoull(v.text);
  };
  if (info.kind != Json::Kind::Object) throw fail("entry is not a JSON object");
  const Json *dtype = nullptr, *shape = nullptr, *offsets = nullptr;
  for (const auto& [key, v] : info.members) {
    if (key == "dtype")
      dtype = &v;
    else if (key == "shape")
      shape = &v;
    else if (key == "data_offsets")
      offsets = &v;
    else
      throw fail(fmt::format("unknown field \"{}\"", key));
  }
  if (!dtype || !shape || !offsets) throw fail("needs the fields dtype, shape and data_offsets");
  if (dtype->kind != Json::Kind::String) throw fail("dtype is not a string");
  if (dtype->text != "F32")
    throw fail(fmt::format("unsupported dtype {} (only F32 is supported)", dtype->text));

  Entry e;
  e.name = name;
  if (shape->kind != Json::Kind::Array) throw fail("shape is not an array");
  uint64_t numel = 1;
  for (const Json& d : shape->items) {
    uint64_t size = to_u64(d, "shape");
    if (size > (1ull << 40) || (size && numel > (1ull << 40) / size)) throw fail("shape is too large");
    numel *= size;
    e.shape.push_back(static_cast<int64_t>(size));
  }
  if (offsets->kind != Json::Kind::Array || offsets->items.size() != 2)
    throw fail("data_offsets must be [begin, end]");
  e.begin = to_u64(offsets->items[0], "data_offsets");
  e.end = to_u64(offsets->items[1], "data_offsets");
  if (e.end < e.begin) throw fail(fmt::format("data_offsets [{}, {}] end before begin", e.begin, e.end));
  if (e.end - e.begin != numel * sizeof(float))
    throw fail(fmt::format("data_offsets [{}, {}] span {} bytes but shape {} needs {}", e.begin, e.end,
                           e.end - e.begin, shape_str(e.shape), numel * sizeof(float)));
  return e;
}

}  // namespace

std::map<std::string, Tensor> read_safetensors(const std::string& path,
                                               std::map<std::string, std::string>* metadata) {
  const std::string context = "read_safetensors " + path;
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("{}: cannot open the file: {}", context, std::strerror(errno)));
  std::string file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw Error(fmt::format("{}: read error", context));

  if (file.size() < 8)
    throw Error(fmt::format("{}: file is {} bytes, too short for the 8-byte header length (truncated?)",
                            context, file.size()));
  uint64_t header_length = 0;
  std::memcpy(&header_length, file.data(), 8);
  uint64_t rest = file.size() - 8;
  if (header_length == 0 || header_length > kMaxHeaderBytes || header_length > rest)
    throw Error(
        fmt::format("{}: bad header length {} (the file has {} bytes after the length field; "
                    "truncated or not a safetensors file?)",
                    context, header_length, rest));

  Json header = JsonParser(std::string_view(file).substr(8, header_length), context).document();
  if (header.kind != Json::Kind::Object) throw Error(fmt::format("{}: header is not a JSON object", context));

  std::vector<Entry> entries;
  for (const auto& [name, info] : header.members) {
    if (name == "__metadata__") {
      if (info.kind != Json::Kind::Object)
        throw Error(fmt::format("{}: __metadata__ is not a JSON object", context));
      for (const auto& [key, value] : info.members) {
        if (value.kind != Json::Kind::String)
          throw Error(fmt::format("{}: __metadata__ value of \"{}\" is not a string", context, key));
        if (metadata) (*metadata)[key] = value.text;
      }
      continue;
    }
    entries.push_back(parse_entry(context, name, info));
  }

  // The tensors must tile the data section exactly: any hole, overlap or overhang means the
  // header and the data disagree, and the values cannot be trusted.
  const uint64_t data_size = rest - header_length;
  const char* data = file.data() + 8 + header_length;
  std::vector<const Entry*> by_offset;
  for (const Entry& e : entries) {
    if (e.end > data_size)
      throw Error(
          fmt::format("{}: tensor '{}' data_offsets [{}, {}] out of range: the data section has {} bytes "
                      "(truncated file?)",
                      context, e.name, e.begin, e.end, data_size));
    by_offset.push_back(&e);
  }
  std::sort(by_offset.begin(), by_offset.end(), [](const Entry* a, const Entry* b) {
    return std::tie(a->begin, a->end) < std::tie(b->begin, b->end);
  });
  uint64_t covered = 0;
  const Entry* previous = nullptr;
  for (const Entry* e : by_offset) {
    if (e->begin < covered)
      throw Error(fmt::format("{}: tensors '{}' and '{}' overlap in the data section", context,
                              previous->name, e->name));
    if (e->begin > covered)
      throw Error(fmt::format("{}: {} unused bytes before tensor '{}' in the data section", context,
                              e->begin - covered, e->name));
    covered = e->end;
    previous = e;
  }
  if (covered != data_size)
    throw Error(
        fmt::format("{}: {} bytes after the last tensor in the data section", context, data_size - covered));

  std::map<std::string, Tensor> out;
  for (const Entry& e : entries) {
    Tensor t = Tensor::empty(e.shape);
    if (e.end > e.begin) std::memcpy(t.data(), data + e.begin, e.end - e.begin);
    out.emplace(e.name, t);
  }
  return out;
}

// ============================================================================
// Modules
// ============================================================================

void save_module(const Module& module, const std::string& path,
                 const std::map<std::string, std::string>& metadata) {
  write_safetensors(path, module.named_parameters(), metadata);
}

void load_module(Module& module, const std::string& path) { module.load_state_dict(read_safetensors(path)); }

}  // namespace lg::nn
