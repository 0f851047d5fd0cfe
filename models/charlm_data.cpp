// models/charlm_data.cpp: vocabulary, corpus reading and splitting, random training windows.
#include "models/charlm_data.h"

#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>

#include "core/files.h"

namespace lg::charlm {

void Vocab::index() {
  id_of_.fill(kUnknownId);
  for (size_t i = 0; i < bytes.size(); ++i) id_of_[bytes[i]] = static_cast<int32_t>(i + 1);
}

Vocab Vocab::from_text(std::string_view train_text) {
  std::array<bool, 256> seen{};
  for (unsigned char c : train_text) seen[c] = true;
  Vocab v;
  for (int b = 0; b < 256; ++b)
    if (seen[b]) v.bytes.push_back(static_cast<uint8_t>(b));
  v.index();
  return v;
}

Vocab Vocab::from_bytes(std::vector<uint8_t> bytes) {
  for (size_t i = 1; i < bytes.size(); ++i)
    if (bytes[i] <= bytes[i - 1]) throw Error("vocabulary bytes must be distinct and ascending");
  Vocab v;
  v.bytes = std::move(bytes);
  v.index();
  return v;
}

std::vector<int32_t> Vocab::encode(std::string_view text) const {
  std::vector<int32_t> ids(text.size());
  for (size_t i = 0; i < text.size(); ++i) ids[i] = id_of_[static_cast<unsigned char>(text[i])];
  return ids;
}

int64_t Vocab::count_unknown(std::string_view text) const {
  int64_t n = 0;
  for (unsigned char c : text) n += id_of_[c] == kUnknownId;
  return n;
}

SplitFractions parse_split(const std::string& text) {
  std::vector<double> parts;
  size_t start = 0;
  for (;;) {
    size_t comma = text.find(',', start);
    std::string item = text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    char* end = nullptr;
    double x = std::strtod(item.c_str(), &end);
    if (item.empty() || *end != '\0' || !std::isfinite(x))
      throw Error(fmt::format("--split '{}': '{}' is not a number", text, item));
    if (x <= 0) throw Error(fmt::format("--split '{}': every fraction must be > 0", text));
    parts.push_back(x);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  if (parts.size() != 3)
    throw Error(fmt::format("--split '{}': expected three fractions train,val,test", text));
  if (std::fabs(parts[0] + parts[1] + parts[2] - 1.0) > 1e-6)
    throw Error(fmt::format("--split '{}': fractions must sum to 1", text));
  return {parts[0], parts[1], parts[2]};
}

std::string split_str(const SplitFractions& split) {
  return fmt::format("{},{},{}", split.train, split.val, split.test);
}

Splits split_corpus(std::string_view corpus, const SplitFractions& split) {
  size_t n = corpus.size();
  // parse_split lets the fractions sum to 1 within 1e-6, so n * train alone may exceed n.
  size_t n_train = std::min(n, static_cast<size_t>(std::floor(static_cast<double>(n) * split.train)));
  size_t n_val = static_cast<size_t>(std::floor(static_cast<double>(n) * split.val));
  if (n_train + n_val > n) n_val = n - n_train;
  return {corpus.substr(0, n_train), corpus.substr(n_train, n_val), corpus.substr(n_train + n_val)};
}

int64_t available_memory_bytes() {
  if (const char* limit = std::getenv("LATENTGRAD_MEMORY_MB"); limit != nullptr && *limit != '\0')
    return static_cast<int64_t>(std::strtod(limit, nullptr) * 1048576.0);
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  int64_t kib = 0;
  while (meminfo >> key >> kib) {
    if (key == "MemAvailable:") return kib * 1024;
    meminfo.ignore(std::numeric_limits<std::streamsize>::max(), '\n');
  }
  return static_cast<int64_t>(::sysconf(_SC_AVPHYS_PAGES)) * ::sysconf(_SC_PAGESIZE);
}

// What a path is when it is not a regular file, for the error message.
static const char* file_kind(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "a special file";
}

// 5000 -> "4.9 KiB"
static std::string human_bytes(int64_t bytes) {
  const char* units[] = {"bytes", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024 && unit < 4) value /= 1024, ++unit;
  return unit == 0 ? fmt::format("{} bytes", bytes) : fmt::format("{:.1f} {}", value, units[unit]);
}

std::string read_corpus(const std::string& path, int64_t memory_bytes) {
  // Checked before opening: opening a FIFO blocks until a writer comes, and a device may never end.
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    throw Error(fmt::format("cannot read {}: {}", path, std::strerror(errno)));
  if (!S_ISREG(st.st_mode))
    throw Error(fmt::format("corpus {} is {}, not a regular file", path, file_kind(st.st_mode)));
  const int64_t needed = static_cast<int64_t>(st.st_size) * kCorpusBytesPerChar;
  if (needed > memory_bytes)
    throw Error(fmt::format(
        "corpus {} is too large: its {} bytes need {} of memory ({} bytes per byte: the text and its "
        "token ids) but {} are available",
        path, st.st_size, human_bytes(needed), kCorpusBytesPerChar, human_bytes(memory_bytes)));
  std::string text = files::read_file(path);
  if (text.empty()) throw Error(fmt::format("corpus {} is empty", path));
  return text;
}

void check_split_lengths(const Splits& splits, int64_t corpus_bytes, int64_t ctx) {
  const std::pair<const char*, std::string_view> parts[] = {
      {"train", splits.train}, {"val", splits.val}, {"test", splits.test}};
  for (auto& [name, part] : parts)
    if (static_cast<int64_t>(part.size()) < ctx + 1)
      throw Error(
          fmt::format("corpus too short: {} bytes give a {} split of {} bytes, which needs at least "
                      "ctx + 1 = {} (use a longer text, a smaller --ctx or another --split)",
                      corpus_bytes, name, part.size(), ctx + 1));
}

void sample_batch(const std::vector<int32_t>& ids, int64_t B, int64_t T, Rng& rng, std::vector<int32_t>& x,
                  std::vector<int32_t>& y) {
  int64_t n = static_cast<int64_t>(ids.size());
  if (n < T + 1) throw Error(fmt::format("sample_batch: {} tokens cannot hold a window of {}", n, T + 1));
  x.resize(static_cast<size_t>(B * T));
  y.resize(static_cast<size_t>(B * T));
  for (int64_t b = 0; b < B; ++b) {
    int64_t start = static_cast<int64_t>(rng.below(static_cast<uint64_t>(n - T)));  // in [0, n - T - 1]
    for (int64_t t = 0; t < T; ++t) {
      x[b * T + t] = ids[start + t];
      y[b * T + t] = ids[start + t + 1];
    }
  }
}

}  // namespace lg::charlm
