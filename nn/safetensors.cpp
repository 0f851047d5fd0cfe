// nn/safetensors.cpp: the safetensors writer and a strict reader; the header is JSON (core/json_io.h).
#include "nn/safetensors.h"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <set>
#include <string_view>
#include <tuple>

#include "core/files.h"
#include "core/json_io.h"

namespace lg::nn {

// Tensor data is copied to and from the file byte for byte.
static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian");

// The reference implementation refuses headers above 100 MB; a larger length is corruption.
static constexpr uint64_t kMaxHeaderBytes = 100'000'000;

// ============================================================================
// Writing
// ============================================================================

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

  json::Json header = json::Json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  int64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    int64_t bytes = t.numel() * static_cast<int64_t>(sizeof(float));
    json::Json entry = json::Json::object();
    entry["dtype"] = "F32";
    entry["shape"] = t.shape();
    entry["data_offsets"] = {offset, offset + bytes};
    header[name] = std::move(entry);  // names are unique (checked above): no earlier entry is replaced
    offset += bytes;
  }
  std::string header_text = json::dump(header);
  header_text.append((8 - header_text.size() % 8) % 8, ' ');  // data section starts 8-byte aligned

  std::string file;
  file.reserve(8 + header_text.size() + static_cast<size_t>(offset));
  uint64_t header_length = header_text.size();
  file.append(reinterpret_cast<const char*>(&header_length), 8);
  file += header_text;
  for (const auto& [name, t] : tensors) {
    std::vector<float> values = t.to_vector();  // logical order, whatever the view's strides
    file.append(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
  }
  files::write_file_atomic(path, file);
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
Entry parse_entry(const std::string& context, const std::string& name, const json::Json& info) {
  auto fail = [&](const std::string& what) {
    return Error(fmt::format("{}: tensor '{}': {}", context, name, what));
  };
  // Plain digits only, as the reference reader (serde, into usize) demands: "8.0" and "-2" are refused.
  auto to_u64 = [&](const json::Json& v, const std::string& field) {
    try {
      return json::get_uint64(v, field);
    } catch (const Error& e) {
      throw fail(e.what());
    }
  };
  if (!info.is_object()) throw fail("entry is not a JSON object");
  for (const auto& [key, v] : info.items())
    if (key != "dtype" && key != "shape" && key != "data_offsets")
      throw fail(fmt::format("unknown field \"{}\"", key));
  if (!info.contains("dtype") || !info.contains("shape") || !info.contains("data_offsets"))
    throw fail("needs the fields dtype, shape and data_offsets");
  const json::Json &dtype = info["dtype"], &shape = info["shape"], &offsets = info["data_offsets"];
  if (!dtype.is_string()) throw fail("dtype is not a string");
  if (dtype.get_ref<const std::string&>() != "F32")
    throw fail(
        fmt::format("unsupported dtype {} (only F32 is supported)", dtype.get_ref<const std::string&>()));

  Entry e;
  e.name = name;
  if (!shape.is_array()) throw fail("shape is not an array");
  // The bound is on the product of the non-zero sizes, not on the element count: that product
  // bounds every stride too, which an empty tensor of shape [0, 2^40, 2^40] would overflow.
  uint64_t numel = 1, nonzero_product = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    uint64_t size = to_u64(shape[i], fmt::format("shape[{}]", i));
    if (size > (1ull << 40) || (size && nonzero_product > (1ull << 40) / size))
      throw fail("shape is too large (more than 2^40 elements, counting non-zero sizes)");
    if (size) nonzero_product *= size;
    numel *= size;
    e.shape.push_back(static_cast<int64_t>(size));
  }
  if (!offsets.is_array() || offsets.size() != 2) throw fail("data_offsets must be [begin, end]");
  e.begin = to_u64(offsets[0], "data_offsets[0]");
  e.end = to_u64(offsets[1], "data_offsets[1]");
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
  const std::string file = files::read_file(path);  // throws "cannot read PATH: reason"

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

  json::Json header;
  try {
    header = json::parse(std::string_view(file).substr(8, header_length));
  } catch (const json::ParseError& e) {
    throw Error(fmt::format("{}: malformed JSON header at byte {}: {}", context, e.byte(), e.reason()));
  }
  if (!header.is_object()) throw Error(fmt::format("{}: header is not a JSON object", context));

  std::vector<Entry> entries;
  for (const auto& [name, info] : header.items()) {
    if (name == "__metadata__") {
      if (!info.is_object()) throw Error(fmt::format("{}: __metadata__ is not a JSON object", context));
      for (const auto& [key, value] : info.items()) {
        if (!value.is_string())
          throw Error(fmt::format("{}: __metadata__ value of \"{}\" is not a string", context, key));
        if (metadata) (*metadata)[key] = value.get_ref<const std::string&>();
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
